"""Classical quality scores compared in CRL-UIQA (Guo et al., MICCAI 2024, Table 2): NIQE, BRISQUE, MSSIM.

Everything runs offline; :func:`classical_scores` returns scores where **higher = better** for every method.

Why these are re-implementations (checked on piq 0.8.0 and pyiqa 0.1.16 wheels):

* piq has BRISQUE but no NIQE, and its BRISQUE downloads its SVR weights at first use
  (``torch.utils.model_zoo.load_url("https://github.com/photosynthesis-team/piq/releases/download/v0.4.0/
  brisque_svm_weights.pt")``).
* pyiqa's NIQE and BRISQUE download their parameters (``niqe_modelparameters.mat``,
  ``brisque_svm_weights.pth``) from Hugging Face / GitHub at construction unless a local
  ``pretrained_model_path`` is given, and the package pulls in a large dependency set (transformers >= 5,
  accelerate, datasets, bitsandbytes, ...).
* The original NIQE pristine model and BRISQUE SVR were fitted on natural images (and LIVE opinion scores)
  that are not available offline here.

So the features follow the authors' MATLAB reference code (Mittal et al. 2012a/b; ``brisque_feature.m``,
``computequality.m``, ``computefeature.m``, ``estimatemodelparam.m``), and the *models* are fitted on the
ultrasound data instead:

* :class:`NIQE` — **"NIQE with a model fitted on the standard planes"**: MSCN coefficients (7×7 Gaussian window,
  σ = 7/6, replicate borders, C = 1 on a 0-255 grey scale), per ``patch_size`` patch at two scales (the second a
  MATLAB-style bicubic anti-aliased half-size) 18 features each: AGGD fit of the MSCN (α, mean of the two
  scales) and, for the four neighbour products (H, V, D1, D2), AGGD (α, mean, β_l, β_r). The pristine
  multivariate Gaussian is fitted to the patches of the standard-plane images whose sharpness (mean local σ)
  exceeds ``sharpness_threshold`` × that image's sharpest patch. Score = ``sqrt((ν₁-ν₂)ᵀ((Σ₁+Σ₂)/2)⁺(ν₁-ν₂))``
  (lower = better). Patches without texture (e.g. the black area outside the ultrasound fan) give NaN features
  and are dropped, as MATLAB's ``nanmean``/``nancov`` do; an image with no valid patch scores NaN.
* :class:`BRISQUE` — the BRISQUE 36 features (two scales; GGD (α, σ²) of the MSCN and AGGD (α, mean, σ_l², σ_r²)
  of the four neighbour products) with an ``sklearn`` RBF SVR on features scaled to ``[-1, 1]`` (as libsvm in the
  reference code). The SVR is fitted either (default, :meth:`BRISQUE.fit_synthetic`) on the standard-plane
  images and synthetically distorted copies of them (Gaussian blur, white noise, speckle, JPEG at five
  levels each; target 1 for the clean image and ``1 - level/5`` for level 1..5) — the same recipe as the
  original (pristine images + graded synthetic distortions), with the level as a stand-in for opinion
  scores — or (:meth:`BRISQUE.fit`) on any images and targets, e.g. the training images' pseudo-labels. It
  predicts a quality (higher = better), not the original 0-100 BRISQUE scale.
* MSSIM — the cited reference (Wang et al. 2004) defines MSSIM as the *mean* SSIM over the image: method
  ``"mssim"`` is torchmetrics' SSIM (11×11 Gaussian, σ 1.5, mean over the map). ``"ms_ssim"`` is the
  multi-scale SSIM of torchmetrics (``normalize="relu"``), with as many of the five scales as the image size
  allows (the first ``n`` standard weights, renormalised to sum 1). Both are full-reference: the reference of
  each image is its closest standard-plane image, by grey-level pixel distance at ``pixel_size``² (default), by
  embedding distance (pass ``embeddings`` and ``standard_embeddings``), or ``reference="best"``: the maximum
  over all standard images.

Other baselines of the paper (SER-FIQ, SDD-FIQA, the weighted structure score) are learning-based and not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import gamma as _gamma
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVR
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

__all__ = [
    "BRISQUE",
    "METHODS",
    "NIQE",
    "brisque_features",
    "classical_scores",
    "closest_standard",
    "full_reference_scores",
    "imresize_half",
    "mscn",
    "niqe_patch_features",
    "to_gray255",
]

METHODS = ("niqe", "brisque", "mssim", "ms_ssim")

ImageInput = torch.Tensor | np.ndarray | Sequence[torch.Tensor] | Sequence[np.ndarray]

# ------------------------------------------------------------------------------------------ image helpers


def to_gray255(images: ImageInput) -> list[np.ndarray]:
    """``[-1, 1]`` images (``B×C×H×W`` tensor/array, or a list of ``C×H×W`` / ``H×W``) to float64 grey ``[0, 255]``.

    RGB uses the BT.601 luma weights (MATLAB ``rgb2gray``); other channel counts are averaged.
    """
    if isinstance(images, (torch.Tensor, np.ndarray)):
        if images.ndim != 4:
            raise ValueError(f"images must be B×C×H×W, got shape {tuple(images.shape)}")
        items = list(images)
    else:
        items = list(images)
    out = []
    for im in items:
        a = (
            im.detach().to("cpu", torch.float64).numpy()
            if isinstance(im, torch.Tensor)
            else np.asarray(im, np.float64)
        )
        if a.ndim == 3:
            if a.shape[0] == 3:
                a = 0.298936021293775 * a[0] + 0.587043074451121 * a[1] + 0.114020904255103 * a[2]
            else:
                a = a.mean(axis=0)
        if a.ndim != 2:
            raise ValueError(f"each image must be C×H×W or H×W, got shape {a.shape}")
        out.append(np.clip((a + 1.0) * 127.5, 0.0, 255.0))
    return out


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


# MATLAB imresize(im, 0.5) (bicubic, antialiasing): output j samples input coordinate 2j + 0.5 (0-based) with
# the kernel 0.5·cubic(0.5·x) at offsets x = -3.5 .. 3.5, symmetric borders.
_HALF_TAPS = _cubic(0.5 * np.arange(-3.5, 4.0, 1.0)) * 0.5
_HALF_TAPS = _HALF_TAPS / _HALF_TAPS.sum()


def _half_axis(a: np.ndarray, axis: int) -> np.ndarray:
    n = a.shape[axis]
    m = (n + 1) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (3, 4 + (2 * m - n))
    p = np.pad(a, pad, mode="symmetric")
    out = np.zeros_like(np.take(p, np.arange(m), axis=axis))
    for t, w in enumerate(_HALF_TAPS):
        out += w * np.take(p, np.arange(m) * 2 + t, axis=axis)
    return out


def imresize_half(img: np.ndarray) -> np.ndarray:
    """MATLAB-style ``imresize(img, 0.5)`` (bicubic with anti-aliasing) of a 2-D array."""
    return _half_axis(_half_axis(img, 0), 1)


_WINDOW = cv2.getGaussianKernel(7, 7.0 / 6.0, cv2.CV_64F)
_WINDOW = _WINDOW @ _WINDOW.T
_WINDOW /= _WINDOW.sum()


def mscn(img: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean-subtracted contrast-normalised coefficients ``(I - μ) / (σ + c)`` and the local ``σ`` (grey 0-255)."""
    img = np.ascontiguousarray(img, dtype=np.float64)
    mu = cv2.filter2D(img, cv2.CV_64F, _WINDOW, borderType=cv2.BORDER_REPLICATE)
    sigma = np.sqrt(
        np.abs(cv2.filter2D(img * img, cv2.CV_64F, _WINDOW, borderType=cv2.BORDER_REPLICATE) - mu * mu)
    )
    return (img - mu) / (sigma + c), sigma


# ------------------------------------------------------------------------------------------ GGD / AGGD fits

_GAM = np.arange(0.2, 10.0 + 5e-4, 0.001)
_R_GGD = _gamma(1 / _GAM) * _gamma(3 / _GAM) / _gamma(2 / _GAM) ** 2
_R_AGGD = _gamma(2 / _GAM) ** 2 / (_gamma(1 / _GAM) * _gamma(3 / _GAM))


def _nearest_gam(r_table: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The shape α whose table ratio is closest to each target (NaN where the target is NaN)."""
    order = np.argsort(r_table)
    rs = r_table[order]
    t = np.where(np.isfinite(target), target, 0.0)
    pos = np.clip(np.searchsorted(rs, t), 1, rs.size - 1)
    left_closer = np.abs(t - rs[pos - 1]) <= np.abs(rs[pos] - t)
    idx = np.where(left_closer, pos - 1, pos)
    return np.where(np.isfinite(target), _GAM[order[idx]], np.nan)


def _ggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` (P×n) -> GGD ``(α, σ²)`` (``estimateggdparam.m``)."""
    sigma_sq = np.mean(x * x, axis=1)
    e = np.mean(np.abs(x), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = sigma_sq / (e * e)
    rho = np.where(e > 0, rho, np.nan)
    return _nearest_gam(_R_GGD, rho), np.where(e > 0, sigma_sq, np.nan)


def _aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``x`` (P×n) -> AGGD ``(α, left std, right std)`` (``estimateaggdparam.m``); NaN if a side is empty."""
    neg, pos = x < 0, x > 0
    n_neg, n_pos = neg.sum(axis=1), pos.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.sqrt(np.sum(np.where(neg, x * x, 0.0), axis=1) / n_neg)
        right = np.sqrt(np.sum(np.where(pos, x * x, 0.0), axis=1) / n_pos)
        gammahat = left / right
        rhat = np.mean(np.abs(x), axis=1) ** 2 / np.mean(x * x, axis=1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    ok = (n_neg > 0) & (n_pos > 0) & np.isfinite(rhatnorm) & (left > 0) & (right > 0)
    alpha = _nearest_gam(_R_AGGD, np.where(ok, rhatnorm, np.nan))
    return alpha, np.where(ok, left, np.nan), np.where(ok, right, np.nan)


_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # (rows, cols) as MATLAB circshift in the reference code


# ------------------------------------------------------------------------------------------ NIQE


def _patches(a: np.ndarray, ps: int) -> np.ndarray:
    nr, nc = a.shape[0] // ps, a.shape[1] // ps
    return a[: nr * ps, : nc * ps].reshape(nr, ps, nc, ps).transpose(0, 2, 1, 3).reshape(nr * nc, ps, ps)


def _niqe_block_features(blocks: np.ndarray) -> np.ndarray:
    """``computefeature.m`` on P blocks (P×h×w) of MSCN -> P×18."""
    flat = blocks.reshape(blocks.shape[0], -1)
    alpha, bl, br = _aggd_fit(flat)
    with np.errstate(invalid="ignore"):
        scale = np.sqrt(_gamma(1 / alpha) / _gamma(3 / alpha))
    feats = [alpha, (bl * scale + br * scale) / 2]
    for dr, dc in _SHIFTS:
        pair = (blocks * np.roll(blocks, (dr, dc), axis=(1, 2))).reshape(blocks.shape[0], -1)
        a, l_std, r_std = _aggd_fit(pair)
        with np.errstate(invalid="ignore"):
            s = np.sqrt(_gamma(1 / a) / _gamma(3 / a))
            betal, betar = l_std * s, r_std * s
            mean = (betar - betal) * (_gamma(2 / a) / _gamma(1 / a))
        feats += [a, mean, betal, betar]
    return np.stack(feats, axis=1)


def niqe_patch_features(img255: np.ndarray, patch_size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """NIQE patch features of one grey ``[0, 255]`` image: ``(P×36 features, P sharpness)`` (``computequality.m``).

    The image is cropped to a multiple of ``patch_size`` (even, >= 8); sharpness = mean local σ of the patch at
    scale 1. Rows with NaN are patches without texture.
    """
    if patch_size < 8 or patch_size % 2:
        raise ValueError(f"patch_size must be even and >= 8, got {patch_size}")
    h, w = img255.shape
    nr, nc = h // patch_size, w // patch_size
    if nr == 0 or nc == 0:
        raise ValueError(f"image of {h}×{w} is smaller than one {patch_size}×{patch_size} NIQE patch")
    im = img255[: nr * patch_size, : nc * patch_size]
    feats = []
    sharp = None
    for scale in (1, 2):
        structdis, sigma = mscn(im)
        feats.append(_niqe_block_features(_patches(structdis, patch_size // scale)))
        if scale == 1:
            sharp = _patches(sigma, patch_size).mean(axis=(1, 2))
            im = imresize_half(im)
    assert sharp is not None  # set at scale 1
    return np.concatenate(feats, axis=1), sharp


def _mvg(features: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and covariance of the rows without NaN (``None`` if none); one row -> zero covariance."""
    rows = features[np.all(np.isfinite(features), axis=1)]
    if rows.shape[0] == 0:
        return None
    cov = np.cov(rows, rowvar=False) if rows.shape[0] > 1 else np.zeros((rows.shape[1], rows.shape[1]))
    return rows.mean(axis=0), cov


class NIQE:
    """NIQE with the pristine model fitted on given (standard-plane) images; see the module docstring.

    Args:
        patch_size: patch side at full scale (96 in the original; use smaller patches for small images, a
            patch must fit at least once and the pristine model needs many more patches than 36).
        sharpness_threshold: pristine patches kept per image: sharpness > threshold × the image's maximum.
    """

    def __init__(self, patch_size: int = 96, sharpness_threshold: float = 0.75) -> None:
        self.patch_size = int(patch_size)
        self.sharpness_threshold = float(sharpness_threshold)
        self.mu_: np.ndarray | None = None
        self.cov_: np.ndarray | None = None
        self.n_patches_: int = 0

    def fit(self, images: ImageInput) -> NIQE:
        """Fit the pristine multivariate Gaussian on ``images`` (``[-1, 1]``)."""
        rows = []
        for im in to_gray255(images):
            f, sharp = niqe_patch_features(im, self.patch_size)
            keep = (
                sharp > self.sharpness_threshold * sharp.max()
                if sharp.max() > 0
                else np.zeros_like(sharp, bool)
            )
            rows.append(f[keep])
        feats = np.concatenate(rows) if rows else np.zeros((0, 36))
        mvg = _mvg(feats)
        if mvg is None or np.sum(np.all(np.isfinite(feats), axis=1)) < 2:
            raise ValueError(
                "NIQE: fewer than 2 textured patches in the fitting images; use a smaller patch_size"
            )
        self.mu_, self.cov_ = mvg
        self.n_patches_ = int(np.sum(np.all(np.isfinite(feats), axis=1)))
        return self

    def score(self, images: ImageInput) -> np.ndarray:
        """NIQE distance per image (lower = better; NaN for an image without any textured patch)."""
        if self.mu_ is None:
            raise RuntimeError("NIQE.score before fit")
        out = []
        for im in to_gray255(images):
            f, _ = niqe_patch_features(im, self.patch_size)
            mvg = _mvg(f)
            if mvg is None:
                out.append(np.nan)
                continue
            mu, cov = mvg
            d = self.mu_ - mu
            inv = np.linalg.pinv((self.cov_ + cov) / 2.0)
            out.append(float(np.sqrt(max(d @ inv @ d, 0.0))))
        return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------------------ BRISQUE


def brisque_features(img255: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of one grey ``[0, 255]`` image (``brisque_feature.m``; NaN if degenerate)."""
    feats = []
    im = np.asarray(img255, dtype=np.float64)
    for scale in range(2):
        structdis, _ = mscn(im)
        flat = structdis.reshape(1, -1)
        alpha, sigma_sq = _ggd_fit(flat)
        feats += [alpha[0], sigma_sq[0]]
        for dr, dc in _SHIFTS:
            pair = (structdis * np.roll(structdis, (dr, dc), axis=(0, 1))).reshape(1, -1)
            a, l_std, r_std = _aggd_fit(pair)
            with np.errstate(invalid="ignore"):
                const = np.sqrt(_gamma(1 / a)) / np.sqrt(_gamma(3 / a))
                mean = (r_std - l_std) * (_gamma(2 / a) / _gamma(1 / a)) * const
            feats += [a[0], mean[0], l_std[0] ** 2, r_std[0] ** 2]
        if scale == 0:
            im = imresize_half(im)
    return np.asarray(feats, dtype=np.float64)


# Synthetic distortions for fit_synthetic: five levels each (grey 0-255 units / pixels / JPEG quality).
DISTORTION_LEVELS: dict[str, tuple[float, ...]] = {
    "blur": (0.75, 1.5, 2.5, 3.5, 5.0),  # Gaussian σ, pixels
    "noise": (4.0, 8.0, 16.0, 24.0, 32.0),  # additive white Gaussian noise std
    "speckle": (0.05, 0.1, 0.2, 0.3, 0.4),  # multiplicative noise std: I·(1 + n)
    "jpeg": (50.0, 30.0, 15.0, 8.0, 3.0),  # JPEG quality
}


def distort(img255: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """One synthetic distortion of a grey ``[0, 255]`` image (clipped to ``[0, 255]``)."""
    if kind == "blur":
        ks = 2 * math.ceil(3 * level) + 1
        out = cv2.GaussianBlur(img255, (ks, ks), level, borderType=cv2.BORDER_REFLECT)
    elif kind == "noise":
        out = img255 + rng.normal(0.0, level, img255.shape)
    elif kind == "speckle":
        out = img255 * (1.0 + rng.normal(0.0, level, img255.shape))
    elif kind == "jpeg":
        ok, buf = cv2.imencode(
            ".jpg", np.clip(np.round(img255), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, int(level)]
        )
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float64)
    else:
        raise ValueError(f"unknown distortion {kind!r}; expected one of {sorted(DISTORTION_LEVELS)}")
    return np.clip(out, 0.0, 255.0)


class BRISQUE:
    """BRISQUE features + RBF SVR (higher prediction = better); see the module docstring.

    Args:
        C, epsilon, gamma: ``sklearn.svm.SVR`` parameters.
    """

    def __init__(self, C: float = 10.0, epsilon: float = 0.05, gamma: str | float = "scale") -> None:
        self.C, self.epsilon, self.gamma = C, epsilon, gamma
        self.model_: Pipeline | None = None
        self.fit_info_: dict[str, Any] = {}

    @staticmethod
    def features(images: ImageInput) -> np.ndarray:
        """``N×36`` BRISQUE features of ``[-1, 1]`` images."""
        return np.stack([brisque_features(im) for im in to_gray255(images)])

    def _fit_features(self, x: np.ndarray, y: np.ndarray) -> BRISQUE:
        ok = np.all(np.isfinite(x), axis=1)
        if ok.sum() < 2:
            raise ValueError("BRISQUE: fewer than 2 images with finite features to fit on")
        self.model_ = make_pipeline(
            MinMaxScaler(feature_range=(-1, 1)),
            SVR(kernel="rbf", C=self.C, epsilon=self.epsilon, gamma=self.gamma),
        )
        self.model_.fit(x[ok], y[ok])
        return self

    def fit(self, images: ImageInput, targets: torch.Tensor | np.ndarray | Sequence[float]) -> BRISQUE:
        """Fit the SVR on ``images`` and quality ``targets`` (higher = better, e.g. pseudo-labels)."""
        y = (
            targets.detach().cpu().double().numpy()
            if isinstance(targets, torch.Tensor)
            else np.asarray(targets, float)
        )
        x = self.features(images)
        if x.shape[0] != y.size:
            raise ValueError(f"{x.shape[0]} images but {y.size} targets")
        self.fit_info_ = {"mode": "targets", "n": int(y.size)}
        return self._fit_features(x, y.reshape(-1))

    def fit_synthetic(
        self,
        images: ImageInput,
        levels: dict[str, Sequence[float]] | None = None,
        seed: int = 0,
    ) -> BRISQUE:
        """Fit on clean ``images`` (target 1) and distorted copies (target ``1 - level_index / n_levels``)."""
        levels = {k: tuple(v) for k, v in (levels or DISTORTION_LEVELS).items()}
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for im in to_gray255(images):
            xs.append(brisque_features(im))
            ys.append(1.0)
            for kind, lv in levels.items():
                for i, level in enumerate(lv, start=1):
                    xs.append(brisque_features(distort(im, kind, level, rng)))
                    ys.append(1.0 - i / len(lv))
        self.fit_info_ = {"mode": "synthetic", "levels": levels, "seed": seed, "n": len(ys)}
        return self._fit_features(np.stack(xs), np.asarray(ys))

    def score(self, images: ImageInput) -> np.ndarray:
        """Predicted quality per image (higher = better; NaN if its features are degenerate)."""
        if self.model_ is None:
            raise RuntimeError("BRISQUE.score before fit / fit_synthetic")
        x = self.features(images)
        out = np.full(x.shape[0], np.nan)
        ok = np.all(np.isfinite(x), axis=1)
        if ok.any():
            out[ok] = self.model_.predict(x[ok])
        return out


# ------------------------------------------------------------------------------------------ full reference


def _as_batch(images: ImageInput) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        x = images
    elif isinstance(images, np.ndarray):
        x = torch.from_numpy(images)
    else:
        x = torch.stack([torch.as_tensor(i) for i in images])
    if x.ndim != 4:
        raise ValueError(f"images must be B×C×H×W, got shape {tuple(x.shape)}")
    return x.detach().float().cpu()


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    if x.shape[1] == 3:
        w = torch.tensor([0.298936021293775, 0.587043074451121, 0.114020904255103]).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _match(images: torch.Tensor, standard: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same channels (grey if they differ) and the standards resized to the images' size."""
    if images.shape[1] != standard.shape[1]:
        images, standard = _grey(images), _grey(standard)
    if standard.shape[-2:] != images.shape[-2:]:
        standard = F.interpolate(
            standard, size=images.shape[-2:], mode="bilinear", antialias=True, align_corners=False
        )
    return images, standard


def closest_standard(
    images: ImageInput,
    standard_images: ImageInput,
    embeddings: torch.Tensor | None = None,
    standard_embeddings: torch.Tensor | None = None,
    pixel_size: int = 64,
) -> np.ndarray:
    """Index of each image's closest standard image: by embedding distance if both embeddings are given, else
    by Euclidean distance of the grey images resized to ``pixel_size``² (antialiased bilinear)."""
    if (embeddings is None) != (standard_embeddings is None):
        raise ValueError("give both embeddings and standard_embeddings, or neither")
    if embeddings is not None and standard_embeddings is not None:
        d = torch.cdist(embeddings.detach().float().cpu(), standard_embeddings.detach().float().cpu())
        return d.argmin(dim=1).numpy()
    x, s = _grey(_as_batch(images)), _grey(_as_batch(standard_images))
    x = F.interpolate(x, size=(pixel_size, pixel_size), mode="bilinear", antialias=True, align_corners=False)
    s = F.interpolate(s, size=(pixel_size, pixel_size), mode="bilinear", antialias=True, align_corners=False)
    return torch.cdist(x.flatten(1).double(), s.flatten(1).double()).argmin(dim=1).numpy()


def _ms_ssim_betas(h: int, w: int, kernel: int = 11) -> tuple[float, ...]:
    full = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    for n in range(5, 1, -1):
        div = max(1, n - 1) ** 2
        if min(h, w) >= 2**n and h // div > kernel - 1 and w // div > kernel - 1:
            b = np.asarray(full[:n])
            return tuple(float(v) for v in b / b.sum())
    raise ValueError(f"images of {h}×{w} are too small for MS-SSIM (need at least 2 scales)")


def _fr(metric: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if metric == "mssim":
        return cast(torch.Tensor, structural_similarity_index_measure(x, y, data_range=2.0, reduction="none"))
    if metric == "ms_ssim":
        betas = _ms_ssim_betas(x.shape[-2], x.shape[-1])
        return multiscale_structural_similarity_index_measure(
            x, y, data_range=2.0, reduction="none", betas=betas, normalize="relu"
        )
    raise ValueError(f"unknown full-reference metric {metric!r}; expected 'mssim' or 'ms_ssim'")


def full_reference_scores(
    images: ImageInput,
    standard_images: ImageInput,
    metric: Literal["mssim", "ms_ssim"] = "mssim",
    reference: Literal["pixel", "embedding", "best"] = "pixel",
    embeddings: torch.Tensor | None = None,
    standard_embeddings: torch.Tensor | None = None,
    pixel_size: int = 64,
    batch_size: int = 64,
) -> np.ndarray:
    """SSIM-family score of each image against a standard-plane reference (higher = better), see module docstring."""
    x, s = _match(_as_batch(images), _as_batch(standard_images))
    if reference == "best":
        out = torch.full((x.shape[0],), -float("inf"), dtype=torch.float64)
        for j in range(s.shape[0]):
            for a in range(0, x.shape[0], batch_size):
                xb = x[a : a + batch_size]
                v = _fr(metric, xb, s[j : j + 1].expand_as(xb)).double()
                out[a : a + batch_size] = torch.maximum(out[a : a + batch_size], v)
        return out.numpy()
    if reference == "embedding" and embeddings is None:
        raise ValueError("reference='embedding' needs embeddings and standard_embeddings")
    if reference not in ("pixel", "embedding"):
        raise ValueError(f"unknown reference {reference!r}; expected 'pixel', 'embedding' or 'best'")
    idx = closest_standard(
        x,
        s,
        embeddings if reference == "embedding" else None,
        standard_embeddings if reference == "embedding" else None,
        pixel_size,
    )
    ref = s[torch.as_tensor(idx)]
    vals = [
        _fr(metric, x[a : a + batch_size], ref[a : a + batch_size]).double()
        for a in range(0, x.shape[0], batch_size)
    ]
    return torch.cat(vals).numpy()


# ------------------------------------------------------------------------------------------ entry point


def classical_scores(
    images: ImageInput,
    standard_images: ImageInput,
    method: str,
    **kwargs: Any,
) -> np.ndarray:
    """Classical quality score of each image, **higher = better** for every method.

    Args:
        images: ``B×C×H×W`` in ``[-1, 1]`` (or a list of ``C×H×W``).
        standard_images: the standard-plane set, same format.
        method:
            * ``"niqe"``: ``-NIQE`` with the model fitted on ``standard_images`` (kwargs ``patch_size``,
              ``sharpness_threshold``). An image without a textured patch gets ``-inf``.
            * ``"brisque"``: SVR prediction; fitted on synthetic distortions of ``standard_images`` (kwargs
              ``levels``, ``seed``, ``C``, ``epsilon``), or, given ``fit_images`` and ``fit_targets`` (e.g. the
              training images and their pseudo-labels), on those. Degenerate features get ``-inf``.
            * ``"mssim"`` (alias ``"ssim"``) / ``"ms_ssim"``: full-reference against the closest standard image
              (kwargs ``reference``, ``embeddings``, ``standard_embeddings``, ``pixel_size``).

    Models are fitted at each call; for repeated scoring use :class:`NIQE` / :class:`BRISQUE` directly.
    """
    method = method.lower()
    if method == "niqe":
        model = NIQE(kwargs.pop("patch_size", 96), kwargs.pop("sharpness_threshold", 0.75))
        _no_extra(kwargs, method)
        out = -model.fit(standard_images).score(images)
    elif method == "brisque":
        model_b = BRISQUE(C=kwargs.pop("C", 10.0), epsilon=kwargs.pop("epsilon", 0.05))
        fit_images, fit_targets = kwargs.pop("fit_images", None), kwargs.pop("fit_targets", None)
        levels, seed = kwargs.pop("levels", None), kwargs.pop("seed", 0)
        _no_extra(kwargs, method)
        if (fit_images is None) != (fit_targets is None):
            raise ValueError("give both fit_images and fit_targets, or neither")
        if fit_images is not None:
            model_b.fit(fit_images, fit_targets)
        else:
            model_b.fit_synthetic(standard_images, levels=levels, seed=seed)
        out = model_b.score(images)
    elif method in ("mssim", "ssim", "ms_ssim"):
        out = full_reference_scores(
            images, standard_images, "ms_ssim" if method == "ms_ssim" else "mssim", **kwargs
        )
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    return np.where(np.isnan(out), -np.inf, out).astype(np.float64)


def _no_extra(kwargs: dict[str, Any], method: str) -> None:
    if kwargs:
        raise TypeError(f"unexpected arguments for method {method!r}: {sorted(kwargs)}")
