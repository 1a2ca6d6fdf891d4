"""Stop a diverged run loudly instead of training (and checkpointing) on NaN.

:class:`NonFiniteGuard` watches every loss that is back-propagated. When one is NaN or infinite, the
optimiser step of that backward pass is skipped (its gradients are dropped, so the weights stay the last
finite ones), and at the end of the batch the run either stops with :class:`NonFiniteLossError` (naming
the epoch, the step and every non-finite loss term the training step returned) or, with
``action="skip"``, goes on with the next batch, up to ``max_skips`` skipped batches in the whole run.

Loss terms: a ``training_step`` that returns a dict (``{"loss": total, "kld": ..., ...}``, Lightning's
own convention) gets each non-finite entry named; one that returns a tensor gets ``loss``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer

__all__ = ["NonFiniteGuard", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite (the run stops; its weights are the last finite ones)."""


def _non_finite_terms(outputs: Any) -> dict[str, float]:
    if isinstance(outputs, torch.Tensor):
        outputs = {"loss": outputs}
    if not isinstance(outputs, Mapping):
        return {}
    bad = {}
    for name, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            v = float(value.detach())
            if not math.isfinite(v):
                bad[str(name)] = v
        elif isinstance(value, float) and not math.isfinite(value):
            bad[str(name)] = value
    return bad


class NonFiniteGuard(Callback):
    """Skips the update of a non-finite loss and stops the run (or, ``action="skip"``, drops the batch).

    Args:
        action: ``stop`` (default) ends the run with a non-zero exit status and a message naming epoch,
            step and loss term; ``skip`` drops the batch and trains on.
        max_skips: with ``skip``, the run still stops once more than this many batches were dropped.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int = 3) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard action must be 'stop' or 'skip', got {action!r}")
        if max_skips < 0:
            raise ValueError(f"NonFiniteGuard max_skips must be >= 0, got {max_skips}")
        self.action = action
        self.max_skips = int(max_skips)
        self.skipped = 0
        self._bad_losses: list[float] = []
        self._skip = False

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._bad_losses = []
        self._skip = False

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach().float())
        if not math.isfinite(value):
            self._bad_losses.append(value)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        # every DDP process decides alike (one non-finite loss anywhere skips the step everywhere), so no
        # process stops or steps alone and leaves the others waiting
        if not trainer.strategy.reduce_boolean_decision(bool(self._bad_losses), all=False):
            return
        self._skip = True
        # torch optimisers skip parameters without a gradient: the step becomes a no-op, moments included
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not (self._skip or self._bad_losses):
            return
        terms = _non_finite_terms(outputs) or (
            {"loss": self._bad_losses[0]} if self._bad_losses else {"loss (in another process)": math.nan}
        )
        named = ", ".join(f"{name} = {value}" for name, value in terms.items())
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}, batch {batch_idx}"
        if self.action == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            rank_zero_warn(
                f"non-finite training loss at {where}: {named}; batch skipped "
                f"({self.skipped} of at most {self.max_skips})"
            )
            return
        why = (
            f"more than max_skips={self.max_skips} batches had a non-finite loss"
            if self.action == "skip"
            else "NonFiniteGuard(action=stop)"
        )
        raise NonFiniteLossError(
            f"non-finite training loss at {where}: {named}. The run stopped ({why}); the weights are the "
            "last finite ones and no checkpoint was written for this step. Lower the learning rate, check the "
            "inputs of this batch, or set --nonfinite.action=skip to drop such batches."
        )
