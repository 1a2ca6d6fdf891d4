"""What the figure callbacks share: is W&B really logging, and save-then-log of one matplotlib figure."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless servers: these figures are only ever written to files
import matplotlib.pyplot as plt
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from lightning_modules.common.runs import run_directory

__all__ = ["logs_to_wandb", "save_figure"]


def logs_to_wandb(trainer: Trainer) -> bool:
    """The run logs to W&B (online or offline): a ``WandbLogger`` and ``WANDB_MODE`` not ``disabled``."""
    return isinstance(trainer.logger, WandbLogger) and os.environ.get("WANDB_MODE", "").lower() != "disabled"


def save_figure(trainer: Trainer, fig: Figure, name: str, key: str) -> Path:
    """Write ``fig`` to ``<run dir>/figures/<name>.png``, close it, and log the image to W&B under ``key``
    when the run logs there. Returns the file."""
    path = run_directory(trainer) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    if logs_to_wandb(trainer):
        trainer.logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
    return path
