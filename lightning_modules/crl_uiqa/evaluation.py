"""Pairwise evaluation shared by CRL-UIQA's quality scorers (:class:`PairwiseQualityModule`).

On ``(better, worse)`` pairs: the pairwise accuracy ``T / (T + F)`` overall and per plane (a DDP-safe
torchmetrics Metric) and the fraction of the better images whose score drops at every step of increasing
Gaussian blur ("blur monotonicity"). ``predict`` returns ``image`` (the manifest path), ``plane`` and ``score``.

The modules read two public things of the trainer's DataModule, by duck typing (they never import, set up or
reach into a DataModule): ``classes`` (the plane names, for the per-plane metrics and the classifier's head)
and, for the classical baselines, ``standard_dataloader()`` (the standard-plane reference set).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, cast

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric

from lightning_modules.common.pairwise import PairwiseAccuracy, blur_monotonicity

__all__ = ["STAGES", "PairwiseQualityModule", "datamodule_member"]

STAGES = ("val", "test")


def datamodule_member(module: LightningModule, name: str) -> Any:
    """``trainer.datamodule.<name>``: a public member of the DataModule the trainer runs with.

    Raises:
        TypeError: no DataModule, or one without ``name`` (the message names the DataModule to use).
    """
    trainer = module._trainer
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    if dm is None or not hasattr(dm, name):
        raise TypeError(
            f"{type(module).__name__} needs a DataModule with `{name}` (data.class_path: "
            f"datamodules.images.ImageDataModule), got {type(dm).__name__}"
        )
    return getattr(dm, name)


def _check_levels(levels: Sequence[float]) -> list[float]:
    out = [float(v) for v in levels]
    if len(out) < 2 or any(b <= a for a, b in itertools.pairwise(out)) or out[0] < 0:
        raise ValueError(
            f"blur_levels must be >= 2 increasing non-negative Gaussian σ values, got {list(levels)}"
        )
    return out


class PairwiseQualityModule(LightningModule):
    """A quality scorer evaluated on (better, worse) pairs; subclasses implement :meth:`score`.

    Args:
        planes: planes counted separately by the pairwise accuracy (default: the DataModule's classes).
        blur_levels: Gaussian σ in pixels (at the model's input size) of the blur-monotonicity check; the
            first is usually 0 (the image itself).
    """

    def __init__(self, planes: list[str] | None = None, blur_levels: Sequence[float] = (0.0, 1.0, 2.0, 3.0)):
        super().__init__()
        self.planes = list(planes) if planes is not None else None
        self.blur_levels = _check_levels(blur_levels)
        self.pairwise = nn.ModuleDict()
        self.monotonic = nn.ModuleDict({s: MeanMetric() for s in STAGES})

    # ------------------------------------------------------------------ to implement
    def score(self, images: torch.Tensor, planes: Sequence[str] | None = None) -> torch.Tensor:
        """Quality score per image (``B`` float32, higher = better)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        self.init_metrics(self.planes or list(datamodule_member(self, "classes")))

    def init_metrics(self, planes: Sequence[str]) -> None:
        """Create the per-plane metrics once (``setup`` does it with the DataModule's planes)."""
        if self.pairwise:
            return
        self.planes = list(planes)
        for s in STAGES:
            self.pairwise[s] = PairwiseAccuracy(self.planes)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if "better" not in batch:
            raise KeyError(
                f"{type(self).__name__} evaluates (better, worse) pairs: set data.init_args.eval_on=pairs "
                f"(got batch keys {sorted(batch)})"
            )
        planes = list(batch["plane"])
        better = self.score(batch["better"], planes)
        worse = self.score(batch["worse"], planes)
        cast(PairwiseAccuracy, self.pairwise[stage]).update(better, worse, planes)
        fraction = blur_monotonicity(lambda x: self.score(x, planes), batch["better"], self.blur_levels)
        monotonic = cast(MeanMetric, self.monotonic[stage])
        monotonic.update(torch.tensor(fraction, device=self.device), weight=len(planes))
        self.extra_eval(batch, stage, better, worse)

    def extra_eval(
        self, batch: dict[str, Any], stage: str, better: torch.Tensor, worse: torch.Tensor
    ) -> None:
        """Hook for further per-batch evaluation (CRLUIQA: agreement with the pseudo-labels)."""

    def _eval_epoch_end(self, stage: str) -> None:
        metric = cast(PairwiseAccuracy, self.pairwise[stage])
        monotonic = cast(MeanMetric, self.monotonic[stage])
        accuracy = metric.compute()
        values = {f"{stage}/pairwise_acc": accuracy["overall"]}
        for key, value in accuracy.items():
            if key.startswith("plane/"):
                values[f"{stage}/pairwise_acc/{key[len('plane/') :]}"] = value
        values[f"{stage}/blur_monotonicity"] = monotonic.compute()
        self.log_dict({k: v.float() for k, v in values.items()}, sync_dist=True)
        metric.reset()
        monotonic.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """One row per image: ``image`` (its path in images.csv), ``plane``, ``score``."""
        planes = list(batch["plane"])
        return {
            "image": list(batch["image_id"]),
            "plane": planes,
            "score": self.score(batch["image"], planes),
        }
