"""best_f1_threshold on torchmetrics' precision-recall curve gives exactly the thresholds of the hand-written
sort-and-cumsum version it replaced (kept here as the reference), ties, negative, large and near-equal scores
and one-class splits included."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_modules.common.anomaly import best_f1_threshold


def _reference_best_f1_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The previous implementation: one sort, cumulative TP/FP, F1 at the last index of each tied run."""
    s, y = scores.to(torch.float64).flatten(), labels.flatten().long()
    order = torch.argsort(s, descending=True, stable=True)
    s_sorted, y_sorted = s[order], y[order].to(torch.float64)
    tp = torch.cumsum(y_sorted, 0)
    fp = torch.cumsum(1 - y_sorted, 0)
    last = torch.ones_like(s_sorted, dtype=torch.bool)
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    thresholds, tp, fp = s_sorted[last], tp[last], fp[last]
    fn = y_sorted.sum() - tp
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return float(thresholds[f1 >= f1.max() - 1e-12].min())


def _cases() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cases = []
    for n in (2, 5, 50, 300):
        scores = [
            torch.rand(n, generator=g),  # in [0, 1]
            torch.randn(n, generator=g) * 100,  # negative and large (torchmetrics would sigmoid these)
            torch.randint(0, 6, (n,), generator=g).float() / 3 - 1,  # many ties
            torch.randn(n, generator=g, dtype=torch.float64) * 1e-9 + 1e6,  # near-equal, float64
            torch.full((n,), 0.3),  # one value
        ]
        for s in scores:
            for p in (0.0, 0.3, 1.0):  # no positive, mixed, only positives
                cases.append((s, (torch.rand(n, generator=g) < p).long()))
    return cases


@pytest.mark.parametrize("case", range(len(_cases())))
def test_threshold_identical_to_the_hand_written_version(case):
    scores, labels = _cases()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no new warnings (one-class splits included)
        assert best_f1_threshold(scores, labels) == _reference_best_f1_threshold(scores, labels)


def test_known_answers():
    # sorted by score: 0.8(1) 0.7(1) 0.4(0) 0.35(1) 0.2(0) 0.1(0): F1 at 0.35 = 6/7 is the best
    assert best_f1_threshold([0.1, 0.4, 0.35, 0.8, 0.7, 0.2], [0, 0, 1, 1, 1, 0]) == 0.35
    assert best_f1_threshold([500.0, 200.0, -3.0], [1, 1, 0]) == 200.0  # outside [0, 1]: no sigmoid ties
    assert best_f1_threshold([0.5, 0.5, 0.2], [1, 0, 0]) == 0.5
