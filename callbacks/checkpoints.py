"""Checkpoints a run can be trusted to resume from.

* :class:`BestCheckpoint`: Lightning's ``ModelCheckpoint`` for the monitored best, except that a
  non-finite monitored value (a diverged run) is never kept as a "best" checkpoint.
* :class:`LastCheckpoint`: ``last.ckpt`` = the state at the end of the last completed training epoch,
  written every epoch whatever the monitored metric did, and also when the run is stopped by a signal it
  can catch (SIGTERM from a cluster scheduler, Ctrl+C).
* :class:`RandomState`: the torch / CUDA / numpy / python RNG states in every checkpoint, restored before
  the first resumed epoch, so the resumed run draws the same shuffles, noise and pool choices
  (and, through torch's RNG, the same DataLoader worker seeds) as an uninterrupted one.
* :class:`AtomicCheckpointIO`: every checkpoint file is written beside its final name and renamed into
  place, so a run killed while saving (SIGKILL, out of memory) never leaves a truncated ``last.ckpt``.

The CLI adds ``LastCheckpoint``, ``RandomState`` and ``AtomicCheckpointIO`` to every run; configs list a
``BestCheckpoint`` where a run monitors a validation metric.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_modules.common.runs import LAST_NAME, atomic_write, run_directory

__all__ = ["AtomicCheckpointIO", "BestCheckpoint", "LastCheckpoint", "RandomState"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` streamed into a temporary file in the same folder, then an atomic rename onto the name.

    Lightning's own writer serialises the whole checkpoint into memory before writing it, which doubles a
    run's peak memory at every save (1.5 GB more for DualRepSSL's weights and Adam state); streaming to the
    file does not, and the rename keeps the file whole.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (it writes local files)")
        atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose top-k never admits a NaN or infinite monitored value.

    Lightning ranks a NaN as the worst score but still saves it while the top-k is not full, so the first
    validation of a diverged run became its "best" checkpoint. Here such an epoch is reported and skipped.
    """

    def check_monitor_top_k(self, trainer: Trainer, current: torch.Tensor | None = None) -> bool:
        if current is not None and not math.isfinite(float(current)):
            rank_zero_warn(
                f"epoch {trainer.current_epoch}: {self.monitor} = {float(current)} is not finite; "
                "this epoch is not saved as a best checkpoint"
            )
            return False
        return super().check_monitor_top_k(trainer, current)


class LastCheckpoint(Checkpoint):
    """Writes ``<run>/checkpoints/last.ckpt`` at the end of every training epoch and on SIGTERM / Ctrl+C.

    Being a ``Checkpoint``, Lightning runs it after the LightningModule's own ``on_train_epoch_end`` (the
    GAN steps its LR schedulers there), so the file holds the complete end-of-epoch state. A checkpoint
    written on a signal holds the state after the last finished batch; resuming from it continues that
    epoch mid-way (Lightning skips the batches already done).

    Args:
        dirpath: folder of ``last.ckpt``; None = ``checkpoints/`` in the run's folder.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.last_model_path = ""

    @property
    def state_key(self) -> str:
        return "LastCheckpoint"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(run_directory(trainer) / "checkpoints")

    def _saving(self, trainer: Trainer) -> bool:
        return (
            trainer.state.fn == TrainerFn.FITTING
            and not getattr(trainer, "fast_dev_run", False)
            and not trainer.sanity_checking
        )

    def save(self, trainer: Trainer) -> str:
        assert self.dirpath is not None
        path = os.path.join(self.dirpath, LAST_NAME)
        self.last_model_path = path
        trainer.save_checkpoint(path, weights_only=False)
        return path

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._saving(trainer):
            # reduce the epoch's sync_dist metrics on every DDP process before the save's barrier (as
            # ModelCheckpoint does): rank 0's progress bar has already started that reduction, and a barrier
            # on the other ranks first would pair with it and deadlock
            _ = trainer.callback_metrics
            self.save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException | KeyboardInterrupt) and self._saving(trainer):
            path = self.save(trainer)
            rank_zero_info(
                f"interrupted ({type(exception).__name__}) at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}: state saved to {path}; resume with --ckpt_path {path}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": self.dirpath, "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_model_path = state_dict.get("last_model_path", "")


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _numpy_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple)  # legacy=True: (kind, keys, pos, has_gauss, cached)
    kind, keys, pos, has_gauss, cached = state
    return {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


class RandomState(Callback):
    """Saves the global RNG states in every checkpoint and restores them when a resumed run starts training.

    The states are stored as tensors and plain numbers, so checkpoints stay loadable with
    ``torch.load(weights_only=True)``. They are set when Lightning restores the checkpoint and set again
    after the sanity-check validation a resumed run does first (it draws from them), so the first resumed
    epoch's DataLoader iterator (created right after) draws the shuffle and worker seeds an uninterrupted
    run drew. A checkpoint saved at an epoch end holds the states the next epoch starts from.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RandomState"

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": _python_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
        _set_states(self._pending)

    def on_sanity_check_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the sanity-check validation of a resumed run drew from the RNGs: set them back
        if self._pending is not None:
            _set_states(self._pending)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending = None


def _set_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
