"""DualRepSSL through the `lightning` CLI: pretrain -> fine-tune chains (plane detection and saliency)
loading the checkpoint just produced, validate/test/predict, every overlay, DDP, bf16; and (slow)
learnability on the demo dataset."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_args import last_checkpoint, run_study, tiny_data


def _tiny_pretrain(root: Path) -> list[str]:
    """Pretraining windows: 4 frames over ~0.5 s with 1 s of speech, one window every 4 s."""
    return [
        *tiny_data(root),
        "--data.init_args.num_frames=4",
        "--data.init_args.frame_interval=4",
        "--data.init_args.audio_seconds=1.0",
        "--data.init_args.window_stride=120",
    ]


def _tiny_clips(root: Path) -> list[str]:
    """Labelled clips: 4 frames at a 4-frame interval."""
    return [*tiny_data(root), "--data.init_args.num_frames=4", "--data.init_args.frame_interval=4"]


LAYER3_CONV2 = "net.image_encoder.backbone.layer3.0.conv2.weight"


def _finite(metrics, *names: str) -> None:
    for name in names:
        assert name in metrics, f"{name} not logged; logged: {sorted(metrics)}"
        assert math.isfinite(float(metrics[name])), name


def test_pretrain_then_finetune_both_tasks(run_cli, tiny_dataset, configs_dir, tmp_path):
    """The user's chain: pretrain (writes runs/sonolab-dualrep/<run>/checkpoints/last.ckpt), then both
    fine-tuning configs, whose default `pretrained: last:sonolab-dualrep` is that file; the encoders they
    build hold its weights."""
    # CNN14 frozen (80 of the 126 M parameters without gradients or Adam state: 1 GB less at the peak);
    # the chain of checkpoints is under test here, audio training in tests/dualrep_ssl and the overlays
    frozen_audio = "--model.init_args.freeze_audio=true"
    pre = ["--config", configs_dir / "dualrep.yaml", *_tiny_pretrain(tiny_dataset), frozen_audio]
    cli = run_cli(
        [
            "fit",
            *pre,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
        ]
    )
    _finite(
        cli.trainer.callback_metrics, "train/loss", "val/loss", "val/va_R@1", "val/vi_R@5", "val/batch_va_R@1"
    )
    del cli  # each run's model and optimiser are freed before the next run builds its own (test memory)
    (ckpt,) = tmp_path.glob("runs/sonolab-dualrep/*/checkpoints/last.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    saved = {k: state[k] for k in ("net.image_encoder.backbone.conv1.weight", LAYER3_CONV2)}
    del state

    # validate / test / predict of the pretraining config
    metrics = run_cli(["validate", *pre, "--trainer.fast_dev_run=1"]).trainer.callback_metrics
    _finite(metrics, "val/loss", "val/vi_R@1")
    metrics = run_cli(["test", *pre, "--trainer.fast_dev_run=1"]).trainer.callback_metrics
    _finite(metrics, "test/loss", "test/mmcl", "test/mmsl", "test/va_R@5")
    run_cli(["predict", *pre, "--trainer.fast_dev_run=1", f"--ckpt_path={ckpt}"])
    (emb_path,) = tmp_path.glob("**/embeddings.npz")
    with np.load(emb_path) as emb:
        assert emb["clip_id"].shape == (4,) and all("@" in c for c in emb["clip_id"])
        assert (
            emb["h_a"].shape == (4, 2048) and emb["F_v"].shape == (4, 512) and emb["mu_i"].shape == (4, 512)
        )

    # fine-tune: plane detection (default pretrained = the last.ckpt of the newest sonolab-dualrep run)
    plane = ["--config", configs_dir / "finetune_plane.yaml", *_tiny_clips(tiny_dataset)]
    cli = run_cli(["fit", *plane, "--trainer.fast_dev_run=1"])
    assert cli.model.initialisation == "ssl"
    assert cli.model.classes == [
        "abdomen",
        "background",
        "four_chamber",
        "transcerebellar",
        "transventricular",
    ]
    _finite(cli.trainer.callback_metrics, "train/loss", "val/f1", "val/precision", "val/recall")
    assert "val/f1/four_chamber" in cli.trainer.callback_metrics
    # Adam's first step moves each weight by at most lr (1e-4): far less than random init differs by
    torch.testing.assert_close(
        cli.model.encoder.backbone.conv1.weight,
        saved["net.image_encoder.backbone.conv1.weight"],
        atol=2e-4,
        rtol=0,
    )
    del cli

    # fine-tune: saliency, pretrained path given explicitly
    sal = [
        "--config",
        configs_dir / "finetune_saliency.yaml",
        *tiny_data(tiny_dataset),
        "--data.init_args.target_stride=16",
    ]
    cli = run_cli(["fit", *sal, f"--model.init_args.pretrained={ckpt}", "--trainer.fast_dev_run=1"])
    assert cli.model.initialisation == "ssl"
    _finite(cli.trainer.callback_metrics, "train/loss", "val/kld", "val/sim", "val/cc", "val/nss")
    torch.testing.assert_close(
        cli.model.encoder.backbone.layer3[0].conv2.weight,
        saved[LAYER3_CONV2],
        atol=2e-4,
        rtol=0,
    )


def test_finetune_test_and_predict_from_a_finetuned_checkpoint(run_cli, tiny_dataset, configs_dir, tmp_path):
    """random init (no pretraining needed): fit 1 epoch, then test and predict from its checkpoint."""
    plane = [
        "--config",
        configs_dir / "finetune_plane.yaml",
        "--config",
        configs_dir / "finetune_plane/random_init.yaml",
        *_tiny_clips(tiny_dataset),
    ]
    cli = run_cli(["fit", *plane, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"])
    ckpt = last_checkpoint(cli.trainer)
    assert cli.model.initialisation == "random" and Path(ckpt).is_file()
    cli = run_cli(["test", *plane, f"--ckpt_path={ckpt}"])
    metrics = cli.trainer.callback_metrics
    _finite(metrics, "test/f1", "test/precision", "test/recall", "test/accuracy", "test/f1/transventricular")
    assert 0.0 <= float(metrics["test/f1"]) <= 1.0
    run_cli(["predict", *plane, f"--ckpt_path={ckpt}"])
    (out,) = tmp_path.glob("**/predictions.csv")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6  # every test clip of the 5 kept classes (the approach clip is filtered out)
    classes = {"abdomen", "background", "four_chamber", "transcerebellar", "transventricular"}
    assert all(r["prediction"] in classes and r["label"] in classes for r in rows)
    assert all(abs(sum(float(r[f"p_{c}"]) for c in classes) - 1) < 1e-3 for r in rows)


def test_saliency_validate_test_predict(run_cli, tiny_dataset, configs_dir, tmp_path):
    sal = [
        "--config",
        configs_dir / "finetune_saliency.yaml",
        "--config",
        configs_dir / "finetune_saliency/random_init.yaml",
        *tiny_data(tiny_dataset),
        "--data.init_args.target_stride=16",
    ]
    cli = run_cli(["validate", *sal, "--trainer.fast_dev_run=1"])
    _finite(cli.trainer.callback_metrics, "val/kld", "val/nss")
    cli = run_cli(["test", *sal, "--trainer.fast_dev_run=1"])
    _finite(cli.trainer.callback_metrics, "test/kld", "test/sim", "test/cc", "test/nss")
    run_cli(["predict", *sal, "--trainer.fast_dev_run=1"])
    (out,) = tmp_path.glob("**/predictions.csv")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and {"clip_id", "kld", "sim", "cc", "nss", "peak_x", "peak_y"} <= set(rows[0])
    assert all(0 <= float(r["peak_x"]) <= 1 and "@" in r["clip_id"] for r in rows)


@pytest.mark.parametrize(
    "overlays",
    [["demo"], ["clips_2s", "mmcl_only"], ["clips_6s", "mmsl_only", "no_image"]],
    ids=lambda o: "+".join(o),
)
def test_fit_every_pretraining_overlay(run_cli, tiny_dataset, configs_dir, overlays):
    """Every overlay in a fit (stacked to keep the suite short), clip lengths and precision as the overlays
    set them (the demo's is fp32)."""
    configs = [a for o in overlays for a in ("--config", configs_dir / "dualrep" / f"{o}.yaml")]
    # CNN14 frozen (no gradients or Adam state for its 80 M parameters) for the test's peak memory: the
    # test is about the overlays' wiring.
    cli = run_cli(
        [
            "fit",
            "--config",
            configs_dir / "dualrep.yaml",
            *configs,
            *tiny_data(tiny_dataset),
            "--data.init_args.window_stride=300",
            "--trainer.fast_dev_run=1",
            "--model.init_args.freeze_audio=true",
        ]
    )
    hp = cli.model.hparams
    expected = ("mmsl_only" not in overlays, "mmcl_only" not in overlays, "no_image" not in overlays)
    assert (hp.use_mmcl, hp.use_mmsl, hp.use_image) == expected
    metrics = cli.trainer.callback_metrics
    _finite(metrics, "train/loss", "val/loss", "val/va_R@1")
    assert ("val/vi_R@1" in metrics) == hp.use_image
    assert ("val/mmcl" in metrics, "val/mmsl" in metrics) == (hp.use_mmcl, hp.use_mmsl)
    if "demo" in overlays:
        assert cli.trainer.precision == "32-true" and cli.datamodule.num_frames == 8


def test_bf16_mixed_fit_keeps_every_weight_finite(run_cli, tiny_dataset, configs_dir):
    """`--trainer.precision=bf16-mixed` through the CLI: two steps, and every weight still finite afterwards
    (the CPU bf16 Conv3d weight-gradient bug that LowPrecisionSafeConv3d works around puts NaN into the video
    encoder). The tiny pretraining windows' 4 frames reach the bug's shapes (a 3-tap temporal conv over 2
    frames, then 1); with their 1 s of speech the run takes 34 s against 85 s for the demo's 8 frames and
    2 s (one thread; bf16 is emulated, so slow, on CPUs without AVX-512-BF16)."""
    cli = run_cli(
        [
            "fit",
            "--config",
            configs_dir / "dualrep.yaml",
            *_tiny_pretrain(tiny_dataset),
            "--data.init_args.batch_size=2",
            "--trainer.precision=bf16-mixed",
            "--trainer.fast_dev_run=2",
            "--model.init_args.freeze_audio=true",
        ]
    )
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step == 2
    _finite(cli.trainer.callback_metrics, "train/loss", "val/loss")
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


@pytest.mark.parametrize("task", ["finetune_plane", "finetune_saliency"])
def test_fit_every_finetune_overlay(run_cli, tiny_dataset, configs_dir, tmp_path, task):
    """demo + random_init, then video + weights_file (a torchvision-layout R(2+1)D-18 file made here)."""
    from torchvision.models.video import r2plus1d_18

    data = (
        _tiny_clips(tiny_dataset)
        if task == "finetune_plane"
        else [*tiny_data(tiny_dataset), "--data.init_args.target_stride=16"]
    )
    base = ["--config", configs_dir / f"{task}.yaml"]
    cli = run_cli(
        [
            "fit",
            *base,
            "--config",
            configs_dir / task / "demo.yaml",
            "--config",
            configs_dir / task / "random_init.yaml",
            *data,
            "--trainer.fast_dev_run=1",
        ]
    )
    assert cli.model.initialisation == "random" and cli.trainer.precision == "32-true"  # the demo overlay's

    torch.manual_seed(0)
    weights = r2plus1d_18(weights=None)
    torch.save(weights.state_dict(), tmp_path / "r2plus1d.pth")
    video = ["--data.init_args.num_before=1"] if task == "finetune_saliency" else []
    cli = run_cli(
        [
            "fit",
            *base,
            "--config",
            configs_dir / task / "video.yaml",
            "--config",
            configs_dir / task / "weights_file.yaml",
            *data,
            *video,
            f"--model.init_args.weights_file={tmp_path / 'r2plus1d.pth'}",
            "--trainer.fast_dev_run=1",
        ]
    )
    assert cli.model.initialisation == "weights_file" and cli.model.hparams.input == "video"
    torch.testing.assert_close(
        cli.model.encoder.backbone.stem[0].weight, weights.stem[0].weight, atol=2e-4, rtol=0
    )


def test_pretrained_auto_pretrains_once_and_rows_share_it(
    run_cli, tiny_dataset, configs_dir, tmp_path, capsys
):
    """A study row (`configs/finetune_plane/mmcl.yaml`: `pretrained: auto`) pretrains its DualRepSSL variant
    on the run's data first; the next run with the same pretraining reuses it; the encoder holds its weights;
    the marker records the pretraining's checkpoint and final metrics."""
    tiny = tmp_path / "pretrain_tiny.yaml"
    tiny.write_text(
        "trainer: {max_epochs: 1, limit_train_batches: 1, limit_val_batches: 1}\n"
        "model: {init_args: {freeze_audio: true}}\n"  # CNN14 without gradients or Adam state (test memory)
        "data: {init_args: {image_size: 32, batch_size: 4, num_workers: 0, num_frames: 4, frame_interval: 4,"
        " audio_seconds: 1.0, window_stride: 120}}\n"
    )
    plane = [
        "fit",
        "--config",
        configs_dir / "finetune_plane.yaml",
        "--config",
        configs_dir / "finetune_plane" / "mmcl.yaml",
        *_tiny_clips(tiny_dataset),
        f"--model.init_args.pretraining_overlays=[{tiny}]",
        "--trainer.precision=32-true",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1",
    ]
    first = run_cli(plane)
    assert "pretrained is auto" in capsys.readouterr().out
    (marker,) = tmp_path.glob("runs/sonolab-dualrep/auto-*/auto_pretrained.json")
    record = json.loads(marker.read_text())
    assert [Path(c).name for c in record["configs"]] == [
        "dualrep.yaml",
        "clips_6s.yaml",
        "mmcl_only.yaml",
        "pretrain_tiny.yaml",
    ]
    assert math.isfinite(record["final_metrics"]["train/loss"])
    pretraining = yaml.safe_load((marker.parent / "config.yaml").read_text())
    assert pretraining["model"]["init_args"]["use_mmsl"] is False, "the row's variant (MMCL only)"
    assert pretraining["data"]["init_args"]["root"] == str(tiny_dataset), "on the run's own data"
    assert first.model.initialisation == "ssl" and first.model.hparams.pretrained == record["checkpoint"]
    saved = torch.load(record["checkpoint"], map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    loaded = first.model.encoder.backbone.conv1.weight.detach()
    pretrained = saved["net.image_encoder.backbone.conv1.weight"]
    # a fine-tuning step of lr 1e-4 away from the pretrained weights, far from any other initialisation
    assert (loaded - pretrained).abs().max() < 1e-3 < (loaded - torch.randn_like(loaded) * 0.1).abs().max()
    del first, saved  # freed before the next run builds its model (test memory)

    second = run_cli([*plane, "--seed_everything=1"])
    assert "pretrained earlier" in capsys.readouterr().out
    assert len(list(tmp_path.glob("runs/sonolab-dualrep/*/"))) == 1, "pretrained once"
    assert len(list(tmp_path.glob("runs/sonolab-dualrep-plane/*/"))) == 2
    assert second.model.hparams.pretrained == record["checkpoint"]


def test_pretrained_auto_outside_fit_needs_a_finished_pretraining(
    run_cli, tiny_dataset, configs_dir, tmp_path
):
    args = [
        "test",
        "--config",
        configs_dir / "finetune_plane.yaml",
        "--config",
        configs_dir / "finetune_plane" / "ours_medium.yaml",
        *_tiny_clips(tiny_dataset),
    ]
    from lightning_modules.common.runs import RunError

    with pytest.raises(RunError, match="run `lightning fit` with this config first"):
        run_cli(args)


@pytest.mark.ddp
def test_ddp_two_cpu_processes(run_cli_subprocess, tiny_dataset, configs_dir):
    """Pretraining with negatives gathered over 2 gloo ranks (global batch 4 = 2 per rank)."""
    proc = run_cli_subprocess(
        [
            "fit",
            "--config",
            configs_dir / "dualrep.yaml",
            *_tiny_pretrain(tiny_dataset),
            "--trainer.fast_dev_run=2",
            "--model.init_args.freeze_audio=true",  # each rank's peak memory: CNN14 gets no Adam state
            "--trainer.strategy=ddp",
            "--trainer.devices=2",
            "--trainer.accelerator=cpu",
        ]
    )
    assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------------
# learnability (slow): the demo recipe of lightning_modules/dualrep_ssl/README.md
# ---------------------------------------------------------------------------------------------------------

SEEDS = (0, 1, 2, 3, 4)


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_learnability_on_the_demo_dataset(tmp_path, monkeypatch):
    """The Table 1 study on the demo data as a user runs it (configs/sweeps/dualrep_plane.yaml cut to the
    "Rand. Init." and "Ours (Medium)" rows, 5 seeds each, locally, with configs/finetune_plane/demo.yaml):
    the "Ours" rows pretrain DualRepSSL once (`pretrained: auto`, the demo pretraining) and fine-tune plane
    detection on 25 % of the labels. The pretraining's video-image retrieval must end well above chance, and
    the mean macro F1 of the pretrained encoder must beat random initialisation."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the sweep file's config paths are relative to the checkout
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = tmp_path / "runs"
    results = run_study(
        repo / "configs" / "sweeps" / "dualrep_plane.yaml",
        {
            "config": ["configs/finetune_plane/random_init.yaml", "configs/finetune_plane/ours_medium.yaml"],
            "seed_everything": list(SEEDS),
        },
        ["--config", "configs/finetune_plane/demo.yaml", "--trainer.precision=32-true"],
        root,
    )
    (marker,) = root.glob("sonolab-dualrep/auto-*/auto_pretrained.json")
    metrics = json.loads(marker.read_text())["final_metrics"]
    batch = 16  # configs/dualrep/demo.yaml
    print(f"\npretraining, final epoch (in-batch chance R@1 {1 / batch:.3f}, R@5 {5 / batch:.3f}):")
    for key in sorted(k for k in metrics if "R@" in k):
        print(f"  {key}: {metrics[key]:.4f}")
    assert metrics["train/batch_vi_R@1_epoch"] >= 2 / batch
    assert metrics["train/batch_vi_R@5_epoch"] >= 5 / batch + 0.15
    assert metrics["val/batch_vi_R@5"] >= 5 / batch + 0.05

    from lightning_modules.collate import collect_runs

    f1: dict[str, list[float]] = {
        "configs/finetune_plane/random_init.yaml": [],
        "configs/finetune_plane/ours_medium.yaml": [],
    }
    for run in collect_runs(root, "dualrep_plane"):
        f1[run["params"]["config"]].append(run["metrics"]["test/f1"])
    assert all(len(v) == len(SEEDS) for v in f1.values()), f1
    mean = {name: sum(v) / len(v) for name, v in f1.items()}
    print("plane detection test macro F1 per seed:", {k: [round(x, 3) for x in v] for k, v in f1.items()})
    print("mean:", {k: round(v, 3) for k, v in mean.items()}, "table:", results)
    assert mean["configs/finetune_plane/ours_medium.yaml"] > mean["configs/finetune_plane/random_init.yaml"]
