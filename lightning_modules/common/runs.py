"""Run folders and what is written into them: one id per run, one folder per id, how a checkpoint leads
back to its run, and the writers every job shares (figures, prediction CSVs, atomic files).

Layout (``root`` = ``trainer.default_root_dir`` as the user gives it, ``runs`` in every config)::

    <root>/<project>/<run id>/
        config.yaml          the resolved config the run was started with (seed included)
        checkpoints/         last.ckpt (last completed epoch) and the best checkpoint(s)
        figures/             PNG copies of every figure the run logged (:func:`save_figure`)
        predictions.csv      `lightning predict` (:func:`write_csv_new` / :func:`write_csv_atomic`)
        wandb/               the W&B run of the same id (offline until `wandb sync`)

The CLI points the instantiated Trainer's ``default_root_dir`` at the run's folder, so everything that
writes "into the run" (callbacks, prediction writers, commands) asks :func:`run_directory` and never
rebuilds the layout itself. The CLI, the callbacks and the commands (``scan``, ``stream``, ...) all import
this module; it imports no callback, model or CLI (matplotlib and W&B only when a figure is written).
"""

from __future__ import annotations

import csv
import errno
import os
import secrets
import string
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CONFIG_NAME",
    "FIGURES_NAME",
    "LAST_NAME",
    "RunError",
    "atomic_write",
    "columns_to_rows",
    "dedupe_rows",
    "figure_path",
    "logs_to_wandb",
    "new_run_id",
    "newest_run",
    "process_rank",
    "run_directory",
    "run_of_checkpoint",
    "save_figure",
    "write_csv_atomic",
    "write_csv_new",
    "write_figure",
]

CONFIG_NAME = "config.yaml"
LAST_NAME = "last.ckpt"
FIGURES_NAME = "figures"
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


# ------------------------------------------------------------------------------------------ figures
def figure_path(trainer: Any, name: str) -> Path:
    """``<run>/figures/<name>`` (``name`` with its suffix), its folder created."""
    path = run_directory(trainer) / FIGURES_NAME / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def logs_to_wandb(trainer: Any) -> bool:
    """The run logs to W&B (online or offline): a ``WandbLogger`` and ``WANDB_MODE`` not ``disabled``."""
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(trainer.logger, WandbLogger) and os.environ.get("WANDB_MODE", "").lower() != "disabled"


def write_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure to ``path`` (its folder created) and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_figure(trainer: Any, fig: Figure, name: str, key: str) -> Path:
    """Write ``fig`` to ``<run>/figures/<name>.png``, close it, and log the image to W&B under ``key``
    when the run logs there. Returns the file."""
    path = write_figure(fig, figure_path(trainer, f"{name}.png"))
    if logs_to_wandb(trainer):
        trainer.logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
    return path


# ---------------------------------------------------------------------------------------- files, CSVs
def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a temp file next to ``path``, then rename it to ``path``: a crash never leaves a
    half-written file there. Replaces an existing file (see :func:`write_csv_new` where that must not
    happen). Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def columns_to_rows(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    """{"clip_id": [...], "score": tensor([...])} -> one dict per item; all columns must have one length."""
    lengths = {}
    values: dict[str, list[Any]] = {}
    for name, column in columns.items():
        if isinstance(column, torch.Tensor):
            column = column.detach().float().cpu().reshape(len(column), -1).squeeze(1).tolist()
        values[name] = list(column)
        lengths[name] = len(values[name])
    if len(set(lengths.values())) > 1:
        raise ValueError(f"prediction columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    return [{name: values[name][i] for name in values} for i in range(n)]


def dedupe_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """DistributedSampler pads the last batch by repeating items: keep each identical row once."""
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for row in rows:
        key = tuple(sorted(row.items()))
        if key not in seen:
            seen.add(key)
            unique.append(dict(row))
    return unique


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None) -> None:
    if fieldnames is None:
        names: list[str] = []
        for row in rows:
            names.extend(k for k in row if k not in names)
        fieldnames = names
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_csv_atomic(
    path: Path, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None
) -> Path:
    """Write rows (floats as ``%.6g``; columns in first-seen order unless ``fieldnames`` is given, which
    also writes the header of an empty table) via :func:`atomic_write`. Replaces an existing file."""
    return atomic_write(path, lambda tmp: _write_rows(tmp, rows, fieldnames))


def write_csv_new(path: Path, rows: Sequence[Mapping[str, Any]], max_tries: int = 1000) -> Path:
    """Write a complete CSV under ``path``, or under ``<stem>-1<suffix>``, ``-2``, ... when that name is
    taken, never replacing a file; returns the name used.

    The rows go to a temp file first; ``os.link`` then publishes it only if the name is free (atomic: two
    racing writers cannot both win one name). Where hard links are unsupported, an exclusive create
    (``O_EXCL``) claims the name instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    _write_rows(tmp, rows, None)
    try:
        for n in range(max_tries):
            candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                os.link(tmp, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
            try:  # no hard links here: claim the name exclusively, then fill it
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as out, tmp.open("rb") as src:
                out.write(src.read())
            return candidate
        raise FileExistsError(f"{path} and {max_tries - 1} numbered variants exist; pass a new `output`")
    finally:
        tmp.unlink(missing_ok=True)
