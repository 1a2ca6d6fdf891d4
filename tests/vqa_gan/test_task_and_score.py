"""VQA task definition (the normal class, checked against the training data) and ``score: auto`` (the
primary anomaly score chosen by validation AUC): known answers on tiny in-memory data."""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from lightning_modules.common.anomaly import auc, best_auc_score, best_f1_threshold
from lightning_modules.vqa_gan.module import VideoQualityGAN

CLASSES = ["abdomen", "transcerebellar", "transventricular"]
TV = CLASSES.index("transventricular")
T, S = 4, 32


def small_gan(**kwargs) -> VideoQualityGAN:
    args = dict(image_size=S, in_channels=1, num_frames=T, use_zoom=False, ngf=4, max_channels=8)
    return VideoQualityGAN(**{**args, "feature_dim": 16, "ndf": 4, "pool_size": 4, **kwargs})


class MixedClips(Dataset):
    """Clips in the batch contract whose (label, quality) alternate: TV/1, abdomen/0, TV/0, TV/1."""

    LABEL_QUALITY: ClassVar[list[tuple[int, int]]] = [(TV, 1), (0, 0), (TV, 0), (TV, 1)]

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        label, quality = self.LABEL_QUALITY[i % 4]
        return {
            "video": torch.zeros(1, T, S, S),
            "flow": torch.zeros(2, T, S, S),
            "label": torch.tensor(label),
            "quality": torch.tensor(quality),
            "clip_id": f"c{i}",
        }


# --------------------------------------------------------------------------------- the normal class
Y = [0, 0, 0, 1, 1, 1]  # task targets of the validation clips below: 3 normal, 3 anomalies
LABELS = [TV, TV, TV, 0, 1, TV]
QUALITY = [1, 1, 1, 0, 1, 0]
# SSIM ranks the classes correctly, L1 inversely, feature half right
VAL_SCORES = {
    "feature": [0.2, 0.6, 0.4, 0.5, 0.3, 0.7],
    "l1": [0.9, 0.8, 0.7, 0.3, 0.2, 0.1],
    "ssim": [0.1, 0.2, 0.3, 0.6, 0.7, 0.8],
}


def test_training_split_with_anomalies_is_an_error_naming_both_keys():
    model = small_gan()
    ok = {("transventricular", 1): 12}
    model.check_training_task(ok)  # the configs' filter: normal clips only
    dropped = {("transventricular", 1): 12, ("transventricular", 0): 5, ("abdomen", 0): 7, ("abdomen", -1): 2}
    with pytest.raises(ValueError) as info:
        model.check_training_task(dropped)
    message = str(info.value)
    assert "data.init_args.train_filter" in message and "model.init_args.normal_label" in message
    assert "14 clip(s)" in message  # 5 + 7 + 2, the normal ones not counted
    assert "7 x abdomen (quality 0)" in message and "2 x abdomen (quality unknown)" in message


class MixedTrainData(LightningDataModule):
    """A DataModule without ``split_composition``: its training loader mixes normal and anomalous clips."""

    classes = CLASSES
    modalities = ("video", "flow")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(MixedClips(), batch_size=4)


def test_first_epoch_batches_are_checked_without_a_composition():
    model = small_gan(w_gaze=0.0)
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, limit_val_batches=0
    )
    with pytest.raises(
        ValueError, match=r"training batch 0 holds 2 clip.*data\.init_args\.train_filter"
    ) as info:
        trainer.fit(model, datamodule=MixedTrainData())
    assert "1 x abdomen (quality 0), 1 x transventricular (quality 0)" in str(info.value)


# ------------------------------------------------------------------------------------- score: auto
def _feed(model, stage: str, scores: dict[str, list[float]]) -> dict[str, float]:
    model.score_batch = lambda batch: {k: torch.tensor(v) for k, v in scores.items()}
    model._evaluation_step({"label": torch.tensor(LABELS), "quality": torch.tensor(QUALITY)}, stage)
    return model._summarise(stage)


def test_best_auc_score_known_answers():
    assert best_auc_score({"feature": 0.4, "l1": 0.2, "ssim": 0.7}) == "ssim"
    assert best_auc_score({"feature": math.nan, "l1": 0.7, "ssim": 0.7}) == "l1"  # tie: the earlier
    assert best_auc_score({"feature": math.nan, "l1": math.nan}) is None


def test_auto_picks_the_score_that_ranks_validation_correctly(caplog):
    model = small_gan(score="auto")
    model.normal_index, model.class_names = TV, CLASSES
    assert auc(VAL_SCORES["l1"], Y) == 0.0 and auc(VAL_SCORES["ssim"], Y) == 1.0
    with caplog.at_level(logging.INFO):
        val = _feed(model, "val", VAL_SCORES)
    assert model.primary_score == "ssim"
    assert val["val/primary_score_index"] == 2.0  # index into score_names (feature, l1, ssim)
    assert val["val/auc"] == 1.0 and val["val/auc_l1"] == 0.0
    assert float(model.threshold) == pytest.approx(best_f1_threshold(VAL_SCORES["ssim"], Y)) == 0.6
    assert "primary score is now 'ssim'" in caplog.text
    # the checkpointed pair (score, threshold) carries to test and predict
    fresh = small_gan(score="auto")
    assert fresh.primary_score == "feature"
    fresh.load_state_dict(model.state_dict())
    fresh.normal_index, fresh.class_names = TV, CLASSES
    test_scores = {"feature": [0.5] * 6, "l1": [0.1] * 6, "ssim": [0.1, 0.2, 0.7, 0.65, 0.9, 0.3]}
    test = _feed(fresh, "test", test_scores)
    assert test["test/auc"] == pytest.approx(auc(test_scores["ssim"], Y))
    assert test["test/threshold"] == pytest.approx(0.6) and test["test/sen"] == pytest.approx(2 / 3)
    out = fresh.predict_step({"clip_id": list("abcdef"), **_batch()}, 0)
    # decided by ssim >= 0.6 (by l1 or feature every clip would be "high")
    assert out["decision"] == ["high", "high", "low", "low", "low", "high"]


def _batch() -> dict[str, torch.Tensor]:
    return {"label": torch.tensor(LABELS), "quality": torch.tensor(QUALITY)}


def test_fixed_score_never_switches_and_old_checkpoints_load():
    model = small_gan(score="l1")
    model.normal_index = TV
    val = _feed(model, "val", VAL_SCORES)
    assert model.primary_score == "l1" and val["val/auc"] == 0.0 and val["val/primary_score_index"] == 1.0
    # a checkpoint written before the score index existed loads with its configured score
    state = {k: v for k, v in model.state_dict().items() if k != "primary_score_index"}
    fresh = small_gan(score="ssim")
    fresh.load_state_dict(state)
    assert fresh.primary_score == "ssim"
    with pytest.raises(ValueError, match="auto"):
        small_gan(score="psnr")


def test_auto_keeps_its_choice_when_validation_has_one_class():
    model = small_gan(score="auto")
    model.normal_index = TV
    _feed(model, "val", VAL_SCORES)
    model.score_batch = lambda batch: {k: torch.tensor([0.1, 0.2]) for k in VAL_SCORES}
    model._evaluation_step({"label": torch.tensor([TV, TV]), "quality": torch.tensor([1, 1])}, "val")
    with pytest.warns(UserWarning, match="only one class"):
        model._summarise("val")
    assert model.primary_score == "ssim"
