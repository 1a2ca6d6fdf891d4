"""Networks for CRL-UIQA: a timm backbone, the quality scorer and the plane classifier.

The paper (Guo et al., MICCAI 2024, Sec. 3.2) adds a branch to a YOLOv5 backbone trained for anatomy detection:
a projection layer reduces the channels, the pooled features go through a fully connected layer to a score.
Here the backbone is any timm classification model (``resnet18``, ``resnet50``, ``efficientnet_b0``, ...)
created with ``num_classes=0`` so that it returns pooled features; the head is

    pooled features (feat_dim) -> Linear(feat_dim, proj_dim) + ReLU -> [Dropout] -> Linear(proj_dim, 1) -> sigmoid

so :class:`QualityScorer` returns one score in ``[0, 1]`` per image (the pseudo-labels live in ``[0, 1]``).

:class:`PlaneClassifier` is the "pre-trained classification model" of Sec. 2.1 whose embedding ``P(.)``
defines the pseudo-labels: the same kind of backbone plus a linear head trained on plane labels;
:meth:`PlaneClassifier.embed` returns the backbone feature used for the distances.

Nothing is downloaded: ``timm.create_model(..., pretrained=False)`` and weights only from a local file.
Weight files are read by :mod:`lightning_modules.common.weights` (plain state dict, or a Lightning checkpoint's
``"state_dict"``); :func:`load_backbone_weights` adds prefix auto-detection on top of it.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, cast

import timm
import torch
from torch import nn

from lightning_modules.common.weights import format_keys, load_state_dict_file, load_weights

__all__ = [
    "PlaneClassifier",
    "QualityScorer",
    "build_backbone",
    "detect_prefix",
    "load_backbone_weights",
]


def detect_prefix(file_keys: list[str], module_keys: list[str]) -> str:
    """The prefix that, stripped from the file's keys, matches the most module keys.

    Candidates are every ``p`` such that ``p + module_key`` is a key of the file (``""`` included), e.g.
    ``"model.backbone."`` for a Lightning checkpoint of a module holding ``self.model.backbone``.

    Raises:
        ValueError: no file key ends with a module key, or two prefixes tie for the best match (name one
            explicitly then).
    """
    module_set = set(module_keys)
    counts: Counter[str] = Counter()
    for key in file_keys:
        # Every split point of the key at a "." boundary (plus the whole key) is a candidate.
        starts = [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]
        for s in starts:
            if key[s:] in module_set:
                counts[key[:s]] += 1
    if not counts:
        raise ValueError(
            "no key of the weights file matches the module under any prefix; file keys "
            f"{format_keys(file_keys)}; module keys {format_keys(module_keys)}"
        )
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        tied = [p for p, c in ranked if c == ranked[0][1]]
        raise ValueError(
            f"ambiguous weights prefix: {tied} each match {ranked[0][1]} module keys; pass the prefix explicitly"
        )
    return ranked[0][0]


def load_backbone_weights(
    module: nn.Module,
    path: str | os.PathLike,
    prefix: str | None = "auto",
    strict: bool = True,
) -> tuple[list[str], list[str]]:
    """Load a local weights file into ``module`` (a backbone or a whole scorer/classifier).

    Args:
        module: filled in place.
        path: a plain state dict or a Lightning checkpoint (state dict under ``"state_dict"``); see
            :func:`lightning_modules.common.weights.load_state_dict_file`.
        prefix: stripped from the file's keys; only keys carrying it are used. ``"auto"`` (default) picks the
            prefix matching the most module keys (:func:`detect_prefix`), e.g. ``"model.backbone."`` when a
            backbone is read out of a Lightning checkpoint of a :class:`PlaneClassifier` stored as
            ``self.model``. ``None`` or ``""``: keys as they are.
        strict: raise on missing / unexpected / shape-mismatched keys (the error lists them).

    Returns:
        ``(missing, unexpected)`` keys, as :func:`lightning_modules.common.weights.load_weights`.
    """
    if prefix == "auto":
        file_keys = list(load_state_dict_file(path))
        prefix = detect_prefix(file_keys, list(module.state_dict()))
    return load_weights(module, path, prefix=prefix or None, strict=strict)


def build_backbone(
    name: str,
    in_channels: int = 3,
    pretrained_path: str | os.PathLike | None = None,
    *,
    prefix: str | None = "auto",
    strict: bool = True,
    **timm_kwargs: Any,
) -> tuple[nn.Module, int]:
    """A timm model without its classifier (``num_classes=0``: it returns pooled features).

    Args:
        name: timm model name, e.g. ``"resnet18"``, ``"resnet50"``, ``"efficientnet_b0"``.
        in_channels: 1 for grey images, 3 for RGB.
        pretrained_path: optional local weights file (see :func:`load_backbone_weights`); a file made for
            another ``in_channels`` fails with a shape-mismatch error on the first convolution.
        prefix, strict: passed to :func:`load_backbone_weights`.
        timm_kwargs: extra ``timm.create_model`` arguments (``drop_rate``, ...).

    Returns:
        ``(backbone, feat_dim)``: ``backbone(images B×C×H×W) -> B×feat_dim``.
    """
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels, **timm_kwargs)
    except RuntimeError as e:
        raise ValueError(f"cannot build timm backbone {name!r}: {e}") from e
    if pretrained_path:
        load_backbone_weights(model, pretrained_path, prefix=prefix, strict=strict)
    return model, int(cast(Any, model).num_features)


class QualityScorer(nn.Module):
    """Image -> quality score in ``[0, 1]`` (higher = better).

    ``backbone -> Linear(feat_dim, proj_dim) + ReLU -> Dropout -> Linear(proj_dim, 1) -> sigmoid``.

    Args:
        backbone: timm model name.
        in_channels: image channels (1 grey, 3 RGB).
        pretrained_path: local weights for the backbone (e.g. a trained :class:`PlaneClassifier` checkpoint;
            the prefix is auto-detected).
        proj_dim: width of the projection layer.
        dropout: dropout before the regression head.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        in_channels: int = 1,
        pretrained_path: str | os.PathLike | None = None,
        proj_dim: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(backbone, in_channels, pretrained_path)
        self.projection = nn.Sequential(nn.Linear(self.feat_dim, proj_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(proj_dim, 1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone feature ``B×feat_dim``."""
        return self.backbone(images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid score ``B`` (float32).

        The head runs in float32 even under bf16/fp16 autocast: a bf16 score has ~3 significant digits, so
        close images would tie, and a tie counts as an error in the pairwise accuracy.
        """
        feat = self.embed(images)
        with torch.autocast(device_type=feat.device.type, enabled=False):
            return self.head(self.dropout(self.projection(feat.float()))).squeeze(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Quality score ``B`` in ``[0, 1]``."""
        return torch.sigmoid(self.logits(images))


class PlaneClassifier(nn.Module):
    """Backbone + linear head over plane labels: the embedding model ``P(.)`` for the pseudo-labels.

    Args:
        num_classes: number of plane labels.
        backbone, in_channels, pretrained_path: as :class:`QualityScorer`.
        dropout: dropout before the linear head.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        in_channels: int = 1,
        pretrained_path: str | os.PathLike | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone, self.feat_dim = build_backbone(backbone, in_channels, pretrained_path)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feat_dim, num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone feature ``B×feat_dim`` (the embedding used for pseudo-labels)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Plane logits ``B×num_classes``."""
        return self.head(self.dropout(self.embed(images)))
