"""Saliency metrics, the saliency KL loss and the centre-bias baseline (shared by saliency models).

Definitions follow the MIT saliency benchmark code (Bylinskii et al., "What do different evaluation metrics
tell us about saliency models?", T-PAMI 2019), per sample, with P the predicted map and G the ground truth:

- **KLD** ``Σ G·log(ε + G/(P + ε))`` after normalising both maps to sum 1, ε = 2.2204e-16 (MATLAB ``eps``).
  Lower is better. As in the MIT code (``if any(map(:))``) an all-zero map is left as is, not divided by
  its zero sum: an all-zero prediction is scored (``Σ G·log(ε + G/ε)``, about 30–36), never dropped as
  NaN, so a broken model's frames count in the mean.
- **SIM** each map min-max normalised to [0, 1] and then divided by its sum; ``Σ min(P, G)``. In [0, 1].
- **CC** Pearson correlation of the two maps (each z-scored). In [-1, 1].
- **NSS** prediction z-scored with the *sample* std (ddof = 1, MATLAB ``std``); mean over the fixated
  pixels of a fixation map, fixated = value > 0 (MIT ``logical(fixationMap)``). One definition, :func:`nss`,
  used by :class:`SaliencyNSS` too.
- As in the MIT code, the prediction is resized to the ground truth's (fixation map's) size first; we use
  bilinear interpolation (``align_corners=False``).

pysaliency differs (SIM without min-max, NSS with ddof 0): we implement the MIT definitions; ``nss`` takes a
``ddof`` argument to reproduce pysaliency's.

Degenerate inputs (documented choices, the MIT code returns NaN or fails there): a constant map has no
min-max range, SIM then treats it as uniform; CC is 0 when either map is constant; NSS is 0 when the
prediction is constant and NaN when there is no fixated pixel (a frame without gaze). The torchmetrics
classes skip NaN samples (and those marked invalid).

Shapes: maps are B×1×H×W (B×H×W and a single H×W map are accepted too); every functional returns B scores.
Predictions are non-negative saliency maps (probabilities, or any scale: they are normalised here); models
that output log-probabilities pass ``log_input=True`` to the metric classes (or ``exp()`` first).

Fixations for NSS: NSS is computed at the real fixation points. The data layer rasterises each frame's
gaze samples into a binary fixation map (batch key ``fixations``, docs/data.md "Batches"), the pixel
``(floor(y·H), floor(x·W))`` of each valid sample, as :func:`fixation_map_from_points` does; models pass it
as ``fixations=`` to the metrics. **Datasets with only continuous fixation-density maps** (no points): the
rule is the MIT one applied to the given map, fixated = density > 0; pass the density as the fixation map
(or give no ``fixations``: the target map is used). A Gaussian gaze map is positive everywhere, so on such a
map NSS is the mean of the z-scored prediction over all pixels, 0: give the points whenever they exist.
:func:`fixations_from_gaze_map` (local maxima) is an approximation kept for inspecting maps; no metric
uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection

__all__ = [
    "EPS",
    "KLDivergenceSaliency",
    "SaliencyCC",
    "SaliencyMetrics",
    "SaliencyNSS",
    "SaliencySIM",
    "cc",
    "centre_bias_map",
    "fixation_map_from_points",
    "fixations_from_gaze_map",
    "kld",
    "nss",
    "saliency_kld_loss",
    "sim",
]

EPS = 2.2204e-16  # MATLAB eps, as in the MIT benchmark code


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _as_bhw(x: Tensor, name: str) -> Tensor:
    """B×1×H×W / B×H×W / H×W -> B×H×W."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must be B×1×H×W, got {tuple(x.shape)}")
        return x[:, 0]
    if x.dim() == 3:
        return x
    if x.dim() == 2:
        return x.unsqueeze(0)
    raise ValueError(f"{name} must be B×1×H×W, B×H×W or H×W, got {tuple(x.shape)}")


def _float(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _prepare(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Both as float B×N (flattened), the prediction resized (bilinear) to the ground truth's H×W."""
    p, g = _float(_as_bhw(pred, "pred")), _float(_as_bhw(gt, "gt"))
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"batch sizes differ: pred {p.shape[0]}, gt {g.shape[0]}")
    if p.shape[-2:] != g.shape[-2:]:
        p = F.interpolate(p.unsqueeze(1), size=g.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    dtype = torch.promote_types(p.dtype, g.dtype)
    return p.flatten(1).to(dtype), g.flatten(1).to(dtype)


def _sum_normalise(x: Tensor) -> Tensor:
    """Divide by the sum; a map summing to 0 stays as is (MIT ``if any(map(:))``), so it is scored, not NaN."""
    total = x.sum(dim=1, keepdim=True)
    return torch.where(total != 0, x / torch.where(total != 0, total, torch.ones_like(total)), x)


def _minmax_sum_normalise(x: Tensor) -> Tensor:
    """Min-max to [0, 1] then divide by the sum; a constant map becomes uniform."""
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    rng = hi - lo
    flat = rng <= 0
    x = torch.where(flat, torch.ones_like(x), (x - lo) / torch.where(flat, torch.ones_like(rng), rng))
    return _sum_normalise(x)


def _zscore(x: Tensor, ddof: int = 1) -> Tensor:
    """(x − mean) / std with the given ddof; a constant map gives zeros."""
    centred = x - x.mean(dim=1, keepdim=True)
    std = torch.sqrt((centred * centred).sum(dim=1, keepdim=True) / (x.shape[1] - ddof))
    return torch.where(
        std > 0, centred / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(x)
    )


# ---------------------------------------------------------------------------------------------------------
# functional metrics
# ---------------------------------------------------------------------------------------------------------


def kld(pred: Tensor, gt: Tensor, eps: float = EPS) -> Tensor:
    """KL divergence KL(G ‖ P) per sample, MIT definition ``Σ G·log(ε + G/(P + ε))`` (both sum-normalised).

    ``pred``, ``gt``: B×1×H×W non-negative maps -> B scores (lower is better). An all-zero map is not
    normalised (MIT): an all-zero prediction scores ``Σ G·log(ε + G/ε)``, an all-zero ``gt`` scores 0.
    """
    p, g = _prepare(pred, gt)
    p, g = _sum_normalise(p), _sum_normalise(g)
    return (g * torch.log(eps + g / (p + eps))).sum(dim=1)


def sim(pred: Tensor, gt: Tensor) -> Tensor:
    """Similarity (histogram intersection) per sample: min-max then sum-normalise each map, ``Σ min(P, G)``."""
    p, g = _prepare(pred, gt)
    return torch.minimum(_minmax_sum_normalise(p), _minmax_sum_normalise(g)).sum(dim=1)


def cc(pred: Tensor, gt: Tensor) -> Tensor:
    """Pearson linear correlation coefficient per sample (0 when either map is constant)."""
    p, g = _prepare(pred, gt)
    p = p - p.mean(dim=1, keepdim=True)
    g = g - g.mean(dim=1, keepdim=True)
    denom = torch.sqrt((p * p).sum(dim=1) * (g * g).sum(dim=1))
    num = (p * g).sum(dim=1)
    return torch.where(
        denom > 0, num / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(num)
    )


def nss(pred: Tensor, fixations: Tensor, ddof: int = 1) -> Tensor:
    """Normalized scanpath saliency per sample: mean of the z-scored prediction at the fixated pixels.

    ``fixations``: fixation map B×1×H×W, fixated = value > 0 (bool, binary, or a continuous density, as
    MIT's ``logical(fixationMap)``); the prediction is resized to its size. ``ddof=1`` is the MIT
    definition (MATLAB ``std``); pysaliency uses 0. NaN for no fixation.
    """
    fix = _as_bhw(fixations, "fixations")
    p, f = _prepare(pred, fix.float() if fix.dtype == torch.bool else fix)
    z = _zscore(p, ddof)
    mask = (f > 0).to(z.dtype)
    count = mask.sum(dim=1)
    total = (z * mask).sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


# ---------------------------------------------------------------------------------------------------------
# fixations
# ---------------------------------------------------------------------------------------------------------


def fixation_map_from_points(
    points: Tensor | Sequence[Tensor],
    height: int,
    width: int,
    normalized: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """Binary fixation map(s) from gaze points.

    ``points``: one N×2 tensor of ``(x, y)`` -> 1×H×W bool, or a sequence of B such tensors -> B×1×H×W
    bool. With ``normalized=True`` x, y are in [0, 1] of the frame (the data contract) and land on pixel
    ``(floor(y·H), floor(x·W))``; otherwise they are pixel coordinates (column, row), rounded down. Points
    outside the frame are clipped to its border; rows with NaN (no fixation) are skipped.
    """
    single = isinstance(points, Tensor)
    batch = [points] if single else list(points)
    maps = []
    for pts in batch:
        pts = torch.as_tensor(pts, dtype=torch.float64).reshape(-1, 2)
        pts = pts[~torch.isnan(pts).any(dim=1)]
        m = torch.zeros(height, width, dtype=torch.bool, device=device)
        if len(pts):
            x, y = pts[:, 0], pts[:, 1]
            if normalized:
                x, y = x * width, y * height
            cols = x.floor().long().clamp(0, width - 1)
            rows = y.floor().long().clamp(0, height - 1)
            m[rows.to(m.device), cols.to(m.device)] = True
        maps.append(m)
    out = torch.stack(maps).unsqueeze(1)
    return out[0] if single else out


def fixations_from_gaze_map(gaze: Tensor, kernel_size: int = 3, min_rel: float = 0.1) -> Tensor:
    """Binary fixation map from Gaussian gaze maps: their local maxima.

    A pixel is a fixation when it equals the maximum of its ``kernel_size``×``kernel_size`` neighbourhood
    and is at least ``min_rel`` × the map's global maximum (drops flat tails and ripples). Constant maps
    (no gaze, uniform) give no fixation. ``gaze``: ``…×H×W`` (e.g. B×1×H×W) -> bool of the same shape.
    """
    if kernel_size < 1 or kernel_size % 2 != 1:
        raise ValueError("kernel_size must be odd and >= 1")
    shape = gaze.shape
    g = _float(gaze).reshape(-1, 1, *shape[-2:])
    pooled = F.max_pool2d(g, kernel_size, stride=1, padding=kernel_size // 2)
    flat = g.flatten(1)
    gmax = flat.max(dim=1).values.view(-1, 1, 1, 1)
    gmin = flat.min(dim=1).values.view(-1, 1, 1, 1)
    peaks = (g >= pooled) & (g >= min_rel * gmax) & (gmax > gmin)
    return peaks.reshape(shape)


# ---------------------------------------------------------------------------------------------------------
# loss and baseline
# ---------------------------------------------------------------------------------------------------------


def saliency_kld_loss(
    log_pred: Tensor, gt: Tensor, valid: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Training loss KL(G ‖ softmax prediction), Σ G·(log G − log P) per sample, mean over the batch.

    ``log_pred``: B×1×H×W log-probabilities (re-normalised with log-softmax over H·W, which is a no-op for
    a ``log_softmax`` output). ``gt``: B×1×H×W non-negative target maps, normalised to sum 1 here
    (0·log 0 = 0). ``valid``: optional B bool — samples to include (e.g. the target frame's ``gaze_valid``);
    the mean is over valid samples (0 with a graph if none). ``reduction``: "mean", "sum" or "none" (B).
    """
    lp = _as_bhw(log_pred, "log_pred").flatten(1)
    lp = lp.float() if lp.dtype in (torch.float16, torch.bfloat16) else lp
    lp = lp - torch.logsumexp(lp, dim=1, keepdim=True)
    g = _as_bhw(gt, "gt").flatten(1).to(lp.dtype)
    g = g / g.sum(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
    per = (torch.xlogy(g, g) - g * lp).sum(dim=1)
    if reduction == "none":
        return per
    if valid is not None:
        w = valid.reshape(-1).to(per.dtype)
        total = (per * w).sum()
        return total / w.sum().clamp_min(1.0) if reduction == "mean" else total
    return per.mean() if reduction == "mean" else per.sum()


def centre_bias_map(
    height: int,
    width: int,
    sigma_frac: float = 0.25,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Centre-bias baseline: an isotropic-in-relative-units Gaussian at the image centre, H×W, sums to 1.

    σ_y = ``sigma_frac``·H and σ_x = ``sigma_frac``·W (pixel centres at i + 0.5). Broadcast it to
    B×1×H×W to score it with the metrics above.
    """
    if sigma_frac <= 0:
        raise ValueError("sigma_frac must be > 0")
    ys = (torch.arange(height, device=device, dtype=torch.float64) + 0.5 - height / 2) / (sigma_frac * height)
    xs = (torch.arange(width, device=device, dtype=torch.float64) + 0.5 - width / 2) / (sigma_frac * width)
    m = torch.exp(-0.5 * ys[:, None] ** 2) * torch.exp(-0.5 * xs[None, :] ** 2)  # separable
    return (m / m.sum()).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# torchmetrics
# ---------------------------------------------------------------------------------------------------------


class _MeanSaliencyMetric(Metric):
    """Mean of a per-sample score over all samples seen (NaN / invalid samples skipped); DDP-safe sums."""

    full_state_update = False
    is_differentiable = False
    total: Tensor  # states (add_state), which the type checker cannot see
    count: Tensor

    def __init__(self, log_input: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log_input = log_input
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _scores(self, pred: Tensor, target: Tensor, fixations: Tensor | None) -> Tensor:
        raise NotImplementedError

    def update(
        self, pred: Tensor, target: Tensor, valid: Tensor | None = None, fixations: Tensor | None = None
    ) -> None:
        """``pred`` B×1×H×W saliency (log-saliency if ``log_input``), ``target`` B×1×H×W ground truth,
        ``valid`` optional B bool (e.g. the target frame's ``gaze_valid``), ``fixations`` optional B×1×H×W
        fixation map (only NSS reads it; every metric accepts it so a collection can pass it to all)."""
        pred = pred.detach()
        if self.log_input:
            pred = _float(pred).exp()
        fix = None if fixations is None else fixations.detach()
        scores = self._scores(pred, target.detach(), fix).reshape(-1)
        keep = ~torch.isnan(scores)
        if valid is not None:
            keep &= valid.reshape(-1).to(device=keep.device, dtype=torch.bool)
        self.total += scores[keep].sum().to(self.total.dtype)
        self.count += keep.sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), device=self.total.device)
        return self.total / self.count


class KLDivergenceSaliency(_MeanSaliencyMetric):
    """Mean :func:`kld` (MIT definition; lower is better)."""

    higher_is_better = False

    def _scores(self, pred: Tensor, target: Tensor, fixations: Tensor | None) -> Tensor:
        return kld(pred, target)


class SaliencySIM(_MeanSaliencyMetric):
    """Mean :func:`sim` (MIT definition with min-max normalisation)."""

    higher_is_better = True

    def _scores(self, pred: Tensor, target: Tensor, fixations: Tensor | None) -> Tensor:
        return sim(pred, target)


class SaliencyCC(_MeanSaliencyMetric):
    """Mean :func:`cc` (Pearson correlation)."""

    higher_is_better = True

    def _scores(self, pred: Tensor, target: Tensor, fixations: Tensor | None) -> Tensor:
        return cc(pred, target)


class SaliencyNSS(_MeanSaliencyMetric):
    """Mean :func:`nss` (the same definition): at ``fixations`` when given, else at ``target > 0`` (the rule
    for datasets with only a fixation-density map). Samples without a fixated pixel are skipped."""

    higher_is_better = True

    def __init__(self, log_input: bool = False, ddof: int = 1, **kwargs) -> None:
        super().__init__(log_input=log_input, **kwargs)
        self.ddof = ddof

    def _scores(self, pred: Tensor, target: Tensor, fixations: Tensor | None) -> Tensor:
        return nss(pred, target if fixations is None else fixations, ddof=self.ddof)


def SaliencyMetrics(  # noqa: N802 (a factory that reads like a class)
    log_input: bool = False,
    prefix: str | None = None,
    postfix: str | None = None,
    nss_ddof: int = 1,
) -> MetricCollection:
    """MetricCollection ``{kld, sim, cc, nss}``; ``update(pred, target, valid=None, fixations=None)`` feeds
    all four (``fixations``, the binary fixation map, is read by NSS only).

    ``compute_groups=False``: the four metrics have identically shaped states, so torchmetrics' automatic
    state sharing could merge them by accident.
    """
    return MetricCollection(
        {
            "kld": KLDivergenceSaliency(log_input=log_input),
            "sim": SaliencySIM(log_input=log_input),
            "cc": SaliencyCC(log_input=log_input),
            "nss": SaliencyNSS(log_input=log_input, ddof=nss_ddof),
        },
        prefix=prefix,
        postfix=postfix,
        compute_groups=False,
    )
