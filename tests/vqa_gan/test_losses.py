"""Losses and scores of VideoQualityGAN against hand-computed values."""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from lightning_modules.vqa_gan.losses import (
    box_iou,
    box_loss,
    feature_cycle_loss,
    feature_reconstruction_error,
    gaze_loss,
    lsgan_loss,
    pixel_scores,
    ssim_per_frame,
    stae_loss,
    video_reconstruction_loss,
)
from lightning_modules.vqa_gan.module import VideoQualityGAN
from lightning_modules.vqa_gan.pool import HistoryPool
from lightning_modules.vqa_gan.schedule import linear_decay_schedule
from lightning_modules.vqa_gan.zoom import theta_from_box


def _const_ssim(a: float, b: float) -> float:
    """SSIM of two constant images (variances 0): luminance term only, data range 2."""
    c1 = (0.01 * 2) ** 2
    return (2 * a * b + c1) / (a * a + b * b + c1)


# ---------------------------------------------------------------------------------- adversarial
def test_lsgan_loss_hand_values():
    pred = torch.tensor([[0.5], [1.0], [0.0]])
    assert lsgan_loss(pred, True).item() == pytest.approx((0.25 + 0 + 1) / 3)
    assert lsgan_loss(pred, False).item() == pytest.approx((0.25 + 1 + 0) / 3)
    patch = torch.full((2, 1, 1, 4, 4), 0.25)
    assert lsgan_loss(patch, True).item() == pytest.approx(0.5625)


# ------------------------------------------------------------------------------- reconstruction
def test_video_reconstruction_loss_identical_is_zero():
    x = torch.rand(2, 1, 4, 16, 16) * 2 - 1
    l1, ssim_loss = video_reconstruction_loss(x, x)
    assert l1.item() == 0
    assert ssim_loss.item() == pytest.approx(0.0, abs=1e-5)


def test_video_reconstruction_loss_constant_frames_hand_value():
    recon = torch.full((1, 1, 2, 16, 16), 0.5)
    target = torch.full((1, 1, 2, 16, 16), -0.5)
    l1, ssim_loss = video_reconstruction_loss(recon, target)
    assert l1.item() == pytest.approx(1.0)
    assert ssim_loss.item() == pytest.approx(1 - _const_ssim(0.5, -0.5), abs=1e-4)  # 1.998401...


def test_ssim_is_per_frame_2d():
    # frame 0 identical (SSIM 1), frame 1 constants 0.2 vs 0.6
    target = torch.zeros(1, 1, 2, 12, 12)
    target[:, :, 1] = 0.6
    recon = target.clone()
    recon[:, :, 1] = 0.2
    s = ssim_per_frame(recon, target)
    assert s.shape == (1, 2)
    assert s[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    assert s[0, 1].item() == pytest.approx(_const_ssim(0.2, 0.6), abs=1e-4)
    _, loss = video_reconstruction_loss(recon, target)
    assert loss.item() == pytest.approx(1 - (1 + _const_ssim(0.2, 0.6)) / 2, abs=1e-4)


def test_ssim_window_matches_torchmetrics_reshape():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 3, 24, 24) * 2 - 1, torch.rand(2, 1, 3, 24, 24) * 2 - 1
    ref = tm_ssim(
        x.transpose(1, 2).reshape(6, 1, 24, 24),
        y.transpose(1, 2).reshape(6, 1, 24, 24),
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=2.0,
    )
    assert video_reconstruction_loss(x, y)[1].item() == pytest.approx(1 - ref.item(), abs=1e-6)


def test_feature_cycle_loss_hand_value():
    z = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    z_rec = torch.tensor([[0.5, -1.0], [1.0, 0.0]])
    assert feature_cycle_loss(z_rec, z).item() == pytest.approx((0.5 + 0 + 1 + 2) / 4)


# ------------------------------------------------------------------------------------------ gaze
def _maps(*frames: list[float]) -> torch.Tensor:
    """Frames of 1×2 pixels → 1×1×T×1×2."""
    return torch.tensor(frames).reshape(1, 1, len(frames), 1, 2)


def test_gaze_loss_hand_values():
    pred = _maps([0.5, 0.5], [1.0, 0.0])
    target = _maps([1.0, 0.0], [1.0, 0.0])
    # scaled by 2 pixels: frame 0 |[1,1]-[2,0]| = [1,1] -> l1 1, mse 1; frame 1 -> 0
    assert gaze_loss(pred, target).item() == pytest.approx(0.5)
    assert gaze_loss(pred, target, kind="mse").item() == pytest.approx(0.5)
    pred2 = _maps([0.25, 0.75])
    target2 = _maps([1.0, 0.0])
    # scaled: [0.5, 1.5] vs [2, 0] -> |1.5|, |1.5| -> l1 1.5, mse 2.25
    assert gaze_loss(pred2, target2).item() == pytest.approx(1.5)
    assert gaze_loss(pred2, target2, kind="mse").item() == pytest.approx(2.25)


def test_gaze_loss_valid_mask():
    pred = _maps([0.5, 0.5], [1.0, 0.0]).requires_grad_()
    target = _maps([1.0, 0.0], [1.0, 0.0])
    assert gaze_loss(pred, target, valid=torch.tensor([[True, False]])).item() == pytest.approx(1.0)
    assert gaze_loss(pred, target, valid=torch.tensor([[False, True]])).item() == pytest.approx(0.0)
    none = gaze_loss(pred, target, valid=torch.tensor([[False, False]]))
    assert none.item() == 0
    none.backward()
    assert pred.grad is not None
    with pytest.raises(ValueError):
        gaze_loss(pred, target, kind="kl")


def test_gaze_loss_is_resolution_independent():
    # a one-hot map vs uniform, at two resolutions: sum |p - g| = 2 (1 - 1/N)
    for n in (4, 16):
        target = torch.zeros(1, 1, 1, n, n)
        target[..., 0, 0] = 1
        pred = torch.full_like(target, 1 / n**2)
        assert gaze_loss(pred, target).item() == pytest.approx(2 * (1 - 1 / n**2), rel=1e-5)


# ------------------------------------------------------------------------------------------ STAE
def test_stae_loss_hand_values():
    target = torch.zeros(1, 1, 2, 2, 2)
    recon = torch.full_like(target, 0.5)  # mse 0.25
    future = torch.zeros(1, 1, 2, 2, 2)
    pred = future.clone()
    pred[:, :, 0] = 1.0  # squared error 1 at t=0
    pred[:, :, 1] = 2.0  # squared error 4 at t=1
    rec, prd = stae_loss(recon, target, pred, future)
    assert rec.item() == pytest.approx(0.25)
    assert prd.item() == pytest.approx(2 / 4 * 1 + 1 / 4 * 4)  # weights P..1 over P²
    p3 = torch.ones(1, 1, 3, 2, 2)
    _, prd3 = stae_loss(recon, target, p3, torch.zeros_like(p3))
    assert prd3.item() == pytest.approx((3 + 2 + 1) / 9)


# ---------------------------------------------------------------------------------------- scores
def test_feature_reconstruction_error_hand_value():
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    zc = torch.tensor([[1.0, 1.0, 3.0, 6.0], [1.0, -1.0, 1.0, -1.0]])
    torch.testing.assert_close(feature_reconstruction_error(z, zc), torch.tensor([0.75, 1.0]))
    assert feature_reconstruction_error(z[:, :, None, None, None], zc).shape == (2,)


class _FlattenEncoder(nn.Module):
    """E(x ⊕ o) = the video's pixels (the flow is accepted and ignored)."""

    def forward(self, video, flow=None):
        return video.flatten(1)


class _ReshapeDecoder(nn.Module):
    """G(z) = z written back into pixels, so E(G(z)) = z exactly."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, z):
        return z.reshape(z.shape[0], *self.shape)


def _feature_score(encoder: Any, decoder: Any, video: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The paper's test score as the module computes it (``z = E(x ⊕ o)``, ``z' = E(G(z) ⊕ o)``)."""
    model = SimpleNamespace(encoder=encoder, decoder=decoder)
    return VideoQualityGAN.scores_from_inputs(model, video, flow)["feature"]  # type: ignore[arg-type]


def test_feature_score_is_exactly_zero_for_a_perfect_autoencoder():
    torch.manual_seed(0)
    video, flow = torch.rand(3, 1, 2, 16, 16) * 2 - 1, torch.randn(3, 2, 2, 16, 16)
    enc, dec = _FlattenEncoder(), _ReshapeDecoder((1, 2, 16, 16))
    score = _feature_score(enc, dec, video, flow)
    assert score.shape == (3,)
    assert torch.equal(score, torch.zeros(3))
    # an imperfect decoder gives a positive score
    noisy = _feature_score(enc, lambda z: dec(z) + 0.1, video, flow)
    torch.testing.assert_close(noisy, torch.full((3,), 0.1))


def test_pixel_scores_hand_values():
    x = torch.zeros(2, 1, 2, 8, 8)
    recon = x.clone()
    recon[1] = 0.5
    s = pixel_scores(recon, x)
    assert set(s) == {"l1", "mse", "ssim", "dssim"}
    torch.testing.assert_close(s["l1"], torch.tensor([0.0, 0.5]))
    torch.testing.assert_close(s["mse"], torch.tensor([0.0, 0.25]))
    assert s["ssim"][0].item() == pytest.approx(1.0, abs=1e-5)
    assert s["ssim"][1].item() == pytest.approx(_const_ssim(0.5, 0.0), abs=1e-4)
    torch.testing.assert_close(s["dssim"], 1 - s["ssim"])
    img = pixel_scores(recon[:, :, 0], x[:, :, 0])  # images B×C×H×W
    torch.testing.assert_close(img["l1"], torch.tensor([0.0, 0.5]))


# ----------------------------------------------------------------------------------------- boxes
def test_box_iou_pairs():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]])
    b = torch.tensor([[0.5, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.6, 0.6]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([0.5, 0.0, 1.0]))


def test_box_loss_hand_values():
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    assert box_loss(theta_from_box(box), box).item() == 0
    # a non-square box: the representable target is its square hull, so that theta has zero loss
    wide = torch.tensor([[0.1, 0.4, 0.9, 0.6]])
    assert box_loss(theta_from_box(wide), wide).item() == pytest.approx(0.0, abs=1e-7)
    assert box_loss(theta_from_box(wide), wide, square_target=False).item() > 0
    # identity crop vs box: corner errors 0.25 each > beta 0.1 -> |d| - beta/2 = 0.2
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    assert box_loss(identity, box).item() == pytest.approx(0.2)
    # small errors are quadratic: 0.5 d² / beta with d = 0.05
    shifted = torch.tensor([[[0.5, 0.0, 0.1], [0.0, 0.5, 0.0]]])
    expected = (2 * 0.5 * 0.05**2 / 0.1) / 4
    assert box_loss(shifted, box).item() == pytest.approx(expected)


# -------------------------------------------------------------------------------------- schedule
def _cyclegan_linear_factor(n_constant: int, n_decay: int, epoch: int) -> float:
    """CycleGAN's "linear" rule as its code writes it (the LambdaLR lambda this schedule replaced)."""
    return max(0.0, 1.0 - max(0, epoch + 1 - n_constant) / float(n_decay + 1))


def _lrs(n_constant: int, n_decay: int, epochs: int, lr: float = 2e-4) -> list[float]:
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = linear_decay_schedule(opt, n_constant, n_decay)
    pickle.dumps(sched)  # checkpoints and DDP spawn pickle it
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_linear_decay_schedule_known_values():
    assert _lrs(2, 3, 7) == pytest.approx([2e-4, 2e-4, 1.5e-4, 1e-4, 0.5e-4, 0, 0], abs=1e-18)
    published = _lrs(100, 100, 202, lr=1.0)
    assert published[99] == 1 and published[100] == pytest.approx(1 - 1 / 101)
    assert published[199] == pytest.approx(1 / 101) and published[200] == pytest.approx(0, abs=1e-15)


@pytest.mark.parametrize("n_constant", [0, 1, 2, 5])
@pytest.mark.parametrize("n_decay", [0, 1, 3, 100])
def test_linear_decay_schedule_equals_the_lambda_rule_every_epoch(n_constant, n_decay):
    """torch's LinearLR/SequentialLR give the LR the hand-written lambda gave, epoch by epoch."""
    epochs = n_constant + n_decay + 3
    expected = [2e-4 * _cyclegan_linear_factor(n_constant, n_decay, e) for e in range(epochs)]
    assert _lrs(n_constant, n_decay, epochs) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_linear_decay_schedule_rejects_negative_lengths():
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="n_constant and n_decay must be >= 0"):
        linear_decay_schedule(opt, -1, 2)


# ------------------------------------------------------------------------------------------ pool
def test_pool_size_zero_is_pass_through():
    pool = HistoryPool(0)
    x = torch.randn(3, 4, requires_grad=True)
    assert pool.query(x) is x
    assert len(pool) == 0


def test_pool_fills_then_mixes_with_history():
    torch.manual_seed(0)
    pool = HistoryPool(4)
    first = torch.arange(4.0).reshape(4, 1)
    out = pool.query(first.clone().requires_grad_())
    assert torch.equal(out, first) and not out.requires_grad and len(pool) == 4
    from_history, current = 0, 0
    seen = set(first.flatten().tolist())
    for step in range(1, 40):
        batch = torch.full((2, 1), 100.0 + step)
        out = pool.query(batch)
        assert out.shape == (2, 1)
        for v in out.flatten().tolist():
            if v == 100.0 + step:
                current += 1
            else:
                assert v in seen  # returned items were stored earlier
                from_history += 1
        seen.add(100.0 + step)
        assert len(pool) == 4
    assert from_history > 10 and current > 10  # ~half each


def test_pool_partial_fill_returns_current_and_is_deterministic():
    def run():
        torch.manual_seed(123)
        pool = HistoryPool(3)
        outs = [pool.query(torch.randn(2, 2, 3)) for _ in range(6)]
        return torch.stack(outs), pool

    a, pool = run()
    b, _ = run()
    assert torch.equal(a, b)
    torch.manual_seed(123)
    b1 = torch.randn(2, 2, 3)
    # first query: pool empty -> returns the batch itself, stores both
    assert torch.equal(a[0], b1)
    assert pool.items.shape == (3, 2, 3) and pool.items.device == b1.device
    with pytest.raises(ValueError, match="shape"):
        pool.query(torch.zeros(1, 5))


def test_pool_stores_detached_copies():
    pool = HistoryPool(2)
    x = torch.ones(2, 3, requires_grad=True)
    pool.query(x * 2)
    assert not pool.items.requires_grad
    x.data.fill_(5)
    assert torch.equal(pool.items, torch.full((2, 3), 2.0))


@pytest.mark.parametrize("shape", [(2, 1, 3, 16, 16), (1, 3, 2, 40, 23), (2, 1, 2, 6, 9)])
def test_ssim_values_and_gradients_are_torchmetrics_own(shape):
    """The separable (matrix) SSIM gives torchmetrics' values within 1e-5 and autograd's gradients through
    torchmetrics, for square, non-square, colour and smallest (6-pixel) frames, on related and random
    pairs."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    torch.manual_seed(0)
    b, c, t, h, w = shape
    x0 = torch.rand(shape) * 2 - 1
    for y0 in (torch.rand(shape) * 2 - 1, (x0 + 0.2 * torch.randn(shape)).clamp(-1, 1)):
        x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
        weights = torch.rand(b, t)
        ours = ssim_per_frame(x, y)
        (ours * weights).sum().backward()
        x2, y2 = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
        fx, fy = (v.transpose(1, 2).reshape(b * t, c, h, w) for v in (x2, y2))
        ref = structural_similarity_index_measure(
            fx, fy, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=2.0, reduction="none"
        ).reshape(b, t)
        (ref * weights).sum().backward()
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=0, atol=1e-5)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(y.grad, y2.grad, rtol=1e-4, atol=1e-6)
