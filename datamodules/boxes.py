"""Frames with approximate boxes around the main structure (boxes.csv): zoom-in module pretraining.

A box is on a frame of a scan's video (``scan_id`` + ``frame``: decoded once into the clip cache) or on a
still image of images.csv (``image``: decoded on the fly, as ``ImageDataModule`` reads images; the clip cache
holds video frames only). ``python -m datamodules.masks`` writes boxes.csv from segmentation masks.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import SonoDataModule, to_unit_range
from datamodules.cache import CacheParams, CacheView, ClipCache, ClipSpec
from datamodules.errors import DataError
from datamodules.manifest import box_references
from datamodules.readers import read_image

log = logging.getLogger("sonolab.data")


@dataclass(frozen=True)
class BoxItem:
    scan_id: str | None  # None: the box is on the still image `image`
    offset: int  # position of the frame in the scan's cached frame list
    box: tuple[float, float, float, float]
    item_id: str
    image: Path | None = None


class BoxDataset(Dataset):
    """Frames from the clip cache or still images read on the fly, resized to ``hw`` (normalised boxes stay
    valid under the resize)."""

    def __init__(
        self,
        items: Sequence[BoxItem],
        cache: CacheView | None,
        channels: int = 1,
        hw: tuple[int, int] = (128, 128),
    ) -> None:
        self.items = list(items)
        self.cache = cache
        self.channels = channels
        self.hw = hw

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if item.image is not None:
            frame = read_image(item.image, channels=self.channels, size=self.hw)  # H×W×C
        else:
            assert self.cache is not None and item.scan_id is not None
            frame = np.array(self.cache.frames(item.scan_id)[item.offset])
        return {
            "image": to_unit_range(torch.from_numpy(frame).permute(2, 0, 1)),
            "box": torch.tensor(item.box, dtype=torch.float32),
            "image_id": item.item_id,
        }


class BoxFrameDataModule(SonoDataModule):
    """Single frames or still images and their normalised boxes; the split is the scan's or the image's.

    Args: SonoDataModule's (``batch_size`` defaults to 16 here).
    """

    required_manifests = ("scans", "boxes")

    def __init__(
        self,
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)

    def requirements(self) -> dict[str, str]:
        """boxes.csv, and what its rows reference: scans.csv (boxes on scan frames) and/or images.csv (boxes
        on images)."""
        refs = box_references(self.root)
        need = {
            "boxes": f"{type(self).__name__} (zoom-in pretraining) reads its boxes from it "
            "(python -m datamodules.masks writes one from a folder of segmentation masks)"
        }
        if "scans" in refs:
            need["scans"] = "boxes.csv references scans by scan_id (their videos hold the boxed frames)"
        if "images" in refs:
            need["images"] = "boxes.csv references images by image (the boxed still images)"
        return need

    def frames_per_scan(self) -> dict[str, list[int]]:
        frames: dict[str, set[int]] = defaultdict(set)
        for box in self.load_manifests().boxes:
            if box.scan_id is not None and box.frame is not None:
                frames[box.scan_id].add(box.frame)
        return {scan_id: sorted(f) for scan_id, f in sorted(frames.items())}

    def clip_cache(self) -> ClipCache | None:
        """The decoded frames of the boxes on scans (None when every box is on a still image)."""
        if not self.frames_per_scan():
            return None
        manifests = self.load_manifests()
        specs = [
            ClipSpec(scan_id, manifests.scans[scan_id].video, tuple(frames))
            for scan_id, frames in self.frames_per_scan().items()
        ]
        return ClipCache(
            self.cache_dir, self.dataset_fingerprint(), CacheParams(self.hw, self.channels), specs
        )

    def setup(self, stage: str | None = None) -> None:
        manifests = self.load_manifests()
        offsets = {
            scan_id: {f: i for i, f in enumerate(fr)} for scan_id, fr in self.frames_per_scan().items()
        }
        items: dict[str, list[BoxItem]] = {"train": [], "val": [], "test": []}
        unsplit: set[str] = set()
        for box in manifests.boxes:
            split = manifests.box_split(box)
            coords = (box.x0, box.y0, box.x1, box.y1)
            if box.image is not None:  # validated: listed in images.csv, and its split is required there
                assert split is not None
                items[split].append(BoxItem(None, -1, coords, box.image, manifests.images[box.image].path))
                continue
            assert box.scan_id is not None and box.frame is not None
            if split is None:
                unsplit.add(box.scan_id)
                continue
            item = BoxItem(box.scan_id, offsets[box.scan_id][box.frame], coords, f"{box.scan_id}@{box.frame}")
            items[split].append(item)
        if unsplit:
            raise DataError(
                f"boxes.csv names scans with no split (give scans.csv a split column): {', '.join(sorted(unsplit))}"
            )
        view = self.open_cache() if offsets else None
        for split, split_items in items.items():
            self.datasets[split] = BoxDataset(split_items, view, self.channels, self.hw)
        log.info("boxes: %s", ", ".join(f"{s}={len(v)}" for s, v in items.items()))
