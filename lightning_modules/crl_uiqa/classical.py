"""Classical quality scores as a LightningModule: NIQE, BRISQUE, MSSIM / MS-SSIM (CRL-UIQA's Table 2 rows).

Nothing to train: the models (:mod:`.baselines`) are fitted on the DataModule's standard-plane images at
``setup``; evaluation is :class:`~.evaluation.PairwiseQualityModule`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict

from lightning_modules.crl_uiqa.baselines import BRISQUE, NIQE, full_reference_scores
from lightning_modules.crl_uiqa.evaluation import PairwiseQualityModule, datamodule_member

log = logging.getLogger("sonolab.crl_uiqa")

__all__ = ["ClassicalIQA"]


class ClassicalIQA(PairwiseQualityModule):
    """Classical quality scores (NIQE, BRISQUE, MSSIM, MS-SSIM) as a module: fitted at ``setup``, never trained.

    The fitting uses only the DataModule's standard-plane images (see :mod:`.baselines`): NIQE's pristine
    model; BRISQUE's SVR on synthetically distorted copies; MSSIM / MS-SSIM take each image's closest
    standard image as the reference (of the same plane when ``reference_per_plane``). ``fit`` runs the
    (empty) training loop so that every config accepts the same commands; there are no weights.

    Args:
        method: ``"niqe"``, ``"brisque"``, ``"mssim"`` or ``"ms_ssim"``.
        niqe_patch_size: NIQE patch side (even); default ``min(96, side // 4)`` rounded down to even.
        niqe_sharpness_threshold: NIQE pristine-patch selection.
        brisque_C, brisque_epsilon, brisque_seed: the SVR and its synthetic distortions.
        reference: MSSIM reference choice, ``"pixel"`` (closest by pixels) or ``"best"`` (max over standards).
        reference_per_plane: look for the reference among the standard images of the image's own plane.
        pixel_size: side of the images compared when choosing the closest standard image.
    """

    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)

    METHODS = ("niqe", "brisque", "mssim", "ms_ssim")

    def __init__(
        self,
        image_size: int | list[int] = 128,
        in_channels: int = 1,
        method: str = "niqe",
        niqe_patch_size: int | None = None,
        niqe_sharpness_threshold: float = 0.75,
        brisque_C: float = 10.0,
        brisque_epsilon: float = 0.05,
        brisque_seed: int = 0,
        reference: str = "pixel",
        reference_per_plane: bool = True,
        pixel_size: int = 64,
        planes: list[str] | None = None,
        blur_levels: list[float] | None = None,
    ) -> None:
        super().__init__(planes, blur_levels if blur_levels is not None else (0.0, 1.0, 2.0, 3.0))
        self.save_hyperparameters()
        if method not in self.METHODS:
            raise ValueError(f"model.init_args.method={method!r} is not one of {self.METHODS}")
        if reference not in ("pixel", "best"):
            raise ValueError(f"model.init_args.reference={reference!r} is not 'pixel' or 'best'")
        side = min(image_size) if isinstance(image_size, (list, tuple)) else int(image_size)
        self.niqe_patch_size = niqe_patch_size or max(8, min(96, side // 4) // 2 * 2)
        self.automatic_optimization = False
        self.niqe: NIQE | None = None
        self.brisque: BRISQUE | None = None
        self.standard: torch.Tensor | None = None
        self.standard_planes: list[str] = []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.standard is not None:
            return
        images: list[torch.Tensor] = []
        planes: list[str] = []
        for batch in datamodule_member(self, "standard_dataloader")():
            images.append(batch["image"])
            planes.extend(batch["plane"])
        self.fit_references(torch.cat(images), planes)
        log.info("%s fitted on %d standard-plane images", self.hparams.method, len(planes))

    def fit_references(self, standard: torch.Tensor, planes: Sequence[str]) -> ClassicalIQA:
        """Fit the method on the standard-plane images (``N×C×H×W`` in ``[-1, 1]``) of the given planes."""
        if standard.ndim != 4 or standard.shape[0] != len(planes):
            raise ValueError(
                f"standard must be N×C×H×W with one plane per image, got {tuple(standard.shape)} and "
                f"{len(planes)} planes"
            )
        self.standard = standard.detach().float().cpu()
        self.standard_planes = [str(p) for p in planes]
        method = self.hparams.method
        if method == "niqe":
            self.niqe = NIQE(self.niqe_patch_size, self.hparams.niqe_sharpness_threshold).fit(self.standard)
        elif method == "brisque":
            self.brisque = BRISQUE(C=self.hparams.brisque_C, epsilon=self.hparams.brisque_epsilon)
            self.brisque.fit_synthetic(self.standard, seed=self.hparams.brisque_seed)
        return self

    def _references(self, plane: str | None) -> torch.Tensor:
        assert self.standard is not None
        if not self.hparams.reference_per_plane or plane is None:
            return self.standard
        idx = [i for i, p in enumerate(self.standard_planes) if p == plane]
        return self.standard[idx] if idx else self.standard

    def score(self, images: torch.Tensor, planes: Sequence[str] | None = None) -> torch.Tensor:
        x = images.detach().float().cpu()
        method = self.hparams.method
        if method == "niqe":
            assert self.niqe is not None, "setup() did not run"
            values = -self.niqe.score(x)
        elif method == "brisque":
            assert self.brisque is not None, "setup() did not run"
            values = self.brisque.score(x)
        else:
            values = np.empty(x.shape[0])
            groups = (
                list(planes) if planes is not None and self.hparams.reference_per_plane else [None] * len(x)
            )
            for plane in dict.fromkeys(groups):
                idx = [i for i, p in enumerate(groups) if p == plane]
                values[idx] = full_reference_scores(
                    x[idx],
                    self._references(plane),
                    method,
                    self.hparams.reference,
                    pixel_size=self.hparams.pixel_size,
                )
        values = np.where(np.isnan(values), -np.inf, values)  # an unscorable image ranks below every other
        return torch.as_tensor(values, dtype=torch.float32, device=images.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Nothing to learn: the models are fitted on the standard planes at ``setup``."""
        return None

    def configure_optimizers(self) -> None:
        return None
