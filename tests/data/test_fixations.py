"""Item 10 of issue 11 (data side): batches carry a binary fixation map of the gaze CSV's real samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datamodules.clips import VideoClipDataModule
from datamodules.readers import fixation_maps
from datamodules.sequences import SaliencySequenceDataModule
from lightning_modules.common.saliency import fixation_map_from_points

HW = 16


def test_fixation_maps_mark_the_pixel_of_each_valid_sample() -> None:
    frames = [
        np.array([[0.5, 0.25], [0.0, 0.9], [1.0, 1.0]]),  # (row 1, col 2), (row 3, col 0), clipped (3, 3)
        np.array([[np.nan, np.nan]]),  # blink only: no fixation
        np.empty((0, 2)),
    ]
    maps = fixation_maps(frames, 4, 4)
    assert maps.dtype == bool and maps.shape == (3, 4, 4)
    assert sorted(map(tuple, np.argwhere(maps[0]).tolist())) == [(1, 2), (3, 0), (3, 3)]
    assert not maps[1].any() and not maps[2].any()
    # the same rasterisation as the metrics' helper (one rule on both sides)
    assert torch.equal(torch.from_numpy(maps[0]), fixation_map_from_points(torch.tensor(frames[0]), 4, 4)[0])


def check_fixations(batch: dict) -> None:
    fix = batch["fixations"]
    assert fix.dtype == torch.bool and fix.shape == batch["gaze"].shape
    # a frame has a fixation exactly when its gaze map is a real one (gaze_valid)
    assert torch.equal(fix.flatten(-2).any(-1)[:, 0], batch["gaze_valid"])
    # each fixated pixel lies under its Gaussian gaze map (well above the uniform level)
    assert (batch["gaze"][fix] > 1.0 / (HW * HW)).all()


def test_clip_batches_carry_fixations_with_gaze(tiny_dataset: Path) -> None:
    dm = VideoClipDataModule(
        root=str(tiny_dataset), synthetic=None, image_size=HW, num_frames=4, frame_interval=2,
        modalities=["video", "gaze"], batch_size=2, gaze_sigma=2.0,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    check_fixations(next(iter(dm.val_dataloader())))
    no_gaze = VideoClipDataModule(
        root=str(tiny_dataset), synthetic=None, image_size=HW, num_frames=4, frame_interval=2, batch_size=2
    )
    no_gaze.setup("fit")
    assert "fixations" not in next(iter(no_gaze.val_dataloader()))


def test_sequence_batches_carry_fixations(tiny_dataset: Path) -> None:
    dm = SaliencySequenceDataModule(
        root=str(tiny_dataset), synthetic=None, image_size=HW, num_before=2, batch_size=2, gaze_sigma=2.0
    )
    dm.prepare_data()
    dm.setup("fit")
    check_fixations(next(iter(dm.val_dataloader())))
