"""Quality pseudo-labels of CRL-UIQA (Guo et al., MICCAI 2024, Sec. 2.1).

For each training image ``x_i`` with embedding ``P(x_i)`` and the ``n`` standard-plane embeddings ``P(g_j)``:

    s_i = -mean(k smallest Euclidean distances ||P(x_i) - P(g_j)||)       (Eq. 1 and the text after it)
    ŝ   = Yeo-Johnson(s)   (λ fitted by maximum likelihood on the training scores; "distribution smoothing")
    q_i = (ŝ_i - min ŝ) / (max ŝ - min ŝ)                                  (Eqs. 2-3)

so ``q`` is exactly in ``[0, 1]`` on the set it was fitted on, 1 = closest to the standard planes. With
``smoothing=False`` the Yeo-Johnson step is skipped (the "pseudo-label only" row of the paper's Table 1).
``k`` is not given in the paper and is a parameter. The Yeo-Johnson transform is applied to ``s`` as it is
(no standardisation first, as in the paper); it is not scale invariant, so λ depends on the embedding scale.

Grouping: the paper builds one data set per plane (4CH, abdomen). With ``groups`` / ``standard_groups``
(e.g. the plane of each image) every group is handled separately: distances only to the standard images of the
same group, and its own λ, min and max (``params["groups"]``).

Storage: :func:`save_pseudo_labels` writes one JSON file (ids, labels, optional raw scores and the parameters
that made them), atomically (temporary file + ``os.replace``); :func:`load_pseudo_labels` checks it and, given
``expected_params``, raises if the stored parameters differ.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.stats
import torch
from torch import nn

__all__ = [
    "FORMAT",
    "PseudoLabels",
    "apply_pseudo_label_params",
    "extract_embeddings",
    "knn_distance_scores",
    "load_pseudo_labels",
    "make_pseudo_labels",
    "minmax",
    "save_pseudo_labels",
    "yeo_johnson",
]

FORMAT = "sonolab.crl_uiqa.pseudo_labels"
_VERSION = 1


# --------------------------------------------------------------------------------------------- scores


def knn_distance_scores(
    embeddings: torch.Tensor, standard: torch.Tensor, k: int, chunk_size: int = 4096
) -> torch.Tensor:
    """``s_i = -mean`` of the ``k`` smallest Euclidean distances from ``embeddings[i]`` to the rows of ``standard``.

    Computed with :func:`torch.cdist` (exact differences, not the matrix-product shortcut) in chunks of
    ``chunk_size`` rows, on the tensors' device, in float32 (float64 inputs stay float64).

    Args:
        embeddings: ``N×D``.
        standard: ``M×D`` standard-plane embeddings (same device).
        k: ``1 <= k <= M``.

    Returns:
        ``N`` scores, higher = closer to the standard planes (all ``<= 0``).
    """
    if embeddings.ndim != 2 or standard.ndim != 2:
        raise ValueError(
            f"embeddings and standard must be 2-D (N×D, M×D), got {tuple(embeddings.shape)} and "
            f"{tuple(standard.shape)}"
        )
    if embeddings.shape[1] != standard.shape[1]:
        raise ValueError(
            f"embedding sizes differ: images have D={embeddings.shape[1]}, standard planes D={standard.shape[1]}"
        )
    m = standard.shape[0]
    if m == 0:
        raise ValueError("the standard-plane set is empty")
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, number of standard planes = {m}], got k={k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = torch.float64 if torch.float64 in (embeddings.dtype, standard.dtype) else torch.float32
    std = standard.to(dtype)
    out = []
    for start in range(0, embeddings.shape[0], chunk_size):
        chunk = embeddings[start : start + chunk_size].to(device=std.device, dtype=dtype)
        d = torch.cdist(chunk, std, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(-d.topk(k, dim=1, largest=False).values.mean(dim=1))
    if not out:
        return torch.empty(0, dtype=dtype, device=std.device)
    return torch.cat(out)


# --------------------------------------------------------------------------------------------- transforms


def _to_numpy(x: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _like(y: np.ndarray, x: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor | np.ndarray:
    """``y`` as the same kind as ``x`` (tensor with ``x``'s device and float dtype, or float64 array)."""
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.as_tensor(y, dtype=dtype, device=x.device)
    return y


def yeo_johnson(
    x: torch.Tensor | np.ndarray, lmbda: float | None = None
) -> tuple[torch.Tensor | np.ndarray, float]:
    """Yeo-Johnson transform with :func:`scipy.stats.yeojohnson` (λ by maximum likelihood unless given).

    Args:
        x: 1-D scores (tensor or array, any sign; must be finite).
        lmbda: apply this λ instead of fitting one (for data scored with a λ fitted elsewhere).

    Returns:
        ``(y, λ)``; ``y`` is the same kind as ``x`` (a tensor keeps its device and float dtype; the computation
        runs in float64 on the CPU).
    """
    a = _to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"yeo_johnson expects a 1-D input, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("yeo_johnson input contains NaN or inf")
    if lmbda is None:
        if a.size < 2 or np.ptp(a) == 0:
            raise ValueError("cannot fit a Yeo-Johnson λ to fewer than 2 distinct values")
        y, lam = scipy.stats.yeojohnson(a)
    else:
        y, lam = scipy.stats.yeojohnson(a, lmbda=float(lmbda)), float(lmbda)
    return _like(np.asarray(y, dtype=np.float64), x), float(lam)


def minmax(
    x: torch.Tensor | np.ndarray,
    lo: float | None = None,
    hi: float | None = None,
    on_constant: Literal["raise", "half"] = "raise",
) -> torch.Tensor | np.ndarray:
    """``(x - lo) / (hi - lo)`` with ``lo, hi = min(x), max(x)`` unless given (then the result may leave ``[0, 1]``).

    On the data that defines ``lo``/``hi`` the result spans exactly ``[0, 1]``. A constant input (``hi == lo``)
    raises ``ValueError`` by default (no quality ordering can be learned from it); ``on_constant="half"``
    returns all ``0.5`` instead. The result is the same kind as ``x`` (computed in float64).
    """
    a = _to_numpy(x)
    if a.size == 0:
        raise ValueError("minmax of an empty input")
    if not np.all(np.isfinite(a)):
        raise ValueError("minmax input contains NaN or inf")
    lo = float(a.min()) if lo is None else float(lo)
    hi = float(a.max()) if hi is None else float(hi)
    if hi == lo:
        if on_constant == "half":
            return _like(np.full_like(a, 0.5), x)
        raise ValueError(
            f"minmax of a constant input (all values {lo!r}): the scores do not separate any images"
        )
    y = (a - lo) / (hi - lo)
    if lo == float(a.min()) and hi == float(a.max()):
        y = np.clip(y, 0.0, 1.0)  # exact [0, 1] despite rounding
    return _like(y, x)


# --------------------------------------------------------------------------------------------- labels


@dataclass
class PseudoLabels:
    """Result of :func:`make_pseudo_labels` (float64 NumPy arrays, in the order of the input embeddings).

    Attributes:
        raw_scores: ``s_i`` (``-mean`` of the ``k`` nearest distances), ``N``.
        labels: ``q_i`` in ``[0, 1]``, ``N``.
        lmbda: the Yeo-Johnson λ; ``None`` without smoothing or when grouped (see ``params["groups"]``).
        k: neighbours averaged.
        params: everything needed to reproduce / check the labels (JSON-serialisable): ``k``, ``smoothing``,
            ``distance``, ``n_images``, ``n_standard``, ``embed_dim``, ``lambda``, ``lo`` and ``hi`` (the min
            and max of the values min-maxed, i.e. of ŝ or of ``s`` without smoothing), ``groups`` (per group
            the same keys) and any ``extra_params`` given.
    """

    raw_scores: np.ndarray
    labels: np.ndarray
    lmbda: float | None
    k: int
    params: dict[str, Any] = field(default_factory=dict)


def _label_one(scores: np.ndarray, smoothing: bool) -> tuple[np.ndarray, dict[str, Any]]:
    if scores.size < 2:
        raise ValueError(f"need at least 2 images to min-max pseudo-labels, got {scores.size}")
    lam = None
    values = scores
    if smoothing:
        values, lam = yeo_johnson(scores)
    labels = minmax(values)
    return labels, {
        "lambda": lam,
        "lo": float(values.min()),
        "hi": float(values.max()),
        "n_images": int(scores.size),
    }


def make_pseudo_labels(
    embeddings: torch.Tensor,
    standard: torch.Tensor,
    k: int,
    smoothing: bool = True,
    *,
    groups: Sequence[str] | None = None,
    standard_groups: Sequence[str] | None = None,
    extra_params: Mapping[str, Any] | None = None,
) -> PseudoLabels:
    """Pseudo-labels ``q`` in ``[0, 1]`` for ``embeddings`` (``N×D``) against ``standard`` (``M×D``).

    Args:
        embeddings, standard, k: see :func:`knn_distance_scores`.
        smoothing: apply the Yeo-Johnson transform before min-max (the paper's "distribution smoothing");
            ``False`` reproduces the "pseudo-label only" ablation row.
        groups, standard_groups: optional group (plane) of each image and each standard image; both or
            neither. Each group is labelled on its own (its own neighbours, λ, min and max); every image group
            needs ``>= k`` standard images and ``>= 2`` images.
        extra_params: merged into ``params`` (e.g. the embedding model's name and checkpoint), so that
            :func:`load_pseudo_labels` can check them later.
    """
    if (groups is None) != (standard_groups is None):
        raise ValueError("give both groups and standard_groups, or neither")
    n, m = int(embeddings.shape[0]), int(standard.shape[0])
    params: dict[str, Any] = {
        "k": int(k),
        "smoothing": bool(smoothing),
        "distance": "euclidean",
        "n_images": n,
        "n_standard": m,
        "embed_dim": int(embeddings.shape[1]) if embeddings.ndim == 2 else None,
    }
    if groups is None:
        raw = _to_numpy(knn_distance_scores(embeddings, standard, k))
        labels, info = _label_one(raw, smoothing)
        params.update(_set_params(info))
        lam = info["lambda"]
    else:
        groups, standard_groups = [str(g) for g in groups], [str(g) for g in standard_groups]
        if len(groups) != n or len(standard_groups) != m:
            raise ValueError(
                f"groups has {len(groups)} entries for {n} images and standard_groups {len(standard_groups)} "
                f"for {m} standard images"
            )
        g_arr, sg_arr = np.asarray(groups), np.asarray(standard_groups)
        missing = sorted(set(groups) - set(standard_groups))
        if missing:
            raise ValueError(f"groups without any standard image: {missing}")
        raw = np.empty(n, dtype=np.float64)
        labels = np.empty(n, dtype=np.float64)
        per_group: dict[str, Any] = {}
        for g in sorted(set(groups)):
            idx = np.flatnonzero(g_arr == g)
            sidx = np.flatnonzero(sg_arr == g)
            try:
                s = _to_numpy(
                    knn_distance_scores(embeddings[torch.as_tensor(idx)], standard[torch.as_tensor(sidx)], k)
                )
                q, info = _label_one(s, smoothing)
            except ValueError as e:
                raise ValueError(f"group {g!r}: {e}") from e
            raw[idx], labels[idx] = s, q
            per_group[g] = {**_set_params(info), "n_standard": len(sidx)}
        params["groups"] = per_group
        lam = None
    if extra_params:
        clash = sorted(set(extra_params) & set(params))
        if clash:
            raise ValueError(f"extra_params may not override {clash}")
        params.update(_jsonable(dict(extra_params)))
    return PseudoLabels(raw_scores=raw, labels=labels, lmbda=lam, k=int(k), params=params)


def _set_params(info: Mapping[str, Any]) -> dict[str, Any]:
    """The per-set entries of ``params``: ``lambda``, ``lo``, ``hi``, ``n_images``."""
    return {"lambda": info["lambda"], "lo": info["lo"], "hi": info["hi"], "n_images": info["n_images"]}


def apply_pseudo_label_params(
    raw_scores: torch.Tensor | np.ndarray, params: Mapping[str, Any], groups: Sequence[str] | None = None
) -> np.ndarray:
    """Label new raw scores ``s`` (e.g. validation images) with the λ, min and max fitted on the training set.

    Not clipped: images further from (closer to) the standard planes than every training image get labels
    below 0 (above 1). ``groups`` is required when ``params`` were made per group.
    """
    s = _to_numpy(raw_scores)

    def one(values: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
        if params["smoothing"]:
            values, _ = yeo_johnson(values, lmbda=p["lambda"])
        return np.asarray(minmax(values, lo=p["lo"], hi=p["hi"]), dtype=np.float64)

    if "groups" not in params:
        return one(s, params)
    if groups is None or len(groups) != s.size:
        raise ValueError("these pseudo-label parameters are per group: pass one group per score")
    out = np.empty_like(s)
    g_arr = np.asarray([str(g) for g in groups])
    for g in set(g_arr.tolist()):
        if g not in params["groups"]:
            raise ValueError(
                f"group {g!r} has no fitted pseudo-label parameters (known: {sorted(params['groups'])})"
            )
        idx = np.flatnonzero(g_arr == g)
        out[idx] = one(s[idx], params["groups"][g])
    return out


# --------------------------------------------------------------------------------------------- embeddings


def extract_embeddings(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    return_ids: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """Embeddings of every image of ``dataloader`` (batches are dicts with ``"image"``), ``N×D`` on the CPU.

    Uses ``model.embed(images)`` if the model has it, else ``model(images)``; runs in ``eval`` mode under
    :func:`torch.inference_mode` and restores the model's previous training mode. Rows follow the loader's
    order: use a non-shuffling loader, or ``return_ids=True`` to also get the batches' ``"image_id"`` lists.
    """
    was_training = model.training
    model.eval()
    fn = model.embed if hasattr(model, "embed") else model
    feats: list[torch.Tensor] = []
    ids: list[str] = []
    try:
        with torch.inference_mode():
            for batch in dataloader:
                if "image" not in batch:
                    raise KeyError(f"batch has no 'image' key (keys: {sorted(batch)})")
                out = fn(batch["image"].to(device))
                if out.ndim != 2:
                    out = out.flatten(1)
                feats.append(out.float().cpu())
                if return_ids:
                    if "image_id" not in batch:
                        raise KeyError("return_ids=True but the batch has no 'image_id'")
                    ids.extend(str(i) for i in batch["image_id"])
    finally:
        model.train(was_training)
    emb = torch.cat(feats) if feats else torch.empty(0, 0)
    return (emb, ids) if return_ids else emb


# --------------------------------------------------------------------------------------------- storage


def _jsonable(obj: Any) -> Any:
    """Plain JSON types (NumPy / torch scalars and arrays to Python numbers and lists, tuples to lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"parameter value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def _param_mismatches(stored: Mapping[str, Any], expected: Mapping[str, Any], path: str = "") -> list[str]:
    out = []
    for key, want in expected.items():
        name = f"{path}{key}"
        if key not in stored:
            out.append(f"{name}: missing in file (expected {want!r})")
            continue
        have = stored[key]
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            out.extend(_param_mismatches(have, want, name + "."))
        elif isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
            if not math.isclose(float(have), want, rel_tol=1e-9, abs_tol=1e-12):
                out.append(f"{name}: file has {have!r}, expected {want!r}")
        elif have != want:
            out.append(f"{name}: file has {have!r}, expected {want!r}")
    return out


def save_pseudo_labels(
    path: str | os.PathLike,
    ids: Sequence[str],
    labels: torch.Tensor | np.ndarray | Sequence[float],
    params: Mapping[str, Any],
    raw_scores: torch.Tensor | np.ndarray | Sequence[float] | None = None,
) -> Path:
    """Write pseudo-labels as one JSON file ``{"format", "version", "params", "ids", "labels"[, "raw_scores"]}``.

    Written atomically: a temporary file in the same folder, flushed and fsync'ed, then ``os.replace`` (a reader
    never sees a half-written file). Floats are stored with Python's round-trip ``repr`` (exact float64).
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    lab = _to_numpy(labels).reshape(-1)
    if len(ids) != lab.size:
        raise ValueError(f"{len(ids)} ids but {lab.size} labels")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate ids: {dup[:10]}")
    if not np.all(np.isfinite(lab)):
        raise ValueError("labels contain NaN or inf")
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": _VERSION,
        "params": _jsonable(dict(params)),
        "ids": ids,
        "labels": lab.tolist(),
    }
    if raw_scores is not None:
        raw = _to_numpy(raw_scores).reshape(-1)
        if raw.size != lab.size:
            raise ValueError(f"{raw.size} raw scores but {lab.size} labels")
        doc["raw_scores"] = raw.tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_pseudo_labels(
    path: str | os.PathLike, expected_params: Mapping[str, Any] | None = None
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Read a file written by :func:`save_pseudo_labels`: ``(ids, labels float64, params)``.

    Args:
        expected_params: every key given must be stored with the same value (floats compared with a relative
            tolerance of 1e-9, nested dicts key by key); keys not given are not checked.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a pseudo-label file, inconsistent content, or parameters differing from
            ``expected_params`` (all differences listed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a pseudo-label file (format must be {FORMAT!r})")
    if doc.get("version") != _VERSION:
        raise ValueError(f"{path}: unsupported version {doc.get('version')!r} (this code reads {_VERSION})")
    ids, labels, params = doc.get("ids"), doc.get("labels"), doc.get("params")
    if not isinstance(ids, list) or not isinstance(labels, list) or not isinstance(params, dict):
        raise ValueError(f"{path}: 'ids' and 'labels' must be lists and 'params' a dict")
    if len(ids) != len(labels):
        raise ValueError(f"{path}: {len(ids)} ids but {len(labels)} labels")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids")
    lab = np.asarray(labels, dtype=np.float64)
    if expected_params is not None:
        problems = _param_mismatches(params, _jsonable(dict(expected_params)))
        if problems:
            raise ValueError(
                f"{path}: pseudo-labels were made with other parameters; recompute them or fix the config:\n  "
                + "\n  ".join(problems)
            )
    return [str(i) for i in ids], lab, params


if __name__ == "__main__":  # the dataset-level step lives in .labelling (it needs the DataModule)
    from lightning_modules.crl_uiqa.labelling import main

    main()
