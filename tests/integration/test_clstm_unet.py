"""CLSTMUNet through the `lightning` CLI: fit/validate/test/predict, every overlay, DDP, bf16, streaming from a
trained checkpoint; and (slow) learnability on the demo dataset through its study."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from cli_args import SHORT_CLSTM_LAYOUT, TINY_CLSTM, last_checkpoint, run_study, tiny_data

OVERLAYS = [
    "spatial_only",
    *(f"seq{n}" for n in range(4, 11)),
    "before",
    "after",
    "both",
    "ra_3_9",
    "ra_mixed",
    "no_aug",
    "demo",
]


def test_fit_validate_test_predict_main_config(run_cli, tiny_dataset, configs_dir, tmp_path):
    base = [
        "--config",
        configs_dir / "clstm_unet.yaml",
        *tiny_data(tiny_dataset),
        *TINY_CLSTM,
        *SHORT_CLSTM_LAYOUT,
    ]
    cli = run_cli(["fit", *base, "--trainer.fast_dev_run=1"])
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert "val/kld" in cli.trainer.callback_metrics

    cli = run_cli(["validate", *base, "--trainer.fast_dev_run=1"])
    assert {"val/kld", "val/sim", "val/cc", "val/nss", "val/centre_bias/kld"} <= set(
        cli.trainer.callback_metrics
    )

    cli = run_cli(["test", *base, "--trainer.fast_dev_run=1"])
    metrics = cli.trainer.callback_metrics
    for name in ("kld", "sim", "cc", "nss"):
        assert math.isfinite(float(metrics[f"test/{name}"]))
        assert math.isfinite(float(metrics[f"test/centre_bias/{name}"]))

    run_cli(["predict", *base, "--trainer.fast_dev_run=1"])
    (out,) = tmp_path.glob("**/predictions.csv")  # CSVPredictionWriter of the config, in the run folder
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4  # one batch of 4 test sequences
    assert {"clip_id", "pred_x", "pred_y", "kld", "sim", "cc", "nss"} <= set(rows[0])
    assert all("@" in r["clip_id"] and 0 <= float(r["pred_x"]) <= 1 for r in rows)


def test_a_run_cut_short_or_without_validation_ends_cleanly(run_cli, tiny_dataset, configs_dir):
    """The config's early stopping on val/kld is checked after each validation: a fit stopped by
    `--trainer.max_steps` inside the first epoch, or one with `--trainer.limit_val_batches=0`, ends normally
    (no "val/kld not available"), and with validation the check still runs each time."""
    base = ["--config", configs_dir / "clstm_unet.yaml", *tiny_data(tiny_dataset), *TINY_CLSTM]
    cli = run_cli(["fit", *base, "--trainer.max_steps=2"])
    assert cli.trainer.global_step == 2 and "val/kld" not in cli.trainer.callback_metrics
    no_val = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0"]
    cli = run_cli(["fit", *base, *no_val])
    assert cli.trainer.global_step == 4
    cli = run_cli(["fit", *base, "--trainer.max_epochs=2", "--trainer.limit_train_batches=1"])
    stopper = cli.trainer.early_stopping_callback
    assert stopper.monitor == "val/kld" and stopper.patience == 10
    assert math.isfinite(float(stopper.best_score)), "the check ran on the validation's val/kld"
    assert float(stopper.best_score) <= float(cli.trainer.callback_metrics["val/kld"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fit_every_overlay(run_cli, tiny_dataset, configs_dir, overlay):
    cli = run_cli(
        [
            "fit",
            "--config",
            configs_dir / "clstm_unet.yaml",
            "--config",
            configs_dir / "clstm_unet" / f"{overlay}.yaml",
            *tiny_data(tiny_dataset),
            *TINY_CLSTM,
            "--trainer.fast_dev_run=1",
            "--trainer.precision=32-true",
        ]
    )
    model, data = cli.model, cli.datamodule
    assert (model.hparams.num_before, model.hparams.num_after) == (data.num_before, data.num_after)
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    if overlay.startswith("seq"):
        assert model.net.num_before == int(overlay[3:]) and model.net.use_temporal
    if overlay == "spatial_only":
        assert not model.net.use_temporal and data.sequence_length == 1
    if overlay == "ra_mixed":
        assert model.augmenter.mixed and (model.augmenter.n, model.augmenter.m) == (3, 7.0)
    if overlay == "no_aug":
        assert model.augmenter is None


def test_bf16_mixed(run_cli, tiny_dataset, configs_dir):
    cli = run_cli(
        [
            "fit",
            "--config",
            configs_dir / "clstm_unet.yaml",
            *tiny_data(tiny_dataset),
            *TINY_CLSTM,
            *SHORT_CLSTM_LAYOUT,
            "--trainer.fast_dev_run=2",
            "--trainer.precision=bf16-mixed",
        ]
    )
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    assert math.isfinite(float(cli.trainer.callback_metrics["val/kld"]))


@pytest.mark.ddp
def test_ddp_two_cpu_processes(run_cli_subprocess, tiny_dataset, configs_dir):
    proc = run_cli_subprocess(
        [
            "fit",
            "--config",
            configs_dir / "clstm_unet.yaml",
            *tiny_data(tiny_dataset),
            *TINY_CLSTM,
            *SHORT_CLSTM_LAYOUT,
            "--trainer.fast_dev_run=2",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
        ]
    )
    assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr


def test_stream_a_video_with_a_trained_checkpoint(run_cli, tiny_dataset, configs_dir, tmp_path):
    """fit a few steps, then stream a dataset video: the streamed maps equal the full model on each
    frame's window (the command's --verify), for the paper's before placement."""
    from lightning_modules.clstm_unet.stream import main as stream_main

    cli = run_cli(
        [
            "fit",
            "--config",
            configs_dir / "clstm_unet.yaml",
            *tiny_data(tiny_dataset),
            *TINY_CLSTM,
            *SHORT_CLSTM_LAYOUT,
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    ckpt = Path(last_checkpoint(cli.trainer))
    if not ckpt.is_file():  # no ModelCheckpoint configured: save one
        ckpt = tmp_path / "model.ckpt"
        cli.trainer.save_checkpoint(ckpt)
    video = next((tiny_dataset / "videos").iterdir())
    report = stream_main(
        [
            "--checkpoint",
            str(ckpt),
            "--video",
            str(video),
            "--out",
            str(tmp_path / "stream"),
            "--max-frames",
            "12",
            "--verify",
            "12",
        ]
    )
    assert report.frames == 12 and report.latency_frames == 0 and report.buffer_frames == 3
    assert report.max_abs_diff < 1e-5 and report.model_fps > 0
    saved = json.loads((tmp_path / "stream" / "stream.json").read_text())
    assert saved["image_size"] == [32, 32]


# ---------------------------------------------------------------------------------------------------------
# learnability (slow): the demo dataset at 64×64
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_learnability_on_the_demo_dataset(tmp_path, monkeypatch):
    """Spatial-only U-Net and cLSTMU-Net (6 frames before) with the demo overlay's schedule (same for both),
    through the sequence-length study a user runs (the sweep cut to two rows, locally): both beat the
    centre-bias Gaussian on KLD, SIM, NSS and CC on the test split, and the ConvLSTM model is not worse than
    the spatial-only one (within 2 % of the spatial-only figure, the run-to-run noise of these short runs)."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the sweep file's config paths are relative to the checkout
    monkeypatch.setenv("WANDB_MODE", "offline")
    results = run_study(
        repo / "configs" / "sweeps" / "clstm_sequence.yaml",
        {"config": ["configs/clstm_unet/spatial_only.yaml", "configs/clstm_unet/seq6.yaml"]},
        ["--config", "configs/clstm_unet/demo.yaml", "--trainer.precision=32-true"],
        tmp_path / "runs",
    )
    print(results)
    spatial, temporal = results["U-Net RA(7,9)"], results["seq6"]
    for run in (spatial, temporal):
        assert run["test/kld"] < run["test/centre_bias/kld"]
        for name in ("sim", "nss", "cc"):
            assert run[f"test/{name}"] > run[f"test/centre_bias/{name}"]
    assert temporal["test/kld"] <= spatial["test/kld"] * (1 + NOT_WORSE)
    for name in ("sim", "nss", "cc"):
        assert temporal[f"test/{name}"] >= spatial[f"test/{name}"] * (1 - NOT_WORSE)


NOT_WORSE = 0.02  # relative tolerance of "not worse"
