"""Run a paper's comparison table: each row is a stack of configs, trained then tested, metrics collected.

Each model's `tables.py` declares its rows (the paper's baselines and ablations as config overlays) and its
metric columns, and calls `run_table`. Rows run one after another in this process through the same CLI a
user types (`lightning fit --config A --config B ...`), then `test` on the best checkpoint (or the last
weights when no checkpoint was kept), so a table is exactly the runs a user could repeat by hand.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.common.checkpoints import safe_loading


@dataclass
class Row:
    """One line of a results table: a name and the configs stacked to make it."""

    name: str
    configs: list[str]
    args: list[str] = field(default_factory=list)
    group: str = ""


def best_checkpoint(trainer: Any) -> str | None:
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            return callback.best_model_path
    return None


def run_row(row: Row, common_args: Sequence[str], fit: bool = True) -> dict[str, float]:
    """fit (unless fit=False: models with nothing to train) then test; returns the test metrics."""
    from lightning_modules.cli import main

    config_args = [arg for config in row.configs for arg in ("--config", config)]
    args = [*config_args, *row.args, *common_args]
    if fit:
        cli = main(["fit", *args])
        ckpt = best_checkpoint(cli.trainer)
        with safe_loading():
            results = cli.trainer.test(
                cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True
            )
    else:
        cli = main(["test", *args])
        results = [dict(cli.trainer.callback_metrics)]
    merged: dict[str, float] = {}
    for result in results:
        merged.update({k: float(v) for k, v in result.items()})
    return merged


def format_table(results: Mapping[str, Mapping[str, float]], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table: one row per run, `columns` = (header, metric key) pairs; missing values show as -."""
    header = "| method | " + " | ".join(h for h, _ in columns) + " |"
    lines = [header, "|---|" + "---|" * len(columns)]
    for name, metrics in results.items():
        cells = []
        for _, key in columns:
            value = metrics.get(key)
            cells.append("-" if value is None or math.isnan(value) else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(
    rows: Sequence[Row],
    columns: Sequence[tuple[str, str]],
    common_args: Sequence[str] = (),
    out: Path | None = None,
    no_fit: Sequence[str] = (),
) -> str:
    """Run every row, print and return the markdown table; also write results JSON/markdown to `out`."""
    results: dict[str, dict[str, float]] = {}
    for row in rows:
        print(f"\n=== {row.name}: {' + '.join(row.configs)} {' '.join(row.args)}", flush=True)
        results[row.name] = run_row(row, common_args, fit=row.name not in no_fit)
        if out is not None:  # keep partial results if a later row fails
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=2))
    table = format_table(results, columns)
    if out is not None:
        (out / "table.md").write_text(table + "\n")
    print("\n" + table)
    return table


def table_arguments(description: str) -> argparse.ArgumentParser:
    """The command-line shape every `python -m lightning_modules.<model>.tables` shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", nargs="*", help="run only these rows (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and table.md")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="extra CLI arguments for every run after `--`, e.g. -- --trainer.max_epochs=5",
    )
    return parser


def select_rows(rows: Sequence[Row], names: Sequence[str] | None) -> list[Row]:
    if not names:
        return list(rows)
    known = {row.name: row for row in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(known)}")
    return [known[n] for n in names]


def overrides_from(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides or [])
    return extra[1:] if extra[:1] == ["--"] else extra
