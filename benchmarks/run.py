"""`make bench`: step time of every model through Lightning and through a plain PyTorch loop, fp32 and bf16,
with peak memory and the data path's throughput.

For each model at its demo size (its demo config; VideoQualityGAN without the zoom-in) and at its
published size (``--sizes``; CRLUIQA, DualRepSSL and CLSTMUNet: their main config alone, the papers' image
sizes, clip lengths, widths and batches; VideoQualityGAN: batch 2, 8 frames of 256×256, ngf 32):

* median step time over ``--steps`` steps after a warm-up step, for ``Trainer.fit`` and for a plain loop
  over the same nets, losses, optimisers and batches (``benchmarks.steps``), interleaved in this one
  process (``--rounds`` alternations), per precision (``--precisions``, default ``32-true`` and
  ``bf16-mixed``). A precision whose single warm-up step takes longer than ``--max-step-s`` is recorded
  with that step's time and not repeated (bf16 is emulated, and minutes per step, on CPUs without
  AVX-512-BF16/AMX);
* peak memory of a few steps in a fresh subprocess per model and precision (the increase of the
  process's peak resident set, ``VmHWM``, over its size before the first step; on a GPU
  ``torch.cuda.max_memory_allocated``);
* the DataLoader rate of each model's own DataModule, and of the clip cache (build, reads).

Results go to ``benchmarks/results/<cpu|gpu>[-quick].json`` with the machine's description (CPU model,
whether it has AVX-512 / AVX-512-BF16 / AMX, the load average), and a Markdown table is printed.
``--quick``: a smoke run in about a minute (tiny sizes, 2 steps, one round, no subprocesses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]  # `python -m benchmarks.run` runs from the checkout


def cpu_description() -> dict[str, Any]:
    """CPU model and the instruction sets that decide whether bf16 can pay (from /proc/cpuinfo)."""
    model, flags = platform.processor() or "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model.strip():
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
            if model and flags:
                break
    except OSError:
        pass
    return {
        "model": model,
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "amx_tile": "amx_tile" in flags,
    }


def onednn_bf16() -> bool | None:
    """Whether PyTorch's oneDNN runs bf16 convolutions natively here (needs AVX-512-BF16 or AMX; without,
    bf16 Conv3d falls back to the slow im2col path, ``aten::slow_conv3d_forward``)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def machine() -> dict[str, Any]:
    return {
        "cpu": {**cpu_description(), "capability": torch.backends.cpu.get_cpu_capability()},
        "onednn_bf16": onednn_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def timed(fn: Callable[[], Any], repeat: int = 1) -> float:
    """Best wall time of `repeat` calls (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_data(root: Path, synthetic: str, image_size: int, workers: int) -> dict[str, Any]:
    """Clip cache build (decode + resize + Farneback flow), memory-mapped reads and DataLoader rates."""
    import shutil

    from datamodules.clips import VideoClipDataModule

    results: dict[str, Any] = {"image_size": image_size}
    with tempfile.TemporaryDirectory() as cache_dir:

        def make(cache_workers: int = 0, **kwargs: Any) -> VideoClipDataModule:
            return VideoClipDataModule(
                root=str(root),
                synthetic=synthetic,
                image_size=image_size,
                modalities=["video", "flow", "gaze", "audio"],
                cache_dir=cache_dir,
                cache_workers=cache_workers,
                batch_size=8,
                **kwargs,
            )

        for cache_workers in sorted({0, workers}):
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
        for num_workers in sorted({0, workers}):
            dm = make(num_workers=num_workers)
            dm.setup("fit")
            loader = dm.train_dataloader()
            seconds = timed(lambda loader=loader: sum(1 for _ in loader))
            results[f"loader_batches_per_s_workers{num_workers}"] = len(loader) / seconds
    return results


# ------------------------------------------------------------------------------------------- steps
def make_case(spec: dict[str, Any], device: str) -> Any:
    from benchmarks.models import config_case
    from benchmarks.steps import vqa_case

    if spec.get("vqa_size"):
        return vqa_case(spec["vqa_size"], device=device)
    return config_case(
        spec["model"],
        extra=spec.get("extra"),
        n_batches=spec.get("n_batches", 4),
        device=device,
        size=spec.get("size", "demo"),
    )


# what the tiny dataset needs beyond batch 2 (it has 4 standard images per plane: k <= 4)
QUICK_EXTRA: dict[str, list[str]] = {"CRLUIQA": ["--data.init_args.pseudo_labels.k=2"]}


def case_specs(
    quick: bool, root: str | None, sizes: tuple[str, ...] = ("demo", "published")
) -> list[dict[str, Any]]:
    """What to time: every model from its demo config and at its published size (``sizes``).
    ``quick``: the tiny dataset, batch 2, the smallest sizes the nets take, VideoQualityGAN tiny in place
    of the published sizes (the other models' published rows left out)."""
    from benchmarks.models import MODELS

    at_root = [f"--data.init_args.root={root}"] if root else []
    specs: list[dict[str, Any]] = []
    if "demo" in sizes:
        for name in MODELS:
            extra = list(at_root)
            if quick:
                extra += [
                    "--data.init_args.batch_size=2",
                    "--data.init_args.synthetic=tiny",
                    *QUICK_EXTRA.get(name, []),
                ]
            specs.append({"label": f"{name} (demo config)", "model": name, "extra": extra, "n_batches": 3})
    if "published" in sizes and quick:
        specs.append(
            {"label": "VideoQualityGAN (tiny, in place of the published shapes)", "vqa_size": "tiny"}
        )
    elif "published" in sizes:
        specs.append({"label": "VideoQualityGAN (published shapes)", "vqa_size": "published"})
        specs += [
            {
                "label": f"{name} (published config)",
                "model": name,
                "size": "published",
                "extra": list(at_root),
                "n_batches": 3,
            }
            for name in MODELS
            if name != "VideoQualityGAN"
        ]
    return specs


def _status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status in MB (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory_child(spec: dict[str, Any], precision: str, steps: int, device: str) -> dict[str, Any]:
    """Run in a fresh process: peak memory of ``steps`` plain-loop steps (see the module docstring).

    The peak is the kernel's high-water mark of this process's resident set (``VmHWM``), reset to the
    current size once the model and batches are built (``/proc/self/clear_refs``), so the increase is the
    steps' own. ``ru_maxrss`` cannot be used as is: Linux carries it over from the parent through
    fork + exec, so a child of a process that was once larger never reports less than that.
    """
    case = make_case(spec, device)
    step = case.plain_step(precision)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _status_mb("VmRSS")
    if case.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps):
        step(case.batches[i % len(case.batches)], i)
    peak = _status_mb("VmHWM") if reset else None
    if peak is None:  # no /proc: ru_maxrss (an upper bound: it may include the parent's peak)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out: dict[str, Any] = {"peak_rss_mb": peak, "rss_before_steps_mb": before}
    out["step_rss_increase_mb"] = None if before is None else peak - before
    if case.device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def peak_memory(
    spec: dict[str, Any], precision: str, steps: int, device: str, timeout: float
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--memory-child",
        json.dumps([spec, precision, steps, device]),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY ") :])
    return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def bench_steps(args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    from benchmarks.steps import compare

    rows = []
    for spec in case_specs(args.quick, args.root, tuple(args.sizes)):
        if args.models and not any(m.lower() in spec["label"].lower() for m in args.models):
            continue
        case = make_case(spec, device)
        row: dict[str, Any] = {"case": spec["label"], "note": case.note, **case.meta, "precisions": {}}
        for precision in args.precisions:
            emulated = precision != "32-true" and device == "cpu" and onednn_bf16() is False
            if emulated and (
                spec.get("vqa_size") == "published"
                or spec.get("size") == "published"
                or (args.quick and not spec.get("vqa_size"))
            ):
                row["precisions"][precision] = {
                    "skipped": "no native bf16 convolutions on this CPU (oneDNN bf16 unsupported): a step "
                    "takes 10-20x the fp32 one, minutes at the published size"
                    + (" (--quick times bf16 on the tiny VQA only)" if args.quick else "")
                }
                print(summary_line(row["case"], precision, row["precisions"][precision]), flush=True)
                continue
            step = case.plain_step(precision)
            start = time.perf_counter()
            step(case.batches[0], 0)
            first = time.perf_counter() - start
            if first > args.max_step_s:
                result: dict[str, Any] = {
                    "skipped": f"one step took {first:.0f} s (> --max-step-s {args.max_step_s:.0f})",
                    "single_step_s": first,
                }
            else:
                result = compare(case, precision, args.steps, args.rounds)
            if not args.quick:
                result["memory"] = peak_memory(spec, precision, 3, device, timeout=max(600, 10 * first))
            result["load_average_1min"] = os.getloadavg()[0]
            row["precisions"][precision] = result
            print(summary_line(row["case"], precision, result), flush=True)
        rows.append(row)
    return rows


def summary_line(case: str, precision: str, r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"{case} {precision}: skipped, {r['skipped']}"
    return (
        f"{case} {precision}: Lightning {r['lightning_s']:.3f} s, plain {r['plain_s']:.3f} s "
        f"(ratio {r['lightning_over_plain']:.2f}) per step, median of {r['steps_each']}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The README table of a run."""
    cpu = report["machine"]["cpu"]
    lines = [
        f"{cpu['model']} ({report['machine']['cpu_count']} cores; AVX-512 {'yes' if cpu['avx512f'] else 'no'}, "
        f"AVX-512-BF16 {'yes' if cpu['avx512_bf16'] else 'no'}, AMX {'yes' if cpu['amx_bf16'] else 'no'}), "
        f"torch {report['machine']['torch']}, load average at start {report['machine']['load_average_1_5_15'][0]:.1f}",
        "",
        "| case | precision | Lightning s/step | plain s/step | Lightning / plain | peak RSS increase MB | loader batches/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.get("steps", []):
        for precision, r in row["precisions"].items():
            mem = r.get("memory", {}).get("step_rss_increase_mb")
            mem_s = f"{mem:.0f}" if isinstance(mem, (int, float)) else "–"
            rate = row.get("loader_batches_per_s")
            rate_s = f"{rate:.1f}" if rate else "–"
            if "skipped" in r:
                why = (
                    "skipped: bf16 emulated here"
                    if "native bf16" in r["skipped"]
                    else f"skipped: {r['skipped']}"
                )
                lines.append(f"| {row['case']} | {precision} | {why} | | | {mem_s} | {rate_s} |")
            else:
                lines.append(
                    f"| {row['case']} | {precision} | {r['lightning_s']:.3f} | {r['plain_s']:.3f} | "
                    f"{r['lightning_over_plain']:.2f} | {mem_s} | {rate_s} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CPU smoke form: tiny sizes, 2 steps, 1 round")
    parser.add_argument("--root", default=None, help="dataset folder (default: each config's own)")
    parser.add_argument("--image-size", type=int, default=128, help="frame size of the data-path benchmark")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block after the warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="Lightning/plain alternations")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument(
        "--models", nargs="*", default=None, help="only cases whose name contains one of these"
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=["demo", "published"],
        default=["demo", "published"],
        help="demo configs, published sizes, or both",
    )
    parser.add_argument("--max-step-s", type=float, default=120.0)
    parser.add_argument("--no-data", action="store_true", help="skip the data-path benchmark")
    parser.add_argument("--out", type=Path, default=None, help="result file (default benchmarks/results/...)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.memory_child:
        spec, precision, steps, dev = json.loads(args.memory_child)
        print("MEMORY " + json.dumps(memory_child(spec, precision, steps, dev)), flush=True)
        return None
    if args.quick:
        args.steps, args.rounds, args.workers = min(args.steps, 2), 1, 0
    report: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick and not args.root:
            args.root = str(Path(tmp) / "tiny")  # generated on first use, removed at the end
        root = Path(args.root or "data/synthetic-demo")
        if not args.no_data:
            synthetic = "tiny" if args.quick else "demo"
            report["data"] = bench_data(root, synthetic, 32 if args.quick else args.image_size, args.workers)
        report["steps"] = bench_steps(args, device)
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = args.out or RESULTS / f"{'gpu' if device == 'cuda' else 'cpu'}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
