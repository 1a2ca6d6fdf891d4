"""Video-clip DataModule: T frames at a frame interval per clip, with optional flow, gaze, audio and a frame.

Used by VideoQualityGAN (video + flow + gaze), DualRepSSL (video + audio + image) and the clip-level
standard-plane detection task. Items come from `clips.csv` (labelled segments) or from sliding windows
over whole scans (unlabelled pretraining, quality-over-time prediction).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import SonoDataModule, check_choice, to_unit_range
from datamodules.cache import CacheParams, CacheView, ClipCache, ClipSpec
from datamodules.errors import DataError
from datamodules.flow import FlowParams
from datamodules.manifest import ClipRecord, Manifests
from datamodules.readers import (
    LogMel,
    fixation_maps,
    fixations_for_frames,
    gaze_maps,
    load_audio,
    load_gaze,
)

log = logging.getLogger("sonolab.data")

MODALITIES = ("video", "flow", "flow_color", "gaze", "audio", "image")
SOURCES = ("clips", "windows")
IMAGE_FRAMES = ("random", "last")
TARGETS = ("label", "quality")


@dataclass
class ClipFilter:
    """Which clips a split uses: labels and quality values to keep (None = all)."""

    labels: list[str] | None = None
    quality: list[int] | None = None

    def keep(self, clip: ClipRecord) -> bool:
        if self.labels is not None and clip.label not in self.labels:
            return False
        if self.quality is not None:
            q = -1 if clip.quality is None else clip.quality
            return q in self.quality
        return True


@dataclass
class ClipItem:
    """One sample: a frame sequence of one scan, with what is needed to fetch its other modalities."""

    item_id: str
    scan_id: str
    frame_indices: tuple[int, ...]
    label: str
    quality: int
    fps: float
    gaze_points: list[np.ndarray] | None = None
    audio_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def anchored_indices(end_frame: int, num_frames: int, interval: int) -> tuple[int, ...]:
    """T frames at `interval`, the last one at end_frame - 1 (the freeze frame for PULSE clips)."""
    last = end_frame - 1
    return tuple(last - interval * (num_frames - 1 - j) for j in range(num_frames))


def audio_window(last_frame: int, fps: float, seconds: float) -> tuple[float, float]:
    """``(start_s, end_s)`` of the audio of a clip whose last frame is ``last_frame``: it ends at the end of
    that frame, ``(last_frame + 1) / fps``, and starts ``seconds`` earlier, before 0 s near a scan's start
    (that part is zero-padded)."""
    end_s = (last_frame + 1) / fps
    return end_s - seconds, end_s


def stratified_subset(items: Sequence[ClipItem], fraction: float, seed: int) -> list[ClipItem]:
    """A seeded subset keeping `fraction` of each label (at least one item per label)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[ClipItem]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    kept: list[ClipItem] = []
    for label in sorted(by_label):
        group = by_label[label]
        n = max(1, round(len(group) * fraction))
        kept.extend(group[i] for i in sorted(rng.choice(len(group), size=n, replace=False)))
    return kept


class ClipDataset(Dataset):
    """Reads cached frames/flow and builds gaze maps and audio features on the fly (both are cheap)."""

    def __init__(
        self,
        items: Sequence[ClipItem],
        cache: CacheView,
        modalities: Sequence[str],
        classes: Sequence[str],
        hw: tuple[int, int],
        gaze_sigma: float,
        audio_sample_rate: int,
        audio_seconds: float,
        logmel: LogMel | None,
        image_frame: str,
    ) -> None:
        self.items = list(items)
        self.cache = cache
        self.modalities = set(modalities)
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.hw = hw
        self.gaze_sigma = gaze_sigma
        self.audio_sample_rate = audio_sample_rate
        self.audio_seconds = audio_seconds
        self.logmel = logmel
        self.image_frame = image_frame

    def __len__(self) -> int:
        return len(self.items)

    def audio_wave(self, item: ClipItem) -> torch.Tensor:
        """The speech window ending at the end of the clip's last frame, ``audio_seconds`` long.

        Never shifted to start at 0: near the start of a scan the part before 0 s is zeros (``load_audio``
        pads), so the window always ends where the clip ends and never holds speech from after it.
        """
        start_s, _ = audio_window(item.frame_indices[-1], item.fps, self.audio_seconds)
        if item.audio_path is None:  # validation requires it for the audio modality; a guard, not a path
            raise DataError(f"clip {item.item_id}: scan {item.scan_id!r} has no audio file (modality audio)")
        return load_audio(item.audio_path, self.audio_sample_rate, start_s, self.audio_seconds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        frames = torch.from_numpy(np.array(self.cache.frames(item.item_id)))  # T×H×W×C uint8
        video = to_unit_range(frames.permute(3, 0, 1, 2))  # C×T×H×W
        sample: dict[str, Any] = {
            "clip_id": item.item_id,
            "label": torch.tensor(self.class_index.get(item.label, -1), dtype=torch.long),
            "quality": torch.tensor(item.quality, dtype=torch.long),
        }
        if "video" in self.modalities:
            sample["video"] = video
        if "image" in self.modalities:
            if self.image_frame == "last":
                t = video.shape[1] - 1
            else:
                t = int(torch.randint(video.shape[1], (1,)).item())
            sample["image"] = video[:, t]
        if "flow" in self.modalities:
            flow = self.cache.flow(item.item_id)
            if flow is None:
                raise RuntimeError("flow was requested but the cache holds none; rebuild the cache")
            sample["flow"] = torch.from_numpy(np.asarray(flow, dtype=np.float32)).permute(1, 0, 2, 3)
        if "flow_color" in self.modalities:
            color = self.cache.flow_color(item.item_id)
            if color is None:
                raise RuntimeError("flow_color was requested but the cache holds none; rebuild the cache")
            # 3×T×H×W in [-1, 1], the same arithmetic as VideoQualityGAN's per-step "color" encoding
            sample["flow_color"] = torch.from_numpy(np.array(color)).permute(1, 0, 2, 3).float() / 127.5 - 1.0
        if "gaze" in self.modalities:
            points = item.gaze_points or []
            maps, valid = gaze_maps(points, self.hw[0], self.hw[1], self.gaze_sigma)
            sample["gaze"] = torch.from_numpy(maps).unsqueeze(0)
            sample["gaze_valid"] = torch.from_numpy(valid)
            sample["fixations"] = torch.from_numpy(fixation_maps(points, self.hw[0], self.hw[1])).unsqueeze(0)
        if "audio" in self.modalities:
            wave = self.audio_wave(item)
            assert self.logmel is not None
            with torch.no_grad():
                sample["audio"] = self.logmel(wave)
        return sample


class VideoClipDataModule(SonoDataModule):
    """Clips of `num_frames` frames at `frame_interval`, resized to `image_size`, with chosen modalities.

    Args (beyond SonoDataModule's):
        num_frames: T, frames per sample.
        frame_interval: k, frames between samples (the VQA paper: 8 frames at an 8-frame interval).
        modalities: any of video, flow, flow_color, gaze, audio, image (a frame of the clip). ``flow_color``
            is the colour image of the flow (3×T×H×W in [-1, 1], torchvision's ``flow_to_image`` per
            frame), computed once in the clip cache: VideoQualityGAN's ``flow_encoding: color`` input.
        source: "clips" (rows of clips.csv) or "windows" (sliding windows over every scan: unlabelled
            pretraining, quality over time); windows take their split from the scan.
        window_stride: frames between consecutive windows when source="windows".
        train_filter / eval_filter: labels and quality values kept in train and in val/test/predict.
        classes: label vocabulary; `label` in the batch indexes it (-1 = not in the vocabulary).
            None = every label of the kept clips, sorted.
        gaze_sigma: Gaussian sigma of gaze maps, in pixels of the output map.
        audio_sample_rate, audio_seconds: the speech window ending at the clip's last frame.
        n_mels, n_fft, hop_length, f_min, f_max: log-mel front end (CNN14's 16 kHz layout by default).
        image_frame: "random" frame of the clip for `image` in training ("last" = the freeze frame in eval).
        train_fraction: keep this fraction of the training items (label-stratified, seeded by
            `subset_seed`): the "small labelled subset" of transfer-learning experiments.
        flow_median_ksize, flow_winsize: Farneback pre-filter and window (the VQA paper: 21 and 3).
        targets: what the model learns or is scored on, "label" and/or "quality"; only dataset warnings
            about these (and the modalities) are logged. None = ["quality"] when train_filter selects
            quality values (the VQA task), else ["label"].
    """

    def __init__(
        self,
        num_frames: int = 8,
        frame_interval: int = 8,
        modalities: list[str] | None = None,
        source: str = "clips",
        window_stride: int = 32,
        train_filter: ClipFilter | None = None,
        eval_filter: ClipFilter | None = None,
        classes: list[str] | None = None,
        gaze_sigma: float = 8.0,
        audio_sample_rate: int = 16000,
        audio_seconds: float = 2.0,
        n_mels: int = 64,
        n_fft: int = 512,
        hop_length: int = 160,
        f_min: float = 50.0,
        f_max: float = 8000.0,
        image_frame: str = "random",
        train_fraction: float = 1.0,
        subset_seed: int = 0,
        flow_median_ksize: int = 21,
        flow_winsize: int = 3,
        targets: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_frames < 1 or frame_interval < 1:
            raise ValueError(
                f"num_frames and frame_interval must be >= 1, got {num_frames}, {frame_interval}"
            )
        self.num_frames = num_frames
        self.frame_interval = frame_interval
        self.modalities = list(modalities) if modalities is not None else ["video"]
        for name in self.modalities:
            check_choice("data.init_args.modalities[]", name, MODALITIES)
        self.source = check_choice("data.init_args.source", source, SOURCES)
        self.window_stride = window_stride
        self.train_filter = train_filter or ClipFilter()
        self.eval_filter = eval_filter or ClipFilter()
        self.classes = list(classes) if classes is not None else None
        self.gaze_sigma = gaze_sigma
        self.audio_sample_rate = audio_sample_rate
        self.audio_seconds = audio_seconds
        self.logmel_kwargs: dict[str, Any] = dict(
            sample_rate=audio_sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            f_min=f_min,
            f_max=f_max,
        )
        self.image_frame = check_choice("data.init_args.image_frame", image_frame, IMAGE_FRAMES)
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"data.init_args.train_fraction must be in (0, 1], got {train_fraction}")
        self.train_fraction = train_fraction
        self.subset_seed = subset_seed
        self.flow_params = FlowParams(median_ksize=flow_median_ksize, winsize=flow_winsize)
        self.items: dict[str, list[ClipItem]] | None = None
        if targets is None:
            targets = ["quality"] if self.train_filter.quality is not None else ["label"]
        for name in targets:
            check_choice("data.init_args.targets[]", name, TARGETS)
        self.targets = list(targets)

    def uses(self) -> set[str]:
        return {"video", *self.modalities, *self.targets}

    def requirements(self) -> dict[str, str]:
        """Clips need scans.csv + clips.csv; sliding windows over whole scans need scans.csv only."""
        need = {"scans": f"{type(self).__name__} reads the scan videos from it"}
        if self.source == "clips":
            need["clips"] = (
                f"{type(self).__name__} with data.init_args.source=clips reads its labelled clips from it "
                "(source=windows trains on whole scans, with a split column in scans.csv, without it)"
            )
        return need

    # ------------------------------------------------------------------ items
    def split_items(self, manifests: Manifests) -> dict[str, list[ClipItem]]:
        """Build every split's items once; errors name the clip and what is wrong."""
        if self.items is not None:
            return self.items
        items: dict[str, list[ClipItem]] = {"train": [], "val": [], "test": []}
        problems: list[str] = []
        if self.source == "clips":
            for clip in manifests.clips.values():
                flt = self.train_filter if clip.split == "train" else self.eval_filter
                if not flt.keep(clip):
                    continue
                indices = anchored_indices(clip.end_frame, self.num_frames, self.frame_interval)
                if indices[0] < 0:
                    problems.append(
                        f"clips.csv:{clip.row}: clip {clip.clip_id} needs frames from {indices[0]} "
                        f"({self.num_frames} frames at interval {self.frame_interval} ending at {clip.end_frame - 1})"
                        ", which is before the start of the video"
                    )
                    continue
                items[clip.split].append(self.make_item(manifests, clip.clip_id, clip.scan_id, indices, clip))
        else:
            span = (self.num_frames - 1) * self.frame_interval + 1
            for scan_id in sorted(manifests.scans):
                split = manifests.scan_split(scan_id)
                if split is None:
                    problems.append(f"scans.csv: scan {scan_id} has no split (no split column and no clips)")
                    continue
                n_frames = manifests.video_info[scan_id].frame_count
                for end in range(span, n_frames + 1, self.window_stride):
                    indices = anchored_indices(end, self.num_frames, self.frame_interval)
                    item_id = f"{scan_id}@{end - 1}"
                    items[split].append(self.make_item(manifests, item_id, scan_id, indices, None))
        if problems:
            message = "\n".join(problems)
            if not self.skip_invalid:
                raise DataError(f"{len(problems)} clip(s) in {self.root} cannot be sampled:\n{message}")
            log.warning("skipping %d clip(s) that cannot be sampled:\n%s", len(problems), message)
        if self.train_fraction < 1.0:
            items["train"] = stratified_subset(items["train"], self.train_fraction, self.subset_seed)
        if self.classes is None:
            self.classes = sorted({it.label for split in items.values() for it in split if it.label})
        self.items = items
        return items

    def split_composition(self, split: str) -> dict[tuple[str, int], int]:
        """``{(label, quality): number of items}`` of a split after the filters (quality -1 = unknown).

        The public summary a model checks its task against (VideoQualityGAN: the training split must hold
        its normal class only), without reading this DataModule's items. Needs ``setup`` first.
        """
        if self.items is None:
            raise RuntimeError("split_composition() needs the DataModule set up first (setup())")
        return dict(Counter((item.label, item.quality) for item in self.items.get(split, [])))

    def make_item(
        self,
        manifests: Manifests,
        item_id: str,
        scan_id: str,
        indices: tuple[int, ...],
        clip: ClipRecord | None,
    ) -> ClipItem:
        scan = manifests.scans[scan_id]
        fps = manifests.fps(scan_id)
        item = ClipItem(
            item_id=item_id,
            scan_id=scan_id,
            frame_indices=indices,
            label=clip.label if clip else "",
            quality=(-1 if clip is None or clip.quality is None else clip.quality),
            fps=fps,
            audio_path=scan.audio,
        )
        if "audio" in self.modalities and scan.audio is None:
            raise ValueError(
                f"scans.csv:{scan.row}: scan {scan_id} has no audio but modalities include 'audio'"
            )
        if "gaze" in self.modalities and scan.gaze is None:
            raise ValueError(
                f"scans.csv:{scan.row}: scan {scan_id} has no gaze but modalities include 'gaze'"
            )
        return item

    def attach_gaze(self, manifests: Manifests, items: dict[str, list[ClipItem]]) -> None:
        """Parse each gaze file once and keep only the fixations of the sampled frames."""
        if "gaze" not in self.modalities:
            return
        tracks: dict[str, Any] = {}
        for split_items in items.values():
            for item in split_items:
                if item.gaze_points is not None:
                    continue
                if item.scan_id not in tracks:
                    gaze_file = manifests.scans[item.scan_id].gaze
                    if gaze_file is None:  # validation requires it for the gaze modality; a guard, not a path
                        raise DataError(f"scans.csv: scan {item.scan_id!r} has no gaze file (modality gaze)")
                    tracks[item.scan_id] = load_gaze(gaze_file)
                item.gaze_points = fixations_for_frames(tracks[item.scan_id], item.fps, item.frame_indices)

    # ------------------------------------------------------------------ cache
    def cache_params(self) -> CacheParams:
        color = "flow_color" in self.modalities
        return CacheParams(
            size=self.hw,
            channels=self.channels,
            flow=self.flow_params if color or "flow" in self.modalities else None,
            flow_color=color,
        )

    def clip_cache(self) -> ClipCache:
        manifests = self.load_manifests()
        items = self.split_items(manifests)
        specs = [
            ClipSpec(item.item_id, manifests.scans[item.scan_id].video, item.frame_indices)
            for split_items in items.values()
            for item in split_items
        ]
        return ClipCache(self.cache_dir, self.dataset_fingerprint(), self.cache_params(), specs)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        manifests = self.load_manifests()
        items = self.split_items(manifests)
        self.attach_gaze(manifests, items)
        view = self.open_cache()
        logmel = LogMel(**self.logmel_kwargs) if "audio" in self.modalities else None
        assert self.classes is not None
        for split, split_items in items.items():
            self.datasets[split] = ClipDataset(
                split_items,
                view,
                self.modalities,
                self.classes,
                self.hw,
                self.gaze_sigma,
                self.audio_sample_rate,
                self.audio_seconds,
                logmel,
                image_frame=self.image_frame if split == "train" else "last",
            )
        log.info(
            "clips: %s (classes: %s)",
            ", ".join(f"{s}={len(v)}" for s, v in items.items()),
            ", ".join(self.classes),
        )
