"""CRL-UIQA (Guo et al., MICCAI 2024): the quality scorer trained on pseudo-labels with score consistency
(weak views) and relativity (strong views): ``L = α·L_d + θ·L_c + β·L_r``.

The Table 1 ablations are switches of the same module (``smoothing`` is a pseudo-label parameter of the
data; ``consistency``, ``relativity`` here); the plain-regression baseline is ``α = 1`` with neither ``L_c``
nor ``L_r``. The pseudo-labels are a data product (:mod:`datamodules.pseudo_labels`): the training batches
carry them as ``pseudo_label``, the evaluation pairs as ``better_pseudo_label`` / ``worse_pseudo_label``.
Evaluation (:class:`~.evaluation.PairwiseQualityModule`) adds, for CRLUIQA, the Spearman correlation of the
scores with the pseudo-labels and the accuracy of the pseudo-labels themselves on the same pairs.

The other modules of the paper's tables: :class:`~.classical.ClassicalIQA` (NIQE, BRISQUE, MSSIM) and
:class:`~.plane_classifier.PlaneClassifierModule` (an embedding for the pseudo-labels); they are re-exported
here so that configs and run folders naming ``lightning_modules.crl_uiqa.module.<class>`` keep working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import nn
from torchmetrics.regression import SpearmanCorrCoef

from lightning_modules.common.pairwise import PairwiseAccuracy
from lightning_modules.crl_uiqa.classical import ClassicalIQA
from lightning_modules.crl_uiqa.embedding import build_embedding_model
from lightning_modules.crl_uiqa.evaluation import STAGES, PairwiseQualityModule
from lightning_modules.crl_uiqa.losses import crl_loss
from lightning_modules.crl_uiqa.nets import QualityScorer
from lightning_modules.crl_uiqa.plane_classifier import PlaneClassifierModule
from lightning_modules.crl_uiqa.views import BLUR_KINDS, strong_view, weak_view

__all__ = ["CRLUIQA", "ClassicalIQA", "PairwiseQualityModule", "PlaneClassifierModule"]


class CRLUIQA(PairwiseQualityModule):
    """CRL-UIQA: a scorer regressing pseudo-labels with weak-view consistency and strong-view relativity.

    Args:
        image_size, in_channels: linked from the DataModule.
        backbone, pretrained_path, proj_dim, dropout: the scorer (:class:`~.nets.QualityScorer`);
            ``pretrained_path`` may be a PlaneClassifierModule checkpoint (the paper starts from the detector
            trained on the anatomy).
        init_from_embedding: start the scorer's backbone from the pseudo-label embedding network (its seeded
            random or ImageNet weights, the plane-classifier checkpoint's backbone, or a DualRepSSL
            checkpoint's image encoder, which then becomes the scorer's backbone): the paper adds the scoring
            branch to the pre-trained backbone. Needs the embedding's backbone to be ``backbone`` and no ``pretrained_path``.
        embedding, embedding_backbone, embedding_seed, embedding_zero_init_last: that network
            (:func:`~.embedding.build_embedding_model`); used only with ``init_from_embedding``. The configs
            take them from ``data.init_args.pseudo_labels`` (``${...}``), so the scorer starts from the very
            network that made the labels.
        alpha, theta, beta: weights of ``L_d``, ``L_c``, ``L_r`` (paper: 0.05, 0.1, 0.1).
        consistency, relativity: include ``L_c`` (weak view) / ``L_r`` (strong view); the views not used are
            not computed.
        detach_source: stop the gradient through the source score in ``L_c`` / ``L_r`` (not the paper's).
        hflip_p, vflip_p, max_angle, right_angles: the weak view (:func:`~.views.weak_view`).
        eps_range, blur_kinds, sigma_per_eps, length_per_eps: the strong view (:func:`~.views.strong_view`):
            ε ~ U(eps_range) is both the blur degree and the hinge margin; σ and streak length are in pixels
            at the model's input size.
        lr, momentum, nesterov, weight_decay: SGD (paper: lr 1e-3; the rest are YOLOv5's defaults, which the
            paper keeps).
        final_lr_ratio: the learning rate decays linearly over ``max_epochs`` to ``lr · final_lr_ratio``
            (YOLOv5's default schedule, as torch's ``LinearLR``); 1 keeps it constant.
        planes, blur_levels: evaluation, see :class:`PairwiseQualityModule`.
    """

    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)

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
        embedding_zero_init_last: bool = False,
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
        if init_from_embedding and pretrained_path:
            raise ValueError("give model.init_args.pretrained_path or init_from_embedding: true, not both")
        self.scorer = QualityScorer(backbone, in_channels, pretrained_path, proj_dim, dropout)
        if init_from_embedding:
            emb = build_embedding_model(
                embedding, embedding_backbone, embedding_seed, in_channels, embedding_zero_init_last
            )
            if emb.backbone != backbone:
                raise ValueError(
                    f"init_from_embedding: the embedding network is a {emb.backbone}, the scorer a {backbone} "
                    "(set model.init_args.backbone to match)"
                )
            if type(emb.net) is type(self.scorer.backbone):
                self.scorer.backbone.load_state_dict(emb.net.state_dict())
            else:  # another implementation of the architecture (DualRepSSL's torchvision encoder): use it
                self.scorer.backbone = emb.net
        self._pseudo_seen: set[str] = set()
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

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "pseudo_label" not in batch:
            raise KeyError(
                "CRLUIQA trains on pseudo-labels: set data.init_args.pseudo_labels (configs/crl_uiqa.yaml does) "
                f"so the training batches carry 'pseudo_label' (got batch keys {sorted(batch)})"
            )
        images = batch["image"]
        n = images.shape[0]
        q = batch["pseudo_label"].to(images.device, torch.float32)
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
        if "better_pseudo_label" not in batch:
            return
        q_better = batch["better_pseudo_label"].to(better.device, torch.float32)
        q_worse = batch["worse_pseudo_label"].to(better.device, torch.float32)
        self._pseudo_seen.add(stage)
        pairwise, spearman = self._pseudo_metrics(stage)
        pairwise.update(q_better, q_worse, list(batch["plane"]))
        spearman.update(torch.cat([better, worse]).float(), torch.cat([q_better, q_worse]))

    def _pseudo_metrics(self, stage: str) -> tuple[PairwiseAccuracy, SpearmanCorrCoef]:
        return (
            cast(PairwiseAccuracy, self.pseudo_pairwise[stage]),
            cast(SpearmanCorrCoef, self.pseudo_spearman[stage]),
        )

    def _eval_epoch_end(self, stage: str) -> None:
        super()._eval_epoch_end(stage)
        if stage not in self._pseudo_seen:
            return
        self._pseudo_seen.discard(stage)
        pairwise, spearman = self._pseudo_metrics(stage)
        values = {
            f"{stage}/pseudo_label_pairwise_acc": pairwise.compute()["overall"].float(),
            f"{stage}/spearman_pseudo": spearman.compute().float(),
        }
        self.log_dict(values, sync_dist=True)
        pairwise.reset()
        spearman.reset()

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self) -> OptimizerLRScheduler:
        hp = self.hparams
        optimizer = torch.optim.SGD(
            self.scorer.parameters(),
            lr=hp.lr,
            momentum=hp.momentum,
            nesterov=hp.nesterov and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        epochs = self.trainer.max_epochs if self._trainer is not None else None
        if not epochs or epochs < 1:  # no fixed length to decay over: a constant learning rate
            return {"optimizer": optimizer}
        scheduler = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0, end_factor=hp.final_lr_ratio, total_iters=epochs
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
