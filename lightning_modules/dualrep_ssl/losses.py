"""DualRepSSL losses and retrieval metric (Gridach et al., 2023), as pure functions.

* :func:`info_nce_excluding_positive`: Eq. 3-6, the contrastive loss whose denominator sums over the
  negatives only (``1[j != k]``), so it is *not* bounded below by 0: a well-separated batch gives negative
  values. That is expected, not a bug.
* :func:`mmcl_loss`: Eq. 7-8, ``L_a = pi·L(v, a) + (1 - pi)·L(v, va)`` and ``L_i`` likewise; total
  ``L_a + L_i`` (their sum in Eq. 13).
* :func:`vse_hardest_negative_loss` / :func:`mmsl_loss`: Eq. 11-12, the VSE++ max-of-hinges loss (Faghri
  et al., 2018) on cosine similarities. Eq. 11 as printed nests the second hinge inside the first; we read
  it as a typo for the form of Eq. 12 (sum of the two hinges), which is VSE++'s.
* :func:`retrieval_recall`: recall@k of same-index positives.

Similarities are cosine similarities of L2-normalised embeddings throughout (``psi`` and ``f_sim`` of the
paper). Batch reductions are means over the positive pairs.

For multi-GPU training, gather the *keys* with
:func:`lightning_modules.common.distributed.gather_for_contrastive` and pass the returned offset as
``positive_offset``: each rank then scores its own queries against the keys of all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "cosine_similarity_matrix",
    "info_nce_excluding_positive",
    "mmcl_loss",
    "mmsl_loss",
    "retrieval_recall",
    "vse_hardest_negative_loss",
]


def cosine_similarity_matrix(query: torch.Tensor, keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``N×M`` matrix of cosine similarities between the rows of ``query`` (N×D) and ``keys`` (M×D).

    Computed in float32 with autocast off: under bf16/fp16 mixed precision the similarities, divided by a
    temperature of 0.1, would otherwise carry errors of ~0.1 in the logits.
    """
    with torch.autocast(device_type=query.device.type, enabled=False):
        q = F.normalize(query.float(), dim=1, eps=eps)
        k = F.normalize(keys.float(), dim=1, eps=eps)
        return q @ k.t()


def _positive_index(n: int, m: int, offset: int, device: torch.device) -> torch.Tensor:
    if offset < 0 or offset + n > m:
        raise ValueError(f"{n} queries at positive_offset {offset} do not fit {m} keys")
    return torch.arange(n, device=device) + offset


def info_nce_excluding_positive(
    query: torch.Tensor, keys: torch.Tensor, tau: float = 0.1, positive_offset: int = 0
) -> torch.Tensor:
    """Contrastive loss of Eq. 3-6 with the positive excluded from the denominator.

    For query ``k`` with positive key ``p = positive_offset + k``:
    ``loss_k = -s_kp / tau + log sum_{j != p} exp(s_kj / tau)``, with ``s`` the cosine similarity.
    Returns the mean over the queries (a scalar). Needs at least one negative (``M >= 2`` keys).

    Args:
        query: ``N×D`` (e.g. ``F_v``).
        keys: ``M×D`` with ``M >= N`` (e.g. ``F_a``; ``M > N`` when the keys were gathered across ranks).
        tau: temperature (0.1 in the paper).
        positive_offset: index in ``keys`` of query 0's positive (0 in single-process use).
    """
    n, m = query.shape[0], keys.shape[0]
    if m < 2:
        raise ValueError("info_nce_excluding_positive needs at least 2 keys (one positive, one negative)")
    logits = cosine_similarity_matrix(query, keys) / tau  # N×M
    pos = _positive_index(n, m, positive_offset, logits.device)
    rows = torch.arange(n, device=logits.device)
    positive = logits[rows, pos]
    negatives = logits.masked_fill(F.one_hot(pos, m).bool(), float("-inf"))
    return (torch.logsumexp(negatives, dim=1) - positive).mean()


def mmcl_loss(
    F_v: torch.Tensor,
    F_a: torch.Tensor,
    F_va: torch.Tensor,
    F_i: torch.Tensor | None = None,
    F_vi: torch.Tensor | None = None,
    pi: float = 0.5,
    tau: float = 0.1,
    positive_offset: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-modal contrastive loss (Eq. 3-8): ``L_a + L_i``, the video as query in every term.

    ``L_a = pi·L_CL(F_v, F_a) + (1 - pi)·L_CL(F_v, F_va)`` (Eq. 7) and
    ``L_i = pi·L_CL(F_v, F_i) + (1 - pi)·L_CL(F_v, F_vi)`` (Eq. 8), each ``L_CL`` being
    :func:`info_nce_excluding_positive`. Without the image (``F_i`` and ``F_vi`` both ``None``, the
    "w/o image" ablation) the total is ``L_a``.

    Returns:
        ``(total, parts)`` with parts ``cl_v_a``, ``cl_v_va``, ``L_a`` and, with the image, ``cl_v_i``,
        ``cl_v_vi``, ``L_i`` (scalar tensors, attached to the graph).
    """
    if (F_i is None) != (F_vi is None):
        raise ValueError("mmcl_loss needs both F_i and F_vi, or neither")
    parts: dict[str, torch.Tensor] = {}
    parts["cl_v_a"] = info_nce_excluding_positive(F_v, F_a, tau, positive_offset)
    parts["cl_v_va"] = info_nce_excluding_positive(F_v, F_va, tau, positive_offset)
    parts["L_a"] = pi * parts["cl_v_a"] + (1.0 - pi) * parts["cl_v_va"]
    total = parts["L_a"]
    if (F_i is None) != (F_vi is None):
        raise ValueError("mmcl_loss: give both F_i and F_vi (the image terms) or neither")
    if F_i is not None and F_vi is not None:
        parts["cl_v_i"] = info_nce_excluding_positive(F_v, F_i, tau, positive_offset)
        parts["cl_v_vi"] = info_nce_excluding_positive(F_v, F_vi, tau, positive_offset)
        parts["L_i"] = pi * parts["cl_v_i"] + (1.0 - pi) * parts["cl_v_vi"]
        total = total + parts["L_i"]
    return total, parts


def vse_hardest_negative_loss(sim: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """VSE++ max-of-hinges loss on a square similarity matrix (Eq. 12; Faghri et al., 2018).

    ``sim[i, j]`` is the similarity of query ``i`` (e.g. video) and key ``j`` (e.g. audio); the diagonal
    holds the positive pairs. For pair ``i``:
    ``loss_i = [margin + max_{j != i} sim[i, j] - sim[i, i]]_+ + [margin + max_{j != i} sim[j, i] - sim[i, i]]_+``
    (hardest negative key for the query, row-wise; hardest negative query for the key, column-wise).
    Returns the mean over the ``B`` pairs (VSE++ sums; the mean keeps the scale batch-size free).
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"vse_hardest_negative_loss needs a square B×B matrix, got {tuple(sim.shape)}")
    b = sim.shape[0]
    if b < 2:
        raise ValueError("vse_hardest_negative_loss needs B >= 2 (no negatives otherwise)")
    positive = sim.diagonal()
    off_diag = sim.masked_fill(torch.eye(b, dtype=torch.bool, device=sim.device), float("-inf"))
    hardest_key = off_diag.amax(dim=1)  # per query (row)
    hardest_query = off_diag.amax(dim=0)  # per key (column)
    loss = F.relu(margin + hardest_key - positive) + F.relu(margin + hardest_query - positive)
    return loss.mean()


def mmsl_loss(
    mu_v: torch.Tensor,
    mu_a: torch.Tensor,
    mu_i: torch.Tensor | None = None,
    margin: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-modal similarity loss (Eq. 9-12): VSE++ hardest-negative loss on cosine similarities.

    ``L_MMSL(v, a)`` on the ``B×B`` matrix ``f_sim(mu_v, mu_a)`` and, when ``mu_i`` is given,
    ``L_MMSL(v, i)`` on ``f_sim(mu_v, mu_i)``. The margin alpha is not given in the paper; 0.2 is VSE++'s.

    Returns:
        ``(total, parts)`` with parts ``mmsl_v_a`` and (with the image) ``mmsl_v_i``.
    """
    parts = {"mmsl_v_a": vse_hardest_negative_loss(cosine_similarity_matrix(mu_v, mu_a), margin)}
    total = parts["mmsl_v_a"]
    if mu_i is not None:
        parts["mmsl_v_i"] = vse_hardest_negative_loss(cosine_similarity_matrix(mu_v, mu_i), margin)
        total = total + parts["mmsl_v_i"]
    return total, parts


@torch.no_grad()
def retrieval_recall(query: torch.Tensor, keys: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k: fraction of queries whose positive key (same index) ranks within the top ``k``.

    Ranking is by cosine similarity. ``keys`` may have more rows than ``query`` (extra distractors); query
    ``n`` pairs with key ``n``. Ties are counted against the query (a key scoring *equal* to the positive
    ranks ahead of it), so a collapsed embedding scores chance or worse, never 1.

    Returns:
        ``{"R@1": ..., "R@5": ...}`` (Python floats in ``[0, 1]``).
    """
    n, m = query.shape[0], keys.shape[0]
    if n == 0 or m < n:
        raise ValueError(f"retrieval_recall needs 1 <= queries <= keys, got {n} queries and {m} keys")
    sim = cosine_similarity_matrix(query.float(), keys.float())
    idx = torch.arange(n, device=sim.device)
    others = sim >= sim[idx, idx][:, None]
    others[idx, idx] = False
    rank = others.sum(dim=1)  # 0 = first
    return {f"R@{k}": (rank < k).float().mean().item() for k in ks}
