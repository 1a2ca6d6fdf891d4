"""Weak views are pure flips/rotations; strong views blur more for larger ε and return it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from lightning_modules.crl_uiqa.nets import QualityScorer
from lightning_modules.crl_uiqa.views import blur, motion_blur_kernels, strong_view, weak_view


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(b: int = 6, c: int = 1, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed)) * 2 - 1


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    lap = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), k)
    return lap.flatten(1).var(dim=1)


def disc_mask(h: int, w: int, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    return (yy**2 + xx**2).sqrt() < radius


# --------------------------------------------------------------------------------------------- weak


def test_weak_view_right_angles_is_exact_flip_rotation() -> None:
    x = rand_images(16, c=3)
    out, prm = weak_view(x, gen(1), right_angles=True, return_params=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(16):
        ref = x[i]
        if prm["hflip"][i]:
            ref = ref.flip(-1)
        if prm["vflip"][i]:
            ref = ref.flip(-2)
        ref = torch.rot90(ref, int(prm["angle"][i]) // 90, dims=(-2, -1))
        assert torch.equal(out[i], ref)
    assert set(prm["angle"].tolist()) <= {0.0, 90.0, 180.0, 270.0}
    # non-square images only get 0 or 180 degrees
    _, prm2 = weak_view(rand_images(16, h=8, w=12), gen(2), right_angles=True, return_params=True)
    assert set(prm2["angle"].tolist()) <= {0.0, 180.0}


def test_weak_view_continuous_is_flip_then_rotation() -> None:
    x = rand_images(8, h=32, w=40)
    out, prm = weak_view(x, gen(3), max_angle=45.0, return_params=True)
    assert prm["angle"].abs().max() <= 45.0 and prm["angle"].abs().max() > 0
    disc = disc_mask(32, 40, 14.0)
    for i in range(8):
        ref = x[i]
        if prm["hflip"][i]:
            ref = ref.flip(-1)
        if prm["vflip"][i]:
            ref = ref.flip(-2)
        ref = TF.rotate(ref, float(prm["angle"][i]), interpolation=TF.InterpolationMode.BILINEAR, fill=-1.0)
        torch.testing.assert_close(out[i][:, disc], ref[:, disc], atol=1e-4, rtol=0)
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    # no rotation, no flips: identity
    assert torch.equal(weak_view(x, gen(0), hflip_p=0, vflip_p=0, max_angle=0), x)


def test_weak_view_rotation_direction_non_square() -> None:
    # a 4×4 pattern at the centre of an 8×10 image turns like torch.rot90 under a +90 degree rotation
    x = torch.full((1, 1, 8, 10), -1.0)
    patch = torch.rand(4, 4, generator=gen(4))
    x[0, 0, 2:6, 3:7] = patch
    from lightning_modules.crl_uiqa.views import _rotate

    out = _rotate(x, torch.tensor([90.0]), fill=-1.0)
    torch.testing.assert_close(out[0, 0, 2:6, 3:7], torch.rot90(patch, 1, dims=(0, 1)), atol=1e-5, rtol=0)


def test_weak_view_keeps_constant_image_and_its_score() -> None:
    const = torch.full((4, 1, 32, 32), 0.3)
    assert torch.equal(weak_view(const, gen(5), right_angles=True), const)
    rot = weak_view(const, gen(5), max_angle=30.0)
    torch.testing.assert_close(rot[..., disc_mask(32, 32, 15.0)], const[..., disc_mask(32, 32, 15.0)])
    scorer = QualityScorer("resnet18", in_channels=1).eval()
    with torch.no_grad():
        torch.testing.assert_close(scorer(weak_view(const, gen(6), right_angles=True)), scorer(const))


def test_weak_view_reproducible() -> None:
    x = rand_images()
    assert torch.equal(weak_view(x, gen(7)), weak_view(x, gen(7)))


# --------------------------------------------------------------------------------------------- strong


def test_strong_view_returns_eps_in_range() -> None:
    x = rand_images(32)
    out, eps, prm = strong_view(x, (0.05, 0.3), gen(8), return_params=True)
    assert out.shape == x.shape and eps.shape == (32,) and eps.dtype == x.dtype
    assert eps.min() >= 0.05 and eps.max() <= 0.3
    assert set(prm["kind"].tolist()) == {0, 1}  # both blur kinds drawn
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    _, eps_fixed = strong_view(x, (0.2, 0.2), gen(9))
    torch.testing.assert_close(eps_fixed, torch.full((32,), 0.2))
    out2, eps2 = strong_view(x, (0.05, 0.3), gen(8))
    assert torch.equal(out2, out) and torch.equal(eps2, eps)


@pytest.mark.parametrize("kind", ["gaussian", "motion"])
def test_strong_view_blurs_more_for_larger_eps(kind: str) -> None:
    x = rand_images(4, h=48, w=48)
    lv = [laplacian_variance(x)]
    for e in (0.05, 0.1, 0.2, 0.3):
        out, eps = strong_view(x, (e, e), gen(10), kinds=(kind,))
        torch.testing.assert_close(eps, torch.full((4,), e))
        lv.append(laplacian_variance(out))
    lv = torch.stack(lv)  # levels × images
    assert bool((lv[1:] < lv[:-1]).all()), lv
    assert bool((lv[-1] < 0.2 * lv[0]).all())


def test_blur_eps_zero_is_identity_and_kernels_normalised() -> None:
    x = rand_images(3)
    for kind in ("gaussian", "motion"):
        torch.testing.assert_close(blur(x, torch.zeros(3), kind), x)
    k = motion_blur_kernels(torch.tensor([0.0, 3.0, 7.5]), torch.tensor([0.0, 30.0, 100.0]))
    torch.testing.assert_close(k.sum(dim=(-2, -1)), torch.ones(3))
    assert torch.equal(k, k.flip(-1).flip(-2))  # point-symmetric
    # a horizontal streak of length 3 averages three neighbours in a row
    k3 = motion_blur_kernels(torch.tensor([3.0]), torch.tensor([0.0]))[0]
    r = k3.shape[0] // 2
    torch.testing.assert_close(k3[r, r - 1 : r + 2], torch.full((3,), 1 / 3))


def test_strong_view_errors() -> None:
    x = rand_images(2)
    with pytest.raises(ValueError, match="eps_range"):
        strong_view(x, (0.3, 0.1))
    with pytest.raises(ValueError, match="eps_range"):
        strong_view(x, (0.1, 1.0))
    with pytest.raises(ValueError, match="kinds"):
        strong_view(x, (0.1, 0.2), kinds=("jpeg",))
    with pytest.raises(ValueError, match="B×C×H×W"):
        weak_view(x[0])
