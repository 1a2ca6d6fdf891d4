"""VideoQualityGAN through the `lightning` CLI on the tiny dataset: the zoom config, the main config (fit,
validate, test, predict, scan), every variant/baseline overlay, DDP with 2 CPU processes and bf16-mixed."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import torch
from cli_args import run_study, tiny_data

from callbacks.predictions import CSVPredictionWriter
from lightning_modules.cli import main as _cli_main


def cli_main(args: list[str]):
    """One `lightning` run in this process; its W&B run is closed after it, as a fresh process would (the
    WandbLogger of the next run would otherwise join the still-open one and share its run folder)."""
    import wandb

    cli = _cli_main([str(a) for a in args])
    wandb.finish()
    return cli


OVERLAYS = [
    "video_only",
    "with_flow",
    "with_gaze",
    "all_modalities",
    "no_zoom",
    "gaze_w0",
    "gaze_w0.1",
    "gaze_w0.5",
    "gaze_w1",
    "image_baseline",
    "stae_baseline",
]


def vqa_args(configs_dir: Path, root: Path, zoom: Path, *overlays: str) -> list[str]:
    configs = [configs_dir / "vqa.yaml", configs_dir / "vqa" / "demo.yaml"]
    configs += [configs_dir / "vqa" / f"{name}.yaml" for name in overlays]
    return [
        *[a for c in configs for a in ("--config", str(c))],
        *tiny_data(root, batch_size=8),
        "--data.init_args.num_frames=4",
        "--model.init_args.num_frames=4",
        f"--model.init_args.zoom_checkpoint={zoom}",
        "--trainer.check_val_every_n_epoch=1",  # the demo validates every other epoch; these runs have one
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    """One working folder for the module's in-process runs (their runs/ folder lands there)."""
    path = tmp_path_factory.mktemp("vqa")
    previous = Path.cwd()
    os.chdir(path)
    yield path
    os.chdir(previous)


@pytest.fixture(scope="module")
def zoom_checkpoint(workdir: Path, tiny_dataset: Path, configs_dir: Path) -> Path:
    """`lightning fit --config configs/zoom.yaml --config configs/zoom/demo.yaml` on the tiny data."""
    cli = cli_main(
        [
            "fit",
            "--config",
            str(configs_dir / "zoom.yaml"),
            "--config",
            str(configs_dir / "zoom" / "demo.yaml"),
            *tiny_data(tiny_dataset, batch_size=8),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
        ]
    )
    assert 0.0 <= float(cli.trainer.callback_metrics["val/iou"]) <= 1.0
    path = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert path.is_file() and path.parent.parent.parent == workdir / "runs" / "sonolab-zoom"
    return path


@pytest.fixture(scope="module")
def trained(workdir: Path, tiny_dataset: Path, configs_dir: Path, zoom_checkpoint: Path) -> dict:
    """The main config (all modalities, zoom) fitted for one step with bf16-mixed, checkpoint kept."""
    args = vqa_args(configs_dir, tiny_dataset, zoom_checkpoint)
    cli = cli_main(
        [
            "fit",
            *args,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.precision=bf16-mixed",
        ]
    )
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert ckpt.is_file()
    return {"args": args, "ckpt": ckpt, "run_dir": ckpt.parent.parent, "model": cli.model}


def test_main_config_fit_writes_checkpoint_figures_and_threshold(trained):
    state = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["_class_path"].endswith("VideoQualityGAN")
    assert bool(state["state_dict"]["zoom_ready"])
    assert torch.isfinite(state["state_dict"]["threshold"])
    for name in ("val_score_distribution.png", "val_roc.png"):
        assert (trained["run_dir"] / "figures" / name).is_file()
    assert (trained["run_dir"] / "config.yaml").is_file()


def test_main_config_validate_test_predict_from_checkpoint(trained, tiny_dataset, tmp_path):
    args, ckpt = trained["args"], str(trained["ckpt"])
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    threshold = float(state["state_dict"]["threshold"])
    primary = state["hyper_parameters"]["score"]
    # the zoom file is not needed once the model checkpoint holds the zoom weights
    no_zoom_file = [*args, f"--model.init_args.zoom_checkpoint={tmp_path / 'gone.ckpt'}"]
    cli_main(["validate", *no_zoom_file, "--ckpt_path", ckpt])
    cli = cli_main(["test", *no_zoom_file, "--ckpt_path", ckpt])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/threshold"]) == pytest.approx(threshold)  # carried from validation
    for key in ("test/auc", "test/f1", "test/oracle_f1", "test/auc_l1", "test/auc_ssim"):
        assert key in metrics
    rows = prediction_rows(cli_main(["predict", *args, "--ckpt_path", ckpt]).trainer)
    assert len(rows) == 6  # every tiny val clip of known quality
    assert set(rows[0]) >= {
        "clip_id",
        "label",
        "quality",
        "target",
        "score_feature",
        "score_l1",
        "score_ssim",
        "decision",
    }
    for row in rows:
        low = float(row[f"score_{primary}"]) >= float(row["threshold"])
        assert row["decision"] == ("low" if low else "high")
        assert row["target"] == (
            "high" if row["label"] == "transventricular" and row["quality"] == "1" else "low"
        )


def prediction_rows(trainer) -> list[dict[str, str]]:
    """The rows the config's CSVPredictionWriter wrote."""
    writer = next(c for c in trainer.callbacks if isinstance(c, CSVPredictionWriter))
    return list(csv.DictReader(writer.path.open()))


def test_scan_scores_sliding_windows(trained, tiny_dataset, tmp_path):
    from lightning_modules.vqa_gan.scan import main as scan_main

    out = tmp_path / "scan"
    result = scan_main(
        ["--checkpoint", str(trained["ckpt"]), "--scans", "scan_000", "--stride", "64", "--out", str(out)]
    )
    rows = list(csv.DictReader((out / "scan_scores.csv").open()))
    ends = [int(r["end_frame"]) for r in rows]
    # 4 frames at interval 8 need 25 frames: windows end at frames 24, 88, 152, ...
    assert ends[:3] == [24, 88, 152] and all(r["scan_id"] == "scan_000" for r in rows)
    assert int(rows[0]["start_frame"]) == 0
    assert {r["decision"] for r in rows} <= {"high", "low"}
    assert (out / "scan_000.png").is_file() and (out / "segments.csv").is_file()
    assert len(result["rows"]) == len(rows)


def test_predict_on_windows_source(trained):
    cli = cli_main(
        [
            "predict",
            *trained["args"],
            "--ckpt_path",
            str(trained["ckpt"]),
            "--data.init_args.source=windows",
            "--data.init_args.window_stride=200",
        ]
    )
    rows = prediction_rows(cli.trainer)
    assert rows and all("@" in r["clip_id"] and r["target"] == "" for r in rows)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_fit_validate_test_predict(
    overlay, workdir, tiny_dataset, configs_dir, zoom_checkpoint, tmp_path
):
    args = vqa_args(configs_dir, tiny_dataset, zoom_checkpoint, overlay)
    cli = cli_main(["fit", *args, "--trainer.fast_dev_run=1", f"--trainer.default_root_dir={tmp_path}"])
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    assert "train/loss" in trainer.callback_metrics or "train/g_loss" in trainer.callback_metrics
    trainer.validate(model, datamodule=data)
    trainer.test(model, datamodule=data)
    assert "test/auc" in trainer.callback_metrics
    trainer.predict(model, datamodule=data)
    assert len(prediction_rows(trainer)) == 6
    expected = {
        "image_baseline": "ImageQualityGAN",
        "stae_baseline": "STAEBaseline",
    }.get(overlay, "VideoQualityGAN")
    assert type(model).__name__ == expected
    if overlay == "no_zoom":
        assert model.zoom is None
    if overlay in ("video_only", "with_gaze"):
        assert model.encoder.flow_channels == 0
    if overlay in ("with_gaze", "all_modalities", "gaze_w0.5"):
        assert model.gaze_decoder is not None


def test_missing_zoom_checkpoint_says_how_to_make_one(workdir, tiny_dataset, configs_dir, tmp_path):
    args = vqa_args(configs_dir, tiny_dataset, tmp_path / "none.ckpt")
    with pytest.raises(FileNotFoundError, match=re.escape("lightning fit --config configs/zoom.yaml")):
        cli_main(["fit", *args, "--trainer.fast_dev_run=1"])


def test_num_frames_mismatch_is_reported(workdir, tiny_dataset, configs_dir, zoom_checkpoint):
    args = [*vqa_args(configs_dir, tiny_dataset, zoom_checkpoint), "--model.init_args.num_frames=8"]
    with pytest.raises(ValueError, match=re.escape("data.init_args.num_frames=4")):
        cli_main(["fit", *args, "--trainer.fast_dev_run=1"])


@pytest.mark.slow
def test_learnability_on_the_demo_dataset(tmp_path, monkeypatch):
    """The issue's figures, through the study mechanism a user runs (the Table 1 sweep, cut to two rows, run
    locally on the demo data with the demo overlay): the full model separates high- from low-quality clips
    with test AUC >= 0.85 and all modalities is not worse than video only. Zoom-in pretraining + two
    trainings (it printed 0.879 and 0.859 on 2026-11-22 with the bf16 runner)."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the sweep file's config paths are relative to the checkout
    monkeypatch.setenv("WANDB_MODE", "offline")
    results = run_study(
        repo / "configs" / "sweeps" / "vqa_table1.yaml",
        {"config": ["configs/vqa/video_only.yaml", "configs/vqa/all_modalities.yaml"]},
        ["--config", "configs/vqa/demo.yaml", "--trainer.precision=32-true"],
        tmp_path / "runs",
    )
    full = results["All modalities"]["test/auc"]
    video = results["Video only"]["test/auc"]
    print(f"test AUC: all modalities {full:.3f}, video only {video:.3f}")
    assert full >= 0.85
    assert full >= video - 0.02  # "not worse": equal up to the run-to-run spread of one seed


@pytest.mark.ddp
def test_ddp_two_cpu_processes(run_cli_subprocess, tiny_dataset, configs_dir, zoom_checkpoint):
    args = vqa_args(configs_dir, tiny_dataset, zoom_checkpoint)
    proc = run_cli_subprocess(
        [
            "fit",
            *args,
            "--trainer.fast_dev_run=1",
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
        ]
    )
    assert "runs as ddp_find_unused_parameters_true" in proc.stdout + proc.stderr
