"""The VQA paper's Table 1 (methods) and Table 2 (zoom-in and ω_gaze ablations) on the current data.

Every row is ``configs/vqa.yaml`` + one overlay of ``configs/vqa/`` (+ ``configs/vqa/demo.yaml`` with
``--demo``), trained with ``lightning fit`` and tested on its best checkpoint, exactly the runs a user could
repeat by hand (``lightning_modules.common.experiments``). Overlays with identical content (``gaze_w0`` =
``with_flow``, ``gaze_w0.1`` = ``all_modalities``) are trained once and shown in both tables. Thresholded
metrics use the threshold chosen on the validation split; ``--oracle`` adds the metrics at the test split's
own best-F1 threshold (what the official code reports). With several ``--seeds`` each cell is the mean
(AUC: mean ± std) over the seeds, as the paper's ± columns.

The rows that use the zoom-in share one: the configs' ``zoom_checkpoint: auto`` pretrains it before the
first such row (``configs/zoom.yaml`` [+ ``configs/zoom/demo.yaml``], on the same data) and every later row
reuses it; ``--zoom-checkpoint PATH`` uses that checkpoint instead.

Usage::

    python -m lightning_modules.vqa_gan.tables --demo                      # every row, demo schedule
    python -m lightning_modules.vqa_gan.tables --demo --rows video_only all_modalities --seeds 0 1 2
    python -m lightning_modules.vqa_gan.tables -- --trainer.max_epochs=50  # extra CLI args for every run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_modules.common.experiments import Row, run_row

__all__ = ["TABLE1", "TABLE2", "VARIANTS", "format_paper_table", "main", "run_tables", "unique_variants"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# overlay name -> does it use the zoom-in
VARIANTS: dict[str, bool] = {
    "image_baseline": True,
    "stae_baseline": True,
    "video_only": True,
    "with_flow": True,
    "with_gaze": True,
    "all_modalities": True,
    "no_zoom": False,
    "gaze_w0": True,
    "gaze_w0.1": True,
    "gaze_w0.5": True,
    "gaze_w1": True,
}


@dataclass(frozen=True)
class TableRow:
    group: str
    method: str
    variant: str


TABLE1 = [
    TableRow("Single modality", "Image-based", "image_baseline"),
    TableRow("Single modality", "STAE", "stae_baseline"),
    TableRow("Multiple modalities", "Video only", "video_only"),
    TableRow("Multiple modalities", "with Optical flow", "with_flow"),
    TableRow("Multiple modalities", "with Gaze", "with_gaze"),
    TableRow("Multiple modalities", "All modalities", "all_modalities"),
]
TABLE2 = [
    TableRow("Zoom-in", "w/o zoom-in module", "no_zoom"),
    TableRow("Zoom-in", "Zoom-in module", "with_flow"),
    TableRow("Gaze loss", "ω_gaze = 0", "gaze_w0"),
    TableRow("Gaze loss", "ω_gaze = 0.1", "gaze_w0.1"),
    TableRow("Gaze loss", "ω_gaze = 0.5", "gaze_w0.5"),
    TableRow("Gaze loss", "ω_gaze = 1", "gaze_w1"),
]
COLUMNS = [("AUC", "auc"), ("F1", "f1"), ("ACC", "acc"), ("SEN", "sen"), ("SPE", "spe")]


def overlay_path(variant: str) -> Path:
    return CONFIGS / "vqa" / f"{variant}.yaml"


def unique_variants(variants: Sequence[str]) -> dict[str, str]:
    """Map every variant to the first one with the same overlay content (run once, reported twice)."""
    seen: list[tuple[Any, str]] = []
    canonical: dict[str, str] = {}
    for variant in variants:
        content = yaml.safe_load(overlay_path(variant).read_text())
        same = next((name for c, name in seen if c == content), None)
        if same is None:
            seen.append((content, variant))
            same = variant
        canonical[variant] = same
    return canonical


def _cell(values: Sequence[float], with_std: bool) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "-"
    mean = statistics.fmean(finite)
    if with_std and len(finite) > 1:
        return f"{mean:.3f} ± {statistics.stdev(finite):.3f}"
    return f"{mean:.3f}"


def format_paper_table(
    title: str,
    rows: Sequence[TableRow],
    results: Mapping[str, Sequence[Mapping[str, float]]],
    oracle: bool = False,
) -> str:
    """Markdown table in the paper's layout: group, method, AUC (± std over seeds), F1, ACC, SEN, SPE
    (fractions; the paper prints percentages), one line per row whose variant has results."""
    columns = list(COLUMNS)
    if oracle:
        columns += [(f"{h} (oracle)", f"oracle_{k}") for h, k in COLUMNS[1:]]
    lines = [f"**{title}**", "", "| | method | " + " | ".join(h for h, _ in columns) + " |"]
    lines.append("|---|---|" + "---|" * len(columns))
    last_group = None
    for row in rows:
        runs = results.get(row.variant)
        if not runs:
            continue
        cells = [_cell([r.get(f"test/{key}", math.nan) for r in runs], key == "auc") for _, key in columns]
        group = row.group if row.group != last_group else ""
        last_group = row.group
        lines.append(f"| {group} | {row.method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finish_wandb() -> None:
    """Close the row's W&B run: rows run in one process, and Lightning's WandbLogger joins a run that is
    still open instead of starting its own (the rows would share one run and one run folder)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def run_tables(
    variants: Sequence[str],
    seeds: Sequence[int] = (0,),
    demo: bool = False,
    zoom_checkpoint: str | None = None,
    extra: Sequence[str] = (),
    out: Path | None = None,
    oracle: bool = False,
) -> dict[str, list[dict[str, float]]]:
    """Fit + test every distinct variant for every seed; print and return ``{variant: [metrics per seed]}``."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(VARIANTS)}")
    canonical = unique_variants(variants)
    base = [CONFIGS / "vqa.yaml"] + ([CONFIGS / "vqa" / "demo.yaml"] if demo else [])
    common = list(extra)
    if zoom_checkpoint is not None:
        if not Path(zoom_checkpoint).is_file():
            raise FileNotFoundError(f"--zoom-checkpoint {zoom_checkpoint} does not exist")
        common.append(f"--model.init_args.zoom_checkpoint={zoom_checkpoint}")
    results: dict[str, list[dict[str, float]]] = {}
    timings: dict[str, float] = {}
    for variant in dict.fromkeys(canonical.values()):
        results[variant] = []
        for seed in seeds:
            row = Row(
                variant, [str(c) for c in [*base, overlay_path(variant)]], [f"--seed_everything={seed}"]
            )
            print(f"\n=== {variant} (seed {seed}): {' + '.join(row.configs)}", flush=True)
            start = time.time()
            results[variant].append(run_row(row, common))
            finish_wandb()
            timings[f"{variant}/seed{seed}"] = time.time() - start
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / "results.json").write_text(
                    json.dumps({"results": results, "seconds": timings}, indent=2)
                )
    for variant, same in canonical.items():
        results[variant] = results[same]
    tables = [
        format_paper_table(
            "Table 1: methods (test split; thresholds chosen on validation)", TABLE1, results, oracle
        ),
        format_paper_table("Table 2: zoom-in and ω_gaze ablations (video + flow)", TABLE2, results, oracle),
    ]
    text = "\n\n".join(tables)
    print("\n" + text + "\n")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text(text + "\n")
        print(f"results in {out}/results.json and {out}/tables.md")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(
        description="Run the VQA paper's Table 1 and Table 2 on the current data."
    )
    parser.add_argument(
        "--rows", nargs="*", default=None, help=f"variants to run (default all: {list(VARIANTS)})"
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0], help="one run per seed (default: 0)")
    parser.add_argument(
        "--demo", action="store_true", help="stack configs/vqa/demo.yaml (short CPU schedule)"
    )
    parser.add_argument("--zoom-checkpoint", default=None, help="zoom-in checkpoint for the zoomed rows")
    parser.add_argument(
        "--oracle", action="store_true", help="also print metrics at the test split's own threshold"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and tables.md")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="extra CLI args for every run after `--`")
    args = parser.parse_args(argv)
    extra = list(args.overrides or [])
    extra = extra[1:] if extra[:1] == ["--"] else extra
    out = args.out or Path("runs") / f"vqa-tables-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_tables(
        args.rows or list(VARIANTS),
        seeds=args.seeds,
        demo=args.demo,
        zoom_checkpoint=args.zoom_checkpoint,
        extra=extra,
        out=out,
        oracle=args.oracle,
    )


if __name__ == "__main__":
    main()
