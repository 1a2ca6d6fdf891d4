"""Cross-modal retrieval recall as torchmetrics objects (DDP-safe alignment diagnostics).

Both wrap :func:`.losses.retrieval_recall` (cosine similarity, ties counted against the query, so a
collapsed embedding never looks aligned). torchmetrics' ``retrieval_recall`` is not used: it drops
positives whose score is not > 0 (cosine similarities often are) and breaks ties by sort order
(``tests/dualrep_ssl/test_recall_vs_torchmetrics.py`` shows both):

* :class:`InBatchRecall`: each update ranks every query's positive among the keys *of its batch* (the
  global batch under DDP: pass the gathered keys and this rank's ``positive_offset``); the result is the
  mean over all queries seen. Chance level is ``min(k, B) / B`` for batches of ``B``.
* :class:`SplitRecall`: keeps every (query, key) pair of the epoch and ranks each query's positive among
  the keys of the *whole* split at ``compute``; chance level is ``k / N``. Under DDP the embeddings of all
  ranks are concatenated (``dist_reduce_fx="cat"``); the padding items that ``DistributedSampler`` adds
  are duplicates, which count as ties against their own query (slightly lowering the figure).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.dualrep_ssl.losses import retrieval_recall

__all__ = ["InBatchRecall", "SplitRecall"]


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"recall ks must be positive integers, got {ks}")
    return ks


class InBatchRecall(Metric):
    """Recall@k of same-index positives within each batch; ``compute`` returns ``{"R@k": mean}``."""

    count: Tensor  # states (add_state): the type checker cannot see them

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, ks: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = _check_ks(ks)
        for k in self.ks:
            self.add_state(f"hits_{k}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, query: Tensor, keys: Tensor, positive_offset: int = 0) -> None:
        """``query`` N×D, ``keys`` M×D (M ≥ N); query ``n`` pairs with key ``positive_offset + n``."""
        n = query.shape[0]
        if n == 0:
            return
        if positive_offset < 0 or positive_offset + n > keys.shape[0]:
            raise ValueError(
                f"{n} queries at positive_offset {positive_offset} do not fit {keys.shape[0]} keys"
            )
        # move this rank's positives to the front so that query n pairs with key n
        order = torch.cat(
            [
                torch.arange(positive_offset, positive_offset + n, device=keys.device),
                torch.arange(0, positive_offset, device=keys.device),
                torch.arange(positive_offset + n, keys.shape[0], device=keys.device),
            ]
        )
        recall = retrieval_recall(query.detach(), keys.detach()[order], self.ks)
        for k in self.ks:
            hits = getattr(self, f"hits_{k}")
            hits += recall[f"R@{k}"] * n
        self.count += n

    def compute(self) -> dict[str, Tensor]:
        if self.count == 0:
            return {f"R@{k}": torch.tensor(float("nan")) for k in self.ks}
        return {f"R@{k}": (getattr(self, f"hits_{k}") / self.count).float() for k in self.ks}


class SplitRecall(Metric):
    """Recall@k of each query's positive among the keys of every pair seen this epoch."""

    queries: list[Tensor]  # states (add_state), one tensor each after a DDP sync
    keys: list[Tensor]

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, ks: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = _check_ks(ks)
        self.add_state("queries", default=[], dist_reduce_fx="cat")
        self.add_state("keys", default=[], dist_reduce_fx="cat")

    def update(self, query: Tensor, keys: Tensor) -> None:
        """``query`` and ``keys`` N×D, row ``n`` of each forming a positive pair."""
        if query.shape[0] != keys.shape[0]:
            raise ValueError(
                f"SplitRecall needs paired rows, got {query.shape[0]} queries, {keys.shape[0]} keys"
            )
        self.queries.append(query.detach().float())
        self.keys.append(keys.detach().float())

    def compute(self) -> dict[str, Tensor]:
        # a list of batches in one process; one tensor after the DDP sync has concatenated them
        if isinstance(self.queries, list) and not self.queries:
            return {f"R@{k}": torch.tensor(float("nan")) for k in self.ks}
        queries, keys = dim_zero_cat(self.queries), dim_zero_cat(self.keys)
        recall = retrieval_recall(queries, keys, self.ks)
        return {name: torch.tensor(value) for name, value in recall.items()}
