"""CRL-UIQA through the `lightning` CLI: every config and overlay on the tiny dataset, DDP, bf16, the plane
classifier -> pseudo-label -> scorer -> ranking chain, and (slow) learnability on the demo through its studies."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from cli_args import last_checkpoint, run_study, tiny_data

from lightning_modules.crl_uiqa.ranking import main as ranking_main

TABLE1 = ["pseudo_label_only", "smoothing", "smoothing_lc", "smoothing_lr", "all", "regression"]
BASELINES = ["niqe", "brisque", "mssim"]
TINY_TEST_IMAGES = 12  # 4 planes × 3 test images in the tiny preset


def crl_fast() -> list[str]:
    """The tiny preset has 4 standard images per plane, so k must be <= 4."""
    return ["--data.init_args.pseudo_labels.k=2", "--model.init_args.proj_dim=16"]


def configs(configs_dir: Path, overlay: str | None) -> list[str]:
    out = ["--config", str(configs_dir / "crl_uiqa.yaml")]
    if overlay:
        out += ["--config", str(configs_dir / "crl_uiqa" / f"{overlay}.yaml")]
    return out


def read_predictions(cwd: Path) -> list[dict[str, str]]:
    found = sorted(cwd.rglob("predictions.csv"))
    assert len(found) == 1, f"expected one predictions.csv under {cwd}, found {found}"
    with found[0].open(newline="") as f:
        return list(csv.DictReader(f))


def fit_test_predict(run_cli, args: list[str], cwd: Path) -> dict[str, float]:
    """fit, test and predict with fast_dev_run; returns the test metrics and checks the prediction CSV."""
    run_cli(["fit", *args, "--trainer.fast_dev_run=1"])
    cli = run_cli(["test", *args, "--trainer.fast_dev_run=1"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    run_cli(["predict", *args, "--trainer.fast_dev_run=1"])
    rows = read_predictions(cwd)
    assert rows and set(rows[0]) == {"image", "plane", "score"}
    assert all(r["image"].startswith("images/") for r in rows)
    assert all(math.isfinite(float(r["score"])) or r["score"] == "-inf" for r in rows)
    return metrics


def test_main_config_fit_validate_test_predict(run_cli, configs_dir, tiny_dataset, tmp_path) -> None:
    args = [*configs(configs_dir, None), *tiny_data(tiny_dataset), *crl_fast()]
    run_cli(["fit", *args, "--trainer.fast_dev_run=1"])
    cli = run_cli(["validate", *args, "--trainer.fast_dev_run=1"])
    assert {"val/pairwise_acc", "val/blur_monotonicity", "val/spearman_pseudo"} <= set(
        cli.trainer.callback_metrics
    )
    # a full (tiny) test pass: every test pair is counted, per plane too
    cli = run_cli(["test", *args])
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("test/pairwise_acc", "test/pseudo_label_pairwise_acc", "test/blur_monotonicity"):
        assert 0.0 <= m[key] <= 1.0, key
    planes = {"abdomen", "four_chamber", "transcerebellar", "transventricular"}
    assert {k.rsplit("/", 1)[1] for k in m if k.startswith("test/pairwise_acc/")} == planes
    assert -1.0 <= m["test/spearman_pseudo"] <= 1.0
    assert len(list(tmp_path.rglob("figures/test_views.png"))) == 1  # the Fig. 2 panel callback
    run_cli(["predict", *args])
    rows = read_predictions(tmp_path)
    assert len(rows) == TINY_TEST_IMAGES and set(rows[0]) == {"image", "plane", "score"}
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


@pytest.mark.parametrize("overlay", TABLE1)
def test_table1_variant(overlay, run_cli, configs_dir, tiny_dataset, tmp_path) -> None:
    metrics = fit_test_predict(
        run_cli, [*configs(configs_dir, overlay), *tiny_data(tiny_dataset), *crl_fast()], tmp_path
    )
    assert "test/pairwise_acc" in metrics and "test/pseudo_label_pairwise_acc" in metrics


@pytest.mark.parametrize("overlay", BASELINES)
def test_classical_baseline(overlay, run_cli, configs_dir, tiny_dataset, tmp_path) -> None:
    args = [*configs(configs_dir, overlay), *tiny_data(tiny_dataset)]
    metrics = fit_test_predict(run_cli, args, tmp_path)
    assert 0.0 <= metrics["test/pairwise_acc"] <= 1.0


def test_demo_overlay_bf16(run_cli, configs_dir, tiny_dataset, tmp_path) -> None:
    """The demo overlay trains under bf16-mixed autocast (what it is run with on AVX-512-BF16/AMX CPUs; its
    own default is fp32); scores stay float32 in [0, 1]."""
    args = [
        *configs(configs_dir, "demo"),
        *tiny_data(tiny_dataset),
        *crl_fast(),
        "--trainer.precision=bf16-mixed",
    ]
    cli = run_cli(["fit", *args, "--trainer.fast_dev_run=1"])
    assert cli.trainer.precision == "bf16-mixed"
    run_cli(["predict", *args, "--trainer.fast_dev_run=1"])
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in read_predictions(tmp_path))


@pytest.mark.ddp
def test_ddp_two_cpu_processes(run_cli_subprocess, configs_dir, tiny_dataset, tmp_path) -> None:
    """Rank 0 builds the pseudo-labels (prepare_data), every rank reads them; the checkpoint records them."""
    args = [*configs(configs_dir, None), *tiny_data(tiny_dataset), *crl_fast()]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    run_cli_subprocess(
        [
            "fit",
            *args,
            *ddp,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
        ]
    )
    (ckpt,) = tmp_path.rglob("last.ckpt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2  # limit_train_batches on each rank; the ranks step together
    record = saved["ImageDataModule"]["pseudo_labels"]  # the DataModule state: which labels trained it
    assert Path(record["file"]).is_file() and record["params"]["spec"]["k"] == 2


def test_classifier_embedding_scorer_and_ranking(run_cli, configs_dir, tiny_dataset, tmp_path) -> None:
    """Plane classifier -> its checkpoint as the pseudo-label embedding and scorer init -> rank images."""
    clf_args = [
        "--config",
        str(configs_dir / "plane_classifier.yaml"),
        *tiny_data(tiny_dataset),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
    ]
    cli = run_cli(["fit", *clf_args])
    clf_ckpt = Path(last_checkpoint(cli.trainer))
    assert clf_ckpt.is_file() and 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0
    cli = run_cli(["test", *clf_args, f"--ckpt_path={clf_ckpt}"])
    assert "test/acc" in cli.trainer.callback_metrics
    run_cli(["predict", *clf_args, f"--ckpt_path={clf_ckpt}"])
    assert {"predicted_plane", "probability"} <= set(read_predictions(tmp_path)[0])

    crl_args = [
        *configs(configs_dir, None),
        *tiny_data(tiny_dataset),
        *crl_fast(),
        f"--data.init_args.pseudo_labels.embedding={clf_ckpt}",  # the scorer starts from it too
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
    ]
    cli = run_cli(["fit", *crl_args])
    assert cli.datamodule.pseudo.params["spec"]["embedding"] == str(clf_ckpt)
    crl_ckpt = Path(last_checkpoint(cli.trainer))
    images = sorted((tiny_dataset / "images" / "abdomen").glob("*.png"))[:4]
    ranking = ranking_main(["--checkpoint", str(crl_ckpt), "--images", *map(str, images), "--device", "cpu"])
    assert sorted(ranking.order) == [0, 1, 2, 3] and ranking.best_name in map(str, images)


# --------------------------------------------------------------------------------------------- learnability


@pytest.mark.slow
def test_learnability_on_demo(tmp_path, monkeypatch) -> None:
    """The CPU demo recipe (README), through the studies a user runs (the Table 1 sweep cut to two rows and
    the classical-baselines sweep, locally, with the demo overlay): the full model is >= 0.85, beats the
    classical baselines and the pseudo-label-only variant. The demo saturates: the full model reaches 1.000
    and pseudo-label-only can tie it there (1 of 3 training seeds measured), so a tie at 1.000 is the one
    non-win accepted; the co-learning still shows in the blur monotonicity.
    """
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the sweep files' config paths are relative to the checkout
    monkeypatch.setenv("WANDB_MODE", "offline")
    extra = ["--config", "configs/crl_uiqa/demo.yaml", "--trainer.precision=32-true"]
    sweeps = repo / "configs" / "sweeps"
    results = run_study(
        sweeps / "crl_table1.yaml",
        {"config": ["configs/crl_uiqa/all.yaml", "configs/crl_uiqa/pseudo_label_only.yaml"]},
        extra,
        tmp_path / "runs",
    )
    results.update(run_study(sweeps / "crl_baselines.yaml", {}, extra, tmp_path / "runs"))
    acc = {name: metrics["test/pairwise_acc"] for name, metrics in results.items()}
    print(acc)
    full, pseudo_only = acc["All (ours)"], acc["Pseudo-label only"]
    assert full >= 0.85
    for baseline in ("BRISQUE", "NIQE", "MS-SSIM"):
        assert full > acc[baseline], baseline
    assert full > pseudo_only or full == pseudo_only == 1.0
    mono = {name: results[name]["test/blur_monotonicity"] for name in ("All (ours)", "Pseudo-label only")}
    assert mono["All (ours)"] > mono["Pseudo-label only"]
