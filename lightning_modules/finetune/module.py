"""DualRepSSL's two downstream tasks (Gridach et al., 2023, section 3) as LightningModules.

* :class:`PlaneDetection`: standard-plane classification of a frame (ResNet-18 image encoder) or a clip
  (R(2+1)D-18 video encoder) with a linear head; macro precision / recall / F1 (Table 1) and per-class
  values from torchmetrics. The label vocabulary comes from the data (14 classes incl. background on
  PULSE; the synthetic data has fewer) unless ``classes`` is given.
* :class:`SaliencyFinetune`: gaze-saliency prediction with the encoder's last layers (global pooling and
  classifier) replaced by a decoder (:class:`~.nets.SaliencyDecoder`); KL loss, KLD / SIM / NSS / CC
  (Table 2) from :mod:`lightning_modules.common.saliency`.

Both start their encoder from a DualRepSSL checkpoint (``pretrained``), a supervised weights file
(``weights_file``) or random weights (see :mod:`.nets`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from lightning_modules.common.saliency import (
    SaliencyMetrics,
    cc,
    kld,
    nss,
    saliency_kld_loss,
    sim,
)
from lightning_modules.finetune.nets import SaliencyDecoder, build_encoder, initialisation, log_softmax_map

__all__ = ["PlaneDetection", "SaliencyFinetune"]

EVAL_STAGES = ("val", "test")


class _EncoderFinetune(LightningModule):
    """What both tasks share: the encoder, its initialisation, freezing and the optimiser."""

    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)

    def _init_encoder(
        self,
        in_channels: int,
        input: str,
        pretrained: str | None,
        weights_file: str | None,
        weights_prefix: str | None,
        freeze_encoder: bool,
    ) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"model.init_args.in_channels must be 1 or 3, got {in_channels}")
        if pretrained == "auto":
            raise ValueError(
                "pretrained: auto is resolved by the lightning CLI (it pretrains model.init_args.pretraining "
                "first); outside the CLI give a DualRepSSL checkpoint path"
            )
        self.initialisation = initialisation(pretrained, weights_file)
        self.encoder = build_encoder(input, pretrained, weights_file, weights_prefix)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> _EncoderFinetune:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics
        return self

    def input_tensor(self, batch: dict[str, Any]) -> Tensor:
        key = self.hparams.input
        if key not in batch:
            raise KeyError(
                f"batch lacks {key!r} (model.init_args.input={key}): add it to data.init_args.modalities"
            )
        x = batch[key]
        if x.shape[1] != self.hparams.in_channels:
            raise ValueError(
                f"batch[{key!r}] has {x.shape[1]} channels, model.init_args.in_channels is {self.hparams.in_channels}"
            )
        return x

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def _item_ids(batch: dict[str, Any]) -> list[str]:
    for key in ("clip_id", "image_id"):
        if key in batch:
            return [str(v) for v in batch[key]]
    return [str(i) for i in range(len(batch["label"]))]


class PlaneDetection(_EncoderFinetune):
    """Standard-plane detection from frames (``input: image``) or clips (``input: video``).

    The DualRepSSL paper's downstream task (Table 1): its pretrained encoder fine-tuned on labelled clips.
    CRL-UIQA's embedding model is a different one, on still images:
    :class:`lightning_modules.crl_uiqa.plane_classifier.PlaneClassifierModule`.

    Args:
        image_size, in_channels: linked from the DataModule.
        input: "image" (a frame: the data's ``image`` modality) or "video" (the clip).
        classes: label vocabulary; None = the DataModule's ``classes`` (they must agree when both are set).
        pretrained: DualRepSSL checkpoint to take the encoder from; ``last:<project>`` = the newest run of
            that project; ``auto`` = the CLI pretrains ``pretraining`` on this run's data first (once: later
            runs reuse it, see ``lightning_modules.common.pretraining``). weights_file (+ weights_prefix): a
            supervised torchvision-layout weights file instead; none of them: random init.
        pretraining: the DualRepSSL configs ``pretrained: auto`` trains (e.g. ``[configs/dualrep.yaml,
            configs/dualrep/mmcl_only.yaml]``), then ``pretraining_overlays`` (the demo sizes) on top.
        freeze_encoder: train the head only (linear probe).
        dropout: dropout before the linear head.
        lr, weight_decay: Adam (the paper gives no fine-tuning settings).
        label_smoothing: of the cross-entropy.
    """

    def __init__(
        self,
        image_size: int | list[int] = 128,
        in_channels: int = 1,
        input: str = "image",
        classes: list[str] | None = None,
        pretrained: str | None = None,
        pretraining: list[str] | None = None,
        pretraining_overlays: list[str] | None = None,
        weights_file: str | None = None,
        weights_prefix: str | None = None,
        freeze_encoder: bool = False,
        dropout: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_encoder(in_channels, input, pretrained, weights_file, weights_prefix, freeze_encoder)
        self.classes: list[str] | None = None
        self.head: nn.Module | None = None
        if classes:
            self.build_head(list(classes))

    # ------------------------------------------------------------------ classes and head
    def build_head(self, classes: list[str]) -> None:
        """The linear head and the metrics, once the number of classes is known."""
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"PlaneDetection needs at least 2 distinct classes, got {classes}")
        n = len(classes)
        self.classes = list(classes)
        self.hparams["classes"] = (
            self.classes
        )  # stored in checkpoints: load_from_checkpoint rebuilds the head
        self.head = nn.Sequential(nn.Dropout(self.hparams.dropout), nn.Linear(self.encoder.out_dim, n))
        self.train_accuracy = MulticlassAccuracy(n, average="micro")
        self.macro = nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "precision": MulticlassPrecision(n, average="macro"),
                        "recall": MulticlassRecall(n, average="macro"),
                        "f1": MulticlassF1Score(n, average="macro"),
                        "accuracy": MulticlassAccuracy(n, average="micro"),
                    },
                    compute_groups=False,
                )
                for stage in EVAL_STAGES
            }
        )
        self.per_class = nn.ModuleDict(
            {
                stage: MetricCollection(
                    {
                        "precision": MulticlassPrecision(n, average=None),
                        "recall": MulticlassRecall(n, average=None),
                        "f1": MulticlassF1Score(n, average=None),
                    },
                    compute_groups=False,
                )
                for stage in EVAL_STAGES
            }
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)  # a Trainer attribute Lightning sets
        data_classes = getattr(datamodule, "classes", None)
        if self.classes is None:
            if not data_classes:
                raise ValueError(
                    "PlaneDetection: no classes: set model.init_args.classes or use a DataModule with `classes`"
                )
            self.build_head(list(data_classes))
        elif data_classes is not None and list(data_classes) != self.classes:
            raise ValueError(
                f"model classes {self.classes} differ from the data's {list(data_classes)}: "
                "set data.init_args.classes to the same list (the order matters)"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("classes")
        if saved and self.classes is not None and list(saved) != self.classes:
            raise ValueError(f"checkpoint classes {list(saved)} differ from this run's {self.classes}")

    # ------------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        if self.head is None:
            raise RuntimeError("PlaneDetection has no head yet: give `classes` or run it through a Trainer")
        return self.head(self.encoder(x)).float()

    def labels(self, batch: dict[str, Any]) -> Tensor:
        label = batch["label"]
        if (label < 0).any():
            ids = [i for i, bad in zip(_item_ids(batch), (label < 0).tolist()) if bad]
            raise ValueError(
                f"items {ids[:5]} have labels outside the classes {self.classes}: keep them out with "
                "data.init_args.train_filter / eval_filter labels, or add them to data.init_args.classes"
            )
        return label

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        label = self.labels(batch)
        logits = self(self.input_tensor(batch))
        loss = F.cross_entropy(logits, label, label_smoothing=self.hparams.label_smoothing)
        self.train_accuracy(logits, label)
        n = len(label)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _macro(self, stage: str) -> MetricCollection:
        return cast(MetricCollection, self.macro[stage])

    def _per_class(self, stage: str) -> MetricCollection:
        return cast(MetricCollection, self.per_class[stage])

    def eval_step(self, batch: dict[str, Any], stage: str) -> None:
        label = self.labels(batch)
        logits = self(self.input_tensor(batch))
        loss = F.cross_entropy(logits, label)
        self._macro(stage).update(logits, label)
        self._per_class(stage).update(logits, label)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(label))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def log_epoch(self, stage: str) -> None:
        assert self.classes is not None
        logs = {f"{stage}/{name}": value for name, value in self._macro(stage).compute().items()}
        for name, values in self._per_class(stage).compute().items():
            logs.update({f"{stage}/{name}/{c}": values[i] for i, c in enumerate(self.classes)})
        self._macro(stage).reset()
        self._per_class(stage).reset()
        f1 = logs.pop(f"{stage}/f1")
        self.log_dict(logs)  # already reduced over ranks by torchmetrics
        self.log(f"{stage}/f1", f1, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        assert self.classes is not None
        probs = torch.softmax(self(self.input_tensor(batch)), dim=1).cpu()
        confidence, index = probs.max(dim=1)
        columns: dict[str, Any] = {
            "clip_id": _item_ids(batch),
            "label": [self.classes[i] if i >= 0 else "" for i in batch["label"].tolist()]
            if "label" in batch
            else [""] * len(index),
            "prediction": [self.classes[i] for i in index.tolist()],
            "confidence": confidence,
        }
        columns.update({f"p_{c}": probs[:, i] for i, c in enumerate(self.classes)})
        return columns


class SaliencyFinetune(_EncoderFinetune):
    """Gaze-saliency prediction for the target frame of a sequence (``SaliencySequenceDataModule``).

    Args:
        image_size, in_channels: linked from the DataModule.
        input: "image" (the target frame alone) or "video" (the whole sequence; the decoder averages the
            encoder's maps over time).
        pretrained, pretraining, pretraining_overlays, weights_file, weights_prefix, freeze_encoder: as in
            :class:`PlaneDetection`.
        decoder_channels: widths of the four decoder stages, deepest first.
        lr, weight_decay: Adam.
    """

    def __init__(
        self,
        image_size: int | list[int] = 128,
        in_channels: int = 1,
        input: str = "image",
        pretrained: str | None = None,
        pretraining: list[str] | None = None,
        pretraining_overlays: list[str] | None = None,
        weights_file: str | None = None,
        weights_prefix: str | None = None,
        freeze_encoder: bool = False,
        decoder_channels: list[int] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._init_encoder(in_channels, input, pretrained, weights_file, weights_prefix, freeze_encoder)
        self.decoder = SaliencyDecoder(tuple(decoder_channels or (256, 128, 64, 32)))
        self.metrics = nn.ModuleDict({stage: SaliencyMetrics(log_input=True) for stage in EVAL_STAGES})

    def input_tensor(self, batch: dict[str, Any]) -> Tensor:
        if "video" not in batch or "gaze" not in batch:
            raise KeyError(
                "SaliencyFinetune needs batches with 'video' and 'gaze' (SaliencySequenceDataModule)"
            )
        video = batch["video"]
        if video.shape[1] != self.hparams.in_channels:
            raise ValueError(
                f"batch['video'] has {video.shape[1]} channels, model.init_args.in_channels is {self.hparams.in_channels}"
            )
        if self.hparams.input == "video":
            return video
        rows = torch.arange(video.shape[0], device=video.device)
        return video[rows, :, self.target_index(batch)]  # B×C×H×W

    @staticmethod
    def target_index(batch: dict[str, Any]) -> Tensor:
        video = batch["video"]
        if "target_index" in batch:
            return batch["target_index"].to(video.device)
        return torch.full((video.shape[0],), video.shape[2] - 1, dtype=torch.long, device=video.device)

    def fixations(self, batch: dict[str, Any], gaze: Tensor) -> Tensor:
        """The target frame's binary fixation map B×1×H×W (NSS at the real fixations, MIT definition);
        without one in the batch, the gaze map itself (NSS at map > 0, the rule for density-only data)."""
        if "fixations" not in batch:
            return gaze
        idx = self.target_index(batch)
        rows = torch.arange(idx.shape[0], device=idx.device)
        return batch["fixations"][rows, :, idx]

    def target(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """The target frame's gaze map (B×1×H×W) and whether it had a fixation (B)."""
        idx = self.target_index(batch)
        rows = torch.arange(idx.shape[0], device=idx.device)
        gaze = batch["gaze"][rows, :, idx]
        valid = (
            batch["gaze_valid"][rows, idx]
            if "gaze_valid" in batch
            else torch.ones_like(idx, dtype=torch.bool)
        )
        return gaze, valid

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """B×1×H×W log-probabilities over the pixels (``size`` defaults to the input's H×W)."""
        size = size or (int(x.shape[-2]), int(x.shape[-1]))
        return log_softmax_map(self.decoder(self.encoder.feature_maps(x), size))

    def shared_step(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor]:
        """``(loss, log_pred)``; updates the stage's metrics in validation and test."""
        gaze, valid = self.target(batch)
        log_pred = self(self.input_tensor(batch), tuple(gaze.shape[-2:]))
        loss = saliency_kld_loss(log_pred, gaze, valid)
        n = gaze.shape[0]
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=n,
        )
        if stage in EVAL_STAGES:
            self._metrics(stage).update(log_pred, gaze, valid, fixations=self.fixations(batch, gaze))
        return loss, log_pred

    def _metrics(self, stage: str) -> MetricCollection:
        return cast(MetricCollection, self.metrics[stage])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")[0]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        loss, log_pred = self.shared_step(batch, "val")
        return {"loss": loss, "log_pred": log_pred}  # callbacks.saliency_maps.SaliencyMapLogger reads it

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def log_epoch(self, stage: str) -> None:
        values = self._metrics(stage).compute()
        self._metrics(stage).reset()
        self.log_dict({f"{stage}/{name}": value for name, value in values.items()}, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        gaze, valid = self.target(batch)
        pred = self(self.input_tensor(batch), tuple(gaze.shape[-2:])).exp()
        h, w = pred.shape[-2:]
        peak = pred.flatten(1).argmax(dim=1)
        nan = torch.full_like(valid, float("nan"), dtype=torch.float32)
        scores = {
            "kld": kld(pred, gaze),
            "sim": sim(pred, gaze),
            "cc": cc(pred, gaze),
            "nss": nss(pred, self.fixations(batch, gaze)),
        }
        columns: dict[str, Any] = {
            "clip_id": _item_ids(batch),
            "gaze_valid": valid.long().cpu(),
            "peak_x": ((peak % w).float() + 0.5).div(w).cpu(),
            "peak_y": ((peak // w).float() + 0.5).div(h).cpu(),
        }
        # without a fixation on the target frame the scores would compare with a uniform map: left empty
        columns.update({name: torch.where(valid, s.float(), nan).cpu() for name, s in scores.items()})
        return columns
