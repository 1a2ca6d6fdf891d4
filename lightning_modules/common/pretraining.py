"""``auto`` weight sources: a model's pretraining stage run once, on the run's own data, and reused.

Two models start from a stage that another config trains: the VQA models' zoom-in
(``zoom_checkpoint: auto``, :mod:`lightning_modules.vqa_gan.auto_zoom`) and the DualRepSSL fine-tuning
(``pretrained: auto`` with ``pretraining: [configs ...]``, :func:`resolve_auto_pretrained`). Both go
through :func:`pretrain_once`: it looks under the run root for a finished pretraining of the same
configs and settings (``<root>/<project>/auto-<key>/``, key = a hash of the config files' text and the
settings that matter; its marker file names the checkpoint and the pretraining's final metrics) and uses it; when there is none it runs ``lightning fit`` with those configs there
first, with its own progress bar, run folder and W&B run. A killed pretraining resumes from its
``last.ckpt``. So a study whose rows share a pretraining (the DualRepSSL tables) trains it once.

With ``--trainer.fast_dev_run`` the pretraining is one batch (a wiring check) and nothing is kept. Under a
multi-process launch (torchrun, SLURM) rank 0 pretrains and the other ranks wait for its marker file.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.common.runs import LAST_NAME, RunError, process_rank

__all__ = ["find_config", "pretrain_once", "resolve_auto_pretrained"]

AUTO = "auto"
CHECKOUT = Path(__file__).resolve().parents[2]
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


def find_config(path: str, key: str) -> Path:
    """A config file by its path: as given (working directory), else inside the sonolab checkout."""
    for candidate in (Path(path), CHECKOUT / path):
        if candidate.is_file():
            return candidate
    raise RunError(
        f"{key} lists {path}, which is neither a file in the working directory nor in the sonolab "
        f"checkout ({CHECKOUT}); give the pretraining config's path"
    )


@contextlib.contextmanager
def _single_process_env() -> Iterator[None]:
    """Hide the multi-process launch variables so the nested pretraining is a plain 1-device run."""
    saved = {k: os.environ.pop(k) for k in _LAUNCH_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def run_key(configs: Sequence[Path], settings: dict[str, Any]) -> str:
    """``auto-<hash>`` of the config files' text and the settings passed to the pretraining."""
    spec = {"configs": [c.read_text() for c in configs], **settings}
    return "auto-" + hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def finished(root: Path, run_id: str, marker: str) -> Path | None:
    """The checkpoint of a finished pretraining ``run_id`` under ``root`` (any project), if there is one."""
    for found in root.glob(f"*/{run_id}/{marker}"):
        checkpoint = Path(json.loads(found.read_text())["checkpoint"])
        if checkpoint.is_file():
            return checkpoint
    return None


def say(message: str) -> None:
    """A line the user must see (rank 0 only; this runs before the Trainer's own rank checks)."""
    if process_rank() == 0:
        print(message, flush=True)


def _finish_wandb() -> None:
    """Close the pretraining's W&B run: Lightning's WandbLogger would otherwise log the next run into it."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def pretrain_once(
    *,
    what: str,
    setting: str,
    configs: Sequence[Path],
    overrides: Sequence[str],
    root: Path,
    run_id: str,
    marker: str,
    trainer: Any,
    seed: Any,
    keep: str = "best",
) -> tuple[Path | None, Any]:
    """The checkpoint of pretraining ``run_id`` (``lightning fit`` of ``configs`` + ``overrides`` under
    ``root``), training it first when it has not finished; returns ``(checkpoint, nested CLI or None)``.

    ``trainer`` is the calling run's trainer config (accelerator, precision and fast_dev_run carry over).
    With fast_dev_run the checkpoint is None and the caller takes the weights from the nested CLI's model.
    ``keep``: ``best`` (the monitored best checkpoint, else the last) or ``last`` (the last completed epoch).
    """
    fast_dev_run = bool(trainer.get("fast_dev_run"))
    found = None if fast_dev_run else finished(root, run_id, marker)
    if found is not None:
        say(f"{what}: using {found} (pretrained earlier for this data by {setting}: auto)")
        return found, None
    if process_rank() != 0:
        while (found := finished(root, run_id, marker)) is None:
            time.sleep(5)
        return found, None
    args = ["fit", *[a for c in configs for a in ("--config", str(c))], *overrides]
    args += [
        f"--trainer.default_root_dir={root}",
        f"--trainer.accelerator={trainer.get('accelerator') or 'auto'}",
        f"--trainer.precision={trainer.get('precision') or '32-true'}",
        "--trainer.devices=1",
        "--trainer.num_nodes=1",
        "--trainer.strategy=auto",
        f"--seed_everything={seed}",
    ]
    if fast_dev_run:
        args.append("--trainer.fast_dev_run=true")
    else:
        resumable = next(iter(root.glob(f"*/{run_id}/checkpoints/{LAST_NAME}")), None)
        args.append(f"--ckpt_path={resumable}" if resumable is not None else f"--run_id={run_id}")
    say(
        f"{what}: {setting} is auto and nothing was pretrained for this data yet, so it is pretrained "
        f"first:\n$ lightning {' '.join(args)}"
    )
    from lightning_modules.cli import main

    with _single_process_env():
        nested = main(args)
    _finish_wandb()
    # the pretraining drew from the global RNGs: reseed, so this run trains as if it had existed before
    if seed is not False and seed is not None:
        seed_everything(int(seed), workers=True, verbose=False)
    if fast_dev_run:
        return None, nested
    folder = nested.identity.folder
    best = next(
        (
            c.best_model_path
            for c in nested.trainer.checkpoint_callbacks
            if isinstance(c, ModelCheckpoint) and c.best_model_path
        ),
        None,
    )
    checkpoint = Path(best) if best and keep == "best" else folder / "checkpoints" / LAST_NAME
    metrics = {k: float(v) for k, v in nested.trainer.callback_metrics.items() if v.numel() == 1}
    record = {"checkpoint": str(checkpoint), "configs": [str(c) for c in configs], "final_metrics": metrics}
    (folder / marker).write_text(json.dumps(record, indent=2))
    say(f"{what}: pretrained, using {checkpoint}")
    return checkpoint, nested


# --------------------------------------------------------------------------- pretrained: auto (fine-tuning)
PRETRAINED_MARKER = "auto_pretrained.json"


def resolve_auto_pretrained(cfg: Any, root: Path, subcommand: str) -> None:
    """``model.init_args.pretrained: auto``: the checkpoint of ``pretraining`` (+ ``pretraining_overlays``)
    trained on this run's data, pretrained first when needed. Runs before the model is built (its encoder
    loads the checkpoint in ``__init__``). With ``--ckpt_path`` the run's checkpoint holds every weight, so
    nothing is pretrained and the encoder starts empty until Lightning restores it."""
    model = cfg.get("model")
    init = model.get("init_args") if model is not None else None
    if not init or str(init.get("pretrained")) != AUTO:
        return
    listed = [*(init.get("pretraining") or []), *(init.get("pretraining_overlays") or [])]
    if not listed:
        raise RunError(
            "model.init_args.pretrained is auto but model.init_args.pretraining lists no config: give the "
            "pretraining configs, e.g. [configs/dualrep.yaml]"
        )
    if cfg.get("ckpt_path"):
        init["pretrained"] = None
        return
    configs = [find_config(str(p), "model.init_args.pretraining") for p in listed]
    data = cfg.data.init_args
    settings = {"root": str(Path(str(data.get("root"))).resolve()), "synthetic": data.get("synthetic")}
    overrides = [
        f"--data.init_args.root={data.get('root')}",
        f"--data.init_args.synthetic={data.get('synthetic') or 'null'}",
    ]
    if subcommand != "fit" and finished(root, run_key(configs, settings), PRETRAINED_MARKER) is None:
        raise RunError(
            f"model.init_args.pretrained is auto and no pretraining of {[str(c) for c in configs]} was "
            f"finished under {root}: run `lightning fit` with this config first, or give --ckpt_path"
        )
    checkpoint, nested = pretrain_once(
        what="pretraining",
        setting="pretrained",
        configs=configs,
        overrides=overrides,
        root=root,
        run_id=run_key(configs, settings),
        marker=PRETRAINED_MARKER,
        trainer=cfg.trainer,
        seed=cfg.get("seed_everything"),
        keep="last",  # the paper fine-tunes the end of the pretraining (no validation-based choice)
    )
    if (
        checkpoint is None
    ):  # fast_dev_run: the one-batch weights, in a file that lives as long as this process
        folder = Path(tempfile.mkdtemp(prefix="sonolab-pretrained-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        checkpoint = folder / "fast_dev_run.ckpt"
        nested.trainer.save_checkpoint(checkpoint)
        say("pretraining: fast_dev_run, pretrained on one batch only (a wiring check, not kept)")
    init["pretrained"] = str(checkpoint)
