"""Networks of the DualRepSSL downstream tasks: encoders with their initialisations, the saliency decoder.

Encoders are DualRepSSL's own (:class:`~lightning_modules.dualrep_ssl.nets.ImageEncoder`, ResNet-18, for
frames; :class:`~lightning_modules.dualrep_ssl.nets.VideoEncoder`, R(2+1)D-18, for clips), started in one
of three ways (Table 1 of the paper):

* ``pretrained``: a DualRepSSL Lightning checkpoint; the encoder's weights are taken out of it by the key
  prefix in :data:`lightning_modules.dualrep_ssl.nets.ENCODER_PREFIXES` ("Ours");
* ``weights_file``: supervised-pretrained weights ("ImageNet Init."): ``imagenet`` (image input: torchvision's
  ImageNet ResNet-18) or ``kinetics400`` (video input: torchvision's Kinetics-400 R(2+1)D-18), loaded by
  torchvision's own loader from the torch.hub cache (``$TORCH_HOME``, downloaded there when a network
  allows; :mod:`lightning_modules.common.pretrained`), or a local torchvision-layout state dict
  (``weights_prefix`` selects a sub-dict);
* neither: random initialisation ("Rand. Init.").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.common.pretrained import is_source_name
from lightning_modules.common.weights import load_state_dict_file, load_weights
from lightning_modules.dualrep_ssl.nets import ENCODER_PREFIXES, ImageEncoder, VideoEncoder

__all__ = ["INPUTS", "SaliencyDecoder", "build_encoder", "initialisation", "log_softmax_map"]

INPUTS = ("image", "video")
FEATURE_CHANNELS = (64, 128, 256, 512)  # layer1..layer4 of ResNet-18 and R(2+1)D-18
# the named supervised initialisation of each input's encoder (weights_file: <name>)
SUPERVISED_SOURCES = {"image": "imagenet", "video": "kinetics400"}


def initialisation(pretrained: str | None, weights_file: str | None) -> str:
    """``"ssl"``, ``"weights_file"`` or ``"random"``; both paths set is a config error."""
    if pretrained and weights_file:
        raise ValueError(
            "model.init_args.pretrained (a DualRepSSL checkpoint) and model.init_args.weights_file "
            "(a supervised weights file) are alternatives: set one of them, or neither for random init"
        )
    return "ssl" if pretrained else "weights_file" if weights_file else "random"


def build_encoder(
    input: str,
    pretrained: str | None = None,
    weights_file: str | None = None,
    weights_prefix: str | None = None,
) -> ImageEncoder | VideoEncoder:
    """The encoder for ``input`` ("image" or "video"), initialised as described in the module docstring."""
    if input not in INPUTS:
        raise ValueError(f"model.init_args.input={input!r} is not one of {INPUTS}")
    how = initialisation(pretrained, weights_file)
    cls = ImageEncoder if input == "image" else VideoEncoder
    if how == "weights_file":
        if is_source_name(weights_file) and weights_file != SUPERVISED_SOURCES[input]:
            raise ValueError(
                f"model.init_args.weights_file={weights_file!r} does not fit input: {input}; the supervised "
                f"initialisation of the {input} encoder is {SUPERVISED_SOURCES[input]!r}"
            )
        return cls(weights_path=weights_file, weights_prefix=weights_prefix)
    encoder = cls()
    if how == "ssl":
        assert pretrained is not None
        prefix = ENCODER_PREFIXES[input]
        state = load_state_dict_file(pretrained)
        if not any(k.startswith(prefix) for k in state):
            hint = " (pretrained without the image stream? use input: video)" if input == "image" else ""
            raise ValueError(
                f"{pretrained} holds no {input} encoder (no key starts with {prefix!r}){hint}; "
                "model.init_args.pretrained must be a DualRepSSL checkpoint"
            )
        load_weights(encoder, pretrained, prefix=prefix)
    return encoder


class _ConvBNReLU(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class SaliencyDecoder(nn.Module):
    """Top-down decoder from the encoder's ``layer1`` … ``layer4`` maps to one saliency logit map.

    Replaces the encoder's last layers (global pooling + classifier). Starting from ``layer4``, each stage
    upsamples (bilinear) to the next shallower map's size, concatenates it (skip connection) and applies
    two 3×3 conv + BN + ReLU; a 1×1 convolution gives the logits, upsampled to the output size. Video maps
    (B×C×T×H×W) are averaged over time first.

    Args:
        channels: output channels of the four stages, deepest first.
        in_channels: channels of ``layer1`` … ``layer4`` (ResNet-18 / R(2+1)D-18: 64, 128, 256, 512).
    """

    def __init__(
        self,
        channels: tuple[int, ...] | list[int] = (256, 128, 64, 32),
        in_channels: tuple[int, ...] | list[int] = FEATURE_CHANNELS,
    ):
        super().__init__()
        if len(channels) != len(in_channels):
            raise ValueError(
                f"decoder channels {list(channels)} need one entry per feature map ({len(in_channels)})"
            )
        deep_first = list(reversed(in_channels))
        self.stages = nn.ModuleList()
        prev = 0
        for ch, skip in zip(channels, deep_first):
            self.stages.append(nn.Sequential(_ConvBNReLU(prev + skip, ch), _ConvBNReLU(ch, ch)))
            prev = ch
        self.head = nn.Conv2d(prev, 1, kernel_size=1)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """``maps``: layer1..layer4 (2-D or 3-D); returns B×1×H×W logits at ``size``."""
        maps = [m.mean(dim=2) if m.dim() == 5 else m for m in maps]
        x: torch.Tensor | None = None
        for stage, skip in zip(self.stages, reversed(maps)):
            if x is not None:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                skip = torch.cat([x, skip.to(x.dtype)], dim=1)
            x = stage(skip)
        assert x is not None
        logits = self.head(x)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def log_softmax_map(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities over the pixels of each B×1×H×W map, in float32 (bf16 would blur the tails)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        flat = logits.float().flatten(1)
        return torch.log_softmax(flat, dim=1).view_as(logits)
