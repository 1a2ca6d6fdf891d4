"""Command-line arguments the CLI tests share (importable from any test: `pythonpath = ["tests"]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_data(root: Path, batch_size: int = 4) -> list[str]:
    """The tiny synthetic dataset at `root`, as it is (no regeneration), 32×32 frames, no loader workers."""
    return [
        f"--data.init_args.root={root}",
        "--data.init_args.synthetic=null",
        "--data.init_args.image_size=32",
        f"--data.init_args.batch_size={batch_size}",
        "--data.init_args.num_workers=0",
    ]


# The CLSTMUNet config's tiny net for CLI tests: a 2-level U-Net of width 4 (TINY_CLSTM_NET), and with
# it (TINY_CLSTM) every 16th frame a target, for fewer sequences.
TINY_CLSTM_NET = [
    "--model.init_args.base_channels=4",
    "--model.init_args.depth=2",
    "--model.init_args.convlstm_hidden=4",
]
TINY_CLSTM = ["--data.init_args.target_stride=16", *TINY_CLSTM_NET]
# Two context frames instead of the config's six, set on both sides (interpolation is per config file).
SHORT_CLSTM_LAYOUT = ["--data.init_args.num_before=2", "--model.init_args.num_before=2"]


def last_checkpoint(trainer) -> str:
    """The run's last.ckpt (written by the LastCheckpoint callback every run has), or '' when none was saved."""
    from callbacks.checkpoints import LastCheckpoint

    return next(
        (c.last_model_path for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), ""
    )


def run_study(
    sweep_file: Path, only: dict[str, list], extra: list[str], root: Path
) -> dict[str, dict[str, float]]:
    """A paper study as a user runs it: the sweep file (its parameters cut down to ``only``), run locally
    (``python -m lightning_modules.sweep <file> --local -- <extra>``), then read back as ``collate`` does.
    Returns ``{row label: test metrics}`` (the labels of the file's ``sonolab.table.rows``)."""
    import yaml

    from lightning_modules.collate import _label, collect_runs
    from lightning_modules.sweep import main as sweep_main

    spec = yaml.safe_load(Path(sweep_file).read_text())
    for key, values in only.items():
        assert key in spec["parameters"], f"{sweep_file} has no parameter {key}"
        spec["parameters"][key] = {"values": list(values)}
    reduced = root / Path(sweep_file).name
    reduced.parent.mkdir(parents=True, exist_ok=True)
    reduced.write_text(yaml.safe_dump(spec, sort_keys=False))
    results = sweep_main([str(reduced), "--local", "--", *extra, f"--trainer.default_root_dir={root}"])
    assert all(r["status"] == "finished" for r in results), results
    names = {k: dict(v) for k, v in ((spec.get("sonolab") or {}).get("table", {}).get("rows") or {}).items()}
    return {_label(r["params"], names): r["metrics"] for r in collect_runs(root, spec["name"])}


def read_csv(path: str | Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def readme_commands(readme: Path, section: str) -> list[str]:
    """The commands of the first ```bash block under the heading ``section`` of ``readme``."""
    import re

    text = readme.read_text(encoding="utf-8")
    assert section in text, f"{readme} has no {section!r} section"
    block = re.search(r"```bash\n(.*?)```", text.split(section, 1)[1], re.S)
    assert block is not None, f"no ```bash block in {section!r}"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def run_readme_line(line: str) -> Any:
    """One README command in this process, as the shell would run it: ``python -m <module> ARGS`` calls the
    module's ``main(ARGS)`` (which must return 0), ``lightning ARGS`` the CLI (returned, its W&B run
    closed, as a new process would), ``mv A B`` moves the file."""
    import importlib
    import shlex
    import shutil

    argv = shlex.split(line)
    if argv[:2] == ["python", "-m"]:
        rc = importlib.import_module(argv[2]).main(argv[3:])
        assert rc == 0, f"{line!r} exited with {rc}"
        return None
    if argv[0] == "mv" and len(argv) == 3:
        shutil.move(argv[1], argv[2])
        return None
    if argv[0] == "lightning":
        import wandb

        from lightning_modules.cli import main

        cli = main(argv[1:])
        wandb.finish()
        return cli
    raise AssertionError(f"the test does not know how to run {line!r}")
