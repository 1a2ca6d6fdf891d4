"""Shapes, structure and invariants of the VideoQualityGAN networks and baselines."""

from __future__ import annotations

import pytest
import torch
from autograd_graph import autograd_ops
from torch import nn
from torch.nn.utils import parametrize

from lightning_modules.vqa_gan.nets import (
    STAE,
    FeatureDiscriminator,
    VideoDecoder,
    VideoDiscriminator,
    VideoEncoder,
    init_weights,
    plan_stages,
)

REDUCED = [(8, 64), (4, 32)]


def _convs(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, kind)]


# ------------------------------------------------------------------------------------ encoder
def test_encoder_published_size_and_layout():
    torch.manual_seed(0)
    enc = VideoEncoder(video_channels=1, flow_channels=2, num_frames=8, image_size=256)
    assert (enc.n_spatial, enc.n_temporal) == (5, 3)
    assert enc.widths == [32, 64, 128, 256, 256, 256, 256, 1024]
    convs = _convs(enc, nn.Conv3d)
    assert [c.in_channels for c in convs] == [3, 32, 64, 128, 256, 256, 256, 256]
    assert [c.kernel_size for c in convs] == [(1, 4, 4)] * 5 + [(4, 4, 4)] * 3
    assert [c.stride for c in convs] == [(1, 2, 2)] * 5 + [(2, 2, 2)] * 3
    assert [c.padding for c in convs] == [(0, 1, 1)] * 5 + [(1, 1, 1)] * 3
    seq = list(enc.net)
    assert isinstance(seq[1], nn.LeakyReLU)  # no norm after the first layer
    assert isinstance(seq[-1], nn.Conv3d)  # linear last layer
    norms = _convs(enc, nn.InstanceNorm3d)
    assert len(norms) == 6 and all(not n.affine for n in norms)
    assert all(m.negative_slope == 0.2 for m in _convs(enc, nn.LeakyReLU))
    with torch.no_grad():
        z = enc(torch.rand(1, 1, 8, 256, 256) * 2 - 1, torch.randn(1, 2, 8, 256, 256))
    assert z.shape == (1, 1024)
    assert torch.isfinite(z).all()


def test_decoder_published_layout_mirrors_encoder():
    dec = VideoDecoder(out_channels=1, num_frames=8, image_size=256)
    convs = _convs(dec, nn.ConvTranspose3d)
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1024, 256),
        (256, 256),
        (256, 256),
        (256, 256),
        (256, 128),
        (128, 64),
        (64, 32),
        (32, 1),
    ]
    assert [c.kernel_size for c in convs] == [(4, 4, 4)] * 3 + [(1, 4, 4)] * 5
    assert isinstance(list(dec.net)[-1], nn.ConvTranspose3d)


@pytest.mark.parametrize(("t", "h"), REDUCED)
@pytest.mark.parametrize("flow_channels", [0, 2])
def test_encoder_decoder_reduced_sizes(t, h, flow_channels):
    torch.manual_seed(0)
    enc = VideoEncoder(flow_channels=flow_channels, num_frames=t, image_size=h)
    dec = VideoDecoder(out_channels=1, num_frames=t, image_size=h)
    assert enc.n_temporal == {8: 3, 4: 2}[t]
    video = torch.rand(2, 1, t, h, h) * 2 - 1
    flow = torch.randn(2, 2, t, h, h) if flow_channels else None
    z = enc(video, flow)
    assert z.shape == (2, 1024)
    out = dec(z)
    assert out.shape == (2, 1, t, h, h)
    assert out.min() >= -1 and out.max() <= 1
    # decoder also takes B×F×1×1×1
    assert dec(z[:, :, None, None, None]).shape == out.shape
    # gradients reach the first layer
    (out.mean() + z.mean()).backward()
    assert enc.net[0].weight.grad is not None and enc.net[0].weight.grad.abs().sum() > 0


def test_decoder_extremes_stay_in_range():
    dec = init_weights(VideoDecoder(num_frames=4, image_size=32), std=1.0)
    out = dec(torch.randn(3, 1024) * 100)
    assert out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize(("t", "h"), REDUCED)
def test_gaze_decoder_softmax_and_logits(t, h):
    z = torch.randn(2, 1024)
    soft = VideoDecoder(out_channels=1, num_frames=t, image_size=h, output="softmax")
    g = soft(z)
    assert g.shape == (2, 1, t, h, h)
    assert (g >= 0).all()
    torch.testing.assert_close(g.sum(dim=(-2, -1)), torch.ones(2, 1, t))
    logits = VideoDecoder(out_channels=1, num_frames=t, image_size=h, output="logits")
    logits.load_state_dict(soft.state_dict())
    torch.testing.assert_close(torch.softmax(logits(z).flatten(-2), -1).reshape(g.shape), g)


def test_configurable_widths_and_feature_size():
    enc = VideoEncoder(flow_channels=0, num_frames=4, image_size=32, ngf=8, max_channels=16, feature_dim=64)
    assert enc.widths == [8, 16, 16, 16, 64]
    dec = VideoDecoder(num_frames=4, image_size=32, ngf=8, max_channels=16, feature_dim=64)
    z = enc(torch.zeros(1, 1, 4, 32, 32))
    assert z.shape == (1, 64)
    assert dec(z).shape == (1, 1, 4, 32, 32)


def test_single_frame_encoder_is_purely_spatial():
    enc = VideoEncoder(flow_channels=0, num_frames=1, image_size=16)
    assert (enc.n_spatial, enc.n_temporal) == (4, 0)
    assert enc(torch.zeros(2, 1, 1, 16, 16)).shape == (2, 1024)


@pytest.mark.parametrize(
    ("t", "h", "match"),
    [(6, 64, "power of two"), (8, 96, "cannot reach"), (8, 4, "cannot reach"), (8, (64, 32), "square")],
)
def test_invalid_sizes_raise(t, h, match):
    with pytest.raises(ValueError, match=match):
        VideoEncoder(num_frames=t, image_size=h)
    with pytest.raises(ValueError, match=match):
        VideoDecoder(num_frames=t, image_size=h)


def test_explicit_stage_counts_are_checked():
    assert plan_stages(8, 256) == (5, 3)
    assert plan_stages(8, 64, n_spatial=3, n_temporal=3) == (3, 3)
    with pytest.raises(ValueError, match="n_temporal"):
        plan_stages(8, 64, n_temporal=2)
    with pytest.raises(ValueError, match="n_spatial"):
        plan_stages(8, 64, n_spatial=5)


def test_encoder_rejects_wrong_input():
    enc = VideoEncoder(flow_channels=2, num_frames=4, image_size=32)
    with pytest.raises(ValueError, match="B×3×4×32×32"):
        enc(torch.zeros(1, 1, 4, 32, 32))  # flow missing
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 1, 8, 32, 32), torch.zeros(1, 2, 8, 32, 32))


# ----------------------------------------------------------------------------- discriminators
def test_video_discriminator_published_layout():
    d = VideoDiscriminator(in_channels=1, num_frames=8, image_size=256)
    convs = _convs(d, nn.Conv3d)
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 1),
    ]
    assert convs[0].kernel_size == (1, 4, 4) and convs[0].stride == (1, 2, 2)
    assert all(c.kernel_size == (3, 3, 3) and c.stride == (2, 2, 2) for c in convs[1:4])
    assert convs[-1].kernel_size == (1, 3, 3) and convs[-1].padding == (0, 1, 1)
    assert d.n_layers == 3 and d.output_shape == (1, 16, 16)
    assert isinstance(list(d.net)[1], nn.LeakyReLU)


@pytest.mark.parametrize(("t", "h", "shape"), [(8, 64, (1, 4, 4)), (4, 32, (1, 2, 2))])
def test_video_discriminator_reduced_sizes(t, h, shape):
    d = VideoDiscriminator(num_frames=t, image_size=h)
    assert d.output_shape == shape
    out = d(torch.rand(2, 1, t, h, h) * 2 - 1)
    assert out.shape == (2, 1, *shape)


def test_video_discriminator_derives_fewer_layers_for_tiny_clips():
    d = VideoDiscriminator(num_frames=2, image_size=16)
    assert d.n_layers == 2
    assert d(torch.zeros(1, 1, 2, 16, 16)).shape == (1, 1, *d.output_shape)
    with pytest.raises(ValueError, match="n_layers"):
        VideoDiscriminator(num_frames=2, image_size=16, n_layers=3)


def test_feature_discriminator_spectral_norm_and_output():
    torch.manual_seed(0)
    d = FeatureDiscriminator()
    linears = _convs(d, nn.Linear)
    assert [(m.in_features, m.out_features) for m in linears] == [
        (1024, 64),
        (64, 32),
        (32, 16),
        (16, 8),
        (8, 4),
        (4, 1),
    ]
    assert all(parametrize.is_parametrized(m, "weight") for m in linears)
    assert [m.p for m in _convs(d, nn.Dropout)] == [0.2] * 5
    assert len(_convs(d, nn.LeakyReLU)) == 5
    assert isinstance(list(d.net)[-1], nn.Sigmoid)
    d.eval()
    out = d(torch.randn(5, 1024))
    assert out.shape == (5, 1) and (out > 0).all() and (out < 1).all()
    assert d(torch.randn(5, 1024, 1, 1, 1)).shape == (5, 1)
    # spectral norm: the effective weight has largest singular value ~1
    d.train()
    for _ in range(20):
        d(torch.randn(5, 1024))
    sigma = torch.linalg.matrix_norm(linears[0].weight.detach(), ord=2)
    assert abs(float(sigma) - 1.0) < 0.05


# ------------------------------------------------------------------------------------- init
def test_init_weights_normal_002():
    torch.manual_seed(0)
    enc = init_weights(VideoEncoder(num_frames=4, image_size=32))
    w = torch.cat([c.weight.detach().flatten() for c in _convs(enc, nn.Conv3d)])
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.02) < 1e-3
    assert all(float(c.bias.detach().abs().sum()) == 0 for c in _convs(enc, nn.Conv3d) if c.bias is not None)
    d = init_weights(FeatureDiscriminator(), std=0.02)
    orig = d.net[0].parametrizations.weight.original.detach()
    assert abs(float(orig.std()) - 0.02) < 2e-3
    bn = init_weights(STAE(num_frames=2, channels=(16,)))
    norm = _convs(bn, nn.BatchNorm3d)[0]
    assert abs(float(norm.weight.detach().mean()) - 1.0) < 0.02 and float(norm.bias.detach().abs().sum()) == 0


# ---------------------------------------------------------------------------------- baselines
@pytest.mark.parametrize(("t", "p"), [(4, 4), (4, 2), (8, 8)])
def test_stae_shapes(t, p):
    torch.manual_seed(0)
    model = STAE(in_channels=1, num_frames=t, num_future=p, channels=(8, 16, 32))
    clip = torch.rand(2, 1, t, 32, 32) * 2 - 1
    recon, pred = model(clip)
    assert recon.shape == (2, 1, t, 32, 32)
    assert pred.shape == (2, 1, p, 32, 32)
    assert recon.abs().max() <= 1 and pred.abs().max() <= 1
    assert isinstance(model.time_map, nn.Identity) == (p == t)
    (recon.mean() + pred.mean()).backward()
    with pytest.raises(ValueError, match="divisible"):
        model(torch.zeros(1, 1, t, 36, 36))


def test_bf16_autocast_forward_backward():
    from lightning_modules.vqa_gan.losses import (
        feature_cycle_loss,
        gaze_loss,
        lsgan_loss,
        video_reconstruction_loss,
    )

    torch.manual_seed(0)
    enc = init_weights(VideoEncoder(num_frames=4, image_size=32))
    dec = init_weights(VideoDecoder(num_frames=4, image_size=32))
    gaze_dec = init_weights(VideoDecoder(num_frames=4, image_size=32, output="softmax"))
    d_v, d_f = VideoDiscriminator(num_frames=4, image_size=32), FeatureDiscriminator()
    x, flow = torch.rand(2, 1, 4, 32, 32) * 2 - 1, torch.randn(2, 2, 4, 32, 32)
    gaze = torch.softmax(torch.randn(2, 1, 4, 32 * 32), -1).reshape(2, 1, 4, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = enc(x, flow)
        z_prior = torch.randn(2, 1024)
        fake = dec(z_prior)
        l1, ssim_loss = video_reconstruction_loss(dec(z), x)
        g = gaze_dec(z)
        loss = (
            lsgan_loss(d_f(z), True)
            + lsgan_loss(d_v(fake), True)
            + 10 * (l1 + ssim_loss + feature_cycle_loss(enc(fake, flow), z_prior))
            + 0.1 * gaze_loss(g, gaze)
        )
    assert g.dtype == torch.float32  # gaze maps are normalised in float32
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert enc.net[0].weight.grad is not None


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_backward_never_copies_gradients_back_through_a_norm_view(norm):
    """An in-place LeakyReLU on an InstanceNorm output (a view) makes autograd copy every gradient back
    through the view (CopySlices): 19 % of the published training step. None of the nets may do that,
    and with the other norms every activation stays in place (it saves memory)."""
    torch.manual_seed(0)
    clip = torch.rand(2, 1, 4, 32, 32, requires_grad=True)
    outputs = {
        "encoder": VideoEncoder(num_frames=4, image_size=32, norm=norm)(clip, torch.zeros(2, 2, 4, 32, 32)),
        "decoder": VideoDecoder(num_frames=4, image_size=32, norm=norm)(
            torch.randn(2, 1024, requires_grad=True)
        ),
        "discriminator": VideoDiscriminator(num_frames=4, image_size=32, norm=norm)(clip),
        "stae": STAE(in_channels=1, num_frames=4, num_future=2, channels=(8, 16), norm=norm)(clip)[0],
    }
    for name, out in outputs.items():
        ops = autograd_ops(out)
        assert "CopySlices" not in ops, name
        if norm != "instance":  # LeakyReluBackward1: the in-place form
            assert "LeakyReluBackward1" in ops and "LeakyReluBackward0" not in ops, name
