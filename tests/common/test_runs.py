"""Runs a researcher can trust: one identity per run, exact resume after SIGKILL, NaN stops loudly, one
output root, real seeds, and `lightning fit --config configs/vqa.yaml` working on a fresh checkout."""

from __future__ import annotations

import os
import pickle
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from cli_args import TINY_CLSTM_NET, tiny_data

from callbacks.checkpoints import BestCheckpoint, RandomState
from lightning_modules.cli import main as cli_main
from lightning_modules.common.runs import RunError, new_run_id, newest_run, run_of_checkpoint
from lightning_modules.vqa_gan.pool import HistoryPool

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
LIGHTNING = Path(sys.executable).with_name("lightning")


def main(args: list[str]):
    """One in-process `lightning` run; its W&B run is closed after it, as a new process would."""
    import wandb

    try:
        return cli_main([str(a) for a in args])
    finally:
        wandb.finish()


def configs(*names: str) -> list[str]:
    return [a for name in names for a in ("--config", str(CONFIGS / name))]


# ------------------------------------------------------------------------------------- SIGKILL + resume
# The CLSTMUNet config (BatchNorm, RandAugment, ConvLSTM) with the tests' tiny U-Net: what is restored on
# resume is the same at any width, and a step takes a fraction of the full width's.
SMALL_CLSTM = [*configs("clstm_unet.yaml"), *TINY_CLSTM_NET]
RESUME_CASES = {
    "vqa_gan": [
        *configs("vqa.yaml", "vqa/demo.yaml"),
        "--model.init_args.use_zoom=false",
        "--data.init_args.num_frames=4",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.precision=32-true",  # bf16 autocast is emulated (slow) on CPUs without AVX-512 BF16
        "--trainer.limit_train_batches=3",
    ],
    # 10 batches an epoch: the last epoch lasts long enough for the test to kill it
    "clstm_unet": [*SMALL_CLSTM, "--trainer.limit_train_batches=10"],
}


def _epoch_of(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not written yet
        return -1


@pytest.mark.parametrize("model", sorted(RESUME_CASES))
def test_sigkill_then_resume_reaches_the_weights_of_an_uninterrupted_run(model, tiny_dataset, tmp_path):
    """Killed with SIGKILL in epoch 2 of 3, `--ckpt_path last` resumes from the end of epoch 1 and ends with
    exactly (bitwise, tolerance 0) the weights of the same run left alone: a deterministic CPU run with one
    thread; optimiser, schedulers, GAN history pools, augmentation generator and RNG states all restored.
    The resumed run keeps its id, its folder and its (offline) W&B run."""
    args = [
        "fit",
        *RESUME_CASES[model],
        *tiny_data(tiny_dataset),
        "--trainer.max_epochs=3",
        "--trainer.limit_val_batches=1",
        "--seed_everything=7",
    ]
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    run = dict(cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reference = subprocess.Popen([str(LIGHTNING), *args, "--trainer.default_root_dir=uninterrupted"], **run)
    killed = subprocess.Popen(
        [str(LIGHTNING), *args, "--trainer.default_root_dir=killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    while time.time() < deadline and killed.poll() is None:
        last = list((tmp_path / "killed").glob("*/*/checkpoints/last.ckpt"))
        if last and _epoch_of(last[0]) >= 1:
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    (last,) = (tmp_path / "killed").glob("*/*/checkpoints/last.ckpt")
    assert _epoch_of(last) == 1, "last.ckpt holds the last completed epoch"
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-4000:]

    resumed = subprocess.run(
        [str(LIGHTNING), *args, "--trainer.default_root_dir=killed", "--ckpt_path", "last"],
        **run,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-4000:]

    (run_dir,) = (tmp_path / "killed").glob("*/*/")
    assert run_dir.name in resumed.stdout, "the summary names the run it continued"
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (ref_path,) = (tmp_path / "uninterrupted").glob("*/*/checkpoints/last.ckpt")
    reference_state = torch.load(ref_path, map_location="cpu", weights_only=True)
    assert final["epoch"] == reference_state["epoch"] == 2
    assert final["global_step"] == reference_state["global_step"]
    for key, value in reference_state["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), f"{key} differs after resume"
    # one run: one folder (its config.yaml kept, the resume's config beside it) and one W&B run id
    assert (run_dir / "config.yaml").is_file() and len(list(run_dir.glob("config-fit-*.yaml"))) == 1
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(p.name.endswith(run_dir.name) for p in wandb_runs)


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> str:
    """The process's (binary, merged) output read as it comes, until ``pattern`` matches it, the output
    ends or ``timeout`` passes."""
    text, fd, deadline = "", proc.stdout.fileno(), time.time() + timeout
    while time.time() < deadline and not re.search(pattern, text):
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
    return text


def test_sigterm_saves_the_state_mid_epoch_and_the_run_resumes(tiny_dataset, tmp_path):
    """A cluster's SIGTERM (time limit, pre-emption): last.ckpt is rewritten with the state after the last
    finished batch, the process ends non-zero, and `--ckpt_path last` finishes the run in the same folder.
    The signal goes once the progress bar shows epoch 1 two batches in (of 40), whatever the machine's
    speed."""
    batches = 40
    args = [
        "fit",
        *SMALL_CLSTM,
        *tiny_data(tiny_dataset),
        "--trainer.max_epochs=2",
        f"--trainer.limit_train_batches={batches}",
        "--trainer.limit_val_batches=1",
        "--seed_everything=7",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [str(LIGHTNING), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out = _read_until(proc, rf"Epoch 1:\s+\d+%\|[^|]*\|\s*([2-9]|[1-3]\d)/{batches}\b", timeout=600)
    (last,) = (tmp_path / "runs").glob("*/*/checkpoints/last.ckpt")
    boundary = torch.load(last, map_location="cpu", weights_only=True)
    assert (boundary["epoch"], boundary["global_step"]) == (0, batches), out[-3000:]
    proc.send_signal(signal.SIGTERM)
    out += proc.communicate(timeout=600)[0].decode(errors="replace")
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "interrupted (SIGTERMException)" in out
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert batches < saved["global_step"] < 2 * batches, "the state after the last finished batch of epoch 1"
    resumed = subprocess.run(
        [str(LIGHTNING), *args, "--ckpt_path", "last"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (1, 2 * batches)
    assert len(list((tmp_path / "runs").glob("*/*/"))) == 1


def test_ckpt_path_last_with_nothing_to_resume_stops(tiny_dataset, tmp_path):
    with pytest.raises(RunError, match="nothing to resume"):
        main(
            [
                "fit",
                *configs("clstm_unet.yaml"),
                *tiny_data(tiny_dataset),
                f"--trainer.default_root_dir={tmp_path}",
                "--ckpt_path",
                "last",
            ]
        )
    assert not any(tmp_path.iterdir())


def test_run_id_of_an_existing_run_is_refused(tiny_dataset, tmp_path):
    (tmp_path / "sonolab-clstm-unet" / "mine").mkdir(parents=True)
    with pytest.raises(RunError, match="exists"):
        main(
            [
                "fit",
                *configs("clstm_unet.yaml"),
                *tiny_data(tiny_dataset),
                f"--trainer.default_root_dir={tmp_path}",
                "--run_id=mine",
            ]
        )


# ------------------------------------------------------------------------------------------- non-finite
def _run_console(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from lightning_modules.cli import run

    monkeypatch.setattr(sys, "argv", ["lightning", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run()
    return int(exit_info.value.code)


@pytest.mark.parametrize("action", ["stop", "skip"])
def test_nan_loss_stops_with_a_message_and_no_best_checkpoint(
    action, tiny_dataset, tmp_path, monkeypatch, capsys
):
    """lr 1e10 makes CLSTMUNet's loss non-finite after its first step: the run ends with a non-zero exit
    status and a message naming epoch, step and loss term, and leaves no checkpoint behind."""
    code = _run_console(
        [
            "fit",
            *configs("clstm_unet.yaml"),
            *tiny_data(tiny_dataset),
            f"--trainer.default_root_dir={tmp_path}",
            "--model.init_args.lr=1e10",
            "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=5",
            "--trainer.limit_val_batches=1",
            f"--nonfinite.action={action}",
            "--nonfinite.max_skips=1",
        ],
        monkeypatch,
    )
    err = capsys.readouterr().err
    assert code == 3
    assert "non-finite training loss at epoch 0, global step" in err
    assert "kld = nan" in err or "kld = inf" in err
    if action == "skip":
        assert "more than max_skips=1" in err
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint of a diverged run"


def test_non_finite_metric_is_never_a_best_checkpoint():
    callback = BestCheckpoint(monitor="val/kld", mode="min")
    trainer = SimpleNamespace(current_epoch=0)
    assert not callback.check_monitor_top_k(trainer, torch.tensor(float("nan")))
    assert not callback.check_monitor_top_k(trainer, torch.tensor(float("inf")))
    assert callback.check_monitor_top_k(trainer, torch.tensor(0.5))


# ------------------------------------------------------------------------------- run folders and config
def test_test_from_a_demo_run_folder_needs_no_overlays(tiny_dataset, tmp_path):
    """`lightning test --ckpt_path <run>/checkpoints/last.ckpt` uses the run's saved config (here the demo
    overlay's narrow networks); a --config that changes the model is refused, naming the keys."""
    root = tmp_path / "runs"
    fit = main(
        [
            "fit",
            *RESUME_CASES["vqa_gan"],
            *tiny_data(tiny_dataset),
            f"--trainer.default_root_dir={root}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
        ]
    )
    (run_dir,) = root.glob("sonolab-vqa/*/")
    saved = (run_dir / "config.yaml").read_text()
    assert yaml.safe_load(saved)["trainer"]["default_root_dir"] == str(root), "the user's root, not the run's"
    last = run_dir / "checkpoints" / "last.ckpt"
    tested = main(["test", "--ckpt_path", str(last)])
    assert tested.model.hparams.ngf == fit.model.hparams.ngf == 16
    assert "test/auc" in tested.trainer.callback_metrics
    assert (run_dir / "config.yaml").read_text() == saved, "the run's config is never replaced"
    assert len(list(run_dir.glob("config-test-*.yaml"))) == 1
    assert [p.name for p in root.glob("sonolab-vqa/*/")] == [run_dir.name], "no new run folder"
    with pytest.raises(RunError, match=r"model\.init_args\.ngf: the run has 16, this command gives 32"):
        main(["test", *configs("vqa.yaml"), "--ckpt_path", str(last)])


def test_seed_everything_true_draws_a_seed_and_saves_it(tiny_dataset, tmp_path):
    seeds = []
    for _ in range(2):
        main(
            [
                "validate",
                *configs("clstm_unet.yaml"),
                *tiny_data(tiny_dataset),
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.limit_val_batches=1",
            ]
        )
    for config in sorted(tmp_path.glob("sonolab-clstm-unet/*/config.yaml")):
        seeds.append(yaml.safe_load(config.read_text())["seed_everything"])
    assert len(seeds) == 2 and all(isinstance(s, int) for s in seeds)
    assert seeds[0] != seeds[1]


def test_a_finished_run_frees_its_model_in_a_long_lived_process(tiny_dataset, tmp_path, monkeypatch):
    """Studies, `pretrained: auto` and notebooks run several commands in one process: once the caller
    drops the CLI, its model (and optimiser) is freed, W&B logging (offline) included. The config
    parser's context variables and W&B's service thread used to keep the first and the latest run alive."""
    import gc
    import weakref

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    # two G + D steps, no validation
    args = [*RESUME_CASES["vqa_gan"], *tiny_data(tiny_dataset), "--trainer.max_steps=2"]
    args += ["--trainer.limit_val_batches=0"]
    models = []
    for _ in range(2):
        cli = main(["fit", *args])
        assert cli.trainer.global_step == 2 and cli.trainer.logger.experiment is not None  # W&B logged
        models.append(weakref.ref(cli.model))
        del cli
    gc.collect()
    assert [m() for m in models] == [None, None]


def test_checkpoint_write_that_fails_keeps_the_previous_file(tmp_path):
    """Checkpoints are streamed to a temporary file and renamed: a failed write leaves the old file whole
    and no temporary file behind."""
    from callbacks.checkpoints import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(3.0)}}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on where it is defined
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "hook": lambda: None}, path)  # unpicklable
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]["w"]
    assert saved.tolist() == [0.0, 1.0, 2.0]


def test_failed_start_leaves_no_run_folder(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(FileNotFoundError, match="zoom-in checkpoint"):
        main(
            [
                "fit",
                *configs("vqa.yaml", "vqa/demo.yaml"),
                *tiny_data(tiny_dataset),
                "--data.init_args.num_frames=4",
                f"--trainer.default_root_dir={tmp_path / 'runs'}",
                f"--model.init_args.zoom_checkpoint={tmp_path / 'missing.ckpt'}",
            ]
        )
    assert not (tmp_path / "runs").exists()


def _tree(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def _git_status() -> str | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def test_first_command_works_and_writes_only_into_the_root(tiny_dataset, tmp_path, monkeypatch, capsys):
    """`lightning fit --config configs/vqa.yaml --trainer.fast_dev_run=true --trainer.default_root_dir=D`
    from another working directory: the zoom-in (`auto`) is pretrained first, the model trains, and nothing
    is written outside D and the cache (the working directory, the checkout and the dataset are untouched)."""
    work, root = tmp_path / "work", tmp_path / "D"
    work.mkdir()
    monkeypatch.chdir(work)
    before_data, before_git = _tree(tiny_dataset), _git_status()
    cli = main(
        [
            "fit",
            *configs("vqa.yaml"),
            *tiny_data(tiny_dataset),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={root}",
        ]
    )
    printed = capsys.readouterr().out
    assert "zoom-in: zoom_checkpoint is auto" in printed and "pretrained on one batch" in printed
    assert bool(cli.model.zoom_ready) and "train/g_loss" in cli.trainer.callback_metrics
    assert not any(work.iterdir()), "nothing in the working directory"
    assert _tree(tiny_dataset) == before_data
    assert _git_status() == before_git


def test_auto_zoom_is_pretrained_once_then_reused(tiny_dataset, tmp_path, capsys):
    overlay = tmp_path / "zoom_tiny.yaml"
    overlay.write_text(
        "trainer: {max_epochs: 1, limit_train_batches: 2, limit_val_batches: 1}\n"
        "data: {init_args: {batch_size: 8, num_workers: 0}}\n"
    )
    zoom_configs = [str(CONFIGS / "zoom.yaml"), str(CONFIGS / "zoom" / "demo.yaml"), str(overlay)]
    args = [
        "fit",
        *configs("vqa.yaml", "vqa/demo.yaml"),
        *tiny_data(tiny_dataset),
        "--data.init_args.num_frames=4",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        f"--model.init_args.zoom_pretraining=[{', '.join(zoom_configs)}]",
        "--trainer.precision=32-true",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1",
    ]
    first = main(args)
    assert "pretrained first" in capsys.readouterr().out
    (marker,) = (tmp_path / "runs").glob("sonolab-zoom/auto-*/auto_zoom.json")
    zoom_config = yaml.safe_load((marker.parent / "config.yaml").read_text())
    assert zoom_config["trainer"]["precision"] == "32-true", "the pretraining runs at the VQA run's precision"
    assert zoom_config["data"]["init_args"]["image_size"] == 32, "on the VQA run's frames"
    assert bool(first.model.zoom_ready)
    second = main(args)
    assert "pretrained earlier" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("sonolab-zoom/*/"))) == 1
    assert len(list((tmp_path / "runs").glob("sonolab-vqa/*/"))) == 2
    for key, value in first.model.zoom.state_dict().items():
        assert torch.equal(second.model.zoom.state_dict()[key], value)
    assert marker.is_file()


# ------------------------------------------------------------------------------------------ unit pieces
def test_run_folder_helpers(tmp_path):
    assert new_run_id() != new_run_id()
    run = tmp_path / "proj" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert run_of_checkpoint(run / "checkpoints" / "last.ckpt") == run
    assert run_of_checkpoint(tmp_path / "elsewhere.ckpt") is None
    assert newest_run(tmp_path, "proj") == run and newest_run(tmp_path, "other") is None


def test_history_pool_state_round_trip():
    torch.manual_seed(0)
    pool = HistoryPool(4)
    for _ in range(3):
        pool.query(torch.randn(2, 3))
    copy = HistoryPool(4)
    copy.load_state_dict(pool.state_dict())
    batch = torch.randn(2, 3)
    torch.manual_seed(1)
    expected = pool.query(batch)
    torch.manual_seed(1)
    assert torch.equal(copy.query(batch), expected) and len(copy) == len(pool)


def test_random_state_round_trip():
    callback = RandomState()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = callback.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    RandomState().load_state_dict(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_read_only_run_root_is_a_clear_error(tiny_dataset, tmp_path):
    """A file where the root folder should be stands in for a read-only mount (as root, chmod does not stop
    writes): the command stops before anything starts, naming the folder and the setting."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(RunError, match=r"cannot write the run folder under .*not-a-folder/runs") as error:
        main(
            [
                "fit",
                *configs("clstm_unet.yaml"),
                *tiny_data(tiny_dataset),
                f"--trainer.default_root_dir={blocker}/runs",
            ]
        )
    assert "--trainer.default_root_dir" in str(error.value)
