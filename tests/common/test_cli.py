"""The `lightning` command: W&B offline by default, per-run folders, help output, prediction CSVs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_args import tiny_data

from lightning_modules.cli import default_wandb_mode, has_wandb_key, run_directory
from lightning_modules.common.runs import columns_to_rows, dedupe_rows, write_csv_atomic


def test_wandb_is_offline_without_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not has_wandb_key()
    default_wandb_mode()
    assert os.environ["WANDB_MODE"] == "offline"


def test_wandb_key_in_netrc_keeps_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert has_wandb_key()
    default_wandb_mode()
    assert "WANDB_MODE" not in os.environ


def test_user_choice_of_wandb_mode_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    default_wandb_mode()
    assert os.environ["WANDB_MODE"] == "disabled"


def test_run_directory_is_the_trainers_root(tmp_path: Path) -> None:
    """The CLI points each Trainer's default_root_dir at its run folder; everything asks run_directory."""
    run = tmp_path / "runs" / "sonolab-vqa" / "abc123"
    assert run_directory(SimpleNamespace(default_root_dir=str(run))) == run


@pytest.mark.parametrize("program", ["lightning", "sonolab"])
def test_console_scripts_print_help(program: str) -> None:
    exe = Path(sys.executable).parent / program
    out = subprocess.run([str(exe), "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--trainer.strategy" in out.stdout and "--data" in out.stdout


_FLOAT_FIRST_TRAINER = """
import inspect, sys, typing
import lightning.pytorch.trainer.trainer as trainer_module
annotations = inspect.unwrap(trainer_module.Trainer.__init__).__annotations__
for name in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
    hint = annotations[name]  # what a plain install gets when typing's cache held Fabric's union first:
    annotations[name] = type(hint)(typing.Union, tuple(sorted(typing.get_args(hint), key=lambda t: t is not float)))
assert typing.get_args(annotations["limit_train_batches"])[0] is float
from lightning_modules.cli import main
main(sys.argv[1:])
"""


def _printed_trainer(command: list[str], cwd: Path) -> dict:
    import yaml

    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert out.returncode == 0, out.stderr[-4000:]
    return yaml.safe_load(out.stdout)["trainer"]


def test_a_batch_limit_of_1_is_one_batch_whatever_order_typing_cached_the_union(
    configs_dir: Path, tmp_path: Path
) -> None:
    """`--trainer.limit_train_batches=1` is one batch (the int), 1.0 or 0.5 a fraction, in the console script
    and in an interpreter where the Trainer's `Optional[Union[int, float]]` came out of typing's cache as
    the float-first union (as in a plain install: every `1` was read as 1.0, all batches)."""
    flags = [
        "fit",
        "--config",
        str(configs_dir / "clstm_unet.yaml"),
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=0.5",
        "--trainer.limit_test_batches=1.0",
        "--trainer.val_check_interval=1",
        "--print_config",
    ]
    bin_dir = Path(sys.executable).parent
    for command in (
        [str(bin_dir / "lightning"), *flags],
        [sys.executable, "-c", _FLOAT_FIRST_TRAINER, *flags],
    ):
        trainer, how = _printed_trainer(command, tmp_path), command[:2]
        assert trainer["limit_train_batches"] == 1 and type(trainer["limit_train_batches"]) is int, how
        assert trainer["val_check_interval"] == 1 and type(trainer["val_check_interval"]) is int, how
        assert trainer["limit_val_batches"] == 0.5
        assert trainer["limit_test_batches"] == 1.0 and type(trainer["limit_test_batches"]) is float


def test_console_script_exits_zero_after_a_successful_fit(
    run_cli_subprocess, tiny_dataset: Path, configs_dir: Path
) -> None:
    """`lightning fit` as a user runs it: status 0 (the script passes its entry's return value to sys.exit,
    so a returned CLI object would be printed and turn success into status 1)."""
    proc = run_cli_subprocess(
        [
            "fit",
            "--config",
            configs_dir / "crl_uiqa.yaml",
            *tiny_data(tiny_dataset),
            "--data.init_args.pseudo_labels.k=2",
            "--model.init_args.proj_dim=16",
            "--trainer.fast_dev_run=1",
        ]
    )
    assert proc.returncode == 0
    assert "SonolabCLI object" not in proc.stderr


def test_prediction_columns_become_rows(tmp_path: Path) -> None:
    rows = columns_to_rows({"clip_id": ["a", "b"], "score": torch.tensor([0.5, 1.5])})
    assert rows == [{"clip_id": "a", "score": 0.5}, {"clip_id": "b", "score": 1.5}]
    with pytest.raises(ValueError, match="different lengths"):
        columns_to_rows({"clip_id": ["a"], "score": torch.tensor([0.5, 1.5])})
    path = tmp_path / "p.csv"
    write_csv_atomic(path, rows)
    assert path.read_text().splitlines() == ["clip_id,score", "a,0.5", "b,1.5"]
    assert not list(tmp_path.glob(".p.csv.tmp*"))


def test_ddp_padding_duplicates_are_removed() -> None:
    rows = [{"id": "a", "s": "1"}, {"id": "b", "s": "2"}, {"id": "a", "s": "1"}]
    assert dedupe_rows(rows) == rows[:2]


MAIN_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", MAIN_CONFIGS, ids=lambda p: p.name)
def test_print_config_resolves_every_main_config(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`lightning fit --print_config --config X` parses, links data shapes into the model, and resolves ${...}."""
    from lightning_modules.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "${" not in printed
    assert "WandbLogger" in printed, "every config logs through W&B"
    assert "default_root_dir: runs" in printed, "every run writes under one root"


def test_interpolation_follows_overrides(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A data shape changed on the command line reaches the model through `${data.init_args...}`."""
    from lightning_modules.cli import main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[2] / "configs" / "clstm_unet.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--data.init_args.num_before=4", "--print_config"])
    printed = capsys.readouterr().out
    assert printed.count("num_before: 4") == 2, "data and model agree"
    assert "num_before: 6" not in printed
