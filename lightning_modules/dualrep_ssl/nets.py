"""DualRepSSL networks (Gridach et al., 2023): encoders, projections, fusion heads and the tied model.

Plain ``nn.Module``s; the losses live in :mod:`.losses`. Batch layouts follow ``docs/data.md``:
video ``B×C×T×H×W`` and image ``B×C×H×W`` in ``[-1, 1]`` with ``C`` = 1 (grey) or 3; audio
``B×1×mels×frames`` log-mel (CNN14 front end, computed by the data layer).

Encoders (section 2.1 and 3 of the paper):

* :class:`ImageEncoder`: torchvision ResNet-18, classifier removed, 512-d;
* :class:`VideoEncoder`: torchvision R(2+1)D-18, classifier removed, 512-d;
* :class:`AudioEncoder`: PANNs CNN14 without the AudioSet head, 2048-d.

Each encoder takes an optional ``weights_path``: a local file, or the name of the pretrained initialisation
the paper uses, loaded by torchvision's own weights loader from the torch.hub cache (``$TORCH_HOME``; see
:mod:`lightning_modules.common.pretrained`): ``imagenet`` (ResNet-18), ``kinetics400`` (R(2+1)D-18),
``audioset`` (PANNs CNN14). Grey frames are repeated to the 3 channels these weights were trained on rather
than the first convolution being summed over RGB (timm's ``adapt_input_conv``): repeating equals a
1-channel convolution with the RGB kernels summed, each divided by its channel's std, plus a constant per
output channel (away from the zero-padded border), i.e. that sum up to the per-channel normalisation; and the
3-channel layout keeps RGB data and existing checkpoints loadable.

The video encoder's 3-D convolutions are :class:`LowPrecisionSafeConv3d`: on the CPU, oneDNN's bf16 / fp16
Conv3d computes a wrong weight gradient (NaN or ~1e30) when an input dimension is smaller than the
kernel and padded, e.g. R(2+1)D's 3-tap temporal convolutions over the 2 frames left in ``layer3`` /
``layer4`` (torch 2.14 CPU; 8 or 14 input frames both reach it), and crashes outright on 1-pixel inputs
of strided kernels. Those (tiny) convolutions run in float32 instead; everything else keeps bf16.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.video import r2plus1d_18

from lightning_modules.common.pretrained import load_init
from lightning_modules.dualrep_ssl.cnn14 import Cnn14

__all__ = [
    "ENCODER_PREFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINETICS_MEAN",
    "KINETICS_STD",
    "AudioEncoder",
    "BNProjection",
    "DualRepNet",
    "FusionHead",
    "ImageEncoder",
    "LowPrecisionSafeConv3d",
    "Projection",
    "VideoEncoder",
    "make_conv3d_low_precision_safe",
]

# Where each encoder lives in a DualRepSSL checkpoint's state dict (``DualRepSSL.net.<name>``): downstream
# networks take an encoder out of a pretraining checkpoint by these prefixes.
ENCODER_PREFIXES = {
    "video": "net.video_encoder.",
    "audio": "net.audio_encoder.",
    "image": "net.image_encoder.",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def _to_rgb01_normalised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` input with 1 or 3 channels on dim 1 -> 3 channels, ``[0, 1]``, then ``(x - mean) / std``."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, *x.shape[2:])
    elif x.shape[1] != 3:
        raise ValueError(f"expected 1 (grey) or 3 channels on dim 1, got shape {tuple(x.shape)}")
    return ((x + 1.0) * 0.5 - mean) / std


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _cpu_low_precision(x: torch.Tensor) -> torch.dtype | None:
    """The low-precision dtype a CPU convolution of ``x`` would run in (autocast or bf16 weights), else None."""
    if x.device.type != "cpu":
        return None
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _LOW_PRECISION:
        return torch.get_autocast_dtype("cpu")
    return x.dtype if x.dtype in _LOW_PRECISION else None


class LowPrecisionSafeConv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes in float32 where oneDNN's CPU bf16/fp16 kernels are wrong.

    That is when some input dimension (T, H or W) is smaller than the kernel and padded (see the module
    docstring); the output is cast back to the low-precision dtype. Same parameters and state-dict keys
    as ``nn.Conv3d``; on GPUs and in float32 it is ``nn.Conv3d``.
    """

    def _unsafe(self, x: torch.Tensor) -> bool:
        padding = (1, 1, 1) if isinstance(self.padding, str) else self.padding
        return any(n < k and p > 0 for n, k, p in zip(x.shape[2:], self.kernel_size, padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _cpu_low_precision(x)
        if dtype is None or not self._unsafe(x):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast("cpu", enabled=False):
            out = self._conv_forward(x.float(), self.weight.float(), bias)
        return out.to(dtype)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def make_conv3d_low_precision_safe(module: ModuleT) -> ModuleT:
    """Turn every plain ``nn.Conv3d`` inside ``module`` into :class:`LowPrecisionSafeConv3d` (in place)."""
    for m in module.modules():
        if type(m) is nn.Conv3d:
            m.__class__ = LowPrecisionSafeConv3d
    return module


class ImageEncoder(nn.Module):
    """ResNet-18 image encoder: ``B×C×H×W`` in ``[-1, 1]`` (C = 1 or 3) -> ``B×512``.

    Grey input is repeated to 3 channels; ``[-1, 1]`` is mapped to ``[0, 1]`` then ImageNet-normalised.
    ``weights_path``: ``"imagenet"`` (torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` from the torch.hub
    cache), a local torchvision-layout ResNet-18 state dict (its ``fc.*`` keys are ignored), or any
    checkpoint holding one under ``weights_prefix`` (e.g. ``"model.image_encoder.backbone."``).
    """

    out_dim = 512
    mean: torch.Tensor  # buffers (register_buffer), which the type checker cannot see
    std: torch.Tensor

    def __init__(self, weights_path: str | os.PathLike | None = None, weights_prefix: str | None = None):
        super().__init__()
        self.backbone = resnet18(weights=None)
        self.backbone.fc = nn.Identity()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights_path:
            load_init(self.backbone, "resnet18", weights_path, prefix=weights_prefix, ignore=("fc.*",))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4:
            raise ValueError(f"ImageEncoder expects B×C×H×W, got shape {tuple(image.shape)}")
        return self.backbone(_to_rgb01_normalised(image, self.mean, self.std))

    def feature_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of ``layer1`` … ``layer4`` (64/128/256/512 channels at strides 4/8/16/32), for dense heads."""
        if image.dim() != 4:
            raise ValueError(f"ImageEncoder expects B×C×H×W, got shape {tuple(image.shape)}")
        bb = self.backbone
        x = _to_rgb01_normalised(image, self.mean, self.std)
        x = bb.maxpool(bb.relu(bb.bn1(bb.conv1(x))))
        maps = []
        for layer in (bb.layer1, bb.layer2, bb.layer3, bb.layer4):
            x = layer(x)
            maps.append(x)
        return maps


class VideoEncoder(nn.Module):
    """R(2+1)D-18 video encoder: ``B×C×T×H×W`` in ``[-1, 1]`` (C = 1 or 3) -> ``B×512``.

    Grey input is repeated to 3 channels; ``[-1, 1]`` is mapped to ``[0, 1]`` then normalised with the
    Kinetics-400 mean/std of torchvision's video models. ``weights_path``: ``"kinetics400"``
    (torchvision's ``R2Plus1D_18_Weights.KINETICS400_V1`` from the torch.hub cache), a local
    torchvision-layout ``r2plus1d_18`` state dict (``fc.*`` ignored), or a checkpoint holding one under
    ``weights_prefix``.
    """

    out_dim = 512
    mean: torch.Tensor  # buffers (register_buffer), which the type checker cannot see
    std: torch.Tensor

    def __init__(self, weights_path: str | os.PathLike | None = None, weights_prefix: str | None = None):
        super().__init__()
        self.backbone = make_conv3d_low_precision_safe(r2plus1d_18(weights=None))
        self.backbone.fc = nn.Identity()
        self.register_buffer("mean", torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1), persistent=False)
        if weights_path:
            load_init(self.backbone, "r2plus1d_18", weights_path, prefix=weights_prefix, ignore=("fc.*",))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5:
            raise ValueError(f"VideoEncoder expects B×C×T×H×W, got shape {tuple(video.shape)}")
        return self.backbone(_to_rgb01_normalised(video, self.mean, self.std))

    def feature_maps(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of ``layer1`` … ``layer4`` (B×C×T'×H'×W'; 64/128/256/512 channels, spatial strides
        2/4/8/16, temporal strides 1/2/4/8), for dense heads."""
        if video.dim() != 5:
            raise ValueError(f"VideoEncoder expects B×C×T×H×W, got shape {tuple(video.shape)}")
        bb = self.backbone
        x = bb.stem(_to_rgb01_normalised(video, self.mean, self.std))
        maps = []
        for layer in (bb.layer1, bb.layer2, bb.layer3, bb.layer4):
            x = layer(x)
            maps.append(x)
        return maps


class AudioEncoder(nn.Module):
    """CNN14 audio encoder without the AudioSet head: log-mel ``B×1×mels×frames`` -> ``B×2048``.

    ``weights_path``: ``"audioset"`` (the PANNs ``Cnn14_16k_mAP=0.438.pth`` from the torch.hub cache), a
    local CNN14 checkpoint (public PANNs layout: its front-end and ``fc_audioset`` keys are ignored), or a
    checkpoint holding one under ``weights_prefix``.
    """

    out_dim = Cnn14.embedding_dim

    def __init__(
        self,
        mel_bins: int = 64,
        weights_path: str | os.PathLike | None = None,
        weights_prefix: str | None = None,
    ):
        super().__init__()
        self.cnn14 = Cnn14(mel_bins=mel_bins, num_classes=None)
        if weights_path:
            self.cnn14.load_pretrained(weights_path, prefix=weights_prefix)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.cnn14(logmel)["embedding"]


class Projection(nn.Module):
    """Linear projection to the shared latent space (MMCL, section 3: "linear projections ... 512")."""

    def __init__(self, in_dim: int, out_dim: int = 512):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class BNProjection(nn.Module):
    """MMSL projection ``mu(x) = BN(theta_x F_x + b_x)`` (section 2.3): Linear then BatchNorm1d."""

    def __init__(self, in_dim: int, out_dim: int = 512):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


class FusionHead(nn.Module):
    """Residual fusion ``U(F_v, F_x) = F_x + V_theta(F_v, F_x)`` (Eq. 1 for audio, Eq. 2 for image).

    Our reading of the paper: ``V_theta`` is "concatenation and linear projection", i.e.
    ``V_theta(F_v, F_x) = W [F_v ; F_x] + b`` with ``W`` of shape ``dim × 2·dim``, and the residual is added
    onto the audio (``F_va``) or image (``F_vi``) embedding. Because ``F_va`` is compared to ``F_v`` by
    cosine similarity (Eq. 4/6) and added to ``F_a``, all three must share one dimension: the fusion
    therefore works on the 512-d latent embeddings (after :class:`Projection`), not on the raw backbone
    features (512/2048-d).
    """

    def __init__(self, dim: int = 512):
        super().__init__()
        self.fc = nn.Linear(2 * dim, dim)

    def forward(self, f_v: torch.Tensor, f_x: torch.Tensor) -> torch.Tensor:
        return f_x + self.fc(torch.cat([f_v, f_x], dim=1))


class DualRepNet(nn.Module):
    """The DualRepSSL model: three encoders, MMCL projections + fusion heads, MMSL projections.

    Args:
        use_image: include the image branch (``False`` = the paper's "w/o image" ablation).
        use_mmcl: build the MMCL heads (linear projections to ``latent_dim`` and the two fusion heads).
        use_mmsl: build the MMSL heads (Linear + BatchNorm1d projections to ``latent_dim``).
        latent_dim: latent dimension (512 in the paper).
        mel_bins: mel bins of the audio input (64, CNN14 16 kHz front end).
        video_weights, audio_weights, image_weights: optional initial weights of the encoders: a local
            file (with optional ``*_prefix`` inside it) or the paper's pretrained source, ``kinetics400``,
            ``audioset`` and ``imagenet`` respectively (see each encoder).
        freeze_audio: keep the audio encoder fixed (no gradients, BatchNorm/dropout in eval mode), for
            using a pretrained CNN14 as a fixed feature extractor. The paper says the audio CNN is
            pretrained but not whether it is fine-tuned; default ``False`` (fine-tuned).

    ``forward(video, audio, image=None)`` returns a dict. Always: ``h_v`` (B×512), ``h_a`` (B×2048) and,
    with ``use_image``, ``h_i`` (B×512): the backbone embeddings. With ``use_mmcl``: ``F_v``, ``F_a``,
    ``F_va`` (and ``F_i``, ``F_vi`` with the image), all ``B×latent_dim``: the latent embeddings of
    Eq. 3-8, named like the arguments of :func:`.losses.mmcl_loss`. With ``use_mmsl``: ``mu_v``, ``mu_a``
    (and ``mu_i``), ``B×latent_dim``: the MMSL projections of Eq. 9-12, named like :func:`.losses.mmsl_loss`.
    """

    def __init__(
        self,
        use_image: bool = True,
        use_mmcl: bool = True,
        use_mmsl: bool = True,
        latent_dim: int = 512,
        mel_bins: int = 64,
        video_weights: str | None = None,
        audio_weights: str | None = None,
        image_weights: str | None = None,
        video_weights_prefix: str | None = None,
        audio_weights_prefix: str | None = None,
        image_weights_prefix: str | None = None,
        freeze_audio: bool = False,
    ):
        super().__init__()
        if not (use_mmcl or use_mmsl):
            raise ValueError("DualRepNet needs use_mmcl or use_mmsl (or both)")
        self.use_image = use_image
        self.use_mmcl = use_mmcl
        self.use_mmsl = use_mmsl
        self.latent_dim = latent_dim
        self.freeze_audio = freeze_audio

        self.video_encoder = VideoEncoder(video_weights, video_weights_prefix)
        self.audio_encoder = AudioEncoder(mel_bins, audio_weights, audio_weights_prefix)
        self.image_encoder = ImageEncoder(image_weights, image_weights_prefix) if use_image else None
        dims = {"v": VideoEncoder.out_dim, "a": AudioEncoder.out_dim, "i": ImageEncoder.out_dim}
        modalities = ("v", "a", "i") if use_image else ("v", "a")

        if use_mmcl:
            self.mmcl_proj = nn.ModuleDict({m: Projection(dims[m], latent_dim) for m in modalities})
            self.fusion_va = FusionHead(latent_dim)
            self.fusion_vi = FusionHead(latent_dim) if use_image else None
        if use_mmsl:
            self.mmsl_proj = nn.ModuleDict({m: BNProjection(dims[m], latent_dim) for m in modalities})

        if freeze_audio:
            self.audio_encoder.requires_grad_(False)
            self.audio_encoder.eval()

    def train(self, mode: bool = True) -> DualRepNet:
        super().train(mode)
        if self.freeze_audio:
            self.audio_encoder.eval()
        return self

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, image: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.use_image and image is None:
            raise ValueError("DualRepNet(use_image=True) needs an image batch")
        h = {"v": self.video_encoder(video), "a": self.audio_encoder(audio)}
        if self.use_image:
            assert self.image_encoder is not None and image is not None
            h["i"] = self.image_encoder(image)
        out = {f"h_{m}": x for m, x in h.items()}

        if self.use_mmcl:
            f = {m: self.mmcl_proj[m](x) for m, x in h.items()}
            out.update({f"F_{m}": x for m, x in f.items()})
            out["F_va"] = self.fusion_va(f["v"], f["a"])
            if self.use_image:
                assert self.fusion_vi is not None
                out["F_vi"] = self.fusion_vi(f["v"], f["i"])
        if self.use_mmsl:
            out.update({f"mu_{m}": self.mmsl_proj[m](x) for m, x in h.items()})
        return out
