"""Loading local weight files into modules (shared by every model).

Two functions:

* :func:`load_state_dict_file` reads a file with ``torch.load(weights_only=True)`` and returns the flat
  ``{name: tensor}`` state dict inside it, whatever the container: a plain state dict, a dict holding it
  under ``"state_dict"`` (Lightning checkpoints) or ``"model"`` (PANNs and many research repositories).
* :func:`load_weights` (:func:`load_state_dict_into` for a state dict in memory) loads such a file into a module, optionally keeping only the keys under a prefix
  (stripped, e.g. ``"model.encoder."`` to take an encoder out of a Lightning checkpoint) and ignoring keys
  by pattern. Errors name the file and list the missing, unexpected and shape-mismatched keys.

Nothing here downloads anything: every path is a local file. Named pretrained sources (``imagenet``,
``kinetics400``, ``audioset``) are resolved from the standard caches by :mod:`.pretrained`, which hands
their state dicts to :func:`load_state_dict_into`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeGuard

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["format_keys", "load_state_dict_file", "load_state_dict_into", "load_weights"]

# Containers in which checkpoints commonly nest the state dict, tried in this order.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
_SHOW = 10


def format_keys(keys: Sequence[str], limit: int = _SHOW) -> str:
    """``"a, b, c"`` for up to ``limit`` keys, then ``"... (+N more)"``; the total count comes first."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)}: {shown}{more}"


def _is_state_dict(obj: object) -> TypeGuard[Mapping[str, torch.Tensor]]:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file and return the flat state dict it holds.

    Accepted layouts: a plain ``{name: tensor}`` dict; a dict with the state dict under ``"state_dict"``
    (Lightning checkpoint), ``"model"`` (PANNs, many research repos), ``"model_state_dict"`` or
    ``"state_dict_ema"`` (first one present that is a state dict wins). Non-tensor entries of a plain dict
    are an error. The file is read with ``weights_only=True`` on the CPU, memory-mapped (torch's zip format).

    Raises:
        FileNotFoundError: the file does not exist (message names it).
        ValueError: the file holds no recognisable state dict (message names it and lists its top keys).
        RuntimeError: ``torch.load`` refused it (e.g. pickled objects that ``weights_only`` forbids).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        # Memory-mapped where the format allows: only the tensors a caller loads are read, so taking one
        # encoder out of a pretraining checkpoint does not hold its other weights and optimiser state
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise RuntimeError(
            f"could not read weights file {path} with torch.load(weights_only=True): {e}. "
            "If it stores pickled Python objects, re-save only its state dict "
            "(torch.save(ckpt['state_dict'], new_path))."
        ) from e
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            inner = obj.get(key)
            if _is_state_dict(inner):
                return dict(inner)
        top = [str(k) for k in obj]
        raise ValueError(
            f"no state dict found in {path}: expected a {{name: tensor}} dict or one nested under "
            f"{', '.join(repr(k) for k in _NESTED_KEYS)}; top-level keys {format_keys(top)}"
        )
    raise ValueError(f"no state dict found in {path}: it holds a {type(obj).__name__}, not a dict")


def _matches(key: str, patterns: Sequence[str]) -> bool:
    """``True`` if ``key`` matches a glob pattern (fnmatch) or starts with a pattern ending in ``"."``."""
    return any(fnmatch.fnmatchcase(key, p) or (p.endswith(".") and key.startswith(p)) for p in patterns)


def load_weights(
    module: nn.Module,
    path: str | os.PathLike,
    prefix: str | None = None,
    strict: bool = True,
    ignore: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Load the weights in ``path`` into ``module``.

    Args:
        module: the module to fill (in place).
        path: local weights file; see :func:`load_state_dict_file` for accepted layouts.
        prefix: keep only keys starting with it, stripped (e.g. ``"model.encoder."`` reads the encoder out
            of a Lightning checkpoint of a model that stores it as ``self.model.encoder``). ``None``: all
            keys as they are.
        strict: raise if any key is missing, unexpected or has another shape. With ``strict=False`` those
            keys are skipped (shape-mismatched ones keep the module's values and are reported as missing)
            and a warning is logged.
        ignore: glob patterns (``fnmatch``, matched against the key after prefix stripping, e.g.
            ``"fc.*"``); a pattern ending in ``"."`` also matches as a plain prefix. Matching keys are
            dropped on both sides: not loaded from the file and not reported missing in the module.

    Returns:
        ``(missing, unexpected)``: module keys left unloaded, file keys left unused (both after ``ignore``).
        ``num_batches_tracked`` buffers absent from the file are never counted as missing (old checkpoints
        lack them; BatchNorm then keeps its counter).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``prefix`` matches no key of the file.
        RuntimeError: ``strict`` and some key is missing, unexpected or shape-mismatched.
    """
    return load_state_dict_into(
        module,
        load_state_dict_file(path),
        origin=f"weights file {path}",
        prefix=prefix,
        strict=strict,
        ignore=ignore,
    )


def load_state_dict_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    origin: str,
    prefix: str | None = None,
    strict: bool = True,
    ignore: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """:func:`load_weights` for a state dict already in memory (e.g. one a pretrained-weights cache gave).

    ``origin`` names where ``state`` came from in the error messages (``"weights file /x.pth"``,
    ``"ImageNet ResNet-18 (/cache/resnet18-f37072fd.pth)"``). Other arguments and the return value as in
    :func:`load_weights`.
    """
    state = dict(state)
    if prefix:
        stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not stripped:
            raise ValueError(
                f"prefix {prefix!r} matches no key of {origin}; its keys are {format_keys(list(state))}"
            )
        state = stripped
    state = {k: v for k, v in state.items() if not _matches(k, ignore)}

    own = module.state_dict()
    own_keys = [k for k in own if not _matches(k, ignore)]
    missing = [k for k in own_keys if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)} vs module {tuple(own[k].shape)})"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]

    if missing or unexpected or mismatched:
        lines = [
            f"{origin} does not fit {type(module).__name__}"
            + (f" (prefix {prefix!r})" if prefix else "")
            + ":"
        ]
        if missing:
            lines.append(f"  missing keys {format_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys {format_keys(unexpected)}")
        if mismatched:
            lines.append(f"  shape-mismatched keys {format_keys(mismatched)}")
        message = "\n".join(lines)
        if strict:
            raise RuntimeError(message)
        log.warning("%s\n  (strict=False: loading the rest)", message)

    mismatched_keys = [k for k in state if k in own and state[k].shape != own[k].shape]
    loadable = {k: v for k, v in state.items() if k in own and k not in mismatched_keys}
    module.load_state_dict(loadable, strict=False)
    return missing + mismatched_keys, unexpected
