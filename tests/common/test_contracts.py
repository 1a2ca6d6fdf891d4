"""Callbacks state what they read from the model (lightning_modules/common/contracts.py): attached to a
model that does not provide it, the run stops with an error naming the callback, the model and the member,
instead of a callback that silently draws nothing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule

from callbacks.saliency_maps import SaliencyMapLogger
from callbacks.vqa_media import ReconstructionStrips
from callbacks.vqa_plots import ROCPlot, ScoreDistributionPlot
from lightning_modules.clstm_unet.module import CLSTMUNet
from lightning_modules.common.contracts import (
    ContractError,
    EvaluationModule,
    ReconstructionModule,
    group_names,
)
from lightning_modules.vqa_gan.baselines import STAEBaseline
from lightning_modules.vqa_gan.module import VideoQualityGAN


class PlainModel(LightningModule):
    """A model that keeps no evaluation, has no reconstruction views and returns a bare tensor."""


@pytest.mark.parametrize("callback", [ScoreDistributionPlot(), ROCPlot()])
def test_evaluation_figures_refuse_a_model_without_last_evaluation(callback):
    with pytest.raises(ContractError, match=rf"{type(callback).__name__} reads last_evaluation .*PlainModel"):
        callback.setup(None, PlainModel(), "fit")


def test_reconstruction_strips_refuse_a_model_without_reconstruction_views():
    with pytest.raises(ContractError, match=r"ReconstructionStrips reads reconstruction_views .*PlainModel"):
        ReconstructionStrips().setup(None, PlainModel(), "fit")


def test_vqa_models_provide_what_the_vqa_callbacks_read():
    stae = STAEBaseline(image_size=32, in_channels=1, num_frames=4, use_zoom=False)
    views = stae.reconstruction_views({"video": torch.zeros(2, 1, 4, 32, 32)})
    assert views["input"].shape == views["reconstruction"].shape == (2, 1, 2, 32, 32)
    model = VideoQualityGAN(
        image_size=32,
        in_channels=1,
        num_frames=4,
        use_zoom=False,
        ngf=4,
        max_channels=8,
        feature_dim=16,
        ndf=4,
    )
    assert isinstance(model, EvaluationModule) and isinstance(model, ReconstructionModule)
    for module in (model, stae):
        for callback in (ScoreDistributionPlot(), ROCPlot(), ReconstructionStrips()):
            callback.setup(None, module, "fit")  # no error


def _saliency_call(outputs, H: int = 16):
    logger = SaliencyMapLogger(num_items=1, every_n_epochs=1)
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, current_epoch=0)
    batch = {
        "video": torch.zeros(2, 1, 3, H, H),
        "gaze": torch.zeros(2, 1, 3, H, H),
        "target_index": torch.full((2,), 2),
    }
    logger.on_validation_batch_end(trainer, PlainModel(), outputs, batch, 0)
    return logger


def test_saliency_logger_names_the_model_whose_step_returns_no_log_pred():
    with pytest.raises(ContractError, match=r"PlainModel.validation_step to return .*log_pred.*got Tensor"):
        _saliency_call(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ContractError, match=r"got a dict with keys \['loss'\]"):
        _saliency_call({"loss": torch.tensor(0.0)})
    with pytest.raises(ContractError, match=r"log_pred must be B×1×H×W, got \(2, 16, 16\)"):
        _saliency_call({"log_pred": torch.zeros(2, 16, 16)})
    with pytest.raises(ContractError, match=r"log_pred is \(8, 8\), the gaze maps \(16, 16\)"):
        _saliency_call({"log_pred": torch.zeros(2, 1, 8, 8)})
    assert _saliency_call({"log_pred": torch.zeros(2, 1, 16, 16)})._grid is not None


def test_clstm_unet_validation_step_returns_the_saliency_contract():
    """What CLSTMUNet's validation_step returns is what the saliency logger accepts."""
    model = CLSTMUNet(image_size=16, in_channels=1, base_channels=4, depth=2, convlstm_hidden=4, num_before=2)
    model.eval()
    gaze = torch.zeros(2, 1, 3, 16, 16)
    gaze[:, :, :, 8, 8] = 1.0
    batch = {
        "video": torch.zeros(2, 1, 3, 16, 16),
        "gaze": gaze,
        "gaze_valid": torch.ones(2, 3, dtype=torch.bool),
        "target_index": torch.full((2,), 2),
    }
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):
        outputs = model.validation_step(batch, 0)
    assert set(outputs) == {"log_pred"} and outputs["log_pred"].shape == (2, 1, 16, 16)
    assert _saliency_call(outputs)._grid is not None


def test_group_names_split_a_label_seen_with_both_qualities():
    evaluation = {
        "scores": {"feature": np.zeros(4)},
        "target": np.array([0, 1, 1, 1]),
        "label": np.array([0, 0, 1, -1]),
        "quality": np.array([1, 0, 0, 0]),
        "class_names": ["tv", "tc"],
        "primary": "feature",
        "threshold": 0.5,
        "epoch": 0,
        "sanity": False,
    }
    assert group_names(evaluation) == ["tv (q=1)", "tv (q=0)", "tc", "?"]
