"""Losses of CRL-UIQA (Guo et al., MICCAI 2024, Eqs. 4-7). Pure functions on ``B`` score tensors.

Reading of the paper:

* ``L_d = mean_i (q_i - p_i)^2`` (Eq. 4): MSE of the source-view prediction ``p`` to the pseudo-label ``q``
  (``q`` is data, never differentiated).
* ``L_c = mean_i (p̂_i - p_i)^2`` (Eq. 5): MSE between the weak-view and source-view predictions.
* ``L_r = mean_i max(p'_i - p_i + ε_i, 0)`` (Eq. 6): hinge asking the strong (blurred) view ``p'`` to score at
  least ``ε_i`` below the source. Eq. 6 is written per sample; like Eqs. 4-5 it is averaged over the batch.
* ``L = α·L_d + θ·L_c + β·L_r`` (Eq. 7), ``α, θ, β = 0.05, 0.1, 0.1`` (Sec. 3.2).

Stop-gradients: the paper uses one weight-sharing model on the three views and states no stop-gradient, so by
default gradients flow through both arguments of ``L_c`` and ``L_r`` (the source view is pulled towards the
weak view as much as the reverse, and pushed up by the hinge while the blurred view is pushed down).
``detach_source=True`` treats ``p`` as a fixed target in ``L_c`` / ``L_r`` instead (a common variant; not the
paper's). ``ε`` and ``q`` are always detached.
"""

from __future__ import annotations

import torch

__all__ = ["consistency_loss", "crl_loss", "distribution_loss", "relativity_loss"]


def _check(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both be 1-D of the same length (B), got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )


def distribution_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``L_d = mean((q - p)^2)``: source-view scores ``p`` (B) against pseudo-labels ``q`` (B, detached)."""
    q = torch.as_tensor(q, device=p.device).to(p.dtype)
    _check("p", p, "q", q)
    return (q.detach() - p).pow(2).mean()


def consistency_loss(p_weak: torch.Tensor, p: torch.Tensor, detach_source: bool = False) -> torch.Tensor:
    """``L_c = mean((p_weak - p)^2)``; ``detach_source`` stops the gradient through ``p``."""
    _check("p_weak", p_weak, "p", p)
    if detach_source:
        p = p.detach()
    return (p_weak - p).pow(2).mean()


def relativity_loss(
    p_strong: torch.Tensor, p: torch.Tensor, eps: torch.Tensor | float, detach_source: bool = False
) -> torch.Tensor:
    """``L_r = mean(max(p_strong - p + eps, 0))``; ``eps`` is a B tensor (or a scalar), detached."""
    _check("p_strong", p_strong, "p", p)
    eps = torch.as_tensor(eps, device=p.device).to(p.dtype).detach()
    if eps.ndim == 1 and eps.shape != p.shape:
        raise ValueError(f"eps must be a scalar or have shape {tuple(p.shape)}, got {tuple(eps.shape)}")
    if eps.ndim > 1:
        raise ValueError(f"eps must be a scalar or 1-D, got shape {tuple(eps.shape)}")
    if detach_source:
        p = p.detach()
    return torch.clamp(p_strong - p + eps, min=0).mean()


def crl_loss(
    p: torch.Tensor,
    p_weak: torch.Tensor | None,
    p_strong: torch.Tensor | None,
    q: torch.Tensor,
    eps: torch.Tensor | float | None,
    alpha: float = 0.05,
    theta: float = 0.1,
    beta: float = 0.1,
    detach_source: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = α·L_d + θ·L_c + β·L_r`` (Eq. 7).

    Args:
        p: source-view scores (B).
        p_weak: weak-view scores (B), or ``None`` to leave ``L_c`` out (the ablation rows without it).
        p_strong: strong-view scores (B), or ``None`` to leave ``L_r`` out.
        q: pseudo-labels (B).
        eps: degree of each strong view (B or scalar); required with ``p_strong``.
        alpha, theta, beta: weights of ``L_d``, ``L_c``, ``L_r``.
        detach_source: see the module docstring (default ``False``, the paper's form).

    Returns:
        ``(total, parts)``; ``parts`` holds ``"distribution"``, ``"consistency"``, ``"relativity"`` (unweighted,
        detached, zero when left out) and ``"total"`` (detached), for logging.
    """
    l_d = distribution_loss(p, q)
    zero = p.new_zeros(())
    l_c = consistency_loss(p_weak, p, detach_source) if p_weak is not None else zero
    if p_strong is not None:
        if eps is None:
            raise ValueError("eps is required with p_strong")
        l_r = relativity_loss(p_strong, p, eps, detach_source)
    else:
        l_r = zero
    total = alpha * l_d + theta * l_c + beta * l_r
    parts = {
        "distribution": l_d.detach(),
        "consistency": l_c.detach(),
        "relativity": l_r.detach(),
        "total": total.detach(),
    }
    return total, parts
