"""DualRepSSL pretraining (Gridach et al., ICASSP 2023) as a LightningModule.

The network (:class:`~.nets.DualRepNet`) and the losses (:mod:`.losses`) are plain PyTorch; this module
holds the steps, the optimiser and the logging:

* loss ``L_final = L_a + L_i + L_MMSL(v, a) + L_MMSL(v, i)`` (Eq. 13), with the MMCL or MMSL half (or the
  image stream) left out by the ablation switches;
* in training, the clip and its frame get independent random views (:mod:`.augment`, ``augment: true``;
  not in the paper);
* under DDP the negatives span every rank: the MMCL keys are all-gathered with gradients and each rank
  scores its own video queries against them (``positive_offset``); MMSL's hardest negatives need rows and
  columns of the similarity matrix, so every rank computes the whole-batch MMSL loss on gathered queries
  and keys (see :mod:`lightning_modules.common.distributed` for why both give the single-process gradient);
* alignment diagnostics: retrieval recall@k between video and audio (``va``) and video and image (``vi``),
  within each (global) batch (``{stage}/batch_va_R@1``, chance ``k / B``) and, for validation and test,
  over the whole split (``val/va_R@1``, chance ``k / N``);
* ``predict`` returns the embeddings of each clip (backbone features ``h_*``, MMCL latents ``F_*``, MMSL
  projections ``mu_*``) with its id, written to ``.npz`` / ``.pt`` by
  :class:`callbacks.dualrep_embeddings.EmbeddingWriter`.

Downstream models take an encoder out of this module's checkpoint by the key prefixes in
:data:`~lightning_modules.dualrep_ssl.nets.ENCODER_PREFIXES` (kept in the nets layer, so downstream networks
need not import this LightningModule).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_modules.common.distributed import gather_for_contrastive
from lightning_modules.dualrep_ssl.augment import ViewAugment
from lightning_modules.dualrep_ssl.losses import mmcl_loss, mmsl_loss
from lightning_modules.dualrep_ssl.metrics import InBatchRecall, SplitRecall
from lightning_modules.dualrep_ssl.nets import ENCODER_PREFIXES, DualRepNet

__all__ = ["ENCODER_PREFIXES", "DualRepSSL"]

EMBEDDING_NAMES = ("h_v", "h_a", "h_i", "F_v", "F_a", "F_i", "F_va", "F_vi", "mu_v", "mu_a", "mu_i")


class DualRepSSL(LightningModule):
    """Self-supervised pretraining of video, audio and image encoders with MMCL + MMSL.

    Args:
        image_size, in_channels: linked from the DataModule (frames may be grey or RGB: the encoders
            repeat grey input to 3 channels).
        use_mmcl, use_mmsl, use_image: the ablations of Table 3 (MMCL only, MMSL only, without image).
        latent_dim: shared latent dimension (512 in the paper).
        mel_bins: mel bins of the audio log-mel (64, CNN14's 16 kHz front end).
        tau, pi: InfoNCE temperature and the L_a / L_i balance (0.1 and 0.5 in the paper).
        margin: MMSL hinge margin alpha (not given in the paper; 0.2 as in VSE++).
        lr, weight_decay: Adam (3e-3 and 1e-4 in the paper).
        gather_negatives: under DDP, take negatives from every rank (as the paper's single large batch
            would); ``False`` keeps each rank's batch separate.
        video_weights, audio_weights, image_weights (+ ``*_prefix``): optional initial weights of the
            encoders: local files, or the paper's pretrained sources ``kinetics400``, ``audioset`` (the
            paper's audio CNN is pretrained) and ``imagenet`` from the torch.hub cache
            (:mod:`lightning_modules.common.pretrained`).
        freeze_audio: keep the audio encoder fixed (a pretrained CNN14 used as a feature extractor).
        recall_ks: the k of the retrieval recall diagnostics.
        predict_embeddings: which outputs ``predict`` returns (default: all the network produces).
        augment: in training, give the clip and its frame independent random views
            (:class:`~.augment.ViewAugment`; not in the paper, see that module for why).
    """

    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)

    def __init__(
        self,
        image_size: int | list[int] = 128,
        in_channels: int = 1,
        use_mmcl: bool = True,
        use_mmsl: bool = True,
        use_image: bool = True,
        latent_dim: int = 512,
        mel_bins: int = 64,
        tau: float = 0.1,
        pi: float = 0.5,
        margin: float = 0.2,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        gather_negatives: bool = True,
        video_weights: str | None = None,
        audio_weights: str | None = None,
        image_weights: str | None = None,
        video_weights_prefix: str | None = None,
        audio_weights_prefix: str | None = None,
        image_weights_prefix: str | None = None,
        freeze_audio: bool = False,
        recall_ks: list[int] | None = None,
        predict_embeddings: list[str] | None = None,
        augment: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if in_channels not in (1, 3):
            raise ValueError(f"model.init_args.in_channels must be 1 or 3, got {in_channels}")
        if tau <= 0:
            raise ValueError(f"model.init_args.tau must be > 0, got {tau}")
        if not 0.0 <= pi <= 1.0:
            raise ValueError(f"model.init_args.pi must be in [0, 1], got {pi}")
        if not (use_mmcl or use_mmsl):
            raise ValueError("model.init_args: at least one of use_mmcl and use_mmsl must be true")
        self.net = DualRepNet(
            use_image=use_image,
            use_mmcl=use_mmcl,
            use_mmsl=use_mmsl,
            latent_dim=latent_dim,
            mel_bins=mel_bins,
            video_weights=video_weights,
            audio_weights=audio_weights,
            image_weights=image_weights,
            video_weights_prefix=video_weights_prefix,
            audio_weights_prefix=audio_weights_prefix,
            image_weights_prefix=image_weights_prefix,
            freeze_audio=freeze_audio,
        )
        self.augment = ViewAugment() if augment else None
        self.ks = tuple(recall_ks or (1, 5))
        self.pairs = ("va", "vi") if use_image else ("va",)
        self.batch_recall = torch.nn.ModuleDict(
            {
                f"{stage}_{pair}": InBatchRecall(self.ks)
                for stage in ("train", "val", "test")
                for pair in self.pairs
            }
        )
        self.split_recall = torch.nn.ModuleDict(
            {f"{stage}_{pair}": SplitRecall(self.ks) for stage in ("val", "test") for pair in self.pairs}
        )
        known = self.embedding_names()
        self.predict_embeddings = list(predict_embeddings) if predict_embeddings else known
        unknown = [n for n in self.predict_embeddings if n not in known]
        if unknown:
            raise ValueError(
                f"model.init_args.predict_embeddings: {unknown} not produced by this configuration; "
                f"choose from {known}"
            )

    # ------------------------------------------------------------------ helpers
    def embedding_names(self) -> list[str]:
        """Names of the embeddings the network returns with the current switches."""
        hp = self.hparams
        names = ["h_v", "h_a"] + (["h_i"] if hp.use_image else [])
        if hp.use_mmcl:
            names += ["F_v", "F_a", "F_va"] + (["F_i", "F_vi"] if hp.use_image else [])
        if hp.use_mmsl:
            names += ["mu_v", "mu_a"] + (["mu_i"] if hp.use_image else [])
        return [n for n in EMBEDDING_NAMES if n in names]

    def retrieval_space(self) -> str:
        """Embeddings used for retrieval: the MMCL latents, or the MMSL projections without MMCL."""
        return "F" if self.hparams.use_mmcl else "mu"

    def check_batch(self, batch: dict[str, Any]) -> None:
        """Name the missing modality or the wrong shape before the encoders fail obscurely."""
        needed = ["video", "audio"] + (["image"] if self.hparams.use_image else [])
        missing = [k for k in needed if k not in batch]
        if missing:
            raise KeyError(
                f"DualRepSSL batch lacks {missing}: set data.init_args.modalities to include {needed}"
            )
        video = batch["video"]
        if video.dim() != 5 or video.shape[1] != self.hparams.in_channels:
            raise ValueError(
                f"batch['video'] has shape {tuple(video.shape)}, expected B×{self.hparams.in_channels}×T×H×W"
            )
        audio = batch["audio"]
        if audio.dim() != 4 or audio.shape[1] != 1 or audio.shape[2] != self.hparams.mel_bins:
            raise ValueError(
                f"batch['audio'] has shape {tuple(audio.shape)}, expected B×1×{self.hparams.mel_bins}×frames "
                "(log-mel; data.init_args.n_mels must equal model.init_args.mel_bins)"
            )

    def forward(self, video: Tensor, audio: Tensor, image: Tensor | None = None) -> dict[str, Tensor]:
        return self.net(video, audio, image if self.hparams.use_image else None)

    def compute_losses(self, out: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict[str, Any]]:
        """Eq. 13 on one (local) batch, negatives gathered across ranks.

        Returns ``(total, parts, gathered)``; ``gathered`` holds the gathered retrieval keys and this
        rank's offset for the recall diagnostics.
        """
        hp = self.hparams
        gather = gather_for_contrastive if hp.gather_negatives else (lambda *t: (list(t), 0))
        parts: dict[str, Tensor] = {}
        total = out["h_v"].new_zeros((), dtype=torch.float32)
        gathered: dict[str, Any] = {}
        if hp.use_mmcl:
            names = ["F_a", "F_va"] + (["F_i", "F_vi"] if hp.use_image else [])
            keys, offset = gather(*(out[n] for n in names))
            k = dict(zip(names, keys))
            loss, mmcl_parts = mmcl_loss(
                out["F_v"],
                k["F_a"],
                k["F_va"],
                k.get("F_i"),
                k.get("F_vi"),
                pi=hp.pi,
                tau=hp.tau,
                positive_offset=offset,
            )
            parts.update(mmcl_parts, mmcl=loss)
            total = total + loss
            gathered.update(k, offset=offset)
        if hp.use_mmsl:
            names = ["mu_v", "mu_a"] + (["mu_i"] if hp.use_image else [])
            mus, offset = gather(*(out[n] for n in names))
            m = dict(zip(names, mus))
            loss, mmsl_parts = mmsl_loss(m["mu_v"], m["mu_a"], m.get("mu_i"), margin=hp.margin)
            parts.update(mmsl_parts, mmsl=loss)
            total = total + loss
            if not hp.use_mmcl:
                gathered.update(m, offset=offset)
        return total, parts, gathered

    def global_batch_size(self, local: int) -> int:
        trainer = self._trainer  # None outside a Trainer (``self.trainer`` would raise)
        if not self.hparams.gather_negatives or trainer is None or trainer.world_size == 1:
            return local
        sizes = cast(Tensor, self.all_gather(torch.tensor(local, device=self.device)))
        return int(sizes.sum())

    def _batch_recall(self, name: str) -> InBatchRecall:
        return cast(InBatchRecall, self.batch_recall[name])

    def _split_recall(self, name: str) -> SplitRecall:
        return cast(SplitRecall, self.split_recall[name])

    def update_recall(self, stage: str, out: dict[str, Tensor], gathered: dict[str, Any]) -> None:
        space = self.retrieval_space()
        query = out[f"{space}_v"]
        for pair in self.pairs:
            key = f"{space}_{pair[1]}"
            self._batch_recall(f"{stage}_{pair}").update(query, gathered[key], gathered["offset"])
            if stage != "train":
                self._split_recall(f"{stage}_{pair}").update(query, out[key])

    # ------------------------------------------------------------------ steps
    def shared_step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        self.check_batch(batch)
        n = batch["video"].shape[0]
        too_small = self.global_batch_size(n) < 2
        if too_small and stage == "train":
            raise ValueError(
                "DualRepSSL needs at least 2 clips per batch (negatives come from the batch; BatchNorm needs "
                "2 in training): raise data.init_args.batch_size"
            )
        video, image = batch["video"], batch.get("image")
        if stage == "train" and self.augment is not None:
            video = self.augment(video)
            image = self.augment(image) if image is not None and self.hparams.use_image else image
        out = self(video, batch["audio"], image)
        if too_small:
            # a last evaluation batch of one clip has no negatives: only the split-level recall uses it
            space = self.retrieval_space()
            for pair in self.pairs:
                self._split_recall(f"{stage}_{pair}").update(out[f"{space}_v"], out[f"{space}_{pair[1]}"])
            return None
        total, parts, gathered = self.compute_losses(out)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            total,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=n,
        )
        self.log_dict(
            {f"{stage}/{name}": value for name, value in parts.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        self.update_recall(stage, out, gathered)
        if stage == "train":
            for pair in self.pairs:
                values = self._batch_recall(f"train_{pair}").compute()
                self._batch_recall(f"train_{pair}").reset()
                self.log_dict(
                    {f"train/batch_{pair}_{name}": v for name, v in values.items()},
                    on_step=True,
                    on_epoch=True,
                    sync_dist=True,
                    batch_size=n,
                )
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def log_recall_epoch(self, stage: str) -> None:
        logs: dict[str, Tensor] = {}
        for pair in self.pairs:
            for name, value in self._batch_recall(f"{stage}_{pair}").compute().items():
                logs[f"{stage}/batch_{pair}_{name}"] = value
            for name, value in self._split_recall(f"{stage}_{pair}").compute().items():
                logs[f"{stage}/{pair}_{name}"] = value
            self._batch_recall(f"{stage}_{pair}").reset()
            self._split_recall(f"{stage}_{pair}").reset()
        # already reduced over ranks by torchmetrics
        self.log_dict({k: v.to(self.device) for k, v in logs.items()}, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self.log_recall_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.log_recall_epoch("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        self.check_batch(batch)
        out = self(batch["video"], batch["audio"], batch.get("image"))
        columns: dict[str, Any] = {"clip_id": list(batch["clip_id"])}
        if "label" in batch:
            columns["label"] = batch["label"].detach().cpu()
        for name in self.predict_embeddings:
            columns[name] = out[name].detach().float().cpu()
        return columns

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
