"""What the VQA GAN reconstructs: input, reconstruction and gaze strips, and a few clips as animations.

Every ``every_n_epochs`` validation epochs, the first ``num_items`` clips of the first validation batch go
through the model's ``reconstruction_views`` (:class:`~lightning_modules.common.contracts.ReconstructionModule`,
e.g. :meth:`~lightning_modules.vqa_gan.module.VideoQualityGAN.reconstruction_views`; a model without it
stops the run at setup with an error). The figure has one
block per clip: a row of the zoomed input frames, a row of their reconstruction, and (a model with a gaze
decoder) the gaze target and the predicted gaze map; every row titled. It is written to
``<run>/figures/val_reconstructions.png`` and logged to W&B when the run logs there. ``num_clips`` clips
are also written as animated GIFs (input | reconstruction, side by side) and logged as W&B videos. Rank 0
only; the sanity check is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from lightning_modules.common.contracts import ReconstructionModule, require
from lightning_modules.common.runs import figure_path, logs_to_wandb, save_figure

__all__ = ["ReconstructionStrips", "reconstruction_figure", "write_gif"]

_ROWS = (
    ("input", "input (zoomed)"),
    ("reconstruction", "reconstruction"),
    ("gaze", "gaze"),
    ("gaze_prediction", "predicted gaze"),
)


def _frames(clip: np.ndarray) -> np.ndarray:
    """C×T×H×W in [-1, 1] -> T×H×W×3 uint8 (grey repeated, or the first three channels)."""
    img = np.clip((clip[:3] + 1.0) * 127.5, 0, 255).astype(np.uint8)
    img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
    return np.ascontiguousarray(img.transpose(1, 2, 3, 0))


def reconstruction_figure(views: dict[str, np.ndarray], epoch: int) -> plt.Figure:
    """One block of titled rows per clip: ``views`` maps input / reconstruction / gaze / gaze_prediction to
    B×C×T×H×W arrays (images in [-1, 1], gaze maps non-negative)."""
    rows = [(key, title) for key, title in _ROWS if key in views]
    b, _, t = views["input"].shape[:3]
    fig, axes = plt.subplots(b * len(rows), t, figsize=(1.2 * t, 1.3 * b * len(rows)), squeeze=False)
    for item in range(b):
        for r, (key, title) in enumerate(rows):
            row = item * len(rows) + r
            for frame in range(t):
                ax = axes[row, frame]
                ax.axis("off")
                if key.startswith("gaze"):
                    ax.imshow(views[key][item, 0, frame], cmap="inferno")
                else:
                    ax.imshow(_frames(views[key][item])[frame])
            axes[row, 0].set_title(f"clip {item}: {title}", loc="left", fontsize=8)
    fig.suptitle(f"validation clips, epoch {epoch} (frames left to right)", fontsize=9)
    fig.tight_layout()
    return fig


def write_gif(path: Path, left: np.ndarray, right: np.ndarray, fps: int = 4) -> Path:
    """An animated GIF of two C×T×H×W clips side by side (input | reconstruction)."""
    frames = np.concatenate([_frames(left), _frames(right)], axis=2)
    images = [Image.fromarray(frame) for frame in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


class ReconstructionStrips(Callback):
    """Figure and GIFs of the GAN's reconstructions of a few validation clips (see the module docstring).

    Args:
        num_items: clips in the figure.
        num_clips: clips written as GIFs and logged as W&B videos (0: none).
        every_n_epochs: how often (validation epochs whose epoch index is a multiple of it).
    """

    def __init__(self, num_items: int = 2, num_clips: int = 2, every_n_epochs: int = 5) -> None:
        if num_items < 1 or num_clips < 0 or every_n_epochs < 1:
            raise ValueError("num_items and every_n_epochs must be >= 1, num_clips >= 0")
        self.num_items, self.num_clips, self.every_n_epochs = num_items, num_clips, every_n_epochs
        self._views: dict[str, np.ndarray] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require(self, pl_module, ReconstructionModule)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx or dataloader_idx or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        require(self, pl_module, ReconstructionModule)
        n = max(self.num_items, self.num_clips)
        model = cast(ReconstructionModule, pl_module)
        views = model.reconstruction_views({k: v[:n] for k, v in batch.items()})
        self._views = {k: v.float().cpu().numpy() for k, v in views.items()}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        views, self._views = self._views, None
        if views is None:
            return
        epoch = trainer.current_epoch
        figure = reconstruction_figure({k: v[: self.num_items] for k, v in views.items()}, epoch)
        save_figure(trainer, figure, "val_reconstructions", "val/reconstructions")
        clips = []
        for i in range(min(self.num_clips, len(views["input"]))):
            path = figure_path(trainer, f"val_clip{i}.gif")
            clips.append(write_gif(path, views["input"][i], views["reconstruction"][i]))
        if clips and logs_to_wandb(trainer):
            import wandb

            videos = [
                wandb.Video(str(p), caption=f"clip {i}: input | reconstruction") for i, p in enumerate(clips)
            ]
            cast(WandbLogger, trainer.logger).experiment.log(
                {"val/reconstruction_clips": videos, "trainer/global_step": trainer.global_step}
            )
