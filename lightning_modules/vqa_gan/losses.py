"""Losses and anomaly scores of VideoQualityGAN and its baselines (pure functions).

Layouts: videos ``B×C×T×H×W`` in ``[-1, 1]`` (images ``B×C×H×W`` also accepted where noted),
features ``B×F``, gaze ``B×1×T×H×W`` maps that sum to 1 per frame.

Generator objective of the official code (weights as published)::

    lsgan_loss(D_F(E(x⊕o)), True) + lsgan_loss(D_V(G(z)), True)
    + 10·l1 + 10·ssim_loss            # video_reconstruction_loss(G(E(x⊕o)), x)
    + 10·feature_cycle_loss(E(G(z)⊕o), z)
    + 0.1·gaze_loss(G_d'(E(x⊕o)), g)

with ``z ~ N(0, I)``; discriminators ``0.5·(lsgan_loss(real, True) + lsgan_loss(fake, False))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou as _tv_box_iou

from .zoom import box_from_theta, theta_from_box

__all__ = [
    "box_iou",
    "box_loss",
    "feature_cycle_loss",
    "feature_reconstruction_error",
    "gaze_loss",
    "lsgan_loss",
    "pixel_scores",
    "ssim_per_frame",
    "stae_loss",
    "video_reconstruction_loss",
]

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_DATA_RANGE = 2.0  # inputs in [-1, 1]


# ------------------------------------------------------------------------------------- adversarial
def lsgan_loss(pred: Tensor, target_is_real: bool) -> Tensor:
    """Least-squares GAN loss: ``mean((pred − 1)²)`` for real targets, ``mean(pred²)`` for fake."""
    target = 1.0 if target_is_real else 0.0
    return F.mse_loss(pred.float(), torch.full_like(pred, target, dtype=torch.float32))


# ---------------------------------------------------------------------------------- reconstruction
def _frames(x: Tensor) -> Tensor:
    """``B×C×T×H×W`` → ``(B·T)×C×H×W`` (frame-major within each clip); ``B×C×H×W`` unchanged."""
    if x.dim() == 5:
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b * t, c, h, w)
    if x.dim() == 4:
        return x
    raise ValueError(f"expected B×C×T×H×W clips or B×C×H×W images, got {tuple(x.shape)}")


def _gaussian_filter_matrix(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``n×n`` matrix ``A`` with ``A @ v`` = the 11-tap Gaussian (σ 1.5) of ``v`` reflection-padded by 5,
    valid part: torchmetrics' SSIM filter along one axis (its kernel is the outer product of two such
    1-D Gaussians, so the 2-D filter of a frame ``X`` is ``A_h @ X @ A_wᵀ``). Built in float64."""
    half = SSIM_KERNEL_SIZE // 2
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    gauss = torch.exp(-((taps / SSIM_SIGMA) ** 2) / 2)
    gauss = gauss / gauss.sum()
    idx = (torch.arange(n).unsqueeze(1) + torch.arange(-half, half + 1).unsqueeze(0)).abs()
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)  # reflect (edge not repeated), as F.pad
    a = torch.zeros(n, n, dtype=torch.float64)
    a.scatter_add_(1, idx, gauss.expand(n, -1).contiguous())
    return a.to(dtype=dtype, device=device)


def _ssim_frames(fx: Tensor, fy: Tensor) -> Tensor:
    """torchmetrics' SSIM (Gaussian 11, σ 1.5, data range 2, k1 0.01, k2 0.03, reflect padding) of
    ``N×C×H×W`` frames → ``N``, with the separable filter as two matrix products.

    Same formula and order of terms as ``torchmetrics.functional.structural_similarity_index_measure``
    (values equal to ~1e-7); plain differentiable ops, so autograd gives its gradients. Why matrices: the
    single-channel 11×11 convolutions torchmetrics runs are slow on CPUs, worst in the backward pass
    (oneDNN), while a dense ``H×H`` product runs at full matmul speed on any device (CPU fwd+bwd ~6×
    faster at 16 frames of 256×256).
    """
    n, _, h, w = fx.shape
    a_h = _gaussian_filter_matrix(h, fx.dtype, fx.device)
    a_w = _gaussian_filter_matrix(w, fx.dtype, fx.device)
    maps = torch.stack((fx, fy, fx * fx, fy * fy, fx * fy))  # 5×N×C×H×W
    mu_x, mu_y, e_xx, e_yy, e_xy = torch.matmul(torch.matmul(a_h, maps), a_w.t())
    c1 = (0.01 * SSIM_DATA_RANGE) ** 2
    c2 = (0.03 * SSIM_DATA_RANGE) ** 2
    mu_xx, mu_yy, mu_xy = mu_x.pow(2), mu_y.pow(2), mu_x * mu_y
    var_x = torch.clamp(e_xx - mu_xx, min=0.0)
    var_y = torch.clamp(e_yy - mu_yy, min=0.0)
    cov = e_xy - mu_xy
    index = ((2 * mu_xy + c1) * (2 * cov + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
    return index.reshape(n, -1).mean(-1)


def ssim_per_frame(x: Tensor, y: Tensor) -> Tensor:
    """2-D SSIM of every frame (Gaussian window 11, σ 1.5, data range 2), computed in float32 with
    torchmetrics' definition (see ``_ssim_frames``). ``B×C×T×H×W`` → ``B×T``; ``B×C×H×W`` → ``B``.
    Frames must be at least 6×6 (the window is reflection-padded by 5 pixels)."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if min(x.shape[-2:]) < 6:
        raise ValueError(f"SSIM needs frames of at least 6×6, got {tuple(x.shape[-2:])}")
    fx, fy = _frames(x).float(), _frames(y).float()
    with torch.autocast(device_type=fx.device.type, enabled=False):
        s = _ssim_frames(fx, fy)
    return s.reshape(x.shape[0], x.shape[2]) if x.dim() == 5 else s


def video_reconstruction_loss(recon: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(l1, ssim_loss)``: mean absolute error and ``1 − mean SSIM`` over all frames (frames reshaped
    to ``(B·T)×C×H×W``; see :func:`ssim_per_frame`)."""
    l1 = F.l1_loss(recon.float(), target.float())
    return l1, 1.0 - ssim_per_frame(recon, target).mean()


def feature_cycle_loss(z_rec: Tensor, z: Tensor) -> Tensor:
    """Feature-space reconstruction ``mean |E(G(z) ⊕ o) − z|`` (L1)."""
    return F.l1_loss(z_rec.float(), z.float())


def gaze_loss(pred: Tensor, target: Tensor, kind: str = "l1", valid: Tensor | None = None) -> Tensor:
    """Gaze loss between predicted and ground-truth gaze maps ``B×1×T×H×W`` (or ``B×1×H×W``), each
    frame a distribution summing to 1 (decoder with ``output="softmax"``).

    Both maps are multiplied by the number of pixels per frame (a uniform map becomes 1 everywhere) so
    the value does not shrink with the resolution; then ``kind="l1"`` (the paper, Eq. 4, default) is the
    mean absolute difference and ``kind="mse"`` (the official code) the mean squared difference. For
    L1 this equals ``Σ_pixels |p − g|`` per frame, averaged over frames. ``valid`` (``B×T`` bool, the
    batch's ``gaze_valid``) leaves out frames without fixations; with no valid frame the loss is 0
    (still connected to ``pred``'s graph).
    """
    if pred.shape != target.shape:
        raise ValueError(f"gaze shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if kind not in ("l1", "mse"):
        raise ValueError(f"kind must be 'l1' or 'mse', got {kind!r}")
    n_pix = pred.shape[-1] * pred.shape[-2]
    diff = (pred.float() - target.float()) * n_pix
    per = diff.abs() if kind == "l1" else diff.square()
    per_frame = per.mean(dim=(-2, -1)).mean(dim=1)  # B×T (or B)
    if valid is None:
        return per_frame.mean()
    mask = valid.to(per_frame.device, torch.bool).reshape(per_frame.shape)
    if not mask.any():
        return per_frame.sum() * 0.0
    return per_frame[mask].mean()


def stae_loss(recon: Tensor, target: Tensor, pred: Tensor, future: Tensor) -> tuple[Tensor, Tensor]:
    """STAE losses ``(reconstruction, prediction)`` (Zhao et al., 2017), both mean squared errors.

    Reconstruction: ``mean (recon − target)²``. Prediction over the P predicted frames ``B×C×P×H×W``:
    ``Σ_t w_t · mean_{B,C,H,W} (pred_t − future_t)²`` with ``w_t = (P − t) / P²`` for ``t = 0..P−1``
    (weights P, P−1, …, 1 over P²): near-future frames count more. Add the two for the total.
    """
    if recon.shape != target.shape or pred.shape != future.shape:
        raise ValueError("recon/target and pred/future must have matching shapes")
    rec = F.mse_loss(recon.float(), target.float())
    p = pred.shape[2]
    per_t = (pred.float() - future.float()).square().mean(dim=(0, 1, 3, 4))  # P
    w = torch.arange(p, 0, -1, device=per_t.device, dtype=per_t.dtype) / p**2
    return rec, (w * per_t).sum()


# ----------------------------------------------------------------------------------------- scores
def feature_reconstruction_error(z: Tensor, z_cycle: Tensor) -> Tensor:
    """Anomaly score ``mean |z − z_cycle|`` over the feature dims: ``B×F`` (or ``B×F×1×1×1``) → ``B``."""
    return (z.float() - z_cycle.float()).abs().flatten(1).mean(dim=1)


def pixel_scores(recon: Tensor, x: Tensor) -> dict[str, Tensor]:
    """Per-clip pixel scores of a reconstruction, each ``B``: ``l1`` (mean |recon − x|), ``mse``,
    ``ssim`` (mean SSIM over frames: a similarity, higher = closer) and ``dssim = 1 − ssim`` (an
    anomaly score, higher = more anomalous). Clips ``B×C×T×H×W`` or images ``B×C×H×W``."""
    diff = recon.float() - x.float()
    ssim = ssim_per_frame(recon, x)
    if ssim.dim() == 2:
        ssim = ssim.mean(dim=1)
    return {
        "l1": diff.abs().flatten(1).mean(dim=1),
        "mse": diff.square().flatten(1).mean(dim=1),
        "ssim": ssim,
        "dssim": 1.0 - ssim,
    }


# -------------------------------------------------------------------------------------- zoom boxes
def box_loss(theta_pred: Tensor, box: Tensor, square_target: bool = True, beta: float = 0.1) -> Tensor:
    """Smooth-L1 (``beta``) between the corners of the predicted crop (``box_from_theta(theta_pred)``)
    and the target box ``B×4`` in ``[0, 1]``. ``square_target=True`` first turns the target into the
    crop the zoom-in can represent (same centre, one scale ``max(w, h)``, see ``theta_from_box``), so a
    perfect prediction has zero loss even for non-square boxes."""
    target = box_from_theta(theta_from_box(box)) if square_target else box
    return F.smooth_l1_loss(box_from_theta(theta_pred).float(), target.float(), beta=beta)


def box_iou(box_a: Tensor, box_b: Tensor) -> Tensor:
    """IoU of paired boxes ``B×4`` (x0, y0, x1, y1) → ``B`` (the diagonal of torchvision's box_iou)."""
    return _tv_box_iou(box_a.float(), box_b.float()).diagonal()
