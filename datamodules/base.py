"""What every sonolab DataModule shares: dataset location, validation, caching, loaders, DDP batch sizes.

The one data path is: dataset folder -> validated manifests (`datamodules.validate`) -> clip cache
(`datamodules.cache`, built once in `prepare_data` on rank 0) -> Dataset -> batch dict.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import cast

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.cache import CacheView, ClipCache, dataset_fingerprint
from datamodules.errors import DataError
from datamodules.manifest import Manifests
from datamodules.readers import worker_init
from datamodules.validate import load_dataset

log = logging.getLogger("sonolab.data")

ImageSize = int | Sequence[int]


def as_hw(image_size: ImageSize) -> tuple[int, int]:
    """Normalise `image_size` (an int for square frames, or [height, width]) to (height, width)."""
    size = [image_size, image_size] if isinstance(image_size, int) else [int(s) for s in image_size]
    if len(size) != 2 or min(size) < 8:
        raise ValueError(
            f"image_size must be an int or [height, width] of at least 8 pixels, got {image_size!r}"
        )
    return size[0], size[1]


def default_cache_dir() -> Path:
    """Cache root: $SONOLAB_CACHE, else ./.cache/sonolab (never inside the user's dataset folder)."""
    return Path(os.environ.get("SONOLAB_CACHE", Path.cwd() / ".cache" / "sonolab"))


def to_unit_range(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range every model expects."""
    return frames_uint8.float().div_(127.5).sub_(1.0)


class SonoDataModule(LightningDataModule):
    """Base class: owns the dataset root, validation at setup and the DataLoader settings.

    Args:
        root: dataset folder (see docs/data.md).
        synthetic: if `root` does not exist, generate this synthetic preset there ("tiny" or "demo");
            None means a missing root is an error.
        synthetic_seed: seed of the generated dataset.
        image_size: frame size fed to the model, an int or [height, width].
        channels: 1 (grey, ultrasound's native form) or 3 (RGB, e.g. for ImageNet-style backbones).
        batch_size: the GLOBAL batch size; under DDP each device gets batch_size / world_size, so results
            do not change with the number of GPUs.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        cache_dir: where decoded clips are cached ($SONOLAB_CACHE or ./.cache/sonolab by default).
        skip_invalid: drop (and log) invalid manifest rows instead of stopping with an error.
        cache_workers: processes used to build the cache in `prepare_data` (0 = in the main process).
        revalidate: validate every medium again even when the dataset is unchanged since its last
            validation (whose result is cached under `cache_dir`, keyed by the dataset's manifests, media
            sizes and mtimes, and the validation parameters).
        prepare_data_per_node: True: each node's first process validates and builds the caches (local
            disks); False: only the job's first process does, the others wait (a filesystem every node
            shares: one build). Concurrent builds of one cache are safe either way.
    """

    required_manifests: tuple[str, ...] = ("scans", "clips")

    def __init__(
        self,
        root: str = "data/synthetic-demo",
        synthetic: str | None = "demo",
        synthetic_seed: int = 0,
        image_size: ImageSize = 128,
        channels: int = 1,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        cache_dir: str | None = None,
        skip_invalid: bool = False,
        cache_workers: int = 0,
        revalidate: bool = False,
        prepare_data_per_node: bool = True,
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = prepare_data_per_node
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root)
        self.synthetic = synthetic
        self.synthetic_seed = synthetic_seed
        self.image_size = image_size
        self.hw = as_hw(image_size)
        self.channels = channels
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.skip_invalid = skip_invalid
        self.cache_workers = cache_workers
        self.revalidate = revalidate
        self.manifests: Manifests | None = None
        self.datasets: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ dataset and manifests
    def ensure_root(self) -> Path:
        """The dataset folder, generated from the synthetic preset on first use if configured."""
        if not self.root.exists():
            if self.synthetic is None:
                raise FileNotFoundError(
                    f"dataset folder {self.root} does not exist (set data.init_args.root to your dataset, "
                    "or data.init_args.synthetic to 'tiny'/'demo' to generate one there)"
                )
            log.info("dataset %s missing: generating synthetic preset %r", self.root, self.synthetic)
            # imported only when asked to generate: the generator is large and no real-data run needs it
            from datamodules.synthetic import ensure_dataset

            ensure_dataset(self.root, self.synthetic, seed=self.synthetic_seed)
        return self.root

    def requirements(self) -> dict[str, str]:
        """Manifest -> why this run needs it: validation requires exactly these (the others are checked
        when present) and a missing one's error says which DataModule / option asks for it."""
        return {name: f"{type(self).__name__} reads it" for name in self.required_manifests}

    def uses(self) -> set[str]:
        """The modalities and targets this run reads (``video``, ``gaze``, ``audio``, ``label``, ``quality``,
        ``images``, ``pairs``): dataset warnings about anything else are not logged."""
        return {"video"}

    def load_manifests(self) -> Manifests:
        """Validate the dataset once per process (every problem reported together) and keep the records."""
        if self.manifests is None:
            self.ensure_root()
            self.manifests = load_dataset(
                self.root,
                require=self.requirements(),
                deep=True,
                skip_invalid=self.skip_invalid,
                logger=log,
                uses=self.uses(),
                cache_dir=self.cache_dir,
                revalidate=self.revalidate,
            )
        return self.manifests

    def prepare_data(self) -> None:
        """Rank 0 only: generate a missing synthetic dataset, validate it, build caches."""
        self.load_manifests()
        self.build_cache()

    def dataset_fingerprint(self) -> str:
        """Identity of the dataset's current content (manifests + media sizes/mtimes), for cache keys."""
        manifests = self.load_manifests()
        return dataset_fingerprint(manifests.root, manifests.manifest_files() + manifests.media_files())

    def clip_cache(self) -> ClipCache | None:
        """The cache of decoded frames this DataModule reads (None: it decodes nothing)."""
        return None

    def build_cache(self) -> None:
        """Decode and cache once; a complete cache with the same key is reused as is."""
        cache = self.clip_cache()
        if cache is not None and not cache.is_complete():
            cache.build(num_workers=self.cache_workers, progress=True)

    def open_cache(self) -> CacheView:
        """Memory-mapped view of the cache, built first if `prepare_data` did not run (e.g. a notebook)."""
        self.build_cache()
        cache = self.clip_cache()
        if cache is None:
            raise RuntimeError(f"{type(self).__name__} has no clip cache")
        return cache.open()

    # ------------------------------------------------------------------ loaders
    def world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def per_device_batch_size(self) -> int:
        """batch_size is global; split it evenly over devices or explain why it cannot be."""
        world = self.world_size()
        if self.batch_size % world != 0:
            raise ValueError(
                f"data.init_args.batch_size={self.batch_size} is the global batch size and must be divisible by "
                f"the number of devices ({world}); use e.g. {max(world, self.batch_size // world * world)}"
            )
        return self.batch_size // world

    def make_loader(self, split: str, shuffle: bool, drop_last: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"no {split!r} data: call setup() first, or the dataset has no {split} split")
        dataset = self.datasets[split]
        batch_size = self.per_device_batch_size()
        size = len(cast(Sized, dataset))  # every sonolab Dataset is map-style (has __len__)
        if size == 0:
            raise DataError(
                f"the {split} split of {self.root} is empty after filtering: check the split column of the "
                "manifests and the DataModule's filters (train_filter / eval_filter)"
            )
        if drop_last and size < batch_size * self.world_size():
            drop_last = False
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            worker_init_fn=worker_init,
        )

    def train_dataloader(self) -> DataLoader:
        return self.make_loader("train", shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self.make_loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.make_loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.make_loader("predict" if "predict" in self.datasets else "test", shuffle=False)


def check_choice(key: str, value: str, allowed: Iterable[str]) -> str:
    """Reject a config value that is not one of `allowed`, naming the key."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}")
    return value
