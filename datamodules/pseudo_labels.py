"""CRL-UIQA's quality pseudo-labels as a data product (Guo et al., MICCAI 2024, Sec. 2.1).

For each training image ``x_i`` with embedding ``P(x_i)`` and the standard-plane embeddings ``P(g_j)``:

    s_i = -mean(k smallest Euclidean distances ||P(x_i) - P(g_j)||)       (Eq. 1 and the text after it)
    ŝ   = Yeo-Johnson(s)   (λ fitted by maximum likelihood on the training scores; "distribution smoothing")
    q_i = (ŝ_i - min ŝ) / (max ŝ - min ŝ)                                  (Eqs. 2-3)

so ``q`` is exactly in ``[0, 1]`` on the set it was fitted on, 1 = closest to the standard planes. The two
transforms are a fitted scikit-learn ``PowerTransformer(method="yeo-johnson", standardize=False)`` (no
standardisation first, as in the paper; λ depends on the embedding scale) and ``MinMaxScaler``;
``smoothing=False`` drops the first (Table 1's "pseudo-label only" row). ``k`` is not given in the paper.
Per plane by default (the paper builds one data set per plane): distances only to the standard images of the
same plane, and its own λ, min and max.

The stage (:func:`dataset_pseudo_labels`) runs on an :class:`~datamodules.images.ImageDataModule` with
``data.init_args.pseudo_labels`` set, in ``prepare_data`` (rank 0, on the trainer's device) and is read back
by every process at ``setup``; the batches carry the labels (``pseudo_label``; pairs ``better_pseudo_label``
/ ``worse_pseudo_label``). Steps:

1. the embedding network ``P(.)`` (:mod:`lightning_modules.crl_uiqa.embedding`: seeded random timm backbone,
   ImageNet weights, a plane-classifier or DualRepSSL checkpoint, or a weights file);
2. embeddings of the ``role=train`` images of every split and of the ``role=standard`` set;
3. labels fitted on the **training split**; images of the other splits are labelled with the fitted
   transforms (not clipped) and serve only as diagnostics (how well the pseudo-labels rank the eval pairs);
4. one JSON file keyed by everything that changes the labels (the spec, the embedding's identity and weights
   hash, the dataset's fingerprint, image size, channels, planes), under ``<cache_dir>/crl_uiqa/`` unless
   a file is given; written atomically; a file with the same key is reused as is.

Command line (the same stage, outside training)::

    python -m datamodules.pseudo_labels --root data/synthetic-demo --image-size 64 --k 5

Import graph: the embedding networks are model code, imported lazily from
``lightning_modules.crl_uiqa.embedding`` (plain ``nn.Module`` builders that import nothing from the data
layer); the LightningModules import nothing from here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, PowerTransformer
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lightning_modules.common.runs import atomic_write

if TYPE_CHECKING:
    from datamodules.images import ImageDataModule

log = logging.getLogger("sonolab.data")

__all__ = [
    "FORMAT",
    "DatasetPseudoLabels",
    "PseudoLabelSpec",
    "PseudoLabels",
    "dataset_pseudo_labels",
    "embed_images",
    "knn_distance_scores",
    "load_pseudo_labels",
    "main",
    "make_pseudo_labels",
    "save_pseudo_labels",
]

FORMAT = "sonolab.crl_uiqa.pseudo_labels"
_VERSION = 1
NAMED_EMBEDDINGS = ("random", "imagenet")  # lightning_modules.crl_uiqa.embedding.NAMED


@dataclass(frozen=True)
class PseudoLabelSpec:
    """Everything that defines the pseudo-labels apart from the data (``data.init_args.pseudo_labels``).

    Args:
        embedding: ``"random"`` (a randomly initialised ``backbone``, seeded by ``seed``), ``"imagenet"``
            (torchvision's ImageNet weights of ``backbone`` from the torch.hub cache) or the path of a
            PlaneClassifierModule / DualRepSSL checkpoint or a weights file
            (:mod:`lightning_modules.crl_uiqa.embedding`).
        backbone: timm model name of the embedding network (a checkpoint that stores its backbone name
            overrides it; a DualRepSSL checkpoint is its ResNet-18 image encoder).
        seed: seed of the random initialisation (``embedding="random"`` only).
        k: number of nearest standard planes averaged (the paper does not give it).
        smoothing: Yeo-Johnson before min-max (the paper's "distribution smoothing").
        per_plane: label each plane on its own (its own standard planes, λ, min and max).
        normalize: L2-normalise the embeddings before the distances (not in the paper; off by default).
        batch_size: images per embedding batch.
        zero_init_last: random init only, for timm models that have the option (ResNets): keep timm's zero
            init of each residual branch's last norm layer (off: a random ResNet with its branches at zero
            sees one pixel of a small image).
        file: where the labels are stored (default: ``<cache_dir>/crl_uiqa/pseudo_labels-<key>.json``); an
            existing file must have been made with the same parameters.
    """

    embedding: str = "random"
    backbone: str = "resnet18"
    seed: int = 0
    k: int = 5
    smoothing: bool = True
    per_plane: bool = True
    normalize: bool = False
    batch_size: int = 64
    zero_init_last: bool = False
    file: str | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"data.init_args.pseudo_labels.k must be >= 1, got {self.k}")
        if self.batch_size < 1:
            raise ValueError(f"data.init_args.pseudo_labels.batch_size must be >= 1, got {self.batch_size}")
        if self.embedding not in NAMED_EMBEDDINGS and not Path(self.embedding).is_file():
            raise FileNotFoundError(
                f"data.init_args.pseudo_labels.embedding={self.embedding!r} is neither one of "
                f"{NAMED_EMBEDDINGS} nor an existing weights / checkpoint file"
            )

    def key(self) -> dict[str, Any]:
        """The parameters that change the labels (everything but where they are stored)."""
        out = asdict(self)
        del out["file"]
        return out


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


def _to_numpy(x: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------------------------- labels


def label_transform(scores: np.ndarray, smoothing: bool) -> Pipeline:
    """The fitted ``s -> q`` map of one set: ``[PowerTransformer(yeo-johnson, no standardising)] + MinMaxScaler``."""
    if scores.size < 2:
        raise ValueError(f"need at least 2 images to min-max pseudo-labels, got {scores.size}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("pseudo-label scores contain NaN or inf")
    if np.ptp(scores) == 0:
        raise ValueError(
            f"all {scores.size} scores are {float(scores[0])!r}: the embedding does not separate any images "
            "(no quality ordering can be learned from it)"
        )
    steps: list[tuple[str, Any]] = []
    if smoothing:
        steps.append(("yeo_johnson", PowerTransformer(method="yeo-johnson", standardize=False)))
    steps.append(("minmax", MinMaxScaler()))
    return Pipeline(steps).fit(scores.reshape(-1, 1))


def _transform_params(pipe: Pipeline, n: int) -> dict[str, Any]:
    """The fitted λ, min and max (of ŝ, or of ``s`` without smoothing), recorded with the labels."""
    lam = float(pipe["yeo_johnson"].lambdas_[0]) if "yeo_johnson" in pipe.named_steps else None
    scaler: MinMaxScaler = pipe["minmax"]
    return {
        "lambda": lam,
        "lo": float(scaler.data_min_[0]),
        "hi": float(scaler.data_max_[0]),
        "n_images": int(n),
    }


def _apply(pipe: Pipeline, scores: np.ndarray, fitted: bool) -> np.ndarray:
    q = pipe.transform(scores.reshape(-1, 1))[:, 0]
    return np.clip(q, 0.0, 1.0) if fitted else q  # exact [0, 1] on the fitted set despite rounding


@dataclass
class PseudoLabels:
    """Result of :func:`make_pseudo_labels` (float64 NumPy arrays, in the order of the input embeddings).

    Attributes:
        raw_scores: ``s_i``, ``N``.
        labels: ``q_i`` in ``[0, 1]``, ``N``.
        lmbda: the Yeo-Johnson λ; ``None`` without smoothing or when grouped (see ``params["groups"]``).
        k: neighbours averaged.
        params: JSON-serialisable record: ``k``, ``smoothing``, ``distance``, ``n_images``, ``n_standard``,
            ``embed_dim``, ``lambda``, ``lo``, ``hi`` (or per group under ``groups``) and ``extra_params``.
        transforms: the fitted ``s -> q`` pipelines by group (``None`` when not grouped).
    """

    raw_scores: np.ndarray
    labels: np.ndarray
    lmbda: float | None
    k: int
    params: dict[str, Any] = field(default_factory=dict)
    transforms: dict[str | None, Pipeline] = field(default_factory=dict)

    def apply(self, raw_scores: torch.Tensor | np.ndarray, groups: Sequence[str] | None = None) -> np.ndarray:
        """Label new raw scores (e.g. validation images) with the transforms fitted on the training set.

        Not clipped: images further from (closer to) the standard planes than every training image get
        labels below 0 (above 1). ``groups`` is required when the labels were made per group.
        """
        s = _to_numpy(raw_scores).reshape(-1)
        if None in self.transforms:
            return _apply(self.transforms[None], s, fitted=False)
        if groups is None or len(groups) != s.size:
            raise ValueError("these pseudo-labels are per group: pass one group per score")
        out = np.empty_like(s)
        g_arr = np.asarray([str(g) for g in groups])
        for g in sorted(set(g_arr.tolist())):
            if g not in self.transforms:
                raise ValueError(
                    f"group {g!r} has no fitted pseudo-label transform "
                    f"(known: {sorted(k for k in self.transforms if k is not None)})"
                )
            idx = np.flatnonzero(g_arr == g)
            out[idx] = _apply(self.transforms[g], s[idx], fitted=False)
        return out


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
        smoothing: Yeo-Johnson before min-max (``False``: the "pseudo-label only" ablation row).
        groups, standard_groups: optional group (plane) of each image and each standard image; both or
            neither. Each group is labelled on its own (its own neighbours, λ, min and max); every image group
            needs ``>= k`` standard images and ``>= 2`` images.
        extra_params: merged into ``params`` (e.g. the embedding's identity), so a stored file can be checked.
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
    transforms: dict[str | None, Pipeline] = {}
    if groups is None or standard_groups is None:
        raw = _to_numpy(knn_distance_scores(embeddings, standard, k))
        pipe = label_transform(raw, smoothing)
        labels = _apply(pipe, raw, fitted=True)
        params.update(_transform_params(pipe, raw.size))
        transforms[None] = pipe
        lam = params["lambda"]
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
                pipe = label_transform(s, smoothing)
            except ValueError as e:
                raise ValueError(f"group {g!r}: {e}") from e
            raw[idx], labels[idx] = s, _apply(pipe, s, fitted=True)
            transforms[g] = pipe
            per_group[g] = {**_transform_params(pipe, s.size), "n_standard": len(sidx)}
        params["groups"] = per_group
        lam = None
    if extra_params:
        clash = sorted(set(extra_params) & set(params))
        if clash:
            raise ValueError(f"extra_params may not override {clash}")
        params.update(_jsonable(dict(extra_params)))
    return PseudoLabels(raw, labels, lam, int(k), params, transforms)


# --------------------------------------------------------------------------------------------- embeddings


def embed_images(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "embed images",
) -> tuple[torch.Tensor, list[str]]:
    """``(N×D float32 CPU embeddings, image ids)`` of a loader's batches (dicts with ``image``, ``image_id``).

    Uses ``model.embed(images)`` if the model has it, else ``model(images)``; runs in ``eval`` mode under
    :func:`torch.inference_mode` and restores the model's previous training mode. Rows follow the loader's
    order.
    """
    was_training = model.training
    model.eval().to(device)
    fn: Callable[[torch.Tensor], torch.Tensor] = getattr(model, "embed", model)
    feats: list[torch.Tensor] = []
    ids: list[str] = []
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                if "image" not in batch:
                    raise KeyError(f"batch has no 'image' key (keys: {sorted(batch)})")
                feats.append(fn(batch["image"].to(device)).flatten(1).float().cpu())
                ids.extend(str(i) for i in batch.get("image_id", ()))
    finally:
        model.train(was_training)
    return (torch.cat(feats) if feats else torch.empty(0, 0)), ids


# --------------------------------------------------------------------------------------------- storage


def _jsonable(obj: Any) -> Any:
    """Plain JSON types (NumPy / torch scalars and arrays to Python numbers and lists, tuples to lists)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
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

    Written atomically (:func:`~lightning_modules.common.runs.atomic_write`: a temporary file in the same
    folder, here flushed and fsync'ed, then renamed; a reader never sees a half-written file). Floats are
    stored with Python's round-trip ``repr`` (exact float64).
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

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(doc, f, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


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
                f"{path}: pseudo-labels were made with other parameters; recompute them (delete the file) or "
                "fix data.init_args.pseudo_labels:\n  " + "\n  ".join(problems)
            )
    return [str(i) for i in ids], lab, params


# --------------------------------------------------------------------------------------------- the stage


@dataclass
class DatasetPseudoLabels:
    """Pseudo-labels of a dataset's images, by image id.

    Attributes:
        labels: ``image_id -> q`` for every ``role=train`` image (training split in ``[0, 1]``; other splits
            labelled with the training split's transforms, possibly outside ``[0, 1]``).
        raw_scores: ``image_id -> s`` (``-mean`` of the k nearest distances).
        train_ids: the training split's ids (the images the labels were fitted on).
        params: the stored parameters (spec, embedding identity, dataset, per-plane λ / min / max).
        path: the JSON file holding them.
    """

    labels: dict[str, float]
    raw_scores: dict[str, float]
    train_ids: list[str]
    params: dict[str, Any]
    path: Path

    def lookup(self, image_ids: Sequence[str]) -> torch.Tensor:
        """Labels of ``image_ids`` as a float32 tensor (every id must be known)."""
        missing = [i for i in image_ids if i not in self.labels]
        if missing:
            raise KeyError(f"no pseudo-label for images {missing[:5]} (file {self.path})")
        return torch.tensor([self.labels[i] for i in image_ids], dtype=torch.float32)

    def record(self) -> dict[str, Any]:
        """Which labels these are (file and parameters, without the id list), for checkpoints."""
        return {"file": str(self.path), "params": {k: v for k, v in self.params.items() if k != "train_ids"}}


def _embedding_network(spec: PseudoLabelSpec, in_channels: int) -> Any:
    """``P(.)`` for ``spec`` (model code, imported here so that importing the data layer stays light)."""
    from lightning_modules.crl_uiqa.embedding import build_embedding_model

    return build_embedding_model(spec.embedding, spec.backbone, spec.seed, in_channels, spec.zero_init_last)


def _cache_key(dm: ImageDataModule, spec: PseudoLabelSpec, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters stored with (and checked against) the labels: they name the cache file."""
    return {
        "spec": {**spec.key(), "backbone": identity["backbone"]},
        "embedding_kind": identity["kind"],
        "embedding_sha256": identity["sha256"],
        "dataset": str(Path(dm.root).resolve()),
        "dataset_fingerprint": dm.dataset_fingerprint(),
        "planes": dm.planes,
        "image_size": list(dm.hw),
        "channels": dm.channels,
    }


def dataset_pseudo_labels(
    dm: ImageDataModule,
    spec: PseudoLabelSpec,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> DatasetPseudoLabels:
    """Build (or read back from the cache) the pseudo-labels of ``dm``'s images; see the module docstring.

    Args:
        dm: the image DataModule (its manifests, planes, image size, channels, cache folder, workers).
        spec: the pseudo-label parameters; ``spec.file`` overrides the cache file (an existing one must
            have been made with the same parameters, else a ``ValueError`` lists the differences).
        device: where the embeddings and distances are computed (e.g. the trainer's root device).
        progress: show a progress bar while embedding.
    """
    embedding = _embedding_network(spec, dm.channels)
    key = _cache_key(dm, spec, embedding.identity())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    file = Path(spec.file) if spec.file else dm.cache_dir / "crl_uiqa" / f"pseudo_labels-{digest}.json"
    if file.is_file():
        ids, labels, params = load_pseudo_labels(file, expected_params=key)
        log.info("pseudo-labels read from %s", file)
        return _result(ids, labels, params, file)

    records = dm.records(role="train")
    if not records:
        raise ValueError(f"images.csv of {dm.root} has no role=train images to label")
    std_records = dm.records(role="standard")
    if not std_records:
        raise ValueError(f"images.csv of {dm.root} has no role=standard images: pseudo-labels need them")
    is_train = np.array([r.split == "train" for r in records])
    if is_train.sum() < 2:
        raise ValueError(
            f"the training split of {dm.root} has {int(is_train.sum())} image(s); pseudo-labels need >= 2"
        )

    def loader(recs: Sequence[Any]) -> DataLoader:
        return DataLoader(dm.image_dataset(recs), batch_size=spec.batch_size, num_workers=dm.num_workers)

    emb, ids = embed_images(embedding.net, loader(records), device, progress, "embed images")
    std, _ = embed_images(embedding.net, loader(std_records), device, progress, "embed standard planes")
    if spec.normalize:
        emb, std = nn.functional.normalize(emb, dim=1), nn.functional.normalize(std, dim=1)
    emb, std = emb.to(device), std.to(device)
    planes = [r.plane for r in records]
    std_planes = [r.plane for r in std_records]
    train_idx = np.flatnonzero(is_train)
    made = make_pseudo_labels(
        emb[torch.as_tensor(train_idx, device=emb.device)],
        std,
        spec.k,
        spec.smoothing,
        groups=[planes[i] for i in train_idx] if spec.per_plane else None,
        standard_groups=std_planes if spec.per_plane else None,
        extra_params=key,
    )
    labels = np.empty(len(records))
    raw = np.empty(len(records))
    labels[is_train], raw[is_train] = made.labels, made.raw_scores
    others = np.flatnonzero(~is_train)
    if others.size:
        # Raw scores of the other splits (same neighbours), labelled with the training split's transforms.
        other_planes = [planes[i] for i in others]
        other_raw = _raw_scores(
            emb[torch.as_tensor(others, device=emb.device)], std, other_planes, std_planes, spec
        )
        raw[others] = other_raw
        labels[others] = made.apply(other_raw, other_planes if spec.per_plane else None)
    params = {**made.params, "train_ids": [ids[i] for i in train_idx]}
    save_pseudo_labels(file, ids, labels, params, raw_scores=raw)
    log.info("pseudo-labels of %d images (%d fitted) written to %s", len(ids), len(train_idx), file)
    return _result(ids, labels, params, file, raw)


def _raw_scores(
    emb: torch.Tensor,
    std: torch.Tensor,
    planes: Sequence[str],
    std_planes: Sequence[str],
    spec: PseudoLabelSpec,
) -> np.ndarray:
    """``s`` of each embedding against the standard set (of its own plane when ``spec.per_plane``)."""
    if not spec.per_plane:
        return _to_numpy(knn_distance_scores(emb, std, spec.k))
    out = np.empty(emb.shape[0])
    for plane in sorted(set(planes)):
        idx = [i for i, p in enumerate(planes) if p == plane]
        sidx = [j for j, p in enumerate(std_planes) if p == plane]
        if not sidx:
            raise ValueError(f"plane {plane!r} has no role=standard image to compare with")
        scores = knn_distance_scores(
            emb[torch.as_tensor(idx, device=emb.device)],
            std[torch.as_tensor(sidx, device=std.device)],
            spec.k,
        )
        out[idx] = _to_numpy(scores)
    return out


def _result(
    ids: Sequence[str],
    labels: np.ndarray,
    params: dict[str, Any],
    file: Path,
    raw: np.ndarray | None = None,
) -> DatasetPseudoLabels:
    if raw is None:
        raw = np.asarray(json.loads(file.read_text(encoding="utf-8")).get("raw_scores", [np.nan] * len(ids)))
    return DatasetPseudoLabels(
        labels={i: float(v) for i, v in zip(ids, labels, strict=True)},
        raw_scores={i: float(v) for i, v in zip(ids, raw, strict=True)},
        train_ids=list(params.get("train_ids", [])),
        params=params,
        path=file,
    )


# --------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> DatasetPseudoLabels:
    """``python -m datamodules.pseudo_labels``: build and cache the pseudo-labels of a dataset."""
    from datamodules.images import ImageDataModule

    ap = argparse.ArgumentParser(
        description="CRL-UIQA pseudo-labels: build once, cache with their parameters"
    )
    ap.add_argument("--root", default="data/synthetic-demo", help="dataset folder (docs/data.md)")
    ap.add_argument("--synthetic", default=None, help="generate this synthetic preset if --root is missing")
    ap.add_argument(
        "--image-size", type=int, nargs="+", default=[128], help="H [W] fed to the embedding model"
    )
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--planes", nargs="*", default=None, help="planes to keep (default: all)")
    ap.add_argument(
        "--embedding",
        default="random",
        help="'random', 'imagenet', or a plane-classifier / DualRepSSL checkpoint or a weights file",
    )
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--no-smoothing", action="store_true", help="skip the Yeo-Johnson step")
    ap.add_argument("--pooled", action="store_true", help="all planes together instead of one set per plane")
    ap.add_argument("--normalize", action="store_true", help="L2-normalise embeddings")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--zero-init-last", action="store_true", help="random ResNet: zero-init residual branches"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON file (default: the cache)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = PseudoLabelSpec(
        embedding=args.embedding,
        backbone=args.backbone,
        seed=args.seed,
        k=args.k,
        smoothing=not args.no_smoothing,
        per_plane=not args.pooled,
        normalize=args.normalize,
        batch_size=args.batch_size,
        zero_init_last=args.zero_init_last,
        file=args.out,
    )
    size = args.image_size[0] if len(args.image_size) == 1 else list(args.image_size)
    dm = ImageDataModule(
        root=args.root,
        synthetic=args.synthetic,
        image_size=size,
        channels=args.channels,
        planes=args.planes,
        eval_on="images",
    )
    result = dataset_pseudo_labels(dm, spec, args.device)
    train = np.array([result.labels[i] for i in result.train_ids])
    print(
        f"{len(result.labels)} images labelled ({len(train)} fitted: mean {train.mean():.3f}, "
        f"std {train.std():.3f}) -> {result.path}"
    )
    return result


if __name__ == "__main__":
    main()
