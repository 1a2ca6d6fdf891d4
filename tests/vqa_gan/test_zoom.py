"""Zoom-in module: identity start, theta/box geometry, warping of video, flow and gaze, loading."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import googlenet

from lightning_modules.vqa_gan.losses import box_loss
from lightning_modules.vqa_gan.zoom import ZoomIn, box_from_theta, theta_from_box, warp, warp_flow, warp_gaze


def _theta(s: float, tx: float = 0.0, ty: float = 0.0, b: int = 1) -> torch.Tensor:
    return torch.tensor([[[s, 0.0, tx], [0.0, s, ty]]]).repeat(b, 1, 1)


@pytest.fixture(scope="module")
def zoom() -> ZoomIn:
    torch.manual_seed(0)
    return ZoomIn(s_min=0.25).eval()


def test_identity_init_leaves_clips_unchanged(zoom):
    torch.manual_seed(1)
    video = torch.rand(2, 1, 3, 64, 64) * 2 - 1
    flow = torch.randn(2, 2, 3, 64, 64)
    gaze = torch.rand(2, 1, 3, 64, 64)
    gaze = gaze / gaze.sum(dim=(-2, -1), keepdim=True)
    with torch.no_grad():
        out = zoom(video, flow, gaze)
    torch.testing.assert_close(out["theta"], _theta(1.0, b=2))
    torch.testing.assert_close(out["box"], torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2))
    torch.testing.assert_close(out["video"], video, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["flow"], flow, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["gaze"], gaze, atol=1e-6, rtol=1e-4)
    assert zoom(video)["flow"] is None and zoom(video)["gaze"] is None


def test_theta_predicted_from_the_freeze_frame_by_default(zoom, monkeypatch):
    video = torch.rand(2, 1, 4, 32, 32) * 2 - 1
    seen = []

    def fake(frames):
        seen.append(frames)
        return _theta(0.5, b=frames.shape[0])

    monkeypatch.setattr(zoom, "predict_theta", fake)
    out = zoom(video)
    assert torch.equal(seen[0], video[:, :, -1])
    zoom(video, frame_index=0)
    assert torch.equal(seen[1], video[:, :, 0])
    # the same theta is applied to every frame
    for t in range(4):
        torch.testing.assert_close(out["video"][:, :, t], warp(video[:, :, t], _theta(0.5, b=2)))


def test_theta_constraints_and_gradient_at_identity():
    zoom = ZoomIn(s_min=0.3)
    theta = zoom.theta_from_raw(torch.tensor([[50.0, 50.0, -50.0], [-50.0, 0.0, 0.0], [0.5, 0.2, 0.1]]))
    s = theta[:, 0, 0]
    assert torch.all(s >= 0.3 - 1e-6) and torch.all(s <= 1.0)
    assert s[0].item() == pytest.approx(0.3) and s[1].item() == 1.0
    torch.testing.assert_close(theta[:, 1, 1], s)
    assert theta[:, :, 2].abs().max() <= 1
    assert theta[0, 0, 2].item() == pytest.approx(1.0) and theta[0, 1, 2].item() == pytest.approx(-1.0)
    assert torch.all(theta[:, 0, 1] == 0) and torch.all(theta[:, 1, 0] == 0)
    # at the identity start (raw = 0) the scale still receives a gradient
    raw = torch.zeros(1, 3, requires_grad=True)
    zoom.theta_from_raw(raw)[:, 0, 0].sum().backward()
    assert raw.grad[0, 0].item() == pytest.approx(-(1 - 0.3))


def test_localizer_input_normalisation(zoom):
    grey = torch.full((1, 1, 32, 32), -1.0)
    x = zoom._localizer_input(grey)
    assert x.shape == (1, 3, 32, 32)
    expected = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 0, 0], expected)
    assert zoom.predict_theta(torch.zeros(2, 1, 48, 48)).shape == (2, 2, 3)
    assert zoom.predict_theta(torch.zeros(2, 3, 48, 48)).shape == (2, 2, 3)


# ------------------------------------------------------------------------------------ geometry
def test_theta_box_round_trip():
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.1, 0.3, 0.5, 0.7], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(box_from_theta(theta_from_box(boxes)), boxes)
    thetas = torch.cat([_theta(0.5, 0.1, -0.2), _theta(1.0), _theta(0.3, -0.7, 0.7)])
    torch.testing.assert_close(theta_from_box(box_from_theta(thetas)), thetas)
    torch.testing.assert_close(
        box_from_theta(_theta(0.5, 0.2, -0.4)), torch.tensor([[0.35, 0.05, 0.85, 0.55]])
    )


def test_theta_from_box_square_hull_and_clamp():
    wide = torch.tensor([[0.1, 0.4, 0.9, 0.6]])
    theta = theta_from_box(wide)
    torch.testing.assert_close(theta, _theta(0.8, 0.0, 0.0))  # centred, s = max(w, h)
    tiny = torch.tensor([[0.45, 0.45, 0.55, 0.55]])
    clamped = theta_from_box(tiny, s_min=0.25)
    assert clamped[0, 0, 0].item() == pytest.approx(0.25) and clamped[0, 0, 2].item() == pytest.approx(0.0)
    stretch = theta_from_box(wide, square=False)
    torch.testing.assert_close(box_from_theta(stretch), wide)


def test_warp_center_crop_is_exact():
    x = torch.arange(16 * 16, dtype=torch.float32).reshape(1, 1, 16, 16)
    out = warp(x, _theta(0.5), out_size=8)
    torch.testing.assert_close(out, x[:, :, 4:12, 4:12], atol=1e-3, rtol=0)
    # outside the frame the fill value appears
    shifted = warp(torch.zeros(1, 1, 8, 8), _theta(0.5, 1.0), fill=-1.0)
    assert shifted[..., -1].max().item() == pytest.approx(-1.0)


def test_warp_keeps_dtype():
    x = torch.rand(1, 1, 2, 16, 16, dtype=torch.bfloat16)
    assert warp(x, _theta(0.5)).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------ flow
@pytest.mark.parametrize(("s", "tx", "ty"), [(0.5, 0.2, -0.1), (0.8, 0.0, 0.0), (1.0, 0.0, 0.0)])
def test_warp_flow_of_a_constant_field(s, tx, ty):
    flow = torch.empty(2, 2, 3, 32, 32)
    flow[:, 0], flow[:, 1] = 1.5, -0.5
    out = warp_flow(flow, _theta(s, tx, ty, b=2))
    torch.testing.assert_close(out[:, 0], torch.full_like(out[:, 0], 1.5 / s))
    torch.testing.assert_close(out[:, 1], torch.full_like(out[:, 1], -0.5 / s))
    # a smaller output frame shrinks the vectors accordingly
    half = warp_flow(flow, _theta(s, tx, ty, b=2), out_size=16)
    torch.testing.assert_close(half[:, 0], torch.full_like(half[:, 0], 1.5 / s / 2))


def test_warp_flow_matches_the_flow_of_the_zoomed_video():
    # a pattern translated by (dx, dy) pixels between frames; zoomed, it moves by (dx, dy) / s
    s, dx, dy = 0.5, 2.0, -1.0
    n = 64
    yy, xx = torch.meshgrid(
        torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij"
    )

    def frame(ox, oy):
        return torch.sin((xx - ox) / 5.0) + torch.cos((yy - oy) / 7.0)

    video = torch.stack([frame(0, 0), frame(dx, dy)])[None, None]  # 1×1×2×n×n
    flow = torch.empty(1, 2, 2, n, n)
    flow[:, 0], flow[:, 1] = dx, dy
    theta = _theta(s, 0.1, 0.05)
    zv, zf = warp(video, theta, fill=0.0), warp_flow(flow, theta)
    # frame 1 of the zoomed video equals frame 0 shifted by the zoomed flow (inside the frame)
    sx, sy = int(zf[0, 0, 1, 0, 0]), int(zf[0, 1, 1, 0, 0])
    assert (sx, sy) == (4, -2)
    torch.testing.assert_close(
        zv[0, 0, 1, 8:-8, 8:-8], zv[0, 0, 0, 8 - sy : n - 8 - sy, 8 - sx : n - 8 - sx], atol=2e-3, rtol=0
    )


# ------------------------------------------------------------------------------------------ gaze
def test_warp_gaze_renormalises_and_falls_back_to_uniform():
    gaze = torch.zeros(1, 1, 2, 16, 16)
    gaze[0, 0, 0, 6:10, 6:10] = 1 / 16  # inside the central crop
    gaze[0, 0, 1, 0, 0] = 1.0  # corner: outside the central crop
    out = warp_gaze(gaze, _theta(0.5))
    torch.testing.assert_close(out.sum(dim=(-2, -1)), torch.ones(1, 1, 2))
    assert out[0, 0, 0].max() > 1 / 256
    torch.testing.assert_close(out[0, 0, 1], torch.full((16, 16), 1 / 256))


# --------------------------------------------------------------------------------------- loading
def test_loads_torchvision_googlenet_state_dict(tmp_path):
    torch.manual_seed(3)
    ref = googlenet(weights=None, aux_logits=True, init_weights=True)
    path = tmp_path / "googlenet.pth"
    torch.save(ref.state_dict(), path)
    zoom = ZoomIn(weights_path=path)
    torch.testing.assert_close(zoom.localizer.conv1.conv.weight, ref.conv1.conv.weight)
    torch.testing.assert_close(
        zoom.localizer.inception5b.branch1.conv.weight, ref.inception5b.branch1.conv.weight
    )
    assert zoom.localizer.fc.weight.shape == (3, 1024) and zoom.localizer.fc.weight.abs().sum() == 0


def test_loads_sonolab_zoom_checkpoint(tmp_path):
    torch.manual_seed(4)
    src = ZoomIn(s_min=0.3)
    torch.nn.init.normal_(src.localizer.fc.weight, 0, 0.01)
    plain, nested = tmp_path / "zoom.pt", tmp_path / "zoom.ckpt"
    torch.save(src.state_dict(), plain)
    torch.save({"state_dict": {f"zoom.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, nested)
    for path in (plain, nested):
        dst = ZoomIn(s_min=0.3, weights_path=path)
        for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
            assert torch.equal(a, b), k
    bad = tmp_path / "bad.pt"
    torch.save({"something.weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="neither"):
        ZoomIn(weights_path=bad)


def test_box_loss_trains_the_localizer():
    torch.manual_seed(0)
    zoom = ZoomIn(s_min=0.25)
    frames = torch.rand(2, 1, 32, 32) * 2 - 1
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]] * 2)
    opt = torch.optim.Adam(zoom.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = box_loss(zoom.predict_theta(frames), box)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses) < 0.25 * losses[0]
    zoom.freeze()
    assert not zoom.training and not any(p.requires_grad for p in zoom.parameters())
