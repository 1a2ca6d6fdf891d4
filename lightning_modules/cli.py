"""The `lightning` / `sonolab` command: one LightningCLI for every model and DataModule.

Subclass mode for model and data (``class_path`` / ``init_args`` in the YAML), the omegaconf+ parser mode
so ``${...}`` interpolation works across stacked configs and overrides, the full config saved next to every run's checkpoints,
and the random seed written back into that saved config so a run can be repeated exactly.
"""

from __future__ import annotations

import netrc
import os
import time
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

WANDB_HOST = "api.wandb.ai"


def has_wandb_key() -> bool:
    """True when the user has a W&B key (env var or ~/.netrc), so runs may sync online."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not netrc_path.is_file():
        return False
    try:
        return netrc.netrc(str(netrc_path)).authenticators(WANDB_HOST) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def default_wandb_mode() -> None:
    """Log offline unless the user chose a mode or has a key: runs then sync later with `wandb sync`."""
    if "WANDB_MODE" not in os.environ and not has_wandb_key():
        os.environ["WANDB_MODE"] = "offline"


def run_directory(trainer: Trainer) -> Path:
    """The folder of this run: where its checkpoints go (``save_dir/name/version``) for any logger."""
    logger = trainer.logger
    if logger is None:
        return Path(trainer.default_root_dir)
    save_dir = logger.save_dir or trainer.default_root_dir
    name = logger.name or ""
    version = logger.version
    if version is None or version == "":
        version = time.strftime("run-%Y%m%d-%H%M%S")
    elif isinstance(version, int):
        version = f"version_{version}"
    return Path(save_dir) / str(name) / str(version)


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config (seed included) into the run's own folder and logs it to the logger.

    Lightning's default writes ``config.yaml`` to ``trainer.log_dir``, which for W&B is the shared
    ``save_dir`` and so collides between runs; a per-run folder never overwrites an earlier run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = run_directory(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / self.config_filename
        self.parser.save(self.config, str(config_path), skip_none=False, overwrite=True, multifile=False)
        if trainer.logger is not None:
            dumped = self.parser.dump(self.config, skip_none=False, format="json")
            trainer.logger.log_hyperparams({"cli_config": dumped, "run_dir": str(run_dir)})


class SonolabCLI(LightningCLI):
    """LightningCLI with the shape links every sonolab model and DataModule share."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Every DataModule exposes `image_size` and `channels`; every model takes them as
        # `image_size` and `in_channels`. Linking means the frame shape is typed once, in `data`.
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("data.init_args.channels", "model.init_args.in_channels")


def configure_interpolation() -> None:
    """`${data.init_args.x}` in a config resolves against the FINAL merged config (all --config files and
    command-line overrides), so an overlay or flag that changes a data shape also reaches the model."""
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


def main(args: list[str] | None = None) -> SonolabCLI:
    """Build and run the CLI; returns it (for tests and notebooks). The console scripts call :func:`run`."""
    default_wandb_mode()
    configure_interpolation()
    return SonolabCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_callback=RunConfigSaver,
        seed_everything_default=True,
        args=args,
        auto_configure_optimizers=False,
    )


def run() -> None:
    """Entry point of the `lightning` and `sonolab` console scripts. Returns None: the script wrapper passes
    the return value to ``sys.exit``, which would print a returned CLI object and exit with status 1."""
    main()


if __name__ == "__main__":
    run()
