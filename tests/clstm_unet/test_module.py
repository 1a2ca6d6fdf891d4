"""CLSTMUNet LightningModule: loss, logged metrics and centre-bias figures, augmentation hook, predict columns,
config checks; the W&B saliency-map grid."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from callbacks.saliency_maps import SaliencyMapLogger, saliency_grid
from lightning_modules.clstm_unet.module import CLSTMUNet, map_peak_xy
from lightning_modules.common.saliency import (
    cc,
    centre_bias_map,
    kld,
    nss,
    saliency_kld_loss,
    sim,
)

SMALL = dict(image_size=16, in_channels=1, base_channels=4, depth=2, convlstm_hidden=4)


def _gaussian(H: int, W: int, cy: float, cx: float, sigma: float = 2.0) -> torch.Tensor:
    ys = torch.arange(H, dtype=torch.float32).view(H, 1)
    xs = torch.arange(W, dtype=torch.float32).view(1, W)
    g = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
    return g / g.sum()


def _items(n: int, T: int, target: int, H: int = 16, seed: int = 0) -> list[dict]:
    """Sequence items as the SaliencySequenceDataModule yields them (one per dict, collated by DataLoader)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        centres = torch.randint(2, H - 2, (T, 2), generator=g)
        gaze = torch.stack([_gaussian(H, H, float(cy), float(cx)) for cy, cx in centres]).unsqueeze(0)
        valid = torch.ones(T, dtype=torch.bool)
        fixations = torch.zeros(1, T, H, H, dtype=torch.bool)  # the binary map the DataModule adds
        fixations[0, torch.arange(T), centres[:, 0], centres[:, 1]] = True
        if i == 1:
            valid[target] = False  # the target frame of item 1 had no fixation
            gaze[0, target] = 1.0 / (H * H)
            fixations[0, target] = False
        items.append(
            {
                "video": torch.rand(1, T, H, H, generator=g) * 2 - 1,
                "gaze": gaze,
                "gaze_valid": valid,
                "fixations": fixations,
                "target_index": torch.tensor(target),
                "clip_id": f"clip{i}@{i}",
            }
        )
    return items


def _trainer() -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )


def test_logged_test_metrics_equal_the_functional_metrics_over_valid_items():
    torch.manual_seed(0)
    module = CLSTMUNet(**SMALL, num_before=2, augment=False)
    items = _items(5, T=3, target=2)
    loader = DataLoader(items, batch_size=3)
    out = _trainer().test(module, dataloaders=loader)[0]

    module.eval()
    with torch.no_grad():
        video = torch.stack([it["video"] for it in items])
        log_pred = module(video, 2)
    pred = log_pred.exp()
    target = torch.stack([it["gaze"][:, 2] for it in items])
    keep = torch.tensor([True, False, True, True, True])
    fix = torch.stack([it["fixations"][:, 2] for it in items])  # NSS at the real fixations (MIT)
    assert fix.sum().item() == 4  # one fixation per valid item, none on item 1
    expected = {
        "test/kld": kld(pred, target)[keep].mean(),
        "test/sim": sim(pred, target)[keep].mean(),
        "test/cc": cc(pred, target)[keep].mean(),
        "test/nss": nss(pred, fix)[keep].mean(),
    }
    for key, value in expected.items():
        assert out[key] == pytest.approx(value.item(), rel=1e-4, abs=1e-5), key
    centre = centre_bias_map(16, 16, 0.25).expand(5, 1, 16, 16)
    assert out["test/centre_bias/kld"] == pytest.approx(kld(centre, target)[keep].mean().item(), rel=1e-4)
    assert out["test/centre_bias/cc"] == pytest.approx(cc(centre, target)[keep].mean().item(), rel=1e-4)
    # test/loss is the batch-size-weighted mean of the per-batch losses over valid items
    loss_b1 = saliency_kld_loss(log_pred[:3], target[:3], keep[:3])
    loss_b2 = saliency_kld_loss(log_pred[3:], target[3:], keep[3:])
    assert out["test/loss"] == pytest.approx(((3 * loss_b1 + 2 * loss_b2) / 5).item(), rel=1e-4)


def test_predict_step_columns():
    torch.manual_seed(0)
    module = CLSTMUNet(**SMALL, num_before=1, augment=False).eval()
    items = _items(3, T=2, target=1)
    batch = {
        "video": torch.stack([it["video"] for it in items]),
        "gaze": torch.stack([it["gaze"] for it in items]),
        "gaze_valid": torch.stack([it["gaze_valid"] for it in items]),
        "target_index": torch.tensor([1, 1, 1]),
        "clip_id": [it["clip_id"] for it in items],
    }
    with torch.no_grad():
        cols = module.predict_step(batch, 0)
        pred = module(batch["video"], 1).exp()
    assert cols["clip_id"] == ["clip0@0", "clip1@1", "clip2@2"]
    flat = pred.flatten(1).argmax(1)
    torch.testing.assert_close(cols["pred_x"], ((flat % 16).float() + 0.5) / 16)
    torch.testing.assert_close(cols["pred_y"], ((flat // 16).float() + 0.5) / 16)
    target = batch["gaze"][:, :, 1]
    assert torch.isnan(cols["kld"][1]) and torch.isnan(cols["gaze_x"][1])  # no fixation on item 1's target
    torch.testing.assert_close(cols["kld"][[0, 2]], kld(pred, target)[[0, 2]])
    torch.testing.assert_close(cols["cc"][[0, 2]], cc(pred, target)[[0, 2]])
    assert all(len(v) == 3 for v in cols.values())


def test_map_peak_xy_known_answer():
    maps = torch.zeros(2, 1, 4, 8)
    maps[0, 0, 1, 6] = 1.0  # row 1, column 6
    maps[1, 0, 3, 0] = 1.0
    x, y = map_peak_xy(maps)
    torch.testing.assert_close(x, torch.tensor([6.5 / 8, 0.5 / 8]))
    torch.testing.assert_close(y, torch.tensor([1.5 / 4, 3.5 / 4]))


def _batch(B: int = 2, T: int = 3, H: int = 16) -> dict:
    items = _items(B, T, target=T - 1, H=H)
    return {
        "video": torch.stack([it["video"] for it in items]),
        "gaze": torch.stack([it["gaze"] for it in items]),
        "gaze_valid": torch.ones(B, T, dtype=torch.bool),
        "target_index": torch.full((B,), T - 1),
    }


def test_augmentation_only_on_training_batches():
    module = CLSTMUNet(**SMALL, num_before=2, ra_n=7, ra_m=9)
    batch = _batch()
    module._trainer = SimpleNamespace(training=False, global_rank=0)
    assert module.on_after_batch_transfer(batch, 0) is batch  # validation / test / predict: untouched
    module._trainer = SimpleNamespace(training=True, global_rank=0)
    out = module.on_after_batch_transfer(batch, 0)
    assert not torch.equal(out["video"], batch["video"])
    assert out["video"].shape == batch["video"].shape and out["video"].abs().max() <= 1.0
    torch.testing.assert_close(out["gaze"].sum(dim=(-2, -1)), torch.ones(2, 1, 3))
    assert CLSTMUNet(**SMALL, num_before=2, augment=False).augmenter is None


def test_augmented_target_map_without_a_peak_is_marked_invalid():
    """A geometric draw that moves the whole gaze map out of view leaves a uniform map: not a target."""
    module = CLSTMUNet(**SMALL, num_before=2)
    module._trainer = SimpleNamespace(training=True, global_rank=0)

    class ShiftOut:
        def apply_batch(self, video, gaze, generator=None):
            gaze = gaze.clone()
            gaze[0, :, 1:] = 1.0 / gaze[0, :, 1:, 0].numel()  # item 0: frames 1.. uniform
            return video, gaze

    module.augmenter = ShiftOut()
    out = module.on_after_batch_transfer(_batch(), 0)
    # item 1's target frame (2) already had the uniform no-fixation map of _items
    assert out["gaze_valid"].tolist() == [[True, False, False], [True, True, False]]


def test_training_step_loss_is_kld_of_the_target_frame_and_decreases():
    torch.manual_seed(0)
    module = CLSTMUNet(**SMALL, num_before=2, augment=False, lr=1e-2)
    batch = _batch(B=4)
    log_pred = module(batch["video"], 2)
    expected = saliency_kld_loss(log_pred, batch["gaze"][:, :, 2])
    module.log = lambda *a, **k: None  # no trainer attached
    out = module.training_step(batch, 0)
    loss = out["loss"]
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(out["kld"], expected)  # the term the non-finite guard names
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-2
    first = loss.item()
    for _ in range(40):
        opt.zero_grad()
        loss = module.training_step(batch, 0)["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_setup_rejects_a_data_layout_the_model_was_not_built_for():
    module = CLSTMUNet(**SMALL, num_before=6, num_after=0, frame_interval=1)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_before=3, num_after=0, frame_interval=2))
    with pytest.raises(ValueError, match=r"num_before=6 but data.init_args.num_before=3.*frame_interval"):
        module.setup("fit")
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_before=6, num_after=0, frame_interval=1))
    module.setup("fit")
    spatial = CLSTMUNet(**SMALL, use_temporal=False, num_before=0)
    spatial._trainer = SimpleNamespace(
        datamodule=SimpleNamespace(num_before=6, num_after=0, frame_interval=1)
    )
    spatial.setup("fit")  # the spatial-only model reads only the target frame


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(image_size=8, depth=4), "at least 16 pixels"),
        (dict(frame_interval=0), "frame_interval"),
        (dict(lr=0.0), "lr"),
        (dict(ra_n=17), "n must be"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    args = dict(SMALL, **kwargs)
    with pytest.raises(ValueError, match=message):
        CLSTMUNet(**args)


def test_saliency_grid_layout():
    B, T, H, W = 2, 4, 8, 10
    video = np.linspace(-1, 1, B * T * H * W, dtype=np.float32).reshape(B, 1, T, H, W)
    maps = np.zeros((B, H, W), np.float32)
    maps[:, 2, 3] = 1.0
    grid = saliency_grid(video, maps, maps, target_index=1, num_context=3)
    assert grid.shape == (B * H, 5 * W, 3) and grid.dtype == np.uint8
    assert (grid[:H, : 2 * W] == 0).all()  # two black tiles pad the missing context frames
    frame0 = np.clip((video[0, 0, 0] + 1) * 127.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(grid[:H, 2 * W : 3 * W, 0], frame0)
    with pytest.raises(ValueError):
        saliency_grid(video, maps[:1], maps, 1)


def test_saliency_map_logger_writes_a_titled_png_without_wandb(tmp_path):
    """Without W&B the figure is still written into the run folder, every column titled."""
    logger = SaliencyMapLogger(num_items=2, every_n_epochs=1, num_context=2)
    trainer = SimpleNamespace(
        logger=None,
        is_global_zero=True,
        sanity_checking=False,
        current_epoch=0,
        default_root_dir=str(tmp_path),
    )
    batch = _batch()
    outputs = {"log_pred": torch.zeros(2, 1, 16, 16)}
    logger.on_validation_batch_end(trainer, None, outputs, batch, 0)
    assert logger.column_titles() == ["frame t-2", "frame t-1", "target t + gaze", "target t + prediction"]
    logger.on_validation_epoch_end(trainer, None)
    png = tmp_path / "figures" / "val_saliency_maps.png"
    assert png.is_file() and png.stat().st_size > 1000
