"""LightningModules of VideoQualityGAN (Zhao et al., MICCAI 2022) and of its zoom-in pretraining.

``VideoQualityGAN``: bi-directional adversarial reconstruction between video and feature space, trained on
high-quality clips only, scored by the feature reconstruction error (see ``README.md`` beside this file).
``ZoomInPretrainer``: trains the zoom-in spatial transformer on approximate boxes (``boxes.csv``); its
checkpoint is what ``VideoQualityGAN(zoom_checkpoint=...)`` loads and freezes.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.optim import Adam
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from .base import QualityAnomalyModule, encode_flow, flow_channels
from .losses import (
    box_iou,
    box_loss,
    feature_cycle_loss,
    feature_reconstruction_error,
    gaze_loss,
    lsgan_loss,
    pixel_scores,
    video_reconstruction_loss,
)
from .nets import FeatureDiscriminator, VideoDecoder, VideoDiscriminator, VideoEncoder, init_weights
from .pool import HistoryPool
from .schedule import linear_decay_schedule
from .zoom import ZoomIn, box_from_theta, theta_from_box

__all__ = ["ModelInputs", "VideoQualityGAN", "ZoomInPretrainer"]


class ModelInputs(TypedDict):
    """What :meth:`VideoQualityGAN.inputs` makes of a batch: the zoomed clip, the encoded flow and (for
    training with gaze) the zoomed gaze maps and their validity; the absent ones are None."""

    video: Tensor
    flow: Tensor | None
    gaze: Tensor | None
    gaze_valid: Tensor | None


GAZE_LOSSES = ("l1", "mse")


def fused_adam(params: list[torch.nn.Parameter], **kwargs: Any) -> Adam:
    """Adam with PyTorch's fused kernel where every parameter is on a device that has one (CPU, CUDA):
    one multi-tensor kernel per step instead of a Python loop of ~10 small ops per parameter tensor (a
    fixed per-step cost). Same update rule (values equal to float rounding; tests/bench checks the step)."""
    fused = bool(params) and {p.device.type for p in params} <= {"cpu", "cuda"}
    return Adam(params, fused=True if fused else None, **kwargs)


class VideoQualityGAN(QualityAnomalyModule):
    """Unsupervised video clinical-quality assessment: G_e, G_d, G_d', D_V, D_F trained adversarially.

    Generator step (E = G_e, G = G_d, z ~ N(0, I), x the zoomed video, f its flow)::

        w_adv · [LSGAN(D_F(E(x⊕f)), real) + LSGAN(D_V(G(z)), real)]
        + w_rec · [L1(G(E(x⊕f)), x) + 1 − SSIM(G(E(x⊕f)), x)]
        + w_rec · L1(E(G(z)⊕f), z)
        + w_gaze · gaze_loss(G_d'(E(x⊕f)), gaze)           (frames with fixations only)

    Discriminator step: ``0.5·(LSGAN(D(real), real) + LSGAN(D(fake), fake))`` for D_V (real = x, fake =
    G(z) from a history pool) and D_F (real = fresh N(0, I) features, fake = E(x⊕f) from a history pool).
    Scores: ``feature`` = mean |E(x⊕f) − E(G(E(x⊕f))⊕f)| (the paper's), ``l1`` = mean |G(E(x⊕f)) − x|,
    ``ssim`` = 1 − mean SSIM(G(E(x⊕f)), x).

    Args:
        image_size, in_channels: linked from the DataModule.
        num_frames: T of the clips (``${data.init_args.num_frames}`` in the configs); checked at setup.
        use_flow: concatenate optical flow to the video (needs ``flow`` in the data modalities).
        flow_encoding: ``"raw"`` (2 channels, tanh(flow / (flow_scale·W))) or ``"color"`` (3 channels,
            the colour-coded flow image of the official code). ``flow_scale``: see ``encode_flow``. With
            ``color`` and ``use_zoom: false``, put ``flow_color`` in the data modalities (instead of
            ``flow``): the image is then computed once in the clip cache, not at every step.
        w_gaze: gaze-loss weight; > 0 builds the gaze decoder G_d' (needs ``gaze`` in the modalities),
            0 trains without gaze (the video-only and with-flow variants).
        gaze_loss: ``"l1"`` (the paper, Eq. 4) or ``"mse"`` (the official code).
        ngf, max_channels, feature_dim, ndf, d_layers, norm: network sizes (defaults as published).
        w_adv, w_rec: loss weights (1, 10 as published).
        lr, beta1, beta2: Adam for both optimisers (2e-4, 0.5, 0.999).
        n_constant_epochs, n_decay_epochs: LR constant, then linear decay to 0 (100 + 100 published);
            the schedulers are stepped once per training epoch.
        pool_size: history pool of fakes for each discriminator (50).
        init_std: N(0, init_std) weight init (0.02).
        use_zoom, zoom_checkpoint, zoom_s_min, zoom_localizer_size, zoom_frame_index, normal_label,
            score: see :class:`~lightning_modules.vqa_gan.base.QualityAnomalyModule`.
    """

    score_names = ("feature", "l1", "ssim")
    # The G step leaves the discriminators without gradients and the D step the generator, so DDP must find
    # the unused parameters: the CLI runs `--trainer.strategy=ddp` as Lightning's registered
    # `ddp_find_unused_parameters_true` for every module that says so here.
    ddp_find_unused_parameters = True

    def __init__(
        self,
        image_size: int | list[int] = 256,
        in_channels: int = 1,
        num_frames: int = 8,
        use_flow: bool = True,
        flow_encoding: str = "raw",
        flow_scale: float = 0.03,
        w_gaze: float = 0.1,
        gaze_loss: str = "l1",
        ngf: int = 32,
        max_channels: int = 256,
        feature_dim: int = 1024,
        ndf: int = 64,
        d_layers: int | None = None,
        norm: str = "instance",
        w_adv: float = 1.0,
        w_rec: float = 10.0,
        lr: float = 2e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        n_constant_epochs: int = 100,
        n_decay_epochs: int = 100,
        pool_size: int = 50,
        init_std: float = 0.02,
        score: str = "feature",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, in_channels=in_channels, score=score, **kwargs)
        self.save_hyperparameters()
        self.automatic_optimization = False
        if w_gaze < 0 or w_adv < 0 or w_rec < 0:
            raise ValueError("loss weights w_adv, w_rec, w_gaze must be >= 0")
        if gaze_loss not in GAZE_LOSSES:
            raise ValueError(f"model.init_args.gaze_loss must be one of {GAZE_LOSSES}, got {gaze_loss!r}")
        if flow_scale <= 0:
            raise ValueError(f"model.init_args.flow_scale must be > 0, got {flow_scale}")
        self.use_flow = bool(use_flow)
        self.flow_encoding = flow_encoding
        self.flow_scale = float(flow_scale)
        self.use_gaze = w_gaze > 0
        self.w_gaze = float(w_gaze)
        self.gaze_loss_kind = gaze_loss
        self.num_frames = int(num_frames)
        self.model_frames = self.encoder_frames()
        self.feature_dim = int(feature_dim)
        sizes: dict[str, Any] = dict(
            num_frames=self.model_frames,
            image_size=self.frame_size,
            ngf=ngf,
            max_channels=max_channels,
            feature_dim=feature_dim,
            norm=norm,
        )
        self.encoder = VideoEncoder(
            video_channels=in_channels, flow_channels=flow_channels(self.use_flow, flow_encoding), **sizes
        )
        self.decoder = VideoDecoder(out_channels=in_channels, output="tanh", **sizes)
        self.gaze_decoder = VideoDecoder(out_channels=1, output="softmax", **sizes) if self.use_gaze else None
        self.d_video = VideoDiscriminator(
            in_channels=in_channels,
            num_frames=self.model_frames,
            image_size=self.frame_size,
            ndf=ndf,
            n_layers=d_layers,
            norm=norm,
        )
        self.d_feature = FeatureDiscriminator(feature_dim=feature_dim)
        for net in self.generator_nets() + self.discriminator_nets():
            init_weights(net, init_std)
        self.video_pool = HistoryPool(pool_size)
        self.feature_pool = HistoryPool(pool_size)

    # ------------------------------------------------------------------------------------ layout
    def encoder_frames(self) -> int:
        """Frames the networks see (the image baseline overrides this with 1)."""
        return self.num_frames

    def generator_nets(self) -> list[torch.nn.Module]:
        nets: list[torch.nn.Module] = [self.encoder, self.decoder]
        return [*nets, self.gaze_decoder] if self.gaze_decoder is not None else nets

    def discriminator_nets(self) -> list[torch.nn.Module]:
        return [self.d_video, self.d_feature]

    def check_data(self, datamodule: Any) -> None:
        frames = getattr(datamodule, "num_frames", None)
        if frames is not None and int(frames) != self.num_frames:
            raise ValueError(
                f"model.init_args.num_frames={self.num_frames} but data.init_args.num_frames={frames}: "
                "the configs interpolate the model's from the data's (the final merged config), so a value given "
                "for model.init_args.num_frames overrides it: drop it or set both"
            )
        modalities = set(getattr(datamodule, "modalities", None) or [])
        if modalities:
            needed = {"video"} | ({"flow"} if self.use_flow else set())
            if self.uses_cached_color_flow() and "flow_color" in modalities:
                needed.discard("flow")
            missing = needed - modalities
            if missing:
                raise ValueError(
                    f"{type(self).__name__} needs data.init_args.modalities to include {sorted(missing)} "
                    f"(use_flow={self.use_flow}); got {sorted(modalities)}"
                )
            if self.use_gaze and "gaze" not in modalities and self.trainer.state.fn == "fit":
                raise ValueError(
                    f"w_gaze={self.w_gaze} > 0 trains a gaze decoder: add 'gaze' to "
                    f"data.init_args.modalities (got {sorted(modalities)}) or set model.init_args.w_gaze=0"
                )

    def uses_cached_color_flow(self) -> bool:
        """``flow_encoding: color`` without the zoom-in can take the cache's colour flow image (the data
        modality ``flow_color``, computed once) instead of colouring the flow at every step. With the
        zoom-in it cannot: the colour image is normalised by each frame's largest vector, which must be
        that of the zoomed flow, so the raw flow is warped and coloured per step."""
        return self.use_flow and self.flow_encoding == "color" and not self.use_zoom

    def inputs(self, batch: dict[str, Any], with_gaze: bool) -> ModelInputs:
        """Zoomed video, encoded flow and (for training) zoomed gaze maps with their validity."""
        video = batch["video"]
        cached = batch.get("flow_color") if self.uses_cached_color_flow() else None
        flow = None
        if self.use_flow and cached is None:
            flow = self.require(batch, "flow", "use_flow is true")
        gaze = valid = None
        if with_gaze and self.use_gaze:
            gaze = self.require(batch, "gaze", f"w_gaze={self.w_gaze} > 0")
            valid = batch.get("gaze_valid")
        video, flow, gaze, valid = self.zoom_inputs(video, flow, gaze, valid)
        if cached is not None:
            encoded = cached.to(video.dtype)  # equals encode_flow(flow, "color"): tests/data/test_flow.py
        else:
            encoded = (
                None
                if flow is None
                else encode_flow(flow, self.flow_encoding, self.flow_scale).to(video.dtype)
            )
        return {"video": video, "flow": encoded, "gaze": gaze, "gaze_valid": valid}

    # ---------------------------------------------------------------------------------- training
    def configure_optimizers(self) -> tuple[list[Adam], list[LRScheduler]]:
        betas = (self.hparams.beta1, self.hparams.beta2)
        gen = [p for net in self.generator_nets() for p in net.parameters()]
        dis = [p for net in self.discriminator_nets() for p in net.parameters()]
        opt_g = fused_adam(gen, lr=self.hparams.lr, betas=betas)
        opt_d = fused_adam(dis, lr=self.hparams.lr, betas=betas)
        epochs = (self.hparams.n_constant_epochs, self.hparams.n_decay_epochs)
        return [opt_g, opt_d], [linear_decay_schedule(opt_g, *epochs), linear_decay_schedule(opt_d, *epochs)]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        planned = self.hparams.n_constant_epochs + self.hparams.n_decay_epochs
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs > 0 and max_epochs != planned:
            rank_zero_warn(
                f"trainer.max_epochs={max_epochs} but the LR schedule spans n_constant_epochs + "
                f"n_decay_epochs = {planned} epochs: the LR "
                + ("never reaches 0" if max_epochs < planned else f"is 0 after epoch {planned}")
            )

    def generator_losses(self, x: Tensor, flow: Tensor | None, gaze: Tensor | None, valid: Tensor | None):
        """All generator terms; returns ``(total, parts, fake_video, feature)`` (fakes for the D step)."""
        hp = self.hparams
        feature = self.encoder(x, flow)
        recon = self.decoder(feature)
        z = torch.randn(x.shape[0], self.feature_dim, device=x.device)
        fake_video = self.decoder(z)
        z_cycle = self.encoder(fake_video, flow)
        adv = lsgan_loss(self.d_feature(feature), True) + lsgan_loss(self.d_video(fake_video), True)
        l1, ssim = video_reconstruction_loss(recon, x)
        cycle = feature_cycle_loss(z_cycle, z)
        total = hp.w_adv * adv + hp.w_rec * (l1 + ssim) + hp.w_rec * cycle
        parts = {"adv": adv, "l1": l1, "ssim": ssim, "cycle": cycle}
        if self.gaze_decoder is not None and gaze is not None:
            g = gaze_loss(self.gaze_decoder(feature), gaze, kind=self.gaze_loss_kind, valid=valid)
            total = total + self.w_gaze * g
            parts["gaze"] = g
        return total, parts, fake_video, feature

    def discriminator_losses(self, x: Tensor, fake_video: Tensor, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss_d_video, loss_d_feature)`` with fakes drawn through the history pools."""
        fake_video = self.video_pool.query(fake_video.detach())
        fake_feature = self.feature_pool.query(feature.detach())
        real_feature = torch.randn_like(fake_feature)
        d_video = 0.5 * (lsgan_loss(self.d_video(x), True) + lsgan_loss(self.d_video(fake_video), False))
        d_feature = 0.5 * (
            lsgan_loss(self.d_feature(real_feature), True) + lsgan_loss(self.d_feature(fake_feature), False)
        )
        return d_video, d_feature

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """One G step then one D step; returns every loss term (detached), e.g. for the non-finite guard."""
        opt_g, opt_d = cast(list[LightningOptimizer], self.optimizers())
        inp = self.inputs(batch, with_gaze=True)
        x = inp["video"]
        # generator step: D parameters are frozen by toggle_optimizer, gradients flow through D to G
        self.toggle_optimizer(opt_g)
        loss_g, parts, fake_video, feature = self.generator_losses(
            x, inp["flow"], inp["gaze"], inp["gaze_valid"]
        )
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        # discriminator step on detached fakes
        self.toggle_optimizer(opt_d)
        d_video, d_feature = self.discriminator_losses(x, fake_video, feature)
        loss_d = d_video + d_feature
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        logs = {f"train/{k}": v.detach() for k, v in parts.items()}
        logs.update(
            {
                "train/g_loss": loss_g.detach(),
                "train/d_loss": loss_d.detach(),
                "train/d_video": d_video.detach(),
                "train/d_feature": d_feature.detach(),
            }
        )
        self.log_dict(logs, on_step=True, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        self.log(
            "train/g", loss_g.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0]
        )
        self.log(
            "train/d", loss_d.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0]
        )
        return logs

    def on_train_epoch_end(self) -> None:
        for scheduler in cast(list[LRScheduler], self.lr_schedulers()):
            scheduler.step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The fake-history pools change what D sees next: a resumed run needs them as they were."""
        checkpoint["history_pools"] = {
            "video": self.video_pool.state_dict(),
            "feature": self.feature_pool.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pools = checkpoint.get("history_pools")
        if pools is not None:
            self.video_pool.load_state_dict(pools["video"])
            self.feature_pool.load_state_dict(pools["feature"])

    # ------------------------------------------------------------------------------------ scores
    def scores_from_inputs(self, x: Tensor, flow: Tensor | None) -> dict[str, Tensor]:
        feature = self.encoder(x, flow)
        recon = self.decoder(feature)
        pixel = pixel_scores(recon, x)
        return {
            "feature": feature_reconstruction_error(feature, self.encoder(recon, flow)),
            "l1": pixel["l1"],
            "ssim": pixel["dssim"],
        }

    def score_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        inp = self.inputs(batch, with_gaze=False)
        return self.scores_from_inputs(inp["video"], inp["flow"])

    @torch.no_grad()
    def reconstruction_views(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """What the model sees and makes of a batch, B×C×T×H×W each: the zoomed ``input``, its
        ``reconstruction`` and, for a model with a gaze decoder, the predicted ``gaze_prediction`` next to
        the zoomed ``gaze`` target (when the batch has gaze). For figures (callbacks.vqa_media)."""
        inp = self.inputs(batch, with_gaze="gaze" in batch)
        feature = self.encoder(inp["video"], inp["flow"])
        views = {"input": inp["video"], "reconstruction": self.decoder(feature)}
        if self.gaze_decoder is not None:
            views["gaze_prediction"] = self.gaze_decoder(feature)
            if inp["gaze"] is not None:
                views["gaze"] = inp["gaze"]
        return views


class ZoomInPretrainer(LightningModule):
    """Pretrains the zoom-in spatial transformer (GoogLeNet localiser) on approximate boxes.

    Data: ``datamodules.boxes.BoxFrameDataModule`` (``image`` B×C×H×W in [-1, 1], ``box`` B×4 in [0, 1]).
    Loss: :func:`~lightning_modules.vqa_gan.losses.box_loss`, smooth-L1 between the predicted crop's
    corners and the crop the zoom can represent for the box (same centre, one scale = the box's longer
    side, clamped to [s_min, 1]). Metrics: ``iou`` = mean IoU of the predicted crop with that target crop
    (1 = perfect), ``iou_box`` = mean IoU with the raw box.

    Args:
        image_size, in_channels: linked from the DataModule; stored so the VQA model can check that its
            frames match what the localiser was trained on.
        s_min: smallest crop scale; localizer_size: resize frames for the localiser (None: as given).
        weights_path: optional local torchvision GoogLeNet state dict (ImageNet weights) to start from.
        lr, weight_decay: Adam.
        beta: smooth-L1 transition of the box loss.
    """

    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)

    def __init__(
        self,
        image_size: int | list[int] = 256,
        in_channels: int = 1,
        s_min: float = 0.25,
        localizer_size: int | None = None,
        weights_path: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        beta: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.zoom = ZoomIn(s_min=s_min, weights_path=weights_path, localizer_size=localizer_size)
        self.metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{name}": MeanMetric()
                for stage in ("val", "test")
                for name in ("loss", "iou", "iou_box")
            }
        )

    def _step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        image, box = batch["image"], batch["box"]
        theta = self.zoom.predict_theta(image)
        pred = box_from_theta(theta)
        target = box_from_theta(theta_from_box(box, s_min=self.zoom.s_min))
        return {
            "loss": box_loss(theta, box, square_target=True, beta=self.hparams.beta),
            "iou": box_iou(pred.detach(), target),
            "iou_box": box_iou(pred.detach(), box),
            "pred": pred.detach(),
        }

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self._step(batch)
        n = batch["box"].shape[0]
        self.log(
            "train/loss",
            out["loss"],
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        self.log("train/iou", out["iou"].mean(), on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        return out["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        out = self._step(batch)
        n = batch["box"].shape[0]
        self._metric(f"{stage}_loss").update(out["loss"].detach(), weight=n)
        self._metric(f"{stage}_iou").update(out["iou"])
        self._metric(f"{stage}_iou_box").update(out["iou_box"])

    def _metric(self, name: str) -> MeanMetric:
        return cast(MeanMetric, self.metrics[name])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_eval(self, stage: str) -> None:
        for name in ("loss", "iou", "iou_box"):
            metric = self._metric(f"{stage}_{name}")
            self.log(f"{stage}/{name}", metric.compute(), prog_bar=name == "iou")
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        out = self._step(batch)
        pred = out["pred"]
        return {
            "image_id": list(batch["image_id"]),
            "x0": pred[:, 0],
            "y0": pred[:, 1],
            "x1": pred[:, 2],
            "y1": pred[:, 3],
            "iou_box": out["iou_box"],
        }

    def configure_optimizers(self) -> Adam:
        params = list(self.zoom.parameters())
        return fused_adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
