"""SequenceRandAugment: one draw per sequence, maps follow geometry only, magnitudes, mixed examples."""

import math

import pytest
import torch

from lightning_modules.clstm_unet.augment import (
    DEFAULT_TRANSFORMS,
    GEOMETRIC_TRANSFORMS,
    IMAGE_ONLY_TRANSFORMS,
    MIX_METHODS,
    SequenceRandAugment,
)

H = W = 48


def _gauss(y0, x0, sigma=2.0, h=H, w=W):
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    return torch.exp(-((ys - y0) ** 2 + (xs - x0) ** 2) / (2 * sigma**2))


def _sequence(T=4, C=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    frame = torch.rand(C, 1, H, W, generator=g) * 1.6 - 0.8
    video = frame.expand(C, T, H, W).clone()
    m = _gauss(20, 27)
    gaze = (m / m.sum()).expand(1, T, H, W).clone()
    return video, gaze


def _argmax2d(x):
    i = int(x.flatten().argmax())
    return divmod(i, x.shape[-1])


def test_k_is_16_and_split_into_geometric_and_image_only():
    assert len(DEFAULT_TRANSFORMS) == 16 == len(set(DEFAULT_TRANSFORMS))
    assert set(GEOMETRIC_TRANSFORMS) | set(IMAGE_ONLY_TRANSFORMS) == set(DEFAULT_TRANSFORMS)
    assert not set(GEOMETRIC_TRANSFORMS) & set(IMAGE_ONLY_TRANSFORMS)
    assert "speckle" in IMAGE_ONLY_TRANSFORMS and "acoustic_shadow" in IMAGE_ONLY_TRANSFORMS
    aug = SequenceRandAugment()
    assert (aug.n, aug.m, aug.transforms, aug.mixed) == (7, 9.0, DEFAULT_TRANSFORMS, False)


@pytest.mark.parametrize(("n", "m"), [(7, 9), (16, 30), (3, 15)])
@pytest.mark.parametrize("seed", range(5))
def test_same_draw_on_every_frame(n, m, seed):
    """A sequence of identical frames stays a sequence of identical frames (noise fields included)."""
    video, gaze = _sequence(T=5, C=3, seed=seed)
    aug = SequenceRandAugment(n=n, m=m)
    out_v, out_g = aug(video, gaze, torch.Generator().manual_seed(seed))
    assert out_v.shape == video.shape and out_g.shape == gaze.shape
    for t in range(1, 5):
        assert torch.equal(out_v[:, t], out_v[:, 0])
        assert torch.equal(out_g[:, t], out_g[:, 0])
    assert out_v.min() >= -1 and out_v.max() <= 1
    torch.testing.assert_close(out_g.sum(dim=(-2, -1)), torch.ones(1, 5))


def test_same_draw_on_every_frame_mixed():
    video, gaze = _sequence(T=4, seed=1)
    p_video, p_gaze = _sequence(T=4, seed=2)
    p_gaze = torch.roll(p_gaze, shifts=(15, -10), dims=(-2, -1))
    aug = SequenceRandAugment(mixed=True, m=15)
    for seed in range(10):
        out_v, out_g = aug(video, gaze, torch.Generator().manual_seed(seed), partner=(p_video, p_gaze))
        for t in range(1, 4):
            assert torch.equal(out_v[:, t], out_v[:, 0]) and torch.equal(out_g[:, t], out_g[:, 0])
        torch.testing.assert_close(out_g.sum(dim=(-2, -1)), torch.ones(1, 4))


@pytest.mark.parametrize("seed", range(12))
def test_geometric_policy_moves_map_with_image(seed):
    """A bright dot in each frame and a gaze map peaked on it: after geometric RA the map's argmax is
    still on the dot (each frame a different position, so the per-frame correspondence is tested)."""
    positions = [(18, 20), (24, 30), (30, 18), (21, 27)]
    video = torch.full((1, len(positions), H, W), -1.0)
    gaze = torch.zeros(1, len(positions), H, W)
    for t, (y, x) in enumerate(positions):
        dot = _gauss(y, x, 1.5)
        video[0, t] = -1 + 2 * dot
        gaze[0, t] = dot / dot.sum()
    aug = SequenceRandAugment(n=7, m=9, transforms=GEOMETRIC_TRANSFORMS)
    out_v, out_g = aug(video, gaze, torch.Generator().manual_seed(seed))
    moved = False
    for t in range(len(positions)):
        yv, xv = _argmax2d(out_v[0, t])
        yg, xg = _argmax2d(out_g[0, t])
        assert abs(yv - yg) <= 1 and abs(xv - xg) <= 1, (t, (yv, xv), (yg, xg))
        moved |= (yg, xg) != positions[t]
    assert moved  # all 7 geometric ops applied: the dots did move
    torch.testing.assert_close(out_g.sum(dim=(-2, -1)), torch.ones(1, len(positions)))


def test_hflip_alone_mirrors_image_and_map_exactly():
    video, gaze = _sequence(T=2)
    aug = SequenceRandAugment(n=1, m=9, transforms=("hflip",))
    out_v, out_g = aug(video, gaze, torch.Generator().manual_seed(0))
    assert torch.equal(out_v, video.flip(-1)) and torch.equal(out_g, gaze.flip(-1))


@pytest.mark.parametrize("m", [9, 30])
@pytest.mark.parametrize("seed", range(4))
def test_image_only_transforms_leave_maps_unchanged(m, seed):
    video, gaze = _sequence(T=3, seed=seed)
    aug = SequenceRandAugment(n=len(IMAGE_ONLY_TRANSFORMS), m=m, transforms=IMAGE_ONLY_TRANSFORMS)
    out_v, out_g = aug(video, gaze, torch.Generator().manual_seed(seed))
    assert torch.equal(out_g, gaze)
    assert not torch.allclose(out_v, video)


@pytest.mark.parametrize("name", DEFAULT_TRANSFORMS)
def test_each_transform_alone(name):
    video, gaze = _sequence(T=2, C=3)
    for m in (0, 9, 30):
        aug = SequenceRandAugment(n=1, m=m, transforms=(name,))
        out_v, out_g = aug(video, gaze, torch.Generator().manual_seed(3))
        assert torch.isfinite(out_v).all() and out_v.min() >= -1 and out_v.max() <= 1
        torch.testing.assert_close(out_g.sum(dim=(-2, -1)), torch.ones(1, 2))
        if name in IMAGE_ONLY_TRANSFORMS:
            assert torch.equal(out_g, gaze)
        if m == 0 and name != "hflip":  # magnitude 0 is the identity (up to float rounding)
            torch.testing.assert_close(out_v, video, atol=1e-5, rtol=0)
        if m == 30 and name != "hflip":
            assert (out_v - video).abs().max() > 1e-2


def test_magnitude_table():
    g = torch.Generator().manual_seed(0)
    aug = SequenceRandAugment(n=16, m=9)
    params = dict(aug.draw(H, W, g).ops)
    assert math.isclose(abs(params["rotate"]["angle"]), 9.0)
    assert math.isclose(abs(params["shear_x"]["shear"]), math.degrees(math.atan(0.09)))
    assert math.isclose(abs(params["translate_x"]["shift"]), 0.09 * W)
    assert math.isclose(abs(params["translate_y"]["shift"]), 0.09 * H)
    assert math.isclose(params["scale"]["scale"], 1.09) or math.isclose(params["scale"]["scale"], 1 / 1.09)
    for name in ("gain", "contrast", "sharpness"):
        assert math.isclose(abs(params[name]["factor"] - 1), 0.27)
    assert math.isclose(params["gamma"]["gamma"], 1.3) or math.isclose(params["gamma"]["gamma"], 1 / 1.3)
    assert math.isclose(abs(params["tgc"]["slope"]), 0.18)
    assert math.isclose(params["gaussian_blur"]["sigma"], 0.02 * 0.3 * H)
    assert math.isclose(params["gaussian_noise"]["sigma"], 0.03)
    assert params["gaussian_noise"]["field"].shape == (H, W)
    assert math.isclose(params["speckle"]["strength"], 0.3)
    assert math.isclose(params["acoustic_shadow"]["attenuation"], 0.27)


def test_speckle_field_has_mean_one():
    aug = SequenceRandAugment(n=1, m=30, transforms=("speckle",))
    field = dict(aug.draw(256, 256, torch.Generator().manual_seed(0)).ops)["speckle"]["field"]
    assert abs(field.mean().item() - 1.0) < 0.01
    assert abs(field.std().item() - math.sqrt(4 / math.pi - 1)) < 0.01  # Rayleigh / its mean


def test_acoustic_shadow_darkens_a_deep_wedge_only():
    video = torch.zeros(1, 1, 64, 64)  # mid grey
    aug = SequenceRandAugment(n=1, m=30, transforms=("acoustic_shadow",))
    out, _ = aug(video, None, torch.Generator().manual_seed(0))
    diff = (video - out)[0, 0]
    assert diff.min() >= 0 and diff.max() > 0.5
    assert diff[:8].max() == 0  # nothing above the onset depth (>= 0.2·H from the apex)


def test_generator_reproducibility():
    video, gaze = _sequence(T=3)
    aug = SequenceRandAugment()
    a = aug(video, gaze, torch.Generator().manual_seed(7))
    b = aug(video, gaze, torch.Generator().manual_seed(7))
    c = aug(video, gaze, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(0)
    d = aug(video, gaze)  # the global RNG when no generator
    assert d[0].shape == video.shape


@pytest.mark.parametrize("method", MIX_METHODS)
def test_mixed_example_methods(method):
    video = torch.full((1, 3, H, W), -0.5)
    p_video = torch.full((1, 3, H, W), 0.5)
    gaze = torch.full((1, 3, H, W), 1.0 / (H * W))
    p_gaze = gaze.clone()
    aug = SequenceRandAugment(n=0, m=30, mixed=True, mix_methods=(method,))
    for seed in range(5):
        out_v, out_g = aug(video, gaze, torch.Generator().manual_seed(seed), partner=(p_video, p_gaze))
        share = ((out_v + 0.5) / 1.0).mean().item()  # fraction coming from the partner
        assert 0.0 <= share <= 0.5 + 1e-6
        if method != "mixup":
            assert torch.all((out_v == -0.5) | (out_v == 0.5))  # every pixel from one of the two
        torch.testing.assert_close(out_g.sum(dim=(-2, -1)), torch.ones(1, 3))


def test_mixed_gaze_follows_the_mask():
    video, gaze = torch.full((1, 2, H, W), -1.0), torch.zeros(1, 2, H, W)
    gaze[..., 5, 5] = 1.0  # primary's gaze top-left
    p_video, p_gaze = torch.full((1, 2, H, W), 1.0), torch.zeros(1, 2, H, W)
    p_gaze[..., H - 3, 24] = 1.0  # partner's gaze near the bottom
    aug = SequenceRandAugment(n=0, m=30, mixed=True, mix_methods=("vertical_concat",))
    for seed in range(10):
        d = aug.draw_mix(H, W, torch.Generator().manual_seed(seed))
        out_v, out_g = aug.mix(video, gaze, (p_video, p_gaze), d)
        keep = d.mask
        expected = gaze * keep + p_gaze * (1 - keep)
        mass = expected.sum(dim=(-2, -1), keepdim=True)
        if mass.min() > 0:
            expected = expected / mass
        else:  # both gaze points fell in the parts not kept: uniform (documented fallback)
            expected = torch.full_like(expected, 1.0 / (H * W))
        torch.testing.assert_close(out_g, expected)
        torch.testing.assert_close(out_v, torch.where(keep.bool(), -1.0, 1.0).expand_as(out_v))


def test_mixed_needs_partner_and_apply_batch():
    video, gaze = _sequence(T=2)
    aug = SequenceRandAugment(mixed=True)
    with pytest.raises(ValueError, match="partner"):
        aug(video, gaze, torch.Generator().manual_seed(0))
    bv, bg = torch.stack([video, -video]), torch.stack([gaze, gaze.flip(-1)])
    out_v, out_g = aug.apply_batch(bv, bg, torch.Generator().manual_seed(0))
    assert out_v.shape == bv.shape and out_g.shape == bg.shape
    torch.testing.assert_close(out_g.sum(dim=(-2, -1)), torch.ones(2, 1, 2))
    out_v, out_g = SequenceRandAugment().apply_batch(bv, None)
    assert out_g is None and out_v.shape == bv.shape


def test_invalid_arguments():
    with pytest.raises(ValueError):
        SequenceRandAugment(n=17)
    with pytest.raises(ValueError):
        SequenceRandAugment(m=31)
    with pytest.raises(ValueError):
        SequenceRandAugment(transforms=("rotate", "elastic"))
    with pytest.raises(ValueError):
        SequenceRandAugment(mix_methods=("cutmix",))
    aug = SequenceRandAugment()
    with pytest.raises(ValueError):
        aug(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 8, 8), None)
