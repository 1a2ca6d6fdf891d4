"""The writers every job shares (lightning_modules/common/runs.py): atomic files, CSVs, figures."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from lightning_modules.common.runs import (
    atomic_write,
    figure_path,
    save_figure,
    write_csv_atomic,
    write_figure,
)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.npz"
    path.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz"]  # no temp file left
    assert atomic_write(path, lambda tmp: tmp.write_text("new")) == path and path.read_text() == "new"


def test_csv_with_fixed_columns_writes_the_header_of_an_empty_table(tmp_path: Path) -> None:
    path = write_csv_atomic(tmp_path / "segments.csv", [], fieldnames=["scan_id", "start_s"])
    assert path.read_text().splitlines() == ["scan_id,start_s"]
    write_csv_atomic(path, [{"scan_id": "s1", "start_s": 1 / 3}], fieldnames=["scan_id", "start_s"])
    with path.open(newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"scan_id": "s1", "start_s": "0.333333"}]


def test_figures_go_to_the_run_folder_and_are_closed(tmp_path: Path) -> None:
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), logger=None, global_step=0)
    assert figure_path(trainer, "val_clip0.gif") == tmp_path / "figures" / "val_clip0.gif"
    fig, _ = plt.subplots()
    path = save_figure(trainer, fig, "val_roc", key="val/roc")
    assert path == tmp_path / "figures" / "val_roc.png" and path.stat().st_size > 100
    assert not plt.fignum_exists(fig.number)
    fig, _ = plt.subplots()
    other = write_figure(fig, tmp_path / "scan" / "scan_000.png")
    assert other.is_file() and not plt.fignum_exists(fig.number)
