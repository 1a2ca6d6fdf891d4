"""Anomaly-detection metrics against a hand-computed example."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.common.anomaly import auc, best_f1_threshold, binary_metrics

# labels 1 = anomaly / low quality; sorted by score (desc): 0.8(1) 0.7(1) 0.4(0) 0.35(1) 0.2(0) 0.1(0)
SCORES = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2]
LABELS = [0, 0, 1, 1, 1, 0]
# F1 of score >= t: 0.8 -> 2/4, 0.7 -> 4/5, 0.4 -> 4/6, 0.35 -> 6/7, 0.2 -> 6/8, 0.1 -> 6/9


def test_best_f1_threshold_hand_example():
    assert best_f1_threshold(SCORES, LABELS) == pytest.approx(0.35)
    assert best_f1_threshold(torch.tensor(SCORES), torch.tensor(LABELS)) == pytest.approx(0.35)


def test_binary_metrics_hand_example():
    m = binary_metrics(SCORES, LABELS, 0.35)  # tp 3, fp 1, tn 2, fn 0
    assert m == pytest.approx({"f1": 6 / 7, "acc": 5 / 6, "sen": 1.0, "spe": 2 / 3, "precision": 3 / 4})
    m = binary_metrics(SCORES, LABELS, 0.7)  # tp 2, fp 0, tn 3, fn 1
    assert m == pytest.approx({"f1": 4 / 5, "acc": 5 / 6, "sen": 2 / 3, "spe": 1.0, "precision": 1.0})
    m = binary_metrics(SCORES, LABELS, 0.9)  # nothing predicted positive
    assert m == pytest.approx({"f1": 0.0, "acc": 0.5, "sen": 0.0, "spe": 1.0, "precision": 0.0})


def test_auc_hand_example():
    # 8 of the 9 (anomaly, normal) pairs are ordered correctly (0.35 < 0.4)
    assert auc(SCORES, LABELS) == pytest.approx(8 / 9)
    assert auc([1, 2, 3, 4], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert auc([1, 1, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.5)
    # large scores are not squashed into ties
    assert auc([100.0, 200.0, 300.0, 400.0], [0, 1, 0, 1]) == pytest.approx(0.75)


def test_best_f1_ties_pick_the_smallest_threshold():
    # F1: t=4 -> 2/3, t=3 -> 1/2, t=2 -> 2/5, t=1 -> 2/3: tie -> 1
    assert best_f1_threshold([1.0, 2.0, 3.0, 4.0], [1, 0, 0, 1]) == 1.0


def test_best_f1_handles_tied_scores():
    # a threshold at 0.5 predicts both tied samples: F1 = 2/3 (not 1)
    assert best_f1_threshold([0.5, 0.5, 0.2], [1, 0, 0]) == 0.5
    assert best_f1_threshold([0.5, 0.5, 0.2], [0, 1, 1]) == 0.2


def test_best_f1_matches_brute_force():
    torch.manual_seed(0)
    scores = torch.randint(0, 20, (200,)).float() / 4
    labels = (torch.rand(200) < 0.4).long()
    best, best_t = -1.0, None
    for t in sorted(set(scores.tolist())):
        f1 = binary_metrics(scores, labels, t)["f1"]
        if f1 > best + 1e-12:
            best, best_t = f1, t
    assert best_f1_threshold(scores, labels) == best_t


def test_input_validation():
    with pytest.raises(ValueError):
        best_f1_threshold([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        auc([0.1], [0, 1])
