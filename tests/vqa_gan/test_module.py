"""VideoQualityGAN, its baselines and the zoom-in pretrainer as LightningModules (tiny sizes, in-memory data)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.vqa_plots import ROCPlot, ScoreDistributionPlot, plot_roc, plot_score_distribution
from lightning_modules.common.anomaly import auc, best_f1_threshold, binary_metrics
from lightning_modules.common.contracts import group_names
from lightning_modules.vqa_gan.base import encode_flow
from lightning_modules.vqa_gan.baselines import ImageQualityGAN, STAEBaseline, stae_scores
from lightning_modules.vqa_gan.losses import stae_loss
from lightning_modules.vqa_gan.module import VideoQualityGAN, ZoomInPretrainer
from lightning_modules.vqa_gan.scan import usable_segments
from lightning_modules.vqa_gan.zoom import ZoomIn, box_from_theta, theta_from_box, warp, warp_flow

CLASSES = ["approach_transventricular", "transcerebellar", "transventricular"]
TV = CLASSES.index("transventricular")
T, S = 4, 32
SMALL = dict(ngf=4, max_channels=8, feature_dim=16, ndf=4, pool_size=4)


def small_gan(**kwargs) -> VideoQualityGAN:
    args = dict(image_size=S, in_channels=1, num_frames=T, use_zoom=False, **SMALL)
    args.update(kwargs)
    return VideoQualityGAN(**args)


def _gaze(n: int) -> torch.Tensor:
    g = torch.rand(n, 1, T, S, S)
    return g / g.sum(dim=(-2, -1), keepdim=True)


class ClipSet(Dataset):
    """Random clips in the batch contract: video, flow, gaze (+ validity), label, quality, clip_id."""

    def __init__(self, n: int, normal_only: bool, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.video = torch.rand(n, 1, T, S, S, generator=g) * 2 - 1
        self.flow = torch.randn(n, 2, T, S, S, generator=g)
        gaze = torch.rand(n, 1, T, S, S, generator=g)
        self.gaze = gaze / gaze.sum(dim=(-2, -1), keepdim=True)
        self.label = torch.full((n,), TV) if normal_only else torch.tensor([TV, 0, 1, TV] * n)[:n]
        self.quality = torch.ones(n, dtype=torch.long) if normal_only else torch.tensor([1, 0, 1, 0] * n)[:n]

    def __len__(self) -> int:
        return len(self.video)

    def __getitem__(self, i: int) -> dict:
        return {
            "video": self.video[i],
            "flow": self.flow[i],
            "gaze": self.gaze[i],
            "gaze_valid": torch.ones(T, dtype=torch.bool),
            "label": self.label[i],
            "quality": self.quality[i],
            "clip_id": f"c{i}",
        }


class ClipData(LightningDataModule):
    classes = CLASSES
    num_frames = T
    modalities = ("video", "flow", "gaze")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(ClipSet(4, normal_only=True), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ClipSet(8, normal_only=False, seed=1), batch_size=4)

    test_dataloader = val_dataloader
    predict_dataloader = val_dataloader


def tiny_trainer(**kwargs) -> Trainer:
    args = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    args.update(kwargs)
    return Trainer(**args)


# ------------------------------------------------------------------------------------ G / D steps
class GradientSpy(VideoQualityGAN):
    """Records, at each optimiser step, a copy of every parameter's gradient (None when it has none)."""

    def configure_optimizers(self):
        optimizers, schedulers = super().configure_optimizers()
        self.seen: dict[str, list[dict[str, torch.Tensor | None]]] = {"g": [], "d": []}
        for name, opt in zip(("g", "d"), optimizers):
            original = opt.step

            def step(*args, _original=original, _name=name, **kwargs):
                grads = {n: None if p.grad is None else p.grad.clone() for n, p in self.named_parameters()}
                self.seen[_name].append(grads)
                return _original(*args, **kwargs)

            opt.step = step
        return optimizers, schedulers


def _nonzero(grads: dict[str, torch.Tensor | None]) -> set[str]:
    return {n for n, g in grads.items() if g is not None and bool(g.abs().sum() > 0)}


def _names(model: nn.Module, prefixes: tuple[str, ...]) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


@pytest.mark.parametrize("w_rec", [10.0, 0.0])
def test_g_step_reaches_generator_only_and_d_step_discriminators_only(w_rec):
    torch.manual_seed(0)
    model = GradientSpy(
        **{**dict(image_size=S, in_channels=1, num_frames=T, use_zoom=False, **SMALL), "w_rec": w_rec}
    )
    tiny_trainer(max_steps=1).fit(model, datamodule=ClipData())
    generator = _names(model, ("encoder.", "decoder.", "gaze_decoder."))
    discriminators = _names(model, ("d_video.", "d_feature."))
    g_grads, d_grads = model.seen["g"][0], model.seen["d"][0]
    # G step: every generator weight has a gradient (with w_rec=0 only through D_F / D_V), no D parameter
    # has any (the first step: none from an earlier D step either)
    g_step = _nonzero(g_grads)
    assert {n for n in generator if not n.endswith(".bias")} <= g_step  # biases before InstanceNorm cancel
    assert all(g_grads[n] is None for n in discriminators)
    # D step: the discriminators get gradients, the generator's are exactly those left by the G step
    assert {n for n in discriminators if not n.endswith(".bias")} <= _nonzero(d_grads)
    for n in generator:
        if g_grads[n] is None:
            assert d_grads[n] is None
        else:
            torch.testing.assert_close(d_grads[n], g_grads[n], msg=n)
    # toggle/untoggle left everything trainable again (the zoom is absent here)
    assert all(p.requires_grad for p in model.parameters())


def test_g_loss_terms_match_the_paper_weights(monkeypatch):
    torch.manual_seed(0)
    model = small_gan(w_adv=2.0, w_rec=3.0, w_gaze=0.5)
    x = torch.rand(2, 1, T, S, S) * 2 - 1
    flow = torch.tanh(torch.randn(2, 2, T, S, S))
    total, parts, fake, feature = model.generator_losses(
        x, flow, _gaze(2), torch.ones(2, T, dtype=torch.bool)
    )
    expected = 2.0 * parts["adv"] + 3.0 * (parts["l1"] + parts["ssim"] + parts["cycle"]) + 0.5 * parts["gaze"]
    torch.testing.assert_close(total, expected)
    assert fake.shape == x.shape and feature.shape == (2, 16)
    # without gaze weight there is no gaze decoder and no gaze term
    plain = small_gan(w_gaze=0.0)
    assert plain.gaze_decoder is None
    assert "gaze" not in plain.generator_losses(x, flow, None, None)[1]


def test_d_loss_is_half_real_plus_fake():
    torch.manual_seed(0)
    model = small_gan(pool_size=0)
    x = torch.rand(3, 1, T, S, S) * 2 - 1
    fake = torch.rand(3, 1, T, S, S) * 2 - 1
    feature = torch.randn(3, 16)
    model.d_video = _Const(0.5)
    model.d_feature = _Const(0.25)
    d_video, d_feature = model.discriminator_losses(x, fake, feature)
    # LSGAN: 0.5 * ((0.5 - 1)^2 + 0.5^2) = 0.25 ; 0.5 * ((0.25 - 1)^2 + 0.25^2) = 0.3125
    assert float(d_video) == pytest.approx(0.25)
    assert float(d_feature) == pytest.approx(0.3125)


class _Const(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 1), self.value) + self.w


# --------------------------------------------------------------------------------------- scores
class _Flatten(nn.Module):
    def forward(self, video: torch.Tensor, flow: torch.Tensor | None = None) -> torch.Tensor:
        return video.flatten(1)


class _Unflatten(nn.Module):
    def __init__(self, shape: tuple[int, ...], shift: float = 0.0) -> None:
        super().__init__()
        self.shape, self.shift = shape, shift

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(z.shape[0], *self.shape) + self.shift


@pytest.mark.parametrize("use_flow", [False, True])
def test_scores_are_zero_for_a_perfect_autoencoder(use_flow):
    model = small_gan(use_flow=use_flow)
    model.encoder, model.decoder = _Flatten(), _Unflatten((1, T, S, S))
    x = torch.rand(3, 1, T, S, S) * 1.6 - 0.8
    flow = torch.randn(3, 2, T, S, S) if use_flow else None
    scores = model.scores_from_inputs(x, flow)
    for name in ("feature", "l1", "ssim"):
        torch.testing.assert_close(scores[name], torch.zeros(3), atol=1e-6, rtol=0)
    # a decoder that adds 0.1 everywhere: pixel L1 0.1 and feature error |x - (x + 0.1)| = 0.1
    model.decoder = _Unflatten((1, T, S, S), shift=0.1)
    scores = model.scores_from_inputs(x, flow)
    torch.testing.assert_close(scores["l1"], torch.full((3,), 0.1), atol=1e-6, rtol=0)
    torch.testing.assert_close(scores["feature"], torch.full((3,), 0.1), atol=1e-6, rtol=0)


def test_task_target_normal_is_transventricular_with_quality_one():
    model = small_gan()
    model.normal_index = TV
    batch = {
        "label": torch.tensor([TV, TV, 0, 1, TV, -1]),
        "quality": torch.tensor([1, 0, 0, 1, -1, 1]),
    }
    assert model.task_target(batch).tolist() == [0, 1, 1, 1, -1, 1]


def test_flow_encodings():
    flow = torch.zeros(1, 2, 2, 8, 8)
    flow[0, 0, 1] = 0.96  # 0.96 px at 8 px width, scale 0.03 -> 0.96 / 0.24 = 4
    raw = encode_flow(flow, "raw", 0.03)
    assert raw.shape == (1, 2, 2, 8, 8)
    torch.testing.assert_close(raw[0, 0, 1], torch.full((8, 8), math.tanh(4.0)))
    color = encode_flow(flow, "color", 0.03)
    assert color.shape == (1, 3, 2, 8, 8)
    torch.testing.assert_close(color[0, :, 0], torch.ones(3, 8, 8))  # zero flow is white
    assert float(color.min()) >= -1 and float(color.max()) <= 1
    model = small_gan(flow_encoding="color")
    assert model.encoder.flow_channels == 3
    with pytest.raises(ValueError, match="flow_encoding"):
        small_gan(flow_encoding="hsv")


# -------------------------------------------------------------------------------- thresholds
def _feed(model, stage: str, scores: list[float], labels: list[int], quality: list[int]) -> dict[str, float]:
    s = torch.tensor(scores)
    model.score_batch = lambda batch: {name: s for name in model.score_names}
    batch = {"label": torch.tensor(labels), "quality": torch.tensor(quality)}
    model._evaluation_step(batch, stage)
    return model._summarise(stage)


def test_threshold_is_chosen_on_val_kept_in_the_checkpoint_and_used_at_test():
    model = small_gan()
    model.normal_index = TV
    model.class_names = CLASSES
    # val: normals (TV, q=1) score 0.1, 0.2, 0.5; anomalies 0.4, 0.6, 0.7
    val = _feed(model, "val", [0.1, 0.2, 0.5, 0.4, 0.6, 0.7], [TV, TV, TV, 0, 1, TV], [1, 1, 1, 0, 1, 0])
    y = [0, 0, 0, 1, 1, 1]
    thr = best_f1_threshold([0.1, 0.2, 0.5, 0.4, 0.6, 0.7], y)
    assert thr == pytest.approx(0.4)
    assert float(model.threshold) == pytest.approx(thr)
    assert val["val/auc"] == pytest.approx(8 / 9)
    assert val["val/f1"] == pytest.approx(binary_metrics([0.1, 0.2, 0.5, 0.4, 0.6, 0.7], y, thr)["f1"])
    # the threshold is part of the checkpointed state
    fresh = small_gan()
    assert math.isnan(float(fresh.threshold))
    fresh.load_state_dict(model.state_dict())
    assert float(fresh.threshold) == pytest.approx(0.4)
    # test: metrics at the val threshold, and at the test split's own best threshold as oracle_*
    fresh.normal_index = TV
    test_scores = [0.3, 0.45, 0.35, 0.5]
    test = _feed(fresh, "test", test_scores, [TV, TV, 0, 1], [1, 1, 0, 1])
    assert test["test/threshold"] == pytest.approx(0.4)
    assert test["test/sen"] == pytest.approx(0.5)  # 0.5 >= 0.4 caught, 0.35 missed
    assert test["test/spe"] == pytest.approx(0.5)  # 0.3 kept, 0.45 rejected
    assert test["test/oracle_threshold"] == pytest.approx(best_f1_threshold(test_scores, [0, 0, 1, 1]))
    assert test["test/auc"] == pytest.approx(auc(test_scores, [0, 0, 1, 1]))
    ev = fresh.last_evaluation["test"]
    assert ev["target"].tolist() == [0, 0, 1, 1] and ev["threshold"] == pytest.approx(0.4)


def test_one_class_gives_nan_metrics_and_keeps_the_threshold():
    model = small_gan()
    model.normal_index = TV
    with pytest.warns(UserWarning, match="only one class"):
        val = _feed(model, "val", [0.1, 0.2], [TV, TV], [1, 1])
    assert math.isnan(val["val/auc"]) and math.isnan(float(model.threshold))


def test_unknown_quality_is_left_out_of_the_metrics():
    model = small_gan()
    model.normal_index = TV
    val = _feed(model, "val", [0.1, 0.9, 0.5], [TV, 0, TV], [1, 0, -1])
    assert val["val/auc"] == pytest.approx(1.0)
    assert float(model.threshold) == pytest.approx(0.9)


def test_predict_columns_and_decision():
    model = small_gan()
    model.normal_index, model.class_names = TV, CLASSES
    model.threshold.fill_(0.5)
    s = torch.tensor([0.2, 0.7, 0.5])
    model.score_batch = lambda batch: {"feature": s, "l1": s * 2, "ssim": s * 3}
    batch = {
        "clip_id": ["a", "b", "c"],
        "label": torch.tensor([TV, 0, 5]),
        "quality": torch.tensor([1, 0, -1]),
    }
    out = model.predict_step(batch, 0)
    assert out["clip_id"] == ["a", "b", "c"]
    assert out["label"] == ["transventricular", "approach_transventricular", ""]
    assert out["target"] == ["high", "low", ""]
    assert out["decision"] == ["high", "low", "low"]  # score >= threshold -> low quality
    torch.testing.assert_close(out["score_l1"], s * 2)


# ------------------------------------------------------------------------------ training runs
class LRRecorder(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_lr_schedule_is_stepped_once_per_epoch():
    recorder = LRRecorder()
    model = small_gan(n_constant_epochs=1, n_decay_epochs=2, lr=1e-3)
    trainer = tiny_trainer(max_epochs=3, limit_train_batches=1, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, datamodule=ClipData())
    assert recorder.lrs == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.0)  # both optimisers decay


def test_fit_validate_under_bf16_mixed():
    torch.manual_seed(0)
    model = small_gan()
    trainer = tiny_trainer(limit_val_batches=2, precision="bf16-mixed")
    trainer.fit(model, datamodule=ClipData())
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/g_loss_epoch"]) and torch.isfinite(metrics["train/d_loss_epoch"])
    assert 0.0 <= float(metrics["val/auc"]) <= 1.0
    assert math.isfinite(float(model.threshold))


def test_baselines_train_and_score():
    torch.manual_seed(0)
    for model in (
        ImageQualityGAN(image_size=S, in_channels=1, num_frames=T, use_zoom=False, **SMALL),
        STAEBaseline(image_size=S, in_channels=1, num_frames=T, channels=[4, 8], use_zoom=False),
    ):
        trainer = tiny_trainer(limit_train_batches=1, limit_val_batches=2)
        trainer.fit(model, datamodule=ClipData())
        assert 0.0 <= float(trainer.callback_metrics["val/auc"]) <= 1.0


def test_image_baseline_sees_only_the_last_frame():
    torch.manual_seed(0)
    model = ImageQualityGAN(image_size=S, in_channels=1, num_frames=T, use_zoom=False, **SMALL).eval()
    assert model.encoder.num_frames == 1 and model.encoder.flow_channels == 0
    video = torch.rand(2, 1, T, S, S) * 2 - 1
    changed = video.clone()
    changed[:, :, :-1] = -1.0
    with torch.no_grad():
        a = model.score_batch({"video": video})
        b = model.score_batch({"video": changed})
    for name in model.score_names:
        torch.testing.assert_close(a[name], b[name])


def test_stae_scores_average_to_its_loss_and_split_the_clip():
    torch.manual_seed(0)
    recon, target = torch.rand(3, 1, 4, 8, 8), torch.rand(3, 1, 4, 8, 8)
    pred, future = torch.rand(3, 1, 4, 8, 8), torch.rand(3, 1, 4, 8, 8)
    per_clip = stae_scores(recon, target, pred, future)
    rec, prd = stae_loss(recon, target, pred, future)
    torch.testing.assert_close(per_clip["recon"].mean(), rec)
    torch.testing.assert_close(per_clip["pred"].mean(), prd)
    torch.testing.assert_close(per_clip["total"], per_clip["recon"] + per_clip["pred"])
    model = STAEBaseline(image_size=S, in_channels=1, num_frames=T, channels=[4, 8], use_zoom=False)
    assert (model.stae.num_frames, model.stae.num_future) == (2, 2)
    video = torch.arange(T, dtype=torch.float32).reshape(1, 1, T, 1, 1).expand(1, 1, T, S, S)
    clip, fut = model.split({"video": video})
    assert clip[0, 0, :, 0, 0].tolist() == [0.0, 1.0] and fut[0, 0, :, 0, 0].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="num_future"):
        STAEBaseline(image_size=S, in_channels=1, num_frames=T, num_future=T, use_zoom=False)


# ------------------------------------------------------------------------------------ zoom-in
def _zoom_checkpoint(tmp_path: Path, s_min: float = 0.25, image_size: int = S) -> Path:
    torch.manual_seed(0)
    pre = ZoomInPretrainer(image_size=image_size, in_channels=1, s_min=s_min)
    path = tmp_path / "zoom.ckpt"
    torch.save({"state_dict": pre.state_dict(), "hyper_parameters": dict(pre.hparams)}, path)
    return path


def test_zoom_is_loaded_frozen_and_checked(tmp_path):
    path = _zoom_checkpoint(tmp_path)
    model = small_gan(use_zoom=True, zoom_checkpoint=str(path))
    assert not bool(model.zoom_ready)
    model.ensure_zoom()
    assert bool(model.zoom_ready)
    reference = ZoomIn()
    reference.load_weights(path)
    for (name, a), b in zip(model.zoom.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    model.train()
    assert not model.zoom.training and not any(p.requires_grad for p in model.zoom.parameters())
    assert "zoom_ready" in model.state_dict()
    # errors that say what to do
    with pytest.raises(FileNotFoundError, match=re.escape("configs/zoom.yaml")):
        small_gan(use_zoom=True, zoom_checkpoint=str(tmp_path / "missing.ckpt")).ensure_zoom()
    with pytest.raises(ValueError, match="use_zoom=false"):
        small_gan(use_zoom=True, zoom_checkpoint=None).ensure_zoom()
    with pytest.raises(ValueError, match="zoom_s_min"):
        small_gan(use_zoom=True, zoom_checkpoint=str(path), zoom_s_min=0.5).ensure_zoom()
    with pytest.raises(ValueError, match="zoom_localizer_size=32"):
        other = VideoQualityGAN(
            image_size=64, in_channels=1, num_frames=T, zoom_checkpoint=str(path), **SMALL
        )
        other.ensure_zoom()


def test_zoom_crops_video_flow_and_gaze_consistently(tmp_path):
    model = small_gan(use_zoom=True, zoom_checkpoint=str(_zoom_checkpoint(tmp_path)))
    model.ensure_zoom()
    theta = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])  # the central half of the frame
    model.zoom.predict_theta = lambda frames: theta.repeat(frames.shape[0], 1, 1)
    video = torch.rand(1, 1, T, S, S) * 2 - 1
    flow = torch.randn(1, 2, T, S, S)
    gaze = torch.zeros(1, 1, T, S, S)
    gaze[..., 16, 16] = 1.0  # frames 0-3 fixate the centre ...
    gaze[:, :, 1] = 0.0
    gaze[:, :, 1, 0, 0] = 1.0  # ... but frame 1 a corner, outside the crop
    valid = torch.ones(1, T, dtype=torch.bool)
    v, f, g, ok = model.zoom_inputs(video, flow, gaze, valid)
    torch.testing.assert_close(v, warp(video, theta))
    torch.testing.assert_close(f, warp_flow(flow, theta))
    assert ok.tolist() == [[True, False, True, True]]
    torch.testing.assert_close(g.sum(dim=(-2, -1)), torch.ones(1, 1, T))


def test_zoom_pretrainer_step_metrics_known_answer():
    pre = ZoomInPretrainer(image_size=S, in_channels=1, s_min=0.25)
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.1, 0.2, 0.3, 0.6]])
    target = theta_from_box(box, s_min=0.25)
    pre.zoom.predict_theta = lambda image: target
    out = pre._step({"image": torch.zeros(2, 1, S, S), "box": box})
    assert float(out["loss"]) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(out["iou"], torch.ones(2))
    # the second box is 0.2 x 0.4: its square crop is 0.4 x 0.4, IoU with the box 0.08 / 0.16
    assert out["iou_box"].tolist() == pytest.approx([1.0, 0.5])
    torch.testing.assert_close(out["pred"], box_from_theta(target))


# -------------------------------------------------------------------------------- figures
def _evaluation() -> dict:
    return {
        "scores": {"feature": np.array([0.1, 0.2, 0.6, 0.7, 0.3]), "l1": np.array([0.5, 0.4, 0.3, 0.2, 0.1])},
        "target": np.array([0, 0, 1, 1, 1]),
        "label": np.array([TV, TV, 0, TV, 1]),
        "quality": np.array([1, 1, 0, 0, 1]),
        "class_names": CLASSES,
        "primary": "feature",
        "threshold": 0.3,
        "epoch": 0,
        "sanity": False,
    }


def test_score_groups_split_labels_by_quality():
    assert group_names(_evaluation()) == [
        "transventricular (q=1)",
        "transventricular (q=1)",
        "approach_transventricular",
        "transventricular (q=0)",
        "transcerebellar",
    ]


def test_figures_are_drawn_and_saved(tmp_path):
    import matplotlib.pyplot as plt

    fig = plot_score_distribution(_evaluation())
    assert len(fig.axes[0].patches) == 4  # one bar per group
    plt.close(fig)
    fig = plot_roc(_evaluation())
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [
        "feature (AUC 1.000)",
        f"l1 (AUC {auc([0.5, 0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1, 1]):.3f})",
    ]
    plt.close(fig)

    class Holder:
        def __init__(self) -> None:
            self.last_evaluation = {"val": _evaluation(), "test": _evaluation()}

    class FakeTrainer:
        is_global_zero = True
        logger = None
        default_root_dir = str(tmp_path)
        global_step = 0

    for callback in (ScoreDistributionPlot(), ROCPlot()):
        callback.on_validation_end(FakeTrainer(), Holder())
        callback.on_test_end(FakeTrainer(), Holder())
        assert callback.saved["val"].is_file() and callback.saved["test"].is_file()
        assert callback.saved["test"].parent == tmp_path / "figures"


# --------------------------------------------------------------------------------- scan
def test_usable_segments_join_consecutive_high_windows():
    rows = [
        {"scan_id": "s", "end_frame": e, "decision": d}
        for e, d in [(56, "low"), (64, "high"), (72, "high"), (80, "low"), (88, "high")]
    ]
    segs = usable_segments(rows, fps=8.0, span=57)
    assert [(s["start_frame"], s["end_frame"], s["windows"]) for s in segs] == [(8, 72, 2), (32, 88, 1)]
    assert segs[0]["start_s"] == pytest.approx(1.0) and segs[0]["end_s"] == pytest.approx(73 / 8)


def test_scan_plot_marks_the_task_classes():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from lightning_modules.vqa_gan.scan import plot_scan

    rows = [{"time_s": t, "score_ssim": s} for t, s in [(1.0, 0.7), (2.0, 0.4), (3.0, 0.8)]]
    clips = [
        (0.5, 1.5, "transventricular", 1),
        (1.5, 2.5, "transcerebellar", 1),
        (2.5, 3.0, "background", None),
    ]
    fig = plot_scan("s", rows, "ssim", 0.5, clips)
    spans = fig.axes[1].patches
    # high quality for the task only for transventricular with quality 1
    assert [p.get_facecolor()[:3] for p in spans] == [
        to_rgba(c)[:3] for c in ("tab:green", "tab:red", "tab:grey")
    ]
    plt.close(fig)
