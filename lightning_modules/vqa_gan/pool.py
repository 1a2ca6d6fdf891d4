"""History pool of generated samples for the discriminators (CycleGAN's image pool).

Shrivastava et al. (2017) / CycleGAN: the discriminator sees a mix of the current fakes and fakes
from earlier steps, which damps oscillation. VideoQualityGAN uses one pool of 50 items per
discriminator (videos for D_V, features for D_F).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["HistoryPool"]


class HistoryPool:
    """Buffer of up to ``size`` past items (one item = one batch entry).

    ``query(batch)`` returns a tensor shaped like ``batch``. While the pool is not full, every item is
    stored and returned as is. Once full, each item independently, with probability 0.5, is swapped
    with a uniformly chosen stored item (the stored one is returned, the current one takes its place);
    otherwise the current item is returned. ``size=0`` passes batches through untouched.

    The output is detached (it only feeds the discriminator step). Stored items are detached copies on
    the device (and in the dtype) of the latest query. Random draws use torch's global RNG
    (``torch.rand`` / ``torch.randint`` on the CPU generator), so ``torch.manual_seed`` makes a run
    reproducible. Each DDP rank keeps its own pool.
    """

    def __init__(self, size: int = 50) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.size = int(size)
        self.items: Tensor | None = None  # size×item_shape once the first item arrives
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def reset(self) -> None:
        self.items, self.count = None, 0

    def state_dict(self) -> dict[str, Any]:
        """The stored items (on the CPU) and how many are filled; tensors only, for weights-only loading."""
        items = None if self.items is None else self.items[: self.count].detach().cpu().clone()
        return {"size": self.size, "count": self.count, "items": items}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(
                f"the checkpoint's history pool holds {state['size']} items, this model's {self.size}"
            )
        items = state["items"]
        self.count = int(state["count"])
        if items is None:
            self.items = None
            return
        self.items = torch.empty((self.size, *items.shape[1:]), dtype=items.dtype)
        self.items[: self.count] = items

    @torch.no_grad()
    def query(self, batch: Tensor) -> Tensor:
        if self.size == 0:
            return batch
        batch = batch.detach()
        if self.items is None or self.items.shape[1:] != batch.shape[1:]:
            if self.items is not None:
                raise ValueError(
                    f"HistoryPool holds items of shape {tuple(self.items.shape[1:])}, got {tuple(batch.shape[1:])}"
                )
            self.items = torch.empty((self.size, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
        if self.items.device != batch.device or self.items.dtype != batch.dtype:
            self.items = self.items.to(device=batch.device, dtype=batch.dtype)
        out = batch.clone()
        for i in range(batch.shape[0]):
            if self.count < self.size:
                self.items[self.count] = batch[i]
                self.count += 1
            elif torch.rand(()) > 0.5:
                j = int(torch.randint(0, self.size, ()))
                out[i] = self.items[j]
                self.items[j] = batch[i]
        return out
