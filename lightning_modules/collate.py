"""Turn a study's run folders into the paper's table (Markdown and CSV), mean ± std where seeds repeat.

Reads every run of a sweep under the run root: ``<root>/<project>/<sweep>-NNN-xxxxxx/`` with its
``sweep.json`` (the sampled parameters, written by ``lightning_modules.sweep``) and ``test_metrics.json``
(written by ``--test_after_fit`` or ``lightning test``). Rows are the distinct parameter settings, with
``seed_everything`` left out so that repeated seeds of one setting become one row: each cell is the mean
over its runs, ``mean ± std`` when there are several. The sweep file's ``sonolab.table`` names the rows
(``rows: {parameter: {value: label}}``) and the columns (``columns: [[header, metric], ...]``, default:
every ``test/`` metric). ``reference: {label: ..., prefix: ...}`` closes the table with a reference row
that every run also measured, e.g. the centre-bias map of the saliency papers: each column's metric with
``test/`` replaced by ``prefix`` (``test/centre_bias/``), pooled over all runs.

Usage::

    python -m lightning_modules.collate configs/sweeps/vqa_table1.yaml [--root runs] [--out runs/tables]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_modules.sweep import DEFAULT_ROOT, MARKER, SONOLAB_KEY, load_sweep

__all__ = ["collect_runs", "main", "make_table"]

SEED_KEYS = ("seed_everything",)


def _metrics_of(folder: Path) -> dict[str, float] | None:
    files = sorted(folder.glob("test_metrics*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    return {k: float(v) for k, v in json.loads(files[-1].read_text())["metrics"].items()}


def collect_runs(root: Path, sweep: str) -> list[dict[str, Any]]:
    """Every finished run of ``sweep`` under ``root`` that has test metrics: params + metrics + folder."""
    runs = []
    for marker in sorted(root.glob(f"*/{sweep}-*/{MARKER}")):
        record = json.loads(marker.read_text())
        if record.get("sweep") != sweep:
            continue
        metrics = _metrics_of(marker.parent)
        if metrics is None:
            print(f"{marker.parent}: no test_metrics.json (run with --test_after_fit=true); left out")
            continue
        runs.append({"params": record["params"], "metrics": metrics, "folder": str(marker.parent)})
    return runs


def _label(params: dict[str, Any], names: dict[str, dict[Any, str]]) -> str:
    parts = []
    for key, value in params.items():
        if key in SEED_KEYS:
            continue
        mapping = names.get(key, {})
        label = mapping.get(value, mapping.get(str(value)))
        parts.append(label if label is not None else f"{key.rsplit('.', 1)[-1]}={value}")
    return ", ".join(parts) or "(all)"


def _cell(values: list[float]) -> tuple[str, float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-", math.nan, math.nan
    mean = statistics.fmean(finite)
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    text = f"{mean:.3f} ± {std:.3f}" if len(finite) > 1 else f"{mean:.3f}"
    return text, mean, std


def make_table(
    runs: list[dict[str, Any]], table: dict[str, Any] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and CSV rows: one row per setting (seeds pooled), in the order the runs were drawn."""
    table = table or {}
    names = {k: dict(v) for k, v in (table.get("rows") or {}).items()}
    columns = [tuple(c) for c in table.get("columns") or []]
    if not columns:
        keys = sorted({k for r in runs for k in r["metrics"] if k.startswith("test/")})
        columns = [(k.removeprefix("test/"), k) for k in keys]
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(_label(run["params"], names), []).append(run)
    header = "| method | n | " + " | ".join(h for h, _ in columns) + " |"
    lines = [header, "|---|---|" + "---|" * len(columns)]
    rows = []
    for label, members in groups.items():
        cells, row = [], {"method": label, "n": len(members)}
        for head, key in columns:
            text, mean, std = _cell([m["metrics"].get(key, math.nan) for m in members])
            cells.append(text)
            row[f"{head} mean"], row[f"{head} std"] = mean, std
        lines.append(f"| {label} | {len(members)} | " + " | ".join(cells) + " |")
        rows.append(row)
    reference = table.get("reference")
    if reference:
        prefix = reference["prefix"]
        cells, row = [], {"method": reference["label"], "n": len(runs)}
        for head, key in columns:
            text, mean, std = _cell(
                [r["metrics"].get(prefix + key.removeprefix("test/"), math.nan) for r in runs]
            )
            cells.append(text)
            row[f"{head} mean"], row[f"{head} std"] = mean, std
        lines.append(f"| {reference['label']} | {len(runs)} | " + " | ".join(cells) + " |")
        rows.append(row)
    return "\n".join(lines), rows


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="A sweep's runs as the paper's table (Markdown + CSV).")
    parser.add_argument("sweep", type=Path, help="the sweep file the runs came from")
    parser.add_argument("--root", type=Path, default=Path(DEFAULT_ROOT), help="run root (default: runs)")
    parser.add_argument("--out", type=Path, default=None, help="folder for <sweep>.md and <sweep>.csv")
    args = parser.parse_args(argv)
    spec = load_sweep(args.sweep)
    runs = collect_runs(args.root, spec["name"])
    if not runs:
        raise SystemExit(f"no finished run of sweep {spec['name']} with test metrics under {args.root}")
    title = (spec.get(SONOLAB_KEY) or {}).get("title", spec["name"])
    markdown, rows = make_table(runs, (spec.get(SONOLAB_KEY) or {}).get("table"))
    text = f"### {title}\n\n{markdown}\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{spec['name']}.md").write_text(text)
        with (args.out / f"{spec['name']}.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return text


if __name__ == "__main__":
    main()
