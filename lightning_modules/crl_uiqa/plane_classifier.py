"""The plane classifier: trained on the plane labels of images.csv, its backbone is an embedding ``P(.)`` for
CRL-UIQA's pseudo-labels (the paper's "pre-trained classification model", Guo et al., MICCAI 2024, Sec. 2.1)."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.crl_uiqa.evaluation import datamodule_member
from lightning_modules.crl_uiqa.nets import PlaneClassifier
from lightning_modules.crl_uiqa.views import weak_view

__all__ = ["PlaneClassifierModule"]


class PlaneClassifierModule(LightningModule):
    """Plane classifier trained on the plane labels of images.csv; its backbone is an embedding for pseudo-labels.

    Use with ``ImageDataModule(eval_on="images")`` (val/test batches are images with plane labels). Not to
    be confused with :class:`lightning_modules.finetune.module.PlaneDetection`, the DualRepSSL paper's
    downstream task (its pretrained encoder fine-tuned on labelled video clips): this one exists to give
    CRL-UIQA an embedding, from still images, with a timm backbone.

    Args:
        image_size, in_channels: linked from the DataModule.
        backbone, pretrained_path, dropout: the network (:class:`~.nets.PlaneClassifier`).
        planes: class names in label order (default: the DataModule's classes, stored in the checkpoint).
        lr, weight_decay: AdamW, cosine-annealed over ``max_epochs``.
        augment: random flips and rotations (the weak view) during training.
        max_angle: rotation range of the augmentation, degrees.
    """

    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)

    def __init__(
        self,
        image_size: int | list[int] = 128,
        in_channels: int = 1,
        backbone: str = "resnet18",
        pretrained_path: str | None = None,
        dropout: float = 0.0,
        planes: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        augment: bool = True,
        max_angle: float = 15.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: PlaneClassifier | None = None
        self.metrics = nn.ModuleDict()
        if planes is not None:
            self._build(list(planes))

    def _build(self, planes: list[str]) -> None:
        if not planes:
            raise ValueError("PlaneClassifierModule needs at least one plane")
        hp = self.hparams
        self.hparams["planes"] = planes
        self.model = PlaneClassifier(len(planes), hp.backbone, hp.in_channels, hp.pretrained_path, hp.dropout)
        n = len(planes)
        for stage in ("train", "val", "test"):
            self.metrics[f"{stage}_acc"] = MulticlassAccuracy(n, average="micro", ignore_index=-1)
            self.metrics[f"{stage}_macro_acc"] = MulticlassAccuracy(n, average="macro", ignore_index=-1)

    def setup(self, stage: str) -> None:
        classes = list(datamodule_member(self, "classes"))
        if self.model is None:
            self._build(classes)
        elif list(self.hparams["planes"]) != classes:
            raise ValueError(
                f"the classifier's planes {self.hparams['planes']} differ from the DataModule's classes {classes}"
            )

    def _net(self) -> PlaneClassifier:
        if self.model is None:
            raise RuntimeError("PlaneClassifierModule has no network yet: pass planes or run it in a Trainer")
        return self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Plane logits ``B×num_planes``."""
        return self._net()(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone feature used for pseudo-labels."""
        return self._net().embed(images)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        if "better" in batch:
            raise KeyError(
                "PlaneClassifierModule evaluates labelled images: set data.init_args.eval_on=images"
            )
        if stage == "train" and self.hparams.augment:
            images = weak_view(images, max_angle=self.hparams.max_angle)
        logits = self(images).float()
        loss = F.cross_entropy(logits, labels, ignore_index=-1)
        n = images.shape[0]
        self.log(
            f"{stage}/loss", loss, prog_bar=stage == "train", on_epoch=True, sync_dist=True, batch_size=n
        )
        for name in ("acc", "macro_acc"):
            metric = cast(MulticlassAccuracy, self.metrics[f"{stage}_{name}"])
            metric.update(logits, labels)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """One row per image: ``image``, ``plane`` (from images.csv), ``predicted_plane``, ``probability``."""
        prob = self(batch["image"]).float().softmax(dim=1)
        conf, idx = prob.max(dim=1)
        planes = self.hparams["planes"]
        return {
            "image": list(batch["image_id"]),
            "plane": list(batch["plane"]),
            "predicted_plane": [planes[i] for i in idx.tolist()],
            "probability": conf,
        }

    def configure_optimizers(self) -> OptimizerLRScheduler:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
