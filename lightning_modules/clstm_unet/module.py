"""The cLSTMU-Net LightningModule: KLD training on gaze maps, MIT saliency metrics, centre-bias reference.

Paper (Savochkina et al., ISBI 2022, Sec. 3.1): Adam, learning rate 1e-4, batch 16, early stopping, the
KL divergence between the Gaussian gaze map and the softmax prediction as the loss. The network is
:class:`lightning_modules.clstm_unet.nets.ConvLSTMUNet` (or, with ``use_temporal=False``, the spatial-only U-Net
baseline); this module only holds the steps, the optimiser and the logging.

- **Loss** :func:`~lightning_modules.common.saliency.saliency_kld_loss` on the target frame's map, averaged
  over the items whose target frame has a fixation (``gaze_valid``).
- **Metrics** KLD, SIM, CC, NSS (MIT benchmark definitions, torchmetrics objects, DDP-safe) logged as
  ``val/*`` and ``test/*``; the same four for the centre-bias Gaussian on the same maps as
  ``val/centre_bias/*`` and ``test/centre_bias/*``, so every run states how much it beats the trivial
  prior. NSS is taken at the real fixations, the batch's binary ``fixations`` map of the target frame (MIT
  definition); a batch without it falls back to the target map > 0 (the rule for density-only data).
- **Augmentation** :class:`~lightning_modules.clstm_unet.augment.SequenceRandAugment` RA(n, m) on training
  batches, after they reach the device (``on_after_batch_transfer``), one draw per sequence, independent
  draws per item from a generator seeded from the run's seed and the process rank.
- The paper mentions "Adam with a momentum of 0.01", which matches no Adam parameter (β1 = 0.01 would turn
  off momentum); we keep Adam's usual betas (0.9, 0.999), configurable as ``betas``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from torch import Tensor

from datamodules.base import as_hw
from lightning_modules.clstm_unet import nets
from lightning_modules.clstm_unet.augment import DEFAULT_TRANSFORMS, MIX_METHODS, SequenceRandAugment
from lightning_modules.common.contracts import SaliencyStepOutput
from lightning_modules.common.saliency import (
    SaliencyMetrics,
    cc,
    centre_bias_map,
    kld,
    nss,
    saliency_kld_loss,
    sim,
)

__all__ = ["CLSTMUNet", "map_peak_xy"]


def map_peak_xy(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Location of each map's maximum in normalised frame coordinates (pixel centres), B×1×H×W -> (x, y)."""
    H, W = maps.shape[-2:]
    flat = maps.reshape(maps.shape[0], -1).argmax(dim=1)
    rows, cols = flat // W, flat % W
    return (cols.float() + 0.5) / W, (rows.float() + 0.5) / H


class CLSTMUNet(LightningModule):
    """Video gaze-saliency prediction with cLSTMU-Net (or the spatial-only U-Net).

    Args:
        image_size, in_channels: LINKED from the DataModule (frame size and channels).
        num_before, num_after, frame_interval: the sequence layout; interpolated from ``data.init_args``
            in the config and checked against the DataModule at setup. ``frame_interval`` is not used by
            the network itself but is saved with the checkpoint for streaming prediction.
        base_channels, depth, convlstm_hidden, convlstm_kernel, convlstm_layers, use_temporal,
            share_encoder, temporal_includes_target, norm: the network (see :class:`nets.ConvLSTMUNet`).
        lr, betas, weight_decay: Adam.
        augment: apply RA(ra_n, ra_m) to training batches; ``ra_transforms`` a subset of the K = 16
            transforms (None = all); ``ra_mixed`` the paper's Mix.RA, with ``ra_mix_methods``.
        centre_bias_sigma: σ of the centre-bias Gaussian reference, as a fraction of the frame size.
        nss_kernel_size, nss_min_rel: no longer used (NSS reads the batch's real fixations); accepted so
            configs and checkpoints of earlier runs still load.
    """

    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)

    def __init__(
        self,
        image_size: int | list[int] = 128,
        in_channels: int = 1,
        num_before: int = 6,
        num_after: int = 0,
        frame_interval: int = 1,
        base_channels: int = 32,
        depth: int = 4,
        convlstm_hidden: int | None = None,
        convlstm_kernel: int = 3,
        convlstm_layers: int = 1,
        use_temporal: bool = True,
        share_encoder: bool = True,
        temporal_includes_target: bool = True,
        norm: str = "batch",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        augment: bool = True,
        ra_n: int = 7,
        ra_m: float = 9.0,
        ra_transforms: list[str] | None = None,
        ra_mixed: bool = False,
        ra_mix_methods: list[str] | None = None,
        centre_bias_sigma: float = 0.25,
        nss_kernel_size: int = 3,
        nss_min_rel: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        height, width = as_hw(image_size)
        if min(height, width) < 2**depth:
            raise ValueError(
                f"model.init_args.depth={depth} halves the frame {depth} times: image_size {image_size} "
                f"must be at least {2**depth} pixels"
            )
        if frame_interval < 1:
            raise ValueError(f"model.init_args.frame_interval must be >= 1, got {frame_interval}")
        if lr <= 0:
            raise ValueError(f"model.init_args.lr must be > 0, got {lr}")
        self.net = nets.ConvLSTMUNet(
            in_channels=in_channels,
            base_channels=base_channels,
            depth=depth,
            convlstm_hidden=convlstm_hidden,
            convlstm_kernel=convlstm_kernel,
            convlstm_layers=convlstm_layers,
            num_before=num_before,
            num_after=num_after,
            use_temporal=use_temporal,
            share_encoder=share_encoder,
            temporal_includes_target=temporal_includes_target,
            norm=norm,
        )
        self.augmenter = (
            SequenceRandAugment(
                n=ra_n,
                m=ra_m,
                transforms=ra_transforms or DEFAULT_TRANSFORMS,
                mixed=ra_mixed,
                mix_methods=ra_mix_methods or MIX_METHODS,
            )
            if augment
            else None
        )
        self.centre_bias_sigma = centre_bias_sigma
        self.val_metrics = SaliencyMetrics(log_input=True, prefix="val/")
        self.test_metrics = SaliencyMetrics(log_input=True, prefix="test/")
        self.val_centre_bias = SaliencyMetrics(prefix="val/centre_bias/")
        self.test_centre_bias = SaliencyMetrics(prefix="test/centre_bias/")
        self._aug_generator: torch.Generator | None = None

    # -- model --------------------------------------------------------------------------------------------

    def forward(self, video: Tensor, target_index: int | Tensor) -> Tensor:
        """``video`` B×C×T×H×W in [-1, 1] -> log-saliency B×1×H×W of frame ``target_index``."""
        return self.net(video, target_index)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(),
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
            weight_decay=self.hparams.weight_decay,
        )

    # -- setup checks -------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Stop early when the data's sequence layout is not the one the network was built for.

        The configs interpolate the model's layout from ``data.init_args``, but the CLI resolves
        ``${...}`` per config file, so an overlay or a command-line flag that changes only the data side
        would otherwise train a model that silently ignores frames or fails mid-epoch.
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not self.hparams.use_temporal:
            return
        mismatched = [
            f"model.init_args.{key}={self.hparams[key]} but data.init_args.{key}={getattr(datamodule, key)}"
            for key in ("num_before", "num_after", "frame_interval")
            if hasattr(datamodule, key) and getattr(datamodule, key) != self.hparams[key]
        ]
        if mismatched:
            raise ValueError(
                "the model's sequence layout differs from the data's: "
                + "; ".join(mismatched)
                + " (set both: ${...} interpolation is resolved within each config file)"
            )

    # -- augmentation on device ---------------------------------------------------------------------------

    def _generator(self) -> torch.Generator:
        """CPU generator for augmentation draws: the run's seed offset by the rank, so DDP processes
        draw differently and a seeded run repeats exactly."""
        if self._aug_generator is None:
            seed = (torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63
            self._aug_generator = torch.Generator().manual_seed(seed)
        return self._aug_generator

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The augmentation generator's position: a resumed run draws the augmentations an uninterrupted one would."""
        if self._aug_generator is not None:
            checkpoint["augment_generator"] = self._aug_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("augment_generator")
        if state is not None:
            self._aug_generator = torch.Generator()
            self._aug_generator.set_state(state)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if self._trainer is None or not self.trainer.training:
            return batch
        return self.augment_batch(batch)

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A training batch with RandAugment applied (one draw per sequence for its frames and gaze maps):
        what Lightning's fit does to each batch before ``training_step``, callable by a plain loop too."""
        if self.augmenter is None:
            return batch
        video, gaze = self.augmenter.apply_batch(batch["video"], batch["gaze"], generator=self._generator())
        batch = dict(batch, video=video, gaze=gaze)
        # the moved frames' fixations are no longer where the map says (metrics are eval-only): drop them
        batch.pop("fixations", None)
        if (
            "gaze_valid" in batch and gaze is not None
        ):  # a map moved out of view became uniform: nothing to learn
            flat = gaze.flatten(-2)
            has_peak = (flat.amax(-1) > flat.amin(-1))[:, 0]  # B×T
            batch["gaze_valid"] = batch["gaze_valid"] & has_peak
        return batch

    # -- steps --------------------------------------------------------------------------------------------

    @staticmethod
    def _target(batch: dict[str, Any]) -> tuple[int, Tensor, Tensor]:
        """(target index, target gaze map B×1×H×W, validity B) of a sequence batch."""
        t = nets.ConvLSTMUNet._as_int_index(batch["target_index"])
        gaze = batch["gaze"][:, :, t]
        if "gaze_valid" in batch:
            valid = batch["gaze_valid"][:, t].bool()
        else:
            valid = torch.ones(gaze.shape[0], dtype=torch.bool, device=gaze.device)
        return t, gaze, valid

    @staticmethod
    def _fixations(batch: dict[str, Any], t: int, target: Tensor) -> Tensor:
        """The target frame's binary fixation map B×1×H×W; without one, the target map (NSS at map > 0)."""
        return batch["fixations"][:, :, t] if "fixations" in batch else target

    def _centre_bias(self, like: Tensor) -> Tensor:
        H, W = like.shape[-2:]
        prior = centre_bias_map(H, W, self.centre_bias_sigma, device=like.device)
        return prior.expand(like.shape[0], 1, H, W)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """The KL-divergence loss, returned as ``{"loss", "kld"}`` so a non-finite value is named."""
        t, target, valid = self._target(batch)
        log_pred = self(batch["video"], t)
        loss = saliency_kld_loss(log_pred, target, valid)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=target.shape[0],
        )
        return {"loss": loss, "kld": loss.detach()}

    def _evaluate(self, batch: dict[str, Any], split: str) -> Tensor:
        t, target, valid = self._target(batch)
        log_pred = self(batch["video"], t)
        loss = saliency_kld_loss(log_pred, target, valid)
        batch_size = target.shape[0]
        metrics = self.val_metrics if split == "val" else self.test_metrics
        centre = self.val_centre_bias if split == "val" else self.test_centre_bias
        fixations = self._fixations(batch, t, target)
        metrics.update(log_pred, target, valid, fixations=fixations)
        centre.update(self._centre_bias(target), target, valid, fixations=fixations)
        self.log(f"{split}/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch_size)
        self.log_dict(metrics, on_epoch=True, batch_size=batch_size, prog_bar=split == "val")
        self.log_dict(centre, on_epoch=True, batch_size=batch_size)
        return log_pred

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> SaliencyStepOutput:
        return {"log_pred": self._evaluate(batch, "val")}  # callbacks.saliency_maps reads it

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> SaliencyStepOutput:
        return {"log_pred": self._evaluate(batch, "test")}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Sequence[Any] | Tensor]:
        """Per item: where the predicted map peaks, and (when the batch has gaze) the four metrics
        against the target map (NaN where the target frame had no fixation) and the gaze map's peak."""
        t = nets.ConvLSTMUNet._as_int_index(batch["target_index"])
        pred = self(batch["video"], t).float().exp()
        pred_x, pred_y = map_peak_xy(pred)
        ids = batch.get("clip_id", [str(i) for i in range(pred.shape[0])])
        columns: dict[str, Sequence[Any] | Tensor] = {
            "clip_id": list(ids),
            "pred_x": pred_x,
            "pred_y": pred_y,
        }
        if "gaze" in batch:
            _, target, valid = self._target(batch)
            fixations = self._fixations(batch, t, target)
            nan = torch.full_like(pred_x, float("nan"))
            gaze_x, gaze_y = map_peak_xy(target)
            scores = {
                "kld": kld(pred, target),
                "sim": sim(pred, target),
                "cc": cc(pred, target),
                "nss": nss(pred, fixations),
            }
            columns.update(gaze_x=torch.where(valid, gaze_x, nan), gaze_y=torch.where(valid, gaze_y, nan))
            columns.update({k: torch.where(valid, v.float(), nan) for k, v in scores.items()})
        return columns
