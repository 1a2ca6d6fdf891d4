"""Profile VideoQualityGAN training steps (plain loop, ``benchmarks.steps``) with ``torch.profiler``.

    python -m benchmarks.profile_step --size demo --precision 32-true
    python -m benchmarks.profile_step --size demo --precision bf16-mixed --top 20

Prints the ops with the most self time over ``--steps`` steps after one warm-up step (forward and
backward ops alike: ``aten::convolution_backward`` etc.), the share of the whole, and the step times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.steps import PRECISIONS, VQA_SIZES, vqa_case


def profile_vqa(size: str, precision: str, steps: int, top: int, device: str = "cpu") -> dict[str, Any]:
    """Top ops by self time (device time on a GPU, CPU time otherwise) over ``steps`` profiled steps."""
    case = vqa_case(size, device=device)
    step = case.plain_step(precision)
    step(case.batches[0], 0)  # warm-up (first-call allocations, oneDNN primitive creation)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if case.device.type == "cuda" else [])
    times = []
    with profile(activities=activities) as prof:
        for i in range(steps):
            start = time.perf_counter()
            step(case.batches[i % len(case.batches)], i)
            if case.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    key = "self_device_time_total" if case.device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    rows = [
        {
            "op": e.key,
            "self_s_per_step": getattr(e, key) / 1e6 / steps,
            "share": getattr(e, key) / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:top]
    ]
    return {"size": size, "precision": precision, "step_s_median": statistics.median(times), "top_ops": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(VQA_SIZES), default="demo")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    result = profile_vqa(args.size, args.precision, args.steps, args.top, args.device)
    print(f"VideoQualityGAN[{args.size}] {args.precision}: median step {result['step_s_median']:.3f} s")
    print(f"{'op':<48} {'s/step':>8} {'share':>6} {'calls':>6}")
    for row in result["top_ops"]:
        print(
            f"{row['op']:<48} {row['self_s_per_step']:8.3f} {row['share']:6.1%} {row['calls_per_step']:6.0f}"
        )


if __name__ == "__main__":
    main()
