"""DualRepSSL LightningModule, its retrieval metrics, the bf16-safe Conv3d and the embedding writer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from callbacks.dualrep_embeddings import _save, _unique_rows, load_embeddings, merge_columns
from lightning_modules.dualrep_ssl.augment import ViewAugment
from lightning_modules.dualrep_ssl.losses import mmcl_loss, mmsl_loss
from lightning_modules.dualrep_ssl.metrics import InBatchRecall, SplitRecall
from lightning_modules.dualrep_ssl.module import ENCODER_PREFIXES, DualRepSSL
from lightning_modules.dualrep_ssl.nets import (
    ImageEncoder,
    LowPrecisionSafeConv3d,
    VideoEncoder,
    make_conv3d_low_precision_safe,
)

B = 4


def _batch(b: int = B, channels: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.rand(b, channels, 4, 32, 32, generator=g) * 2 - 1,
        "audio": torch.randn(b, 1, 64, 32, generator=g) * 10 - 40,
        "image": torch.rand(b, channels, 32, 32, generator=g) * 2 - 1,
        "label": torch.full((b,), -1),
        "clip_id": [f"scan@{i}" for i in range(b)],
    }


@pytest.fixture(scope="module")
def model() -> DualRepSSL:
    torch.manual_seed(0)
    return DualRepSSL(image_size=32, in_channels=1)


# ------------------------------------------------------------------ retrieval metrics


def test_in_batch_recall_known_answers():
    eye = torch.eye(4)
    metric = InBatchRecall(ks=(1, 2))
    metric.update(eye, eye)  # perfect: every positive ranks first
    assert metric.compute() == {"R@1": 1.0, "R@2": 1.0}
    metric.reset()
    # key i = e_i + 2·e_(i-1): query e_i has cosine 1/√5 with key i but 2/√5 with key i+1 -> ranks second
    keys = torch.roll(eye, 1, dims=0) * 2 + eye
    metric.update(eye, keys)
    out = metric.compute()
    assert out["R@1"] == 0.0 and out["R@2"] == 1.0
    metric.reset()
    # key i = e_(i+1): the positive scores 0, like two other keys, and key i-1 scores 1; ties count against
    metric.update(eye, torch.roll(eye, -1, dims=0))
    out = metric.compute()
    assert out["R@1"] == 0.0 and out["R@2"] == 0.0

    # positive_offset: this rank's 2 queries have their positives at rows 2 and 3 of 4 gathered keys
    metric = InBatchRecall(ks=(1,))
    metric.update(eye[2:], eye, positive_offset=2)
    assert metric.compute()["R@1"] == 1.0
    metric.update(eye[:2], eye, positive_offset=2)  # wrong pairing: rows 0, 1 vs keys 2, 3
    assert metric.compute()["R@1"] == 0.5  # mean over the 4 queries seen
    with pytest.raises(ValueError, match="do not fit"):
        metric.update(eye[:2], eye, positive_offset=3)
    with pytest.raises(ValueError, match="positive integers"):
        InBatchRecall(ks=(0,))


def test_split_recall_ranks_among_all_items_seen():
    metric = SplitRecall(ks=(1, 3))
    # two batches of two; query n's positive is key n; key 3 is a copy of key 0 -> query 0 ties
    keys = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    queries = keys.clone()
    metric.update(queries[:2], keys[:2])
    metric.update(queries[2:], keys[2:])
    out = metric.compute()
    assert out["R@1"].item() == pytest.approx(0.5)  # queries 0 and 3 tie with each other's key
    assert out["R@3"].item() == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(SplitRecall().compute()["R@1"].item())  # nothing seen: no figure
    with pytest.raises(ValueError, match="paired rows"):
        metric.update(queries[:2], keys[:3])


# ------------------------------------------------------------------ bf16-safe Conv3d


def _weight_grad(conv: torch.nn.Conv3d, x: torch.Tensor, grad_out: torch.Tensor, bf16: bool) -> torch.Tensor:
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
    out.float().backward(grad_out)
    return conv.weight.grad.clone()


def test_low_precision_safe_conv3d_fixes_the_bf16_weight_gradient():
    """R(2+1)D's 3-tap temporal convolution over 2 frames: oneDNN's bf16 weight gradient is garbage there."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 8, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
    x = torch.randn(2, 16, 2, 6, 6)
    grad_out = torch.randn(2, 8, 2, 6, 6) * 0.01
    reference = _weight_grad(conv, x, grad_out, bf16=False)
    make_conv3d_low_precision_safe(conv)
    assert isinstance(conv, LowPrecisionSafeConv3d)
    safe = _weight_grad(conv, x, grad_out, bf16=True)
    torch.testing.assert_close(safe, reference, rtol=0.02, atol=1e-3)
    # a safe shape (4 frames) keeps the bf16 kernel: its output dtype is bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 16, 4, 6, 6)).dtype == torch.bfloat16
        assert conv(x).dtype == torch.bfloat16  # the float32 fallback casts back
    assert set(conv.state_dict()) == {"weight"}  # same keys as nn.Conv3d


def test_video_encoder_bf16_gradients_are_finite_with_8_frames():
    torch.manual_seed(0)
    enc = VideoEncoder().train()
    assert all(type(m) is not torch.nn.Conv3d for m in enc.modules())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(torch.rand(2, 1, 8, 32, 32) * 2 - 1)
    out.float().pow(2).mean().backward()
    bad = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []
    # layer4's temporal conv sees 1 frame; its gradient must be of sane size (the bug gives ~1e30)
    assert max(p.grad.abs().max().item() for p in enc.parameters()) < 1e3


def test_encoder_feature_maps_shapes():
    torch.manual_seed(0)
    img = ImageEncoder().eval()
    with torch.no_grad():
        maps = img.feature_maps(torch.rand(2, 1, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, 512, 2, 2)]
    vid = VideoEncoder().eval()
    with torch.no_grad():
        maps = vid.feature_maps(torch.rand(2, 1, 8, 32, 32))
    assert [tuple(m.shape) for m in maps] == [
        (2, 64, 8, 16, 16),
        (2, 128, 4, 8, 8),
        (2, 256, 2, 4, 4),
        (2, 512, 1, 2, 2),
    ]


# ------------------------------------------------------------------ views


def test_view_augment_shapes_range_and_one_draw_per_clip():
    torch.manual_seed(0)
    aug = ViewAugment(noise_std=0.0)
    frame = torch.rand(2, 1, 1, 32, 32) * 2 - 1
    clip = frame.expand(2, 1, 6, 32, 32).clone()  # a clip of 6 identical frames
    out = aug(clip)
    assert out.shape == clip.shape and out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out[:, :, 0], out[:, :, 5])  # every frame got the same draw
    assert not torch.allclose(out[0, :, 0], clip[0, :, 0])  # ... and it did something
    images = torch.rand(3, 1, 32, 32) * 2 - 1
    assert aug(images).shape == images.shape
    assert aug(images).dtype == torch.float32
    with pytest.raises(ValueError, match="B×C×H×W"):
        aug(torch.zeros(32, 32))
    with pytest.raises(ValueError, match="crop_scale"):
        ViewAugment(crop_scale=(0.0, 1.0))


# ------------------------------------------------------------------ the LightningModule


def test_losses_are_eq13_of_the_network_outputs(model):
    model.train()
    batch = _batch()
    out = model(batch["video"], batch["audio"], batch["image"])
    total, parts, gathered = model.compute_losses(out)
    expect_mmcl, _ = mmcl_loss(out["F_v"], out["F_a"], out["F_va"], out["F_i"], out["F_vi"], pi=0.5, tau=0.1)
    expect_mmsl, _ = mmsl_loss(out["mu_v"], out["mu_a"], out["mu_i"], margin=0.2)
    torch.testing.assert_close(total, expect_mmcl + expect_mmsl)
    torch.testing.assert_close(parts["mmcl"], expect_mmcl)
    torch.testing.assert_close(parts["L_a"] + parts["L_i"], expect_mmcl)
    torch.testing.assert_close(parts["mmsl_v_a"] + parts["mmsl_v_i"], expect_mmsl)
    assert gathered["offset"] == 0 and gathered["F_a"] is out["F_a"]  # one process: nothing gathered
    total.backward()
    assert model.net.video_encoder.backbone.stem[0].weight.grad is not None


def test_batch_checks_name_what_is_wrong(model):
    batch = _batch()
    del batch["audio"]
    with pytest.raises(KeyError, match="modalities"):
        model.check_batch(batch)
    batch = _batch()
    batch["audio"] = torch.zeros(B, 1, 40, 32)
    with pytest.raises(ValueError, match="n_mels"):
        model.check_batch(batch)
    batch = _batch(channels=3)
    with pytest.raises(ValueError, match="B×1×T×H×W"):
        model.check_batch(batch)
    with pytest.raises(ValueError, match="at least 2 clips"):
        model.shared_step(_batch(b=1), "train")


def test_predict_returns_ids_and_every_embedding(model):
    model.eval()
    with torch.no_grad():
        columns = model.predict_step(_batch(), 0)
    assert columns["clip_id"] == [f"scan@{i}" for i in range(B)]
    assert columns["label"].tolist() == [-1] * B
    assert set(columns) == {"clip_id", "label", *model.embedding_names()}
    assert columns["h_a"].shape == (B, 2048) and columns["F_vi"].shape == (B, 512)
    assert columns["mu_i"].dtype == torch.float32


def test_ablation_switches():
    torch.manual_seed(0)
    mmsl_only = DualRepSSL(image_size=32, in_channels=1, use_mmcl=False, use_image=False)
    assert mmsl_only.embedding_names() == ["h_v", "h_a", "mu_v", "mu_a"]
    assert mmsl_only.retrieval_space() == "mu" and mmsl_only.pairs == ("va",)
    batch = _batch()
    out = mmsl_only(batch["video"], batch["audio"])
    total, parts, gathered = mmsl_only.compute_losses(out)
    assert set(parts) == {"mmsl_v_a", "mmsl"}
    torch.testing.assert_close(total, mmsl_loss(out["mu_v"], out["mu_a"])[0])
    assert "mu_a" in gathered  # retrieval keys come from the MMSL projections
    with pytest.raises(ValueError, match="use_mmcl and use_mmsl"):
        DualRepSSL(use_mmcl=False, use_mmsl=False)
    with pytest.raises(ValueError, match="predict_embeddings"):
        DualRepSSL(use_image=False, use_mmsl=False, predict_embeddings=["h_i"])


def test_encoder_prefixes_name_the_checkpoint_keys(model):
    keys = list(model.state_dict())
    for name, prefix in ENCODER_PREFIXES.items():
        assert any(k.startswith(prefix) for k in keys), name
    image_keys = {
        k[len(ENCODER_PREFIXES["image"]) :] for k in keys if k.startswith(ENCODER_PREFIXES["image"])
    }
    assert image_keys == set(ImageEncoder().state_dict())


def test_optimizer_is_adam_with_the_paper_settings(model):
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 3e-3 and opt.defaults["weight_decay"] == 1e-4


# ------------------------------------------------------------------ embedding files


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_embedding_columns_round_trip(tmp_path, suffix):
    batches = [
        {"clip_id": ["a", "b"], "label": torch.tensor([0, 1]), "F_v": torch.eye(2, 3)},
        {"clip_id": ["c", "a"], "label": torch.tensor([2, 0]), "F_v": torch.ones(2, 3)},
    ]
    columns = merge_columns(batches)
    assert columns["clip_id"].tolist() == ["a", "b", "c", "a"]
    assert columns["F_v"].shape == (4, 3)
    unique = _unique_rows(columns, "clip_id")  # DDP padding repeats an item: kept once, first wins
    assert unique["clip_id"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(unique["F_v"][0], [1.0, 0.0, 0.0])
    path = tmp_path / f"emb{suffix}"
    _save(path, unique)
    back = load_embeddings(path)
    assert back["clip_id"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(back["F_v"], unique["F_v"])
    np.testing.assert_array_equal(back["label"], [0, 1, 2])
    with pytest.raises(ValueError, match="different lengths"):
        merge_columns([{"clip_id": ["a"], "F_v": torch.zeros(2, 3)}])


def test_cosine_retrieval_matches_a_hand_ranking():
    """The in-batch diagnostic equals ranking by cosine similarity by hand."""
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    sim = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t()
    rank = (sim > sim.diagonal()[:, None]).sum(1)
    metric = InBatchRecall(ks=(1, 3))
    metric.update(q, k)
    out = metric.compute()
    assert out["R@1"].item() == pytest.approx((rank < 1).float().mean().item())
    assert out["R@3"].item() == pytest.approx((rank < 3).float().mean().item())


def test_views_are_drawn_in_training_only(model):
    seen = []
    hook = model.net.video_encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    batch = _batch()
    try:
        model.eval()
        with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):
            model.shared_step(batch, "val")
        model.train()
        with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):
            model.shared_step(batch, "train")
    finally:
        hook.remove()
    torch.testing.assert_close(seen[0], batch["video"])  # evaluation sees the data as it is
    assert seen[1].shape == batch["video"].shape and not torch.allclose(seen[1], batch["video"])
