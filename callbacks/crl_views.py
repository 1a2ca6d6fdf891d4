"""CRL-UIQA's Fig. 2: the scores of a source image, its weak views and its strong views of increasing degree.

A trained model should give the weak views (flips, rotation) about the source's score and lower scores to
stronger blur. :class:`QualityViewPanel` draws the panel for the first images of the first validation / test
batch (the ``better`` image of each pair), saves ``<run>/figures/<stage>_views.png`` (rank 0, the latest epoch
overwriting the previous one; the sanity check is skipped) and logs it to W&B when the run logs there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_modules.common.runs import save_figure
from lightning_modules.crl_uiqa.views import blur, weak_view

__all__ = ["QualityViewPanel", "plot_view_panel", "view_panel"]


def view_panel(
    images: torch.Tensor,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    eps_levels: Sequence[float] = (0.1, 0.2, 0.4),
    n_weak: int = 2,
    kind: str = "gaussian",
    sigma_per_eps: float = 10.0,
    length_per_eps: float = 30.0,
    seed: int = 0,
) -> tuple[list[list[torch.Tensor]], list[list[float]], list[str]]:
    """Views and scores, one row per image: source, ``n_weak`` weak views, one strong view per ε level.

    Returns ``(views[row][col] as C×H×W, scores[row][col], column titles)``. The weak views are drawn with a
    fixed ``seed`` so successive epochs show the same views.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty B×C×H×W batch, got shape {tuple(images.shape)}")
    gen = torch.Generator().manual_seed(seed)
    columns = [images] + [weak_view(images, gen) for _ in range(n_weak)]
    titles = ["source"] + [f"weak {i + 1}" for i in range(n_weak)]
    for eps in eps_levels:
        columns.append(
            blur(
                images,
                torch.full((images.shape[0],), float(eps)),
                kind,
                sigma_per_eps=sigma_per_eps,
                length_per_eps=length_per_eps,
            )
        )
        titles.append(f"{kind} ε={eps:g}")
    with torch.no_grad():
        scores = [torch.as_tensor(score_fn(c)).float().reshape(-1).cpu() for c in columns]
    views = [
        [columns[j][i].detach().float().cpu() for j in range(len(columns))] for i in range(images.shape[0])
    ]
    table = [[float(scores[j][i]) for j in range(len(columns))] for i in range(images.shape[0])]
    return views, table, titles


def plot_view_panel(
    views: list[list[torch.Tensor]], scores: list[list[float]], titles: list[str], title: str = ""
) -> plt.Figure:
    """Grid of the views with each view's score under it (images shown from ``[-1, 1]``, grey or RGB)."""
    rows, cols = len(views), len(titles)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            img = ((views[i][j] + 1.0) / 2.0).clamp(0, 1)
            ax = axes[i][j]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{scores[i][j]:.3f}", fontsize=8)
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


class QualityViewPanel(Callback):
    """Draw :func:`view_panel` after validation (every ``every_n_epochs``) and test; see the module docstring.

    Args:
        n_images: rows of the panel (first images of the first batch).
        eps_levels: strong-view degrees (columns), blur kind ``kind``; σ / streak per ε are taken from the
            model's hyper-parameters when it has them.
        every_n_epochs: validation epochs between panels.
    """

    def __init__(
        self,
        n_images: int = 4,
        eps_levels: Sequence[float] = (0.1, 0.2, 0.4),
        kind: str = "gaussian",
        every_n_epochs: int = 5,
    ) -> None:
        if n_images < 1 or every_n_epochs < 1:
            raise ValueError("n_images and every_n_epochs must be >= 1")
        self.n_images = n_images
        self.eps_levels = tuple(float(e) for e in eps_levels)
        self.kind = kind
        self.every_n_epochs = every_n_epochs
        self._images: dict[str, torch.Tensor] = {}
        self.saved: dict[str, Path] = {}

    def _keep(self, trainer: Trainer, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        if batch_idx == 0 and trainer.is_global_zero and "better" in batch and stage not in self._images:
            self._images[stage] = batch["better"][: self.n_images].detach()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            self._keep(trainer, batch, batch_idx, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep(trainer, batch, batch_idx, "test")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._emit(trainer, pl_module, "val")
        self._images.pop("val", None)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._emit(trainer, pl_module, "test")
        self._images.pop("test", None)

    def _emit(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        images = self._images.get(stage)
        if images is None or not trainer.is_global_zero:
            return
        hp = getattr(pl_module, "hparams", {})
        views, scores, titles = view_panel(
            images,
            lambda x: cast(Any, pl_module).score(x.to(pl_module.device)),  # a PairwiseQualityModule
            self.eps_levels,
            kind=self.kind,
            sigma_per_eps=float(hp.get("sigma_per_eps", 10.0)),
            length_per_eps=float(hp.get("length_per_eps", 30.0)),
        )
        fig = plot_view_panel(
            views, scores, titles, f"{type(pl_module).__name__} {stage} (epoch {trainer.current_epoch})"
        )
        self.saved[stage] = save_figure(trainer, fig, f"{stage}_views", key=f"{stage}/views")
