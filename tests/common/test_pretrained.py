"""lightning_modules.common.pretrained: the papers' pretrained inits from pre-seeded caches, offline.

Every test points TORCH_HOME / HF_HOME at a temporary folder and writes generated weights under the exact
file names the real sources use (the torchvision weights enums' URLs, the PANNs file name, timm's Hugging
Face cache layout), so the real loading code (torchvision ``get_state_dict``, ``torch.hub``, timm) runs
without a network and the loaded networks must hold the known, seeded values. Downloads are made to fail
(``torch.hub.download_url_to_file`` raises, the HF hub is offline), so the tests behave the same on a
machine with internet.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from lightning_modules.common import pretrained as P
from lightning_modules.common.pretrained import PretrainedWeightsMissingError
from lightning_modules.dualrep_ssl.cnn14 import Cnn14
from lightning_modules.dualrep_ssl.nets import AudioEncoder, ImageEncoder, VideoEncoder
from lightning_modules.finetune.nets import build_encoder
from lightning_modules.vqa_gan.zoom import ZoomIn


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty TORCH_HOME / HF_HOME under tmp_path; every download attempt fails as without a network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    downloads: list[str] = []

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        downloads.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def _known(t: torch.Tensor, scale: float = 1e-3) -> torch.Tensor:
    """A tensor of ``t``'s shape holding 0, 1, 2, ... times ``scale``: a value no initialiser produces."""
    return torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) * scale


def _seed(model: nn.Module, file_name: str, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Save ``model``'s state dict, with ``params`` overwritten, under the torch.hub cache's ``file_name``."""
    state = model.state_dict()
    state.update(params)
    directory = Path(torch.hub.get_dir()) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / file_name)
    return state


def _seed_resnet18() -> dict[str, torch.Tensor]:
    ref = torchvision.models.resnet18()
    known = {"conv1.weight": _known(ref.conv1.weight), "layer4.1.bn2.running_mean": torch.full((512,), 0.25)}
    _seed(ref, "resnet18-f37072fd.pth", known)
    return known


def test_cache_file_names_are_the_weights_enums(caches):
    """The cache paths the sources name are where torch.hub puts those URLs (what a user copies)."""
    checkpoints = caches / "torch" / "hub" / "checkpoints"
    assert P.weights_source("resnet18", "imagenet").cache_path == checkpoints / "resnet18-f37072fd.pth"
    assert P.weights_source("googlenet", "imagenet").cache_path == checkpoints / "googlenet-1378be20.pth"
    assert (
        P.weights_source("r2plus1d_18", "kinetics400").cache_path == checkpoints / "r2plus1d_18-91a641e6.pth"
    )
    assert P.weights_source("cnn14", "audioset").cache_path == checkpoints / "Cnn14_16k_mAP=0.438.pth"
    assert P.hf_cache_dir() == caches / "hf" / "hub"


def test_image_encoder_imagenet_from_the_cache(caches):
    known = _seed_resnet18()
    enc = ImageEncoder(weights_path="imagenet")
    assert torch.equal(enc.backbone.conv1.weight, known["conv1.weight"])
    assert torch.equal(enc.backbone.layer4[1].bn2.running_mean, known["layer4.1.bn2.running_mean"])
    assert isinstance(enc.backbone.fc, nn.Identity)  # the ImageNet classifier is dropped
    # the fine-tuning "ImageNet Init." goes the same way
    ft = build_encoder("image", weights_file="imagenet")
    assert torch.equal(ft.backbone.conv1.weight, known["conv1.weight"])


def test_video_encoder_kinetics400_from_the_cache(caches):
    ref = torchvision.models.video.r2plus1d_18()
    known = {
        "stem.0.weight": _known(ref.stem[0].weight),
        "layer1.0.conv1.0.3.weight": _known(ref.layer1[0].conv1[0][3].weight, 1e-4),
    }
    _seed(ref, "r2plus1d_18-91a641e6.pth", known)
    enc = VideoEncoder(weights_path="kinetics400")
    assert torch.equal(enc.backbone.stem[0].weight, known["stem.0.weight"])
    assert torch.equal(enc.backbone.layer1[0].conv1[0][3].weight, known["layer1.0.conv1.0.3.weight"])


def test_audio_encoder_audioset_panns_file_from_the_cache(caches):
    """A {"model": state_dict} file in the PANNs layout, front-end buffers included, under the official name."""
    ref = Cnn14(num_classes=527)
    state = dict(ref.state_dict())
    state["fc1.weight"] = _known(ref.fc1.weight, 1e-6)
    state["conv_block1.conv1.weight"] = _known(ref.conv_block1.conv1.weight)
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(257, 1, 512)
    state["logmel_extractor.melW"] = torch.zeros(257, 64)
    path = Path(torch.hub.get_dir()) / "checkpoints" / "Cnn14_16k_mAP=0.438.pth"
    path.parent.mkdir(parents=True)
    torch.save({"iteration": 560000, "model": state}, path)

    enc = AudioEncoder(weights_path="audioset")
    assert torch.equal(enc.cnn14.fc1.weight, state["fc1.weight"])
    assert torch.equal(enc.cnn14.conv_block1.conv1.weight, state["conv_block1.conv1.weight"])
    full = Cnn14(weights_path="audioset")  # with the AudioSet head, it is loaded too
    assert torch.equal(full.fc_audioset.weight, state["fc_audioset.weight"])


def test_zoom_googlenet_imagenet_from_the_cache(caches):
    ref = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    known = {"conv1.conv.weight": _known(ref.conv1.conv.weight)}
    _seed(ref, "googlenet-1378be20.pth", known)  # aux1/aux2/fc in the file, as in torchvision's
    zoom = ZoomIn(weights_path="imagenet")
    assert torch.equal(zoom.localizer.conv1.conv.weight, known["conv1.conv.weight"])
    assert zoom.localizer.fc.weight.abs().sum() == 0  # the head still starts at the identity crop
    # torchvision's ImageNet GoogLeNet takes [-1, 1] input (transform_input): grey frames go in as they are
    frames = torch.rand(2, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(zoom._localizer_input(frames), frames.expand(-1, 3, -1, -1))
    # a checkpoint of it restores that input scaling; an older checkpoint (no flag) keeps ImageNet normalisation
    restored = ZoomIn()
    restored.load_state_dict(zoom.state_dict())
    assert bool(restored.transform_input)
    old = {k: v for k, v in zoom.state_dict().items() if k != "transform_input"}
    fresh = ZoomIn()
    fresh.load_state_dict(old)
    assert not bool(fresh.transform_input)
    x01 = (frames + 1) / 2
    torch.testing.assert_close(
        fresh._localizer_input(frames), (x01.expand(-1, 3, -1, -1) - fresh.mean) / fresh.std
    )


def test_missing_and_offline_error_names_path_and_url(caches):
    with pytest.raises(PretrainedWeightsMissingError) as info:
        ImageEncoder(weights_path="imagenet")
    message = str(info.value)
    expected = caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert f"expected file: {expected}" in message
    assert "fetch it from: https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "Name or service not known" in message
    # no urllib traceback chained onto it
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, FileNotFoundError)

    with pytest.raises(
        PretrainedWeightsMissingError, match=r"Cnn14_16k_mAP=0\.438\.pth[\s\S]*zenodo\.org/record/3987831"
    ):
        AudioEncoder(weights_path="audioset")


def test_damaged_cache_file_says_delete_it(caches):
    path = P.weights_source("resnet18", "imagenet").cache_path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"resnet18-f37072fd\.pth.*Delete the file"):
        ImageEncoder(weights_path="imagenet")


def test_download_failing_its_hash_check_is_reported_as_missing(caches, monkeypatch):
    """torch.hub keeps no file whose SHA-256 does not start with the hash in its name: say so, not 'delete it'."""

    def bad_hash(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", bad_hash)
    with pytest.raises(PretrainedWeightsMissingError, match=r'invalid hash value \(expected "f37072fd"'):
        P.pretrained_state_dict("resnet18", "imagenet")


def test_source_that_does_not_fit_the_network(caches):
    with pytest.raises(
        ValueError, match=r"r2plus1d_18 has no pretrained source 'imagenet': it offers kinetics400"
    ):
        VideoEncoder(weights_path="imagenet")
    with pytest.raises(ValueError, match=r"weights_file='kinetics400' does not fit input: image.*'imagenet'"):
        build_encoder("image", weights_file="kinetics400")
    with pytest.raises(ValueError, match="prefix"):
        ImageEncoder(weights_path="imagenet", weights_prefix="net.")


def test_timm_backbone_imagenet_grey_sums_first_conv_over_rgb(caches):
    """The CRLUIQA-style timm backbone: the torchvision file through timm's loader, adapted to 1 channel."""
    known = _seed_resnet18()
    model, dim = P.pretrained_backbone("resnet18", "imagenet", in_chans=1)
    assert dim == 512
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(model.conv1.weight, known["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].bn2.running_mean, known["layer4.1.bn2.running_mean"])
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 512)  # pooled features, no classifier
    rgb, _ = P.pretrained_backbone("resnet18", "imagenet", in_chans=3)
    assert torch.equal(rgb.conv1.weight, known["conv1.weight"])


def test_timm_backbone_from_the_hugging_face_cache(caches):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("resnet18")
    known = _known(ref.bn1.weight)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    state["bn1.weight"] = known
    revision = "0" * 40
    repo = caches / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(state, repo / "snapshots" / revision / "model.safetensors")

    model, dim = P.pretrained_backbone("resnet18.a1_in1k", "timm")
    assert dim == 512 and torch.equal(model.bn1.weight, known)

    with pytest.raises(
        PretrainedWeightsMissingError,
        match=r"models--timm--resnet34\.a1_in1k[\s\S]*huggingface\.co/timm/resnet34\.a1_in1k",
    ):
        P.pretrained_backbone("resnet34.a1_in1k", "timm")


def test_command_line_lists_the_cache(caches, capsys):
    _seed_resnet18()
    assert P.main([]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("imagenet") and "resnet18" in row)
    assert "cached" in line and "resnet18-f37072fd.pth" in line
    assert any("kinetics400" in row and "missing" in row for row in out.splitlines())
    assert P.main(["--fetch", "r2plus1d_18:kinetics400"]) == 1  # offline: reported, not raised
    assert (
        "fetch it from: https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------------- through the configs
def _seed_panns() -> dict[str, torch.Tensor]:
    ref = Cnn14(num_classes=527)
    state = dict(ref.state_dict())
    state["fc1.weight"] = _known(ref.fc1.weight, 1e-6)
    path = Path(torch.hub.get_dir()) / "checkpoints" / "Cnn14_16k_mAP=0.438.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"iteration": 0, "model": state}, path)
    return state


def test_finetune_imagenet_overlay_through_the_cli(caches, run_cli, tiny_dataset, configs_dir):
    """configs/finetune_plane/weights_file.yaml ("ImageNet Init.") builds its encoder from the cache."""
    from cli_args import tiny_data

    known = _seed_resnet18()
    cli = run_cli(
        [
            "validate",
            "--config",
            configs_dir / "finetune_plane.yaml",
            "--config",
            configs_dir / "finetune_plane" / "weights_file.yaml",
            *tiny_data(tiny_dataset),
            "--data.init_args.num_frames=4",
            "--data.init_args.frame_interval=4",
            "--trainer.precision=32-true",
            "--trainer.fast_dev_run=1",
        ]
    )
    assert cli.model.hparams.weights_file == "imagenet" and cli.model.initialisation == "weights_file"
    assert torch.equal(cli.model.encoder.backbone.conv1.weight, known["conv1.weight"])


def test_dualrep_named_sources_through_the_cli(caches, run_cli, tiny_dataset, configs_dir):
    """DualRepSSL's image_weights / audio_weights take the source names on the command line."""
    from cli_args import tiny_data

    known = _seed_resnet18()
    panns = _seed_panns()
    cli = run_cli(
        [
            "validate",
            "--config",
            configs_dir / "dualrep.yaml",
            *tiny_data(tiny_dataset),
            "--data.init_args.num_frames=4",
            "--data.init_args.frame_interval=4",
            "--data.init_args.audio_seconds=1.0",
            "--data.init_args.window_stride=120",
            "--model.init_args.image_weights=imagenet",
            "--model.init_args.audio_weights=audioset",
            "--trainer.precision=32-true",
            "--trainer.fast_dev_run=1",
        ]
    )
    net = cli.model.net
    assert torch.equal(net.image_encoder.backbone.conv1.weight, known["conv1.weight"])
    assert torch.equal(net.audio_encoder.cnn14.fc1.weight, panns["fc1.weight"])
