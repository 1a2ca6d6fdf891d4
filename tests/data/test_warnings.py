"""Issue 11, item 3: dataset warnings grouped by kind (a count and the first few), and only about what the
run uses (no gaze warnings for a run without gaze, no class-count warning for a quality target)."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest

from datamodules.clips import ClipFilter, VideoClipDataModule
from datamodules.validate import Problem, group_warnings, load_dataset, main, relevant_warnings


def no_gaze(i: int) -> Problem:
    return Problem(
        "scans.csv", i + 2, "gaze", f"no gaze for scan s{i}", "warning", "no gaze for a scan", "gaze"
    )


def test_group_warnings_known_answer() -> None:
    short = Problem("clips.csv", 9, "end_frame", "clip is 0.30 s long", "warning", "clip shorter than 0.5 s")
    lines = group_warnings([no_gaze(i) for i in range(5)] + [short], first=3)
    assert lines == [
        "5 x no gaze for a scan: scans.csv:2: gaze: no gaze for scan s0; scans.csv:3: gaze: no gaze for scan s1; "
        "scans.csv:4: gaze: no gaze for scan s2; ... and 2 more",
        "clips.csv:9: end_frame: clip is 0.30 s long",  # a kind seen once: the warning itself
    ]
    assert relevant_warnings([no_gaze(0), short], uses={"video"}) == [short]
    assert relevant_warnings([no_gaze(0), short], uses=None) == [no_gaze(0), short]


def edited_copy(tiny: Path, tmp_path: Path, manifest: str, edit) -> Path:
    """A copy of the tiny dataset (media symlinked) with ``edit(row)`` applied to each row of a manifest."""
    root = tmp_path / "ds"
    root.mkdir()
    for entry in tiny.iterdir():
        if entry.suffix == ".csv":
            shutil.copy(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry)
    with open(root / manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(root / manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(edit(dict(r)) for r in rows)
    return root


def dataset_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("dataset warning")]


def test_no_gaze_is_one_grouped_line_and_only_for_runs_with_gaze(
    tiny_dataset: Path, tmp_path: Path, caplog, capsys
):
    root = edited_copy(tiny_dataset, tmp_path, "scans.csv", lambda r: {**r, "gaze": ""})
    n_scans = len((root / "scans.csv").read_text().splitlines()) - 1
    caplog.set_level(logging.WARNING, logger="sonolab.data")
    load_dataset(root, deep=False, uses={"video", "gaze"})
    lines = dataset_warnings(caplog)
    assert len(lines) == 1 and lines[0].startswith(f"dataset warning: {n_scans} x no gaze for a scan: ")
    assert lines[0].endswith(f"... and {n_scans - 3} more")
    caplog.clear()
    load_dataset(root, deep=False, uses={"video", "audio", "label"})  # a run without gaze
    assert dataset_warnings(caplog) == []
    caplog.clear()
    assert main([str(root), "--shallow"]) == 0  # the command groups too (--all-warnings lists each)
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(out) == 1 and out[0].startswith(f"warning: {n_scans} x no gaze for a scan: ")
    assert main([str(root), "--shallow", "--all-warnings"]) == 0
    assert sum(line.startswith("warning:") for line in capsys.readouterr().out.splitlines()) == n_scans


def test_class_count_warning_only_for_a_label_target(tiny_dataset: Path, tmp_path: Path, caplog) -> None:
    def one_val_label(row: dict) -> dict:
        return {**row, "label": "transventricular"} if row["split"] == "val" else row

    root = edited_copy(tiny_dataset, tmp_path, "clips.csv", one_val_label)
    caplog.set_level(logging.WARNING, logger="sonolab.data")
    common = dict(root=str(root), synthetic=None, image_size=16)
    VideoClipDataModule(**common).load_manifests()  # plane labels are the target
    assert any("has fewer than 2 classes" in m for m in dataset_warnings(caplog))
    caplog.clear()
    vqa = VideoClipDataModule(**common, train_filter=ClipFilter(quality=[1]))  # the VQA task: quality
    assert vqa.targets == ["quality"]
    vqa.load_manifests()
    assert not any("classes" in m for m in dataset_warnings(caplog))
    caplog.clear()
    VideoClipDataModule(**common, train_filter=ClipFilter(quality=[1]), targets=["label"]).load_manifests()
    assert any("fewer than 2 classes" in m for m in dataset_warnings(caplog))
    with pytest.raises(ValueError, match=r"data.init_args.targets\[\]='grade' is not one of"):
        VideoClipDataModule(**common, targets=["grade"])
