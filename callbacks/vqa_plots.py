"""Figures of the VQA models: score distribution per clip label (the paper's Fig. 3) and ROC curves.

Both read what :class:`lightning_modules.vqa_gan.base.QualityAnomalyModule` keeps after each validation
and test epoch (``pl_module.last_evaluation[stage]``, an
:class:`~lightning_modules.common.contracts.Evaluation`: the gathered scores, targets, labels, qualities
and the threshold; attached to a model without it, the run stops at setup with an error), write a PNG into the run's folder (``<run>/figures/<stage>_<name>.png``, the latest epoch
overwriting the previous one) and log it to W&B when the run logs there. Rank 0 only; the sanity-check
validation is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.functional.classification import binary_roc

from lightning_modules.common.contracts import Evaluation, EvaluationModule, group_names, require
from lightning_modules.common.runs import save_figure

__all__ = ["ROCPlot", "ScoreDistributionPlot", "plot_roc", "plot_score_distribution"]


def plot_score_distribution(evaluation: Evaluation, score: str | None = None, title: str = "") -> plt.Figure:
    """Mean ± std of a score per clip group (normal groups first, in green), every clip as a dot, the
    decision threshold as a dashed line."""
    score = score or evaluation["primary"]
    values = np.asarray(evaluation["scores"][score], dtype=float)
    groups = group_names(evaluation)
    target = np.asarray(evaluation["target"])
    order = sorted(set(groups), key=lambda g: (int(np.mean(target[[x == g for x in groups]]) > 0.5), g))
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 2.5, 4.0))
    rng = np.random.default_rng(0)
    for i, group in enumerate(order):
        mask = np.array([x == group for x in groups])
        v = values[mask]
        normal = np.mean(target[mask]) < 0.5
        colour = "tab:green" if normal else "tab:red"
        ax.bar(i, v.mean(), yerr=v.std(), color=colour, alpha=0.35, capsize=4)
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(v)), v, s=8, color=colour)
    thr = evaluation.get("threshold", float("nan"))
    if score == evaluation["primary"] and np.isfinite(thr):
        ax.axhline(thr, ls="--", color="k", lw=1, label=f"threshold {thr:.4g}")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xticks(range(len(order)), [f"{g}\n(n={sum(x == g for x in groups)})" for g in order], fontsize=8)
    ax.set_ylabel(f"{score} score (higher = lower quality)")
    ax.set_title(title or f"{score} score per clip label")
    fig.tight_layout()
    return fig


def plot_roc(evaluation: Evaluation, title: str = "") -> plt.Figure:
    """ROC curve of every score (low quality = positive class), AUC in the legend."""
    target = np.asarray(evaluation["target"])
    known = target >= 0
    y = torch.as_tensor(target[known])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    if (y == 0).any() and (y == 1).any():
        for name, values in evaluation["scores"].items():
            s = torch.as_tensor(np.asarray(values, dtype=np.float64)[known])
            if not torch.isfinite(s).all():
                continue
            span = s.max() - s.min()
            s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)  # no sigmoid squashing
            fpr, tpr, _ = binary_roc(s.float(), y)
            area = float(torch.trapezoid(tpr, fpr))
            ax.plot(
                fpr.numpy(),
                tpr.numpy(),
                lw=2 if name == evaluation["primary"] else 1,
                label=f"{name} (AUC {area:.3f})",
            )
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title or "ROC, low quality = positive")
    fig.tight_layout()
    return fig


class _EvaluationFigure(Callback):
    """Base: after validation/test, draw ``self.draw(evaluation)`` and save/log it."""

    name = "figure"

    def __init__(
        self, stages: tuple[str, ...] | list[str] = ("val", "test"), every_n_epochs: int = 1
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError("every_n_epochs must be >= 1")
        unknown = set(stages) - {"val", "test"}
        if unknown:
            raise ValueError(f"stages must be among 'val', 'test', got {sorted(unknown)}")
        self.stages = tuple(stages)
        self.every_n_epochs = every_n_epochs
        self.saved: dict[str, Path] = {}

    def draw(self, evaluation: Evaluation, title: str) -> plt.Figure:
        raise NotImplementedError

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require(self, pl_module, EvaluationModule)

    def _emit(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in self.stages or not trainer.is_global_zero:
            return
        require(self, pl_module, EvaluationModule)
        evaluation = cast(EvaluationModule, pl_module).last_evaluation.get(stage)
        if not evaluation or evaluation.get("sanity"):
            return
        if stage == "val" and (evaluation["epoch"] + 1) % self.every_n_epochs:
            return
        when = f" (epoch {evaluation['epoch']})" if stage == "val" else ""
        title = f"{type(pl_module).__name__} {stage}{when}"
        fig = self.draw(evaluation, title)
        self.saved[stage] = save_figure(trainer, fig, f"{stage}_{self.name}", key=f"{stage}/{self.name}")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._emit(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._emit(trainer, pl_module, "test")


class ScoreDistributionPlot(_EvaluationFigure):
    """The paper's Fig. 3: mean ± std of the score per clip label (``score=None``: the primary score)."""

    name = "score_distribution"

    def __init__(
        self,
        stages: tuple[str, ...] | list[str] = ("val", "test"),
        every_n_epochs: int = 1,
        score: str | None = None,
    ) -> None:
        super().__init__(stages, every_n_epochs)
        self.score = score

    def draw(self, evaluation: Evaluation, title: str) -> plt.Figure:
        if self.score is not None and self.score not in evaluation["scores"]:
            raise ValueError(
                f"ScoreDistributionPlot: unknown score {self.score!r}; have {sorted(evaluation['scores'])}"
            )
        return plot_score_distribution(evaluation, self.score, title)


class ROCPlot(_EvaluationFigure):
    """ROC curves of every score."""

    name = "roc"

    def draw(self, evaluation: Evaluation, title: str) -> plt.Figure:
        return plot_roc(evaluation, title)
