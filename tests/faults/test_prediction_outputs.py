"""Prediction CSVs: two predicts to one file never overwrite each other silently; the summary line is printed
on a line of its own, not glued to the progress bar."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from callbacks.predictions import CSVPredictionWriter
from lightning_modules.common.runs import write_csv_new


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _fake_trainer() -> SimpleNamespace:
    return SimpleNamespace(
        strategy=SimpleNamespace(broadcast=lambda x: x),
        world_size=1,
        is_global_zero=True,
        progress_bar_callback=None,
    )


def test_existing_file_refuses_to_start(tmp_path) -> None:
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    with pytest.raises(FileExistsError, match=r"p\.csv exists; pass a new `output` or overwrite: true"):
        CSVPredictionWriter(output=str(out)).on_predict_start(_fake_trainer(), None)
    assert out.read_text() == "mine\n"


def test_two_predicts_racing_to_one_csv_keep_both(tmp_path, capsys) -> None:
    """Both runs pass the start check (the file does not exist yet); the first to finish gets the name,
    the second writes to a fresh one and says so. Nothing is overwritten."""
    out = tmp_path / "predictions.csv"
    first, second = CSVPredictionWriter(output=str(out)), CSVPredictionWriter(output=str(out))
    trainer = _fake_trainer()
    first.on_predict_start(trainer, None)
    second.on_predict_start(trainer, None)
    first.write_on_epoch_end(trainer, None, [{"id": ["a", "b"], "score": torch.tensor([0.5, 0.25])}], None)
    second.write_on_epoch_end(trainer, None, [{"id": ["c"], "score": torch.tensor([1.0])}], None)
    assert [r["id"] for r in _rows(out)] == ["a", "b"]
    fresh = tmp_path / "predictions-1.csv"
    assert [r["id"] for r in _rows(fresh)] == ["c"] and second.path == fresh
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"predictions: 2 rows written to {out}"
    assert printed[1].startswith(f"predictions: 1 rows written to {fresh} ({out} was written by another run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions-1.csv", "predictions.csv"]


def test_concurrent_writers_each_get_their_own_file(tmp_path) -> None:
    """Eight threads publish to one name at once: eight complete files, each written once."""
    out = tmp_path / "p.csv"
    names: list[Path] = []
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait()
        names.append(write_csv_new(out, [{"writer": i}] * 50))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8
    writers = sorted(int(_rows(p)[0]["writer"]) for p in names)
    assert writers == list(range(8)) and all(len(_rows(p)) == 50 for p in names)


def test_overwrite_true_replaces(tmp_path) -> None:
    out = tmp_path / "p.csv"
    out.write_text("old\n")
    writer = CSVPredictionWriter(output=str(out), overwrite=True)
    trainer = _fake_trainer()
    writer.on_predict_start(trainer, None)
    writer.write_on_epoch_end(trainer, None, [{"id": ["x"]}], None)
    assert [r["id"] for r in _rows(out)] == ["x"]


def test_without_hard_links_an_exclusive_create_claims_the_name(tmp_path, monkeypatch) -> None:
    import errno
    import os

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    assert write_csv_new(out, [{"a": 1}]) == tmp_path / "p-1.csv"
    assert out.read_text() == "mine\n" and _rows(tmp_path / "p-1.csv") == [{"a": "1"}]


class _Scorer(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def predict_step(self, batch, batch_idx):
        return {"id": [f"i{batch_idx}"], "score": batch[0] * self.w}

    def predict_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(3.0).reshape(3, 1), batch_size=1)


def test_summary_is_on_its_own_line_after_the_progress_bar(tmp_path, capfd) -> None:
    """issue 9 item 10: the message was glued to the end of the bar's line. With a bar on stdout, the
    message must start a line (the bar's line is cleared with \\r, or ended with \\n)."""
    out = tmp_path / "p.csv"
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        accelerator="cpu",
        callbacks=[pl.callbacks.TQDMProgressBar(), CSVPredictionWriter(output=str(out))],
    )
    trainer.predict(_Scorer(), return_predictions=False)
    text = capfd.readouterr().out
    assert "Predicting" in text  # the bar was drawn on this stream
    at = text.index(f"predictions: 3 rows written to {out}")
    assert at == 0 or text[at - 1] in "\r\n", repr(text[max(0, at - 40) : at + 10])
    assert [r["id"] for r in _rows(out)] == ["i0", "i1", "i2"]


def test_later_predict_in_a_run_folder_takes_the_next_free_name(tmp_path) -> None:
    """A second `lightning predict --ckpt_path <run>/checkpoints/X` writes into the same run folder."""
    (tmp_path / "predictions.csv").write_text("first\n")
    trainer = _fake_trainer()
    trainer.default_root_dir = str(tmp_path)
    writer = CSVPredictionWriter()
    writer.on_predict_start(trainer, None)
    assert writer.path == tmp_path / "predictions-1.csv"
    assert (tmp_path / "predictions.csv").read_text() == "first\n"
