"""Issue 11: still images are a box source. boxes.csv rows on images.csv images (parsed, validated, read by
BoxFrameDataModule), and ``python -m datamodules.masks``: boxes from segmentation masks with known answers."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_args import read_csv

from datamodules.boxes import BoxFrameDataModule
from datamodules.errors import DataError
from datamodules.manifest import BoxRecord, check_header, parse_boxes, read_table
from datamodules.masks import boxes_from_masks, main, mask_box, read_mask
from datamodules.validate import main as validate_main
from datamodules.validate import present_requirements, validate_dataset

H, W = 48, 64


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def noise_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W), dtype=np.uint8)


def ellipse_mask(
    center: tuple[int, int], axes: tuple[int, int], outline: bool, angle: float = 0
) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, center, axes, angle, 0, 360, 255, 1 if outline else -1)
    return mask


def expected_box(center: tuple[int, int], axes: tuple[int, int]) -> tuple[float, float, float, float]:
    """An axis-aligned ellipse drawn by cv2 covers pixel columns cx-a..cx+a: [cx - a, cx + a + 1) normalised."""
    (cx, cy), (a, b) = center, axes
    return ((cx - a) / W, (cy - b) / H, (cx + a + 1) / W, (cy + b + 1) / H)


# ------------------------------------------------------------------------------------------- boxes.csv


def test_a_box_names_an_image_or_a_scan_frame_exactly_once(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "boxes.csv",
        ["scan_id", "frame", "image", "x0", "y0", "x1", "y1"],
        [
            ["s1", 3, "", 0, 0.1, 1, 0.9],
            ["", "", "images/a.png", 0.2, 0.1, 0.5, 0.9],
            ["s1", 3, "images/a.png", 0.2, 0.1, 0.5, 0.9],
            ["", "", "", 0.2, 0.1, 0.5, 0.9],
        ],
    )
    problems: list[tuple] = []
    boxes = parse_boxes(read_table(path), lambda *p: problems.append(p))
    assert boxes == [
        BoxRecord("s1", 3, 0.0, 0.1, 1.0, 0.9, 2),
        BoxRecord(None, None, 0.2, 0.1, 0.5, 0.9, 3, "images/a.png"),
    ]
    assert [(p[1], p[2]) for p in problems] == [(4, "image"), (5, "image")]
    assert "names both an image ('images/a.png') and a scan frame" in problems[0][3]
    assert "give exactly one" in problems[0][3]
    assert problems[1][3] == "empty: give an image of images.csv, or scan_id + frame"
    # a header that says nowhere where a box is
    write_csv(path, ["x0", "y0", "x1", "y1"], [[0, 0, 1, 1]])
    problems.clear()
    assert not check_header("boxes", read_table(path), lambda *p: problems.append(p))
    assert problems[0][3].startswith(
        "missing required column: scan_id + frame (boxes on scan frames) or image (boxes on images.csv images)"
    )


@pytest.fixture
def image_ds(tmp_path: Path) -> Path:
    """images.csv (4 images: 2 train, 1 val, 1 test) and boxes.csv on them; no scans.csv."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    splits = ["train", "train", "val", "test"]
    for i in range(4):
        cv2.imwrite(str(root / "images" / f"i{i}.png"), noise_image(i))
    write_csv(
        root / "images.csv",
        ["image", "plane", "split", "role"],
        [[f"images/i{i}.png", "head", s, "train"] for i, s in enumerate(splits)],
    )
    write_csv(
        root / "boxes.csv",
        ["image", "x0", "y0", "x1", "y1"],
        [[f"images/i{i}.png", 0.1 * i, 0.2, 0.5 + 0.1 * i, 0.8] for i in range(4)],
    )
    return root


def test_image_boxes_validate_with_no_flags_and_need_no_scans(image_ds: Path, capsys) -> None:
    assert present_requirements(image_ds) == {"images": "", "boxes": ""}
    assert validate_main([str(image_ds)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK: ")
    assert set(BoxFrameDataModule(root=str(image_ds), synthetic=None).requirements()) == {"boxes", "images"}
    (image_ds / "images.csv").unlink()
    assert present_requirements(image_ds)["images"] == "boxes.csv reference images of images.csv by image"


def test_image_box_errors_name_the_row(image_ds: Path) -> None:
    (image_ds / "images" / "i1.png").write_bytes(b"\x89PNG broken")
    with open(image_ds / "boxes.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["images/none.png", 0.1, 0.1, 0.2, 0.2])  # line 6
        csv.writer(fh).writerow(["./images/i2.png", 0.1, 0.1, 0.2, 0.2])  # line 7: i2 written another way
    report = validate_dataset(image_ds, require=("images", "boxes"))
    errors = [str(p) for p in report.errors if p.file == "boxes.csv"]
    assert errors == [
        "boxes.csv:3: image: image 'images/i1.png' is invalid (images.csv:3)",
        "boxes.csv:6: image: image 'images/none.png' is not in images.csv",
    ]
    kept = {b.row: b.image for b in report.manifests.boxes}
    assert kept == {2: "images/i0.png", 4: "images/i2.png", 5: "images/i3.png", 7: "images/i2.png"}


def test_image_boxes_read_by_the_datamodule_with_their_images_split(image_ds: Path, tmp_path: Path) -> None:
    dm = BoxFrameDataModule(
        root=str(image_ds), synthetic=None, image_size=[24, 32], batch_size=2, cache_dir=str(tmp_path / "c")
    )
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    item = dm.datasets["val"][0]
    assert item["image_id"] == "images/i2.png"
    expected = (
        cv2.resize(noise_image(2), (32, 24), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1
    )
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(item["box"].numpy(), [0.2, 0.2, 0.7, 0.8], atol=1e-6)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 24, 32) and sorted(batch["image_id"]) == [
        "images/i0.png",
        "images/i1.png",
    ]


# ------------------------------------------------------------------------------------- masks -> boxes


@pytest.mark.parametrize("angle", [0, 35])
def test_filled_and_outline_masks_give_the_ellipses_box(angle: float) -> None:
    center, axes = (30, 22), (18, 11)
    filled = ellipse_mask(center, axes, outline=False, angle=angle)
    ys, xs = np.nonzero(filled)
    pixel_box = (xs.min() / W, ys.min() / H, (xs.max() + 1) / W, (ys.max() + 1) / H)
    box = mask_box(filled > 0)
    assert box.mode == "filled" and (box.x0, box.y0, box.x1, box.y1) == pytest.approx(pixel_box)
    if angle == 0:
        assert pixel_box == pytest.approx(expected_box(center, axes))
    outline = mask_box(ellipse_mask(center, axes, outline=True, angle=angle) > 0)
    assert outline.mode == "outline"  # auto: a thin contour
    # the fitted ellipse's box: within a pixel of the filled one
    assert (
        np.abs(np.subtract((outline.x0, outline.y0, outline.x1, outline.y1), pixel_box) * [W, H, W, H]).max()
        < 1
    )


def test_outline_with_a_gap_still_gives_the_whole_ellipse() -> None:
    center, axes = (30, 22), (18, 11)
    outline = ellipse_mask(center, axes, outline=True)
    outline[:, 40:] = 0  # the right part of the contour is missing
    fitted = mask_box(outline > 0, "outline")
    region = mask_box(outline > 0, "filled")
    target = np.array(expected_box(center, axes)) * [W, H, W, H]
    assert np.abs(np.array([fitted.x0, fitted.y0, fitted.x1, fitted.y1]) * [W, H, W, H] - target).max() < 1.5
    assert region.x1 == pytest.approx(40 / W)  # the box of the visible pixels only


def test_largest_component_and_mask_levels(tmp_path: Path) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[2:5, 2:5] = 1  # a speck
    mask[10:30, 20:50] = 1  # the structure (0/1 mask)
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    box = mask_box(read_mask(tmp_path / "m.png"))
    assert (box.x0, box.y0, box.x1, box.y1, box.mode) == (20 / W, 10 / H, 50 / W, 30 / H, "filled")


def make_folder(root: Path, n: int = 4, suffix: str = "_Annotation", empty: tuple[int, ...] = ()) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i:03d}_HC.png"), noise_image(i))
        mask = (
            np.zeros((H, W), np.uint8)
            if i in empty
            else ellipse_mask((30, 22), (10 + i, 8), outline=i % 2 == 1)
        )
        cv2.imwrite(str(root / "masks" / f"{i:03d}_HC{suffix}.png"), mask)


def test_masks_command_writes_images_and_boxes(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    make_folder(root, n=6)
    args = [
        str(root),
        "--images",
        str(root / "images"),
        "--masks",
        str(root / "masks"),
        "--mask-suffix",
        "_Annotation",
    ]
    assert main([*args, "--plane", "head", "--ratios", "0.5,0.5,0", "--seed", "3"]) == 0
    images = read_csv(root / "images.csv")
    assert [r["image"] for r in images] == [f"images/{i:03d}_HC.png" for i in range(6)]
    assert {r["plane"] for r in images} == {"head"} and {r["role"] for r in images} == {"train"}
    assert sorted(r["split"] for r in images) == ["train"] * 3 + ["val"] * 3
    boxes = read_csv(root / "boxes.csv")
    assert [b["image"] for b in boxes] == [r["image"] for r in images]
    assert [b["mode"] for b in boxes] == ["filled", "outline"] * 3
    b0 = [float(boxes[0][k]) for k in ("x0", "y0", "x1", "y1")]
    assert b0 == pytest.approx(expected_box((30, 22), (10, 8)), abs=1e-6)
    assert boxes[0]["mask"] == "masks/000_HC_Annotation.png"
    assert "wrote" in capsys.readouterr().out
    assert validate_main([str(root)]) == 0
    # never overwrites: a second run refuses, the files are unchanged
    before = (root / "boxes.csv").read_bytes()
    assert main(args) == 1
    assert "boxes.csv exists: give --out a new file" in capsys.readouterr().err
    assert (root / "boxes.csv").read_bytes() == before
    # --out writes a new boxes file and matches masks to the existing images.csv (not rewritten)
    assert main([*args, "--out", str(tmp_path / "boxes2.csv"), "--mode", "filled"]) == 0
    assert [b["mode"] for b in read_csv(tmp_path / "boxes2.csv")] == ["filled"] * 6
    assert "images.csv exists: masks matched to its rows" in capsys.readouterr().out
    assert read_csv(root / "images.csv") == images


def test_empty_masks_are_listed_never_dropped_silently(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    make_folder(root, n=4, empty=(1, 2))
    args = [
        str(root),
        "--images",
        str(root / "images"),
        "--masks",
        str(root / "masks"),
        "--mask-suffix",
        "_Annotation",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 empty mask(s) (no pixel on): give --skip-empty" in err
    assert "001_HC_Annotation.png" in err and "002_HC_Annotation.png" in err and "nothing written" in err
    assert not (root / "boxes.csv").exists() and not (root / "images.csv").exists()
    assert main([*args, "--skip-empty"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 empty mask(s)" in out and "have no mask" not in out  # they have one: empty
    assert [b["image"] for b in read_csv(root / "boxes.csv")] == ["images/000_HC.png", "images/003_HC.png"]
    assert len(read_csv(root / "images.csv")) == 4  # every image is listed


def test_masks_without_images_and_wrong_sizes_are_errors(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_folder(root, n=2)
    # images and masks in one folder (the HC18 layout): the suffix tells them apart
    same = tmp_path / "same"
    same.mkdir()
    for path in [*(root / "images").iterdir(), *(root / "masks").glob("00*")]:
        (same / path.name).write_bytes(path.read_bytes())
    result = boxes_from_masks(same, same, same, "_Annotation")
    assert not result.errors and [b["image"] for b in result.boxes] == ["000_HC.png", "001_HC.png"]
    with pytest.raises(DataError, match="give --mask-suffix"):
        boxes_from_masks(same, same, same, "")
    cv2.imwrite(str(root / "masks" / "999_HC_Annotation.png"), ellipse_mask((30, 22), (5, 5), False))
    cv2.imwrite(str(root / "masks" / "001_HC_Annotation.png"), np.full((H, H), 255, np.uint8))  # square
    result = boxes_from_masks(root, root / "masks", root / "images", "_Annotation")
    assert len(result.errors) == 2
    assert "mask is 48x48 but its image" in result.errors[0] and "001_HC.png is 64x48" in result.errors[0]
    assert (
        result.errors[1].startswith("1 mask(s) without an image in")
        and "999_HC_Annotation.png" in result.errors[1]
    )
