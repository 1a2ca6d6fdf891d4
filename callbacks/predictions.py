"""Prediction writers: every model's `predict_step` returns a dict of per-item columns; this writes a CSV.

Under DDP each rank writes its own part and rank 0 merges them, so the file has every item exactly once.
An existing file is never overwritten silently: a run refuses to start on one, and a run that finds the
name taken when it finishes (another predict wrote it meanwhile) writes to a fresh name and says so. The
row and file helpers are :mod:`lightning_modules.common.runs`' (commands such as ``scan`` use them too).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from tqdm import tqdm

from lightning_modules.common.runs import (
    columns_to_rows,
    dedupe_rows,
    run_directory,
    write_csv_atomic,
    write_csv_new,
)

__all__ = ["CSVPredictionWriter"]


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
