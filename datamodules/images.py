"""Still-image DataModule: training images, the standard-plane set, and (better, worse) pairs.

Used by CRLUIQA (quality scoring, pseudo-labels from distances to the standard planes, pairwise
evaluation) and by the image plane classifier. Images are small PNG/JPEG files, decoded on the fly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import ImageSize, SonoDataModule, check_choice, to_unit_range
from datamodules.manifest import ImageRecord, PairRecord
from datamodules.readers import read_image

log = logging.getLogger("sonolab.data")

EVAL_MODES = ("pairs", "images")


def load_image_tensor(record: ImageRecord, channels: int, hw: tuple[int, int]) -> torch.Tensor:
    """C×H×W float in [-1, 1]."""
    array = read_image(record.path, channels=channels, size=hw)
    return to_unit_range(torch.from_numpy(array).permute(2, 0, 1))


class ImageDataset(Dataset):
    """Images with their plane label and their position in the set (for pseudo-label lookup)."""

    def __init__(
        self, records: Sequence[ImageRecord], classes: Sequence[str], channels: int, hw: tuple[int, int]
    ) -> None:
        self.records = list(records)
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.channels = channels
        self.hw = hw

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "image": load_image_tensor(record, self.channels, self.hw),
            "label": torch.tensor(self.class_index.get(record.plane, -1), dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
            "image_id": record.image_id,
            "plane": record.plane,
        }


class PairDataset(Dataset):
    """(better, worse) pairs of one plane for pairwise-accuracy evaluation."""

    def __init__(
        self, pairs: Sequence[PairRecord], images: dict[str, ImageRecord], channels: int, hw: tuple[int, int]
    ) -> None:
        self.pairs = list(pairs)
        self.images = images
        self.channels = channels
        self.hw = hw

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        return {
            "better": load_image_tensor(self.images[pair.better], self.channels, self.hw),
            "worse": load_image_tensor(self.images[pair.worse], self.channels, self.hw),
            "better_id": pair.better,
            "worse_id": pair.worse,
            "plane": pair.plane,
        }


class ImageDataModule(SonoDataModule):
    """Images from images.csv and pairs from pairs.csv.

    Args (beyond SonoDataModule's):
        planes: planes to keep (None = all); also the class vocabulary of `label`.
        eval_on: "pairs" (val/test batches are pairs: quality models) or "images" (val/test batches are
            images with plane labels: the plane classifier).
        predict_splits: which splits' images `lightning predict` scores.
    Batches: images -> `image`, `label`, `index`, `image_id`, `plane`; pairs -> `better`, `worse`,
    `better_id`, `worse_id`, `plane`.
    """

    required_manifests = ("images",)

    def __init__(
        self,
        root: str = "data/synthetic-demo",
        synthetic: str | None = "demo",
        synthetic_seed: int = 0,
        image_size: ImageSize = 128,
        channels: int = 1,
        planes: list[str] | None = None,
        eval_on: str = "pairs",
        predict_splits: list[str] | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        cache_dir: str | None = None,
        skip_invalid: bool = False,
        cache_workers: int = 0,
        revalidate: bool = False,
    ) -> None:
        super().__init__(
            root=root,
            synthetic=synthetic,
            synthetic_seed=synthetic_seed,
            image_size=image_size,
            channels=channels,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            cache_dir=cache_dir,
            skip_invalid=skip_invalid,
            cache_workers=cache_workers,
            revalidate=revalidate,
        )
        self.planes = list(planes) if planes is not None else None
        self.eval_on = check_choice("data.init_args.eval_on", eval_on, EVAL_MODES)
        self.required_manifests = ("images", "pairs") if eval_on == "pairs" else ("images",)
        self.predict_splits = list(predict_splits) if predict_splits is not None else ["test"]
        self.classes: list[str] = []
        self.standard_dataset: ImageDataset | None = None

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
        dataset = lambda records: ImageDataset(records, self.classes, self.channels, self.hw)  # noqa: E731
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
        log.info(
            "images: %s, standard=%d (planes: %s)",
            ", ".join(f"{s}={len(d)}" for s, d in self.datasets.items()),
            len(self.standard_dataset),
            ", ".join(self.classes),
        )

    def standard_dataloader(self) -> DataLoader:
        """The standard-plane reference set, in order (for pseudo-labels)."""
        assert self.standard_dataset is not None, "call setup() first"
        self.datasets["standard"] = self.standard_dataset
        return self.make_loader("standard", shuffle=False)

    def ordered_dataloader(self, split: str = "train") -> DataLoader:
        """A split's images in a fixed order (for embedding extraction)."""
        return self.make_loader(split, shuffle=False)
