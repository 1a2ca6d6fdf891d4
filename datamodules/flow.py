"""Dense Farneback optical flow between consecutive frames (the VQA paper's motion input)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.utils import flow_to_image

__all__ = ["FlowParams", "farneback_flow", "flow_color_image"]


@dataclass(frozen=True)
class FlowParams:
    """Parameters of :func:`farneback_flow`.

    ``winsize=3`` and the 21×21 median filter applied to every frame first are the VQA paper's
    (Zhao et al. 2022: "window 3×3, 21×21 median filter"). The paper does not give the others;
    ``pyr_scale=0.5, levels=3, iterations=3, poly_n=5, poly_sigma=1.1`` are OpenCV's usual
    Farneback values (the ones of OpenCV's own samples/docs). ``median_ksize`` 0 or 1 disables the
    median filter.
    """

    median_ksize: int = 21
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 3
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.1

    def __post_init__(self) -> None:
        if self.median_ksize not in (0, 1) and (self.median_ksize < 3 or self.median_ksize % 2 == 0):
            raise ValueError(f"median_ksize must be 0/1 (off) or an odd number >= 3, got {self.median_ksize}")
        if not 0 < self.pyr_scale < 1:
            raise ValueError(f"pyr_scale must be in (0, 1), got {self.pyr_scale}")
        if self.levels < 1 or self.winsize < 1 or self.iterations < 1:
            raise ValueError("levels, winsize and iterations must be >= 1")
        if self.poly_n < 1 or self.poly_sigma <= 0:
            raise ValueError("poly_n must be >= 1 and poly_sigma > 0")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _prepare(frame: np.ndarray, ksize: int) -> np.ndarray:
    frame = np.ascontiguousarray(frame)
    return cv2.medianBlur(frame, ksize) if ksize > 1 else frame


def farneback_flow(frames: np.ndarray, params: FlowParams = FlowParams()) -> np.ndarray:
    """Farneback flow of a grey uint8 sequence T×H×W (or T×H×W×1).

    Each frame is median-filtered (``params.median_ksize``), then ``cv2.calcOpticalFlowFarneback``
    runs from frame t−1 to frame t for t ≥ 1. Returns float32 2×T×H×W: channel 0 = dx, 1 = dy in
    pixels (frame t−1 pixel p moves to p + (dx, dy) in frame t); t = 0 is all zeros.
    """
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if frames.ndim != 3:
        raise ValueError(f"frames must be T×H×W or T×H×W×1 grey, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    T, H, W = frames.shape
    out = np.zeros((2, T, H, W), np.float32)
    if T < 2:
        return out
    prev = _prepare(frames[0], params.median_ksize)
    for t in range(1, T):
        cur = _prepare(frames[t], params.median_ksize)
        flow = cv2.calcOpticalFlowFarneback(
            prev,
            cur,
            None,
            params.pyr_scale,
            params.levels,
            params.winsize,
            params.iterations,
            params.poly_n,
            params.poly_sigma,
            0,
        )
        out[0, t] = flow[..., 0]
        out[1, t] = flow[..., 1]
        prev = cur
    return out


def flow_color_image(flow: np.ndarray) -> np.ndarray:
    """The colour-coded image of a flow ``T×2×H×W`` (any float dtype, pixels) → ``T×3×H×W`` uint8.

    torchvision's ``flow_to_image`` (the Middlebury colour wheel: hue = direction, saturation = length),
    each frame on its own, normalised by that frame's largest vector: the 3-channel flow image the VQA
    paper's official code fed its encoder. Computed in float32 from the values given, so the colour image
    of the cache's float16 flow equals what encoding that flow at every training step gave.
    """
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be T×2×H×W, got shape {flow.shape}")
    frames = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))
    out = np.empty((flow.shape[0], 3, *flow.shape[2:]), np.uint8)
    for t, frame in enumerate(frames):
        out[t] = flow_to_image(frame).numpy()
    return out
