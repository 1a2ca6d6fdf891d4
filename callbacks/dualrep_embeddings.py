"""Writes the embeddings that DualRepSSL's ``predict_step`` returns to one ``.npz`` or ``.pt`` file.

Each batch is a dict of per-item columns: lists of str (ids), 1-D tensors (labels) and 2-D tensors
(embeddings, ``B×D``). The file holds one array per column, rows aligned, in prediction order: ``.npz``
(``numpy.load``; strings as a unicode array) or ``.pt`` (``torch.load``; strings as a list). Under DDP
each rank writes its part and rank 0 merges them, keeping each id once (``DistributedSampler`` pads the
last batch with repeated items).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_modules.common.runs import atomic_write, run_directory

__all__ = ["EmbeddingWriter", "load_embeddings", "merge_columns"]

FORMATS = (".npz", ".pt")


def merge_columns(batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate per-batch columns: lists of str -> one list, tensors -> one ``numpy`` array.

    Every column must be in every batch and have one length per batch (the error names the column).
    """
    if not batches:
        return {}
    names = list(batches[0])
    merged: dict[str, list[Any]] = {name: [] for name in names}
    for index, batch in enumerate(batches):
        if list(batch) != names:
            raise ValueError(f"prediction batch {index} has columns {list(batch)}, batch 0 has {names}")
        lengths = {name: len(column) for name, column in batch.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"prediction batch {index}: columns have different lengths {lengths}")
        for name, column in batch.items():
            if isinstance(column, torch.Tensor):
                merged[name].append(column.detach().float().cpu().numpy())
            else:
                merged[name].append(np.asarray([str(v) for v in column]))
    return {name: np.concatenate(parts, axis=0) for name, parts in merged.items()}


def _unique_rows(columns: dict[str, np.ndarray], id_key: str) -> dict[str, np.ndarray]:
    """Keep the first row of each id (the padding repeats of DistributedSampler go)."""
    _, first = np.unique(columns[id_key], return_index=True)
    keep = np.sort(first)
    return {name: values[keep] for name, values in columns.items()}


def _save(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Atomic write (:func:`~lightning_modules.common.runs.atomic_write`) as ``.npz`` or ``.pt``."""

    def write(tmp: Path) -> None:
        if path.suffix == ".npz":
            with tmp.open("wb") as handle:
                np.savez(handle, **columns)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle
        else:
            torch.save(
                {
                    name: (values.tolist() if values.dtype.kind == "U" else torch.from_numpy(values))
                    for name, values in columns.items()
                },
                tmp,
            )

    atomic_write(path, write)


def load_embeddings(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a file written by :class:`EmbeddingWriter` back as ``{column: numpy array}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    if path.suffix == ".pt":
        data = torch.load(path, map_location="cpu", weights_only=True)
        return {k: (np.asarray(v) if isinstance(v, list) else v.numpy()) for k, v in data.items()}
    raise ValueError(f"{path}: embeddings files end in {' or '.join(FORMATS)}")


class EmbeddingWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs and writes them to ``output`` at the end of prediction.

    Args:
        output: ``.npz`` or ``.pt`` path; None = ``embeddings.npz`` in the run's folder.
        id_key: the column holding item ids (duplicates across ranks are merged by it).
        overwrite: replace an existing file (otherwise the run stops before predicting).
    """

    def __init__(self, output: str | None = None, id_key: str = "clip_id", overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        if output is not None and Path(output).suffix not in FORMATS:
            raise ValueError(f"EmbeddingWriter output {output!r} must end in {' or '.join(FORMATS)}")
        self.output = output
        self.id_key = id_key
        self.overwrite = overwrite
        self.path: Path | None = None

    def resolve_path(self, trainer: Trainer) -> Path:
        return Path(self.output) if self.output else run_directory(trainer) / "embeddings.npz"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.path = trainer.strategy.broadcast(self.resolve_path(trainer))
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(
                f"{self.path} exists; pass a new `output` or overwrite: true to the EmbeddingWriter callback"
            )

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        assert self.path is not None
        batches = list(predictions)
        if batches and self.id_key not in batches[0]:
            raise KeyError(f"predict_step output has no id column {self.id_key!r}: {list(batches[0])}")
        columns = merge_columns(batches)
        if trainer.world_size > 1:
            part = self.path.with_name(f".{self.path.name}.rank{trainer.global_rank}.npz")
            _save(part, columns)
            trainer.strategy.barrier("embedding-parts")
            if trainer.is_global_zero:
                parts = []
                for rank in range(trainer.world_size):
                    rank_part = self.path.with_name(f".{self.path.name}.rank{rank}.npz")
                    parts.append(load_embeddings(rank_part))
                    rank_part.unlink()
                parts = [p for p in parts if p]
                columns = (
                    {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}
                )
            trainer.strategy.barrier("embedding-merged")
        if trainer.is_global_zero:
            if columns:
                columns = _unique_rows(columns, self.id_key)
            _save(self.path, columns)
            rows = len(columns[self.id_key]) if columns else 0
            print(f"embeddings: {rows} items ({', '.join(columns)}) written to {self.path}")
