"""W&B media for saliency models: input frames, the gaze map and the predicted map of a few validation items.

One image per logged epoch: a row per item with the last context frames before the target, then the target
frame under the ground-truth gaze map, then under the predicted map (heat maps scaled by their maximum, a
circle at the peak). It shows at a glance whether the model follows the gaze or sits on the centre prior.
Every column is titled; the figure is written to ``<run>/figures/val_saliency_maps.png`` and logged to W&B
when the run logs there.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_modules.clstm_unet.stream import overlay_heatmap
from lightning_modules.common.contracts import saliency_log_pred
from lightning_modules.common.runs import save_figure

__all__ = ["SaliencyMapLogger", "saliency_grid"]


def _to_uint8_bgr(frame: np.ndarray) -> np.ndarray:
    """C×H×W in [-1, 1] (C = 1 or 3, RGB) -> H×W×3 uint8 BGR."""
    img = np.clip((frame + 1.0) * 127.5, 0, 255).astype(np.uint8)
    if img.shape[0] == 1:
        return np.repeat(img[0][:, :, None], 3, axis=2)
    return np.ascontiguousarray(img.transpose(1, 2, 0)[:, :, ::-1])


def saliency_grid(
    video: np.ndarray,
    gaze: np.ndarray,
    pred: np.ndarray,
    target_index: int,
    num_context: int = 3,
    alpha: float = 0.5,
) -> np.ndarray:
    """A grid image (RGB uint8) for B items: ``video`` B×C×T×H×W in [-1, 1], ``gaze`` and ``pred`` B×H×W maps.

    Each row: up to ``num_context`` frames before the target (padded with black when there are fewer),
    the target under the gaze map, the target under the predicted map; rows are stacked top to bottom.
    """
    if video.ndim != 5:
        raise ValueError(f"video must be B×C×T×H×W, got shape {video.shape}")
    B, _, T, H, W = video.shape
    if gaze.shape != (B, H, W) or pred.shape != (B, H, W):
        raise ValueError(f"gaze {gaze.shape} and pred {pred.shape} must be {(B, H, W)}")
    if not 0 <= target_index < T:
        raise ValueError(f"target_index {target_index} outside the {T} frames")
    rows = []
    for b in range(B):
        before = list(range(max(0, target_index - num_context), target_index))
        tiles = [np.zeros((H, W, 3), np.uint8)] * (num_context - len(before))
        tiles += [_to_uint8_bgr(video[b, :, t]) for t in before]
        target = _to_uint8_bgr(video[b, :, target_index])
        tiles += [overlay_heatmap(target, gaze[b], alpha), overlay_heatmap(target, pred[b], alpha)]
        rows.append(np.concatenate(tiles, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:, :, ::-1])


class SaliencyMapLogger(Callback):
    """Saves (and logs to W&B, key ``val/saliency_maps``) :func:`saliency_grid` of the first ``num_items``
    items of the first validation batch every ``every_n_epochs`` epochs, titled. The module's ``validation_step``
    returns a :class:`~lightning_modules.common.contracts.SaliencyStepOutput` (``{"log_pred": B×1×H×W
    log-saliency}``; anything else stops the run with an error naming the model); batches are sequence
    batches (``video``, ``gaze``, ``target_index``)."""

    def __init__(self, num_items: int = 4, every_n_epochs: int = 5, num_context: int = 3) -> None:
        if num_items < 1 or every_n_epochs < 1 or num_context < 0:
            raise ValueError("num_items and every_n_epochs must be >= 1 and num_context >= 0")
        self.num_items = num_items
        self.every_n_epochs = every_n_epochs
        self.num_context = num_context
        self._grid: np.ndarray | None = None
        self._tile = 1

    def _active(self, trainer: Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not self._active(trainer):
            return
        log_pred = saliency_log_pred(self, pl_module, outputs, tuple(batch["gaze"].shape[-2:]))
        n = self.num_items
        t = int(batch["target_index"].reshape(-1)[0])
        with torch.no_grad():
            pred = log_pred[:n, 0].float().exp().cpu().numpy()
            gaze = batch["gaze"][:n, 0, t].float().cpu().numpy()
            video = batch["video"][:n].float().cpu().numpy()
        self._grid = saliency_grid(video, gaze, pred, t, self.num_context)
        self._tile = int(video.shape[-1])

    def column_titles(self) -> list[str]:
        context = [f"frame t-{k}" for k in range(self.num_context, 0, -1)]
        return [*context, "target t + gaze", "target t + prediction"]

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        grid, self._grid = self._grid, None
        if grid is None:
            return
        titles = self.column_titles()
        height = grid.shape[0]
        fig, ax = plt.subplots(figsize=(1.6 * len(titles) + 0.5, 1.6 * height / self._tile + 0.8))
        ax.imshow(grid)
        ax.set_xticks([(i + 0.5) * self._tile for i in range(len(titles))], titles, fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks(
            [(i + 0.5) * self._tile for i in range(height // self._tile)],
            [f"item {i}" for i in range(height // self._tile)],
            fontsize=7,
        )
        ax.set_title(
            f"validation saliency, epoch {trainer.current_epoch} (heat map scaled to its maximum)",
            fontsize=8,
            pad=18,
        )
        fig.tight_layout()
        save_figure(trainer, fig, "val_saliency_maps", "val/saliency_maps")
