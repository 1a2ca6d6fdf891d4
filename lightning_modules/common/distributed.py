"""Differentiable all-gather for contrastive losses across processes.

:func:`all_gather_with_grad` concatenates every rank's tensor along dim 0 (rank order) and lets gradients
flow back to each rank's own slice. The collective is torch's differentiable
``torch.distributed.nn.functional.all_gather``, the one ``LightningModule.all_gather(sync_grads=True)``
calls; this wrapper adds what that call lacks for contrastive batches: ranks may hold different batch
sizes (the last batch of a split; the built-in needs one shape on every rank), so each rank's rows are
padded to the longest for the collective and trimmed after, and the result is one ``N×...`` batch instead
of a ``world×N×...`` stack.

The built-in's backward sums the incoming gradient of the gathered tensor over ranks (reduce-scatter) and
returns this rank's slice, so the gradient reaching rank ``r``'s input is ``sum over ranks r' of
d loss_r' / d x_r``. Combined with DDP's gradient *averaging* this gives the gradient of the mean over
ranks of the per-rank losses, which is right for both usual patterns:

* each rank scores its own queries against the gathered keys (``positive_offset`` = the rank's offset,
  returned by :func:`gather_for_contrastive`): ``mean_r loss_r`` equals the single-process loss on the
  whole batch when ranks hold equal batch sizes;
* each rank computes the same full-batch loss on gathered queries *and* keys (needed for losses that look
  at columns too, e.g. VSE++ hardest negatives): the gradient is the single-process one as well.

Without an initialised process group, or with one process, everything is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as differentiable_all_gather

__all__ = ["all_gather_with_grad", "gather_for_contrastive", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``, ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch_sizes(n: int, device: torch.device, world: int) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _gather(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    longest = max(sizes)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))], dim=0)
    parts = differentiable_all_gather(x.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (``N_r×...``) from all ranks along dim 0, in rank order, keeping gradients.

    The identity without an initialised process group or with world size 1. See the module docstring for
    how gradients are combined.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    sizes = _batch_sizes(x.shape[0], x.device, world)
    return _gather(x, sizes)


def gather_for_contrastive(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Gather each tensor across ranks (with gradients) and return ``(gathered, offset)``.

    ``offset`` is the index, in the gathered batch, of this rank's first sample, so local query ``n`` has
    its positive at ``offset + n`` (pass it as ``positive_offset`` to the losses). All tensors must share
    the local batch size. Single process: ``(list(tensors), 0)``.
    """
    if not tensors:
        raise ValueError("gather_for_contrastive needs at least one tensor")
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"all tensors must share the batch size, got {[t.shape[0] for t in tensors]}")
    rank, world = rank_and_world()
    if world == 1:
        return list(tensors), 0
    sizes = _batch_sizes(n, tensors[0].device, world)
    return [_gather(t, sizes) for t in tensors], sum(sizes[:rank])
