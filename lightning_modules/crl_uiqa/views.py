"""Weak and strong views of CRL-UIQA (Guo et al., MICCAI 2024, Sec. 2.2).

Images are ``B×C×H×W`` float in ``[-1, 1]`` (any C). Every random draw uses ``generator`` (a
:class:`torch.Generator`; draws happen on its device, then move to the images' device), so views are
reproducible.

Weak view (quality-preserving; its target is the source view's own prediction, Eq. 5):
    per sample, independently: horizontal flip (p = ``hflip_p``), vertical flip (p = ``vflip_p``), then a
    rotation about the image centre by an angle drawn uniformly in ``[-max_angle, max_angle]`` degrees
    (bilinear, size kept, corners filled with ``fill`` = -1, the black background of ultrasound), or, with
    ``right_angles=True``, by a multiple of 90° (exact, no interpolation and no fill; 0°/180° only for
    non-square images). Positive angles turn the content counter-clockwise as displayed (row 0 at the top),
    like ``torch.rot90(x, 1, dims=(-2, -1))``.

Strong view (quality-reducing; the relativity hinge of Eq. 6 uses its degree ε):
    per sample, a degree ``ε ~ U[eps_min, eps_max]`` and a blur kind drawn uniformly among ``kinds``:

    * ``"gaussian"``: :func:`torchvision.transforms.v2.functional.gaussian_blur` with
      ``σ = sigma_per_eps · ε`` pixels and an odd kernel of ``2·ceil(3σ) + 1`` pixels (reflect padding);
    * ``"motion"``: a straight line kernel of length ``L = length_per_eps · ε`` pixels through the centre at
      a uniform random angle in ``[0°, 180°)``, anti-aliased (weight = overlap of each pixel with a 1-pixel
      wide segment), normalised to sum 1, applied with a grouped ``conv2d`` (reflect padding).

    ``ε = 0`` is the identity for both kinds. Both are convex combinations of pixels, so the output stays in
    ``[-1, 1]``. With the defaults (``sigma_per_eps = 10``, ``length_per_eps = 30``) ``ε = 0.1`` means
    ``σ = 1`` px or a 3-px streak, ``ε = 0.3`` means ``σ = 3`` px or a 9-px streak; scale both with the image
    size.

What ε means in the hinge: ``L_r = max(p(x') - p(x) + ε, 0)`` asks the blurred view to score at least ``ε`` below
its source on the ``[0, 1]`` score scale, so a stronger blur must cost a larger score drop. ``eps_range`` must
therefore lie in ``[0, 1)`` and is in score units; ε is both the blur degree and the margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = ["BLUR_KINDS", "blur", "motion_blur_kernels", "strong_view", "weak_view"]

BLUR_KINDS = ("gaussian", "motion")


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be B×C×H×W, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}")


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=gdev).to(device)


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, (n,), generator=generator, device=gdev).to(device)


# --------------------------------------------------------------------------------------------- weak view


def _rotate(images: torch.Tensor, angles_deg: torch.Tensor, fill: float) -> torch.Tensor:
    """Rotate each image about its centre by its angle (degrees, counter-clockwise as displayed), bilinear."""
    B, _, H, W = images.shape
    a = torch.deg2rad(angles_deg.to(torch.float32))
    cos, sin = torch.cos(a), torch.sin(a)
    # Output pixel (u, v) (normalised coords, y down) samples the input at the inverse rotation of (u, v),
    # with the aspect ratio handled in pixel units (x spans W/2, y spans H/2).
    theta = torch.zeros(B, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * H / W
    theta[:, 1, 0] = sin * W / H
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [B, 1, H, W], align_corners=False)
    x = images.float() - fill
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    return out.to(images.dtype)


@overload
def weak_view(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    hflip_p: float = 0.5,
    vflip_p: float = 0.5,
    max_angle: float = 30.0,
    right_angles: bool = False,
    fill: float = -1.0,
    return_params: Literal[False] = False,
) -> torch.Tensor: ...


@overload
def weak_view(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    hflip_p: float = 0.5,
    vflip_p: float = 0.5,
    max_angle: float = 30.0,
    right_angles: bool = False,
    fill: float = -1.0,
    return_params: Literal[True],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def weak_view(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    hflip_p: float = 0.5,
    vflip_p: float = 0.5,
    max_angle: float = 30.0,
    right_angles: bool = False,
    fill: float = -1.0,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Quality-preserving view: random h-flip, v-flip and rotation per sample (see the module docstring).

    Args:
        images: ``B×C×H×W``.
        generator: source of randomness.
        hflip_p, vflip_p: flip probabilities.
        max_angle: rotation angle drawn uniformly in ``[-max_angle, max_angle]`` degrees (``0``: no rotation).
        right_angles: rotate by a uniform multiple of 90° instead (exact; 0°/180° for non-square images).
        fill: value of the corners uncovered by a rotation.
        return_params: also return ``{"hflip": B bool, "vflip": B bool, "angle": B float degrees}``.

    Returns:
        the view (same shape, dtype, device), and the parameters if asked.
    """
    _check_images(images)
    B, _, H, W = images.shape
    dev = images.device
    hflip = _rand(B, generator, dev) < hflip_p
    vflip = _rand(B, generator, dev) < vflip_p
    out = torch.where(hflip[:, None, None, None], images.flip(-1), images)
    out = torch.where(vflip[:, None, None, None], out.flip(-2), out)
    if right_angles:
        turns = _randint(4 if H == W else 2, B, generator, dev) * (1 if H == W else 2)
        angle = turns.to(torch.float32) * 90.0
        rotated = out.clone()
        for t in (1, 2, 3):
            sel = turns == t
            if bool(sel.any()):
                rotated[sel] = torch.rot90(out[sel], t, dims=(-2, -1))
        out = rotated
    else:
        angle = (2.0 * _rand(B, generator, dev) - 1.0) * float(max_angle)
        if max_angle != 0:
            out = _rotate(out, angle, fill)
    if return_params:
        return out, {"hflip": hflip, "vflip": vflip, "angle": angle}
    return out


# --------------------------------------------------------------------------------------------- strong view


def motion_blur_kernels(
    lengths: torch.Tensor, angles_deg: torch.Tensor, size: int | None = None
) -> torch.Tensor:
    """Anti-aliased line kernels ``B×K×K`` (each sums to 1), one per (length in pixels, angle in degrees).

    Each pixel's weight is the product of its overlap with a 1-pixel-wide band along the line and with the
    segment's extent, ``clamp(1 - |perp|, 0, 1) · clamp(L/2 + 1/2 - |along|, 0, 1)``, so ``L = 0`` gives a delta
    kernel and the kernel is point-symmetric (convolution = correlation). ``K`` (odd) defaults to the smallest
    size holding the longest line.
    """
    lengths = lengths.to(torch.float32)
    if size is None:
        size = 2 * math.ceil(float(lengths.max()) / 2.0 + 0.5) + 1 if lengths.numel() else 1
    r = size // 2
    coords = torch.arange(-r, r + 1, dtype=torch.float32, device=lengths.device)
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # y down
    a = torch.deg2rad(angles_deg.to(torch.float32, copy=False).to(lengths.device))[:, None, None]
    dx, dy = torch.cos(a), -torch.sin(a)  # direction on screen: angle counter-clockwise from the x axis
    along = x[None] * dx + y[None] * dy
    perp = -x[None] * dy + y[None] * dx
    w = (1.0 - perp.abs()).clamp(0, 1) * (lengths[:, None, None] / 2.0 + 0.5 - along.abs()).clamp(0, 1)
    return w / w.sum(dim=(-2, -1), keepdim=True)


def _max_kernel(H: int, W: int) -> int:
    """Largest odd kernel whose reflect padding fits the image (pad < side)."""
    return 2 * (min(H, W) - 1) + 1


def blur(
    images: torch.Tensor,
    eps: torch.Tensor,
    kind: str,
    *,
    angles_deg: torch.Tensor | None = None,
    sigma_per_eps: float = 10.0,
    length_per_eps: float = 30.0,
) -> torch.Tensor:
    """Blur each image at its degree ``eps[i]`` with one ``kind`` (``"gaussian"`` or ``"motion"``; deterministic).

    ``angles_deg`` (motion only, default 0° = horizontal streaks) is the streak direction per sample.
    """
    _check_images(images)
    B, C, H, W = images.shape
    eps = torch.as_tensor(eps, dtype=torch.float32, device=images.device).reshape(-1).expand(B)
    if kind == "gaussian":
        out = images.clone()
        kmax = _max_kernel(H, W)
        for i in range(B):
            sigma = float(eps[i]) * sigma_per_eps
            if sigma <= 0:
                continue
            ks = min(2 * math.ceil(3.0 * sigma) + 1, kmax)
            out[i] = TF.gaussian_blur(images[i], [ks, ks], [sigma, sigma])
        return out
    if kind == "motion":
        if angles_deg is None:
            angles_deg = torch.zeros(B, device=images.device)
        lengths = eps.clamp(min=0) * length_per_eps
        kmax = _max_kernel(H, W)
        size = min(2 * math.ceil(float(lengths.max()) / 2.0 + 0.5) + 1, kmax)
        k = motion_blur_kernels(lengths, angles_deg.to(images.device), size).to(images.dtype)
        pad = size // 2
        x = F.pad(images.reshape(1, B * C, H, W), (pad, pad, pad, pad), mode="reflect")
        weight = k.repeat_interleave(C, dim=0)[:, None]  # (B*C)×1×K×K
        # In the input's dtype even under autocast (conv2d would come out bf16/fp16 there).
        return F.conv2d(x, weight, groups=B * C).reshape(B, C, H, W).to(images.dtype)
    raise ValueError(f"unknown blur kind {kind!r}; expected one of {BLUR_KINDS}")


@overload
def strong_view(
    images: torch.Tensor,
    eps_range: Sequence[float],
    generator: torch.Generator | None = None,
    *,
    kinds: Sequence[str] = BLUR_KINDS,
    sigma_per_eps: float = 10.0,
    length_per_eps: float = 30.0,
    return_params: Literal[False] = False,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def strong_view(
    images: torch.Tensor,
    eps_range: Sequence[float],
    generator: torch.Generator | None = None,
    *,
    kinds: Sequence[str] = BLUR_KINDS,
    sigma_per_eps: float = 10.0,
    length_per_eps: float = 30.0,
    return_params: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]: ...


def strong_view(
    images: torch.Tensor,
    eps_range: Sequence[float],
    generator: torch.Generator | None = None,
    *,
    kinds: Sequence[str] = BLUR_KINDS,
    sigma_per_eps: float = 10.0,
    length_per_eps: float = 30.0,
    return_params: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Quality-reducing view: Gaussian or motion blur of sampled degree ε per sample (see the module docstring).

    Args:
        images: ``B×C×H×W`` in ``[-1, 1]``.
        eps_range: ``(eps_min, eps_max)`` with ``0 <= eps_min <= eps_max < 1`` (score units; equal values fix ε).
        generator: source of randomness.
        kinds: blur kinds to draw from (uniformly per sample).
        sigma_per_eps: Gaussian ``σ`` in pixels per unit ε.
        length_per_eps: motion-blur length in pixels per unit ε.
        return_params: also return ``{"kind": B long (index into kinds), "angle": B float degrees}``.

    Returns:
        ``(blurred images, eps)`` with ``eps`` a ``B`` tensor in the images' dtype and device (the hinge
        margin), plus the parameters if asked.
    """
    _check_images(images)
    eps_min, eps_max = (float(v) for v in eps_range)
    if not 0.0 <= eps_min <= eps_max < 1.0:
        raise ValueError(f"eps_range must satisfy 0 <= eps_min <= eps_max < 1, got {tuple(eps_range)}")
    kinds = tuple(kinds)
    if not kinds or any(k not in BLUR_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {BLUR_KINDS}, got {kinds}")
    B = images.shape[0]
    dev = images.device
    eps = eps_min + (eps_max - eps_min) * _rand(B, generator, dev)
    kind = _randint(len(kinds), B, generator, dev)
    angle = 180.0 * _rand(B, generator, dev)
    out = images.clone()
    for j, name in enumerate(kinds):
        sel = kind == j
        if not bool(sel.any()):
            continue
        out[sel] = blur(
            images[sel],
            eps[sel],
            name,
            angles_deg=angle[sel],
            sigma_per_eps=sigma_per_eps,
            length_per_eps=length_per_eps,
        )
    eps = eps.to(images.dtype)
    if return_params:
        return out, eps, {"kind": kind, "angle": angle}
    return out, eps
