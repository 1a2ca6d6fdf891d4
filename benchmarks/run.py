"""`make bench`: throughput of the data path (and of model train steps, see benchmarks/models.py).

Measures, on the demo synthetic dataset (generated if missing):
- cache build: clips decoded + resized + Farneback flow per second (cold, one process and N processes);
- cached reads: clips per second read back from the memory map;
- DataLoader: batches per second with 0 and 2 workers (gaze maps and audio log-mel built on the fly).
Results are printed and written to benchmarks/results/<name>.json with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Best wall time of `repeat` calls (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_data(root: Path, image_size: int, workers: int) -> dict[str, Any]:
    from datamodules.clips import VideoClipDataModule

    results: dict[str, Any] = {"image_size": image_size}
    with tempfile.TemporaryDirectory() as cache_dir:

        def make(cache_workers: int = 0, **kwargs: Any) -> VideoClipDataModule:
            return VideoClipDataModule(
                root=str(root),
                synthetic="demo",
                image_size=image_size,
                modalities=["video", "flow", "gaze", "audio"],
                cache_dir=cache_dir,
                cache_workers=cache_workers,
                batch_size=8,
                **kwargs,
            )

        for cache_workers in (0, workers):
            dm = make(cache_workers)
            cache = dm.clip_cache()
            n_clips = len(cache.specs)
            seconds = timed(
                lambda dm=dm, cw=cache_workers: dm.clip_cache().build(num_workers=cw, progress=False)
            )
            results[f"cache_build_clips_per_s_workers{cache_workers}"] = n_clips / seconds
            shutil.rmtree(cache.path, ignore_errors=True)
        dm = make()
        dm.prepare_data()
        dm.setup("fit")
        view = dm.clip_cache().open()
        ids = list(view.ids)
        seconds = timed(lambda: [view.frames(i).sum() + view.flow(i).sum() for i in ids], repeat=3)
        results["cached_read_clips_per_s"] = len(ids) / seconds
        for num_workers in (0, workers):
            dm = make(num_workers=num_workers)
            dm.setup("fit")
            loader = dm.train_dataloader()
            seconds = timed(lambda loader=loader: sum(1 for _ in loader))
            results[f"loader_batches_per_s_workers{num_workers}"] = len(loader) / seconds
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="data/synthetic-demo")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", action="store_true", help="also time train steps of every model")
    args = parser.parse_args()
    report = {"machine": machine(), "data": bench_data(Path(args.root), args.image_size, args.workers)}
    if args.models:
        from benchmarks.models import bench_models

        report["models"] = bench_models()
    RESULTS.mkdir(exist_ok=True)
    name = "gpu" if torch.cuda.is_available() else "cpu"
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
