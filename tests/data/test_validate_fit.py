"""Issue 11, item 2: validation fits the run. The command validates what exists; each DataModule requires
what its run needs and the error names the manifest and the option that asks for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datamodules.boxes import BoxFrameDataModule
from datamodules.clips import VideoClipDataModule
from datamodules.images import ImageDataModule
from datamodules.validate import DatasetValidationError, main, present_requirements


def subset(tiny: Path, tmp_path: Path, keep: set[str]) -> Path:
    """A copy of the tiny dataset holding only the manifests in ``keep`` (media shared by symlink)."""
    root = tmp_path / "ds"
    root.mkdir()
    for entry in tiny.iterdir():
        if entry.suffix == ".csv":
            if entry.stem in keep:
                shutil.copy(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry)
    return root


def test_image_only_dataset_validates_with_no_flags(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    root = subset(tiny_dataset, tmp_path, {"images", "pairs"})
    assert present_requirements(root) == {"images": "", "pairs": ""}
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "required manifest is missing" not in out and out.splitlines()[-1].startswith("OK: ")


def test_boxes_only_dataset_validates_with_no_flags(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    root = subset(tiny_dataset, tmp_path, {"scans", "boxes"})
    assert main([str(root)]) == 0, capsys.readouterr().out
    # boxes reference scans: without scans.csv that is the one error, and it says why
    (root / "scans.csv").unlink()
    assert present_requirements(root) == {"boxes": "", "scans": "boxes.csv reference scans by scan_id"}
    assert main([str(root)]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert errors[0] == (
        f"error: scans.csv: required manifest is missing ({root.resolve() / 'scans.csv'}): "
        "boxes.csv reference scans by scan_id"
    )
    n_boxes = len((root / "boxes.csv").read_text().splitlines()) - 1
    assert f"cannot check the scans of {n_boxes} boxes: scans.csv is missing" in errors[1]


def test_explicit_require_still_requires_and_says_so(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    root = subset(tiny_dataset, tmp_path, {"images", "pairs"})
    assert main([str(root), "--require", "scans,clips"]) == 1
    out = capsys.readouterr().out
    assert "clips.csv: required manifest is missing" in out and "named in --require" in out


def test_empty_folder_is_an_error_naming_the_manifests(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 1
    assert "holds no manifest (scans.csv, clips.csv" in capsys.readouterr().err


def test_each_datamodule_names_the_missing_manifest_and_option(tiny_dataset: Path, tmp_path: Path) -> None:
    root = subset(tiny_dataset, tmp_path, {"images"})
    common = dict(root=str(root), synthetic=None, image_size=16)
    with pytest.raises(DatasetValidationError) as clips:
        VideoClipDataModule(**common).setup("fit")
    message = str(clips.value)
    assert "clips.csv: required manifest is missing" in message and "source=clips" in message
    assert "scans.csv: required manifest is missing" in message
    with pytest.raises(
        DatasetValidationError, match=r"pairs\.csv: required manifest is missing.*eval_on=pairs"
    ):
        ImageDataModule(**common).setup("fit")
    with pytest.raises(DatasetValidationError, match=r"boxes\.csv: required manifest is missing.*zoom-in"):
        BoxFrameDataModule(**common).setup("fit")
    # what each run needs, no more: windows over whole scans need no clips.csv; eval on images no pairs
    assert set(VideoClipDataModule(**common, source="windows").requirements()) == {"scans"}
    assert set(ImageDataModule(**common, eval_on="images").requirements()) == {"images"}
