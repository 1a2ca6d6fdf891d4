"""Plain ``nn.Module`` networks of VideoQualityGAN (Zhao et al., MICCAI 2022) and its baselines.

Layouts follow the batch contract of ``docs/data.md``: videos are ``B×C×T×H×W`` in ``[-1, 1]``,
optical flow ``B×2×T×H×W`` (pixels), gaze ``B×1×T×H×W`` maps summing to 1 per frame.

Networks
--------
``VideoEncoder`` (G_e)
    video ⊕ flow ``B×(C+F)×T×H×W`` → feature ``B×feature_dim``. ``n_spatial`` layers with kernel
    (1,4,4), stride (1,2,2), padding (0,1,1) halve H and W; then ``n_temporal`` layers with kernel 4,
    stride 2, padding 1 halve T, H and W. Both counts are derived from the input size: ``n_temporal =
    log2(T)`` and ``n_spatial = log2(H / T)``, so after the spatial stages H = W = T and the full stages
    bring T×H×W to 1×1×1. For the published 8×256×256 this gives 5 + 3 layers with widths
    in→32→64→128→256→256→256→256→1024. Widths are ``min(ngf·2^i, max_channels)``, the last layer
    outputs ``feature_dim``. No norm after the first layer, InstanceNorm3d(affine=False) +
    LeakyReLU(0.2) after the others, the last layer is linear (no norm, no activation).
``VideoDecoder`` (G_d, and G_d' for gaze)
    the mirror with ConvTranspose3d (norm + LeakyReLU(0.2) after every layer but the last). The output
    activation is ``output="tanh"`` (videos, default), ``"softmax"`` (a softmax over H×W for every
    frame and channel, so each frame sums to 1: the gaze decoder G_d' uses this, matching the gaze
    contract of the data), or ``"logits"`` (raw values).
``VideoDiscriminator`` (D_V)
    3-D PatchGAN on the video alone: in→ndf k(1,4,4) s(1,2,2) p(0,1,1) + LeakyReLU, then ``n_layers``
    conv k3 s2 p1 + norm + LeakyReLU (widths ndf·min(2^n, 8)), then →1 with k(1,3,3) p(0,1,1). Raw
    (LSGAN) output map ``B×1×T'×H'×W'``.
``FeatureDiscriminator`` (D_F)
    spectral-norm MLP 1024→64→32→16→8→4→1, Dropout(0.2) + LeakyReLU(0.2) after each hidden layer,
    sigmoid output ``B×1``.
``STAE``
    spatio-temporal autoencoder baseline (Zhao et al., ACM MM 2017): shared 3-D conv encoder, a
    reconstruction decoder (T frames) and a future-prediction decoder (the next P frames).

``init_weights(module, std=0.02)`` draws conv / linear weights from N(0, std) (biases 0, affine norm
weights N(1, std)), as the official code does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

__all__ = [
    "STAE",
    "FeatureDiscriminator",
    "VideoDecoder",
    "VideoDiscriminator",
    "VideoEncoder",
    "init_weights",
    "plan_stages",
]

_OUTPUTS = ("tanh", "softmax", "logits", "sigmoid")
_NORMS = ("instance", "batch", "none")


# --------------------------------------------------------------------------------------------- helpers
def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {size!r}")
    return size[0], size[1]


def _log2_exact(value: int) -> int | None:
    """``log2(value)`` if ``value`` is a positive power of two, else ``None``."""
    if value < 1 or value & (value - 1):
        return None
    return value.bit_length() - 1


def plan_stages(
    num_frames: int,
    image_size: int | Sequence[int],
    n_spatial: int | None = None,
    n_temporal: int | None = None,
) -> tuple[int, int]:
    """Number of (spatial, temporal) stages that bring a ``T×H×W`` clip to ``1×1×1``.

    Spatial stages (k(1,4,4) s(1,2,2) p(0,1,1)) halve H and W; temporal ("full") stages (k4 s2 p1)
    halve T, H and W. So T must be a power of two (``n_temporal = log2 T``), the frame square, and
    ``H / T`` a power of two (``n_spatial = log2(H / T)``). Explicit counts are checked against the
    derived ones. Raises ``ValueError`` with the reason for sizes that cannot reach ``1×1×1``.
    """
    h, w = _pair(image_size)
    if h != w:
        raise ValueError(f"frames must be square for the VQA encoder/decoder, got {h}×{w}")
    nt = _log2_exact(int(num_frames))
    if nt is None:
        raise ValueError(
            f"num_frames={num_frames} cannot reach 1 with stride-2 temporal stages: it must be a power of two"
        )
    if h % num_frames or _log2_exact(h // num_frames) is None:
        raise ValueError(
            f"image_size={h} cannot reach 1×1×1 with num_frames={num_frames}: image_size / num_frames must "
            f"be a power of two (>= 1) so the spatial stages stop at H = T and the {nt} full stages "
            f"bring T, H, W to 1 together (e.g. 8×256, 8×64, 4×32)"
        )
    ns = _log2_exact(h // num_frames)
    assert ns is not None
    if n_temporal is not None and n_temporal != nt:
        raise ValueError(
            f"num_frames={num_frames} needs n_temporal={nt} full stages, got n_temporal={n_temporal}"
        )
    if n_spatial is not None and n_spatial != ns:
        raise ValueError(
            f"image_size={h} with num_frames={num_frames} needs n_spatial={ns} spatial stages, "
            f"got n_spatial={n_spatial}"
        )
    if ns + nt < 1:
        raise ValueError("a 1×1×1 input needs no encoder: use num_frames >= 2 or image_size >= 2")
    return ns, nt


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "instance":
        return (nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d)(channels, affine=False)
    if kind == "batch":
        return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {_NORMS}, got {kind!r}")


def _norm_act(kind: str, channels: int, dims: int) -> list[nn.Module]:
    """A norm layer and the LeakyReLU(0.2) after it, in place except after an InstanceNorm.

    PyTorch's instance norm returns a view of a batch-norm output, and an in-place op on a view makes
    autograd copy each gradient back through the view (``CopySlices``) in the backward pass: the
    VideoQualityGAN step at the published shapes took 10.9 s on a 2-core CPU with it and 8.8 s without
    (same values; benchmarks/README.md). The out-of-place LeakyReLU keeps one more activation per layer.
    """
    return [_norm(kind, channels, dims), nn.LeakyReLU(0.2, inplace=kind != "instance")]


def _widths(n_layers: int, ngf: int, max_channels: int, feature_dim: int) -> list[int]:
    return [min(ngf * 2**i, max_channels) for i in range(n_layers - 1)] + [feature_dim]


def _as_feature(z: Tensor, feature_dim: int) -> Tensor:
    """``B×F`` or ``B×F×1×…×1`` → ``B×F``."""
    if z.dim() < 2 or z.shape[1] != feature_dim or z[0, 0].numel() != 1:
        raise ValueError(
            f"expected a B×{feature_dim} (or B×{feature_dim}×1×1×1) feature, got {tuple(z.shape)}"
        )
    return z.reshape(z.shape[0], feature_dim)


def _output_activation(x: Tensor, output: str) -> Tensor:
    if output == "tanh":
        return torch.tanh(x)
    if output == "sigmoid":
        return torch.sigmoid(x)
    if output == "softmax":  # per frame and channel, over the H×W pixels; float32 even under autocast
        shape = x.shape
        return torch.softmax(x.flatten(-2).float(), dim=-1).reshape(shape)
    return x


# -------------------------------------------------------------------------------------------- init
def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """N(0, std) weights for every conv / transposed conv / linear layer (biases zeroed); affine norm
    layers get weights N(1, std) and zero biases. Spectral-normed layers are initialised through their
    original weight. Returns ``module``."""
    for m in module.modules():
        if isinstance(
            m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d | nn.Linear
        ):
            if parametrize.is_parametrized(m, "weight"):
                weight = cast(Any, m).parametrizations.weight.original
            else:
                weight = m.weight
            with torch.no_grad():
                nn.init.normal_(weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            with torch.no_grad():
                nn.init.normal_(m.weight, 1.0, std)
                nn.init.zeros_(m.bias)
    return module


# ----------------------------------------------------------------------------------- video generator
class VideoEncoder(nn.Module):
    """G_e: ``(video B×C×T×H×W, flow B×F×T×H×W or None)`` → feature ``B×feature_dim``.

    Args:
        video_channels: channels of the video (1 for grey ultrasound).
        flow_channels: channels of the flow concatenated to the video (0 = video only, 2 = raw (dx, dy)).
        num_frames, image_size: the clip size T and H (= W); the stage counts are derived from them.
        ngf: width of the first layer; ``max_channels`` caps the widths; ``feature_dim`` is the output.
        n_spatial, n_temporal: optional explicit stage counts, checked against the derived ones.
        norm: ``"instance"`` (default, affine=False), ``"batch"`` or ``"none"``.
    """

    def __init__(
        self,
        video_channels: int = 1,
        flow_channels: int = 2,
        num_frames: int = 8,
        image_size: int | Sequence[int] = 256,
        ngf: int = 32,
        max_channels: int = 256,
        feature_dim: int = 1024,
        n_spatial: int | None = None,
        n_temporal: int | None = None,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if flow_channels < 0 or video_channels < 1:
            raise ValueError("video_channels must be >= 1 and flow_channels >= 0")
        self.video_channels = int(video_channels)
        self.flow_channels = int(flow_channels)
        self.in_channels = self.video_channels + self.flow_channels
        self.num_frames = int(num_frames)
        self.image_size = _pair(image_size)
        self.feature_dim = int(feature_dim)
        self.n_spatial, self.n_temporal = plan_stages(num_frames, image_size, n_spatial, n_temporal)
        n_layers = self.n_spatial + self.n_temporal
        self.widths = _widths(n_layers, ngf, max_channels, feature_dim)
        layers: list[nn.Module] = []
        prev = self.in_channels
        for i, width in enumerate(self.widths):
            spatial = i < self.n_spatial
            last = i == n_layers - 1
            layers.append(
                nn.Conv3d(
                    prev,
                    width,
                    kernel_size=(1, 4, 4) if spatial else 4,
                    stride=(1, 2, 2) if spatial else 2,
                    padding=(0, 1, 1) if spatial else 1,
                    bias=last or i == 0 or norm != "batch",
                )
            )
            if not last:
                layers += _norm_act(norm, width, 3) if i > 0 else [nn.LeakyReLU(0.2, inplace=True)]
            prev = width
        self.net = nn.Sequential(*layers)

    def forward(self, video: Tensor, flow: Tensor | None = None) -> Tensor:
        x = video if flow is None else torch.cat([video, flow], dim=1)
        t, (h, w) = self.num_frames, self.image_size
        if x.dim() != 5 or tuple(x.shape[1:]) != (self.in_channels, t, h, w):
            raise ValueError(
                f"VideoEncoder expects video ⊕ flow of shape B×{self.in_channels}×{t}×{h}×{w} "
                f"({self.video_channels} video + {self.flow_channels} flow channels), got {tuple(x.shape)}"
            )
        return self.net(x).flatten(1)


class VideoDecoder(nn.Module):
    """G_d / G_d': feature ``B×feature_dim`` (or ``B×feature_dim×1×1×1``) → ``B×out_channels×T×H×W``.

    The mirror of :class:`VideoEncoder` (same widths reversed, ConvTranspose3d). ``output`` picks the
    last activation: ``"tanh"`` for videos in [-1, 1] (G_d), ``"softmax"`` for gaze maps that sum to 1
    over every frame (G_d', used with ``out_channels=1``), ``"logits"`` or ``"sigmoid"``.
    """

    def __init__(
        self,
        out_channels: int = 1,
        num_frames: int = 8,
        image_size: int | Sequence[int] = 256,
        ngf: int = 32,
        max_channels: int = 256,
        feature_dim: int = 1024,
        n_spatial: int | None = None,
        n_temporal: int | None = None,
        norm: str = "instance",
        output: str = "tanh",
    ) -> None:
        super().__init__()
        if output not in _OUTPUTS:
            raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
        self.out_channels = int(out_channels)
        self.num_frames = int(num_frames)
        self.image_size = _pair(image_size)
        self.feature_dim = int(feature_dim)
        self.output = output
        self.n_spatial, self.n_temporal = plan_stages(num_frames, image_size, n_spatial, n_temporal)
        n_layers = self.n_spatial + self.n_temporal
        enc_widths = _widths(n_layers, ngf, max_channels, feature_dim)
        # decoder layer j mirrors encoder layer L-1-j: enc_widths[L-1-j] -> enc_widths[L-2-j] (or out)
        chans = [self.out_channels, *enc_widths][::-1]
        layers: list[nn.Module] = []
        for j in range(n_layers):
            temporal = j < self.n_temporal
            last = j == n_layers - 1
            layers.append(
                nn.ConvTranspose3d(
                    chans[j],
                    chans[j + 1],
                    kernel_size=4 if temporal else (1, 4, 4),
                    stride=2 if temporal else (1, 2, 2),
                    padding=1 if temporal else (0, 1, 1),
                    bias=last or norm != "batch",
                )
            )
            if not last:
                layers += _norm_act(norm, chans[j + 1], 3)
        self.widths = chans[1:]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        z = _as_feature(z, self.feature_dim)
        x = self.net(z.reshape(*z.shape, 1, 1, 1))
        return _output_activation(x, self.output)


# ------------------------------------------------------------------------------------ discriminators
class VideoDiscriminator(nn.Module):
    """D_V: 3-D PatchGAN on the video alone (no flow). ``B×C×T×H×W`` → raw scores ``B×1×T'×H'×W'``.

    ``n_layers=None`` derives the number of stride-2 k3 stages from the input size: 3 (as published)
    unless that would leave a normalised map with a single element, in which case fewer. An explicit
    ``n_layers`` that the input size cannot support raises ``ValueError``. ``output_shape`` is the
    ``(T', H', W')`` of the patch map for the configured input.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_frames: int = 8,
        image_size: int | Sequence[int] = 256,
        ndf: int = 64,
        n_layers: int | None = None,
        norm: str = "instance",
        max_mult: int = 8,
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_frames = int(num_frames)
        self.image_size = _pair(image_size)
        h, w = self.image_size
        if h < 2 or w < 2 or num_frames < 1:
            raise ValueError(f"VideoDiscriminator needs frames of at least 2×2, got {num_frames}×{h}×{w}")

        def k3s2(n: int) -> int:
            return (n - 1) // 2 + 1  # k3 s2 p1

        def shapes(n: int) -> list[tuple[int, int, int]]:
            out = [(num_frames, h // 2, w // 2)]
            for _ in range(n):
                t_, h_, w_ = out[-1]
                out.append((k3s2(t_), k3s2(h_), k3s2(w_)))
            return out

        def supported(n: int) -> bool:  # every normalised map keeps > 1 element
            return all(math.prod(s) > 1 for s in shapes(n)[1:])

        if n_layers is None:
            n_layers = 3
            while n_layers > 0 and not supported(n_layers):
                n_layers -= 1
        elif not supported(n_layers):
            raise ValueError(
                f"VideoDiscriminator with n_layers={n_layers} reduces a {num_frames}×{h}×{w} clip to a "
                f"single element before a norm layer; use fewer layers (or n_layers=None to derive it)"
            )
        self.n_layers = int(n_layers)
        t_, h_, w_ = shapes(self.n_layers)[-1]
        self.output_shape = (t_, h_, w_)  # the k(1,3,3) p(0,1,1) head keeps the size

        layers: list[nn.Module] = [
            nn.Conv3d(self.in_channels, ndf, kernel_size=(1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, self.n_layers + 1):
            prev, mult = mult, min(2**n, max_mult)
            layers += [
                nn.Conv3d(ndf * prev, ndf * mult, kernel_size=3, stride=2, padding=1, bias=norm != "batch"),
                *_norm_act(norm, ndf * mult, 3),
            ]
        layers.append(nn.Conv3d(ndf * mult, 1, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, video: Tensor) -> Tensor:
        if video.dim() != 5 or video.shape[1] != self.in_channels:
            raise ValueError(
                f"VideoDiscriminator expects B×{self.in_channels}×T×H×W videos, got {tuple(video.shape)}"
            )
        return self.net(video)


class FeatureDiscriminator(nn.Module):
    """D_F: spectral-norm MLP on features, ``B×feature_dim`` → probability ``B×1``.

    Hidden widths 64→32→16→8→4, each hidden layer followed by Dropout(``dropout``) and
    LeakyReLU(0.2); sigmoid output (``sigmoid=False`` returns the raw score).
    """

    def __init__(
        self,
        feature_dim: int = 1024,
        hidden: Sequence[int] = (64, 32, 16, 8, 4),
        dropout: float = 0.2,
        sigmoid: bool = True,
    ) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        layers: list[nn.Module] = []
        prev = self.feature_dim
        for width in hidden:
            layers += [
                spectral_norm(nn.Linear(prev, width)),
                nn.Dropout(dropout),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            prev = width
        layers.append(spectral_norm(nn.Linear(prev, 1)))
        if sigmoid:
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(_as_feature(z, self.feature_dim))


# ------------------------------------------------------------------------------------------ baselines
class STAE(nn.Module):
    """Spatio-temporal autoencoder baseline (Zhao et al., ACM MM 2017).

    ``forward(clip B×C×T×H×W) -> (recon B×C×T×H×W, future B×C×P×H×W)``: a shared encoder of 3-D convs
    (k3, stride (1,2,2), padding 1: every stage halves H and W and keeps T) and two decoders of
    transposed 3-D convs (k(3,4,4), stride (1,2,2)), one reconstructing the T input frames, one
    predicting the next P frames (tanh outputs). When ``P != T`` the prediction branch first maps the
    T latent time steps to P with a learned linear layer over time (identity when P == T, as in the
    original where both branches have T steps). BatchNorm + LeakyReLU(0.2) after every hidden layer.
    Train with :func:`lightning_modules.vqa_gan.losses.stae_loss`; H and W must be divisible by
    ``2 ** len(channels)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_frames: int = 8,
        num_future: int | None = None,
        channels: Sequence[int] = (32, 64, 128),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_frames = int(num_frames)
        self.num_future = int(num_future) if num_future is not None else self.num_frames
        if self.num_frames < 1 or self.num_future < 1 or not channels:
            raise ValueError("STAE needs num_frames >= 1, num_future >= 1 and at least one stage")
        self.channels = tuple(int(c) for c in channels)
        enc: list[nn.Module] = []
        prev = self.in_channels
        for width in self.channels:
            enc += [
                nn.Conv3d(prev, width, kernel_size=3, stride=(1, 2, 2), padding=1, bias=norm != "batch"),
                *_norm_act(norm, width, 3),
            ]
            prev = width
        self.encoder = nn.Sequential(*enc)
        self.recon_decoder = self._decoder(norm)
        self.pred_decoder = self._decoder(norm)
        self.time_map: nn.Module = (
            nn.Identity()
            if self.num_future == self.num_frames
            else nn.Linear(self.num_frames, self.num_future)
        )

    def _decoder(self, norm: str) -> nn.Sequential:
        chans = [*self.channels[::-1], self.in_channels]
        layers: list[nn.Module] = []
        for j in range(len(self.channels)):
            last = j == len(self.channels) - 1
            layers.append(
                nn.ConvTranspose3d(
                    chans[j],
                    chans[j + 1],
                    kernel_size=(3, 4, 4),
                    stride=(1, 2, 2),
                    padding=1,
                    bias=last or norm != "batch",
                )
            )
            layers += [nn.Tanh()] if last else _norm_act(norm, chans[j + 1], 3)
        return nn.Sequential(*layers)

    def forward(self, clip: Tensor) -> tuple[Tensor, Tensor]:
        f = 2 ** len(self.channels)
        if (
            clip.dim() != 5
            or clip.shape[1] != self.in_channels
            or clip.shape[2] != self.num_frames
            or clip.shape[3] % f
            or clip.shape[4] % f
        ):
            raise ValueError(
                f"STAE expects B×{self.in_channels}×{self.num_frames}×H×W clips with H, W divisible by {f}, "
                f"got {tuple(clip.shape)}"
            )
        h = self.encoder(clip)
        recon = self.recon_decoder(h)
        h_future = (
            h
            if isinstance(self.time_map, nn.Identity)
            else self.time_map(h.transpose(2, -1)).transpose(2, -1)
        )
        return recon, self.pred_decoder(h_future)
