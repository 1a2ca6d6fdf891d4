"""Still-image DataModule: training images, the standard-plane set, and (better, worse) pairs.

Used by CRLUIQA (quality scoring on pseudo-labels, pairwise evaluation) and by the image plane classifier.
Images are small PNG/JPEG files, decoded on the fly. With ``pseudo_labels`` set, CRL-UIQA's quality
pseudo-labels are a stage of this DataModule (:mod:`datamodules.pseudo_labels`): built and cached in
``prepare_data``, read back at ``setup`` and delivered in the batches.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import SonoDataModule, check_choice, to_unit_range
from datamodules.errors import DataError
from datamodules.manifest import ImageRecord, PairRecord
from datamodules.pseudo_labels import DatasetPseudoLabels, PseudoLabelSpec, dataset_pseudo_labels
from datamodules.readers import read_image

log = logging.getLogger("sonolab.data")

EVAL_MODES = ("pairs", "images")


def load_image_tensor(record: ImageRecord, channels: int, hw: tuple[int, int]) -> torch.Tensor:
    """C×H×W float in [-1, 1]."""
    array = read_image(record.path, channels=channels, size=hw)
    return to_unit_range(torch.from_numpy(array).permute(2, 0, 1))


def _label_array(ids: Sequence[str], labels: Mapping[str, float], what: str) -> torch.Tensor:
    """The pseudo-labels of ``ids`` in order; an image without one is a DataError naming it."""
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError(
            f"{len(missing)} {what} image(s) have no pseudo-label, e.g. {missing[:3]}: only role=train images of "
            "images.csv are labelled (rebuild the labels after changing images.csv: they are keyed by its content)"
        )
    return torch.tensor([labels[i] for i in ids], dtype=torch.float32)


class ImageDataset(Dataset):
    """Images with their plane label and (once attached) their pseudo-label."""

    def __init__(
        self, records: Sequence[ImageRecord], classes: Sequence[str], channels: int, hw: tuple[int, int]
    ) -> None:
        self.records = list(records)
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.channels = channels
        self.hw = hw
        self.pseudo_labels: torch.Tensor | None = None

    def attach_pseudo_labels(self, labels: Mapping[str, float]) -> None:
        """Deliver ``pseudo_label`` (float32) with every item from now on."""
        self.pseudo_labels = _label_array([r.image_id for r in self.records], labels, "dataset")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        item = {
            "image": load_image_tensor(record, self.channels, self.hw),
            "label": torch.tensor(self.class_index.get(record.plane, -1), dtype=torch.long),
            "image_id": record.image_id,
            "plane": record.plane,
        }
        if self.pseudo_labels is not None:
            item["pseudo_label"] = self.pseudo_labels[index]
        return item


class PairDataset(Dataset):
    """(better, worse) pairs of one plane for pairwise-accuracy evaluation."""

    def __init__(
        self, pairs: Sequence[PairRecord], images: dict[str, ImageRecord], channels: int, hw: tuple[int, int]
    ) -> None:
        self.pairs = list(pairs)
        self.images = images
        self.channels = channels
        self.hw = hw
        self.pseudo_labels: torch.Tensor | None = None  # P×2: (better, worse)

    def attach_pseudo_labels(self, labels: Mapping[str, float]) -> None:
        """Deliver ``better_pseudo_label`` / ``worse_pseudo_label`` (diagnostics) with every pair from now on."""
        better = _label_array([p.better for p in self.pairs], labels, "pair (better)")
        worse = _label_array([p.worse for p in self.pairs], labels, "pair (worse)")
        self.pseudo_labels = torch.stack([better, worse], dim=1) if self.pairs else torch.empty(0, 2)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        item = {
            "better": load_image_tensor(self.images[pair.better], self.channels, self.hw),
            "worse": load_image_tensor(self.images[pair.worse], self.channels, self.hw),
            "better_id": pair.better,
            "worse_id": pair.worse,
            "plane": pair.plane,
        }
        if self.pseudo_labels is not None:
            item["better_pseudo_label"], item["worse_pseudo_label"] = self.pseudo_labels[index]
        return item


class ImageDataModule(SonoDataModule):
    """Images from images.csv and pairs from pairs.csv.

    Args (beyond SonoDataModule's):
        planes: planes to keep (None = all); also the class vocabulary of `label`.
        eval_on: "pairs" (val/test batches are pairs: quality models) or "images" (val/test batches are
            images with plane labels: the plane classifier).
        predict_splits: which splits' images `lightning predict` scores.
        pseudo_labels: CRL-UIQA's pseudo-label stage (:class:`~datamodules.pseudo_labels.PseudoLabelSpec`:
            embedding, k, smoothing, ...); None: no pseudo-labels. Built in `prepare_data` (rank 0, on the
            trainer's device; not for `predict`), cached by dataset fingerprint + these parameters +
            the embedding's identity, read back at `setup` by every process.
    Batches: images -> `image`, `label`, `image_id`, `plane` (+ `pseudo_label`); pairs -> `better`,
    `worse`, `better_id`, `worse_id`, `plane` (+ `better_pseudo_label`, `worse_pseudo_label`). The pseudo-labels
    come with the training images and the val/test images or pairs, not with `predict` batches.
    """

    required_manifests: tuple[str, ...] = ("images",)

    def __init__(
        self,
        planes: list[str] | None = None,
        eval_on: str = "pairs",
        predict_splits: list[str] | None = None,
        pseudo_labels: PseudoLabelSpec | None = None,
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.planes = list(planes) if planes is not None else None
        self.eval_on = check_choice("data.init_args.eval_on", eval_on, EVAL_MODES)
        self.required_manifests = ("images", "pairs") if eval_on == "pairs" else ("images",)
        self.predict_splits = list(predict_splits) if predict_splits is not None else ["test"]
        self.classes: list[str] = []
        self.standard_dataset: ImageDataset | None = None
        self.pseudo_label_spec = pseudo_labels
        self.pseudo: DatasetPseudoLabels | None = None

    def uses(self) -> set[str]:
        return {"images", "label"} | ({"pairs"} if self.eval_on == "pairs" else set())

    def requirements(self) -> dict[str, str]:
        need = {"images": f"{type(self).__name__} reads its images from it"}
        if self.eval_on == "pairs":
            need["pairs"] = (
                f"{type(self).__name__} with data.init_args.eval_on=pairs evaluates on its pairs "
                "(eval_on=images evaluates on plane-labelled images without it)"
            )
        return need

    def keep(self, plane: str) -> bool:
        return self.planes is None or plane in self.planes

    def records(self, split: str | Sequence[str] | None = None, role: str | None = None) -> list[ImageRecord]:
        """Images of the kept planes, filtered by split(s) and role, in images.csv order."""
        manifests = self.load_manifests()
        splits = {split} if isinstance(split, str) else set(split) if split is not None else None
        return [
            r
            for r in manifests.images.values()
            if self.keep(r.plane)
            and (splits is None or r.split in splits)
            and (role is None or r.role == role)
        ]

    def setup(self, stage: str | None = None) -> None:
        manifests = self.load_manifests()
        self.classes = self.planes or sorted({r.plane for r in manifests.images.values()})
        dataset = self.image_dataset
        self.datasets["train"] = dataset(self.records("train", role="train"))
        self.standard_dataset = dataset(self.records(role="standard"))
        if len(self.standard_dataset) == 0:
            log.warning("images.csv of %s has no role=standard images", self.root)
        for split in ("val", "test"):
            if self.eval_on == "pairs":
                pairs = [p for p in manifests.pairs if p.split == split and self.keep(p.plane)]
                self.datasets[split] = PairDataset(pairs, manifests.images, self.channels, self.hw)
            else:
                self.datasets[split] = dataset(self.records(split, role="train"))
        self.datasets["predict"] = dataset(self.records(self.predict_splits))
        if self.pseudo_label_spec is not None and stage != "predict":
            labels = self.build_pseudo_labels().labels
            for split in ("train", "val", "test"):
                self.datasets[split].attach_pseudo_labels(labels)  # type: ignore[attr-defined]
        log.info(
            "images: %s, standard=%d (planes: %s)",
            ", ".join(f"{s}={len(cast(Sized, d))}" for s, d in self.datasets.items()),
            len(self.standard_dataset),
            ", ".join(self.classes),
        )

    def image_dataset(self, records: Sequence[ImageRecord]) -> ImageDataset:
        """A dataset of these images at this DataModule's size and channels (setup() sets the classes)."""
        return ImageDataset(records, self.classes, self.channels, self.hw)

    # ------------------------------------------------------------------ pseudo-label stage
    def _predicting(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.state.fn == "predict"

    def prepare_data(self) -> None:
        """Rank 0: validate, then build and cache the pseudo-labels (unless predicting: no labels needed)."""
        super().prepare_data()
        if self.pseudo_label_spec is not None and not self._predicting():
            self.build_pseudo_labels()

    def build_pseudo_labels(self) -> DatasetPseudoLabels:
        """The pseudo-labels of the dataset: read from the cache, or computed (on the trainer's device) and cached."""
        if self.pseudo_label_spec is None:
            raise RuntimeError("set data.init_args.pseudo_labels to build pseudo-labels")
        if self.pseudo is None:
            trainer = self.trainer
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
            self.pseudo = dataset_pseudo_labels(self, self.pseudo_label_spec, device, progress=True)
        return self.pseudo

    def state_dict(self) -> dict[str, Any]:
        """Checkpoints record which pseudo-labels trained the weights (file and parameters)."""
        return {"pseudo_labels": self.pseudo.record()} if self.pseudo is not None else {}

    def standard_dataloader(self) -> DataLoader:
        """The standard-plane reference set, in order (what the classical baselines fit on)."""
        if self.standard_dataset is None:
            raise RuntimeError("call setup() first")
        if len(self.standard_dataset) == 0:
            raise DataError(
                f"images.csv of {self.root} has no role=standard images (of the kept planes): the standard-plane "
                "set is needed here"
            )
        self.datasets["standard"] = self.standard_dataset
        return self.make_loader("standard", shuffle=False)
