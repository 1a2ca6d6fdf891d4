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

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure
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


def _torchmetrics_ssim(fx: Tensor, fy: Tensor) -> Tensor:
    return structural_similarity_index_measure(
        fx,
        fy,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE,
        data_range=SSIM_DATA_RANGE,
        reduction="none",
    )


@contextmanager
def _without_onednn() -> Iterator[None]:
    """Switch oneDNN convolutions off (only that flag: no TF32/precision side effects), restore after."""
    enabled = torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(_enabled=enabled, _fp32_precision=None)


class _CPUSSIM(torch.autograd.Function):
    """torchmetrics' SSIM with oneDNN switched off in the forward *and* the backward pass.

    The SSIM filters are single-channel 11×11 convolutions over (B·T·5) maps; on CPUs oneDNN's
    backward for that shape is ~4× slower than PyTorch's native kernel (0.7 s of a 1.2 s demo training
    step). The backward recomputes the forward under the same flag (cheap) and differentiates it, so
    values and gradients are torchmetrics' own.
    """

    @staticmethod
    def forward(ctx, fx: Tensor, fy: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(fx, fy)
        with torch.no_grad(), _without_onednn():
            return _torchmetrics_ssim(fx, fy)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        fx, fy = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        with torch.enable_grad(), _without_onednn():
            gx, gy = fx.detach().requires_grad_(needs[0]), fy.detach().requires_grad_(needs[1])
            out = _torchmetrics_ssim(gx, gy)
            inputs = [t for t, n in zip((gx, gy), needs) if n]
            grads = iter(torch.autograd.grad(out, inputs, grad))
        return tuple(next(grads) if n else None for n in needs)  # type: ignore[return-value]


def ssim_per_frame(x: Tensor, y: Tensor) -> Tensor:
    """2-D SSIM of every frame (Gaussian window 11, σ 1.5, data range 2), computed in float32 by
    torchmetrics. ``B×C×T×H×W`` → ``B×T``; ``B×C×H×W`` → ``B``. Frames must be at least 6×6 (the
    window is reflection-padded by 5 pixels). On the CPU the filters run without oneDNN (see
    ``_CPUSSIM``: same values and gradients, 3-4× faster backward)."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if min(x.shape[-2:]) < 6:
        raise ValueError(f"SSIM needs frames of at least 6×6, got {tuple(x.shape[-2:])}")
    fx, fy = _frames(x).float(), _frames(y).float()
    with torch.autocast(device_type=fx.device.type, enabled=False):
        if fx.device.type == "cpu":
            s = _CPUSSIM.apply(fx, fy)
        else:
            s = _torchmetrics_ssim(fx, fy)
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
