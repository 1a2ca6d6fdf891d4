"""Studies as W&B sweeps: every sweep file's sampled arguments are real CLI keys that reach the logged config
as nested keys; the local runner runs a grid offline (two runs, two folders, one group, resumable); collate
turns the runs into the paper-layout table."""

from __future__ import annotations

import csv
import json
import os
import struct
from pathlib import Path

import pytest
import yaml
from cli_args import tiny_data

from lightning_modules.cli import _flatten
from lightning_modules.cli import main as cli_main
from lightning_modules.collate import main as collate_main
from lightning_modules.collate import make_table
from lightning_modules.sweep import agent_args, draw_samples, load_sweep, sample_command
from lightning_modules.sweep import main as sweep_main

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


def three_draws(spec: dict) -> list[dict]:
    """Three configurations as an agent would draw them: first, middle and last of a grid; random draws."""
    if spec["method"] == "grid":
        grid = draw_samples(spec)
        picks = sorted({0, len(grid) // 2, len(grid) - 1})
        return [grid[i] for i in picks]
    return draw_samples(spec, count=3, seed=1)


def printed_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit):
        cli_main([*args, "--print_config"])
    return _flatten(yaml.safe_load(capsys.readouterr().out))


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_draws_real_cli_keys(sweep, tiny_dataset, monkeypatch, capsys):
    """The command of each draw (exactly the agent's argument list) parses, and the config the run logs holds
    each drawn value under its nested key (an overlay file: every key the overlay sets)."""
    spec = load_sweep(sweep)
    assert spec["name"] == sweep.stem
    monkeypatch.chdir(REPO)  # sweep commands name configs relative to the checkout, as a user runs them
    draws = three_draws(spec)
    assert len(draws) == min(3, len(draw_samples(spec, count=3 if spec["method"] != "grid" else None)))
    for params in draws:
        command = sample_command(spec, params)
        assert Path(command[0]).name == "lightning" and command[1] in ("fit", "test")
        assert all(a in command for a in agent_args(params))
        logged = printed_config([*command[1:], *tiny_data(tiny_dataset)], capsys)
        for key, value in params.items():
            if key == "config":
                overlay = _flatten(yaml.safe_load((REPO / value).read_text()))
                for overlay_key, overlay_value in overlay.items():
                    assert logged[overlay_key] == overlay_value, f"{value}: {overlay_key}"
            else:
                assert (
                    logged[key] == pytest.approx(value) if isinstance(value, float) else logged[key] == value
                ), key


def _wandb_records(log: Path) -> list[bytes]:
    """The records of a W&B run log (``run-<id>.wandb``): a 7-byte header, then LevelDB-log blocks of 32 KiB,
    each record a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes."""
    data, pos, block, records, partial = log.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        partial = chunk if kind in (1, 2) else partial + chunk
        if kind in (1, 4):
            records.append(partial)
    return records


def _wandb_run_record(run_dir: Path) -> tuple[str, dict]:
    """The group and the config recorded in an offline W&B run's own log (what `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2

    (log,) = run_dir.glob("*.wandb")
    group, config = None, {}
    for data in _wandb_records(log):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group = record.run.run_group
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert group is not None, f"no run record in {log}"
    return group, config


def test_local_grid_runs_offline_groups_resumes_and_collates(tiny_dataset, tmp_path, monkeypatch, capsys):
    root = tmp_path / "runs"
    sweep = tmp_path / "lr_grid.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "lr_grid",
                "method": "grid",
                "parameters": {"model.init_args.lr": {"values": [0.001, 0.002]}},
                "command": [
                    "${env}",
                    "lightning",
                    "fit",
                    "--config",
                    str(REPO / "configs" / "clstm_unet.yaml"),
                    "${args}",
                    "--test_after_fit=true",
                ],
                "sonolab": {
                    "table": {
                        "rows": {"model.init_args.lr": {0.001: "lr 1e-3", 0.002: "lr 2e-3"}},
                        "columns": [["KLD", "test/kld"], ["CC", "test/cc"]],
                    }
                },
            }
        )
    )
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    extra = [
        *tiny_data(tiny_dataset),
        f"--trainer.default_root_dir={root}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
    ]
    results = sweep_main([str(sweep), "--local", "--parallel", "2", "--", *extra])
    assert [r["status"] for r in results] == ["finished", "finished"]
    folders = sorted(root.glob("sonolab-clstm-unet/lr_grid-*"))
    assert len(folders) == 2
    for folder, lr in zip(folders, [0.001, 0.002], strict=True):
        record = json.loads((folder / "sweep.json").read_text())
        assert record["params"] == {"model.init_args.lr": lr} and record["status"] == "finished"
        (wandb_run,) = (folder / "wandb").glob("offline-run-*")
        group, logged = _wandb_run_record(wandb_run)
        assert group == "lr_grid", "the sweep's runs form one W&B group"
        assert logged["model.init_args.lr"] == lr, "the drawn value, as a nested key"
        assert logged["data.init_args.image_size"] == 32 and logged["run_dir"] == str(folder)
        assert "test/kld" in json.loads((folder / "test_metrics.json").read_text())["metrics"]

    again = sweep_main([str(sweep), "--local", "--", *extra])
    assert [r["status"] for r in again] == ["skipped", "skipped"], "finished samples are not run again"

    text = collate_main([str(sweep), "--root", str(root), "--out", str(tmp_path / "tables")])
    assert "| lr 1e-3 | 1 |" in text and "| lr 2e-3 | 1 |" in text
    rows = list(csv.DictReader((tmp_path / "tables" / "lr_grid.csv").open()))
    assert [r["method"] for r in rows] == ["lr 1e-3", "lr 2e-3"] and float(rows[0]["KLD mean"]) >= 0


def test_collate_pools_seeds_into_mean_and_std():
    runs = [
        {"params": {"config": "a.yaml", "seed_everything": s}, "metrics": {"test/auc": v}}
        for s, v in [(0, 0.8), (1, 0.9), (2, 1.0)]
    ] + [{"params": {"config": "b.yaml", "seed_everything": 0}, "metrics": {"test/auc": 0.5}}]
    markdown, rows = make_table(runs, {"rows": {"config": {"a.yaml": "A"}}, "columns": [["AUC", "test/auc"]]})
    assert "| A | 3 | 0.900 ± 0.100 |" in markdown
    assert "| config=b.yaml | 1 | 0.500 |" in markdown
    assert rows[0]["AUC mean"] == pytest.approx(0.9) and rows[0]["AUC std"] == pytest.approx(0.1)


def test_collate_closes_with_the_reference_row_every_run_measured():
    """The saliency tables end with the centre-bias map: one row pooled over every run's own measurement."""
    runs = [
        {"params": {"config": c}, "metrics": {"test/kld": k, "test/centre_bias/kld": b}}
        for c, k, b in [("a.yaml", 1.0, 2.0), ("b.yaml", 0.5, 2.0)]
    ]
    table = {
        "rows": {"config": {"a.yaml": "A", "b.yaml": "B"}},
        "columns": [["KLD", "test/kld"]],
        "reference": {"label": "centre bias", "prefix": "test/centre_bias/"},
    }
    markdown, rows = make_table(runs, table)
    assert markdown.splitlines()[2:] == [
        "| A | 1 | 1.000 |",
        "| B | 1 | 0.500 |",
        "| centre bias | 2 | 2.000 ± 0.000 |",
    ]
    assert rows[-1] == {"method": "centre bias", "n": 2, "KLD mean": 2.0, "KLD std": 0.0}


def test_sweep_file_errors_name_what_is_missing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sideways\ncommand: [lightning, fit]\n")
    with pytest.raises(SystemExit, match=r"method must be grid, random or bayes.*parameters.*\$\{args\}"):
        load_sweep(bad)


def test_random_draws_are_seeded_and_in_range():
    spec = load_sweep(REPO / "configs" / "sweeps" / "crl_weights.yaml")
    first, second = draw_samples(spec, count=5, seed=3), draw_samples(spec, count=5, seed=3)
    assert first == second
    for params in first:
        assert 0.01 <= params["model.init_args.alpha"] <= 0.5
        assert params["data.init_args.pseudo_labels.k"] in (3, 4, 5, 6, 8)
    assert agent_args({"a.b": True, "c": [1, 2]}) == ["--a.b=true", "--c=[1, 2]"]
    assert os.path.basename(sample_command(spec, first[0])[0]) == "lightning"
