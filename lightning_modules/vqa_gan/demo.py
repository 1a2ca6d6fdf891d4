"""`make demo`: VideoQualityGAN end to end on the demo synthetic dataset, in minutes on a CPU.

Runs, in this process, exactly these CLI commands (printed as they start):

``lightning fit --config configs/vqa.yaml --config configs/vqa/demo.yaml --test_after_fit=true``: train the
full model, then test its best checkpoint (threshold chosen on validation). Its ``zoom_checkpoint: auto``
first pretrains the zoom-in on ``boxes.csv`` (``configs/zoom.yaml`` + ``configs/zoom/demo.yaml``) unless an
earlier demo already did, and reuses it;

then prints the metrics table, the mean score per clip label (the paper's Fig. 3), and where the
checkpoints, figures and the offline W&B run are. The demo dataset is generated on first use by the
DataModules (``data/synthetic-demo``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_modules.common.contracts import Evaluation, group_names
from lightning_modules.common.runs import run_directory

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _run(args: list[str]) -> Any:
    from lightning_modules.cli import main

    print(f"\n$ lightning {' '.join(args)}", flush=True)
    cli = main(args)
    return cli


def metrics_table(metrics: dict[str, float]) -> str:
    """The paper's columns at the validation threshold and at the test split's own (oracle) threshold."""
    names = [("AUC", "auc"), ("F1", "f1"), ("ACC", "acc"), ("SEN", "sen"), ("SPE", "spe")]

    def cell(key: str) -> str:
        value = metrics.get(key, math.nan)
        return "-" if not math.isfinite(value) else f"{value:.3f}"

    lines = ["| threshold | " + " | ".join(h for h, _ in names) + " |", "|---|" + "---|" * len(names)]
    lines.append("| validation (max F1 on val) | " + " | ".join(cell(f"test/{k}") for _, k in names) + " |")
    lines.append(
        "| oracle (max F1 on test) | "
        + " | ".join(cell("test/auc" if k == "auc" else f"test/oracle_{k}") for _, k in names)
        + " |"
    )
    extra = ", ".join(f"{s}: {cell(f'test/auc_{s}')}" for s in ("feature", "l1", "ssim"))
    return "\n".join(lines) + f"\n\ntest AUC per score: {extra}"


def label_table(evaluation: Evaluation) -> str:
    """Mean ± std of the primary score per clip label (normal group marked)."""
    groups = group_names(evaluation)
    values = np.asarray(evaluation["scores"][evaluation["primary"]], dtype=float)
    target = np.asarray(evaluation["target"])
    lines = [f"| clip label | n | {evaluation['primary']} score (mean ± std) |", "|---|---|---|"]
    for group in sorted(set(groups), key=lambda g: (float(np.mean(target[[x == g for x in groups]])), g)):
        mask = np.array([x == group for x in groups])
        tag = " (normal)" if np.mean(target[mask]) < 0.5 else ""
        lines.append(
            f"| {group}{tag} | {mask.sum()} | {values[mask].mean():.4f} ± {values[mask].std():.4f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description="VideoQualityGAN demo: zoom-in pretraining, training, test.")
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, help="extra CLI args for the VQA fit after `--`"
    )
    args = parser.parse_args(argv)
    extra = list(args.overrides or [])
    extra = extra[1:] if extra[:1] == ["--"] else extra
    import wandb

    start = time.time()
    vqa = ["--config", str(CONFIGS / "vqa.yaml"), "--config", str(CONFIGS / "vqa" / "demo.yaml"), *extra]
    cli = _run(["fit", *vqa, "--test_after_fit=true"])
    run_dir = run_directory(cli.trainer)
    tested = json.loads((run_dir / "test_metrics.json").read_text())  # written by --test_after_fit
    metrics, ckpt = tested["metrics"], tested["checkpoint"]
    wandb_dir = Path(wandb.run.dir).parent if wandb.run is not None else None
    wandb.finish()
    manifests = cli.datamodule.load_manifests()
    test_scan = next((s for s in sorted(manifests.scans) if manifests.scan_split(s) == "test"), None)
    total = time.time() - start
    print(
        "\n=== VideoQualityGAN demo: test split (all clips of known quality; normal = transventricular, q=1)"
    )
    print(metrics_table(metrics))
    evaluation = cli.model.last_evaluation.get("test")
    if evaluation:
        print("\nscore per clip label (the paper's Fig. 3):")
        print(label_table(evaluation))
    print(f"\nbest checkpoint:  {ckpt}")
    print(f"last checkpoint:  {run_dir / 'checkpoints' / 'last.ckpt'}")
    print(f"figures:          {run_dir / 'figures'} (score distribution per label, ROC)")
    print(f"run config:       {run_dir / 'config.yaml'}")
    print(f"zoom-in:          {cli.model.zoom_checkpoint}")
    if wandb_dir is not None:
        print(f"W&B run (offline unless a key is set): {wandb_dir}  (upload: wandb sync {wandb_dir})")
    print(f"\ntime: fit + test (with the zoom-in pretraining on first use) {total:.0f} s")
    print(
        f"next: predict  lightning predict --ckpt_path {ckpt}"
        + f"\n      scan     python -m lightning_modules.vqa_gan.scan --checkpoint {ckpt} "
        f"--scans {test_scan} --precision 32-true"
    )
    return metrics


if __name__ == "__main__":
    main()
