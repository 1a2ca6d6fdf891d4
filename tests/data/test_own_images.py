"""A user's own data: a folder of still images + segmentation masks, through the commands of the VQA README's
"Your own data: a folder of images + masks" section, run exactly as written there (issue 11: manifests written
by the project's commands, validated with no flags, zoom-in pretraining with fast_dev_run)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_args import read_csv, readme_commands, run_readme_line

from datamodules import validate
from datamodules.boxes import BoxFrameDataModule

REPO = Path(__file__).resolve().parents[2]
README = REPO / "lightning_modules" / "vqa_gan" / "README.md"
SECTION = "## Your own data: a folder of images + masks"
N, H, W = 12, 96, 128


def head(i: int) -> tuple[tuple[int, int], tuple[int, int], float]:
    """Centre, semi-axes and angle of image i's structure (known answers for its box)."""
    rng = np.random.default_rng(100 + i)
    a, b = int(rng.integers(18, 30)), int(rng.integers(12, 20))
    cx, cy = int(rng.integers(a + 4, W - a - 4)), int(rng.integers(a + 4, H - a - 4))
    return (cx, cy), (a, b), float(rng.uniform(0, 180))


def ellipse_box(center, axes, angle) -> np.ndarray:
    """Pixel box [x0, y0, x1, y1) of a rotated ellipse (continuous: pixel j covers [j, j + 1))."""
    (cx, cy), (a, b), t = center, axes, math.radians(angle)
    ex, ey = math.hypot(a * math.cos(t), b * math.sin(t)), math.hypot(a * math.sin(t), b * math.cos(t))
    return np.array([cx - ex, cy - ey, cx + ex + 1, cy + ey + 1])


def write_foreign_folder(folder: Path) -> None:
    """``my_images/images/NNN_HC.png`` (speckle + a bright ellipse) and ``my_images/masks/NNN_HC_Annotation.png``:
    filled masks for even images, 2-pixel outlines (as head-circumference annotations are) for odd ones."""
    images, mask_dir = folder / "my_images" / "images", folder / "my_images" / "masks"
    images.mkdir(parents=True)
    mask_dir.mkdir()
    for i in range(N):
        center, axes, angle = head(i)
        image = np.random.default_rng(i).integers(0, 60, (H, W), dtype=np.uint8)
        cv2.ellipse(image, center, axes, angle, 0, 360, 200, -1)
        cv2.imwrite(str(images / f"{i:03d}_HC.png"), image)
        mask = np.zeros((H, W), np.uint8)
        cv2.ellipse(mask, center, axes, angle, 0, 360, 255, -1 if i % 2 == 0 else 2)
        cv2.imwrite(str(mask_dir / f"{i:03d}_HC_Annotation.png"), mask)


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder as a user's: their images and masks, and sonolab's configs/ beside them."""
    write_foreign_folder(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_flow_from_images_and_masks_to_zoom_pretraining(user_folder: Path) -> None:
    commands = readme_commands(README, SECTION)
    assert [shlex.split(c)[:3] for c in commands] == [
        ["python", "-m", "datamodules.masks"],
        ["python", "-m", "datamodules.validate"],
        ["lightning", "fit", "--config"],
    ]
    assert shlex.split(commands[1]) == ["python", "-m", "datamodules.validate", "my_images"]  # no flags
    assert "--data.init_args.root=my_images" in commands[2] and "--config configs/zoom.yaml" in commands[2]

    run_readme_line(commands[0])
    images = read_csv("my_images/images.csv")
    assert [r["image"] for r in images] == [f"images/{i:03d}_HC.png" for i in range(N)]
    counts = {s: sum(r["split"] == s for r in images) for s in ("train", "val", "test")}
    assert all(abs(counts[s] - r * N) <= 1 for s, r in zip(counts, (0.7, 0.15, 0.15))), counts
    boxes = read_csv("my_images/boxes.csv")
    assert [b["image"] for b in boxes] == [r["image"] for r in images]
    assert [b["mode"] for b in boxes] == ["filled", "outline"] * (N // 2)
    for i, box in enumerate(boxes):
        got = np.array([float(box[k]) for k in ("x0", "y0", "x1", "y1")]) * [W, H, W, H]
        # filled: the drawn pixels' box (cv2 rasterises the rotated ellipse to within a pixel); outline: the
        # ellipse fitted to the outer edge of a 2-pixel contour, which lies up to a pixel outside
        assert np.abs(got - ellipse_box(*head(i))).max() < (1.0 if i % 2 == 0 else 2.0), (i, got)

    run_readme_line(commands[1])
    cli = run_readme_line(commands[2])
    assert cli is not None and cli.trainer.state.finished
    dm = cli.datamodule
    assert isinstance(dm, BoxFrameDataModule) and dm.hw == (64, 64)
    assert len(dm.datasets["train"]) == counts["train"] and len(dm.datasets["val"]) == counts["val"]
    assert all(item.image is not None for item in dm.datasets["train"].items)  # still images, no scans
    iou = float(cli.trainer.callback_metrics["val/iou"])
    assert 0.0 <= iou <= 1.0


def test_a_still_image_given_as_a_scan_video_says_what_to_do(user_folder: Path, capsys) -> None:
    """What the user of this folder tried first: the PNGs as scan videos."""
    root = user_folder / "my_images"
    with open(root / "scans.csv", "w") as fh:
        fh.write("scan_id,video,split\nhc0,images/000_HC.png,train\n")
    assert validate.main([str(root), "--splits", ""]) == 1
    out = capsys.readouterr().out
    assert "scans.csv:2: video: images/000_HC.png: a still image, not a video" in out
    assert "python -m datamodules.masks" in out
