"""Learning-rate schedule of VideoQualityGAN and its baselines (CycleGAN's "linear" policy), built from
torch's own schedulers.

LR factor for epoch ``e`` (0-based, one scheduler step per epoch)::

    1                                          for e < n_constant
    1 − (e + 1 − n_constant) / (n_decay + 1)   afterwards, floored at 0

i.e. constant for ``n_constant`` epochs, then linear decay over ``n_decay`` epochs reaching 0 at epoch
``n_constant + n_decay`` (right after the last trained epoch), exactly CycleGAN's rule with
``epoch_count=1``. Published: ``n_constant = n_decay = 100``. The decay is a ``LinearLR`` from
``n_decay / (n_decay + 1)`` to 0 over ``n_decay`` steps, started after ``n_constant`` steps by ``SequentialLR``.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR

__all__ = ["linear_decay_schedule"]


def linear_decay_schedule(optimizer: Optimizer, n_constant: int, n_decay: int) -> LRScheduler:
    """The scheduler for ``optimizer`` (step it once per epoch): see the module docstring."""
    if n_constant < 0 or n_decay < 0:
        raise ValueError(f"n_constant and n_decay must be >= 0, got {n_constant} and {n_decay}")
    if n_decay == 0:  # LR drops straight to 0 after the constant phase (LinearLR needs a start > 0)
        return MultiStepLR(optimizer, milestones=[n_constant], gamma=0.0)
    decay = LinearLR(optimizer, start_factor=n_decay / (n_decay + 1), end_factor=0.0, total_iters=n_decay)
    if n_constant == 0:
        return decay
    constant = ConstantLR(optimizer, factor=1.0, total_iters=n_constant)
    return SequentialLR(optimizer, [constant, decay], milestones=[n_constant])
