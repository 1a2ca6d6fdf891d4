"""Threshold-based metrics for anomaly scores (shared by the quality-assessment methods).

Convention: ``labels`` are 1 for the anomaly / low-quality class (the positive class) and 0 for
normal / high quality; a higher score means more anomalous; a sample is predicted positive when
``score >= threshold``. Metrics are fractions in ``[0, 1]`` (the papers print percentages).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_stat_scores

__all__ = ["auc", "best_auc_score", "best_f1_threshold", "binary_metrics"]

ArrayLike = Tensor | Sequence[float] | Sequence[int]


def _prepare(scores: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    # python floats go straight to float64 (through float32 a threshold like 0.35 would not round-trip)
    s = scores.detach() if isinstance(scores, Tensor) else torch.as_tensor(scores, dtype=torch.float64)
    s = s.to("cpu", torch.float64).flatten()
    y = (labels.detach() if isinstance(labels, Tensor) else torch.as_tensor(labels)).to("cpu").flatten()
    if s.numel() != y.numel() or s.numel() == 0:
        raise ValueError(
            f"scores and labels must be non-empty and of equal length ({s.numel()} vs {y.numel()})"
        )
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not torch.isin(y, torch.tensor([0, 1])).all():
        raise ValueError("labels must be 0 (normal / high quality) or 1 (anomaly / low quality)")
    return s, y.long()


def best_f1_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """The threshold (one of the scores) that maximises F1 of ``score >= threshold`` → anomaly.

    Every distinct score is a candidate; F1 for all of them comes from one sort and cumulative sums.
    Among equally good thresholds the smallest is returned. With no positive label every F1 is 0 and
    the smallest score is returned.
    """
    s, y = _prepare(scores, labels)
    order = torch.argsort(s, descending=True, stable=True)
    s_sorted, y_sorted = s[order], y[order].to(torch.float64)
    tp = torch.cumsum(y_sorted, 0)
    fp = torch.cumsum(1 - y_sorted, 0)
    # a threshold equal to s_sorted[k] predicts all samples with score >= it: keep the last index of
    # each run of equal scores
    last = torch.ones_like(s_sorted, dtype=torch.bool)
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    thresholds, tp, fp = s_sorted[last], tp[last], fp[last]
    fn = y_sorted.sum() - tp
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    best = f1.max()
    return float(thresholds[f1 >= best - 1e-12].min())  # equal F1 up to rounding -> smallest threshold


def binary_metrics(scores: ArrayLike, labels: ArrayLike, threshold: float) -> dict[str, float]:
    """``f1``, ``acc``, ``sen`` (sensitivity = recall of anomalies), ``spe`` (specificity) and
    ``precision`` of ``score >= threshold`` → anomaly, from torchmetrics' binary stat scores. A ratio
    with a zero denominator is 0."""
    s, y = _prepare(scores, labels)
    preds = (s >= threshold).long()
    tp, fp, tn, fn, _ = (float(v) for v in binary_stat_scores(preds, y))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 0.0

    return {
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "acc": ratio(tp + tn, tp + tn + fp + fn),
        "sen": ratio(tp, tp + fn),
        "spe": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
    }


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of the scores for the anomaly class (torchmetrics ``binary_auroc``).

    Scores are min-max scaled to ``[0, 1]`` in float64 first (order-preserving) so torchmetrics does
    not squash them with a sigmoid, which would merge large scores into ties.
    """
    s, y = _prepare(scores, labels)
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    return float(binary_auroc(s, y))


def best_auc_score(aucs: Mapping[str, float]) -> str | None:
    """The name of the score with the highest finite AUC; ties go to the earliest in the mapping's order
    (the model's default score first). None when no AUC is finite (e.g. a split holding one class).

    Used to pick the primary anomaly score on validation for a new domain, where the score the paper
    preferred may rank the classes inversely.
    """
    best: str | None = None
    for name, value in aucs.items():
        if math.isfinite(value) and (best is None or value > aucs[best]):
            best = name
    return best
