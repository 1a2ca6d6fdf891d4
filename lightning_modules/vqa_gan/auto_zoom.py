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

from pathlib import Path
from typing import Any

from lightning_modules.common.pretraining import find_config, pretrain_once, run_key, say

from .base import QualityAnomalyModule

__all__ = ["resolve_auto_zoom"]

MARKER = "auto_zoom.json"


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
    configs = [find_config(p, "model.init_args.zoom_pretraining") for p in model.zoom_pretraining]
    settings = {
        "root": str(Path(str(data.get("root"))).resolve()),
        "synthetic": data.get("synthetic"),
        "image_size": data.get("image_size"),
        "channels": data.get("channels"),
        "s_min": model.zoom.s_min,
        "localizer_size": model.zoom.localizer_size,
    }
    overrides = [
        f"--data.init_args.root={data.get('root')}",
        f"--data.init_args.synthetic={data.get('synthetic') or 'null'}",
        f"--data.init_args.image_size={data.get('image_size')}",
        f"--data.init_args.channels={data.get('channels')}",
        f"--model.init_args.s_min={model.zoom.s_min}",
        f"--model.init_args.localizer_size={model.zoom.localizer_size or 'null'}",
    ]
    checkpoint, nested = pretrain_once(
        what="zoom-in",
        setting="zoom_checkpoint",
        configs=configs,
        overrides=overrides,
        root=cli.identity.root,
        run_id=run_key(configs, settings),
        marker=MARKER,
        trainer=cfg.trainer,
        seed=cfg.get("seed_everything"),
    )
    if checkpoint is None:
        model.zoom.load_state_dict(nested.model.zoom.state_dict())
        model.zoom.freeze()
        model.zoom_ready.fill_(True)
        say("zoom-in: fast_dev_run, pretrained on one batch only (a wiring check, not saved)")
        return
    model.zoom_checkpoint = str(checkpoint)
