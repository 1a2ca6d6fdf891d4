"""The paper's Tables 1-3 as runs: pretrain each DualRepSSL variant once, fine-tune, test, tabulate.

Every run is a stack of configs a user could type by hand:

* pretraining: ``configs/dualrep.yaml`` (+ ``configs/dualrep/demo.yaml`` with ``--demo``) + the variant's
  overlays (``clips_2s`` = "Large", ``clips_6s`` = "Medium", ``mmcl_only`` / ``mmsl_only`` / ``no_image``
  for the ablations); its ``last.ckpt`` is copied to ``<out>/pretrained/<variant>.ckpt``;
* fine-tuning: ``configs/finetune_plane.yaml`` or ``configs/finetune_saliency.yaml`` (+ its ``demo``
  overlay) + ``--model.init_args.pretrained=<that copy>``, or the ``random_init`` / ``weights_file``
  overlays for the baselines; fitted, then tested on the best checkpoint (``experiments.run_row``).

Table 1 (plane detection: macro precision / recall / F1), Table 2 (saliency: KLD / SIM / NSS / CC) and
Table 3 (ablations, plane detection). The "ImageNet Init." rows need a local supervised weights file
(``--weights-file``, see ``configs/finetune_plane/weights_file.yaml``) and are left out without one. In demo
mode the clip-length overlays are left out (the demo fixes 8 frames over 2 s), so "Large" and "Medium" are
one pretraining, reported as "Ours".

    python -m lightning_modules.dualrep_ssl.tables --demo --tables plane --rows "Rand. Init." Ours --out runs/dualrep-tables
    python -m lightning_modules.dualrep_ssl.tables --tables plane saliency ablation --weights-file weights/resnet18-imagenet.pth
    python -m lightning_modules.dualrep_ssl.tables --demo --pretrained-dir runs/dualrep-tables/pretrained  # reuse

Extra CLI arguments after ``--`` go to the fine-tuning runs; ``--pretrain-args`` to the pretraining runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callbacks.checkpoints import LastCheckpoint
from lightning_modules.common.experiments import Row, format_table, overrides_from, run_row, table_arguments

__all__ = [
    "COLUMNS",
    "PRETRAINING",
    "ROWS",
    "TableRow",
    "config_path",
    "latest_checkpoint",
    "main",
    "pretrain",
]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

PRETRAINING: dict[str, list[str]] = {
    "large": ["clips_2s"],
    "medium": ["clips_6s"],
    "mmcl": ["clips_6s", "mmcl_only"],
    "mmsl": ["clips_6s", "mmsl_only"],
    "no_image": ["clips_6s", "no_image"],
}

COLUMNS: dict[str, list[tuple[str, str]]] = {
    "plane": [("Precision", "test/precision"), ("Recall", "test/recall"), ("F1-score", "test/f1")],
    "saliency": [("KLD ↓", "test/kld"), ("SIM ↑", "test/sim"), ("NSS ↑", "test/nss"), ("CC ↑", "test/cc")],
    "ablation": [("Precision", "test/precision"), ("Recall", "test/recall"), ("F1-score", "test/f1")],
}
TITLES = {
    "plane": "Table 1: standard-plane detection",
    "saliency": "Table 2: saliency prediction",
    "ablation": "Table 3: ablations (standard-plane detection)",
}
TASK = {"plane": "finetune_plane", "saliency": "finetune_saliency", "ablation": "finetune_plane"}


@dataclass
class TableRow:
    """One row: its table, name, the fine-tuning overlays and the pretraining variant (None = baseline)."""

    table: str
    name: str
    overlays: list[str] = field(default_factory=list)
    pretraining: str | None = None


ROWS: list[TableRow] = [
    TableRow("plane", "ImageNet Init.", ["weights_file"]),
    TableRow("plane", "Rand. Init.", ["random_init"]),
    TableRow("plane", "Ours (Large)", [], "large"),
    TableRow("plane", "Ours (Medium)", [], "medium"),
    TableRow("saliency", "ImageNet", ["weights_file"]),
    TableRow("saliency", "Rand. Init.", ["random_init"]),
    TableRow("saliency", "Ours (Large)", [], "large"),
    TableRow("saliency", "Ours (Medium)", [], "medium"),
    TableRow("ablation", "MMSL", [], "mmsl"),
    TableRow("ablation", "MMCL", [], "mmcl"),
    TableRow("ablation", "W/o image", ["video"], "no_image"),
    TableRow("ablation", "Ours (Medium)", [], "medium"),
]


def config_path(*parts: str) -> str:
    return str(CONFIGS.joinpath(*parts[:-1], f"{parts[-1]}.yaml"))


def demo_rows(rows: Sequence[TableRow]) -> list[TableRow]:
    """Demo mode: one pretraining ("Ours") instead of Large and Medium, the ablations on top of it."""
    out: list[TableRow] = []
    for row in rows:
        if row.pretraining in ("large", "medium"):
            if any(r.table == row.table and r.name == "Ours" for r in out):
                continue
            row = TableRow(row.table, "Ours", row.overlays, "medium")
        out.append(row)
    return out


def latest_checkpoint(trainer: Any) -> str | None:
    """The run's ``last.ckpt`` (the last completed epoch, written by every run: callbacks.checkpoints)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, LastCheckpoint) and callback.last_model_path:
            return callback.last_model_path if Path(callback.last_model_path).is_file() else None
    return None


def pretrain(variant: str, demo: bool, args: Sequence[str], out: Path) -> Path:
    """Fit one pretraining variant and copy its last checkpoint to ``out/pretrained/<variant>.ckpt``."""
    from lightning_modules.cli import main as cli_main

    overlays = PRETRAINING[variant]
    if demo:  # the demo fixes the clip length: keep the ablation switches only
        overlays = [o for o in overlays if not o.startswith("clips_")]
    configs = [config_path("dualrep")] + ([config_path("dualrep", "demo")] if demo else [])
    configs += [config_path("dualrep", o) for o in overlays]
    print(f"\n=== pretraining {variant}: {' + '.join(configs)} {' '.join(args)}", flush=True)
    cli = cli_main(["fit", *[a for c in configs for a in ("--config", c)], *args])
    last = latest_checkpoint(cli.trainer)
    if last is None:
        raise RuntimeError(f"pretraining {variant} left no last.ckpt (fast_dev_run, or max_epochs=0?)")
    target = out / "pretrained" / f"{variant}.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(last, target)
    return target


def finetune_row(
    row: TableRow, demo: bool, checkpoint: Path | None, weights_file: str | None, args: Sequence[str]
) -> Row:
    """The fine-tuning run of ``row`` as a config stack for ``experiments.run_row``."""
    task = TASK[row.table]
    configs = [config_path(task)] + ([config_path(task, "demo")] if demo else [])
    configs += [config_path(task, o) for o in row.overlays]
    extra = list(args)
    if checkpoint is not None:
        extra.append(f"--model.init_args.pretrained={checkpoint}")
    if "weights_file" in row.overlays:
        extra.append(f"--model.init_args.weights_file={weights_file}")
    return Row(row.name, configs, extra, group=row.table)


def main(argv: Sequence[str] | None = None) -> str:
    parser = table_arguments("DualRepSSL: the paper's Tables 1-3 (pretrain, fine-tune, test).")
    parser.add_argument("--tables", nargs="+", choices=tuple(COLUMNS), default=["plane"])
    parser.add_argument("--demo", action="store_true", help="stack the demo overlays (small CPU sizes)")
    parser.add_argument("--weights-file", default=None, help="supervised weights for the ImageNet rows")
    parser.add_argument(
        "--pretrained-dir", type=Path, default=None, help="reuse <dir>/<variant>.ckpt instead of pretraining"
    )
    parser.add_argument(
        "--pretrain-args", nargs="*", default=[], help="extra CLI arguments for the pretraining runs"
    )
    args = parser.parse_args(argv)
    out = args.out or Path("runs/dualrep-tables")
    finetune_args = overrides_from(args)

    rows = [r for r in ROWS if r.table in args.tables]
    if args.demo:
        rows = demo_rows(rows)
    if args.rows:
        known = {r.name for r in rows}
        unknown = [n for n in args.rows if n not in known]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; choose from {sorted(known)}")
        rows = [r for r in rows if r.name in args.rows]
    if not args.weights_file:
        skipped = [f"{r.table}/{r.name}" for r in rows if "weights_file" in r.overlays]
        if skipped:
            print(f"no --weights-file: leaving out {skipped}", flush=True)
        rows = [r for r in rows if "weights_file" not in r.overlays]

    checkpoints: dict[str, Path] = {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        checkpoint = None
        if row.pretraining is not None:
            if row.pretraining not in checkpoints:
                reuse = args.pretrained_dir / f"{row.pretraining}.ckpt" if args.pretrained_dir else None
                checkpoints[row.pretraining] = (
                    reuse
                    if reuse is not None and reuse.is_file()
                    else pretrain(row.pretraining, args.demo, args.pretrain_args, out)
                )
            checkpoint = checkpoints[row.pretraining]
        run = finetune_row(row, args.demo, checkpoint, args.weights_file, finetune_args)
        print(f"\n=== {row.table} / {row.name}: {' + '.join(run.configs)} {' '.join(run.args)}", flush=True)
        results.setdefault(row.table, {})[row.name] = run_row(run, [])
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))

    text = "\n\n".join(
        f"**{TITLES[table]}**\n\n{format_table(results[table], COLUMNS[table])}"
        for table in args.tables
        if table in results
    )
    (out / "table.md").write_text(text + "\n")
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
