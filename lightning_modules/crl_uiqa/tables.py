"""The CRL-UIQA comparison: Table 1's ablations and Table 2's baselines, as config stacks, trained then tested.

    python -m lightning_modules.crl_uiqa.tables --out runs/crl_uiqa_table          # the full recipe
    python -m lightning_modules.crl_uiqa.tables --demo --out runs/crl_uiqa_demo    # CPU demo (64 px, bf16)
    python -m lightning_modules.crl_uiqa.tables --rows all niqe -- --trainer.max_epochs=5

Every row is ``configs/crl_uiqa.yaml`` plus its overlay (``--demo`` puts ``configs/crl_uiqa/demo.yaml`` in
between); arguments after ``--`` go to every run. Trained rows are tested with their final weights (the
configs keep no "best" checkpoint: the validation pairs carry quality labels); the classical baselines are
only tested. Columns: pairwise accuracy per plane (the paper reports 4CH and abdomen) and overall, the
Spearman correlation with the pseudo-labels, blur monotonicity, and the accuracy of the pseudo-labels
themselves on the same test pairs.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_modules.common.experiments import Row, overrides_from, run_table, select_rows, table_arguments

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MAIN = str(CONFIGS / "crl_uiqa.yaml")
OVERLAYS = CONFIGS / "crl_uiqa"

#: (row name, overlay) in the paper's order: Table 1 top to bottom, then the baselines.
ROW_OVERLAYS: tuple[tuple[str, str], ...] = (
    ("Pseudo-label", "pseudo_label_only"),
    ("+ smoothing", "smoothing"),
    ("+ smoothing + L_c", "smoothing_lc"),
    ("+ smoothing + L_r", "smoothing_lr"),
    ("CRL-UIQA (all)", "all"),
    ("Regression (α=1)", "regression"),
    ("BRISQUE", "brisque"),
    ("NIQE", "niqe"),
    ("MSSIM", "mssim"),
)
#: Rows with nothing to train: only `test` runs.
UNTRAINED = ("BRISQUE", "NIQE", "MSSIM")

COLUMNS: tuple[tuple[str, str], ...] = (
    ("4CH", "test/pairwise_acc/four_chamber"),
    ("Abdomen", "test/pairwise_acc/abdomen"),
    ("TV", "test/pairwise_acc/transventricular"),
    ("TC", "test/pairwise_acc/transcerebellar"),
    ("overall", "test/pairwise_acc"),
    ("Spearman(pseudo)", "test/spearman_pseudo"),
    ("blur monotonic", "test/blur_monotonicity"),
    ("pseudo-label acc", "test/pseudo_label_pairwise_acc"),
)


#: Table 1's check marks: pseudo-label, distribution smoothing, L_c, L_r.
TABLE1_FLAGS: dict[str, tuple[bool, bool, bool, bool]] = {
    "Pseudo-label": (True, False, False, False),
    "+ smoothing": (True, True, False, False),
    "+ smoothing + L_c": (True, True, True, False),
    "+ smoothing + L_r": (True, True, False, True),
    "CRL-UIQA (all)": (True, True, True, True),
}
#: Table 2's columns, in the paper's order (the learning-based rows it has and this code does not are left out).
TABLE2_METHODS = ("BRISQUE", "NIQE", "MSSIM", "Regression (α=1)", "CRL-UIQA (all)")
PLANE_COLUMNS = COLUMNS[:5]


def _cell(metrics: Mapping[str, float], key: str) -> str:
    value = metrics.get(key)
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def paper_tables(results: Mapping[str, Mapping[str, float]]) -> str:
    """Table 1 (check marks × planes) and Table 2 (planes × methods) in the paper's layout, for the rows run."""
    out = []
    t1 = [name for name in TABLE1_FLAGS if name in results]
    if t1:
        heads = ["Pseudo-label", "Distribution Smoothing", "L_c", "L_r"] + [h for h, _ in PLANE_COLUMNS]
        out += ["Table 1", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for name in t1:
            marks = ["✓" if flag else "" for flag in TABLE1_FLAGS[name]]
            out.append("| " + " | ".join(marks + [_cell(results[name], k) for _, k in PLANE_COLUMNS]) + " |")
    t2 = [name for name in TABLE2_METHODS if name in results]
    if t2:
        out += ["", "Table 2", "", "| | " + " | ".join(t2) + " |", "|---|" + "---|" * len(t2)]
        for head, key in PLANE_COLUMNS:
            out.append(f"| {head} | " + " | ".join(_cell(results[name], key) for name in t2) + " |")
    return "\n".join(out)


def rows(demo: bool = False) -> list[Row]:
    """The table's rows; ``demo`` stacks the CPU demo overlay under each variant."""
    base = [MAIN] + ([str(OVERLAYS / "demo.yaml")] if demo else [])
    return [Row(name, [*base, str(OVERLAYS / f"{overlay}.yaml")]) for name, overlay in ROW_OVERLAYS]


def main(argv: Sequence[str] | None = None) -> str:
    parser = table_arguments("CRL-UIQA Table 1 (ablations) and Table 2 (baselines) on pairwise accuracy")
    parser.add_argument(
        "--demo", action="store_true", help="stack configs/crl_uiqa/demo.yaml (CPU, 64 px, bf16)"
    )
    args = parser.parse_args(argv)
    chosen = select_rows(rows(args.demo), args.rows)
    out = args.out or Path(tempfile.mkdtemp(prefix="crl_uiqa_table_"))
    table = run_table(chosen, COLUMNS, overrides_from(args), out, no_fit=UNTRAINED)
    layout = paper_tables(json.loads((out / "results.json").read_text()))
    (out / "paper_tables.md").write_text(layout + "\n")
    print("\n" + layout)
    return table


if __name__ == "__main__":
    main()
