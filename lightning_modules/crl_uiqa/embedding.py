"""The embedding network ``P(.)`` of CRL-UIQA's pseudo-labels (Guo et al., MICCAI 2024, Sec. 2.1).

Plain networks only (no Lightning, no data): the data stage that computes the pseudo-labels
(:mod:`datamodules.pseudo_labels`) builds ``P(.)`` here, and :class:`~.module.CRLUIQA` builds the same
network to start its scorer from (``init_from_embedding``). ``embedding`` selects it:

* ``"random"``: a timm ``backbone`` with random weights, seeded (the default; no labels, no download);
* ``"imagenet"``: the timm ``backbone`` with torchvision's ImageNet weights, read by timm's own loader from the
  torch.hub cache (downloaded where a network allows; :func:`lightning_modules.common.pretrained.pretrained_backbone`;
  grey input: the first convolution summed over RGB);
* the path of a :class:`~.plane_classifier.PlaneClassifierModule` checkpoint: its backbone (name read from the
  checkpoint's hyper-parameters), trained on the plane labels (the paper's set-up);
* the path of a DualRepSSL checkpoint: its self-supervised image encoder (torchvision ResNet-18 with its
  ImageNet input normalisation, :class:`~lightning_modules.dualrep_ssl.nets.ImageEncoder`), for data without
  any labels;
* any other local weights file: loaded into a timm ``backbone`` (prefix auto-detected).

The identity of the network (kind, backbone name, weights file hash) is part of the pseudo-label cache key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.common.checkpoints import load_checkpoint
from lightning_modules.common.pretrained import cached_file, pretrained_backbone, weights_source
from lightning_modules.common.weights import load_state_dict_file, load_weights
from lightning_modules.crl_uiqa.nets import build_backbone
from lightning_modules.dualrep_ssl.nets import ENCODER_PREFIXES, ImageEncoder

__all__ = ["DUALREP_IMAGE_PREFIX", "NAMED", "Embedding", "build_embedding_model", "checkpoint_backbone"]

# Where DualRepSSL keeps its image encoder (``DualRepSSL.net.image_encoder``) in a checkpoint's state dict.
DUALREP_IMAGE_PREFIX = ENCODER_PREFIXES["image"]
NAMED = ("random", "imagenet")


@dataclass
class Embedding:
    """A built embedding network and what identifies it.

    Attributes:
        net: ``images B×C×H×W in [-1, 1] -> B×D``.
        backbone: the architecture's name (timm name; ``"resnet18"`` for DualRepSSL's torchvision encoder).
        kind: ``"random"``, ``"imagenet"``, ``"checkpoint"`` (a sonolab checkpoint naming its backbone, e.g. the plane
            classifier), ``"dualrep_ssl"`` or ``"weights"`` (a plain weights file).
        sha256: content hash of the weights file (``None`` for ``"random"``; the cached ImageNet file's for
            ``"imagenet"``).
    """

    net: nn.Module
    backbone: str
    kind: str
    sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        """What the pseudo-label cache key records about the network."""
        return {"kind": self.kind, "backbone": self.backbone, "sha256": self.sha256}


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a weights file (its identity in cache keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_backbone(path: str | os.PathLike) -> str | None:
    """The backbone name stored in a Lightning checkpoint's hyper-parameters, if any (safe loading)."""
    try:
        obj = load_checkpoint(path)
    except Exception as e:  # any unreadable file gets the same clear message
        raise ValueError(f"cannot read embedding weights {path}: {e}") from e
    hp = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    name = hp.get("backbone") if isinstance(hp, Mapping) else None
    return str(name) if name else None


def _is_dualrep(path: str | os.PathLike) -> bool:
    keys = load_state_dict_file(path)
    return any(k.startswith(DUALREP_IMAGE_PREFIX) for k in keys)


def build_embedding_model(
    embedding: str = "random",
    backbone: str = "resnet18",
    seed: int = 0,
    in_channels: int = 1,
    zero_init_last: bool = False,
) -> Embedding:
    """The embedding network ``P(.)`` named by ``embedding`` (see the module docstring).

    A random model is initialised under ``torch.manual_seed(seed)`` inside a forked RNG, so the global random
    state of the run is not touched and every process builds the same network. ``zero_init_last`` (random
    ResNets only) keeps timm's zero init of each residual branch's last norm layer: off by default, since
    with the branches at zero a random ResNet is a chain of strided 1×1 skip convolutions that, on small
    images, sees one pixel.
    """
    if embedding == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                net, _ = build_backbone(backbone, in_channels, zero_init_last=zero_init_last)
            except TypeError:  # a model without residual branches to zero-initialise
                torch.manual_seed(seed)
                net, _ = build_backbone(backbone, in_channels)
        return Embedding(net, backbone, "random")
    if embedding == "imagenet":
        source = weights_source(backbone, "imagenet")  # a clear error for a backbone without ImageNet weights
        net, _ = pretrained_backbone(backbone, "imagenet", in_chans=in_channels)
        return Embedding(net, backbone, "imagenet", file_sha256(cached_file(source)))
    path = Path(embedding)
    if not path.is_file():
        raise FileNotFoundError(
            f"pseudo-label embedding {embedding!r} is neither one of {NAMED} nor an existing weights / "
            "checkpoint file"
        )
    digest = file_sha256(path)
    if _is_dualrep(path):
        encoder = ImageEncoder()
        try:
            load_weights(encoder, path, prefix=DUALREP_IMAGE_PREFIX, ignore=("backbone.fc.*",))
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"embedding {path}: its DualRepSSL image encoder does not load: {e}") from e
        return Embedding(encoder, "resnet18", "dualrep_ssl", digest)
    stored = checkpoint_backbone(path)
    name = stored or backbone
    try:
        net, _ = build_backbone(name, in_channels, path)
    except (ValueError, RuntimeError) as e:
        raise ValueError(
            f"embedding weights {path} do not fit a {name} backbone with {in_channels} input channel(s): {e}"
        ) from e
    return Embedding(net, name, "checkpoint" if stored else "weights", digest)
