"""Learning-rate schedule of VideoQualityGAN (CycleGAN's "linear" policy)."""

from __future__ import annotations

__all__ = ["LinearDecayLambda", "linear_decay_lambda"]


class LinearDecayLambda:
    """LR factor for epoch ``e`` (0-based, as ``torch.optim.lr_scheduler.LambdaLR`` counts):

        1                                          for e < n_constant
        1 − (e + 1 − n_constant) / (n_decay + 1)   afterwards, floored at 0

    i.e. constant for ``n_constant`` epochs, then linear decay over ``n_decay`` epochs reaching 0 at
    epoch ``n_constant + n_decay`` (right after the last trained epoch), exactly CycleGAN's rule with
    ``epoch_count=1``. Published: ``n_constant = n_decay = 100``. A class (not a closure) so that it
    pickles (checkpoints, DDP spawn).
    """

    def __init__(self, n_constant: int, n_decay: int) -> None:
        if n_constant < 0 or n_decay < 0:
            raise ValueError("n_constant and n_decay must be >= 0")
        self.n_constant = int(n_constant)
        self.n_decay = int(n_decay)

    def __call__(self, epoch: int) -> float:
        return max(0.0, 1.0 - max(0, epoch + 1 - self.n_constant) / float(self.n_decay + 1))

    def __repr__(self) -> str:
        return f"LinearDecayLambda(n_constant={self.n_constant}, n_decay={self.n_decay})"


def linear_decay_lambda(n_constant: int, n_decay: int) -> LinearDecayLambda:
    """The ``lr_lambda`` for ``LambdaLR``: see :class:`LinearDecayLambda`."""
    return LinearDecayLambda(n_constant, n_decay)
