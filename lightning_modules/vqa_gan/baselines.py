"""The single-modality baselines of the VQA paper's Table 1, as LightningModules.

``ImageQualityGAN``: the image-based approach: the same bi-directional adversarial model, but it sees
only the last (frozen) frame of each clip, with no flow and no gaze. Its networks are the video networks
with T = 1 (spatial layers only: kernel (1,4,4), stride (1,2,2)), i.e. a 2-D encoder/decoder pair.

``STAEBaseline``: the spatio-temporal autoencoder of Zhao et al. (ACM MM 2017): a 3-D convolutional
encoder with a reconstruction branch (the first T − P frames of a clip) and a prediction branch (the
following P frames), trained with MSE (prediction weighted P, P−1, …, 1 over P²) and scored per clip by
the same errors. Both baselines see the zoomed clips, as in the paper ("based on the zoomed-in videos").
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor
from torch.optim import Adam

from .base import QualityAnomalyModule
from .losses import stae_loss
from .module import ModelInputs, VideoQualityGAN
from .nets import STAE, init_weights
from .schedule import linear_decay_schedule

__all__ = ["ImageQualityGAN", "STAEBaseline", "stae_scores"]


class ImageQualityGAN(VideoQualityGAN):
    """Image-only baseline: :class:`VideoQualityGAN` on the last frame of each clip (no flow, no gaze).

    Takes VideoQualityGAN's arguments except the modality ones (flow and gaze are off by definition).
    """

    def __init__(self, **kwargs: Any) -> None:
        modality = sorted({"use_flow", "w_gaze"} & kwargs.keys())
        if modality:
            raise ValueError(
                f"ImageQualityGAN sees a single frame, with no flow and no gaze: drop {modality} (its other "
                "arguments are VideoQualityGAN's)"
            )
        super().__init__(use_flow=False, w_gaze=0.0, **kwargs)
        self.save_hyperparameters()  # only this class's arguments, so its checkpoints reload as this class

    def encoder_frames(self) -> int:
        return 1

    def inputs(self, batch: dict[str, Any], with_gaze: bool) -> ModelInputs:
        """The zoomed clip reduced to its last (freeze) frame, as a one-frame clip ``B×C×1×H×W``."""
        video, _, _, _ = self.zoom_inputs(batch["video"])
        return {"video": video[:, :, -1:], "flow": None, "gaze": None, "gaze_valid": None}


def stae_scores(recon: Tensor, target: Tensor, pred: Tensor, future: Tensor) -> dict[str, Tensor]:
    """Per-clip STAE errors ``{"recon", "pred", "total"}``, each ``B``: the per-clip terms of
    :func:`~lightning_modules.vqa_gan.losses.stae_loss` (their batch means equal its two values)."""
    rec = (recon.float() - target.float()).square().flatten(1).mean(dim=1)
    p = pred.shape[2]
    per_t = (pred.float() - future.float()).square().mean(dim=(1, 3, 4))  # B×P
    w = torch.arange(p, 0, -1, device=per_t.device, dtype=per_t.dtype) / p**2
    prd = (per_t * w).sum(dim=1)
    return {"recon": rec, "pred": prd, "total": rec + prd}


class STAEBaseline(QualityAnomalyModule):
    """STAE baseline (see the module docstring).

    Args:
        num_frames: T of the data clips; the first ``T − num_future`` frames are reconstructed, the last
            ``num_future`` (default ``T // 2``) predicted.
        channels, norm: STAE encoder widths and norm (:class:`~lightning_modules.vqa_gan.nets.STAE`).
        lr, beta1, beta2, n_constant_epochs, n_decay_epochs: Adam and the per-epoch linear-decay schedule
            (the same schedule as VideoQualityGAN, for a like-for-like comparison).
        score: ``"total"`` (reconstruction + prediction error, default), ``"recon"`` or ``"pred"``.
        Zoom and label arguments: see :class:`~lightning_modules.vqa_gan.base.QualityAnomalyModule`.
    """

    score_names = ("total", "recon", "pred")

    def __init__(
        self,
        image_size: int | list[int] = 256,
        in_channels: int = 1,
        num_frames: int = 8,
        num_future: int | None = None,
        channels: list[int] | tuple[int, ...] = (32, 64, 128),
        norm: str = "batch",
        lr: float = 2e-4,
        beta1: float = 0.9,
        beta2: float = 0.999,
        n_constant_epochs: int = 100,
        n_decay_epochs: int = 100,
        init_std: float = 0.02,
        score: str = "total",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, in_channels=in_channels, score=score, **kwargs)
        self.save_hyperparameters()
        self.num_frames = int(num_frames)
        self.num_future = int(num_future) if num_future is not None else self.num_frames // 2
        if not 1 <= self.num_future < self.num_frames:
            raise ValueError(
                f"STAE needs 1 <= num_future < num_frames (input frames = num_frames - num_future), got "
                f"num_frames={self.num_frames}, num_future={self.num_future}"
            )
        self.stae = STAE(
            in_channels=in_channels,
            num_frames=self.num_frames - self.num_future,
            num_future=self.num_future,
            channels=tuple(channels),
            norm=norm,
        )
        init_weights(self.stae, init_std)

    def check_data(self, datamodule: Any) -> None:
        frames = getattr(datamodule, "num_frames", None)
        if frames is not None and int(frames) != self.num_frames:
            raise ValueError(
                f"model.init_args.num_frames={self.num_frames} but data.init_args.num_frames={frames}: set both"
            )

    def split(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Zoomed clip → (input frames, future frames)."""
        video, _, _, _ = self.zoom_inputs(batch["video"])
        k = self.num_frames - self.num_future
        return video[:, :, :k], video[:, :, k:]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        clip, future = self.split(batch)
        recon, pred = self.stae(clip)
        rec, prd = stae_loss(recon, clip, pred, future)
        loss = rec + prd
        n = clip.shape[0]
        self.log_dict(
            {"train/recon": rec, "train/pred": prd}, on_step=True, on_epoch=True, sync_dist=True, batch_size=n
        )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        return loss

    def score_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        clip, future = self.split(batch)
        recon, pred = self.stae(clip)
        return stae_scores(recon, clip, pred, future)

    @torch.no_grad()
    def reconstruction_views(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The zoomed input frames and their reconstruction, B×C×T×H×W each (for callbacks.vqa_media,
        which configs/vqa.yaml attaches to every VQA model)."""
        clip, _ = self.split(batch)
        recon, _ = self.stae(clip)
        return {"input": clip, "reconstruction": recon}

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        opt = Adam(self.stae.parameters(), lr=self.hparams.lr, betas=(self.hparams.beta1, self.hparams.beta2))
        scheduler = linear_decay_schedule(opt, self.hparams.n_constant_epochs, self.hparams.n_decay_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
