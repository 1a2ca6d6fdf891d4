"""Sequence RandAugment for ultrasound video + gaze maps (cLSTMU-Net, Savochkina et al. 2022, Sec. 2.2).

The paper uses RandAugment-style policies RA(n, m): ``n`` transforms drawn from a list of K = 16, each at
magnitude ``m``; RA(7, 9) was best. The paper's 16 transforms (from its ref. [5]) are not public, so this
module defines its own list of 16 ultrasound-suited transforms (below). Paper facts we keep:

- one draw per *sequence*: "the type of augmentation transformation is shared between each image in a
  sequence", so which transforms, their signs/magnitudes and every random field (noise, speckle, shadow
  geometry) are drawn once and applied identically to all T frames;
- geometric transforms move the gaze maps with the image; speckle (and every other intensity / noise
  transform) changes the image only, the maps stay as they are;
- elastic and grid distortions are *not* in the list (the paper removed them);
- ``mixed=True`` is the paper's "Mix.RA": mixed-example data augmentation (Summers & Dinneen 2019, used for
  ultrasound by Lee et al. 2021, the paper's ref. [7]) combines the sample with a second sample and "these
  transformations are applied to the mixed-example images, with which we share the m hyperparameter". So the
  sequence is first mixed with a partner sequence (image and gaze maps alike, one mask for all frames), then
  RA(n, m) is applied to the mixed sequence; ``m`` also sets the partner's share (table below).

Magnitude. ``m`` is on the RandAugment 0–30 scale; ``level = m / 30``. Each transform maps ``level`` to its
own range; transforms marked ± take a random sign per draw (RandAugment style). Values at m = 9 and m = 30:

=================  =====  ==============================================================  ===========  ===========
transform          kind   parameter at ``level``                                          m = 9        m = 30
=================  =====  ==============================================================  ===========  ===========
rotate             geom   angle ±30°·level about the image centre                         ±9°          ±30°
shear_x            geom   shear angle ±atan(0.3·level) along x                            ±5.1°        ±16.7°
shear_y            geom   shear angle ±atan(0.3·level) along y                            ±5.1°        ±16.7°
translate_x        geom   shift ±0.3·level·W                                              ±9 % W       ±30 % W
translate_y        geom   shift ±0.3·level·H                                              ±9 % H       ±30 % H
scale              geom   zoom factor (1 + 0.3·level)^±1 about the centre                 1.09 / 0.92  1.3 / 0.77
hflip              geom   left-right mirror (no magnitude)                                –            –
gain               int    intensity × (1 ± 0.9·level)  (overall receive gain)             ×1.27/0.73   ×1.9/0.1
contrast           int    (x − mean)·(1 ± 0.9·level) + mean, mean of the whole sequence   1.27 / 0.73  1.9 / 0.1
gamma              int    x^γ, γ = (1 + level)^±1  (log-compression / display curve)      1.3 / 0.77   2 / 0.5
tgc                int    depth gain ramp 1 ∓ a (top) → 1 ± a (bottom), a = 0.6·level     a = 0.18     a = 0.6
gaussian_blur      noise  Gaussian blur, σ = 0.02·level·min(H, W) px                      0.6 % size   2 % size
gaussian_noise     noise  additive N(0, σ²), σ = 0.1·level (on [0, 1] intensities)        σ = 0.03     σ = 0.1
speckle            noise  multiplicative 1 + level·(R − 1), R Rayleigh with mean 1        std 0.16     std 0.52
sharpness          noise  unsharp blend factor 1 ± 0.9·level (torchvision sharpness)      1.27 / 0.73  1.9 / 0.1
acoustic_shadow    US     wedge from the probe apex darkened by 0.9·level                 −27 %        −90 %
=================  =====  ==============================================================  ===========  ===========

Choices and justification:

- Geometric ops model probe position/orientation changes and zoom (depth/zoom settings); ``hflip`` models
  the left-right orientation convention of the probe, which sonographers flip freely. There is no vertical
  flip: depth runs top to bottom in every ultrasound image (near field at the top), a flipped image is not a
  plausible frame. The drawn geometric ops are merged into ONE ``torchvision.transforms.v2.functional.affine``
  call (angle, translate, scale, shear; at most one of each since ops are drawn without replacement), so
  frames and maps are resampled once, bilinearly, with the same parameters; the flip is exact. Geometry is
  applied first, then the image-only ops in their drawn order (noise fields are therefore not warped).
  Out-of-view pixels are filled with black (−1) in the video and 0 in the maps; maps are renormalised to sum
  1 per frame (a frame whose whole map left the view becomes uniform).
- ``gain``, ``contrast``, ``gamma`` and ``tgc`` are the scanner's gain, dynamic range, display curve and
  time-gain-compensation knobs; ``tgc`` is a linear gain ramp along depth (rows), the typical TGC slider
  mis-setting.
- ``gaussian_blur`` / ``sharpness`` model resolution differences between probes and focal settings;
  ``gaussian_noise`` electronic noise; ``speckle`` the multiplicative interference pattern of coherent
  imaging (fully developed speckle has Rayleigh amplitude statistics), blended with ``level``.
- ``acoustic_shadow`` (the ultrasound-specific op): bone (skull, spine, ribs) and calcifications block the
  beam and leave a dark wedge *behind* them along the beam direction. We darken a wedge starting at a random
  depth and radiating from the probe apex (top centre, the origin of sector/curvilinear beams), with soft
  edges. It changes the image only: a shadow does not move anatomy and the recorded gaze stays where it was.
  We preferred it to a sector/fan crop, which would black out regions the sonographer may have looked at and
  so make the gaze target inconsistent with the image.
- Transforms are drawn without replacement (n ≤ K); intensities are clamped to [0, 1] after every op and the
  output video is in [−1, 1]; several channels (grey replicated to RGB) get the same field.

Mixed example (``mixed=True``): partner share ``λ ~ U(0, λ_max)``, ``λ_max = min(0.5, m/30)`` (m = 9 →
up to 30 %), one method drawn from ``mix_methods``: ``vertical_concat`` (a top or bottom band of λ·H rows
comes from the partner), ``horizontal_concat`` (left or right band of columns), ``row_interval`` /
``column_interval`` (a band at a random position), ``random_square`` (a rectangle of area λ·H·W), ``mixup``
(linear blend ``(1 − λ)·a + λ·b``). The mask (or λ) is the same for every frame and for image and maps;
mixed maps are renormalised to sum 1. Partner = another training sequence of the same shape (``partner=``
in ``__call__``; :meth:`SequenceRandAugment.apply_batch` pairs the items of a batch by a random
permutation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

__all__ = [
    "DEFAULT_TRANSFORMS",
    "GEOMETRIC_TRANSFORMS",
    "IMAGE_ONLY_TRANSFORMS",
    "MAX_MAGNITUDE",
    "MIX_METHODS",
    "MixDraw",
    "PolicyDraw",
    "SequenceRandAugment",
]

MAX_MAGNITUDE = 30.0

GEOMETRIC_TRANSFORMS: tuple[str, ...] = (
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "scale",
    "hflip",
)
IMAGE_ONLY_TRANSFORMS: tuple[str, ...] = (
    "gain",
    "contrast",
    "gamma",
    "tgc",
    "gaussian_blur",
    "gaussian_noise",
    "speckle",
    "sharpness",
    "acoustic_shadow",
)
DEFAULT_TRANSFORMS: tuple[str, ...] = GEOMETRIC_TRANSFORMS + IMAGE_ONLY_TRANSFORMS  # K = 16
MIX_METHODS: tuple[str, ...] = (
    "vertical_concat",
    "horizontal_concat",
    "row_interval",
    "column_interval",
    "random_square",
    "mixup",
)


# ---------------------------------------------------------------------------------------------------------
# random helpers (everything goes through the optional torch.Generator)
# ---------------------------------------------------------------------------------------------------------


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    u = torch.rand((), generator=generator, device=_gen_device(generator)).item()
    return low + (high - low) * u


def _sign(generator: torch.Generator | None) -> float:
    return 1.0 if _uniform(generator) < 0.5 else -1.0


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    if high <= low:
        return low
    return int(torch.randint(low, high + 1, (), generator=generator, device=_gen_device(generator)).item())


def _randn(generator: torch.Generator | None, shape: Sequence[int]) -> Tensor:
    return torch.randn(*shape, generator=generator, device=_gen_device(generator))


# ---------------------------------------------------------------------------------------------------------
# draws
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PolicyDraw:
    """One RA draw: the chosen ops in order with their parameters (random fields included)."""

    ops: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.ops]

    @property
    def geometric(self) -> bool:
        return any(name in GEOMETRIC_TRANSFORMS for name in self.names)


@dataclass
class MixDraw:
    """One mixed-example draw: method, partner share ``lam`` and the keep-mask (1 = primary) or None."""

    method: str
    lam: float
    mask: Tensor | None  # H×W float, 1 where the primary sequence is kept; None for "mixup"


def _draw_op(name: str, level: float, H: int, W: int, g: torch.Generator | None) -> dict[str, Any]:
    if name == "rotate":
        return {"angle": _sign(g) * 30.0 * level}
    if name in ("shear_x", "shear_y"):
        return {"shear": _sign(g) * math.degrees(math.atan(0.3 * level))}
    if name == "translate_x":
        return {"shift": _sign(g) * 0.3 * level * W}
    if name == "translate_y":
        return {"shift": _sign(g) * 0.3 * level * H}
    if name == "scale":
        return {"scale": (1.0 + 0.3 * level) ** _sign(g)}
    if name == "hflip":
        return {}
    if name in ("gain", "contrast", "sharpness"):
        return {"factor": 1.0 + _sign(g) * 0.9 * level}
    if name == "gamma":
        return {"gamma": (1.0 + level) ** _sign(g)}
    if name == "tgc":
        return {"slope": _sign(g) * 0.6 * level}
    if name == "gaussian_blur":
        return {"sigma": 0.02 * level * min(H, W)}
    if name == "gaussian_noise":
        return {"sigma": 0.1 * level, "field": _randn(g, (H, W))}
    if name == "speckle":
        a, b = _randn(g, (H, W)), _randn(g, (H, W))
        rayleigh = torch.sqrt(a * a + b * b) / math.sqrt(math.pi / 2.0)  # Rayleigh(σ=1) / its mean
        return {"strength": level, "field": rayleigh}
    if name == "acoustic_shadow":
        return {
            "attenuation": 0.9 * level,
            "direction_deg": _uniform(g, -25.0, 25.0),
            "half_width_deg": _uniform(g, 2.0, 6.0),
            "onset": _uniform(g, 0.2, 0.6),
        }
    raise ValueError(f"unknown transform {name!r}")


# ---------------------------------------------------------------------------------------------------------
# application
# ---------------------------------------------------------------------------------------------------------


def _frames_view(x: Tensor) -> Tensor:
    """C×T×H×W -> (C·T)×1×H×W (a view-like reshape; all ops here are per-pixel or per-plane)."""
    return x.reshape(-1, 1, *x.shape[-2:])


def _apply_image_op(x: Tensor, name: str, p: dict[str, Any]) -> Tensor:
    """Image-only op on intensities ``x`` in [0, 1] of shape C×T×H×W; returns clamped [0, 1]."""
    H, W = x.shape[-2:]
    if name == "gain":
        y = x * p["factor"]
    elif name == "contrast":
        mean = x.mean()
        y = (x - mean) * p["factor"] + mean
    elif name == "gamma":
        y = x.clamp_min(0.0) ** p["gamma"]
    elif name == "tgc":
        ramp = torch.linspace(-1.0, 1.0, H, device=x.device, dtype=x.dtype).view(H, 1)
        y = x * (1.0 + p["slope"] * ramp)
    elif name == "gaussian_blur":
        sigma = float(p["sigma"])
        if sigma < 0.1:
            return x
        k = 2 * math.ceil(3.0 * sigma) + 1
        k = min(k, 2 * ((min(H, W) - 1) // 2) + 1)  # reflect padding needs k // 2 < size
        if k < 3:
            return x
        y = TF.gaussian_blur(_frames_view(x), [k, k], [sigma, sigma]).reshape(x.shape)
    elif name == "gaussian_noise":
        y = x + p["sigma"] * p["field"].to(x)
    elif name == "speckle":
        y = x * (1.0 + p["strength"] * (p["field"].to(x) - 1.0))
    elif name == "sharpness":
        if H <= 2 or W <= 2:
            return x
        y = TF.adjust_sharpness(_frames_view(x), float(p["factor"])).reshape(x.shape)
    elif name == "acoustic_shadow":
        y = x * (1.0 - p["attenuation"] * _shadow_mask(H, W, p, x))
    else:
        raise ValueError(f"{name!r} is not an image-only transform")
    return y.clamp(0.0, 1.0)


def _shadow_mask(H: int, W: int, p: dict[str, Any], like: Tensor) -> Tensor:
    """Soft wedge mask in [0, 1] (H×W): rays from the apex (top centre) at ``direction_deg`` ± half width,
    starting at depth ``onset``·H from the apex."""
    ys = torch.arange(H, device=like.device, dtype=like.dtype).view(H, 1) + 0.5
    xs = torch.arange(W, device=like.device, dtype=like.dtype).view(1, W) + 0.5 - W / 2.0
    theta = torch.rad2deg(torch.atan2(xs, ys))  # 0° = straight down
    radius = torch.sqrt(xs * xs + ys * ys)
    hw = float(p["half_width_deg"])
    soft = 0.5 * hw
    angular = ((hw - (theta - float(p["direction_deg"])).abs()) / soft + 0.5).clamp(0.0, 1.0)
    r0 = float(p["onset"]) * H
    radial = ((radius - r0) / max(0.1 * H, 1.0)).clamp(0.0, 1.0)
    return angular * radial


def _renormalise_maps(gaze: Tensor) -> Tensor:
    """Each H×W map of 1×T×H×W to sum 1; a map with (almost) no mass left becomes uniform."""
    H, W = gaze.shape[-2:]
    gaze = gaze.clamp_min(0.0)
    mass = gaze.sum(dim=(-2, -1), keepdim=True)
    ok = mass > 1e-12
    uniform = torch.full_like(gaze, 1.0 / (H * W))
    return torch.where(ok, gaze / mass.clamp_min(1e-12), uniform)


def _mix_mask(method: str, lam: float, H: int, W: int, g: torch.Generator | None) -> Tensor | None:
    """Keep-mask (1 = primary) for a mask-based method; the partner covers a λ share of the frame."""
    if method == "mixup":
        return None
    mask = torch.ones(H, W)
    if method == "vertical_concat":
        rows = round(lam * H)
        if rows:
            if _uniform(g) < 0.5:
                mask[:rows] = 0.0
            else:
                mask[H - rows :] = 0.0
    elif method == "horizontal_concat":
        cols = round(lam * W)
        if cols:
            if _uniform(g) < 0.5:
                mask[:, :cols] = 0.0
            else:
                mask[:, W - cols :] = 0.0
    elif method == "row_interval":
        rows = round(lam * H)
        start = _randint(g, 0, H - rows)
        mask[start : start + rows] = 0.0
    elif method == "column_interval":
        cols = round(lam * W)
        start = _randint(g, 0, W - cols)
        mask[:, start : start + cols] = 0.0
    elif method == "random_square":
        rows, cols = round(math.sqrt(lam) * H), round(math.sqrt(lam) * W)
        r0, c0 = _randint(g, 0, H - rows), _randint(g, 0, W - cols)
        mask[r0 : r0 + rows, c0 : c0 + cols] = 0.0
    else:
        raise ValueError(f"unknown mix method {method!r}; use one of {MIX_METHODS}")
    return mask


class SequenceRandAugment:
    """RA(n, m) over K transforms for a video sequence and its gaze maps (see the module docstring).

    Args:
        n: transforms per draw (without replacement, ``n <= len(transforms)``).
        m: magnitude on the 0–30 scale (the same for every op; ``level = m / 30``).
        transforms: names from :data:`DEFAULT_TRANSFORMS` (K = 16 by default); a subset gives e.g. a
            purely geometric or purely photometric policy.
        mixed: the paper's Mix.RA: mix with a partner sequence first, then apply RA(n, m).
        mix_methods: mixed-example methods to draw from (subset of :data:`MIX_METHODS`).

    ``__call__(video C×T×H×W in [-1, 1], gaze 1×T×H×W, generator=None, partner=None) -> (video, gaze)``:
    one draw for the whole sequence; video clamped to [-1, 1]; gaze maps sum to 1 per frame (unchanged
    bit-for-bit unless an affine op or mixing was applied; a flip only reorders). ``gaze`` may be None (image-only use).
    """

    def __init__(
        self,
        n: int = 7,
        m: float = 9,
        transforms: Sequence[str] = DEFAULT_TRANSFORMS,
        mixed: bool = False,
        mix_methods: Sequence[str] = MIX_METHODS,
    ) -> None:
        transforms = tuple(transforms)
        unknown = [t for t in transforms if t not in DEFAULT_TRANSFORMS]
        if unknown:
            raise ValueError(f"unknown transforms {unknown}; available: {DEFAULT_TRANSFORMS}")
        if len(set(transforms)) != len(transforms):
            raise ValueError("transforms must not repeat")
        if not 0 <= n <= len(transforms):
            raise ValueError(f"n must be in [0, {len(transforms)}], got {n}")
        if not 0 <= m <= MAX_MAGNITUDE:
            raise ValueError(f"m must be in [0, {MAX_MAGNITUDE:g}], got {m}")
        bad = [k for k in mix_methods if k not in MIX_METHODS]
        if bad or not mix_methods:
            raise ValueError(
                f"mix_methods must be a non-empty subset of {MIX_METHODS}, got {list(mix_methods)}"
            )
        self.n = n
        self.m = float(m)
        self.transforms = transforms
        self.mixed = mixed
        self.mix_methods = tuple(mix_methods)

    @property
    def level(self) -> float:
        return self.m / MAX_MAGNITUDE

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={self.n}, m={self.m:g}, K={len(self.transforms)}, mixed={self.mixed})"
        )

    # -- draws -------------------------------------------------------------------------------------------

    def draw(self, height: int, width: int, generator: torch.Generator | None = None) -> PolicyDraw:
        """Draw which ``n`` transforms (in order) and all their parameters / random fields."""
        order = torch.randperm(len(self.transforms), generator=generator, device=_gen_device(generator))
        names = [self.transforms[int(i)] for i in order[: self.n]]
        return PolicyDraw([(name, _draw_op(name, self.level, height, width, generator)) for name in names])

    def draw_mix(self, height: int, width: int, generator: torch.Generator | None = None) -> MixDraw:
        """Draw a mixed-example method, the partner share λ ~ U(0, min(0.5, m/30)) and its mask."""
        method = self.mix_methods[_randint(generator, 0, len(self.mix_methods) - 1)]
        lam = _uniform(generator, 0.0, min(0.5, self.level))
        return MixDraw(method, lam, _mix_mask(method, lam, height, width, generator))

    # -- application -------------------------------------------------------------------------------------

    @staticmethod
    def apply(video: Tensor, gaze: Tensor | None, draw: PolicyDraw) -> tuple[Tensor, Tensor | None]:
        """Apply a draw to ``video`` C×T×H×W in [-1, 1] and ``gaze`` 1×T×H×W (or None)."""
        _check(video, gaze)
        params = dict(draw.ops)
        out_v, out_g = video, gaze

        # geometry: exact flip, then one merged affine warp (same parameters for frames and maps)
        if "hflip" in params:
            out_v = TF.horizontal_flip(out_v)
            out_g = TF.horizontal_flip(out_g) if out_g is not None else None
        angle = params.get("rotate", {}).get("angle", 0.0)
        tx = params.get("translate_x", {}).get("shift", 0.0)
        ty = params.get("translate_y", {}).get("shift", 0.0)
        scale = params.get("scale", {}).get("scale", 1.0)
        sx = params.get("shear_x", {}).get("shear", 0.0)
        sy = params.get("shear_y", {}).get("shear", 0.0)
        if (angle, tx, ty, scale, sx, sy) != (0.0, 0.0, 0.0, 1.0, 0.0, 0.0):
            kw = dict(
                angle=float(angle),
                translate=[float(tx), float(ty)],
                scale=float(scale),
                shear=[float(sx), float(sy)],
                interpolation=InterpolationMode.BILINEAR,
            )
            # C×T×H×W -> T×C×H×W so every frame is one image of the batch
            out_v = TF.affine(out_v.transpose(0, 1), fill=-1.0, **kw).transpose(0, 1)
            if out_g is not None:  # resampled maps lose / gain mass at borders: renormalise
                out_g = _renormalise_maps(TF.affine(out_g.transpose(0, 1), fill=0.0, **kw).transpose(0, 1))

        # image-only ops in drawn order, on [0, 1] intensities
        image_ops = [(name, p) for name, p in draw.ops if name in IMAGE_ONLY_TRANSFORMS]
        if image_ops:
            x = (out_v + 1.0) * 0.5
            for name, p in image_ops:
                x = _apply_image_op(x, name, p)
            out_v = x * 2.0 - 1.0
        return out_v.clamp(-1.0, 1.0), out_g

    @staticmethod
    def mix(
        video: Tensor, gaze: Tensor | None, partner: tuple[Tensor, Tensor | None], draw: MixDraw
    ) -> tuple[Tensor, Tensor | None]:
        """Mixed example of (video, gaze) with ``partner`` (same shapes) under one mask for all frames."""
        p_video, p_gaze = partner
        if p_video.shape != video.shape:
            raise ValueError(f"partner video {tuple(p_video.shape)} != video {tuple(video.shape)}")
        if draw.mask is None:
            lam = draw.lam
            out_v = (1.0 - lam) * video + lam * p_video
            out_g = None if gaze is None or p_gaze is None else (1.0 - lam) * gaze + lam * p_gaze
        else:
            keep = draw.mask.to(video)
            out_v = keep * video + (1.0 - keep) * p_video
            out_g = (
                None
                if gaze is None or p_gaze is None
                else keep.to(gaze) * gaze + (1.0 - keep.to(gaze)) * p_gaze
            )
        if gaze is not None and out_g is None:
            raise ValueError("partner needs gaze maps when the sample has them")
        if out_g is not None:
            out_g = _renormalise_maps(out_g)
        return out_v.clamp(-1.0, 1.0), out_g

    def __call__(
        self,
        video: Tensor,
        gaze: Tensor | None,
        generator: torch.Generator | None = None,
        partner: tuple[Tensor, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        _check(video, gaze)
        H, W = video.shape[-2:]
        if self.mixed:
            if partner is None:
                raise ValueError(
                    "mixed=True needs a partner sequence: call(video, gaze, generator, partner=(video2, gaze2)) "
                    "or apply_batch(...)"
                )
            video, gaze = self.mix(video, gaze, partner, self.draw_mix(H, W, generator))
        return self.apply(video, gaze, self.draw(H, W, generator))

    def apply_batch(
        self, video: Tensor, gaze: Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Independent draws per item of B×C×T×H×W / B×1×T×H×W (mixed: partners by a random permutation
        of the batch, taken before augmentation)."""
        if video.dim() != 5:
            raise ValueError(f"apply_batch expects B×C×T×H×W, got {tuple(video.shape)}")
        B = video.shape[0]
        perm = (
            torch.randperm(B, generator=generator, device=_gen_device(generator)).tolist()
            if self.mixed
            else None
        )
        outs_v, outs_g = [], []
        for i in range(B):
            partner = None
            if perm is not None:
                j = perm[i]
                partner = (video[j], gaze[j] if gaze is not None else None)
            v, g = self(video[i], gaze[i] if gaze is not None else None, generator, partner=partner)
            outs_v.append(v)
            outs_g.append(g)
        if gaze is None:
            return torch.stack(outs_v), None
        return torch.stack(outs_v), torch.stack([g for g in outs_g if g is not None])


def _check(video: Tensor, gaze: Tensor | None) -> None:
    if video.dim() != 4:
        raise ValueError(f"video must be C×T×H×W, got {tuple(video.shape)}")
    if gaze is not None and (gaze.dim() != 4 or gaze.shape[0] != 1 or gaze.shape[1:] != video.shape[1:]):
        raise ValueError(f"gaze must be 1×T×H×W matching video {tuple(video.shape)}, got {tuple(gaze.shape)}")
