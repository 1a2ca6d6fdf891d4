"""DualRepSSL encoders, heads and the tied DualRepNet on tiny CPU inputs."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from lightning_modules.dualrep_ssl.losses import mmcl_loss, mmsl_loss
from lightning_modules.dualrep_ssl.nets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    BNProjection,
    DualRepNet,
    FusionHead,
    ImageEncoder,
    Projection,
    VideoEncoder,
)

B = 2


def _video(c=1):
    return torch.rand(B, c, 4, 32, 32) * 2 - 1


def _audio():
    return torch.randn(B, 1, 64, 32) * 10 - 40


def _image(c=1):
    return torch.rand(B, c, 32, 32) * 2 - 1


def test_image_encoder_shapes_grey_equals_rgb_and_normalisation():
    torch.manual_seed(0)
    enc = ImageEncoder().eval()
    grey = _image(1)
    with torch.no_grad():
        out_grey = enc(grey)
        out_rgb = enc(grey.repeat(1, 3, 1, 1))
    assert out_grey.shape == (B, 512)
    torch.testing.assert_close(out_grey, out_rgb)
    # [-1, 1] -> [0, 1] -> ImageNet normalisation: -1 maps to -mean/std, +1 to (1 - mean)/std
    seen = []
    hook = enc.backbone.conv1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        enc(torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 2, 2))
    hook.remove()
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(seen[0][0, :, 0, 0], -mean / std)
    torch.testing.assert_close(seen[0][0, :, 0, 1], (1 - mean) / std)
    assert "mean" not in enc.state_dict()  # normalisation constants are not weights
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 channels"):
        enc(torch.zeros(1, 2, 32, 32))


def test_image_encoder_loads_torchvision_layout(tmp_path):
    torch.manual_seed(1)
    tv = resnet18(weights=None)  # has fc.*: ignored by the encoder
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    enc = ImageEncoder(weights_path=path)
    torch.testing.assert_close(enc.backbone.conv1.weight, tv.conv1.weight)
    torch.testing.assert_close(enc.backbone.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)


def test_video_encoder_shapes_and_kinetics_normalisation():
    torch.manual_seed(0)
    enc = VideoEncoder().eval()
    seen = []
    hook = enc.backbone.stem.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    video = _video(1)
    with torch.no_grad():
        out = enc(video)
        out_rgb = enc(video.repeat(1, 3, 1, 1, 1))
    hook.remove()
    assert out.shape == (B, 512)
    torch.testing.assert_close(out, out_rgb)
    mean = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(seen[0], ((video.repeat(1, 3, 1, 1, 1) + 1) / 2 - mean) / std)
    with pytest.raises(ValueError, match="B×C×T×H×W"):
        enc(torch.zeros(1, 3, 32, 32))


def test_heads():
    torch.manual_seed(0)
    assert Projection(2048, 512)(torch.randn(B, 2048)).shape == (B, 512)
    bnp = BNProjection(512, 512).train()
    y = bnp(torch.randn(8, 512))
    assert y.shape == (8, 512)
    torch.testing.assert_close(y.mean(0), torch.zeros(512), atol=1e-5, rtol=0)  # BN after the FC

    fusion = FusionHead(4)
    f_v, f_x = torch.randn(B, 4), torch.randn(B, 4)
    with torch.no_grad():
        fusion.fc.weight.zero_()
        fusion.fc.bias.zero_()
    torch.testing.assert_close(fusion(f_v, f_x), f_x)  # residual onto F_x
    with torch.no_grad():
        fusion.fc.weight.copy_(torch.cat([torch.eye(4), 2 * torch.eye(4)], dim=1))  # W [F_v; F_x]
        fusion.fc.bias.fill_(0.5)
    torch.testing.assert_close(fusion(f_v, f_x), f_x + f_v + 2 * f_x + 0.5)


@pytest.fixture(scope="module")
def full_net() -> DualRepNet:
    torch.manual_seed(0)
    return DualRepNet()


def test_dualrepnet_outputs_and_backward(full_net):
    net = full_net.train()
    out = net(_video(1), _audio(), _image(1))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "h_v": (B, 512),
        "h_a": (B, 2048),
        "h_i": (B, 512),
        "F_v": (B, 512),
        "F_a": (B, 512),
        "F_i": (B, 512),
        "F_va": (B, 512),
        "F_vi": (B, 512),
        "mu_v": (B, 512),
        "mu_a": (B, 512),
        "mu_i": (B, 512),
    }
    l_mmcl, _ = mmcl_loss(out["F_v"], out["F_a"], out["F_va"], out["F_i"], out["F_vi"], pi=0.5, tau=0.1)
    l_mmsl, _ = mmsl_loss(out["mu_v"], out["mu_a"], out["mu_i"], margin=0.2)
    net.zero_grad(set_to_none=True)
    (l_mmcl + l_mmsl).backward()
    for name in (
        "video_encoder",
        "audio_encoder",
        "image_encoder",
        "mmcl_proj",
        "mmsl_proj",
        "fusion_va",
        "fusion_vi",
    ):
        grads = [p.grad for p in getattr(net, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    with pytest.raises(ValueError, match="needs an image"):
        net(_video(), _audio())


def test_dualrepnet_without_image_and_mmsl():
    torch.manual_seed(0)
    net = DualRepNet(use_image=False, use_mmsl=False, freeze_audio=True).train()
    assert net.image_encoder is None and net.fusion_vi is None and not hasattr(net, "mmsl_proj")
    assert not net.audio_encoder.training  # frozen encoder stays in eval mode
    assert all(not p.requires_grad for p in net.audio_encoder.parameters())
    out = net(_video(3), _audio(), None)
    assert set(out) == {"h_v", "h_a", "F_v", "F_a", "F_va"}
    net.train()
    assert net.video_encoder.training and not net.audio_encoder.training
    with pytest.raises(ValueError, match="use_mmcl or use_mmsl"):
        DualRepNet(use_mmcl=False, use_mmsl=False)
