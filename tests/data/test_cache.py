"""Clip cache: contents equal the readers' output, keys, parallel build, crash safety, pickling."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from datamodules.cache import (
    CacheError,
    CacheParams,
    CacheView,
    ClipCache,
    ClipSpec,
    _host_tag,
    dataset_fingerprint,
    remove_stale_tmp,
)
from datamodules.flow import FlowParams, farneback_flow
from datamodules.readers import VideoReader

FLOW = FlowParams(median_ksize=5)
PARAMS = CacheParams(size=(32, 32), channels=1, flow=FLOW)


def _write_moving_video(path, n, seed):
    """40×48 MJPG AVI: a smooth random texture drifting 1 px/frame, so flow is not zero."""
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((48, 48 + n)), (0, 0), 2)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (48, 40), True)
    for i in range(n):
        w.write(cv2.cvtColor(np.ascontiguousarray(tex[4:44, n - i : n - i + 48]), cv2.COLOR_GRAY2BGR))
    w.release()
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    (root / "videos").mkdir()
    a = _write_moving_video(root / "videos" / "a.avi", 40, 0)
    b = _write_moving_video(root / "videos" / "b.avi", 30, 1)
    specs = [
        ClipSpec("a0", a, (0, 4, 8, 12)),
        ClipSpec("a1", a, (39, 30, 30, 2, 5)),  # unsorted, repeated
        ClipSpec("b0", b, tuple(range(10, 18))),
        ClipSpec("a2", a, (20, 21)),
        ClipSpec("b1", b, (29,)),
    ]
    return root, specs


def _many_specs(dataset, n=12):
    _, specs = dataset
    return [ClipSpec(f"m{i}", specs[i % 2 * 2].video, (i, i + 3, i + 6)) for i in range(n)]


def _fp(root):
    return dataset_fingerprint(root, sorted((root / "videos").iterdir()))


def test_build_then_open_equals_the_readers(dataset, tmp_path):
    root, specs = dataset
    cache = ClipCache(tmp_path, _fp(root), PARAMS, specs)
    assert not cache.is_complete()
    with pytest.raises(CacheError, match="not built"):
        cache.open()
    assert cache.build(progress=False) == cache.path
    assert cache.is_complete() and cache.path.parent == tmp_path and len(cache.path.name) == 16
    assert sorted(p.name for p in cache.path.iterdir()) == [
        "COMPLETE",
        "flow.npy",
        "frames.npy",
        "index.json",
        "params.json",
    ]
    assert json.loads((cache.path / "index.json").read_text())["a1"] == [4, 5]
    meta = json.loads((cache.path / "params.json").read_text())
    assert meta["params"]["flow"]["median_ksize"] == 5 and meta["total_frames"] == 20
    view = cache.open()
    assert view.ids == [s.item_id for s in specs] and len(view) == 5 and "b0" in view
    for s in specs:
        with VideoReader(s.video) as reader:
            ref = reader.read(s.frame_indices, size=(32, 32), channels=1)
        frames = view.frames(s.item_id)
        assert frames.dtype == np.uint8 and frames.shape == (len(s.frame_indices), 32, 32, 1)
        np.testing.assert_array_equal(frames, ref)
        flow = view.flow(s.item_id)
        assert flow.dtype == np.float16 and flow.shape == (len(s.frame_indices), 2, 32, 32)
        ref_flow = farneback_flow(ref, FLOW).transpose(1, 0, 2, 3)
        np.testing.assert_allclose(flow.astype(np.float32), ref_flow, rtol=2e-3, atol=2e-3)
    assert np.abs(view.flow("b0")[1:, 0]).mean() > 0.3  # the drift is seen
    with pytest.raises(KeyError, match="nope"):
        view.frames("nope")
    mtime = (cache.path / "COMPLETE").stat().st_mtime_ns
    cache.build(progress=False)  # complete: nothing is redone
    assert (cache.path / "COMPLETE").stat().st_mtime_ns == mtime


def test_rgb_without_flow(dataset, tmp_path):
    root, specs = dataset
    view = ClipCache(tmp_path, _fp(root), CacheParams(size=(16, 24), channels=3), specs[:2]).build(
        progress=False
    )
    view = CacheView(view)
    assert view.flow("a0") is None and not (view.path / "flow.npy").exists()
    with VideoReader(specs[1].video) as reader:
        ref = reader.read(specs[1].frame_indices, size=(16, 24), channels=3)
    np.testing.assert_array_equal(view.frames("a1"), ref)


def test_parallel_build_equals_serial(dataset, tmp_path):
    root, specs = dataset
    specs = specs + _many_specs(dataset)  # > 8 items of one video: several tasks per video
    serial = ClipCache(tmp_path / "s", _fp(root), PARAMS, specs)
    parallel = ClipCache(tmp_path / "p", _fp(root), PARAMS, specs)
    serial.build(progress=False)
    parallel.build(num_workers=2, progress=True)
    for name in ("frames.npy", "flow.npy", "index.json"):
        assert (serial.path / name).read_bytes() == (parallel.path / name).read_bytes(), name


def test_keys(dataset, tmp_path):
    root, specs = dataset
    fp = _fp(root)

    def path(fingerprint=fp, params=PARAMS, specs=specs):
        return ClipCache(tmp_path, fingerprint, params, specs).path

    assert path() == path()
    variants = [
        path(fingerprint="0" * 64),
        path(params=CacheParams(size=(32, 32), channels=1, flow=None)),
        path(params=CacheParams(size=(32, 32), channels=3, flow=FLOW)),
        path(params=CacheParams(size=(32, 24), channels=1, flow=FLOW)),
        path(params=CacheParams(size=(32, 32), channels=1, flow=FlowParams(median_ksize=5, winsize=5))),
        path(specs=specs[:-1]),
        path(specs=[ClipSpec("x", specs[0].video, specs[0].frame_indices), *specs[1:]]),
        path(specs=[ClipSpec("a0", specs[2].video, specs[0].frame_indices), *specs[1:]]),
        path(specs=[ClipSpec("a0", specs[0].video, (0, 4, 8, 13)), *specs[1:]]),
    ]
    assert len({path(), *variants}) == len(variants) + 1
    with pytest.raises(ValueError, match="duplicate"):
        ClipCache(tmp_path, fp, PARAMS, [specs[0], specs[0]])


def test_fingerprint(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n")
    (tmp_path / "v.bin").write_bytes(b"x" * 10)
    files = [tmp_path / "m.csv", tmp_path / "v.bin"]
    fp = dataset_fingerprint(tmp_path, files)
    assert fp == dataset_fingerprint(tmp_path, ["v.bin", files[0], files[1]])  # order, duplicates, relative
    st = os.stat(files[1])
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    assert dataset_fingerprint(tmp_path, files) != fp
    with pytest.raises(FileNotFoundError, match=r"gone\.mp4"):
        dataset_fingerprint(tmp_path, [tmp_path / "gone.mp4"])


_KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    import datamodules.cache as C
    from datamodules.flow import FlowParams
    cfg = json.loads(sys.argv[1])
    specs = [C.ClipSpec(i, Path(v), tuple(ix)) for i, v, ix in cfg["specs"]]
    compute, done = C._compute_item, []
    def dying_compute(*args):
        if len(done) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        done.append(1)
        return compute(*args)
    C._compute_item = dying_compute
    params = C.CacheParams(size=(32, 32), channels=1, flow=FlowParams(median_ksize=5))
    C.ClipCache(cfg["root"], cfg["fp"], params, specs).build(progress=False)
    """
)


def test_killed_build_leaves_nothing_trusted(dataset, tmp_path):
    root, _ = dataset
    specs = _many_specs(dataset)
    cfg = {
        "root": str(tmp_path),
        "fp": _fp(root),
        "specs": [[s.item_id, str(s.video), list(s.frame_indices)] for s in specs],
    }
    proc = subprocess.run([sys.executable, "-c", _KILLER, json.dumps(cfg)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    cache = ClipCache(tmp_path, cfg["fp"], PARAMS, specs)
    stale = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(stale) == 1 and stale[0].name.startswith(cache.path.name + ".tmp-")
    assert (stale[0] / "frames.npy").exists() and not (stale[0] / "COMPLETE").exists()
    assert not cache.path.exists() and not cache.is_complete()
    with pytest.raises(CacheError):
        cache.open()
    cache.build(progress=False)
    assert cache.is_complete()
    assert not stale[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == [cache.path.name]
    with VideoReader(specs[5].video) as reader:
        np.testing.assert_array_equal(
            cache.open().frames("m5"), reader.read(specs[5].frame_indices, size=(32, 32))
        )


def test_stale_tmp_of_live_process_is_kept(tmp_path):
    host_tag = _host_tag()
    live = tmp_path / f"abcd.tmp-{os.getppid()}-{host_tag}-0a1b"
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = tmp_path / f"abcd.tmp-{int(dead_pid.stdout)}-{host_tag}-0a1c"
    other_host = tmp_path / "abcd.tmp-1-someotherhost-0a1d"
    for d in (live, dead, other_host):
        d.mkdir()
    assert remove_stale_tmp(tmp_path) == [dead]
    assert live.exists() and other_host.exists()


def test_lost_race_keeps_the_winner(dataset, tmp_path):
    root, specs = dataset
    cache = ClipCache(tmp_path, _fp(root), PARAMS, specs[:2])
    cache.build(progress=False)
    before = (cache.path / "frames.npy").read_bytes()
    loser = tmp_path / f"{cache.path.name}.tmp-{os.getpid()}-x-00"
    loser.mkdir()
    cache._build_into(loser, 0, False, "spawn")
    cache._publish(loser)  # the final directory exists and is complete: ours is not used
    assert cache.is_complete() and (cache.path / "frames.npy").read_bytes() == before


def test_view_pickles(dataset, tmp_path):
    root, specs = dataset
    cache = ClipCache(tmp_path, _fp(root), PARAMS, specs)
    view = CacheView(cache.build(progress=False))
    first = np.array(view.frames("b0"))
    blob = pickle.dumps(view)
    assert len(blob) < 4096  # no array data travels
    clone = pickle.loads(blob)
    assert clone._frames is None
    np.testing.assert_array_equal(clone.frames("b0"), first)
    np.testing.assert_array_equal(clone.flow("a1"), view.flow("a1"))
    assert not clone.frames("b0").flags.writeable


# ------------------------------------------------------------------ faults of issue 12 (docs/faults.md)
def _kill_after(dataset, tmp_path, n_items):
    """Run a build in a subprocess that is SIGKILLed while computing item ``n_items + 1``."""
    root, _ = dataset
    specs = _many_specs(dataset)
    cfg = {
        "root": str(tmp_path),
        "fp": _fp(root),
        "specs": [[s.item_id, str(s.video), list(s.frame_indices)] for s in specs],
    }
    script = _KILLER.replace("len(done) == 3", f"len(done) == {n_items}")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    return ClipCache(tmp_path, cfg["fp"], PARAMS, specs), specs


def test_killed_build_resumes_with_its_finished_clips(dataset, tmp_path, monkeypatch):
    """Killed while computing the 6th of 12 clips: the next build computes only the 7 not finished (the
    6th was half-written, so it is computed again) and the cache equals a fresh build."""
    import datamodules.cache as C

    cache, specs = _kill_after(dataset, tmp_path, 5)
    (stale,) = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len((stale / "done.txt").read_text().splitlines()) == 5
    computed = []
    compute = C._compute_item
    monkeypatch.setattr(
        C, "_compute_item", lambda r, spec, p: computed.append(spec.item_id) or compute(r, spec, p)
    )
    cache.build(progress=False)
    assert len(computed) == 7 and cache.is_complete()
    assert [p.name for p in tmp_path.iterdir()] == [cache.path.name]
    assert sorted(p.name for p in cache.path.iterdir()) == [
        "COMPLETE",
        "flow.npy",
        "frames.npy",
        "index.json",
        "params.json",
    ]
    monkeypatch.setattr(C, "_compute_item", compute)
    fresh = ClipCache(tmp_path / "fresh", cache.fingerprint, PARAMS, specs)
    fresh.build(progress=False)
    resumed, full = cache.open(), fresh.open()
    for s in specs:
        np.testing.assert_array_equal(resumed.frames(s.item_id), full.frames(s.item_id))
        np.testing.assert_array_equal(resumed.flow(s.item_id), full.flow(s.item_id))


def test_half_written_journal_line_is_not_trusted(dataset, tmp_path, monkeypatch):
    """A journal line cut by the kill (no newline) does not count: that clip is computed again."""
    import datamodules.cache as C

    cache, _ = _kill_after(dataset, tmp_path, 4)
    (stale,) = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    finished = (stale / "done.txt").read_text().splitlines()
    cut = next(f"m{i}" for i in range(12) if f"m{i}" not in finished)
    assert len(finished) == 4
    with open(stale / "done.txt", "a") as fh:
        fh.write(cut)  # the id of the clip being written, cut before its newline
    computed, compute = [], C._compute_item
    monkeypatch.setattr(C, "_compute_item", lambda r, s, p: computed.append(s.item_id) or compute(r, s, p))
    cache.build(progress=False)
    assert len(computed) == 8 and cut in computed and cache.is_complete()


def test_failed_build_in_a_live_process_is_resumed(dataset, tmp_path, monkeypatch):
    """An exception (an unreadable clip, Ctrl-C) keeps the finished clips for the next build of this process."""
    import datamodules.cache as C

    root, _ = dataset
    specs = _many_specs(dataset)
    cache = ClipCache(tmp_path, _fp(root), PARAMS, specs)
    compute, calls = C._compute_item, []

    def failing(reader, spec, params):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(spec.item_id)
        return compute(reader, spec, params)

    monkeypatch.setattr(C, "_compute_item", failing)
    with pytest.raises(KeyboardInterrupt):
        cache.build(progress=False)
    (kept,) = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert (kept / "ABANDONED").exists()
    calls.clear()
    monkeypatch.setattr(C, "_compute_item", lambda r, s, p: calls.append(s.item_id) or compute(r, s, p))
    cache.build(progress=False)
    assert len(calls) == 9 and cache.is_complete()


def test_read_only_cache_folder_is_a_clear_error(dataset, tmp_path, monkeypatch):
    """EROFS (a read-only mount; as root chmod does not stop writes, so mkdir is made to fail)."""
    import errno
    import pathlib

    root, specs = dataset
    cache = ClipCache(tmp_path / "ro" / "cache", _fp(root), PARAMS, specs[:1])

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    with pytest.raises(
        CacheError, match=r"cannot write the clip cache in .*ro/cache \(Read-only file system"
    ) as e:
        cache.build(progress=False)
    assert "set SONOLAB_CACHE (or data.init_args.cache_dir) to a folder you can write" in str(e.value)


def test_full_disk_is_a_clear_error(dataset, tmp_path, monkeypatch):
    import errno

    import datamodules.cache as C

    root, specs = dataset
    cache = ClipCache(tmp_path, _fp(root), PARAMS, specs[:2])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "_compute_item", full)
    with pytest.raises(CacheError, match=r"No space left on device.*the disk is full: free space there"):
        cache.build(progress=False)
    assert not cache.is_complete()


def test_color_flow_is_the_colour_image_of_the_cached_flow(dataset, tmp_path):
    """``flow_color`` caches, per item, ``flow_color_image`` of the float16 flow as stored (so it equals
    what colouring the read-back flow gives); it needs flow, and caches without it keep their key."""
    from datamodules.flow import flow_color_image

    root, specs = dataset
    params = CacheParams(size=(32, 32), channels=1, flow=FLOW, flow_color=True)
    cache = ClipCache(tmp_path, _fp(root), params, specs)
    view = CacheView(cache.build(progress=False))
    for s in specs:
        color = view.flow_color(s.item_id)
        assert color.dtype == np.uint8 and color.shape == (len(s.frame_indices), 3, 32, 32)
        np.testing.assert_array_equal(color, flow_color_image(view.flow(s.item_id)))
    assert json.loads((cache.path / "params.json").read_text())["flow_color"]["file"] == "flow_color.npy"
    assert cache.path != ClipCache(tmp_path, _fp(root), PARAMS, specs).path
    assert PARAMS.as_dict() == {"size": [32, 32], "channels": 1, "flow": FLOW.as_dict()}
    assert (
        CacheView(ClipCache(tmp_path, _fp(root), PARAMS, specs[:1]).build(progress=False)).flow_color(
            specs[0].item_id
        )
        is None
    )
    with pytest.raises(ValueError, match="flow_color needs flow"):
        CacheParams(size=(32, 32), flow_color=True)
