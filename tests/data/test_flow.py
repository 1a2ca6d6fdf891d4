"""Farneback flow: identical to calling OpenCV directly, and the right direction and size of motion."""

import cv2
import numpy as np
import pytest

from datamodules.flow import FlowParams, farneback_flow, flow_color_image


def _texture(n: int, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.random((n + 16, n + 16)), (0, 0), sigma)
    return cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _opencv_reference(frames: np.ndarray, p: FlowParams) -> np.ndarray:
    out = np.zeros((2, *frames.shape), np.float32)
    for t in range(1, len(frames)):
        a = cv2.medianBlur(frames[t - 1], p.median_ksize)
        b = cv2.medianBlur(frames[t], p.median_ksize)
        f = cv2.calcOpticalFlowFarneback(
            a, b, None, p.pyr_scale, p.levels, p.winsize, p.iterations, p.poly_n, p.poly_sigma, 0
        )
        out[:, t] = f.transpose(2, 0, 1)
    return out


@pytest.mark.parametrize(
    "params", [FlowParams(), FlowParams(median_ksize=5, winsize=7, levels=2, poly_n=7, poly_sigma=1.5)]
)
def test_equals_opencv_called_directly(params):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
    flow = farneback_flow(frames, params)
    assert flow.dtype == np.float32 and flow.shape == (2, 4, 32, 32)
    np.testing.assert_array_equal(flow, _opencv_reference(frames, params))
    assert not flow[:, 0].any()  # t = 0 is zero
    np.testing.assert_array_equal(farneback_flow(frames[..., None], params), flow)  # T×H×W×1 input


def test_translation_gives_the_shift():
    tex = _texture(32, 2)
    right = np.stack([tex[4:36, 8 - s : 40 - s] for s in (0, 1, 2)])  # content moves +1 px in x per frame
    up = np.stack([tex[4 + s : 36 + s, 8:40] for s in (0, 1, 2)])  # content moves -1 px in y per frame
    p = FlowParams(median_ksize=5)
    c = slice(8, 24)
    fr, fu = farneback_flow(right, p), farneback_flow(up, p)
    assert fr[0, 1:, c, c].mean() == pytest.approx(1.0, abs=0.05)
    assert fr[1, 1:, c, c].mean() == pytest.approx(0.0, abs=0.05)
    assert fu[0, 1:, c, c].mean() == pytest.approx(0.0, abs=0.05)
    assert fu[1, 1:, c, c].mean() == pytest.approx(-1.0, abs=0.05)


def test_paper_defaults_have_the_right_sign():
    # the 21×21 median and 3×3 window underestimate motion on small frames; the direction must hold
    tex = _texture(48, 5)
    frames = np.stack([tex[8:56, 8 - s : 56 - s] for s in (0, 2, 4)])
    flow = farneback_flow(frames)
    c = slice(12, 36)
    assert flow[0, 1:, c, c].mean() > 0.3
    assert abs(flow[1, 1:, c, c].mean()) < 0.1


def test_shapes_and_validation():
    assert FlowParams().as_dict() == dict(
        median_ksize=21, pyr_scale=0.5, levels=3, winsize=3, iterations=3, poly_n=5, poly_sigma=1.1
    )
    one = farneback_flow(np.zeros((1, 8, 8), np.uint8))
    assert one.shape == (2, 1, 8, 8) and not one.any()
    with pytest.raises(ValueError):
        farneback_flow(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError):
        farneback_flow(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError):
        FlowParams(median_ksize=4)
    nomedian = FlowParams(median_ksize=0)
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 16), dtype=np.uint8)
    ref = cv2.calcOpticalFlowFarneback(frames[0], frames[1], None, 0.5, 3, 3, 3, 5, 1.1, 0)
    np.testing.assert_array_equal(farneback_flow(frames, nomedian)[:, 1], ref.transpose(2, 0, 1))


# ------------------------------------------------------------------------------ colour flow image
def test_flow_color_image_known_colours():
    """Middlebury wheel: zero motion is white; the frame's largest vector pointing right (+x) is pure red;
    each frame is normalised by its own largest vector (frame 1 is frame 0 scaled by 5: same image)."""
    flow = np.zeros((2, 2, 3, 4), np.float32)
    flow[0, 0, 1, 2] = 2.0  # one vector (dx=2, dy=0), the frame's largest
    flow[1] = flow[0] * 5
    img = flow_color_image(flow)
    assert img.dtype == np.uint8 and img.shape == (2, 3, 3, 4)
    assert tuple(img[0, :, 1, 2]) == (255, 0, 0)
    assert (img[0, :, 0, 0] == 255).all()  # white
    np.testing.assert_array_equal(img[0], img[1])
    with pytest.raises(ValueError, match="T×2×H×W"):
        flow_color_image(np.zeros((2, 3, 4), np.float32))


def test_cached_color_flow_equals_the_per_step_encoding(tiny_dataset, tmp_path):
    """The clip cache's colour flow (modality ``flow_color``) is exactly VideoQualityGAN's per-step
    ``encode_flow(flow, "color")`` of the same batch's flow, and the model without zoom feeds it to the
    encoder unchanged; a colour cache has its own key."""
    import torch

    from datamodules.clips import VideoClipDataModule
    from lightning_modules.vqa_gan.base import encode_flow
    from lightning_modules.vqa_gan.module import VideoQualityGAN

    dm = VideoClipDataModule(
        root=str(tiny_dataset),
        synthetic=None,
        image_size=32,
        num_frames=4,
        frame_interval=2,
        modalities=["video", "flow", "flow_color"],
        batch_size=3,
        cache_dir=str(tmp_path),
    )
    assert dm.cache_params().flow_color
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    color = batch["flow_color"]
    assert color.shape == (3, 3, 4, 32, 32) and color.dtype == torch.float32
    assert batch["flow"].abs().max() > 0.1, "the synthetic clips move: the colour image is not all white"
    torch.testing.assert_close(color, encode_flow(batch["flow"], "color", 0.03), rtol=0, atol=0)

    model = VideoQualityGAN(
        image_size=32, num_frames=4, use_zoom=False, zoom_checkpoint=None, flow_encoding="color", w_gaze=0
    )
    model_input = model.inputs({"video": batch["video"], "flow_color": color}, with_gaze=False)["flow"]
    torch.testing.assert_close(model_input, encode_flow(batch["flow"], "color", 0.03), rtol=0, atol=0)

    plain = VideoClipDataModule(
        root=str(tiny_dataset), synthetic=None, image_size=32, num_frames=4, frame_interval=2,
        modalities=["video", "flow"], cache_dir=str(tmp_path),
    )  # fmt: skip
    assert not plain.cache_params().flow_color and "flow_color" not in plain.cache_params().as_dict()
    assert plain.clip_cache().path != dm.clip_cache().path
