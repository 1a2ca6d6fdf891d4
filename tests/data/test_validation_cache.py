"""Issue 11, item 4: the validation result is cached by dataset fingerprint + parameters. An unchanged
dataset starts without probing any medium; a changed file is validated again; ``revalidate`` forces it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import datamodules.validate as validate_module
from datamodules.clips import VideoClipDataModule
from datamodules.validate import DatasetValidationError, load_dataset, validate_dataset


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every video the validator probes, in order."""
    calls: list[Path] = []
    real = validate_module.probe_video

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(validate_module, "probe_video", counting)
    return calls


@pytest.fixture
def dataset(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset (its files get touched)."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "ds", symlinks=True))


def dm(root: Path, cache: Path, **kwargs) -> VideoClipDataModule:
    return VideoClipDataModule(root=str(root), synthetic=None, image_size=16, cache_dir=str(cache), **kwargs)


def test_second_setup_probes_no_media_and_a_touched_file_is_revalidated(dataset, tmp_path, probes):
    n_videos = len((dataset / "scans.csv").read_text().splitlines()) - 1
    cache = tmp_path / "cache"
    first = dm(dataset, cache).load_manifests()
    assert len(probes) == n_videos  # the first validation probes every video once
    probes.clear()
    second = dm(dataset, cache).load_manifests()  # a new process would do the same: nothing in memory
    assert probes == []
    assert (
        second.scans == first.scans and second.clips == first.clips and second.video_info == first.video_info
    )
    assert len(list((cache / "validation").glob("*.json"))) == 1

    video = dataset / "videos" / "scan_001.avi"
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: a new mtime
    dm(dataset, cache).load_manifests()
    assert len(probes) == n_videos and video in probes  # validated again
    probes.clear()
    dm(dataset, cache).load_manifests()
    assert probes == []  # and cached again

    dm(dataset, cache, revalidate=True).load_manifests()  # the option forces a full check
    assert len(probes) == n_videos


def test_other_parameters_are_another_entry(dataset, tmp_path, probes):
    cache = tmp_path / "cache"
    load_dataset(dataset, require=("scans", "clips"), cache_dir=cache)
    probes.clear()
    load_dataset(dataset, require=("scans", "clips"), splits=("test",), cache_dir=cache)
    assert probes, "other splits: validated, not read from the first entry"
    assert len(list((cache / "validation").glob("*.json"))) == 2


def test_cached_errors_still_stop_the_run_and_a_fix_is_seen(dataset, tmp_path, probes):
    cache = tmp_path / "cache"
    (dataset / "videos" / "scan_002.avi").rename(dataset / "moved.avi")
    for _ in range(2):  # the second time from the cache, with the same message
        with pytest.raises(DatasetValidationError, match=r"video file not found: videos/scan_002\.avi"):
            dm(dataset, cache).load_manifests()
    (dataset / "moved.avi").rename(dataset / "videos" / "scan_002.avi")  # the missing file is back
    dm(dataset, cache).load_manifests()


def test_cached_report_equals_a_fresh_one(dataset, tmp_path):
    from datamodules.validation_cache import decode, encode

    report = validate_dataset(dataset, require=("scans", "clips", "images", "pairs", "boxes"))
    again = decode(encode(report))
    assert again.errors == report.errors and again.warnings == report.warnings
    m, n = report.manifests, again.manifests
    assert (n.scans, n.clips, n.images, n.pairs, n.boxes, n.video_info) == (
        m.scans,
        m.clips,
        m.images,
        m.pairs,
        m.boxes,
        m.video_info,
    )
    assert [im.extra for im in n.images.values()] == [im.extra for im in m.images.values()]


def test_unwritable_cache_folder_only_costs_the_reuse(dataset, tmp_path, monkeypatch):
    from datamodules import validation_cache

    # read the warning at its source: another test's logging setup may have disabled this module's logger
    warnings: list[str] = []
    monkeypatch.setattr(validation_cache.log, "warning", lambda msg, *args: warnings.append(msg % args))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    m = load_dataset(dataset, cache_dir=blocker)  # cache_dir is a file: nothing can be written there
    assert m.scans
    assert any("cannot store the validation result" in w for w in warnings)
