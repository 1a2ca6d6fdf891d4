"""Prediction writers: every model's `predict_step` returns a dict of per-item columns; this writes a CSV.

Under DDP each rank writes its own part and rank 0 merges them, so the file has every item exactly once.
An existing file is never overwritten silently: a run refuses to start on one, and a run that finds the
name taken when it finishes (another predict wrote it meanwhile) writes to a fresh name and says so.
"""

from __future__ import annotations

import csv
import errno
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from tqdm import tqdm

from lightning_modules.common.runs import run_directory


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


def _write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fieldnames: list[str] = []
    for row in rows:
        fieldnames.extend(k for k in row if k not in fieldnames)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_csv_atomic(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write to a temp file and rename, so a crash never leaves a half-written CSV at `path`. Replaces
    an existing file: use :func:`write_csv_new` where that must not happen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    _write_rows(tmp, rows)
    os.replace(tmp, path)


def write_csv_new(path: Path, rows: Sequence[Mapping[str, Any]], max_tries: int = 1000) -> Path:
    """Write a complete CSV under ``path``, or under ``<stem>-1<suffix>``, ``-2``, ... when that name is
    taken, never replacing a file; returns the name used.

    The rows go to a temp file first; ``os.link`` then publishes it only if the name is free (atomic: two
    racing writers cannot both win one name). Where hard links are unsupported, an exclusive create
    (``O_EXCL``) claims the name instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    _write_rows(tmp, rows)
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


class CSVPredictionWriter(BasePredictionWriter):
    """Writes the rows returned by `predict_step` to a CSV.

    Args:
        output: CSV path; None = `predictions.csv` in the run's folder (`predictions-N.csv` for a later
            predict in the same run folder).
        overwrite: replace an existing file (otherwise a given `output` that exists stops the run before
            predicting, so nothing is lost).
    """

    def __init__(self, output: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite
        self.path: Path | None = None

    def resolve_path(self, trainer: Trainer) -> Path:
        return Path(self.output) if self.output else run_directory(trainer) / "predictions.csv"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self.resolve_path(trainer)
        if self.output is None and not self.overwrite:
            # a later predict in the same run folder (another checkpoint, other data): the next free name
            n = 1
            while path.exists():
                path, n = path.with_name(f"predictions-{n}.csv"), n + 1
        self.path = trainer.strategy.broadcast(path)
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(
                f"{self.path} exists; pass a new `output` or overwrite: true to the CSVPredictionWriter callback"
            )

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        assert self.path is not None
        rows = [row for batch in predictions for row in columns_to_rows(batch)]
        if trainer.world_size > 1:
            part = self.path.with_name(f".{self.path.name}.rank{trainer.global_rank}")
            write_csv_atomic(part, rows)
            trainer.strategy.barrier("prediction-parts")
            if trainer.is_global_zero:
                merged: list[dict[str, Any]] = []
                for rank in range(trainer.world_size):
                    rank_part = self.path.with_name(f".{self.path.name}.rank{rank}")
                    with rank_part.open(newline="") as handle:
                        merged.extend(csv.DictReader(handle))
                    rank_part.unlink()
                rows = dedupe_rows(merged)
            trainer.strategy.barrier("prediction-merged")
        if trainer.is_global_zero:
            if self.overwrite:
                write_csv_atomic(self.path, rows)
                written = self.path
            else:
                written = write_csv_new(self.path, rows)
            message = f"predictions: {len(rows)} rows written to {written}"
            if written != self.path:
                message += f" ({self.path} was written by another run meanwhile; it is left as it is)"
            self.report(trainer, message)
            self.path = written

    @staticmethod
    def report(trainer: Trainer, message: str) -> None:
        """Print on a line of its own: a plain print would be glued to the end of the progress bar's line,
        so with a bar shown the message goes through tqdm / the bar's own print, which clear it first."""
        bar = getattr(trainer, "progress_bar_callback", None)
        if isinstance(bar, TQDMProgressBar) and bar.is_enabled:
            tqdm.write(message, file=sys.stdout)  # clears the bars on stdout, prints, redraws them
        elif bar is not None and bar.is_enabled:
            bar.print(message)
        else:
            print(message)


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
