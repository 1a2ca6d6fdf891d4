"""The paper's Table 1 (spatial-only baselines, sequence lengths 4..10) and Table 2 (placement) as runs.

Every row is a stack of configs a user could type by hand: ``configs/clstm_unet.yaml`` (+ the ``demo``
overlay with ``--preset demo``) + the row's overlays, fitted, then tested on the best checkpoint (lowest
validation KLD). A ``centre bias`` row (the Gaussian centre prior scored on the same test maps, logged by
every run as ``test/centre_bias/*``) closes each table. Columns in the paper's order: KLD, SIM, NSS, CC.

    python -m lightning_modules.clstm_unet.tables --table 1 --preset demo --out runs/tables
    python -m lightning_modules.clstm_unet.tables --table 2 --out runs/tables -- --trainer.max_epochs=50
    python -m lightning_modules.clstm_unet.tables --rows "U-Net RA(7,9)" seq6

The paper's "before" row of Table 2 is its seq6 model of Table 1 (same settings, same figures); with
``--table all`` it is trained once and reported in both tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_modules.common.experiments import (
    Row,
    format_table,
    overrides_from,
    run_row,
    select_rows,
    table_arguments,
)

__all__ = ["COLUMNS", "TABLE1", "TABLE2", "build_tables", "centre_bias_row", "main", "rows_for"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE = str(CONFIGS / "clstm_unet.yaml")


def _overlay(name: str) -> str:
    return str(CONFIGS / "clstm_unet" / f"{name}.yaml")


COLUMNS: list[tuple[str, str]] = [
    ("KLD ↓", "test/kld"),
    ("SIM ↑", "test/sim"),
    ("NSS ↑", "test/nss"),
    ("CC ↑", "test/cc"),
]

TABLE1: list[Row] = [
    Row("U-Net RA(7,9)", [_overlay("spatial_only")], group="table1"),
    Row("U-Net RA(3,9)", [_overlay("spatial_only"), _overlay("ra_3_9")], group="table1"),
    Row("U-Net Mix.RA(3,7)", [_overlay("spatial_only"), _overlay("ra_mixed")], group="table1"),
    *(Row(f"seq{n}", [_overlay(f"seq{n}")], group="table1") for n in range(4, 11)),
]
TABLE2: list[Row] = [
    Row("before", [_overlay("before")], group="table2"),
    Row("before & after", [_overlay("both")], group="table2"),
    Row("after", [_overlay("after")], group="table2"),
]
SAME_RUN = {"before": "seq6"}  # Table 2 row -> the Table 1 row with identical settings


def rows_for(table: str, preset: str | None = None) -> list[Row]:
    """The rows of ``table`` ("1", "2" or "all") with the base config (and preset overlay) in front."""
    chosen = {"1": TABLE1, "2": TABLE2, "all": TABLE1 + TABLE2}.get(table)
    if chosen is None:
        raise ValueError(f"table must be '1', '2' or 'all', got {table!r}")
    head = [BASE] + ([_overlay(preset)] if preset else [])
    return [Row(r.name, head + r.configs, list(r.args), r.group) for r in chosen]


def centre_bias_row(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The centre-bias scores of the first run that has them, under the model's metric keys."""
    for metrics in results.values():
        if "test/centre_bias/kld" in metrics:
            return {key: metrics[key.replace("test/", "test/centre_bias/")] for _, key in COLUMNS}
    return {}


def build_tables(results: Mapping[str, Mapping[str, float]], rows: Sequence[Row]) -> str:
    """Markdown: one table per group present in ``rows``, each closed by the centre-bias row."""
    parts = []
    for group, title in (("table1", "Table 1"), ("table2", "Table 2: placement of the context")):
        names = [r.name for r in rows if r.group == group and r.name in results]
        if not names:
            continue
        block = {name: dict(results[name]) for name in names}
        centre = centre_bias_row(block)
        if centre:
            block["centre bias"] = centre
        parts.append(f"**{title}**\n\n{format_table(block, COLUMNS)}")
    return "\n\n".join(parts)


def run_rows(
    rows: Sequence[Row], common_args: Sequence[str], out: Path | None
) -> dict[str, dict[str, float]]:
    """Fit and test each row (reusing a run with identical settings), saving results as they come."""
    results: dict[str, dict[str, float]] = {}
    for row in rows:
        twin = SAME_RUN.get(row.name)
        if twin in results:
            print(f"\n=== {row.name}: same settings as {twin}, reusing its run", flush=True)
            results[row.name] = results[twin]
            continue
        print(f"\n=== {row.name}: {' + '.join(row.configs)} {' '.join(row.args)}", flush=True)
        results[row.name] = run_row(row, common_args)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> str:
    parser = table_arguments("cLSTMU-Net: the paper's Table 1 / Table 2 as fitted and tested runs.")
    parser.add_argument("--table", choices=("1", "2", "all"), default="all")
    parser.add_argument(
        "--preset",
        choices=("demo",),
        default=None,
        help="stack configs/clstm_unet/<preset>.yaml after the base",
    )
    args = parser.parse_args(argv)
    rows = select_rows(rows_for(args.table if not args.rows else "all", args.preset), args.rows)
    results = run_rows(rows, overrides_from(args), args.out)
    text = build_tables(results, rows)
    if args.out is not None:
        (args.out / "table.md").write_text(text + "\n")
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
