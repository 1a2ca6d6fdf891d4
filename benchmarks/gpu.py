"""`make bench-gpu`: every GPU check in one command (< 8 min on one GPU), results in benchmarks/results/gpu.json.

For each model (its demo config; VideoQualityGAN also at 256 px, batch 8, ngf 32), the plain-loop
training step (``benchmarks.steps``: the model's own nets, losses and optimisers) in:

* ``32-true``, ``bf16-mixed`` and ``16-mixed`` (fp16 autocast with one ``GradScaler`` per optimiser: the
  GAN's G and D steps keep their own loss scales, each scaler updated after its own step);
* ``cudnn.benchmark`` on (the others run with it off);
* ``torch.compile`` (each network compiled in place, ``nn.Module.compile``), fp32 and bf16, on the VQA
  step (compiling every model would take minutes each);

each with its median step time after warm-up, peak memory (``torch.cuda.max_memory_allocated``) and, for
VideoQualityGAN at 256 px batch 8, the achieved TFLOP/s (FLOPs of one step counted with
``torch.utils.flop_counter.FlopCounterMode``, over the median step time).

Without a GPU it runs a reduced form on the CPU (tiny VideoQualityGAN, 2 steps, fp32 compile of its
smallest network with the ``eager`` backend, peak memory as the process's peak RSS) so the command is known to work the first time a
GPU is there; that form writes ``gpu-reduced-cpu.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import RESULTS, machine
from benchmarks.steps import Case, vqa_case

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "32-true"},
    "bf16-mixed": {"precision": "bf16-mixed"},
    "16-mixed": {"precision": "16-mixed"},
    "fp32+cudnn.benchmark": {"precision": "32-true", "cudnn_benchmark": True},
    "fp32+compile": {"precision": "32-true", "compile": True},
    "bf16-mixed+compile": {"precision": "bf16-mixed", "compile": True},
}


def compile_nets(model: torch.nn.Module, backend: str, smallest_only: bool = False) -> list[str]:
    """Compile the model's top-level networks in place (parameter names unchanged); ``smallest_only``: just
    the one with the fewest parameters (the reduced CPU form: checks the wiring without minutes of tracing).
    Returns the names compiled."""
    nets = [(sum(p.numel() for p in c.parameters()), n, c) for n, c in model.named_children()]
    nets = sorted((size, n, c) for size, n, c in nets if size > 0)
    chosen = nets[:1] if smallest_only else nets
    for _, _, child in chosen:
        child.compile(backend=backend)
    return [n for _, n, _ in chosen]


def step_flops(case: Case) -> int:
    """FLOPs of one fp32 training step (forward and backward, both optimiser steps) of ``case``."""
    from torch.utils.flop_counter import FlopCounterMode

    step = case.plain_step("32-true")
    with FlopCounterMode(display=False) as counter:
        step(case.batches[0], 0)
    return int(counter.get_total_flops())


def run_variant(case: Case, variant: dict[str, Any], steps: int, reduced: bool) -> dict[str, Any]:
    """Median step time and peak memory of one variant. The case is shared by the variants (built once:
    the step's cost does not depend on where training has got to); the compile variants run last, as
    compiling changes the networks in place (``compiled``: already compiled by an earlier variant)."""
    cuda = case.device.type == "cuda"
    torch.backends.cudnn.benchmark = bool(variant.get("cudnn_benchmark", False))
    compiled = None
    if variant.get("compile"):
        if case.compiled is None:
            backend = "eager" if reduced else "inductor"
            case.compiled = compile_nets(case.model, backend, smallest_only=reduced)
        compiled = case.compiled
    step = case.plain_step(variant["precision"])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(2):  # warm-up: compilation, cudnn autotuning, allocator
        step(case.batches[i % len(case.batches)], i)
    if cuda:
        torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(case.batches[i % len(case.batches)], i)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    out: dict[str, Any] = {"step_s": statistics.median(times), "steps": steps, "warmup_s": warmup}
    if compiled is not None:
        out["compiled"] = compiled
    if cuda:
        out["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.backends.cudnn.benchmark = False
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (10; reduced: 2)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this long")
    parser.add_argument("--models", nargs="*", default=None, help="config models (default: all on a GPU)")
    parser.add_argument("--reduced", action="store_true", help="the CPU form (default without a GPU)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.reduced
    device = "cuda" if cuda else "cpu"
    steps = args.steps or (10 if cuda else 2)
    from benchmarks.models import MODELS, config_case

    cases: dict[str, Any] = {}
    if cuda:
        cases["VideoQualityGAN 256px batch 8 (ngf 32)"] = lambda: vqa_case("published-batch8", device=device)
        for name in args.models if args.models is not None else list(MODELS):
            cases[f"{name} (demo config)"] = lambda name=name: config_case(name, device=device)
    else:
        cases["VideoQualityGAN tiny"] = lambda: vqa_case("tiny", device=device)
        for name in args.models or []:
            cases[f"{name} (demo config, batch 2)"] = lambda name=name: config_case(
                name, extra=["--data.init_args.batch_size=2"], n_batches=2, device=device
            )
    report: dict[str, Any] = {"machine": machine(), "device": device, "reduced": not cuda, "cases": {}}
    started = time.perf_counter()
    for label, make in cases.items():
        results: dict[str, Any] = {}
        try:
            case = make()
        except Exception as exc:  # a model that cannot be built is recorded, the others still run
            report["cases"][label] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        for name, variant in VARIANTS.items():
            if time.perf_counter() - started > args.budget_s:
                results[name] = {"skipped": f"--budget-s {args.budget_s:.0f} s spent"}
                continue
            if variant.get("compile") and not label.startswith("VideoQualityGAN"):
                continue  # compile is timed on the VQA step (minutes of compilation per model otherwise)
            if not cuda and name == "bf16-mixed+compile":
                continue  # the reduced form compiles once (fp32) to check the wiring
            try:
                results[name] = run_variant(case, variant, steps, reduced=not cuda)
            except Exception as exc:  # a variant that fails (e.g. compile) is recorded, the rest still run
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(label, name, results[name], flush=True)
        if label.startswith("VideoQualityGAN"):
            flops = step_flops(make())  # a fresh, uncompiled copy: FlopCounterMode counts aten ops
            results["flops_per_step"] = flops
            for r in results.values():
                if isinstance(r, dict) and "step_s" in r:
                    r["tflop_per_s"] = flops / r["step_s"] / 1e12
        report["cases"][label] = results
    report["wall_s"] = time.perf_counter() - started
    out = args.out or RESULTS / ("gpu.json" if cuda else "gpu-reduced-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out} ({report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
