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
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_precision_recall_curve,
    binary_stat_scores,
)

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

    Every distinct score is a candidate; precision and recall at all of them come from torchmetrics'
    ``binary_precision_recall_curve``. The curve is computed on the scores' ranks scaled to ``[0, 1]``
    (torchmetrics would squash scores outside ``[0, 1]`` with a sigmoid, merging large ones into ties),
    then mapped back to the scores. Among equally good thresholds the smallest is returned. With no
    positive label every F1 is 0 and the smallest score is returned.
    """
    s, y = _prepare(scores, labels)
    if not y.any():  # every F1 is 0 (torchmetrics would warn that recall is undefined)
        return float(s.min())
    distinct, rank = torch.unique(s, sorted=True, return_inverse=True)
    top = max(len(distinct) - 1, 1)
    precision, recall, thresholds = binary_precision_recall_curve(rank.to(torch.float64) / top, y)
    precision, recall = precision[:-1], recall[:-1]  # the last point is the (1, 0) end of the curve
    f1 = torch.nan_to_num(2 * precision * recall / (precision + recall), nan=0.0)
    best = f1.max()
    index = torch.round(thresholds[f1 >= best - 1e-12].min() * top).long()  # equal F1 up to rounding
    return float(distinct[index])


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
