"""A crafted checkpoint (a pickle whose ``__reduce__`` writes a marker file) fed to every command and option
that reads a checkpoint or weights file: each refuses it, and the payload never runs.

The payload is live: ``test_payload_runs_when_unpickled_unsafely`` shows that ``weights_only=False`` runs it,
so a loader that regressed to an unsafe load would write the marker and fail its test.
"""

from __future__ import annotations

import builtins
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_args import tiny_data

from lightning_modules.common.checkpoints import CheckpointError, load_checkpoint, load_module


class Payload:
    """Unpickling this calls ``exec``, which writes ``marker``: code execution from a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """(a hostile checkpoint shaped like a Lightning one, the marker its payload would write)."""
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "hostile.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {"w": torch.zeros(1)},
            "hyper_parameters": {"payload": Payload(marker)},
        },
        ckpt,
    )
    return ckpt, marker


def test_payload_runs_when_unpickled_unsafely(hostile) -> None:
    """Positive control: the file really carries code that runs under ``weights_only=False``."""
    ckpt, marker = hostile
    torch.load(ckpt, map_location="cpu", weights_only=False)
    assert marker.read_text() == "pwned"


def test_load_checkpoint_refuses_and_names_file(hostile) -> None:
    ckpt, marker = hostile
    with pytest.raises(CheckpointError, match=r"hostile\.ckpt: not loaded.*weights_only=True"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_load_checkpoint_refuses_even_with_torch_override(hostile, monkeypatch) -> None:
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only flips loads that leave ``weights_only`` unset; ours set it."""
    ckpt, marker = hostile
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_allow_list_reads_what_sonolab_checkpoints_may_hold(tmp_path) -> None:
    """Paths and numpy values load through the allow-list; plain ``weights_only=True`` refuses them."""
    import numpy as np

    path = tmp_path / "ok.ckpt"
    torch.save({"p": Path("/data/x"), "score": np.float64(0.5), "arr": np.arange(3)}, path)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)
    got = load_checkpoint(path)
    assert got["p"] == Path("/data/x") and got["score"] == 0.5 and got["arr"].tolist() == [0, 1, 2]


def test_load_module_refuses(hostile) -> None:
    from lightning_modules.clstm_unet.module import CLSTMUNet

    ckpt, marker = hostile
    with pytest.raises(CheckpointError):
        load_module(CLSTMUNet, ckpt)
    assert not marker.exists()


def test_stream_command(hostile, tiny_dataset, tmp_path) -> None:
    """``python -m lightning_modules.clstm_unet.stream --checkpoint X``."""
    from lightning_modules.clstm_unet import stream

    ckpt, marker = hostile
    video = next((tiny_dataset / "videos").rglob("*.avi"))
    with pytest.raises(CheckpointError, match=r"hostile\.ckpt"):
        stream.main(["--checkpoint", str(ckpt), "--video", str(video), "--out", str(tmp_path / "o")])
    assert not marker.exists()


def test_ranking_command(hostile, tiny_dataset) -> None:
    """``python -m lightning_modules.crl_uiqa.ranking --checkpoint X``."""
    from lightning_modules.crl_uiqa import ranking

    ckpt, marker = hostile
    image = next((tiny_dataset / "images").rglob("*.png"))
    with pytest.raises(CheckpointError, match=r"hostile\.ckpt"):
        ranking.main(["--checkpoint", str(ckpt), "--images", str(image), "--device", "cpu"])
    assert not marker.exists()


def test_scan_command(hostile, tiny_dataset) -> None:
    """``python -m lightning_modules.vqa_gan.scan --checkpoint X`` (and :func:`load_quality_model`)."""
    from lightning_modules.vqa_gan import scan

    ckpt, marker = hostile
    with pytest.raises(CheckpointError, match=r"hostile\.ckpt"):
        scan.main(["--checkpoint", str(ckpt), "--out", str(ckpt.parent / "scan")])
    assert not marker.exists()


def test_scan_imports_no_module_named_by_the_checkpoint(tmp_path) -> None:
    """A safe file whose ``_class_path`` names another module: refused before anything is imported."""
    from lightning_modules.vqa_gan.scan import load_quality_model

    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "antigravity.Fly"}}, path)
    with pytest.raises(ValueError, match=r"antigravity\.Fly, not a VQA quality model"):
        load_quality_model(path)
    import sys

    assert "antigravity" not in sys.modules


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("force_unsafe_env", [False, True])
def test_cli_ckpt_path(
    hostile, run_cli, configs_dir, tiny_dataset, subcommand, force_unsafe_env, monkeypatch
):
    """``lightning fit|validate|test|predict --ckpt_path X``: Lightning 2.6.6 reads the file's
    hyper-parameters with ``torch.load(weights_only=True)`` while parsing (``LightningCLI._parse_ckpt_path``),
    before any model exists, and restores with ``weights_only=None`` = torch's default (True). So the
    file is refused at parse time, even when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` would flip the default."""
    ckpt, marker = hostile
    if force_unsafe_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    args = [
        subcommand,
        "--config",
        configs_dir / "vqa.yaml",
        "--config",
        configs_dir / "vqa" / "no_zoom.yaml",
    ]
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl"):
        run_cli([*args, *tiny_data(tiny_dataset), f"--ckpt_path={ckpt}"])
    assert not marker.exists()


def test_test_after_fit_reads_the_best_checkpoint_weights_only(hostile, monkeypatch) -> None:
    """``--test_after_fit`` (which the studies and ``make demo`` use) tests the best checkpoint of the run it
    trained through the CLI's ``_call``, which adds ``weights_only=True``: a hostile file there is refused."""
    import lightning.pytorch as pl

    from lightning_modules.cli import SonolabCLI

    ckpt, marker = hostile

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def test_step(self, batch, batch_idx):
            return None

        def test_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(2, 1))

    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    cli = SimpleNamespace(identity=SimpleNamespace(run_id="r"), _forget_failed_start=lambda: None)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # explicit weights_only=True still wins
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl"):
        SonolabCLI._call(cli, trainer.test, {"model": Tiny(), "ckpt_path": str(ckpt)})
    assert not marker.exists()


# ------------------------------------------------------------------ weights-file options of the configs
def _weights_loaders(path: Path) -> dict[str, object]:
    """Every config option that reads a weights / checkpoint file, as the call the option makes."""
    from lightning_modules.common.weights import load_state_dict_file
    from lightning_modules.crl_uiqa.embedding import build_embedding_model
    from lightning_modules.crl_uiqa.nets import build_backbone
    from lightning_modules.dualrep_ssl.nets import AudioEncoder, ImageEncoder, VideoEncoder
    from lightning_modules.finetune.nets import build_encoder
    from lightning_modules.vqa_gan.base import zoom_hparams_from_checkpoint
    from lightning_modules.vqa_gan.zoom import ZoomIn

    return {
        "common.weights.load_state_dict_file": lambda: load_state_dict_file(path),
        "crl_uiqa pretrained_path (build_backbone)": lambda: build_backbone("resnet18", 1, path),
        "crl_uiqa embedding (checkpoint backbone name)": lambda: build_embedding_model(str(path)),
        "dualrep image_weights": lambda: ImageEncoder(weights_path=path),
        "dualrep video_weights": lambda: VideoEncoder(weights_path=path),
        "dualrep audio_weights": lambda: AudioEncoder(weights_path=path),
        "finetune weights_file": lambda: build_encoder("image", weights_file=str(path)),
        "finetune pretrained (ssl checkpoint)": lambda: build_encoder("image", pretrained=str(path)),
        "vqa weights_path (ZoomIn)": lambda: ZoomIn(weights_path=path),
        "vqa zoom_checkpoint (hyper-parameters)": lambda: zoom_hparams_from_checkpoint(path),
    }


@pytest.mark.parametrize(
    "option",
    [
        "common.weights.load_state_dict_file",
        "crl_uiqa pretrained_path (build_backbone)",
        "crl_uiqa embedding (checkpoint backbone name)",
        "dualrep image_weights",
        "dualrep video_weights",
        "dualrep audio_weights",
        "finetune weights_file",
        "finetune pretrained (ssl checkpoint)",
        "vqa weights_path (ZoomIn)",
        "vqa zoom_checkpoint (hyper-parameters)",
    ],
)
def test_weights_options(hostile, option, monkeypatch) -> None:
    ckpt, marker = hostile
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl|unsupported global"):
        _weights_loaders(ckpt)[option]()
    assert not marker.exists()
