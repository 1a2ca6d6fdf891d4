"""Every DataModule yields the documented batch keys, shapes, dtypes and value ranges (docs/data.md)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from datamodules.boxes import BoxFrameDataModule
from datamodules.clips import ClipFilter, VideoClipDataModule, anchored_indices
from datamodules.images import ImageDataModule
from datamodules.sequences import SaliencySequenceDataModule

T, K, HW = 4, 2, 32


def clip_dm(root: Path, **kwargs) -> VideoClipDataModule:
    args = dict(
        root=str(root),
        synthetic=None,
        image_size=HW,
        num_frames=T,
        frame_interval=K,
        modalities=["video", "flow", "gaze", "audio", "image"],
        batch_size=2,
        audio_seconds=1.0,
    )
    args.update(kwargs)
    dm = VideoClipDataModule(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def check_unit_range(x: torch.Tensor) -> None:
    assert x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_anchored_indices_end_at_the_freeze_frame() -> None:
    assert anchored_indices(100, 4, 8) == (75, 83, 91, 99)
    assert anchored_indices(10, 1, 8) == (9,)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_clip_batches_have_documented_layout(tiny_dataset: Path, num_workers: int) -> None:
    dm = clip_dm(tiny_dataset, num_workers=num_workers)
    batch = next(iter(dm.train_dataloader()))
    B = 2
    assert batch["video"].shape == (B, 1, T, HW, HW)
    check_unit_range(batch["video"])
    assert batch["flow"].shape == (B, 2, T, HW, HW) and batch["flow"].dtype == torch.float32
    assert torch.all(batch["flow"][:, :, 0] == 0), "flow at t=0 is zero by contract"
    assert batch["gaze"].shape == (B, 1, T, HW, HW)
    torch.testing.assert_close(batch["gaze"].sum(dim=(-1, -2)), torch.ones(B, 1, T), rtol=0, atol=1e-4)
    assert batch["gaze_valid"].shape == (B, T) and batch["gaze_valid"].dtype == torch.bool
    assert batch["audio"].ndim == 4 and batch["audio"].shape[:3] == (B, 1, 64)
    assert torch.isfinite(batch["audio"]).all()
    assert batch["image"].shape == (B, 1, HW, HW)
    check_unit_range(batch["image"])
    assert batch["label"].dtype == torch.long and batch["quality"].dtype == torch.long
    assert len(batch["clip_id"]) == B and all(isinstance(c, str) for c in batch["clip_id"])


def test_image_is_one_of_the_clip_frames_and_last_in_eval(tiny_dataset: Path) -> None:
    dm = clip_dm(tiny_dataset, modalities=["video", "image"])
    sample = dm.datasets["train"][0]
    assert any(torch.equal(sample["image"], sample["video"][:, t]) for t in range(T))
    sample = dm.datasets["test"][0]
    assert torch.equal(sample["image"], sample["video"][:, -1])


def test_filters_select_labels_and_quality(tiny_dataset: Path) -> None:
    dm = clip_dm(
        tiny_dataset,
        modalities=["video"],
        train_filter=ClipFilter(labels=["transventricular"], quality=[1]),
    )
    manifests = dm.load_manifests()
    train_ids = {it.item_id for it in dm.items["train"]}
    expected = {
        c.clip_id
        for c in manifests.clips.values()
        if c.split == "train" and c.label == "transventricular" and c.quality == 1
    }
    assert train_ids == expected and expected
    assert all(it.quality == 1 for it in dm.items["train"])


def test_rgb_channels(tiny_dataset: Path) -> None:
    dm = clip_dm(tiny_dataset, modalities=["video"], channels=3)
    assert dm.datasets["val"][0]["video"].shape == (3, T, HW, HW)


def test_windows_cover_every_scan_scan_wise(tiny_dataset: Path) -> None:
    dm = clip_dm(tiny_dataset, modalities=["video"], source="windows", window_stride=40)
    manifests = dm.load_manifests()
    for split, items in dm.items.items():
        assert all(manifests.scan_split(it.scan_id) == split for it in items)
    assert {it.scan_id for its in dm.items.values() for it in its} == set(manifests.scans)


def test_clip_needing_frames_before_the_video_is_an_error(tiny_dataset: Path) -> None:
    with pytest.raises(ValueError, match="before the start of the video"):
        clip_dm(tiny_dataset, modalities=["video"], num_frames=8, frame_interval=10_000)


def test_global_batch_size_is_split_over_devices(tiny_dataset: Path) -> None:
    dm = clip_dm(tiny_dataset, modalities=["video"], batch_size=4)
    dm.trainer = SimpleNamespace(world_size=2)
    assert dm.per_device_batch_size() == 2
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match="divisible by the number of devices"):
        dm.per_device_batch_size()


@pytest.mark.parametrize(("before", "after"), [(3, 0), (0, 2), (2, 2), (0, 0)])
def test_saliency_sequences(tiny_dataset: Path, before: int, after: int) -> None:
    dm = SaliencySequenceDataModule(
        root=str(tiny_dataset),
        synthetic=None,
        image_size=HW,
        num_before=before,
        num_after=after,
        batch_size=2,
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    L = before + 1 + after
    assert batch["video"].shape == (2, 1, L, HW, HW)
    check_unit_range(batch["video"])
    assert batch["gaze"].shape == (2, 1, L, HW, HW)
    torch.testing.assert_close(batch["gaze"].sum(dim=(-1, -2)), torch.ones(2, 1, L), rtol=0, atol=1e-4)
    assert torch.all(batch["target_index"] == before)
    assert batch["gaze_valid"][torch.arange(2), batch["target_index"]].all(), "targets have a fixation"


def test_saliency_sequence_frames_are_consecutive(tiny_dataset: Path) -> None:
    dm = SaliencySequenceDataModule(
        root=str(tiny_dataset), synthetic=None, image_size=HW, num_before=2, batch_size=2
    )
    dm.setup("fit")
    first = dm.datasets["train"].items[0]
    assert first.offsets == tuple(range(first.offsets[0], first.offsets[0] + 3))


def test_images_and_pairs(tiny_dataset: Path) -> None:
    dm = ImageDataModule(root=str(tiny_dataset), synthetic=None, image_size=HW, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, HW, HW)
    check_unit_range(batch["image"])
    assert batch["label"].min() >= 0
    pairs = next(iter(dm.test_dataloader()))
    assert pairs["better"].shape == pairs["worse"].shape == (len(pairs["plane"]), 1, HW, HW)
    standard = next(iter(dm.standard_dataloader()))
    assert standard["image"].shape[1:] == (1, HW, HW)


def test_boxes(tiny_dataset: Path) -> None:
    dm = BoxFrameDataModule(root=str(tiny_dataset), synthetic=None, image_size=HW, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, HW, HW)
    box = batch["box"]
    assert box.shape == (2, 4) and (box >= 0).all() and (box <= 1).all()
    assert (box[:, 0] < box[:, 2]).all() and (box[:, 1] < box[:, 3]).all()


def test_missing_root_without_synthetic_is_a_clear_error(tmp_path: Path) -> None:
    dm = VideoClipDataModule(root=str(tmp_path / "nope"), synthetic=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dm.prepare_data()


def test_train_fraction_is_a_stratified_seeded_subset(tiny_dataset: Path) -> None:
    full = clip_dm(tiny_dataset, modalities=["video"])
    half = clip_dm(tiny_dataset, modalities=["video"], train_fraction=0.5, subset_seed=3)
    again = clip_dm(tiny_dataset, modalities=["video"], train_fraction=0.5, subset_seed=3)
    full_ids = {it.item_id for it in full.items["train"]}
    half_ids = [it.item_id for it in half.items["train"]]
    assert set(half_ids) <= full_ids and len(half_ids) < len(full_ids)
    assert half_ids == [it.item_id for it in again.items["train"]]
    assert {it.label for it in half.items["train"]} == {it.label for it in full.items["train"]}
    assert len(half.items["test"]) == len(full.items["test"]), "only train is subsampled"
