"""Pretrained initialisations the papers use, loaded from the standard caches by the libraries' own loaders.

Every weights option of sonolab's models (``image_weights`` / ``video_weights`` / ``audio_weights`` of
DualRepSSL, ``weights_file`` of the fine-tuning tasks, ``weights_path`` of the zoom-in) takes either a
local file or one of these names:

=============== ============================ ============================================================
name            network                      loaded by (cache file under ``$TORCH_HOME/hub/checkpoints/``)
=============== ============================ ============================================================
``imagenet``    ResNet-18 (image encoder)    torchvision ``ResNet18_Weights.IMAGENET1K_V1``
                                             (``resnet18-f37072fd.pth``)
``imagenet``    GoogLeNet (zoom-in)          torchvision ``GoogLeNet_Weights.IMAGENET1K_V1``
                                             (``googlenet-1378be20.pth``)
``kinetics400`` R(2+1)D-18 (video encoder)   torchvision ``R2Plus1D_18_Weights.KINETICS400_V1``
                                             (``r2plus1d_18-91a641e6.pth``)
``audioset``    CNN14 (audio encoder)        PANNs, Zenodo record 3987831 (``Cnn14_16k_mAP=0.438.pth``,
                                             ``{"model": state_dict, ...}``), via ``torch.hub``
=============== ============================ ============================================================

A file is read from the cache when it is there and downloaded into it otherwise (``TORCH_HOME``, default
``~/.cache/torch``, sets where). Without a network and without the file, :class:`PretrainedWeightsMissingError`
names the expected cache path and the URL to fetch it from. ``python -m lightning_modules.common.pretrained``
lists the sources and whether each is cached; ``--fetch`` downloads them (e.g. on a login node with internet
before offline compute jobs).

Timm backbones (the CRLUIQA embedding and scorer) come from :func:`pretrained_backbone`: ``imagenet``
feeds the same torchvision ImageNet file to timm's own loader, which adapts the first convolution to
``in_chans`` (summing it over RGB for grey input: ``timm.models.adapt_input_conv``) and drops the classifier;
``timm`` loads timm's default pretrained tag of the model from its Hugging Face hub cache (``HF_HOME``,
``HF_HUB_CACHE``).

The torchvision-layout encoders keep their 3-channel first convolution and repeat grey frames to RGB
instead. That equals a 1-channel first convolution whose kernel is the sum of the RGB kernels, each divided
by its channel's normalisation std, plus a constant per output channel from the channel means (away from
the zero-padded border): ``adapt_input_conv``'s sum over RGB up to the per-channel normalisation. It keeps
RGB data and every existing checkpoint loadable.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import GoogLeNet_Weights, ResNet18_Weights, ResNet34_Weights, ResNet50_Weights
from torchvision.models._api import WeightsEnum
from torchvision.models.video import R2Plus1D_18_Weights

from lightning_modules.common.weights import load_state_dict_into, load_weights

__all__ = [
    "SOURCES",
    "SOURCE_NAMES",
    "PretrainedWeightsMissingError",
    "WeightsSource",
    "cached_file",
    "hf_cache_dir",
    "hub_checkpoint_dir",
    "is_source_name",
    "load_init",
    "pretrained_backbone",
    "pretrained_state_dict",
    "weights_source",
]

PANNS_CNN14_URL = "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth?download=1"
PANNS_CNN14_FILE = "Cnn14_16k_mAP=0.438.pth"


class PretrainedWeightsMissingError(FileNotFoundError):
    """A named pretrained source is neither in its cache nor downloadable (no network)."""


@dataclass(frozen=True)
class WeightsSource:
    """One named pretrained initialisation of one architecture.

    ``torchvision`` is the weights enum whose own loader (``get_state_dict``) reads it; ``None`` for
    files torchvision does not know (PANNs), read with ``torch.hub.load_state_dict_from_url``.
    """

    arch: str
    name: str
    description: str
    url: str
    torchvision: WeightsEnum | None = None
    file_name_override: str | None = None

    @property
    def file_name(self) -> str:
        """The cache file name: what ``torch.hub`` derives from the URL (torchvision) or the official name."""
        return self.file_name_override or os.path.basename(urlparse(self.url).path)

    @property
    def cache_path(self) -> Path:
        return hub_checkpoint_dir() / self.file_name


def _tv(arch: str, name: str, description: str, weights: WeightsEnum) -> WeightsSource:
    return WeightsSource(arch, name, description, weights.url, torchvision=weights)


# (arch, name) -> source. ``arch`` is the torchvision / timm model name.
SOURCES: dict[tuple[str, str], WeightsSource] = {
    (s.arch, s.name): s
    for s in (
        _tv("resnet18", "imagenet", "ImageNet ResNet-18", ResNet18_Weights.IMAGENET1K_V1),
        _tv("resnet34", "imagenet", "ImageNet ResNet-34", ResNet34_Weights.IMAGENET1K_V1),
        _tv("resnet50", "imagenet", "ImageNet ResNet-50", ResNet50_Weights.IMAGENET1K_V1),
        _tv("googlenet", "imagenet", "ImageNet GoogLeNet", GoogLeNet_Weights.IMAGENET1K_V1),
        _tv("r2plus1d_18", "kinetics400", "Kinetics-400 R(2+1)D-18", R2Plus1D_18_Weights.KINETICS400_V1),
        WeightsSource(
            "cnn14",
            "audioset",
            "AudioSet PANNs CNN14 (16 kHz)",
            PANNS_CNN14_URL,
            file_name_override=PANNS_CNN14_FILE,
        ),
    )
}
SOURCE_NAMES = tuple(sorted({name for _, name in SOURCES}))
TIMM_HUB = "timm"  # pretrained_backbone: timm's default pretrained tag, from its Hugging Face hub


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (read now, so a changed ``TORCH_HOME`` counts): torch.hub's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub`` (default ``~/.cache/huggingface``).

    Read from the environment now rather than from ``huggingface_hub.constants`` (fixed at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def is_source_name(value: object) -> bool:
    """``True`` for a pretrained-source name (``imagenet``, ...); anything else is taken as a file path.

    A local file that happens to be called like a source is given as ``./imagenet``."""
    return isinstance(value, str) and value in SOURCE_NAMES


def weights_source(arch: str, name: str) -> WeightsSource:
    """The source ``name`` of ``arch``; a clear error if that network has no such initialisation."""
    source = SOURCES.get((arch, name))
    if source is None:
        offered = sorted(n for a, n in SOURCES if a == arch)
        raise ValueError(
            f"{arch} has no pretrained source {name!r}: "
            + (f"it offers {', '.join(offered)}" if offered else "it has no named pretrained source")
            + " (or give the path of a local weights file)"
        )
    return source


def _unavailable(source: WeightsSource, reason: object) -> PretrainedWeightsMissingError:
    return PretrainedWeightsMissingError(
        f"{source.description} weights ({source.name}) are not cached and could not be downloaded "
        f"({reason}).\n  expected file: {source.cache_path}\n  fetch it from: {source.url}\n"
        "Download it on a machine with internet access and copy it to that path (TORCH_HOME sets the cache "
        "root), or run `python -m lightning_modules.common.pretrained --fetch` there; or give the path of a "
        "local weights file instead."
    )


def cached_file(source: WeightsSource, progress: bool = False) -> Path:
    """The cache path of ``source``, downloaded (through :func:`pretrained_state_dict`) when missing."""
    if not source.cache_path.is_file():
        pretrained_state_dict(source.arch, source.name, progress=progress)
    return source.cache_path


def pretrained_state_dict(arch: str, name: str, progress: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of ``arch``'s pretrained source ``name``, from the torch.hub cache (downloaded once).

    Torchvision sources are read by the weights enum's own ``get_state_dict``; PANNs CNN14 by
    ``torch.hub.load_state_dict_from_url`` (its ``"model"`` entry is returned). Both read
    ``$TORCH_HOME/hub/checkpoints/<file>`` when present and download it otherwise.

    Raises:
        ValueError: ``arch`` has no source ``name``.
        PretrainedWeightsMissingError: the file is missing and cannot be downloaded (message: path and URL).
        RuntimeError: the cached file is unreadable (message: delete it to download it again).
    """
    source = weights_source(arch, name)
    try:
        if source.torchvision is not None:
            obj = source.torchvision.get_state_dict(progress=progress, check_hash=True, weights_only=True)
        else:
            obj = torch.hub.load_state_dict_from_url(
                source.url,
                progress=progress,
                file_name=source.file_name,
                weights_only=True,
                map_location="cpu",
            )
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise _unavailable(source, getattr(e, "reason", e)) from None
    except OSError as e:
        if source.cache_path.is_file():
            raise
        raise _unavailable(source, e) from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # a damaged / truncated file
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not source.cache_path.is_file():  # a download that failed its hash check is not kept
            raise _unavailable(source, first_line) from None
        raise RuntimeError(
            f"cannot read the cached {source.description} weights {source.cache_path} (damaged or not a "
            f"weights file: {first_line}). Delete the file to download it again."
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]  # PANNs: {"iteration": int, "model": state_dict}
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RuntimeError(f"{source.cache_path} holds no state dict ({type(obj).__name__}); delete it")
    return dict(obj)


def load_init(
    module: nn.Module,
    arch: str,
    weights: str | os.PathLike,
    prefix: str | None = None,
    strict: bool = True,
    ignore: Sequence[str] = (),
    progress: bool = False,
) -> tuple[list[str], list[str]]:
    """Load ``weights`` into ``module``: a source name of ``arch`` (see the module docstring) or a local file.

    Named sources take the whole pretrained state dict (``prefix`` must be ``None``); files go through
    :func:`~lightning_modules.common.weights.load_weights` with ``prefix``. ``ignore`` / ``strict`` and the
    return value as there.
    """
    if is_source_name(weights):
        if prefix:
            raise ValueError(
                f"a weights prefix ({prefix!r}) applies to weights files, not to source {weights!r}"
            )
        source = weights_source(arch, str(weights))
        state = pretrained_state_dict(arch, str(weights), progress=progress)
        return load_state_dict_into(
            module,
            state,
            origin=f"{source.description} ({source.cache_path})",
            strict=strict,
            ignore=ignore,
        )
    return load_weights(module, weights, prefix=prefix, strict=strict, ignore=ignore)


def _timm_tag(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    return arch, tag or None


def pretrained_backbone(
    name: str,
    weights: str = "imagenet",
    in_chans: int = 3,
    num_classes: int = 0,
    progress: bool = False,
    **timm_kwargs: Any,
) -> tuple[nn.Module, int]:
    """A timm model with pretrained weights, loaded by timm's own loader from the standard caches.

    Args:
        name: timm model name (``"resnet18"``; with ``weights="timm"`` it may carry a pretrained tag,
            ``"resnet50.a1_in1k"``).
        weights: ``"imagenet"``: torchvision's ImageNet weights of ``name`` (ResNet-18/34/50), the file
            the DualRepSSL / fine-tuning encoders use too, from ``$TORCH_HOME/hub/checkpoints``;
            ``"timm"``: timm's default pretrained tag of ``name`` from its Hugging Face hub cache
            (:func:`hf_cache_dir`); or the path of a local torchvision/timm-layout weights file.
        in_chans: input channels. timm adapts the 3-channel pretrained first convolution: summed over RGB
            for 1 channel (``timm.models.adapt_input_conv``), so a grey image gives the response the RGB
            network gives to the same image repeated on three channels.
        num_classes: 0 (default): no classifier, the model returns pooled features; else a new head
            (timm drops the pretrained 1000-class one when the count differs).
        progress: show a download progress bar.
        timm_kwargs: further ``timm.create_model`` arguments (``drop_rate``, ...).

    Returns:
        ``(model, num_features)``: ``model(images B×in_chans×H×W)`` -> ``B×num_features`` when
        ``num_classes == 0``.

    Raises:
        ValueError: unknown model, or no ``imagenet`` source for it.
        PretrainedWeightsMissingError: not cached and no network (message: cache path and URL / hub id).
    """
    arch, tag = _timm_tag(name)
    kwargs: dict[str, Any] = {"in_chans": in_chans, "num_classes": num_classes, **timm_kwargs}
    if weights == TIMM_HUB:
        model = _timm_from_hub(name, kwargs)
    elif is_source_name(weights):
        if tag is not None:
            raise ValueError(
                f"{name!r}: a timm tag goes with weights='timm', not with the source {weights!r}"
            )
        path = cached_file(weights_source(arch, weights), progress=progress)
        # timm's own loader reads the torchvision file, drops the classifier and adapts the first conv
        model = _create(name, kwargs, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained backbone weights {weights!r}: neither a source ({', '.join((*SOURCE_NAMES, TIMM_HUB))}) "
                "nor an existing file"
            )
        model = _create(name, kwargs, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    return model, int(cast(int, model.num_features))  # timm models carry their feature width


def _create(name: str, kwargs: dict[str, Any], **extra: Any) -> nn.Module:
    import timm

    if not timm.is_model(_timm_tag(name)[0]):
        raise ValueError(f"unknown timm model {name!r}")
    return timm.create_model(name, **extra, **kwargs)


def _timm_from_hub(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's Hugging Face hub loader, with the cache directory read from the environment now."""
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(_timm_tag(name)[0]) else None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ValueError(f"timm has no Hugging Face hub weights for {name!r}")
    cache = hf_cache_dir()
    try:
        return timm.create_model(name, pretrained=True, cache_dir=cache, **kwargs)
    except LocalEntryNotFoundError:
        raise PretrainedWeightsMissingError(
            f"timm weights of {name!r} are not cached and could not be downloaded (no network?).\n"
            f"  expected under: {cache / ('models--' + hub_id.replace('/', '--'))}\n"
            f"  fetch them from: https://huggingface.co/{hub_id} (model.safetensors)\n"
            "Download them on a machine with internet access into the same HF_HOME, or use weights='imagenet' "
            "(the torchvision file) or a local weights file."
        ) from None


# ------------------------------------------------------------------------------------------------ command line
def _describe(source: WeightsSource) -> str:
    state = "cached" if source.cache_path.is_file() else "missing"
    return f"{source.name:<12} {source.arch:<12} {state:<8} {source.cache_path}\n{'':<34}{source.url}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lightning_modules.common.pretrained",
        description="List the named pretrained sources and their cache files; --fetch downloads them.",
    )
    ap.add_argument(
        "--fetch",
        nargs="*",
        metavar="ARCH:NAME",
        help="download these sources (e.g. resnet18:imagenet r2plus1d_18:kinetics400 cnn14:audioset); "
        "no value: all of them",
    )
    args = ap.parse_args(argv)
    if args.fetch is None:
        for source in SOURCES.values():
            print(_describe(source))
        return 0
    wanted = args.fetch or [f"{a}:{n}" for a, n in SOURCES]
    status = 0
    for item in wanted:
        arch, _, name = item.partition(":")
        try:
            pretrained_state_dict(arch, name, progress=True)
            print(f"{item}: {weights_source(arch, name).cache_path}")
        except (ValueError, PretrainedWeightsMissingError, RuntimeError) as e:
            print(f"{item}: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
