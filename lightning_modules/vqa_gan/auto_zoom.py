"""``zoom_checkpoint: auto``: the zoom-in is pretrained on the run's own data before the VQA model trains.

The VQA models crop every clip with a frozen, pretrained zoom-in, so ``lightning fit --config
configs/vqa.yaml`` needs a zoom-in checkpoint for its data and frame size. With ``auto`` the CLI, before
``fit``, looks for one it pretrained earlier for the same data, frame size, crop settings and zoom configs
(``<root>/<zoom project>/auto-<key>/``, key = a hash of those). When there is none it runs the zoom-in
pretraining there first (``lightning fit`` with ``model.init_args.zoom_pretraining``, default
``configs/zoom.yaml``, on the same data root, frame size, accelerator and precision), with its own progress
bar, run folder and W&B run; a killed pretraining resumes from its ``last.ckpt``. Its best checkpoint is
then loaded and frozen.

With ``--trainer.fast_dev_run`` the zoom-in is pretrained for one batch (a wiring check, like the
rest of the run) and handed over in memory; nothing is saved and a later real run pretrains it properly.
Under a multi-process launch (torchrun, SLURM) rank 0 pretrains it and the other ranks wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.common.runs import LAST_NAME, RunError, process_rank

from .base import QualityAnomalyModule

__all__ = ["find_config", "resolve_auto_zoom"]

MARKER = "auto_zoom.json"
_CHECKOUT = Path(__file__).resolve().parents[2]
_LAUNCH_VARS = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_JOB_NAME",
)


def find_config(path: str) -> Path:
    """A config file by its path: as given (working directory), else inside the sonolab checkout."""
    for candidate in (Path(path), _CHECKOUT / path):
        if candidate.is_file():
            return candidate
    raise RunError(
        f"model.init_args.zoom_pretraining lists {path}, which is neither a file in the working directory "
        f"nor in the sonolab checkout ({_CHECKOUT}); give the zoom-in config's path"
    )


@contextlib.contextmanager
def _single_process_env() -> Iterator[None]:
    """Hide the multi-process launch variables so the nested pretraining is a plain 1-device run."""
    saved = {k: os.environ.pop(k) for k in _LAUNCH_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _key(model: QualityAnomalyModule, data: Any, configs: list[Path]) -> str:
    assert model.zoom is not None
    spec = {
        "configs": [c.read_text() for c in configs],
        "root": str(Path(str(data.get("root"))).resolve()),
        "synthetic": data.get("synthetic"),
        "image_size": data.get("image_size"),
        "channels": data.get("channels"),
        "s_min": model.zoom.s_min,
        "localizer_size": model.zoom.localizer_size,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _finished(root: Path, run_id: str) -> Path | None:
    for marker in root.glob(f"*/{run_id}/{MARKER}"):
        checkpoint = Path(json.loads(marker.read_text())["checkpoint"])
        if checkpoint.is_file():
            return checkpoint
    return None


def resolve_auto_zoom(cli: Any) -> None:
    """Before ``fit``: give a VQA model with ``zoom_checkpoint: auto`` its pretrained zoom-in (see module)."""
    model = cli.model
    if (
        not isinstance(model, QualityAnomalyModule)
        or model.zoom is None
        or str(model.zoom_checkpoint) != "auto"
    ):
        return
    cfg = cli.config[cli.subcommand]
    if cfg.get("ckpt_path"):
        return  # a checkpoint of this model holds its zoom-in
    data = cfg.data.init_args
    configs = [find_config(p) for p in model.zoom_pretraining]
    root = cli.identity.root
    run_id = f"auto-{_key(model, data, configs)}"
    fast_dev_run = bool(cfg.trainer.get("fast_dev_run"))
    found = None if fast_dev_run else _finished(root, run_id)
    if found is not None:
        _say(f"zoom-in: using {found} (pretrained earlier for this data by zoom_checkpoint: auto)")
        model.zoom_checkpoint = str(found)
        return
    if process_rank() != 0:
        while (found := _finished(root, run_id)) is None:
            time.sleep(5)
        model.zoom_checkpoint = str(found)
        return
    args = ["fit", *[a for c in configs for a in ("--config", str(c))]]
    args += [
        f"--data.init_args.root={data.get('root')}",
        f"--data.init_args.synthetic={data.get('synthetic') or 'null'}",
        f"--data.init_args.image_size={data.get('image_size')}",
        f"--data.init_args.channels={data.get('channels')}",
        f"--model.init_args.s_min={model.zoom.s_min}",
        f"--model.init_args.localizer_size={model.zoom.localizer_size or 'null'}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.accelerator={cfg.trainer.get('accelerator') or 'auto'}",
        f"--trainer.precision={cfg.trainer.get('precision') or '32-true'}",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        f"--seed_everything={cfg.get('seed_everything')}",
    ]
    if fast_dev_run:
        args.append("--trainer.fast_dev_run=true")
    else:
        resumable = next(iter(root.glob(f"*/{run_id}/checkpoints/{LAST_NAME}")), None)
        args.append(f"--ckpt_path={resumable}" if resumable is not None else f"--run_id={run_id}")
    _say(
        "zoom-in: zoom_checkpoint is auto and no zoom-in was pretrained for this data yet, so it is "
        f"pretrained first:\n$ lightning {' '.join(args)}"
    )
    from lightning_modules.cli import main

    with _single_process_env():
        nested = main(args)
    _finish_wandb()
    # the pretraining drew from the global RNGs: reseed, so this run trains as if the zoom-in had existed
    seed = cfg.get("seed_everything")
    if seed is not False and seed is not None:
        seed_everything(int(seed), workers=True, verbose=False)
    if fast_dev_run:
        model.zoom.load_state_dict(nested.model.zoom.state_dict())
        model.zoom.freeze()
        model.zoom_ready.fill_(True)
        _say("zoom-in: fast_dev_run, pretrained on one batch only (a wiring check, not saved)")
        return
    folder = nested.identity.folder
    best = next(
        (
            c.best_model_path
            for c in nested.trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.best_model_path
        ),
        None,
    )
    checkpoint = Path(best) if best else folder / "checkpoints" / LAST_NAME
    (folder / MARKER).write_text(
        json.dumps({"checkpoint": str(checkpoint), "configs": [str(c) for c in configs]})
    )
    _say(f"zoom-in: pretrained, using {checkpoint}")
    model.zoom_checkpoint = str(checkpoint)


def _say(message: str) -> None:
    """A line the user must see (rank 0 only; this runs before the Trainer's own rank checks)."""
    if process_rank() == 0:
        print(message, flush=True)


def _finish_wandb() -> None:
    """Close the pretraining's W&B run: Lightning's WandbLogger would otherwise log the VQA run into it."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
