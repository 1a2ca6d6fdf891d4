"""The pseudo-label step of CRL-UIQA on a dataset: embed, score, smooth, normalise, cache.

:mod:`.pseudo_labels` holds the arithmetic (k-NN distances, Yeo-Johnson, min-max, storage); this module runs it
on an :class:`~datamodules.images.ImageDataModule`:

1. the embedding model ``P(.)`` (:func:`build_embedding_model`): a timm backbone with random weights (seeded),
   a local weights file, or a checkpoint of :class:`~lightning_modules.crl_uiqa.module.PlaneClassifierModule`
   (its backbone name is read from the checkpoint's hyper-parameters);
2. embeddings of the ``role=train`` images of every split and of the ``role=standard`` set, in batches on the
   given device (progress bar);
3. labels fitted on the **training split** (Eqs. 1-3: its own λ, min and max; per plane by default, as the
   paper builds one data set per plane); images of the other splits are labelled with the fitted parameters
   (:func:`~.pseudo_labels.apply_pseudo_label_params`, not clipped) and serve only as diagnostics (how well
   the pseudo-labels themselves rank the evaluation pairs);
4. one JSON file (:func:`~.pseudo_labels.save_pseudo_labels`) keyed by every parameter that changes the
   labels (the spec, the dataset's fingerprint, the image size, the weights file's content hash), under
   ``$SONOLAB_CACHE/crl_uiqa/`` unless a path is given. A file with the same key is reused as is.

Command line (the same step, outside training)::

    python -m lightning_modules.crl_uiqa.pseudo_labels --root data/synthetic-demo --image-size 64 --k 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from datamodules.base import default_cache_dir
from datamodules.images import ImageDataModule, ImageDataset
from lightning_modules.crl_uiqa.nets import build_backbone
from lightning_modules.crl_uiqa.pseudo_labels import (
    apply_pseudo_label_params,
    knn_distance_scores,
    load_pseudo_labels,
    make_pseudo_labels,
    save_pseudo_labels,
)

log = logging.getLogger("sonolab.crl_uiqa")

__all__ = [
    "DatasetPseudoLabels",
    "PseudoLabelSpec",
    "build_embedding_model",
    "dataset_pseudo_labels",
    "embed_images",
    "main",
]


@dataclass(frozen=True)
class PseudoLabelSpec:
    """Everything that defines the pseudo-labels apart from the data.

    Args:
        embedding: ``"random"`` (a randomly initialised ``backbone``, seeded by ``seed``) or the path of a local
            weights file / PlaneClassifierModule checkpoint.
        backbone: timm model name of the embedding network (a PlaneClassifierModule checkpoint overrides it
            with the name stored in its hyper-parameters).
        seed: seed of the random initialisation (``embedding="random"`` only).
        k: number of nearest standard planes averaged (the paper does not give it).
        smoothing: Yeo-Johnson before min-max (the paper's "distribution smoothing").
        per_plane: label each plane on its own (its own standard planes, λ, min and max).
        normalize: L2-normalise the embeddings before the distances (not in the paper; off by default).
        batch_size: images per embedding batch.
        zero_init_last: random init only, for timm models that have the option (ResNets): keep timm's
            zero init of each residual branch's last norm layer. Off by default: with the branches at zero a
            random ResNet is a chain of strided 1×1 skip convolutions that, on small images, sees one pixel
            (every image of a 32-px set gets the same embedding).
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

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"pseudo-label k must be >= 1, got {self.k}")
        if self.batch_size < 1:
            raise ValueError(f"pseudo-label batch_size must be >= 1, got {self.batch_size}")
        if self.embedding != "random" and not Path(self.embedding).is_file():
            raise FileNotFoundError(
                f"pseudo-label embedding model {self.embedding!r} is neither 'random' nor an existing file"
            )


@dataclass
class DatasetPseudoLabels:
    """Pseudo-labels of a dataset's images, by image id.

    Attributes:
        labels: ``image_id -> q`` for every ``role=train`` image (training split in ``[0, 1]``; other splits
            labelled with the training split's parameters, possibly outside ``[0, 1]``).
        raw_scores: ``image_id -> s`` (``-mean`` of the k nearest distances).
        train_ids: the training split's ids (the images the labels were fitted on).
        params: the stored parameters (spec, dataset, per-plane λ / min / max).
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


# --------------------------------------------------------------------------------------------- embedding model


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checkpoint_backbone(path: str | os.PathLike) -> str | None:
    """The backbone name stored in a Lightning checkpoint's hyper-parameters, if any."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file gets the same clear message
        raise ValueError(f"cannot read embedding weights {path}: {e}") from e
    hp = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    name = hp.get("backbone") if isinstance(hp, Mapping) else None
    return str(name) if name else None


def build_embedding_model(spec: PseudoLabelSpec, in_channels: int) -> tuple[nn.Module, str]:
    """The embedding network ``P(.)`` (``images -> B×D``) and the backbone name actually used.

    A random model is initialised under ``torch.manual_seed(spec.seed)`` inside a forked RNG, so the global
    random state of the run is not touched and every process builds the same network.
    """
    if spec.embedding == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            try:
                model, _ = build_backbone(spec.backbone, in_channels, zero_init_last=spec.zero_init_last)
            except TypeError:  # a model without residual branches to zero-initialise
                torch.manual_seed(spec.seed)
                model, _ = build_backbone(spec.backbone, in_channels)
        return model, spec.backbone
    name = _checkpoint_backbone(spec.embedding) or spec.backbone
    try:
        model, _ = build_backbone(name, in_channels, spec.embedding)
    except (ValueError, RuntimeError) as e:
        raise ValueError(
            f"embedding weights {spec.embedding} do not fit a {name} backbone with {in_channels} input "
            f"channel(s): {e}"
        ) from e
    return model, name


def embed_images(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    desc: str,
    progress: bool = True,
) -> tuple[torch.Tensor, list[str]]:
    """``(N×D float32 CPU embeddings, image ids)`` of a loader's batches, in ``eval`` mode without gradients."""
    was_training = model.training
    model.eval().to(device)
    feats, ids = [], []
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                out = model(batch["image"].to(device))
                feats.append(out.flatten(1).float().cpu())
                ids.extend(str(i) for i in batch["image_id"])
    finally:
        model.train(was_training)
    return (torch.cat(feats) if feats else torch.empty(0, 0)), ids


# --------------------------------------------------------------------------------------------- the step


def _dataset_key(dm: ImageDataModule, spec: PseudoLabelSpec, backbone: str) -> dict[str, Any]:
    """The parameters stored with (and checked against) the labels: they identify the cache file."""
    return {
        "spec": {**asdict(spec), "backbone": backbone},
        "embedding_sha256": None if spec.embedding == "random" else _file_sha256(spec.embedding),
        "dataset": str(Path(dm.root).resolve()),
        "dataset_fingerprint": dm.dataset_fingerprint(),
        "planes": dm.planes,
        "image_size": list(dm.hw),
        "channels": dm.channels,
    }


def _loader(dm: ImageDataModule, dataset: ImageDataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=dm.num_workers)


def dataset_pseudo_labels(
    dm: ImageDataModule,
    spec: PseudoLabelSpec,
    device: torch.device | str = "cpu",
    path: str | os.PathLike | None = None,
    progress: bool = True,
) -> DatasetPseudoLabels:
    """Build (or read back from the cache) the pseudo-labels of ``dm``'s images; see the module docstring.

    Args:
        dm: an image DataModule (``setup`` is called if it was not).
        spec: the pseudo-label parameters.
        device: where the embeddings and distances are computed (e.g. the trainer's root device).
        path: the JSON file; default ``<cache>/crl_uiqa/pseudo_labels-<key>.json``. An existing file is read
            back and must have been made with the same parameters (else a ``ValueError`` lists the
            differences).
        progress: show a progress bar while embedding.
    """
    if dm.standard_dataset is None:
        dm.setup("fit")
    model, backbone = build_embedding_model(spec, dm.channels)
    key = _dataset_key(dm, spec, backbone)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    file = Path(path) if path else default_cache_dir() / "crl_uiqa" / f"pseudo_labels-{digest}.json"
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
    train = [r for r in records if r.split == "train"]
    if len(train) < 2:
        raise ValueError(
            f"the training split of {dm.root} has {len(train)} image(s); pseudo-labels need >= 2"
        )
    batch = spec.batch_size
    emb, ids = embed_images(
        model,
        _loader(dm, ImageDataset(records, dm.classes, dm.channels, dm.hw), batch),
        device,
        "embed images",
        progress,
    )
    std, _ = embed_images(
        model,
        _loader(dm, ImageDataset(std_records, dm.classes, dm.channels, dm.hw), batch),
        device,
        "embed standard planes",
        progress,
    )
    if spec.normalize:
        emb, std = nn.functional.normalize(emb, dim=1), nn.functional.normalize(std, dim=1)
    emb, std = emb.to(device), std.to(device)
    is_train = np.array([r.split == "train" for r in records])
    planes = [r.plane for r in records]
    std_planes = [r.plane for r in std_records]
    train_idx = torch.as_tensor(np.flatnonzero(is_train), device=emb.device)
    made = make_pseudo_labels(
        emb[train_idx],
        std,
        spec.k,
        spec.smoothing,
        groups=[p for p, t in zip(planes, is_train) if t] if spec.per_plane else None,
        standard_groups=std_planes if spec.per_plane else None,
        extra_params=key,
    )
    labels = np.empty(len(records))
    raw = np.empty(len(records))
    labels[is_train], raw[is_train] = made.labels, made.raw_scores
    others = np.flatnonzero(~is_train)
    if others.size:
        # Raw scores of the other splits (same neighbours), labelled with the training split's λ/min/max.
        other_planes = [planes[i] for i in others]
        other_raw = _raw_scores(
            emb[torch.as_tensor(others, device=emb.device)], std, other_planes, std_planes, spec
        )
        raw[others] = other_raw
        labels[others] = apply_pseudo_label_params(
            other_raw, made.params, other_planes if spec.per_plane else None
        )
    params = {**made.params, "train_ids": [ids[i] for i in np.flatnonzero(is_train)]}
    save_pseudo_labels(file, ids, labels, params, raw_scores=raw)
    log.info("pseudo-labels of %d images (%d fitted) written to %s", len(ids), int(is_train.sum()), file)
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
        return knn_distance_scores(emb, std, spec.k).double().cpu().numpy()
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
        out[idx] = scores.double().cpu().numpy()
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
        labels={i: float(v) for i, v in zip(ids, labels)},
        raw_scores={i: float(v) for i, v in zip(ids, raw)},
        train_ids=list(params.get("train_ids", [])),
        params=params,
        path=file,
    )


# --------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> DatasetPseudoLabels:
    """``python -m lightning_modules.crl_uiqa.pseudo_labels``: build and cache the pseudo-labels of a dataset."""
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
    ap.add_argument("--embedding", default="random", help="'random' or a local weights/checkpoint file")
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
    size = args.image_size[0] if len(args.image_size) == 1 else list(args.image_size)
    dm = ImageDataModule(
        root=args.root,
        synthetic=args.synthetic,
        image_size=size,
        channels=args.channels,
        planes=args.planes,
        eval_on="images",
    )
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
    )
    result = dataset_pseudo_labels(dm, spec, args.device, args.out)
    train = np.array([result.labels[i] for i in result.train_ids])
    print(
        f"{len(result.labels)} images labelled ({len(train)} fitted: mean {train.mean():.3f}, "
        f"std {train.std():.3f}) -> {result.path}"
    )
    return result
