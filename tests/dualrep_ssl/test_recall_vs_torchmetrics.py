"""Why DualRepSSL keeps its own retrieval recall (losses.retrieval_recall) instead of torchmetrics'.

On ordinary embeddings the two agree (first test). torchmetrics' ``retrieval_recall`` differs where it
matters for an alignment diagnostic: it counts a positive whose score is not > 0 as never retrieved
(cosine similarities are often negative), and it breaks ties by sort order, so collapsed embeddings (every
similarity equal) can look aligned; ours counts ties against the query, so a collapse scores 0 at R@1.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.retrieval import retrieval_recall as tm_retrieval_recall

from lightning_modules.dualrep_ssl.losses import cosine_similarity_matrix, retrieval_recall


def _torchmetrics_recall(query: torch.Tensor, keys: torch.Tensor, k: int) -> float:
    sim = cosine_similarity_matrix(query, keys)
    target = torch.zeros_like(sim, dtype=torch.bool)
    target[torch.arange(len(query)), torch.arange(len(query))] = True
    return float(torch.stack([tm_retrieval_recall(s, t, top_k=k) for s, t in zip(sim, target)]).mean())


def test_same_values_on_ordinary_positive_similarity_embeddings():
    g = torch.Generator().manual_seed(0)
    query = torch.rand(32, 8, generator=g) + 0.1  # positive coordinates: every similarity > 0, no ties
    keys = query + 0.3 * torch.rand(40, 8, generator=g)[:32]
    keys = torch.cat([keys, torch.rand(8, 8, generator=g) + 0.1])
    for k in (1, 5):
        assert retrieval_recall(query, keys, ks=(k,))[f"R@{k}"] == _torchmetrics_recall(query, keys, k)


def test_torchmetrics_misses_a_top_ranked_positive_with_negative_similarity():
    query = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[-0.1, 1.0], [-1.0, 0.0]])  # positive (row 0) is the best match, cosine < 0
    assert retrieval_recall(query, keys, ks=(1,)) == {"R@1": 1.0}
    assert _torchmetrics_recall(query, keys, 1) == 0.0


def test_collapsed_embeddings_do_not_look_aligned_with_ours():
    same = torch.ones(4, 3)
    assert retrieval_recall(same, same, ks=(1,)) == {"R@1": 0.0}
    assert _torchmetrics_recall(same, same, 1) > 0.0  # ties broken by sort order: some queries "hit"
