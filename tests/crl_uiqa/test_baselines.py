"""Classical baselines: NIQE / BRISQUE rank distorted images worse; MSSIM against the closest standard image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.crl_uiqa.baselines import (
    BRISQUE,
    NIQE,
    _aggd_fit,
    _ggd_fit,
    brisque_features,
    classical_scores,
    closest_standard,
    imresize_half,
    to_gray255,
)
from lightning_modules.crl_uiqa.views import blur


def pink_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Natural-image-like 1/f² power-spectrum textures in [-1, 1], ``n×1×size×size``."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    fr = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    fr[0, 0] = 1.0
    out = []
    for _ in range(n):
        z = torch.complex(torch.randn(size, size, generator=g), torch.randn(size, size, generator=g))
        im = torch.fft.ifft2(z / fr).real
        out.append(torch.tanh(0.6 * (im - im.mean()) / im.std()))
    return torch.stack(out)[:, None].float()


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    standard = pink_images(12, 128, seed=0)
    clean = pink_images(5, 128, seed=1)
    blurred = blur(clean, torch.full((5,), 0.2), "gaussian")  # σ = 2 px
    noisy = (clean + 0.15 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    return {"standard": standard, "clean": clean, "blurred": blurred, "noisy": noisy}


def test_niqe_ranks_distorted_worse(data: dict[str, torch.Tensor]) -> None:
    niqe = NIQE(patch_size=32).fit(data["standard"])
    assert niqe.n_patches_ > 36
    clean = niqe.score(data["clean"])
    assert np.all(np.isfinite(clean))
    assert np.all(niqe.score(data["blurred"]) > clean)
    assert np.all(niqe.score(data["noisy"]) > clean)
    # classical_scores: higher = better
    s = classical_scores(torch.cat([data["clean"], data["blurred"]]), data["standard"], "niqe", patch_size=32)
    assert np.all(s[:5] > s[5:])


def test_brisque_ranks_distorted_worse(data: dict[str, torch.Tensor]) -> None:
    model = BRISQUE().fit_synthetic(data["standard"])
    clean = model.score(data["clean"])
    assert np.all(model.score(data["blurred"]) < clean)
    assert np.all(model.score(data["noisy"]) < clean)
    s = classical_scores(torch.cat([data["clean"], data["noisy"]]), data["standard"], "brisque")
    assert np.all(s[:5] > s[5:])


def test_brisque_fit_on_targets(data: dict[str, torch.Tensor]) -> None:
    # e.g. pseudo-labels: clean images 1, blurred 0
    imgs = torch.cat([data["standard"][:6], blur(data["standard"][:6], torch.full((6,), 0.25), "gaussian")])
    targets = torch.cat([torch.ones(6), torch.zeros(6)])
    s = classical_scores(
        torch.cat([data["clean"], data["blurred"]]),
        data["standard"],
        "brisque",
        fit_images=imgs,
        fit_targets=targets,
    )
    assert s.shape == (10,) and np.all(s[:5] > s[5:])


def test_features_and_blank_images(data: dict[str, torch.Tensor]) -> None:
    assert BRISQUE.features(data["clean"][:2]).shape == (2, 36)
    blank = torch.full((1, 1, 128, 128), -1.0)
    niqe = NIQE(patch_size=32).fit(data["standard"])
    assert math.isnan(niqe.score(blank)[0])
    s = classical_scores(torch.cat([blank, data["clean"][:1]]), data["standard"], "niqe", patch_size=32)
    assert s[0] == -np.inf and np.isfinite(s[1])
    with pytest.raises(ValueError, match="smaller than one"):
        niqe.score(torch.zeros(1, 1, 16, 16))


def test_distribution_fits_recover_known_shapes() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.standard_normal(200_000), rng.laplace(size=200_000)])
    alpha, var = _ggd_fit(x)
    np.testing.assert_allclose(alpha, [2.0, 1.0], atol=0.03)
    np.testing.assert_allclose(var, [1.0, 2.0], rtol=0.02)
    a, left, right = _aggd_fit(x)
    np.testing.assert_allclose(a, [2.0, 1.0], atol=0.03)
    np.testing.assert_allclose(left, right, rtol=0.02)


def test_brisque_features_match_the_piq_reference_implementation() -> None:
    """The 18 scale-1 BRISQUE features (MSCN, GGD fit of the coefficients, AGGD fits of the four neighbour
    products with their means and variances) equal piq's independent implementation of the LIVE reference code
    (``piq.brisque._natural_scene_statistics``, same 7×7 σ = 7/6 window, same shape tables). The image has a
    black frame, as ultrasound has, so piq's zero padding and the replicate padding here see the same border.
    (Scale 2 differs by design: MATLAB's bicubic ``imresize`` here, nearest/bilinear in piq. No published feature
    or score values apply: NIQE's pristine model and BRISQUE's SVR are refitted on ultrasound standard planes.)"""
    pytest.importorskip("piq")
    import importlib

    import cv2

    piq_brisque = importlib.import_module("piq.brisque")
    rng = np.random.default_rng(0)
    image = np.zeros((112, 144))
    inner = cv2.GaussianBlur(rng.uniform(0, 255, (96, 128)), (0, 0), 1.5)
    image[8:-8, 8:-8] = np.clip(inner + rng.normal(0, 8, inner.shape), 0, 255)
    ours = brisque_features(image)[:18]
    reference = piq_brisque._natural_scene_statistics(torch.tensor(image)[None, None], 7, 7 / 6)
    np.testing.assert_allclose(ours, reference.numpy().ravel(), rtol=1e-10, atol=1e-12)


def test_imresize_half_matches_bicubic_antialias_inside() -> None:
    a = np.random.default_rng(0).random((40, 36)) * 255
    half = imresize_half(a)
    assert half.shape == (20, 18)
    ref = F.interpolate(torch.from_numpy(a)[None, None], size=(20, 18), mode="bicubic", antialias=True)[
        0, 0
    ].numpy()
    np.testing.assert_allclose(
        half[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-9
    )  # borders: MATLAB symmetric padding
    assert imresize_half(np.random.default_rng(1).random((9, 7))).shape == (5, 4)


def test_to_gray255() -> None:
    rgb = torch.zeros(1, 3, 4, 4)
    rgb[:, 1] = 1.0  # green at full intensity, others mid-grey
    g = to_gray255(rgb)[0]
    assert g.shape == (4, 4)
    assert g[0, 0] == pytest.approx(127.5 + 127.5 * 0.587043074451121)
    assert to_gray255(torch.full((1, 1, 2, 2), -1.0))[0].max() == 0.0


def test_mssim_against_closest_standard(data: dict[str, torch.Tensor]) -> None:
    std = data["standard"]
    imgs = torch.cat(
        [
            std[3:4],
            blur(std[3:4], torch.tensor([0.1]), "gaussian"),
            blur(std[3:4], torch.tensor([0.3]), "gaussian"),
        ]
    )
    np.testing.assert_array_equal(closest_standard(imgs, std), [3, 3, 3])
    for method in ("mssim", "ms_ssim"):
        s = classical_scores(imgs, std, method)
        assert s[0] == pytest.approx(1.0, abs=1e-5)
        assert s[0] > s[1] > s[2]
    best = classical_scores(imgs, std, "mssim", reference="best")
    assert best[0] == pytest.approx(1.0, abs=1e-5) and best[1] < best[0]
    # reference chosen by embedding: forcing standard 5 as the reference lowers the score of a copy of 3
    emb = torch.zeros(3, 2)
    std_emb = torch.ones(12, 2) * 10
    std_emb[5] = 0.0
    s_emb = classical_scores(
        imgs, std, "mssim", reference="embedding", embeddings=emb, standard_embeddings=std_emb
    )
    assert s_emb[0] < 0.5
    # grey vs RGB and other sizes are matched
    rgb_std = F.interpolate(std.repeat(1, 3, 1, 1), size=(96, 96), mode="bilinear")
    assert classical_scores(imgs[:1], rgb_std, "mssim").shape == (1,)


def test_unknown_method_and_arguments(data: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="unknown method"):
        classical_scores(data["clean"], data["standard"], "piqe")
    with pytest.raises(TypeError, match="unexpected arguments"):
        classical_scores(data["clean"], data["standard"], "niqe", reference="pixel")
