"""The one safe way sonolab reads a checkpoint or weights file a user can pass.

A ``.ckpt`` / ``.pt`` file is a pickle: loaded with ``weights_only=False`` it can run any code (a
``__reduce__`` payload). Every sonolab loader goes through here and loads with ``weights_only=True``: only
tensors, containers, numbers, strings and the types in :data:`SAFE_GLOBALS` (what sonolab's own
checkpoints may hold beyond torch's defaults) are rebuilt; anything else is refused with a
:class:`CheckpointError` naming the file and what to do.

* :func:`load_checkpoint` — the checkpoint's dict (``torch.load``).
* :func:`load_module` — ``cls.load_from_checkpoint(..., weights_only=True)``.
* :func:`safe_loading` — a context for Lightning's own loads (``trainer.test(ckpt_path=...,
  weights_only=True)``).
"""

from __future__ import annotations

import os
import pathlib
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

try:  # numpy >= 2 pickles name numpy._core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

__all__ = ["SAFE_GLOBALS", "CheckpointError", "load_checkpoint", "load_module", "safe_loading"]

#: Plain-data types a sonolab checkpoint may hold beyond torch's own allow-list: paths in
#: hyper-parameters, numpy scalars / arrays in callback states. None of them runs code when rebuilt.
SAFE_GLOBALS: list[Any] = [
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
    np.ndarray,
    np.dtype,
    _multiarray._reconstruct,
    _multiarray.scalar,
    *(type(np.dtype(t)) for t in ("bool", "int32", "int64", "float16", "float32", "float64", "U1")),
]

M = TypeVar("M")


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be read safely; the message names the file."""


def _refused(path: str | os.PathLike, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path}: not loaded: it is not a checkpoint sonolab can read safely ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). Checkpoints are read with "
        "torch.load(weights_only=True), which refuses pickled Python objects (they could run code). "
        "Use a checkpoint written by sonolab, or re-save only its tensors: "
        "torch.save({'state_dict': ckpt['state_dict']}, new_path) in a process that trusts the file."
    )


@contextmanager
def safe_loading() -> Iterator[None]:
    """Allow :data:`SAFE_GLOBALS` in every ``weights_only=True`` load inside the block (this thread)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        yield


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with sonolab's allow-list; refusals are :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_loading():
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        raise _refused(path, exc) from None


def load_module(cls: type[M], path: str | os.PathLike, map_location: Any = "cpu", **kwargs: Any) -> M:
    """``cls.load_from_checkpoint(path, weights_only=True, **kwargs)`` with sonolab's allow-list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    load_checkpoint(path)  # refuses an unsafe file with a clear message before Lightning touches it
    with safe_loading():
        return cls.load_from_checkpoint(  # type: ignore[attr-defined]
            path, map_location=map_location, weights_only=True, **kwargs
        )
