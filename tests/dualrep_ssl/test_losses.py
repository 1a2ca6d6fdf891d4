"""DualRepSSL losses and recall@k against hand-computed values (B=3, D=2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.dualrep_ssl.losses import (
    cosine_similarity_matrix,
    info_nce_excluding_positive,
    mmcl_loss,
    mmsl_loss,
    retrieval_recall,
    vse_hardest_negative_loss,
)

# Unit vectors with simple cosines. cos(Q, K) = [[1, 0, 0], [0, 1, -1], [-1, 0, 0]]
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
K = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
TAU = 0.5  # logits = 2·cos
E2 = math.exp(-2.0)
# Per query: -pos + log(sum over the two negatives of exp(logit))
#   q0: -2 + log(e^0 + e^0);  q1: -2 + log(e^0 + e^-2);  q2: -0 + log(e^-2 + e^0)
NCE_QK = [-2 + math.log(2), -2 + math.log(1 + E2), math.log(1 + E2)]
# With the positive in the denominator (standard InfoNCE / cross-entropy) instead:
NCE_QK_INCLUDING = [
    -2 + math.log(math.exp(2) + 2),
    -2 + math.log(1 + math.exp(2) + E2),
    math.log(E2 + 1 + 1),
]
# cos(Q, Q) = [[1, 0, -1], [0, 1, 0], [-1, 0, 1]]:
#   q0: -2 + log(1 + e^-2);  q1: -2 + log(2);  q2: -2 + log(e^-2 + 1)
NCE_QQ = [-2 + math.log(1 + E2), -2 + math.log(2), -2 + math.log(1 + E2)]


def mean(xs):
    return sum(xs) / len(xs)


def test_info_nce_excludes_positive_hand_computed():
    loss = info_nce_excluding_positive(Q, K, tau=TAU)
    assert loss.item() == pytest.approx(mean(NCE_QK), abs=1e-6)
    assert loss.item() < 0  # the excluded-positive form is not bounded by 0: expected
    # including the positive would give a different, known value (= cross-entropy over logits)
    included = F.cross_entropy(cosine_similarity_matrix(Q, K) / TAU, torch.arange(3))
    assert included.item() == pytest.approx(mean(NCE_QK_INCLUDING), abs=1e-6)
    assert abs(loss.item() - included.item()) > 1.0


def test_info_nce_cosine_scale_invariant_and_default_tau():
    scaled = info_nce_excluding_positive(3.0 * Q, 0.25 * K, tau=TAU)
    assert scaled.item() == pytest.approx(mean(NCE_QK), abs=1e-6)
    # tau = 0.1 (paper default): logits = 10·cos
    expected = mean([-10 + math.log(2), -10 + math.log(1 + math.exp(-10)), math.log(math.exp(-10) + 1)])
    assert info_nce_excluding_positive(Q, K).item() == pytest.approx(expected, abs=1e-5)


def test_info_nce_positive_offset_for_gathered_keys():
    # queries 1..2 against all three keys: their positives sit at offset 1
    loss = info_nce_excluding_positive(Q[1:], K, tau=TAU, positive_offset=1)
    assert loss.item() == pytest.approx(mean(NCE_QK[1:]), abs=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        info_nce_excluding_positive(Q[1:], K, tau=TAU, positive_offset=2)
    with pytest.raises(ValueError, match="at least 2 keys"):
        info_nce_excluding_positive(Q[:1], K[:1])


def test_info_nce_gradient_is_finite():
    q = Q.clone().requires_grad_(True)
    info_nce_excluding_positive(q, K, tau=TAU).backward()
    assert torch.isfinite(q.grad).all()


def test_mmcl_loss_combines_with_pi():
    pi = 0.3
    a, b = mean(NCE_QK), mean(NCE_QQ)
    total, parts = mmcl_loss(F_v=Q, F_a=K, F_va=Q, F_i=K, F_vi=Q, pi=pi, tau=TAU)
    assert parts["cl_v_a"].item() == pytest.approx(a, abs=1e-6)
    assert parts["cl_v_va"].item() == pytest.approx(b, abs=1e-6)
    assert parts["L_a"].item() == pytest.approx(pi * a + (1 - pi) * b, abs=1e-6)
    assert parts["L_i"].item() == pytest.approx(pi * a + (1 - pi) * b, abs=1e-6)
    assert total.item() == pytest.approx(2 * (pi * a + (1 - pi) * b), abs=1e-6)

    # "w/o image": L_a only
    total_a, parts_a = mmcl_loss(Q, K, Q, pi=0.5, tau=TAU)
    assert set(parts_a) == {"cl_v_a", "cl_v_va", "L_a"}
    assert total_a.item() == pytest.approx(0.5 * (a + b), abs=1e-6)
    with pytest.raises(ValueError, match="both F_i and F_vi"):
        mmcl_loss(Q, K, Q, F_i=K)


# sim[i, j] = similarity(query i, key j); diagonal = positive pairs
SIM = torch.tensor([[0.95, 0.5, 0.8], [0.1, 0.6, 0.3], [0.7, 0.2, 0.4]])
# hardest negative per row (key for query): 0.8, 0.3, 0.7; per column (query for key): 0.7, 0.5, 0.8
# pair 0: [0.2 + 0.8 - 0.95]+ = 0.05, [0.2 + 0.7 - 0.95]+ = 0       -> 0.05
# pair 1: [0.2 + 0.3 - 0.6]+  = 0,    [0.2 + 0.5 - 0.6]+  = 0.1     -> 0.1
# pair 2: [0.2 + 0.7 - 0.4]+  = 0.5,  [0.2 + 0.8 - 0.4]+  = 0.6     -> 1.1
VSE_EXPECTED = (0.05 + 0.1 + 1.1) / 3


def test_vse_hardest_negative_value():
    assert vse_hardest_negative_loss(SIM, margin=0.2).item() == pytest.approx(VSE_EXPECTED, abs=1e-6)
    # summing over all negatives (VSE0) would differ
    sum_all = (
        sum(
            max(0.0, 0.2 + SIM[i, j].item() - SIM[i, i].item())
            + max(0.0, 0.2 + SIM[j, i].item() - SIM[i, i].item())
            for i in range(3)
            for j in range(3)
            if i != j
        )
        / 3
    )
    assert sum_all != pytest.approx(VSE_EXPECTED, abs=1e-3)


def test_vse_hardest_negative_is_the_one_chosen():
    sim = SIM.clone().requires_grad_(True)
    vse_hardest_negative_loss(sim, margin=0.2).backward()
    third = 1.0 / 3.0
    expected = torch.tensor(
        [
            # (0,2): row-hardest of pair 0 and column-hardest of pair 2; (0,1): column-hardest of pair 1
            [-third, third, 2 * third],
            # (1,2) is row-hardest of pair 1 but its hinge is inactive; (1,0) is never the hardest
            [0.0, -third, 0.0],
            # (2,0): row-hardest of pair 2; (2,1) never the hardest
            [third, 0.0, -2 * third],
        ]
    )
    torch.testing.assert_close(sim.grad, expected)
    with pytest.raises(ValueError, match="square"):
        vse_hardest_negative_loss(SIM[:2])
    with pytest.raises(ValueError, match="B >= 2"):
        vse_hardest_negative_loss(SIM[:1, :1])


def test_mmsl_loss_cosine_hand_computed():
    # cos(Q, K) = [[1, 0, 0], [0, 1, -1], [-1, 0, 0]]: all hardest negatives are 0;
    # pairs 0 and 1 (diag 1) give 0, pair 2 (diag 0) gives 0.2 + 0.2.
    total, parts = mmsl_loss(Q, 5.0 * K, margin=0.2)  # cosine: scale-free
    assert parts["mmsl_v_a"].item() == pytest.approx(0.4 / 3, abs=1e-6)
    assert set(parts) == {"mmsl_v_a"}
    # cos(Q, Q): diagonal 1, hardest negatives 0 -> 0
    total, parts = mmsl_loss(Q, K, mu_i=Q, margin=0.2)
    assert parts["mmsl_v_i"].item() == pytest.approx(0.0, abs=1e-7)
    assert total.item() == pytest.approx(0.4 / 3, abs=1e-6)
    # a larger margin: pair 0: [1.5 + 0 - 1]+ twice = 1.0; pair 1 likewise; pair 2: 1.5 twice = 3.0
    assert mmsl_loss(Q, K, margin=1.5)[0].item() == pytest.approx(5.0 / 3, abs=1e-6)


def test_retrieval_recall_constructed():
    keys = torch.eye(4)
    query = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # positive ranks 1st
            [0.9, 0.5, 0.0, 0.0],  # key 0 ahead -> 2nd
            [0.9, 0.8, 0.5, 0.0],  # keys 0, 1 ahead -> 3rd
            [0.0, 0.0, 0.0, 1.0],  # 1st
        ]
    )
    r = retrieval_recall(query, keys, ks=(1, 2, 3, 5))
    assert r == {"R@1": 0.5, "R@2": 0.75, "R@3": 1.0, "R@5": 1.0}
    # an extra distractor key parallel to key 0 ties with query 0's positive; ties count against the
    # query, so only query 3 stays first
    keys_d = torch.cat([keys, 2.0 * keys[:1]], dim=0)
    assert retrieval_recall(query, keys_d, ks=(1, 2)) == {"R@1": 0.25, "R@2": 0.5}


def test_retrieval_recall_collapsed_embeddings_score_zero_at_1():
    same = torch.ones(5, 3)
    assert retrieval_recall(same, same, ks=(1, 5)) == {"R@1": 0.0, "R@5": 1.0}
    with pytest.raises(ValueError):
        retrieval_recall(torch.randn(3, 2), torch.randn(2, 2))


def test_similarities_in_float32_under_autocast():
    q, k = Q.to(torch.bfloat16), K.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim = cosine_similarity_matrix(q, k)
        loss = info_nce_excluding_positive(q, k, tau=TAU)
    assert sim.dtype == torch.float32
    assert loss.item() == pytest.approx(mean(NCE_QK), abs=1e-6)
