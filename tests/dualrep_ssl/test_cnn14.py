"""CNN14: PANNs layout (block shapes, parameter count, state-dict keys) and checkpoint loading."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_modules.dualrep_ssl.cnn14 import Cnn14
from lightning_modules.dualrep_ssl.nets import AudioEncoder

# Counted from the layout: 6 blocks of 2 bias-free 3x3 convs + 2 BN (affine), bn0 (64), fc1 2048x2048+b,
# fc_audioset 2048x527+b. Equals the 80,753,615 that PANNs reports for CNN14.
N_PARAMS_WITH_HEAD = 80_753_615
N_PARAMS_NO_HEAD = N_PARAMS_WITH_HEAD - (2048 * 527 + 527)


def _expected_count() -> int:
    chans = [1, 64, 128, 256, 512, 1024, 2048]
    convs = sum(9 * cin * cout + 9 * cout * cout for cin, cout in itertools.pairwise(chans))
    bns = sum(2 * 2 * c for c in chans[1:]) + 2 * 64
    return convs + bns + (2048 * 2048 + 2048) + (2048 * 527 + 527)


@pytest.fixture(scope="module")
def cnn14() -> Cnn14:
    torch.manual_seed(0)
    return Cnn14().eval()


@pytest.fixture(scope="module")
def headless() -> Cnn14:
    torch.manual_seed(1)
    return Cnn14(num_classes=None).eval()


def test_parameter_count(cnn14, headless):
    n = sum(p.numel() for p in cnn14.parameters())
    assert n == _expected_count() == N_PARAMS_WITH_HEAD
    assert 79e6 <= n <= 82e6
    assert sum(p.numel() for p in headless.parameters()) == N_PARAMS_NO_HEAD


def test_block_shapes_10s_16k(cnn14):
    # 10 s at 16 kHz, hop 160 -> 1001 frames (centred STFT); 64 mel bins. PANNs layout (B, C, time, mels).
    shapes = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for b in cnn14.blocks]
    try:
        with torch.no_grad():
            out = cnn14(torch.randn(1, 1, 64, 1001))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == [
        (1, 64, 500, 32),
        (1, 128, 250, 16),
        (1, 256, 125, 8),
        (1, 512, 62, 4),
        (1, 1024, 31, 2),
        (1, 2048, 31, 2),
    ]
    assert out["embedding"].shape == (1, 2048)
    assert out["clipwise"].shape == (1, 527)
    assert (out["clipwise"] > 0).all() and (out["clipwise"] < 1).all()
    assert (out["embedding"] >= 0).all()  # ReLU after fc1


def test_public_key_names(cnn14):
    keys = set(cnn14.state_dict())
    for k in [
        "bn0.weight",
        "bn0.running_var",
        "conv_block1.conv1.weight",
        "conv_block1.conv2.weight",
        "conv_block1.bn1.weight",
        "conv_block1.bn2.running_mean",
        "conv_block6.conv2.weight",
        "conv_block6.bn2.bias",
        "fc1.weight",
        "fc1.bias",
        "fc_audioset.weight",
        "fc_audioset.bias",
    ]:
        assert k in keys, k
    assert "conv_block1.conv1.bias" not in keys  # bias-free convolutions
    assert cnn14.state_dict()["conv_block1.conv1.weight"].shape == (64, 1, 3, 3)
    assert cnn14.state_dict()["fc_audioset.weight"].shape == (527, 2048)
    assert len(keys) == 5 + 6 * (2 + 2 * 5) + 4


def test_bn0_per_mel_bin_and_panns_layout(headless):
    """bn0 normalises each mel bin; the blocks then see PANNs' (B, 1, time, mels) layout."""
    seen = []
    hook = headless.conv_block1.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    saved = headless.bn0.running_mean.clone()
    try:
        with torch.no_grad():
            headless.bn0.running_mean.copy_(torch.linspace(-50, 10, 64))
            x = torch.randn(2, 1, 64, 40)
            headless(x + headless.bn0.running_mean.view(1, 1, 64, 1))
            headless(x)
    finally:
        hook.remove()
        headless.bn0.running_mean.copy_(saved)
    shifted, plain = seen
    assert shifted.shape == (2, 1, 40, 64)  # time before mels
    # removing the per-bin running mean makes the shifted input equal to the zero-mean one
    std = (headless.bn0.running_var + headless.bn0.eps).sqrt().view(1, 1, 1, 64)
    torch.testing.assert_close(shifted, x.transpose(2, 3) / std)
    torch.testing.assert_close(plain, (x.transpose(2, 3) - torch.linspace(-50, 10, 64)) / std)


def _public_layout_checkpoint(model: Cnn14) -> dict:
    """A checkpoint shaped like the public PANNs files: {"model": state dict + front-end buffers}."""
    state = dict(model.state_dict())
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.randn(257, 1, 512)
    state["spectrogram_extractor.stft.conv_imag.weight"] = torch.randn(257, 1, 512)
    state["logmel_extractor.melW"] = torch.rand(257, 64)
    return {"model": state, "iteration": 0}


def test_state_dict_round_trip_ignores_front_end(tmp_path, cnn14):
    path = tmp_path / "Cnn14_16k_like.pth"
    with torch.no_grad():
        cnn14.bn0.running_mean.normal_()
    torch.save(_public_layout_checkpoint(cnn14), path)

    fresh = Cnn14()
    missing, unexpected = fresh.load_pretrained(path)
    assert missing == [] and unexpected == []
    fresh.eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        ref, got = cnn14(x), fresh(x)
    torch.testing.assert_close(got["embedding"], ref["embedding"])
    torch.testing.assert_close(got["clipwise"], ref["clipwise"])

    # constructor path through the head-less audio encoder (fc_audioset ignored too)
    enc = AudioEncoder(weights_path=path).eval()
    assert not hasattr(enc.cnn14, "fc_audioset")
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref["embedding"])


def test_input_checks(headless):
    m = headless
    with torch.no_grad():
        assert m(torch.randn(2, 64, 32))["embedding"].shape == (2, 2048)  # B×mels×frames accepted
        with pytest.raises(ValueError, match="64 mel bins"):
            m(torch.randn(1, 1, 128, 64))
        with pytest.raises(ValueError, match="at least 32 frames"):
            m(torch.randn(1, 1, 64, 16))
        with pytest.raises(ValueError, match="B×1×mels×frames"):
            m(torch.randn(1, 2, 64, 64))
        assert "clipwise" not in m(torch.randn(2, 1, 64, 32))
