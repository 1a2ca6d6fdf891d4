"""CRL-UIQA losses on hand-computed values."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.crl_uiqa.losses import consistency_loss, crl_loss, distribution_loss, relativity_loss

P = [0.8, 0.5]
Q = [1.0, 0.2]
P_WEAK = [0.7, 0.5]
P_STRONG = [0.75, 0.1]
EPS = [0.1, 0.2]
# L_d = (0.2² + 0.3²)/2 = 0.065; L_c = (0.1² + 0)/2 = 0.005
# L_r = mean(max(0.75-0.8+0.1, 0), max(0.1-0.5+0.2, 0)) = mean(0.05, 0) = 0.025
# L = 0.05·0.065 + 0.1·0.005 + 0.1·0.025 = 0.00625


def t(v: list[float]) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64, requires_grad=True)


def test_each_loss_hand_values() -> None:
    assert distribution_loss(t(P), torch.tensor(Q)).item() == pytest.approx(0.065)
    assert consistency_loss(t(P_WEAK), t(P)).item() == pytest.approx(0.005)
    assert relativity_loss(t(P_STRONG), t(P), torch.tensor(EPS)).item() == pytest.approx(0.025)
    # scalar margin: max(0.75-0.8+0.3, 0)=0.25, max(0.1-0.5+0.3, 0)=0 -> 0.125
    assert relativity_loss(t(P_STRONG), t(P), 0.3).item() == pytest.approx(0.125)
    # the hinge is zero once the blurred view is at least eps below the source
    assert relativity_loss(t([0.25, 0.05]), t([0.5, 0.5]), torch.tensor([0.2, 0.4])).item() == 0.0


def test_crl_loss_total_and_parts() -> None:
    total, parts = crl_loss(t(P), t(P_WEAK), t(P_STRONG), torch.tensor(Q), torch.tensor(EPS))
    assert total.item() == pytest.approx(0.00625)
    assert parts["distribution"].item() == pytest.approx(0.065)
    assert parts["consistency"].item() == pytest.approx(0.005)
    assert parts["relativity"].item() == pytest.approx(0.025)
    assert parts["total"].item() == pytest.approx(0.00625)
    assert all(not v.requires_grad for v in parts.values())
    total2, _ = crl_loss(
        t(P), t(P_WEAK), t(P_STRONG), torch.tensor(Q), torch.tensor(EPS), alpha=1, theta=0, beta=2
    )
    assert total2.item() == pytest.approx(0.065 + 2 * 0.025)
    # ablation rows: terms left out are zero
    total3, parts3 = crl_loss(t(P), None, None, torch.tensor(Q), None)
    assert total3.item() == pytest.approx(0.05 * 0.065) and parts3["consistency"].item() == 0.0
    with pytest.raises(ValueError, match="eps is required"):
        crl_loss(t(P), None, t(P_STRONG), torch.tensor(Q), None)


def test_gradients_and_detach() -> None:
    p, pw, ps = t(P), t(P_WEAK), t(P_STRONG)
    q = torch.tensor(Q, dtype=torch.float64, requires_grad=True)
    eps = torch.tensor(EPS, dtype=torch.float64, requires_grad=True)
    total, _ = crl_loss(p, pw, ps, q, eps, alpha=1.0, theta=1.0, beta=1.0)
    total.backward()
    assert q.grad is None and eps.grad is None  # data, never differentiated
    # dL_r/dp_strong = [1/2, 0] (only the first hinge is active)
    torch.testing.assert_close(ps.grad, torch.tensor([0.5, 0.0], dtype=torch.float64))
    # dL_c/dp_weak = (p_weak - p) = [-0.1, 0]
    torch.testing.assert_close(pw.grad, torch.tensor([-0.1, 0.0], dtype=torch.float64))
    # dL/dp = dL_d (p - q = [-0.2, 0.3]) + dL_c (-(p_weak - p) = [0.1, 0]) + dL_r ([-0.5, 0])
    torch.testing.assert_close(p.grad, torch.tensor([-0.2 + 0.1 - 0.5, 0.3], dtype=torch.float64))

    p = t(P)
    total, _ = crl_loss(
        p, t(P_WEAK), t(P_STRONG), torch.tensor(Q), torch.tensor(EPS), 1.0, 1.0, 1.0, detach_source=True
    )
    total.backward()
    torch.testing.assert_close(p.grad, torch.tensor([-0.2, 0.3], dtype=torch.float64))  # only L_d reaches p


def test_shape_checks() -> None:
    with pytest.raises(ValueError, match="1-D of the same length"):
        distribution_loss(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="1-D of the same length"):
        consistency_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="eps must be a scalar or have shape"):
        relativity_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))
