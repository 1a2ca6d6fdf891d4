"""The synthetic PULSE-style dataset generator (tiny preset): contract, clips, determinism, gaze, quality, safety."""

from __future__ import annotations

import csv
import dataclasses
import filecmp
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from datamodules import synthetic
from datamodules.synthetic import (
    APPROACH_TV,
    BACKGROUND,
    PLANES,
    PRESETS,
    SyntheticConfig,
    ensure_dataset,
    generate_dataset,
    is_generated_dataset,
)

MANIFESTS = ("scans", "clips", "images", "pairs", "boxes")
CONTRACT = {  # required columns of docs/data.md
    "scans": {"scan_id", "video", "gaze", "audio", "fps", "split"},
    "clips": {"clip_id", "scan_id", "start_frame", "end_frame", "label", "split", "quality"},
    "images": {"image", "plane", "split", "role"},
    "pairs": {"better", "worse", "plane", "split"},
    "boxes": {"scan_id", "frame", "x0", "y0", "x1", "y1"},
}
TINY = PRESETS["tiny"]
# a one-scan config for the safety tests (fast to generate)
MINI = dataclasses.replace(
    TINY, n_scans=1, images_per_plane=3, standard_per_plane=1, pairs_per_plane=1, image_planes=("abdomen",)
)


def read(root: Path, name: str) -> list[dict]:
    with open(root / f"{name}.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_frames(path: Path, start: int, stop: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames = []
    for _ in range(start, stop):
        ok, f = cap.read()
        assert ok
        frames.append(f[..., 0])
    cap.release()
    return np.stack(frames)


def frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


@pytest.fixture(scope="module")
def tiny(tiny_dataset: Path) -> Path:
    """The session's tiny dataset (conftest: generated once with seed 0)."""
    return tiny_dataset


def test_manifests_follow_the_contract(tiny: Path):
    meta = json.loads((tiny / "synthetic.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and is_generated_dataset(tiny)
    tables = {name: read(tiny, name) for name in MANIFESTS}
    for name, rows in tables.items():
        assert rows, f"{name}.csv is empty"
        assert CONTRACT[name] <= set(rows[0]), f"{name}.csv lacks {CONTRACT[name] - set(rows[0])}"
    scans = {s["scan_id"]: s for s in tables["scans"]}
    assert len(scans) == TINY.n_scans == len(tables["scans"])
    for s in scans.values():
        assert s["split"] in ("train", "val", "test") and float(s["fps"]) == TINY.fps
        for col in ("video", "gaze", "audio"):
            assert (tiny / s[col]).is_file()
    assert {s["split"] for s in scans.values()} == {"train", "val", "test"}

    clips = tables["clips"]
    assert len({c["clip_id"] for c in clips}) == len(clips)
    per_scan = 2 * TINY.tv_visits + len(TINY.other_planes) + TINY.poor_tv_visits + TINY.background_segments
    assert len(clips) == per_scan * TINY.n_scans
    assert {c["label"] for c in clips} == {*PLANES, APPROACH_TV, BACKGROUND}
    for c in clips:
        assert c["split"] == scans[c["scan_id"]]["split"]  # scan-wise splits
        assert c["quality"] == ("" if c["label"] == BACKGROUND else c["quality"])
        assert c["quality"] in ("", "0", "1")
    # every split has both classes of the head-circumference task (good TV holds vs everything else)
    for split in ("train", "val", "test"):
        in_split = [c for c in clips if c["split"] == split]
        assert any(c["label"] == "transventricular" and c["quality"] == "1" for c in in_split)
        assert any(c["label"] == APPROACH_TV for c in in_split)
        assert any(c["label"] == "transventricular" and c["quality"] == "0" for c in in_split)

    images = tables["images"]
    assert {r["role"] for r in images} == {"train", "standard"}
    assert {r["plane"] for r in images} == set(TINY.image_planes)
    assert {r["split"] for r in images if r["role"] == "train"} == {"train", "val", "test"}
    for r in images:
        assert (tiny / r["image"]).is_file() and 0.0 <= float(r["quality_score"]) <= 1.0
    assert min(float(r["quality_score"]) for r in images if r["role"] == "standard") >= 0.9
    for b in tables["boxes"]:
        x0, y0, x1, y1 = (float(b[k]) for k in ("x0", "y0", "x1", "y1"))
        assert b["scan_id"] in scans and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert {b["scan_id"] for b in tables["boxes"]} == set(scans)
    # the summary counts in synthetic.json match the files
    assert sum(meta["counts"]["clips"].values()) == len(clips)
    assert meta["counts"]["boxes"] == len(tables["boxes"])


def test_clips_have_frames_before_their_end_and_freezes_repeat(tiny: Path):
    scans = {s["scan_id"]: s for s in read(tiny, "scans")}
    clips = read(tiny, "clips")
    fps = TINY.fps
    counts = {sid: frame_count(tiny / s["video"]) for sid, s in scans.items()}
    for sid, n in counts.items():
        assert n == int(scans[sid]["n_frames"])
    clip_len = round(TINY.clip_s * fps)
    for c in clips:
        start, end = int(c["start_frame"]), int(c["end_frame"])
        assert end - start == clip_len
        assert end >= 64, "8 frames at an 8-frame interval need 64 frames before the clip end"
        assert end <= counts[c["scan_id"]]
    # approach clips lie 5-7 s before a good transventricular freeze of the same scan
    freezes = defaultdict(set)
    for c in clips:
        if c["label"] == "transventricular" and c["quality"] == "1":
            freezes[c["scan_id"]].add(int(c["end_frame"]) - 1)
    for c in (c for c in clips if c["label"] == APPROACH_TV):
        lo, hi = (round(s * fps) for s in TINY.approach_clip_s)
        assert any(
            int(c["end_frame"]) == f - lo and int(c["start_frame"]) == f - hi for f in freezes[c["scan_id"]]
        )
    # the frozen frame (end_frame - 1) repeats for about a second; the hold before it moves
    c = next(c for c in clips if c["kind"] == "freeze")
    end = int(c["end_frame"])
    frames = read_frames(tiny / scans[c["scan_id"]]["video"], end - 10, end + 20).astype(np.int16)
    frozen = frames[9]
    assert all(np.array_equal(f, frozen) for f in frames[9:29])
    assert not np.array_equal(frames[0], frozen)


def test_same_seed_gives_the_same_dataset(tiny: Path, tmp_path: Path):
    again = generate_dataset(tmp_path / "again", "tiny", seed=0)
    names = [f"{m}.csv" for m in MANIFESTS] + ["synthetic.json"]
    for sub, pattern in (("gaze", "*.csv"), ("audio", "*.wav"), ("images", "*.png")):
        names += [str(p.relative_to(tiny)) for p in sorted((tiny / sub).rglob(pattern))]
    _, mismatch, errors = filecmp.cmpfiles(tiny, again, names, shallow=False)
    assert not mismatch and not errors
    clip = read(tiny, "clips")[3]
    video = next(s["video"] for s in read(tiny, "scans") if s["scan_id"] == clip["scan_id"])
    start, end = int(clip["start_frame"]), int(clip["end_frame"])
    assert np.array_equal(read_frames(tiny / video, start, end), read_frames(again / video, start, end))


def test_another_seed_gives_another_dataset(tmp_path: Path):
    a = generate_dataset(tmp_path / "a", MINI, seed=0)
    b = generate_dataset(tmp_path / "b", MINI, seed=1)
    for name in ("clips.csv", "boxes.csv", "gaze/scan_000.csv", "audio/scan_000.wav"):
        assert (a / name).read_bytes() != (b / name).read_bytes(), name
    video = "videos/scan_000.avi"
    assert not np.array_equal(read_frames(a / video, 100, 101), read_frames(b / video, 100, 101))


def _gaze(path: Path) -> np.ndarray:
    with open(path) as fh:
        assert fh.readline().strip() == "time_s,x,y"
    return np.genfromtxt(path, delimiter=",", skip_header=1).reshape(-1, 3)


def test_gaze_is_normalised_with_blinks_and_looks_at_the_anatomy(tiny: Path):
    scans = read(tiny, "scans")
    boxes = defaultdict(dict)
    for b in read(tiny, "boxes"):
        boxes[b["scan_id"]][int(b["frame"])] = np.array([float(b[k]) for k in ("x0", "y0", "x1", "y1")])
    n_blink = inside = total = 0
    for s in scans:
        g = _gaze(tiny / s["gaze"])
        t, xy = g[:, 0], g[:, 1:]
        assert np.all(np.diff(t) > 0)
        assert abs(1.0 / np.median(np.diff(t)) - TINY.gaze_rate) < 1
        assert t[-1] <= int(s["n_frames"]) / float(s["fps"])
        valid = ~np.isnan(xy).any(1)
        assert valid.mean() > 0.85
        assert np.all((xy[valid] >= 0) & (xy[valid] <= 1))
        n_blink += int((~valid).sum())
        # during good transventricular holds, gaze sits on the head (box around the skull, 5 % margin)
        for c in read(tiny, "clips"):
            if c["scan_id"] != s["scan_id"] or c["kind"] != "freeze":
                continue
            start, end = int(c["start_frame"]), int(c["end_frame"])
            frame = np.floor(t * TINY.fps).astype(int)
            for i in np.flatnonzero(valid & (frame >= start) & (frame < end)):
                box = boxes[s["scan_id"]][frame[i] - frame[i] % TINY.box_every]
                x, y = xy[i]
                total += 1
                inside += box[0] - 0.05 <= x <= box[2] + 0.05 and box[1] - 0.05 <= y <= box[3] + 0.05
    assert n_blink > 0, "blinks (NaN rows) expected"
    assert total > 100 and inside / total > 0.9


def test_image_quality_is_visible_and_pairs_follow_it(tiny: Path):
    images = {r["image"]: r for r in read(tiny, "images")}
    q, sharp = [], []
    for r in images.values():
        im = cv2.imread(str(tiny / r["image"]), cv2.IMREAD_UNCHANGED)
        assert im.ndim == 2 and im.shape == TINY.frame_size
        q.append(float(r["quality_score"]))
        sharp.append(cv2.Laplacian(im.astype(np.float32), cv2.CV_32F).var())
    q, sharp = np.array(q), np.array(sharp)
    assert sharp[q > 0.7].mean() > 3 * sharp[q < 0.3].mean()
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(rank(q), rank(sharp))[0, 1] > 0.7  # Spearman
    pairs = read(tiny, "pairs")
    assert {p["split"] for p in pairs} == {"val", "test"}
    for p in pairs:
        better, worse = images[p["better"]], images[p["worse"]]
        assert better["plane"] == worse["plane"] == p["plane"]
        assert better["split"] == worse["split"] == p["split"]
        assert better["role"] == worse["role"] == "train"
        assert float(better["quality_score"]) >= float(worse["quality_score"]) + TINY.min_pair_gap


def test_audio_matches_the_video(tiny: Path):
    scans = read(tiny, "scans")
    kinds = set()
    for s in scans:
        info = sf.info(str(tiny / s["audio"]))
        kinds.add((info.samplerate, info.channels))
        assert abs(info.duration - int(s["n_frames"]) / float(s["fps"])) < 0.05
        x, _ = sf.read(str(tiny / s["audio"]), dtype="float32")
        assert np.abs(x).max() > 0.05, "speech expected"
    assert kinds == {(TINY.audio_rate, 1), (TINY.hires_audio_rate, 2)}
    # the sonographer mostly talks while holding a plane: speech in most freeze windows
    spoken = []
    for c in read(tiny, "clips"):
        if c["kind"] != "freeze":
            continue
        s = next(s for s in scans if s["scan_id"] == c["scan_id"])
        x, sr = sf.read(str(tiny / s["audio"]), dtype="float32")
        x = x if x.ndim == 1 else x.mean(1)
        w = x[int(int(c["start_frame"]) / TINY.fps * sr) : int(int(c["end_frame"]) / TINY.fps * sr)]
        spoken.append(np.sqrt(np.mean(w**2)) > 0.01)
    assert np.mean(spoken) > 0.5


def test_tiny_dataset_validates(tiny: Path):
    from datamodules.validate import validate_dataset

    report = validate_dataset(tiny, require=MANIFESTS)
    assert not report.errors, report.format()


def test_refuses_to_touch_user_data(tmp_path: Path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a generated dataset"):
            generate_dataset(user, MINI, overwrite=overwrite)
    assert (user / "notes.txt").read_text() == "precious" and len(list(user.iterdir())) == 1
    # a marker that is not ours does not count either
    (user / "synthetic.json").write_text('{"generator": "someone else"}')
    with pytest.raises(FileExistsError):
        generate_dataset(user, MINI, overwrite=True)
    assert (user / "notes.txt").exists()
    # ensure_dataset leaves an existing folder alone
    assert ensure_dataset(user, MINI) == user and (user / "notes.txt").exists()
    assert not (user / "scans.csv").exists()
    assert synthetic.main(["--out", str(user), "--preset", "tiny"]) == 1


def test_overwrite_and_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "gen"
    assert ensure_dataset(out, MINI, seed=0) == out and is_generated_dataset(out)
    first = (out / "clips.csv").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(out, MINI, seed=1)
    (out / "stale.txt").write_text("x")
    ensure_dataset(out, MINI, seed=1)  # exists: left alone
    assert (out / "stale.txt").exists() and (out / "clips.csv").read_bytes() == first
    generate_dataset(out, MINI, seed=1, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "clips.csv").read_bytes() != first
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 1

    # a run that dies half-way leaves neither a dataset nor its temporary folder behind
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_images", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "killed", MINI)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, MINI, seed=2, overwrite=True)
    assert not (tmp_path / "killed").exists()
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 1  # the old dataset is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]


def test_presets():
    assert set(PRESETS) >= {"tiny", "demo"}
    assert all(isinstance(c, SyntheticConfig) for c in PRESETS.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.n_scans = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        generate_dataset("unused", "huge")
    # the demo preset has enough clips for the anomaly-detection task (scan-wise 60/20/20 split)
    demo = PRESETS["demo"]
    splits = synthetic._scan_splits(demo.n_scans, demo.split_fractions, np.random.default_rng(0))
    n = {s: splits.count(s) for s in ("train", "val", "test")}
    assert n["train"] * demo.tv_visits >= 60
    per_scan_low = demo.tv_visits + len(demo.other_planes) + demo.poor_tv_visits  # approach + other + poor
    assert n["test"] * demo.tv_visits >= 20 and n["test"] * per_scan_low >= 20
    assert demo.frame_size == (128, 128) and demo.n_silent_audio == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"n_scans": 0}, "n_scans"),
        ({"frame_size": (16, 64)}, "frame_size"),
        ({"other_planes": ("kidney",)}, "other_planes"),
        ({"split_fractions": (0.5, 0.2, 0.2)}, "split_fractions"),
        ({"hold_s": (1.5, 2.0)}, "hold_s"),  # the 2 s freeze clip would reach into the approach
        ({"tv_approach_s": (3.0, 4.0)}, "tv_approach_s"),  # approach clip 7 s before the freeze
        ({"lead_in_s": 0.1, "background_s": (2.0, 2.0)}, "lead_in_s"),  # < 64 frames before a clip end
        ({"n_hires_audio": 4, "n_silent_audio": 3}, "n_hires_audio"),
    ],
)
def test_bad_config_values_are_rejected(change: dict, key: str):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{key}:"):
        dataclasses.replace(TINY, **change)
