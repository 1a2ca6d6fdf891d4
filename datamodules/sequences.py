"""Frame-sequence DataModule for video saliency: a target frame plus L frames before and/or after it.

Slides over every clip (one target every `target_stride` frames). Each clip's whole frame range is
decoded once into the cache, so neighbouring sequences share their frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import SonoDataModule, to_unit_range
from datamodules.cache import CacheParams, CacheView, ClipCache, ClipSpec
from datamodules.clips import ClipFilter
from datamodules.manifest import Manifests
from datamodules.readers import fixation_maps, fixations_for_frames, gaze_maps, load_gaze

log = logging.getLogger("sonolab.data")


@dataclass(frozen=True)
class SequenceItem:
    """One target frame of one clip; `offsets` index the clip's cached frame range."""

    item_id: str
    clip_id: str
    target_frame: int
    offsets: tuple[int, ...]


@dataclass
class ClipRange:
    """A clip's cached frame range [first, first + length) and the fixations of each of its frames."""

    clip_id: str
    scan_id: str
    first: int
    length: int
    label: str
    gaze_points: list[np.ndarray]


class SequenceDataset(Dataset):
    def __init__(
        self,
        items: Sequence[SequenceItem],
        ranges: dict[str, ClipRange],
        cache: CacheView,
        classes: Sequence[str],
        hw: tuple[int, int],
        gaze_sigma: float,
        target_index: int,
    ) -> None:
        self.items = list(items)
        self.ranges = ranges
        self.cache = cache
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.hw = hw
        self.gaze_sigma = gaze_sigma
        self.target_index = target_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        clip = self.ranges[item.clip_id]
        offsets = list(item.offsets)
        frames = np.asarray(self.cache.frames(item.clip_id))[offsets]  # T×H×W×C
        video = to_unit_range(torch.from_numpy(frames).permute(3, 0, 1, 2))
        points = [clip.gaze_points[o] for o in offsets]
        maps, valid = gaze_maps(points, self.hw[0], self.hw[1], self.gaze_sigma)
        return {
            "video": video,
            "gaze": torch.from_numpy(maps).unsqueeze(0),
            "gaze_valid": torch.from_numpy(valid),
            "fixations": torch.from_numpy(fixation_maps(points, self.hw[0], self.hw[1])).unsqueeze(0),
            "target_index": torch.tensor(self.target_index, dtype=torch.long),
            "label": torch.tensor(self.class_index.get(clip.label, -1), dtype=torch.long),
            "clip_id": item.item_id,
        }


class SaliencySequenceDataModule(SonoDataModule):
    """Sequences for gaze-saliency prediction (CLSTMUNet, DualRepSSL's saliency task).

    Args (beyond SonoDataModule's):
        num_before / num_after: context frames before / after the target (the placement study:
            before = (L, 0), after = (0, L), both = (L/2, L/2)); (0, 0) gives single frames.
        frame_interval: frames between consecutive frames of a sequence.
        target_stride: frames between consecutive targets within a clip.
        require_target_gaze: leave out targets whose frame has no fixation (counted in the log), since a
            uniform target map teaches nothing; context frames may lack gaze.
        train_filter / eval_filter: labels kept per split (quality is ignored unless given).
        gaze_sigma: Gaussian sigma of the gaze maps, in pixels of the output map.
    """

    def uses(self) -> set[str]:
        return {"video", "gaze"}

    def requirements(self) -> dict[str, str]:
        return {
            "scans": f"{type(self).__name__} reads the scan videos and gaze from it",
            "clips": f"{type(self).__name__} slides over the clips it lists",
        }

    def __init__(
        self,
        num_before: int = 6,
        num_after: int = 0,
        frame_interval: int = 1,
        target_stride: int = 4,
        require_target_gaze: bool = True,
        train_filter: ClipFilter | None = None,
        eval_filter: ClipFilter | None = None,
        classes: list[str] | None = None,
        gaze_sigma: float = 8.0,
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if num_before < 0 or num_after < 0 or frame_interval < 1 or target_stride < 1:
            raise ValueError(
                "num_before/num_after must be >= 0 and frame_interval/target_stride >= 1, got "
                f"{num_before}, {num_after}, {frame_interval}, {target_stride}"
            )
        self.num_before = num_before
        self.num_after = num_after
        self.frame_interval = frame_interval
        self.target_stride = target_stride
        self.require_target_gaze = require_target_gaze
        self.train_filter = train_filter or ClipFilter()
        self.eval_filter = eval_filter or ClipFilter()
        self.classes = list(classes) if classes is not None else None
        self.gaze_sigma = gaze_sigma
        self.ranges: dict[str, ClipRange] | None = None
        self.items: dict[str, list[SequenceItem]] | None = None

    @property
    def sequence_length(self) -> int:
        return self.num_before + 1 + self.num_after

    def clip_ranges(self, manifests: Manifests) -> dict[str, ClipRange]:
        """Each kept clip's frame range, widened by the context it needs and clipped to the video."""
        if self.ranges is not None:
            return self.ranges
        ranges: dict[str, ClipRange] = {}
        tracks: dict[str, Any] = {}
        for clip in manifests.clips.values():
            flt = self.train_filter if clip.split == "train" else self.eval_filter
            if not flt.keep(clip):
                continue
            scan = manifests.scans[clip.scan_id]
            if scan.gaze is None:
                raise ValueError(
                    f"scans.csv:{scan.row}: scan {scan.scan_id} has no gaze, needed for saliency"
                )
            n_frames = manifests.video_info[clip.scan_id].frame_count
            first = max(0, clip.start_frame - self.num_before * self.frame_interval)
            last = min(n_frames - 1, clip.end_frame - 1 + self.num_after * self.frame_interval)
            if scan.scan_id not in tracks:
                tracks[scan.scan_id] = load_gaze(scan.gaze)
            frames = tuple(range(first, last + 1))
            points = fixations_for_frames(tracks[scan.scan_id], manifests.fps(scan.scan_id), frames)
            ranges[clip.clip_id] = ClipRange(
                clip.clip_id, clip.scan_id, first, len(frames), clip.label, points
            )
        self.ranges = ranges
        return ranges

    def split_items(self, manifests: Manifests) -> dict[str, list[SequenceItem]]:
        if self.items is not None:
            return self.items
        ranges = self.clip_ranges(manifests)
        k = self.frame_interval
        items: dict[str, list[SequenceItem]] = {"train": [], "val": [], "test": []}
        dropped_no_gaze = 0
        for clip_id, rng in ranges.items():
            clip = manifests.clips[clip_id]
            for target in range(clip.start_frame, clip.end_frame, self.target_stride):
                lo, hi = target - self.num_before * k, target + self.num_after * k
                if lo < rng.first or hi >= rng.first + rng.length:
                    continue  # context would fall outside the video
                offsets = tuple(range(lo - rng.first, hi - rng.first + 1, k))
                if self.require_target_gaze and len(rng.gaze_points[target - rng.first]) == 0:
                    dropped_no_gaze += 1
                    continue
                items[clip.split].append(SequenceItem(f"{clip_id}@{target}", clip_id, target, offsets))
        if dropped_no_gaze:
            log.info(
                "left out %d target frames without a fixation (require_target_gaze=true)", dropped_no_gaze
            )
        if self.classes is None:
            self.classes = sorted({r.label for r in ranges.values()})
        self.items = items
        return items

    def clip_cache(self) -> ClipCache:
        manifests = self.load_manifests()
        ranges = self.clip_ranges(manifests)
        specs = [
            ClipSpec(r.clip_id, manifests.scans[r.scan_id].video, tuple(range(r.first, r.first + r.length)))
            for r in ranges.values()
        ]
        return ClipCache(
            self.cache_dir,
            self.dataset_fingerprint(),
            CacheParams(size=self.hw, channels=self.channels),
            specs,
        )

    def setup(self, stage: str | None = None) -> None:
        manifests = self.load_manifests()
        items = self.split_items(manifests)
        view = self.open_cache()
        assert self.ranges is not None and self.classes is not None
        for split, split_items in items.items():
            self.datasets[split] = SequenceDataset(
                split_items, self.ranges, view, self.classes, self.hw, self.gaze_sigma, self.num_before
            )
        log.info("saliency sequences: %s", ", ".join(f"{s}={len(v)}" for s, v in items.items()))
