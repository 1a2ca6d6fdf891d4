"""The `lightning` / `sonolab` command: one LightningCLI for every model and DataModule.

Subclass mode for model and data (``class_path`` / ``init_args`` in the YAML) and the omegaconf+ parser
mode, so ``${...}`` interpolation works across stacked configs and overrides. On top of LightningCLI:

* **One run, one identity.** Every run gets an id; its folder is ``<root>/<project>/<id>/`` (``root`` =
  ``--trainer.default_root_dir``, ``runs`` in every config) and its W&B run has the same id. A
  ``--ckpt_path`` inside a run folder (or ``--ckpt_path last``: the newest run of the project under the
  root) continues that run: same folder, same W&B run, and the run's saved ``config.yaml`` as the base
  config, so ``lightning test --ckpt_path runs/<project>/<id>/checkpoints/last.ckpt`` needs no overlays.
  A ``--config`` or flag that changes the model against the saved config is refused, naming the keys.
* **Resumable.** ``last.ckpt`` is the last completed epoch (and the state at a SIGTERM / Ctrl+C), written
  atomically; checkpoints carry the RNG states (``callbacks.checkpoints``).
* **Seeds.** ``seed_everything: true`` draws a real random seed, written into the saved config.
* **NaN stops loudly** (``callbacks.guards.NonFiniteGuard``, configurable as ``nonfinite``).
* ``pretrained: auto`` (the DualRepSSL fine-tuning) pretrains ``model.init_args.pretraining`` on the run's
  data first when it was not pretrained yet (``lightning_modules.common.pretraining``).
* ``zoom_checkpoint: auto`` (VideoQualityGAN and its baselines) pretrains the zoom-in first when no
  pretrained zoom-in for this data exists yet (``lightning_modules.vqa_gan.auto_zoom``).
* **W&B** gets the resolved config as nested keys (``model.init_args.lr``, ...: the keys a sweep samples),
  tags naming the model and the config files, and the run folder. ``--test_after_fit`` tests the best
  checkpoint in the same run and writes ``test_metrics.json`` (what ``lightning_modules.collate`` reads).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import errno
import inspect
import json
import netrc
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks.checkpoints import AtomicCheckpointIO, LastCheckpoint, RandomState
from callbacks.guards import NonFiniteGuard, NonFiniteLossError
from lightning_modules.common.pretraining import resolve_auto_pretrained
from lightning_modules.common.runs import (
    CONFIG_NAME,
    LAST_NAME,
    RunError,
    new_run_id,
    newest_run,
    process_rank,
    run_directory,
    run_of_checkpoint,
)

__all__ = ["RunIdentity", "SonolabCLI", "main", "run", "run_directory"]

WANDB_HOST = "api.wandb.ai"
DEFAULT_ROOT = "runs"
RUN_ID_ENV = "SONOLAB_RUN_ID"
RUN_REFERENCE = "last:"  # a model argument `last:<project>` names the newest run of that project
# the model settings a checkpoint must be re-run with (data shapes are linked into the model)
_SHAPE_KEYS = ("data.init_args.image_size", "data.init_args.channels")
# where a model's initial weights come from: a checkpoint restores every weight, so these may differ
_WEIGHT_SOURCES = (
    "zoom_checkpoint",
    "zoom_pretraining",
    "pretrained",
    "pretraining",
    "pretraining_overlays",
    "pretrained_path",
    "weights_file",
    "weights_path",
    "audio_weights",
    "video_weights",
    "image_weights",
)


def ints_before_floats(function: Callable[..., Any]) -> None:
    """Make the int-or-float parameters of ``function`` parse ``1`` as the int 1 (one batch), not 1.0 (all).

    jsonargparse tries a union's types in the order of the annotation, and Lightning writes the Trainer's
    batch limits as ``Optional[Union[int, float]]``. But ``typing`` (checked on Python 3.11) caches unions by
    equality, which ignores order: when Lightning Fabric's ``Optional[Union[float, int]]`` is still in that
    cache as ``trainer.py`` is imported (as in a plain ``make install``), the Trainer's annotation *is*
    the float-first union, and ``--trainer.limit_train_batches=1`` trained on every batch. The annotations
    are rebuilt with ``int`` first, outside the cache (as jsonargparse itself rebuilds unions); a float
    such as ``0.5`` or ``1.0`` still parses as the float.
    """
    annotations = inspect.unwrap(function).__annotations__
    for name, hint in list(annotations.items()):
        args = get_args(hint)
        if get_origin(hint) is not Union or int not in args or float not in args:
            continue
        if args.index(int) < args.index(float):
            continue
        ordered = [a for a in args if a is not int]
        ordered.insert(ordered.index(float), int)
        annotations[name] = type(hint)(Union, tuple(ordered))


ints_before_floats(Trainer.__init__)


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


@dataclass
class RunIdentity:
    """Who a run is: its id, its folder, and whether it continues an earlier run's folder."""

    run_id: str
    root: Path
    project: str
    continues: bool = False

    @property
    def folder(self) -> Path:
        return self.root / self.project / self.run_id


def _logger_entries(trainer_cfg: Any) -> list[Any]:
    logger = trainer_cfg.get("logger")
    if logger in (None, True, False):
        return []
    return list(logger) if isinstance(logger, list) else [logger]


def _logger_project(cfg: Any) -> str:
    """The project a run files under: the W&B ``project`` (or a CSV/TensorBoard logger's ``name``)."""
    for entry in _logger_entries(cfg.trainer):
        init = entry.get("init_args") or {}
        for key in ("project", "name"):
            if init.get(key):
                return str(init[key])
    model = cfg.get("model")
    class_path = str(model.get("class_path", "")) if model is not None else ""
    return "sonolab-" + (class_path.rsplit(".", 1)[-1].lower() or "run")


def _run_tags(cfg: Any, given: Any) -> list[str]:
    """W&B tags: the model class and the stem of every config file (the overlays that make a variant)."""
    tags = list(given or [])
    model = cfg.get("model")
    if model is not None and model.get("class_path"):
        tags.append(str(model["class_path"]).rsplit(".", 1)[-1])
    for config in cfg.get("config") or []:
        path = Path(str(config))
        tags.append(path.stem if path.parent.name == "configs" else f"{path.parent.name}/{path.stem}")
    return list(dict.fromkeys(t for t in tags if t != CONFIG_NAME.split(".")[0]))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _model_settings(config: dict[str, Any]) -> dict[str, Any]:
    flat = _flatten({"model": config.get("model"), "data": config.get("data")})
    return {
        k: v
        for k, v in flat.items()
        if (k.startswith("model.") and k.rsplit(".", 1)[-1] not in _WEIGHT_SOURCES) or k in _SHAPE_KEYS
    }


@contextlib.contextmanager
def _shared_run_id(run_id: str) -> Iterator[None]:
    """Hand the run id to the processes Lightning launches for DDP (they re-run this command)."""
    previous = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = run_id
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = previous


def _run_named_in(argv: list[str]) -> Path | None:
    """The run folder of a ``--ckpt_path`` given on the command line, if it is a checkpoint of a run."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--ckpt_path" and i + 1 < len(argv) else None
        if arg.startswith("--ckpt_path="):
            value = arg.split("=", 1)[1]
        if value and Path(value).is_file():
            return run_of_checkpoint(value)
    return None


def _with_saved_config(argv: list[str], run_dir: Path) -> list[str]:
    """``argv`` with the run's ``config.yaml`` as the first config, right after the subcommand."""
    at = next((i + 1 for i, a in enumerate(argv) if not a.startswith("-")), 0)
    return [*argv[:at], "--config", str(run_dir / CONFIG_NAME), *argv[at:]]


def check_writable(root: Path) -> None:
    """Stop before anything starts when the run root cannot be written (a read-only mount, a file in the
    way): otherwise the first checkpoint save fails hours in, and W&B quietly logs to a temporary folder."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
        probe = existing / f".sonolab-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunError(
            f"cannot write the run folder under {root} ({error.strerror or error}: {existing}): set "
            "--trainer.default_root_dir to a folder you can write"
        ) from error


def _weights_only(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "weights_only": True if kwargs.get("weights_only") is None else kwargs["weights_only"]}


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config (seed included) into the run's own folder and logs it to the logger.

    Written when the run really starts (``on_*_start``, after every setup succeeded), so a run that fails
    to start leaves no folder and no W&B run behind. A new run writes ``config.yaml``; a run that continues
    an earlier run's folder (resume, test, predict) never replaces it and writes
    ``config-<subcommand>-<id>.yaml`` beside it.
    """

    def __init__(
        self,
        *args: Any,
        identity: RunIdentity | None = None,
        restore: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["save_to_log_dir"] = False
        super().__init__(*args, **kwargs)
        self.identity = identity
        self.restore = restore or {}
        self.saved_to: Path | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Nothing yet: see the class docstring."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.saved_to is not None:
            return
        run_dir = run_directory(trainer)
        config = self.config.clone()
        for key, value in self.restore.items():  # the user's output root and logger, not this run's
            config[key] = copy.deepcopy(value)
        name = self.config_filename
        if self.identity is not None and self.identity.continues:
            name = f"config-{stage}-{new_run_id()}.yaml"
        path = run_dir / name
        if trainer.is_global_zero:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.parser.save(config, str(path), skip_none=False, overwrite=False, multifile=False)
        self.saved_to = path
        if trainer.logger is not None:
            # nested keys as W&B shows and filters them (model.init_args.lr, data.init_args.image_size, ...):
            # the keys a sweep samples are exactly these
            flat = _flatten(yaml.safe_load(self.parser.dump(config, skip_none=False)))
            trainer.logger.log_hyperparams({**flat, "run_dir": str(run_dir)})

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_config(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.training and trainer.state.fn == "validate":
            self.save_config(trainer, pl_module, "validate")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_config(trainer, pl_module, "test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_config(trainer, pl_module, "predict")


class SonolabCLI(LightningCLI):
    """LightningCLI with sonolab's run identity, resume, seeds, shape links and non-finite guard."""

    identity: RunIdentity

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Every DataModule exposes `image_size` and `channels`; every model takes them as
        # `image_size` and `in_channels`. Linking means the frame shape is typed once, in `data`.
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size")
        parser.link_arguments("data.init_args.channels", "model.init_args.in_channels")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_argument(
            "--run_id",
            type=str | None,
            default=None,
            help="Id of a new run (default: a fresh time-stamped id). Refused if a run of this id exists; "
            "to continue a run give --ckpt_path inside its folder (or --ckpt_path last).",
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, test the best checkpoint (else last.ckpt) in the same run and W&B run; the test "
            "metrics are written to test_metrics.json in the run folder (what `python -m "
            "lightning_modules.collate` reads). Ignored by the other subcommands.",
        )

    # ------------------------------------------------------------------------------- parsing
    def parse_arguments(self, parser: Any, args: Any) -> None:
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        # a checkpoint inside a run folder: that run's config.yaml is parsed first (so it may be all there is)
        early_run = _run_named_in(argv)
        if early_run is not None:
            self.config = parser.parse_args(_with_saved_config(argv, early_run))
        else:
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        root = Path(cfg.trainer.get("default_root_dir") or DEFAULT_ROOT).absolute()
        project = _logger_project(cfg)
        ckpt = cfg.get("ckpt_path")
        run_dir: Path | None = None
        if ckpt == "last":
            run_dir = newest_run(root, project)
            if run_dir is None:
                raise RunError(
                    f"--ckpt_path last: no run of project {project!r} under {root} has a "
                    f"checkpoints/{LAST_NAME}; nothing to resume (start without --ckpt_path, or give the "
                    "checkpoint's path)"
                )
            cfg.ckpt_path = str(run_dir / "checkpoints" / LAST_NAME)
        elif ckpt and ckpt not in ("best", "hpc", "registry") and "://" not in str(ckpt):
            if not Path(ckpt).is_file():
                raise RunError(f"--ckpt_path {ckpt}: no such file")
            run_dir = run_of_checkpoint(ckpt)
        if run_dir is not None:
            if run_dir != early_run:  # `last`, or a ckpt_path given inside a --config file
                ckpt_arg = f"--ckpt_path={cfg.ckpt_path}"
                self.config = parser.parse_args(_with_saved_config([*argv, ckpt_arg], run_dir))
            self._check_model_matches(parser, subcommand, run_dir)
            cfg = self.config[subcommand]
            self.identity = RunIdentity(
                run_dir.name, run_dir.parent.parent, run_dir.parent.name, continues=True
            )
        elif process_rank() > 0:
            # one process of a multi-process launch: the run (and seed) of rank 0
            run_id = os.environ.get(RUN_ID_ENV) or cfg.get("run_id")
            if not run_id:
                raise RunError(
                    f"this is process {process_rank()} of a multi-process launch (torchrun, srun) and has no run "
                    "id from rank 0: give --run_id NAME (and --seed_everything=N) so every process joins one run"
                )
            self.identity = RunIdentity(run_id, root, project)
        else:
            run_id = cfg.get("run_id") or new_run_id()
            self.identity = RunIdentity(run_id, root, project)
            if cfg.get("run_id") and self.identity.folder.exists() and subcommand == "fit":
                raise RunError(
                    f"--run_id {run_id}: {self.identity.folder} exists; choose another id, or continue that "
                    f"run with --ckpt_path {self.identity.folder / 'checkpoints' / LAST_NAME}"
                )
        self._resolve_run_references(cfg)
        check_writable(self.identity.root)
        if cfg.get("seed_everything") is True:
            # Lightning's seed_everything() without a seed uses 0; a drawn seed makes repeats independent.
            # Processes Lightning launches for DDP inherit rank 0's seed (PL_GLOBAL_SEED) and must use it.
            if process_rank() > 0:
                if "PL_GLOBAL_SEED" not in os.environ:
                    raise RunError(
                        f"this is process {process_rank()} of a multi-process launch (torchrun, srun): give "
                        "--seed_everything=N so every process draws the same data order"
                    )
                cfg.seed_everything = int(os.environ["PL_GLOBAL_SEED"])
            else:
                cfg.seed_everything = secrets.randbelow(2**31 - 1)
        resolve_auto_pretrained(cfg, self.identity.root, subcommand)

    def _resolve_run_references(self, cfg: Any) -> None:
        """``model.init_args.X: last:<project>`` = the ``last.ckpt`` of the newest run of that project under
        this run's root (e.g. fine-tuning from the latest DualRepSSL pretraining)."""
        init = cfg.model.get("init_args") if cfg.get("model") is not None else None
        if init is None:
            return
        for key, value in dict(init).items():
            if isinstance(value, str) and value.startswith(RUN_REFERENCE):
                project = value[len(RUN_REFERENCE) :]
                run_dir = newest_run(self.identity.root, project)
                if run_dir is None:
                    raise RunError(
                        f"model.init_args.{key}: {value} means the last.ckpt of the newest {project!r} run under "
                        f"{self.identity.root}, and there is none: train that model first, or give a checkpoint path"
                    )
                init[key] = str(run_dir / "checkpoints" / LAST_NAME)

    def _check_model_matches(self, parser: Any, subcommand: str, run_dir: Path) -> None:
        """Refuse model settings that differ from the run's saved config (names every differing key)."""
        saved_path = run_dir / CONFIG_NAME
        saved = yaml.safe_load(saved_path.read_text()) or {}
        final = yaml.safe_load(parser.dump(self.config, skip_none=False))[subcommand]
        before, after = _model_settings(saved), _model_settings(final)
        differ = sorted(
            k
            for k in before.keys() | after.keys()
            if before.get(k) != after.get(k) and not str(after.get(k)).startswith(RUN_REFERENCE)
        )
        if differ:
            lines = "\n".join(
                f"  {k}: the run has {before.get(k)!r}, this command gives {after.get(k)!r}" for k in differ
            )
            raise RunError(
                f"the checkpoint belongs to run {run_dir}, whose saved config.yaml differs from this command "
                f"in the model settings:\n{lines}\nDrop the --config files and flags that change them (the run's "
                "config.yaml is used by itself), or give the same overlays the run was trained with."
            )

    # -------------------------------------------------------------------------- instantiation
    def before_instantiate_classes(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        identity = self.identity
        folder = identity.folder
        # the saved config keeps what the user gave (root, logger), not this run's folder and id
        self.save_config_kwargs["restore"] = {
            "trainer.default_root_dir": cfg.trainer.get("default_root_dir"),
            "trainer.logger": copy.deepcopy(cfg.trainer.get("logger")),
        }
        cfg.trainer.default_root_dir = str(folder)
        for entry in _logger_entries(cfg.trainer):
            class_name = str(entry.get("class_path", "")).rsplit(".", 1)[-1]
            init = entry.get("init_args")
            if init is None:
                init = entry["init_args"] = Namespace()
            if class_name == "WandbLogger":
                init["save_dir"] = str(folder)
                init["id"] = identity.run_id
                init["name"] = init.get("name") or identity.run_id
                init["tags"] = _run_tags(cfg, init.get("tags"))
            elif class_name in ("CSVLogger", "TensorBoardLogger"):
                init["save_dir"] = str(identity.root)
                init["name"] = identity.project
                init["version"] = identity.run_id
        self.save_config_kwargs["identity"] = identity

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_cfg = config["trainer"]
        plugins = trainer_cfg.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            plugins.append(AtomicCheckpointIO())
        if trainer_cfg.get("strategy") == "ddp" and getattr(self.model, "ddp_find_unused_parameters", False):
            # e.g. the GANs: each optimiser step uses a part of the parameters (Lightning's public strategy name)
            kwargs["strategy"] = "ddp_find_unused_parameters_true"
            if process_rank() == 0:
                print(
                    f"{type(self.model).__name__}: --trainer.strategy=ddp runs as ddp_find_unused_parameters_true "
                    "(each of its optimiser steps uses a part of the parameters)",
                    flush=True,
                )
        trainer = super().instantiate_trainer(plugins=plugins, **kwargs)
        identity = getattr(self, "identity", None)  # None when built without a subcommand (run=False)
        for callback in trainer.checkpoint_callbacks:
            if identity is not None and isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(identity.folder / "checkpoints")
        return trainer

    # ------------------------------------------------------------------------------- running
    # `--ckpt_path` files are read with weights_only=True (never unpickling code) unless the user gives
    # --weights_only=false for a checkpoint they trust. The processes a DDP launch starts inherit the run id.
    def fit(self, **kwargs: Any) -> None:
        self._call(self.trainer.fit, kwargs)

    def validate(self, **kwargs: Any) -> None:
        self._call(self.trainer.validate, kwargs)

    def test(self, **kwargs: Any) -> None:
        results = self._call(self.trainer.test, kwargs)
        self._write_test_metrics(results, kwargs.get("ckpt_path"))

    def predict(self, **kwargs: Any) -> None:
        self._call(self.trainer.predict, kwargs)

    def _call(self, method: Any, kwargs: dict[str, Any]) -> Any:
        try:
            with _shared_run_id(self.identity.run_id):
                # In an empty context: jsonargparse leaves its parser (and through it this CLI: model,
                # optimiser, data) in a context variable, and W&B's service thread, started during the
                # run, keeps a copy of the context for the life of the process.
                return contextvars.Context().run(method, **_weights_only(kwargs))
        except BaseException:
            self._forget_failed_start()
            raise

    def _forget_failed_start(self) -> None:
        """A new run that failed before it started (bad data, a missing file: nothing saved yet) leaves no
        folder behind; Lightning creates the W&B run before any setup code can fail."""
        callbacks = getattr(self.trainer, "callbacks", [])  # a Trainer attribute Lightning sets at init
        saver = next((c for c in callbacks if isinstance(c, RunConfigSaver)), None)
        folder = self.identity.folder
        if self.identity.continues or (saver is not None and saver.saved_to is not None):
            return
        if not self.trainer.is_global_zero or not folder.is_dir() or (folder / "checkpoints").exists():
            return
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1)
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):  # the project and root folders, if now empty
            with contextlib.suppress(OSError):
                parent.rmdir()

    def before_fit(self) -> None:
        from lightning_modules.vqa_gan.auto_zoom import resolve_auto_zoom

        resolve_auto_zoom(self)

    def _summary(self, what: str) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        folder = run_directory(trainer)
        if getattr(trainer, "fast_dev_run", False):
            print(
                f"\n{what} (fast_dev_run: a wiring check, no checkpoint saved) run {self.identity.run_id}",
                flush=True,
            )
            return
        lines = [f"\n{what}: run {self.identity.run_id}", f"  folder:      {folder}"]
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
                score = callback.best_model_score
                value = f" ({callback.monitor} = {float(score):.4f})" if score is not None else ""
                lines.append(f"  best:        {callback.best_model_path}{value}")
            elif isinstance(callback, LastCheckpoint) and callback.last_model_path:
                lines.append(f"  last:        {callback.last_model_path}  (resume: --ckpt_path last)")
        wandb_dir = folder / "wandb"
        if wandb_dir.is_dir():
            lines.append(f"  W&B:         {wandb_dir}  (upload: wandb sync {wandb_dir}/offline-run-*)")
        print("\n".join(lines), flush=True)

    def after_fit(self) -> None:
        self._summary("fit finished")
        if self.config[self.subcommand].get("test_after_fit"):
            best = next(
                (
                    c.best_model_path
                    for c in self.trainer.checkpoint_callbacks
                    if isinstance(c, ModelCheckpoint)
                ),
                "",
            )
            last = next(
                (
                    c.last_model_path
                    for c in self.trainer.checkpoint_callbacks
                    if isinstance(c, LastCheckpoint)
                ),
                "",
            )
            ckpt = best or last or None
            results = self._call(
                self.trainer.test, {"model": self.model, "datamodule": self.datamodule, "ckpt_path": ckpt}
            )
            self._write_test_metrics(results, ckpt)
            self._summary("test finished")

    def _write_test_metrics(self, results: Any, ckpt: str | None) -> None:
        """``test_metrics.json`` in the run folder (never replacing an earlier one: ``test_metrics-N.json``)."""
        if not self.trainer.is_global_zero or not results:
            return
        metrics: dict[str, float] = {}
        for result in results:
            metrics.update({k: float(v) for k, v in result.items()})
        folder = run_directory(self.trainer)
        folder.mkdir(parents=True, exist_ok=True)
        path, n = folder / "test_metrics.json", 1
        while path.exists():
            path, n = folder / f"test_metrics-{n}.json", n + 1
        record = {"run_id": self.identity.run_id, "checkpoint": ckpt, "metrics": metrics}
        path.write_text(json.dumps(record, indent=2, allow_nan=True))

    def after_validate(self) -> None:
        self._summary("validate finished")

    def after_test(self) -> None:
        self._summary("test finished")

    def after_predict(self) -> None:
        self._summary("predict finished")


def configure_interpolation() -> None:
    """`${data.init_args.x}` in a config resolves against the FINAL merged config (all --config files and
    command-line overrides), so an overlay or flag that changes a data shape also reaches the model."""
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


def main(args: list[str] | None = None) -> SonolabCLI:
    """Build and run the CLI; returns it (for tests and notebooks). The console scripts call :func:`run`."""
    default_wandb_mode()
    configure_interpolation()
    # Parsed in a copy of the caller's context, which the parser's context variables then leave clean: a
    # process that runs several commands (a study, `pretrained: auto`, tests) frees each one's model.
    return contextvars.copy_context().run(
        SonolabCLI,
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_callback=RunConfigSaver,
        seed_everything_default=True,
        trainer_defaults={"callbacks": [LastCheckpoint(), RandomState()]},
        args=args,
        auto_configure_optimizers=False,
    )


def run() -> None:
    """Entry point of the `lightning` and `sonolab` console scripts. Returns None: the script wrapper passes
    the return value to ``sys.exit``, which would print a returned CLI object and exit with status 1.
    A run that cannot start (status 2) or that diverged (3) ends with its message and no traceback; one
    stopped by SIGTERM ends with status 143."""
    try:
        main()
    except SIGTERMException:
        # Lightning ends a run stopped by SIGTERM as a SystemExit with status 0: a scheduler (and the user)
        # must see that it did not finish (last.ckpt holds its state: resume with --ckpt_path last)
        sys.exit(128 + signal.SIGTERM)
    except (RunError, NonFiniteLossError) as error:
        print(f"\nerror: {error}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(error, RunError) else 3)


if __name__ == "__main__":
    run()
