"""Run folders: one id per run, one folder per id, and how a checkpoint leads back to its run.

Layout (``root`` = ``trainer.default_root_dir`` as the user gives it, ``runs`` in every config)::

    <root>/<project>/<run id>/
        config.yaml          the resolved config the run was started with (seed included)
        checkpoints/         last.ckpt (last completed epoch) and the best checkpoint(s)
        figures/             PNG copies of every figure the run logged
        predictions.csv      `lightning predict`
        wandb/               the W&B run of the same id (offline until `wandb sync`)

The CLI points the instantiated Trainer's ``default_root_dir`` at the run's folder, so everything that
writes "into the run" (callbacks, prediction writers, commands) asks :func:`run_directory` and never
rebuilds the layout itself.
"""

from __future__ import annotations

import os
import secrets
import string
import time
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_NAME",
    "LAST_NAME",
    "RunError",
    "new_run_id",
    "newest_run",
    "process_rank",
    "run_directory",
    "run_of_checkpoint",
]

CONFIG_NAME = "config.yaml"
LAST_NAME = "last.ckpt"
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_run_id() -> str:
    """A fresh run id: creation time (so folders sort by age) and 4 random characters (so two runs
    started in the same second differ). Valid as a W&B run id and as a folder name."""
    return time.strftime("%Y%m%d-%H%M%S-") + "".join(secrets.choice(_ID_ALPHABET) for _ in range(4))


def process_rank() -> int:
    """This process's rank in a multi-process launch (torchrun, srun, Lightning's DDP launcher); 0 for a
    single process or the launching one."""
    ranks = [
        int(os.environ[v]) for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID") if os.environ.get(v, "").isdigit()
    ]
    return max(ranks, default=0)


def run_directory(trainer: Any) -> Path:
    """The folder of the run ``trainer`` belongs to (the CLI sets ``default_root_dir`` to it)."""
    return Path(trainer.default_root_dir)


def run_of_checkpoint(path: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/<file>`` next to ``<run>/config.yaml``),
    or None for a checkpoint that lives elsewhere."""
    path = Path(path)
    run = path.parent.parent
    if path.parent.name == "checkpoints" and (run / CONFIG_NAME).is_file():
        return run
    return None


def newest_run(root: str | Path, project: str) -> Path | None:
    """The run of ``project`` under ``root`` whose ``last.ckpt`` was written most recently (None if none)."""
    folder = Path(root) / project
    candidates = [
        p for p in folder.glob(f"*/checkpoints/{LAST_NAME}") if (p.parent.parent / CONFIG_NAME).is_file()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime).parent.parent


class RunError(RuntimeError):
    """A run cannot start as asked (nothing to resume, a config that contradicts the run's own, ...)."""
