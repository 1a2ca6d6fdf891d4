"""Quality over time: score every sliding window of full-length scans with a trained VQA model.

The use the paper motivates: find the usable segments of a scan. Every ``stride`` frames a window of the
model's ``num_frames`` frames at the training ``frame_interval`` (ending at that frame, as clips end at the
freeze frame) is scored; the windows whose primary score is below the model's validation threshold are
"high" quality. Writes, into ``--out``:

* ``scan_scores.csv``: ``scan_id, end_frame, start_frame, time_s`` (of the window's last frame), every
  score, ``threshold``, ``decision`` (high/low);
* ``segments.csv``: the runs of consecutive "high" windows per scan (``start_s``/``end_s`` span the frames
  those windows cover);
* ``<scan_id>.png``: the primary score over time with the threshold, high-quality windows shaded and the
  scan's labelled clips of ``clips.csv`` (if any) drawn underneath for reference.

Usage::

    python -m lightning_modules.vqa_gan.scan --checkpoint runs/sonolab-vqa/<run>/checkpoints/best.ckpt \\
        --scans scan_030 scan_031 --stride 4 --precision bf16-mixed

The data settings (dataset root, frame interval, flow parameters) are read from the run's saved
``config.yaml`` (two folders above the checkpoint) when present; flags override them. The same windows can
also be scored with ``lightning predict ... --data.init_args.source=windows`` (CSV only).
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import yaml
from lightning.pytorch import Trainer

from datamodules.clips import ClipItem, VideoClipDataModule, anchored_indices
from datamodules.manifest import Manifests
from lightning_modules.common.checkpoints import load_checkpoint, load_module
from lightning_modules.common.runs import columns_to_rows, write_csv_atomic, write_figure

from .base import QualityAnomalyModule

__all__ = [
    "ScanWindowDataModule",
    "load_quality_model",
    "main",
    "plot_scan",
    "score_scans",
    "usable_segments",
]


class ScanWindowDataModule(VideoClipDataModule):
    """Sliding windows over whole scans (all of them, or ``scans``), whatever their split, as the
    ``predict`` set. Windows end every ``window_stride`` frames from the first frame that has
    ``(num_frames − 1)·frame_interval`` frames before it."""

    def __init__(self, scans: list[str] | None = None, **kwargs: Any) -> None:
        kwargs["source"] = "windows"
        super().__init__(**kwargs)
        self.scans = list(scans) if scans else None

    def split_items(self, manifests: Manifests) -> dict[str, list[ClipItem]]:
        if self.items is not None:
            return self.items
        chosen = self.scans or sorted(manifests.scans)
        unknown = [s for s in chosen if s not in manifests.scans]
        if unknown:
            raise ValueError(f"scans not in {self.root / 'scans.csv'}: {', '.join(unknown)}")
        span = (self.num_frames - 1) * self.frame_interval + 1
        windows: list[ClipItem] = []
        for scan_id in chosen:
            n_frames = manifests.video_info[scan_id].frame_count
            if n_frames < span:
                raise ValueError(
                    f"scan {scan_id} has {n_frames} frames, fewer than one window "
                    f"({self.num_frames} frames at interval {self.frame_interval} = {span} frames)"
                )
            for end in range(span, n_frames + 1, self.window_stride):
                indices = anchored_indices(end, self.num_frames, self.frame_interval)
                windows.append(self.make_item(manifests, f"{scan_id}@{end - 1}", scan_id, indices, None))
        self.classes = sorted({c.label for c in manifests.clips.values()})
        self.items = {"train": [], "val": [], "test": [], "predict": windows}
        return self.items


def load_quality_model(checkpoint: str | Path) -> QualityAnomalyModule:
    """Load any VQA model (VideoQualityGAN or a baseline) from its checkpoint, class from the checkpoint."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    ckpt = load_checkpoint(checkpoint)
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    class_path = str(hparams.get("_class_path", "lightning_modules.vqa_gan.module.VideoQualityGAN"))
    module_name, _, class_name = class_path.rpartition(".")
    # import nothing the file names outside sonolab's models: importing a module runs its code
    if not module_name.startswith("lightning_modules.vqa_gan."):
        raise ValueError(f"{checkpoint} holds a {class_path}, not a VQA quality model")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, QualityAnomalyModule)):
        raise ValueError(f"{checkpoint} holds a {class_path}, not a VQA quality model")
    return load_module(cls, checkpoint, map_location="cpu")


def run_config(checkpoint: Path) -> dict[str, Any]:
    """``data.init_args`` of the run's saved config (``<run>/config.yaml`` beside ``<run>/checkpoints``)."""
    path = checkpoint.resolve().parent.parent / "config.yaml"
    if not path.is_file():
        return {}
    config = yaml.safe_load(path.read_text()) or {}
    return dict((config.get("data") or {}).get("init_args") or {})


def usable_segments(rows: Sequence[dict[str, Any]], fps: float, span: int) -> list[dict[str, Any]]:
    """Runs of consecutive "high" windows (rows of one scan, sorted by ``end_frame``): each run covers the
    frames from its first window's start to its last window's end frame."""
    segments: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    for row in [*rows, None]:
        if row is not None and row["decision"] == "high":
            current.append(row)
            continue
        if current:
            start = int(current[0]["end_frame"]) - span + 1
            end = int(current[-1]["end_frame"])
            segments.append(
                {
                    "scan_id": current[0]["scan_id"],
                    "start_frame": start,
                    "end_frame": end,
                    "start_s": start / fps,
                    "end_s": (end + 1) / fps,
                    "windows": len(current),
                }
            )
            current = []
    return segments


def plot_scan(
    scan_id: str,
    rows: Sequence[dict[str, Any]],
    score: str,
    threshold: float,
    clips: Sequence[tuple[float, float, str, int | None]] = (),
    normal_label: str = "transventricular",
) -> plt.Figure:
    """Score over time (``rows`` of one scan), threshold, high-quality windows shaded green, labelled clips
    (``(start_s, end_s, label, quality)``) as bars underneath: green = the task's high quality
    (``normal_label`` with quality 1), red = low quality, grey = unknown."""
    t = np.array([r["time_s"] for r in rows])
    s = np.array([r[f"score_{score}"] for r in rows], dtype=float)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    ax.plot(t, s, color="tab:blue", lw=1.2, marker=".", ms=3, label=f"{score} score")
    if math.isfinite(threshold):
        ax.axhline(threshold, ls="--", color="k", lw=1, label=f"threshold {threshold:.4g}")
        high = s < threshold
        ax.fill_between(
            t, s.min(), s.max(), where=high, color="tab:green", alpha=0.15, step="mid", label="high quality"
        )
    ax.set_ylabel("score (higher = lower quality)")
    ax.set_title(f"{scan_id}: quality over time")
    ax.legend(loc="upper right", fontsize=8)
    for start, end, label, quality in clips:
        if quality is None:
            colour = "tab:grey"
        else:
            colour = "tab:green" if label == normal_label and quality == 1 else "tab:red"
        axc.axvspan(start, end, color=colour, alpha=0.5)
        axc.text((start + end) / 2, 0.5, label.replace("_", "\n"), ha="center", va="center", fontsize=6)
    axc.set_yticks([])
    axc.set_ylabel("clips", fontsize=8)
    axc.set_xlabel("time of the window's last frame (s)")
    fig.tight_layout()
    return fig


def score_scans(
    checkpoint: str | Path,
    out: str | Path,
    root: str | None = None,
    scans: Sequence[str] | None = None,
    stride: int = 8,
    frame_interval: int | None = None,
    batch_size: int = 8,
    precision: str = "32-true",
    accelerator: str = "auto",
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Score the windows of ``scans`` (all scans when empty) and write CSVs and plots into ``out``.

    Returns ``{"rows", "segments", "files"}``.
    """
    checkpoint = Path(checkpoint)
    model = load_quality_model(checkpoint)
    hp = model.hparams
    data_cfg = run_config(checkpoint)
    root = root or data_cfg.get("root")
    if root is None:
        raise ValueError(
            "no dataset root: pass --root (the checkpoint's run has no config.yaml to read it from)"
        )
    interval = int(frame_interval or data_cfg.get("frame_interval") or 8)
    modalities = ["video"] + (["flow"] if getattr(model, "use_flow", False) else [])
    datamodule = ScanWindowDataModule(
        scans=list(scans) if scans else None,
        root=root,
        synthetic=None,
        image_size=hp.image_size,
        channels=hp.in_channels,
        num_frames=hp.num_frames,
        frame_interval=interval,
        modalities=modalities,
        window_stride=stride,
        flow_median_ksize=int(data_cfg.get("flow_median_ksize", 21)),
        flow_winsize=int(data_cfg.get("flow_winsize", 3)),
        batch_size=batch_size,
        num_workers=0,
        cache_dir=cache_dir or data_cfg.get("cache_dir"),
    )
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        precision=cast(Any, precision),  # a string Lightning validates (e.g. 32-true, bf16-mixed)
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=True,
        enable_model_summary=False,
    )
    batches = cast(list[Mapping[str, Any]], trainer.predict(model, datamodule=datamodule) or [])
    manifests = datamodule.load_manifests()
    assert datamodule.items is not None  # set by setup("predict"), which trainer.predict ran
    items = {item.item_id: item for item in datamodule.items["predict"]}
    span = (hp.num_frames - 1) * interval + 1
    rows: list[dict[str, Any]] = []
    for row in (r for batch in batches for r in columns_to_rows(batch)):
        item = items[row["clip_id"]]
        end = item.frame_indices[-1]
        out_row = {
            "scan_id": item.scan_id,
            "end_frame": end,
            "start_frame": item.frame_indices[0],
            "time_s": end / item.fps,
        }
        out_row.update(
            {k: v for k, v in row.items() if k.startswith("score_") or k in ("threshold", "decision")}
        )
        rows.append(out_row)
    rows.sort(key=lambda r: (r["scan_id"], r["end_frame"]))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "scan_scores.csv", out / "segments.csv"]
    write_csv_atomic(files[0], rows)
    threshold = float(model.threshold)
    segments: list[dict[str, Any]] = []
    by_scan: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_scan.setdefault(row["scan_id"], []).append(row)
    for scan_id, scan_rows in by_scan.items():
        fps = manifests.fps(scan_id)
        segments += usable_segments(scan_rows, fps, span)
        clips = [
            (c.start_frame / fps, c.end_frame / fps, c.label, c.quality)
            for c in manifests.clips.values()
            if c.scan_id == scan_id
        ]
        fig = plot_scan(scan_id, scan_rows, model.primary_score, threshold, clips, model.normal_label)
        files.append(write_figure(fig, out / f"{scan_id}.png"))
    fields = ["scan_id", "start_frame", "end_frame", "start_s", "end_s", "windows"]
    write_csv_atomic(files[1], segments, fieldnames=fields)
    return {"rows": rows, "segments": segments, "files": files}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a VideoQualityGAN (or baseline) checkpoint")
    parser.add_argument(
        "--root", default=None, help="dataset folder (default: the run's data.init_args.root)"
    )
    parser.add_argument("--scans", nargs="*", default=None, help="scan ids (default: every scan)")
    parser.add_argument("--stride", type=int, default=8, help="frames between consecutive windows")
    parser.add_argument("--frame-interval", type=int, default=None, help="default: the run's frame_interval")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--precision",
        default="32-true",
        help="e.g. bf16-mixed: on a CPU only where oneDNN runs bf16 natively (AVX-512-BF16/AMX); "
        "elsewhere it is emulated and many times slower (README: Precision on CPUs)",
    )
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--out", default=None, help="output folder (default: runs/scan-<time> in the working directory)"
    )
    args = parser.parse_args(argv)
    if args.stride < 1:
        parser.error("--stride must be >= 1")
    out = args.out or f"runs/scan-{time.strftime('%Y%m%d-%H%M%S')}"
    result = score_scans(
        args.checkpoint,
        out,
        root=args.root,
        scans=args.scans,
        stride=args.stride,
        frame_interval=args.frame_interval,
        batch_size=args.batch_size,
        precision=args.precision,
        accelerator=args.accelerator,
        cache_dir=args.cache_dir,
    )
    print(f"{len(result['rows'])} windows scored; files in {out}:")
    for path in result["files"]:
        print(f"  {path}")
    for seg in result["segments"]:
        print(
            f"  usable: {seg['scan_id']} frames {seg['start_frame']}-{seg['end_frame']} "
            f"({seg['start_s']:.1f}-{seg['end_s']:.1f} s, {seg['windows']} windows)"
        )
    return result


if __name__ == "__main__":
    main()
