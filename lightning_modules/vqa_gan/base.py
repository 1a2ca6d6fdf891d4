"""What VideoQualityGAN and its baselines share: the zoom-in front end, the task labels, scoring and metrics.

Every model of the VQA paper's tables is an anomaly detector trained on high-quality clips only and
evaluated the same way, so that one class holds the parts that must not differ between the rows:

* **Task labels.** The normal (high-quality) class is ``label == normal_label`` (``transventricular``)
  *and* ``quality == 1``; every other clip with a known quality is anomalous (target 1 = low quality);
  clips of unknown quality (``quality == -1``) get target -1 and are left out of the metrics. The model
  learns the normal class only, so ``fit`` checks that the training data holds nothing else: at setup
  from the DataModule's ``split_composition("train")`` (every training clip's label and quality), else on
  every batch of the first training epoch; either way a training clip of another class stops the run
  with an error naming ``data.init_args.train_filter`` and ``model.init_args.normal_label`` (dropping
  the filter would otherwise train the detector on anomalies, silently).
* **Zoom-in.** A frozen, pretrained :class:`~lightning_modules.vqa_gan.zoom.ZoomIn` crops every clip
  around its main structure inside the model. The optical flow arrives from the data layer computed on
  the full frames; :func:`~lightning_modules.vqa_gan.zoom.warp_flow` resamples it with the same crop and
  rescales the vectors, which is the flow of the zoomed video (flow is a per-pixel displacement, and a
  crop-and-resize is an affine map of the pixel grid: displacements transform with its linear part, so
  warping the flow equals recomputing it on the warped frames up to interpolation error; the phase-1 test
  ``test_warp_flow_matches_the_flow_of_the_zoomed_video`` checks this). Gaze maps are resampled and
  renormalised with :func:`~lightning_modules.vqa_gan.zoom.warp_gaze`; frames whose fixations fall
  outside the crop become invalid. Doing it here keeps the data cache independent of the zoom model.
* **Scores and metrics.** ``score_batch`` (per model) returns per-clip anomaly scores (higher = more
  anomalous). Validation and test gather them across ranks (torchmetrics ``CatMetric``) and report the
  AUC of every score; for the primary score also F1/ACC/SEN/SPE at the threshold that maximises F1 on the
  validation split. ``score: auto`` makes the primary score the one with the highest validation AUC,
  chosen again at every validation epoch together with its threshold (both are buffers, so a checkpoint
  holds the pair it was selected with). That threshold is a buffer (saved in checkpoints) carried to test; test also reports
  the metrics at its own best-F1 ("oracle") threshold, as the official code does, under ``test/oracle_*``.
* **Predict** returns clip id, label, quality, the task target, every score, the threshold and the
  high/low-quality decision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import CatMetric
from torchvision.utils import flow_to_image

from lightning_modules.common.anomaly import auc, best_auc_score, best_f1_threshold, binary_metrics
from lightning_modules.common.contracts import Evaluation

from .zoom import ZoomIn, warp, warp_flow, warp_gaze

__all__ = [
    "FLOW_ENCODINGS",
    "SCORE_AUTO",
    "QualityAnomalyModule",
    "encode_flow",
    "zoom_hparams_from_checkpoint",
]

FLOW_ENCODINGS = ("raw", "color")
SCORE_AUTO = "auto"
_TARGET_COLUMNS = ("target", "label", "quality")


def encode_flow(flow: Tensor, encoding: str, scale: float) -> Tensor:
    """The encoder's flow channels from a flow ``B×2×T×H×W`` in pixels.

    ``"raw"``: 2 channels ``tanh(flow / (scale·W))`` (``scale`` is a displacement as a fraction of the
    frame width; tanh keeps Farneback's rare huge vectors from dominating). ``"color"``: 3 channels, the
    colour-coded flow image the official code fed the encoder (torchvision's ``flow_to_image``, each frame
    normalised by its own largest vector), mapped to ``[-1, 1]``.
    """
    if flow.dim() != 5 or flow.shape[1] != 2:
        raise ValueError(f"flow must be B×2×T×H×W, got {tuple(flow.shape)}")
    if encoding == "raw":
        return torch.tanh(flow.float() / (scale * flow.shape[-1]))
    if encoding == "color":
        b, _, t, h, w = flow.shape
        frames = flow.float().transpose(1, 2).reshape(b * t, 2, h, w)
        images = torch.stack([flow_to_image(f) for f in frames])  # (B·T)×3×H×W uint8
        return (images.float() / 127.5 - 1.0).reshape(b, t, 3, h, w).transpose(1, 2)
    raise ValueError(f"flow_encoding must be one of {FLOW_ENCODINGS}, got {encoding!r}")


def flow_channels(use_flow: bool, encoding: str) -> int:
    if encoding not in FLOW_ENCODINGS:
        raise ValueError(f"model.init_args.flow_encoding must be one of {FLOW_ENCODINGS}, got {encoding!r}")
    return 0 if not use_flow else (2 if encoding == "raw" else 3)


def zoom_hparams_from_checkpoint(path: str | Path) -> dict[str, Any]:
    """The ``s_min`` / ``image_size`` / ``localizer_size`` a ZoomInPretrainer checkpoint was trained with
    (empty for a plain state dict)."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    return {k: hparams[k] for k in ("s_min", "image_size", "localizer_size") if k in hparams}


class QualityAnomalyModule(LightningModule):
    """Base LightningModule of the VQA models (see the module docstring).

    Subclasses build their networks, implement ``training_step`` / ``configure_optimizers`` and
    ``score_batch(inputs) -> {name: B scores}``, and list their score names in ``score_names`` (the first
    one is the default primary score).

    Args:
        image_size, in_channels: frame size and channels (linked from the DataModule).
        use_zoom: crop clips with the frozen zoom-in module (False = the paper's no-zoom ablation).
        zoom_checkpoint: a ZoomInPretrainer checkpoint (``lightning fit --config configs/zoom.yaml``
            writes ``runs/sonolab-zoom/<run>/checkpoints/best.ckpt``), a ``ZoomIn`` state dict, or
            ``auto``: ``lightning fit`` pretrains the zoom-in on this run's data first (with the configs
            of ``zoom_pretraining``) unless it did so before for the same data, and uses that
            checkpoint. Loaded when a run starts unless the zoom already holds pretrained weights (a
            ``ckpt_path`` of this model restores them, so the zoom file is not needed then).
            ``use_zoom`` without weights is an error (never an untrained zoom).
        zoom_pretraining: the config files ``zoom_checkpoint: auto`` pretrains with (default
            ``[configs/zoom.yaml]``; relative paths are looked up in the working directory, then in
            the sonolab checkout).
        zoom_s_min, zoom_localizer_size: must match the zoom checkpoint (checked when it has hparams).
        zoom_frame_index: the frame the crop is predicted from (-1: the freeze frame).
        normal_label: the label of the normal class (with quality 1); the configs interpolate it into
            ``data.init_args.train_filter`` so the task is typed once, and ``fit`` checks the training
            data against it.
        score: the primary score (thresholded metrics, ``val/auc`` and so the checkpoint kept, the
            decision); one of ``score_names``, or ``auto``: at every validation epoch the score of the
            highest validation AUC (ties: the earlier in ``score_names``), logged as
            ``val/primary_score_index`` (an index into ``score_names``) and a log line when it changes.
    """

    score_names: tuple[str, ...] = ()
    hparams: AttributeDict  # save_hyperparameters() stores them as one (Lightning types it as a Mapping)
    # buffers (register_buffer), which the type checker cannot see
    threshold: Tensor
    zoom_ready: Tensor
    primary_score_index: Tensor

    def __init__(
        self,
        image_size: int | list[int],
        in_channels: int,
        score: str,
        use_zoom: bool = True,
        zoom_checkpoint: str | None = "auto",
        zoom_pretraining: list[str] | None = None,
        zoom_s_min: float = 0.25,
        zoom_localizer_size: int | None = None,
        zoom_frame_index: int = -1,
        normal_label: str = "transventricular",
    ) -> None:
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"the VQA models need square frames: data.init_args.image_size={image_size!r}")
        self.frame_size = int(size[0])
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if score != SCORE_AUTO and score not in self.score_names:
            raise ValueError(
                f"model.init_args.score={score!r} is not one of {(*self.score_names, SCORE_AUTO)}"
            )
        self.score_choice = score
        self.normal_label = normal_label
        self.use_zoom = bool(use_zoom)
        self.zoom_checkpoint = zoom_checkpoint
        self.zoom_pretraining = list(zoom_pretraining or ["configs/zoom.yaml"])
        self.zoom_frame_index = int(zoom_frame_index)
        self.zoom: ZoomIn | None = None
        if self.use_zoom:
            self.zoom = ZoomIn(s_min=zoom_s_min, localizer_size=zoom_localizer_size).freeze()
        # True once the zoom holds pretrained weights; saved so restored runs need no zoom file
        self.register_buffer("zoom_ready", torch.tensor(False))
        self.register_buffer("threshold", torch.tensor(float("nan"), dtype=torch.float64))
        # the primary score as an index into score_names: with score=auto it changes with the threshold
        # (both chosen on validation) and is saved with it; a fixed score never changes it
        first = 0 if score == SCORE_AUTO else self.score_names.index(score)
        self.register_buffer("primary_score_index", torch.tensor(first, dtype=torch.long))
        columns = (*self.score_names, *_TARGET_COLUMNS)
        self.eval_store = nn.ModuleDict(
            {
                stage: nn.ModuleDict({name: CatMetric(nan_strategy="disable") for name in columns})
                for stage in ("val", "test")
            }
        )
        self.class_names: list[str] = []
        self.normal_index = -1
        self.last_evaluation: dict[str, Evaluation] = {}  # read by callbacks.vqa_plots (common/contracts.py)
        self._announced_primary: str | None = None
        # the training-task check: done at setup when the DataModule reports its training composition,
        # else on every batch of the first training epoch of this fit (`_batch_check_epoch`)
        self._task_checked = False
        self._batch_check_epoch: int | None = None

    @property
    def primary_score(self) -> str:
        """The name of the primary score (fixed by ``score``, or the one ``score: auto`` chose last)."""
        return self.score_names[int(self.primary_score_index)]

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # checkpoints written before the score choice existed have no index: they used the configured score
        state_dict.setdefault(prefix + "primary_score_index", self.primary_score_index.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------ zoom weights
    def train(self, mode: bool = True) -> QualityAnomalyModule:
        """The zoom-in stays frozen in eval mode (its BatchNorm statistics never update)."""
        super().train(mode)
        if self.zoom is not None:
            self.zoom.eval()
        return self

    def load_zoom(self, path: str | Path) -> None:
        """Load pretrained zoom-in weights, checking that the crop parametrisation matches."""
        assert self.zoom is not None
        if str(path) == "auto":
            raise FileNotFoundError(
                "zoom_checkpoint: auto is resolved by `lightning fit` (it pretrains the zoom-in first); "
                "this run has no pretrained zoom-in. Give --ckpt_path of a trained model (it holds its "
                "zoom-in), --model.init_args.zoom_checkpoint=PATH, or --model.init_args.use_zoom=false"
            )
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"zoom-in checkpoint {path} not found. Pretrain the zoom-in first "
                "(`lightning fit --config configs/zoom.yaml` writes runs/sonolab-zoom/<run>/checkpoints/"
                "best.ckpt), or set --model.init_args.zoom_checkpoint=auto to have `lightning fit` do it; "
                "or --model.init_args.use_zoom=false for the no-zoom ablation"
            )
        hp = zoom_hparams_from_checkpoint(path)
        if "s_min" in hp and not math.isclose(float(hp["s_min"]), self.zoom.s_min):
            raise ValueError(
                f"{path} was trained with s_min={hp['s_min']}, but model.init_args.zoom_s_min="
                f"{self.zoom.s_min}: set zoom_s_min to {hp['s_min']}"
            )
        trained_size = hp.get("localizer_size") or hp.get("image_size")
        if isinstance(trained_size, list | tuple):
            trained_size = trained_size[0]
        seen_size = self.zoom.localizer_size or self.frame_size
        if trained_size is not None and int(trained_size) != int(seen_size):
            raise ValueError(
                f"{path}: the zoom-in localiser was trained on {trained_size}-pixel frames but would see "
                f"{seen_size}-pixel frames here: set model.init_args.zoom_localizer_size={trained_size}"
            )
        self.zoom.load_weights(path)
        self.zoom.freeze()
        self.zoom_ready.fill_(True)
        rank_zero_info(f"zoom-in weights loaded from {path} (frozen)")

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        classes = list(getattr(datamodule, "classes", None) or [])
        self.class_names = classes
        self.normal_index = classes.index(self.normal_label) if self.normal_label in classes else -1
        if self.normal_index < 0 and stage != "predict":
            raise ValueError(
                f"model.init_args.normal_label={self.normal_label!r} is not a label of the data "
                f"(classes: {classes}); the normal class is normal_label with quality 1"
            )
        if datamodule is not None:
            self.check_data(datamodule)
        if stage == "fit":
            self._task_checked = False
            self._batch_check_epoch = None
            composition = getattr(datamodule, "split_composition", None)
            if callable(composition):
                self.check_training_task(composition("train"))
        if self._trainer is not None and self.trainer.ckpt_path is None:
            # no checkpoint will restore the zoom-in: load it now, so a missing file stops the run before it
            # creates its folder or W&B run
            self.ensure_zoom()

    def check_data(self, datamodule: Any) -> None:
        """Subclasses check the DataModule matches the model (frames, modalities)."""

    # ------------------------------------------------------------------------------ the task
    def is_normal(self, label: str, quality: int) -> bool:
        return label == self.normal_label and quality == 1

    def _task_error(self, offending: dict[tuple[str, int], int], where: str) -> ValueError:
        listed = ", ".join(
            f"{n} x {label or '<no label>'} (quality {'unknown' if quality < 0 else quality})"
            for (label, quality), n in sorted(offending.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        return ValueError(
            f"{where} holds {sum(offending.values())} clip(s) that are not of the normal class "
            f"(model.init_args.normal_label={self.normal_label!r} with quality 1): {listed}. "
            f"{type(self).__name__} learns the normal class only, so training on these would teach it the "
            "anomalies. Set data.init_args.train_filter to {labels: [<normal_label>], quality: [1]} "
            "(configs/vqa.yaml interpolates it from model.init_args.normal_label), or set "
            "model.init_args.normal_label to the label of your high-quality clips"
        )

    def check_training_task(self, composition: dict[tuple[str, int], int]) -> None:
        """Every training clip is of the normal class (``{(label, quality): count}`` of the training split)."""
        offending = {key: n for key, n in composition.items() if n and not self.is_normal(*key)}
        if offending:
            raise self._task_error(offending, "the training split")
        self._task_checked = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Without a DataModule that reports its training composition, check the first epoch's batches."""
        if self._task_checked or not isinstance(batch, dict) or "label" not in batch:
            return
        if self._batch_check_epoch is None:
            self._batch_check_epoch = int(self.current_epoch)
        if self.current_epoch != self._batch_check_epoch:
            self._task_checked = True  # a whole epoch (every training clip) was checked
            return
        target = self.task_target(batch)
        if bool((target != 0).any()):
            offending: dict[tuple[str, int], int] = {}
            for i in torch.nonzero(target != 0).flatten().tolist():
                key = (self.label_name(int(batch["label"][i])), int(batch["quality"][i]))
                offending[key] = offending.get(key, 0) + 1
            raise self._task_error(offending, f"training batch {batch_idx}")

    def ensure_zoom(self) -> None:
        """Load the zoom checkpoint unless the zoom already holds pretrained weights.

        Runs at the start of fit/validate/test/predict, i.e. after Lightning restored a ``ckpt_path``
        (whose ``zoom_ready`` buffer is True when it was trained with a zoom), so a restored run never
        needs the zoom file and a new run never starts with an untrained zoom.
        """
        if self.zoom is None or bool(self.zoom_ready):
            return
        if self.zoom_checkpoint is None:
            raise ValueError(
                "use_zoom is true but no zoom_checkpoint is given: set --model.init_args.zoom_checkpoint="
                "auto (pretrains it first), or a zoom-in checkpoint PATH (`lightning fit --config "
                "configs/zoom.yaml` writes one), or --model.init_args.use_zoom=false for the no-zoom ablation"
            )
        self.load_zoom(self.zoom_checkpoint)

    def on_fit_start(self) -> None:
        self.ensure_zoom()

    def on_validation_start(self) -> None:
        self.ensure_zoom()

    def on_test_start(self) -> None:
        self.ensure_zoom()

    # ------------------------------------------------------------------------------------ inputs
    def zoom_inputs(
        self,
        video: Tensor,
        flow: Tensor | None = None,
        gaze: Tensor | None = None,
        gaze_valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Crop video, flow and gaze with the frozen zoom-in (identity when ``use_zoom`` is off)."""
        if self.zoom is None:
            return video, flow, gaze, gaze_valid
        with torch.no_grad():
            theta = self.zoom.predict_theta(video[:, :, self.zoom_frame_index])
            video = warp(video, theta)
            if flow is not None:
                flow = warp_flow(flow, theta)
            if gaze is not None:
                inside = warp(gaze, theta, fill=0.0).clamp_min(0).sum(dim=(-2, -1))[:, 0] > 1e-8  # B×T
                gaze = warp_gaze(gaze, theta)
                gaze_valid = inside if gaze_valid is None else gaze_valid.bool() & inside
        return video, flow, gaze, gaze_valid

    @staticmethod
    def require(batch: dict[str, Any], key: str, why: str) -> Tensor:
        if key not in batch:
            raise KeyError(
                f"the batch has no {key!r} ({why}): add {key!r} to data.init_args.modalities "
                f"(batch keys: {sorted(batch)})"
            )
        return batch[key]

    # ------------------------------------------------------------------------------ task targets
    def task_target(self, batch: dict[str, Any]) -> Tensor:
        """1 = low quality (anomaly), 0 = high quality (normal), -1 = unknown quality."""
        label, quality = batch["label"], batch["quality"]
        normal = (label == self.normal_index) & (quality == 1) & (self.normal_index >= 0)
        target = torch.where(normal, 0, 1)
        return torch.where(quality < 0, -1, target).long()

    # ------------------------------------------------------------------------------------ scores
    def score_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per-clip anomaly scores ``{name: B}`` (higher = more anomalous)."""
        raise NotImplementedError

    def _evaluation_step(self, batch: dict[str, Any], stage: str) -> None:
        scores = self.score_batch(batch)
        store = self._store(stage)
        for name in self.score_names:
            store[name].update(scores[name].detach().float())
        store["target"].update(self.task_target(batch).float())
        store["label"].update(batch["label"].float())
        store["quality"].update(batch["quality"].float())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _store(self, stage: str) -> dict[str, CatMetric]:
        """The stage's gathering metrics by column (typed: ModuleDict items are plain Modules to mypy)."""
        return {
            name: cast(CatMetric, metric)
            for name, metric in cast(nn.ModuleDict, self.eval_store[stage]).items()
        }

    def _gather(self, stage: str) -> dict[str, Tensor] | None:
        store = self._store(stage)
        if not store["target"].update_called:
            for metric in store.values():
                metric.reset()
            return None
        values = {
            name: torch.atleast_1d(metric.compute()).detach().double().cpu() for name, metric in store.items()
        }
        for metric in store.values():
            metric.reset()
        return values

    def _sanity_checking(self) -> bool:
        return bool(self._trainer is not None and self.trainer.sanity_checking)

    def _log_metrics(self, metrics: dict[str, float]) -> None:
        self.log_dict(metrics, sync_dist=True)

    def _summarise(self, stage: str) -> dict[str, float] | None:
        values = self._gather(stage)
        if values is None:
            return None
        known = values["target"] >= 0
        y = values["target"][known].long()
        scores = {name: values[name][known] for name in self.score_names}
        both_classes = bool((y == 0).any() and (y == 1).any())
        finite = {name: bool(torch.isfinite(s).all()) for name, s in scores.items()}
        metrics: dict[str, float] = {}
        for name, s in scores.items():
            metrics[f"{stage}/auc_{name}"] = auc(s, y) if both_classes and finite[name] else math.nan
        if stage == "val" and self.score_choice == SCORE_AUTO and not self._sanity_checking():
            self._choose_primary({name: metrics[f"val/auc_{name}"] for name in self.score_names})
        metrics[f"{stage}/auc"] = metrics[f"{stage}/auc_{self.primary_score}"]
        metrics[f"{stage}/primary_score_index"] = float(self.primary_score_index)
        primary = scores[self.primary_score]
        usable = both_classes and finite[self.primary_score]
        if not both_classes:
            rank_zero_warn(
                f"{stage}: the evaluated clips hold {'only one class' if len(y) else 'no clip of known quality'}"
                f" (n={len(y)}); AUC and thresholded metrics are NaN"
            )
        elif not finite[self.primary_score]:
            rank_zero_warn(f"{stage}: the {self.primary_score} score has NaN/inf values (training diverged?)")
        names = ("f1", "acc", "sen", "spe")
        if stage == "val":
            if usable and not self._sanity_checking():
                self.threshold.fill_(best_f1_threshold(primary, y))
            thr = float(self.threshold)
            at = binary_metrics(primary, y, thr) if usable and math.isfinite(thr) else {}
            metrics.update({f"val/{k}": at.get(k, math.nan) for k in names})
            metrics["val/threshold"] = thr
        else:
            thr = float(self.threshold)
            if not math.isfinite(thr):
                rank_zero_warn(
                    "test: no validation threshold in this model (it was never validated): only AUC and "
                    "the oracle metrics (threshold chosen on the test split itself) are reported"
                )
            at = binary_metrics(primary, y, thr) if usable and math.isfinite(thr) else {}
            metrics.update({f"test/{k}": at.get(k, math.nan) for k in names})
            metrics["test/threshold"] = thr
            oracle_thr = best_f1_threshold(primary, y) if usable else math.nan
            oracle = binary_metrics(primary, y, oracle_thr) if usable else {}
            metrics.update({f"test/oracle_{k}": oracle.get(k, math.nan) for k in names})
            metrics["test/oracle_threshold"] = oracle_thr
        self.last_evaluation[stage] = {
            "scores": {name: values[name].numpy() for name in self.score_names},
            "target": values["target"].long().numpy(),
            "label": values["label"].long().numpy(),
            "quality": values["quality"].long().numpy(),
            "class_names": list(self.class_names),
            "primary": self.primary_score,
            "threshold": float(self.threshold),
            "epoch": int(self.current_epoch),
            "sanity": self._sanity_checking(),
        }
        return metrics

    def _choose_primary(self, aucs: dict[str, float]) -> None:
        """``score: auto``: the score of the highest validation AUC becomes the primary one (kept when no
        AUC is defined, e.g. a validation split of one class)."""
        chosen = best_auc_score(aucs)
        if chosen is None:
            return
        self.primary_score_index.fill_(self.score_names.index(chosen))
        if chosen != self._announced_primary:
            self._announced_primary = chosen
            listed = ", ".join(f"{name} {value:.3f}" for name, value in aucs.items())
            rank_zero_info(
                f"score: auto: primary score is now {chosen!r} at epoch {self.current_epoch} "
                f"(validation AUC {listed}); it sets val/auc, the threshold and the decision"
            )
        if aucs[chosen] < 0.5:
            rank_zero_warn(
                f"score: auto: every score ranks the validation classes inversely (best: {chosen} AUC "
                f"{aucs[chosen]:.3f} < 0.5): the model scores high-quality clips as more anomalous"
            )

    def on_validation_epoch_end(self) -> None:
        metrics = self._summarise("val")
        if metrics is not None:
            self._log_metrics(metrics)

    def on_test_epoch_end(self) -> None:
        metrics = self._summarise("test")
        if metrics is not None:
            self._log_metrics(metrics)

    # ----------------------------------------------------------------------------------- predict
    def label_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else ""

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        scores = self.score_batch(batch)
        target = self.task_target(batch)
        thr = float(self.threshold)
        primary = scores[self.primary_score].float()
        if math.isfinite(thr):
            decision = ["low" if float(v) >= thr else "high" for v in primary]
        else:
            decision = ["" for _ in primary]
        columns: dict[str, Any] = {
            "clip_id": list(batch["clip_id"]),
            "label": [self.label_name(int(i)) for i in batch["label"]],
            "quality": batch["quality"],
            "target": [{1: "low", 0: "high"}.get(int(t), "") for t in target],
        }
        for name in self.score_names:
            columns[f"score_{name}"] = scores[name].float()
        columns["threshold"] = torch.full_like(primary, thr)
        columns["decision"] = decision
        return columns

    def on_predict_start(self) -> None:
        self.ensure_zoom()
        if not math.isfinite(float(self.threshold)):
            rank_zero_warn(
                "predict: this model has no validation threshold (it was never validated), so the "
                "decision column is empty; the scores are still written"
            )
