"""Prediction writers: every model's `predict_step` returns a dict of per-item columns; this writes a CSV.

Under DDP each rank writes its own part and rank 0 merges them, so the file has every item exactly once.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_modules.cli import run_directory


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


def write_csv_atomic(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write to a temp file and rename, so a crash never leaves a half-written CSV at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fieldnames: list[str] = []
    for row in rows:
        fieldnames.extend(k for k in row if k not in fieldnames)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


class CSVPredictionWriter(BasePredictionWriter):
    """Writes the rows returned by `predict_step` to a CSV.

    Args:
        output: CSV path; None = `predictions.csv` in the run's folder.
        overwrite: replace an existing file (otherwise the run stops before predicting, so nothing is lost).
    """

    def __init__(self, output: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite
        self.path: Path | None = None

    def resolve_path(self, trainer: Trainer) -> Path:
        return Path(self.output) if self.output else run_directory(trainer) / "predictions.csv"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path = trainer.strategy.broadcast(self.resolve_path(trainer))
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
            write_csv_atomic(self.path, rows)
            print(f"predictions: {len(rows)} rows written to {self.path}")


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
