"""Farneback flow: identical to calling OpenCV directly, and the right direction and size of motion."""

import cv2
import numpy as np
import pytest

from datamodules.flow import FlowParams, farneback_flow


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
