"""LightningModules of CRL-UIQA (Guo et al., MICCAI 2024) and its comparison rows.

* :class:`CRLUIQA` — the quality scorer trained on pseudo-labels with score consistency (weak views) and
  relativity (strong views): ``L = α·L_d + θ·L_c + β·L_r``. The Table 1 ablations are switches of the same
  module (``smoothing``, ``consistency``, ``relativity``); the plain-regression baseline is ``α = 1`` with
  neither ``L_c`` nor ``L_r``.
* :class:`ClassicalIQA` — NIQE, BRISQUE, MSSIM / MS-SSIM (:mod:`.baselines`): nothing to train; their models
  are fitted on the standard planes at ``setup``.
* :class:`PlaneClassifierModule` — the plane classifier whose embedding can define the pseudo-labels (the
  paper's "pre-trained classification model").

Evaluation is shared by the two scorers (:class:`PairwiseQualityModule`): on ``(better, worse)`` pairs the
pairwise accuracy ``T / (T + F)`` overall and per plane (a DDP-safe torchmetrics Metric), the fraction of the
better images whose score drops at every step of increasing Gaussian blur ("blur monotonicity"), and for
CRLUIQA the Spearman correlation of the scores with the pseudo-labels and the accuracy of the pseudo-labels
themselves on the same pairs. ``predict`` returns ``image`` (the manifest path), ``plane`` and ``score``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import SpearmanCorrCoef

from datamodules.images import ImageDataModule
from lightning_modules.common.pairwise import PairwiseAccuracy, blur_monotonicity
from lightning_modules.crl_uiqa.baselines import BRISQUE, NIQE, full_reference_scores
from lightning_modules.crl_uiqa.labelling import (
    DatasetPseudoLabels,
    PseudoLabelSpec,
    build_embedding_model,
    dataset_pseudo_labels,
)
from lightning_modules.crl_uiqa.losses import crl_loss
from lightning_modules.crl_uiqa.nets import PlaneClassifier, QualityScorer
from lightning_modules.crl_uiqa.views import BLUR_KINDS, strong_view, weak_view

log = logging.getLogger("sonolab.crl_uiqa")

__all__ = ["CRLUIQA", "ClassicalIQA", "PairwiseQualityModule", "PlaneClassifierModule"]

STAGES = ("val", "test")


def _image_datamodule(module: LightningModule) -> ImageDataModule:
    """The trainer's DataModule, which must serve images, the standard set and pairs."""
    trainer = module._trainer
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    if not isinstance(dm, ImageDataModule):
        raise TypeError(
            f"{type(module).__name__} needs an ImageDataModule (data.class_path: "
            f"datamodules.images.ImageDataModule), got {type(dm).__name__}"
        )
    return dm


def _check_levels(levels: Sequence[float]) -> list[float]:
    out = [float(v) for v in levels]
    if len(out) < 2 or any(b <= a for a, b in itertools.pairwise(out)) or out[0] < 0:
        raise ValueError(
            f"blur_levels must be >= 2 increasing non-negative Gaussian σ values, got {list(levels)}"
        )
    return out


class PairwiseQualityModule(LightningModule):
    """A quality scorer evaluated on (better, worse) pairs; subclasses implement :meth:`score`.

    Args:
        planes: planes counted separately by the pairwise accuracy (default: the DataModule's classes).
        blur_levels: Gaussian σ in pixels (at the model's input size) of the blur-monotonicity check; the
            first is usually 0 (the image itself).
    """

    def __init__(self, planes: list[str] | None = None, blur_levels: Sequence[float] = (0.0, 1.0, 2.0, 3.0)):
        super().__init__()
        self.planes = list(planes) if planes is not None else None
        self.blur_levels = _check_levels(blur_levels)
        self.pairwise = nn.ModuleDict()
        self.monotonic = nn.ModuleDict({s: MeanMetric() for s in STAGES})

    # ------------------------------------------------------------------ to implement
    def score(self, images: torch.Tensor, planes: Sequence[str] | None = None) -> torch.Tensor:
        """Quality score per image (``B`` float32, higher = better)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = _image_datamodule(self)
        if dm.standard_dataset is None:
            dm.setup(stage)
        self.init_metrics(self.planes or list(dm.classes))

    def init_metrics(self, planes: Sequence[str]) -> None:
        """Create the per-plane metrics once (``setup`` does it with the DataModule's planes)."""
        if self.pairwise:
            return
        self.planes = list(planes)
        for s in STAGES:
            self.pairwise[s] = PairwiseAccuracy(self.planes)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        if "better" not in batch:
            raise KeyError(
                f"{type(self).__name__} evaluates (better, worse) pairs: set data.init_args.eval_on=pairs "
                f"(got batch keys {sorted(batch)})"
            )
        planes = list(batch["plane"])
        better = self.score(batch["better"], planes)
        worse = self.score(batch["worse"], planes)
        self.pairwise[stage].update(better, worse, planes)
        fraction = blur_monotonicity(lambda x: self.score(x, planes), batch["better"], self.blur_levels)
        self.monotonic[stage].update(torch.tensor(fraction, device=self.device), weight=len(planes))
        self.extra_eval(batch, stage, better, worse)

    def extra_eval(
        self, batch: dict[str, Any], stage: str, better: torch.Tensor, worse: torch.Tensor
    ) -> None:
        """Hook for further per-batch evaluation (CRLUIQA: pseudo-label agreement)."""

    def _eval_epoch_end(self, stage: str) -> None:
        metric = self.pairwise[stage]
        accuracy = metric.compute()
        values = {f"{stage}/pairwise_acc": accuracy["overall"]}
        for key, value in accuracy.items():
            if key.startswith("plane/"):
                values[f"{stage}/pairwise_acc/{key[len('plane/') :]}"] = value
        values[f"{stage}/blur_monotonicity"] = self.monotonic[stage].compute()
        self.log_dict({k: v.float() for k, v in values.items()}, sync_dist=True)
        metric.reset()
        self.monotonic[stage].reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """One row per image: ``image`` (its path in images.csv), ``plane``, ``score``."""
        planes = list(batch["plane"])
        return {
            "image": list(batch["image_id"]),
            "plane": planes,
            "score": self.score(batch["image"], planes),
        }


class CRLUIQA(PairwiseQualityModule):
    """CRL-UIQA: a scorer regressing pseudo-labels with weak-view consistency and strong-view relativity.

    Args:
        image_size, in_channels: linked from the DataModule.
        backbone, pretrained_path, proj_dim, dropout: the scorer (:class:`~.nets.QualityScorer`);
            ``pretrained_path`` may be a PlaneClassifierModule checkpoint (the paper starts from the detector
            trained on the anatomy).
        init_from_embedding: start the scorer's backbone from the pseudo-label embedding network (its seeded
            random weights, or the weights file / classifier checkpoint): the paper adds the scoring branch to
            the pre-trained backbone. Needs ``embedding_backbone == backbone`` and no ``pretrained_path``.
        alpha, theta, beta: weights of ``L_d``, ``L_c``, ``L_r`` (paper: 0.05, 0.1, 0.1).
        consistency, relativity: include ``L_c`` (weak view) / ``L_r`` (strong view); the views not used are
            not computed.
        detach_source: stop the gradient through the source score in ``L_c`` / ``L_r`` (not the paper's).
        hflip_p, vflip_p, max_angle, right_angles: the weak view (:func:`~.views.weak_view`).
        eps_range, blur_kinds, sigma_per_eps, length_per_eps: the strong view (:func:`~.views.strong_view`):
            ε ~ U(eps_range) is both the blur degree and the hinge margin; σ and streak length are in pixels
            at the model's input size.
        embedding, embedding_backbone, embedding_seed, k, smoothing, per_plane, normalize_embeddings,
            embedding_zero_init_last: the pseudo-labels (:class:`~.labelling.PseudoLabelSpec`); ``embedding``
            is ``"random"`` or a local weights file / PlaneClassifierModule checkpoint.
        pseudo_label_file: where the labels are stored (default: the cache, keyed by their parameters).
        lr, momentum, nesterov, weight_decay: SGD (paper: lr 1e-3; the rest are YOLOv5's defaults, which the
            paper keeps).
        final_lr_ratio: the learning rate decays linearly over ``max_epochs`` to ``lr · final_lr_ratio``
            (YOLOv5's default schedule); 1 keeps it constant.
        planes, blur_levels: evaluation, see :class:`PairwiseQualityModule`.
    """

    def __init__(
        self,
        image_size: int | list[int] = 128,
        in_channels: int = 1,
        backbone: str = "resnet18",
        pretrained_path: str | None = None,
        init_from_embedding: bool = False,
        proj_dim: int = 256,
        dropout: float = 0.0,
        alpha: float = 0.05,
        theta: float = 0.1,
        beta: float = 0.1,
        consistency: bool = True,
        relativity: bool = True,
        detach_source: bool = False,
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        max_angle: float = 30.0,
        right_angles: bool = False,
        eps_range: tuple[float, float] = (0.05, 0.3),
        blur_kinds: list[str] | None = None,
        sigma_per_eps: float = 10.0,
        length_per_eps: float = 30.0,
        embedding: str = "random",
        embedding_backbone: str = "resnet18",
        embedding_seed: int = 0,
        k: int = 5,
        smoothing: bool = True,
        per_plane: bool = True,
        normalize_embeddings: bool = False,
        embedding_zero_init_last: bool = False,
        pseudo_label_file: str | None = None,
        lr: float = 1e-3,
        momentum: float = 0.937,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        final_lr_ratio: float = 0.01,
        planes: list[str] | None = None,
        blur_levels: list[float] | None = None,
    ) -> None:
        super().__init__(planes, blur_levels if blur_levels is not None else (0.0, 1.0, 2.0, 3.0))
        self.save_hyperparameters()
        for name, value in (("alpha", alpha), ("theta", theta), ("beta", beta), ("lr", lr)):
            if value < 0:
                raise ValueError(f"model.init_args.{name} must be >= 0, got {value}")
        if not 0 < final_lr_ratio <= 1:
            raise ValueError(f"model.init_args.final_lr_ratio must be in (0, 1], got {final_lr_ratio}")
        eps_lo, eps_hi = (float(v) for v in eps_range)
        if not 0.0 <= eps_lo <= eps_hi < 1.0:
            raise ValueError(
                f"model.init_args.eps_range must satisfy 0 <= lo <= hi < 1, got {list(eps_range)}"
            )
        self.eps_range = (eps_lo, eps_hi)
        self.blur_kinds = tuple(blur_kinds) if blur_kinds is not None else BLUR_KINDS
        unknown = [k_ for k_ in self.blur_kinds if k_ not in BLUR_KINDS]
        if unknown or not self.blur_kinds:
            raise ValueError(
                f"model.init_args.blur_kinds must be a non-empty subset of {BLUR_KINDS}, got {blur_kinds}"
            )
        self.spec = PseudoLabelSpec(
            embedding=embedding,
            backbone=embedding_backbone,
            seed=embedding_seed,
            k=k,
            smoothing=smoothing,
            per_plane=per_plane,
            normalize=normalize_embeddings,
            zero_init_last=embedding_zero_init_last,
        )
        if init_from_embedding and pretrained_path:
            raise ValueError("give model.init_args.pretrained_path or init_from_embedding: true, not both")
        self.scorer = QualityScorer(backbone, in_channels, pretrained_path, proj_dim, dropout)
        if init_from_embedding:
            embedder, name = build_embedding_model(self.spec, in_channels)
            if name != backbone:
                raise ValueError(
                    f"init_from_embedding: the embedding network is a {name}, the scorer a {backbone} "
                    "(set model.init_args.backbone to match)"
                )
            self.scorer.backbone.load_state_dict(embedder.state_dict())
        self.pseudo: DatasetPseudoLabels | None = None
        self.train_targets: torch.Tensor | None = None
        self.train_spearman = SpearmanCorrCoef()
        self.pseudo_spearman = nn.ModuleDict({s: SpearmanCorrCoef() for s in STAGES})
        self.pseudo_pairwise = nn.ModuleDict()

    # ------------------------------------------------------------------ scoring
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Quality score in ``[0, 1]`` per image (``B`` float32)."""
        return self.scorer(images)

    def score(self, images: torch.Tensor, planes: Sequence[str] | None = None) -> torch.Tensor:
        return self.scorer(images)

    # ------------------------------------------------------------------ pseudo-labels
    def init_metrics(self, planes: Sequence[str]) -> None:
        super().init_metrics(planes)
        if not self.pseudo_pairwise:
            for s in STAGES:
                self.pseudo_pairwise[s] = PairwiseAccuracy(self.planes)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "predict" or self.pseudo is not None:
            return
        dm = _image_datamodule(self)
        trainer = self.trainer
        # Rank 0 builds (or reads) the labels on its accelerator; every other rank receives the same object.
        result = None
        if trainer.is_global_zero:
            result = dataset_pseudo_labels(
                dm, self.spec, trainer.strategy.root_device, self.hparams.pseudo_label_file, progress=True
            )
        self.pseudo = trainer.strategy.broadcast(result, src=0)
        train_ids = [r.image_id for r in dm.datasets["train"].records]
        self.train_targets = self.pseudo.lookup(train_ids)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record which pseudo-labels trained these weights (file and parameters, without the id list)."""
        if self.pseudo is not None:
            params = {k: v for k, v in self.pseudo.params.items() if k != "train_ids"}
            checkpoint["crl_uiqa_pseudo_labels"] = {"file": str(self.pseudo.path), "params": params}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.train_targets is None:
            raise RuntimeError("CRLUIQA has no pseudo-labels: setup('fit') did not run")
        images = batch["image"]
        n = images.shape[0]
        q = self.train_targets.to(images.device)[batch["index"]]
        views = [images]
        eps = None
        if self.hparams.consistency:
            views.append(
                weak_view(
                    images,
                    hflip_p=self.hparams.hflip_p,
                    vflip_p=self.hparams.vflip_p,
                    max_angle=self.hparams.max_angle,
                    right_angles=self.hparams.right_angles,
                )
            )
        if self.hparams.relativity:
            strong, eps = strong_view(
                images,
                self.eps_range,
                kinds=self.blur_kinds,
                sigma_per_eps=self.hparams.sigma_per_eps,
                length_per_eps=self.hparams.length_per_eps,
            )
            views.append(strong)
        # One forward over the stacked views: batch norm sees the source and its blurred copies together,
        # so the blur's loss of contrast is not normalised away within a view.
        scores = self.scorer(torch.cat(views))
        p = scores[:n]
        p_weak = scores[n : 2 * n] if self.hparams.consistency else None
        p_strong = scores[-n:] if self.hparams.relativity else None
        loss, parts = crl_loss(
            p,
            p_weak,
            p_strong,
            q,
            eps,
            self.hparams.alpha,
            self.hparams.theta,
            self.hparams.beta,
            self.hparams.detach_source,
        )
        self.log(
            "train/loss",
            parts["total"],
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        for key, name in (("distribution", "loss_d"), ("consistency", "loss_c"), ("relativity", "loss_r")):
            self.log(f"train/{name}", parts[key], on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.train_spearman.update(p.detach().float(), q.float())
        self.log("train/spearman_pseudo", self.train_spearman, on_step=False, on_epoch=True, batch_size=n)
        return loss

    # ------------------------------------------------------------------ evaluation extras
    def extra_eval(
        self, batch: dict[str, Any], stage: str, better: torch.Tensor, worse: torch.Tensor
    ) -> None:
        if self.pseudo is None:
            return
        q_better = self.pseudo.lookup(list(batch["better_id"])).to(better.device)
        q_worse = self.pseudo.lookup(list(batch["worse_id"])).to(better.device)
        self.pseudo_pairwise[stage].update(q_better, q_worse, list(batch["plane"]))
        self.pseudo_spearman[stage].update(torch.cat([better, worse]).float(), torch.cat([q_better, q_worse]))

    def _eval_epoch_end(self, stage: str) -> None:
        super()._eval_epoch_end(stage)
        if self.pseudo is None:
            return
        values = {
            f"{stage}/pseudo_label_pairwise_acc": self.pseudo_pairwise[stage].compute()["overall"].float(),
            f"{stage}/spearman_pseudo": self.pseudo_spearman[stage].compute().float(),
        }
        self.log_dict(values, sync_dist=True)
        self.pseudo_pairwise[stage].reset()
        self.pseudo_spearman[stage].reset()

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.scorer.parameters(),
            lr=hp.lr,
            momentum=hp.momentum,
            nesterov=hp.nesterov and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        ratio = hp.final_lr_ratio

        def linear(epoch: int) -> float:
            if not epochs or epochs < 1:
                return 1.0
            return max(ratio, 1.0 - (1.0 - ratio) * epoch / epochs)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


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
        dm = _image_datamodule(self)
        std = dm.standard_dataset
        if std is None or len(std) == 0:
            raise ValueError(
                f"{self.hparams.method}: the dataset {dm.root} has no role=standard images to fit on"
            )
        items = [std[i] for i in range(len(std))]
        self.fit_references(torch.stack([it["image"] for it in items]), [it["plane"] for it in items])
        log.info("%s fitted on %d standard-plane images", self.hparams.method, len(items))

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


class PlaneClassifierModule(LightningModule):
    """Plane classifier trained on the plane labels of images.csv; its backbone is an embedding for pseudo-labels.

    Use with ``ImageDataModule(eval_on="images")`` (val/test batches are images with plane labels).

    Args:
        image_size, in_channels: linked from the DataModule.
        backbone, pretrained_path, dropout: the network (:class:`~.nets.PlaneClassifier`).
        planes: class names in label order (default: the DataModule's classes, stored in the checkpoint).
        lr, weight_decay: AdamW, cosine-annealed over ``max_epochs``.
        augment: random flips and rotations (the weak view) during training.
        max_angle: rotation range of the augmentation, degrees.
    """

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
        dm = _image_datamodule(self)
        if dm.standard_dataset is None:
            dm.setup(stage)
        if self.model is None:
            self._build(list(dm.classes))
        elif list(self.hparams["planes"]) != list(dm.classes):
            raise ValueError(
                f"the classifier's planes {self.hparams['planes']} differ from the DataModule's classes {dm.classes}"
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
            metric = self.metrics[f"{stage}_{name}"]
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

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        epochs = self.trainer.max_epochs if self._trainer is not None and self.trainer.max_epochs else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
