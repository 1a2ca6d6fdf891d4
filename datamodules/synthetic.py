"""Synthetic PULSE-style dataset generator.

Writes a small dataset that follows the data contract of ``docs/data.md`` (``scans.csv``, ``clips.csv``,
``images.csv``, ``pairs.csv``, ``boxes.csv`` and their media) so that every config of the framework runs
on a fresh install with no download, and each of the four methods has a learnable task:

* **Videos** (MJPG ``.avi``, greyscale, 30 fps): ultrasound-like frames (sector mask, depth attenuation,
  multiplicative Rayleigh speckle that moves with the tissue, bright boundaries) showing fetal anatomy drawn
  with OpenCV: head with skull, midline and choroid plexus (``transventricular``), head with cerebellum
  (``transcerebellar``), abdomen with stomach bubble (``abdomen``), four-chamber heart (``four_chamber``)
  and anatomy-free tissue (``background``). A scan is a sequence of *visits*: the probe searches for a
  plane (structures off-plane, partly visible, moving), reaches and holds it, freezes it (the frozen frame
  repeats for about a second) and moves on. Some transventricular visits have a poor acoustic window
  (acoustic shadow, low gain, strong attenuation, off-centre, blur).
* **Clips**: the 2 s before each freeze (``end_frame`` = frozen frame + 1) labelled with the plane
  (``quality`` 1 for good holds, 0 for poor-window holds), ``approach_transventricular`` clips 5-7 s before
  each good transventricular freeze (quality 0) and ``background`` clips (quality empty). The extra column
  ``kind`` (``freeze`` / ``approach`` / ``poor_window`` / ``background``) says where a clip came from.
  For the head-circumference task of VideoQualityGAN the normal class is ``label == transventricular and
  quality == 1``; every other clip is a low-quality example for that task.
* **Gaze** (60 Hz, normalised, ``NaN`` rows for blinks): fixations with gamma-distributed dwell times on the
  salient structures of the plane on screen (choroid plexus and midline, cerebellum, stomach bubble, heart
  chambers), saccades between them, smooth pursuit of the anatomy as the probe moves.
* **Audio** (16 kHz mono; a few scans at 44.1 kHz stereo; optionally one silent scan): a formant-synthesised
  "language" in which each plane has its own words (syllables with plane-specific vowels, pitch contours and
  consonants), spoken while the plane is searched for, held and frozen, with pauses and unrelated chat.
* **Images** (PNG, same renderer): ``role=train`` images of each plane whose quality ``quality_score`` is
  spread over [0, 1] and ``role=standard`` images with quality near 1. Quality is one continuous, visible
  knob (plane offset, blur, shadow, gain, off-centre), so ``pairs.csv`` (same plane, quality gap >= 0.25,
  ``better`` has the higher ``quality_score``) has a learnable order.
* **Boxes**: every ``box_every``-th frame where a fetal structure is visible, the box around its outline.

``synthetic.json`` records the generator, its version, the preset, the seed and the config; its presence
marks a folder as a generated dataset (the only kind this module will ever overwrite).

Usage::

    python -m datamodules.synthetic --out data/synthetic --preset demo --seed 0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import soundfile as sf
from scipy.signal import lfilter

__all__ = [
    "APPROACH_TV",
    "BACKGROUND",
    "GENERATOR",
    "GENERATOR_VERSION",
    "PLANES",
    "PRESETS",
    "SyntheticConfig",
    "ensure_dataset",
    "generate_dataset",
    "is_generated_dataset",
]

GENERATOR = "sonolab.datamodules.synthetic"
GENERATOR_VERSION = "1.0"
MARKER = "synthetic.json"

PLANES = ("transventricular", "transcerebellar", "abdomen", "four_chamber")
BACKGROUND = "background"
APPROACH_TV = "approach_transventricular"


_RAMP_S = 0.2  # approach -> hold settling time; freeze clips start after it


@dataclass(frozen=True)
class SyntheticConfig:
    """All sizes of a generated dataset. Durations are in seconds, ranges are ``(low, high)``."""

    n_scans: int = 6
    frame_size: tuple[int, int] = (64, 64)  # (H, W)
    fps: float = 30.0
    # visits of one scan, in random order after a lead-in
    tv_visits: int = 1  # good transventricular holds (each with an approach clip)
    other_planes: tuple[str, ...] = ("transcerebellar", "abdomen", "four_chamber")
    poor_tv_visits: int = 1  # transventricular holds through a poor acoustic window
    background_segments: int = 1
    lead_in_s: float = 1.0
    tv_approach_s: tuple[float, float] = (4.8, 5.6)
    approach_s: tuple[float, float] = (2.5, 3.5)
    hold_s: tuple[float, float] = (2.2, 2.8)
    freeze_s: tuple[float, float] = (0.9, 1.1)
    background_s: tuple[float, float] = (2.5, 3.5)
    clip_s: float = 2.0  # freeze and background clip length
    approach_clip_s: tuple[float, float] = (5.0, 7.0)  # approach clip window, seconds before the freeze
    min_frames_before_end: int = 64  # every clip has at least this many video frames before end_frame
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # still images
    image_planes: tuple[str, ...] = PLANES
    images_per_plane: int = 15  # role=train images of each plane (split 60/20/20)
    standard_per_plane: int = 4  # role=standard images of each plane (split train)
    pairs_per_plane: int = 6  # per plane and per evaluation split (val, test)
    min_pair_gap: float = 0.25
    # audio
    audio_rate: int = 16000
    hires_audio_rate: int = 44100
    n_hires_audio: int = 1  # scans whose audio is hires_audio_rate stereo
    n_silent_audio: int = 0  # scans whose audio is all zeros (a validator warning)
    chat_prob: float = 0.3  # chance of unrelated talk in a visit
    # gaze
    gaze_rate: float = 60.0
    blink_interval_s: float = 4.0
    # boxes
    box_every: int = 5

    def __post_init__(self) -> None:
        """Reject configs that would break the contract (clips outside their phase, too few frames, ...)."""

        def bad(key: str, why: str) -> None:
            raise ValueError(f"SyntheticConfig.{key}: {why} (got {getattr(self, key)!r})")

        for key in ("n_scans", "box_every"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        for key in (
            "tv_visits",
            "poor_tv_visits",
            "background_segments",
            "images_per_plane",
            "standard_per_plane",
            "pairs_per_plane",
            "n_hires_audio",
            "n_silent_audio",
        ):
            if getattr(self, key) < 0:
                bad(key, "must be >= 0")
        if len(self.frame_size) != 2 or min(self.frame_size) < 32:
            bad("frame_size", "must be (H, W) with both >= 32")
        for key in (
            "fps",
            "gaze_rate",
            "audio_rate",
            "hires_audio_rate",
            "lead_in_s",
            "clip_s",
            "blink_interval_s",
        ):
            if getattr(self, key) <= 0:
                bad(key, "must be > 0")
        for key in ("tv_approach_s", "approach_s", "hold_s", "freeze_s", "background_s", "approach_clip_s"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi:
                bad(key, "must be a range (low, high) with 0 < low <= high")
        for key in ("other_planes", "image_planes"):
            if not set(getattr(self, key)) <= set(PLANES):
                bad(key, f"planes must be among {PLANES}")
        if not self.image_planes:
            bad("image_planes", "must name at least one plane")
        if (
            len(self.split_fractions) != 3
            or min(self.split_fractions) < 0
            or abs(sum(self.split_fractions) - 1) > 1e-6
        ):
            bad("split_fractions", "must be three non-negative fractions (train, val, test) summing to 1")
        if not 0 < self.min_pair_gap < 1:
            bad("min_pair_gap", "must be in (0, 1)")
        if self.n_hires_audio + self.n_silent_audio > self.n_scans:
            bad("n_hires_audio", "n_hires_audio + n_silent_audio must not exceed n_scans")
        if self.tv_visits + len(self.other_planes) + self.poor_tv_visits + self.background_segments == 0:
            bad("tv_visits", "a scan needs at least one visit (tv_visits, other_planes, poor_tv_visits, ...)")
        # phases must contain their clips: the freeze clip lies in the hold after its 0.2 s settling ramp,
        # the approach clip lies in the approach, a background clip in its segment
        if self.hold_s[0] < self.clip_s + _RAMP_S - 1e-9:
            bad("hold_s", f"the shortest hold must cover clip_s + {_RAMP_S} s")
        if self.background_s[0] < self.clip_s:
            bad("background_s", "the shortest background segment must cover clip_s")
        if self.approach_clip_s[0] < self.hold_s[1]:
            bad("approach_clip_s", "the approach clip must end before the longest hold starts")
        if self.tv_approach_s[0] + self.hold_s[0] < self.approach_clip_s[1] - 1e-9:
            bad("tv_approach_s", "the shortest approach + hold must reach back to approach_clip_s[1]")
        earliest_end = self.lead_in_s + min(
            self.approach_s[0] + self.hold_s[0] if self.other_planes or self.poor_tv_visits else math.inf,
            self.tv_approach_s[0] + self.hold_s[0] - self.approach_clip_s[0] if self.tv_visits else math.inf,
            self.background_s[0] if self.background_segments else math.inf,
        )
        if earliest_end * self.fps < self.min_frames_before_end + 1:
            bad(
                "lead_in_s",
                f"the earliest clip must end >= {self.min_frames_before_end} frames into the video",
            )


PRESETS: dict[str, SyntheticConfig] = {
    # tests: every manifest non-empty, every split with both quality classes, a few seconds to generate
    "tiny": SyntheticConfig(),
    # learning demo: enough clips/images for each model to learn its task on a CPU in minutes
    "demo": SyntheticConfig(
        n_scans=40,
        frame_size=(128, 128),
        tv_visits=3,
        images_per_plane=80,
        standard_per_plane=16,
        pairs_per_plane=40,
        n_hires_audio=2,
        n_silent_audio=1,
    ),
}


# ----------------------------------------------------------------------------------------------------------
# geometry and rendering
# ----------------------------------------------------------------------------------------------------------

# per-frame state columns of a scan plan
_CX, _CY, _TH, _SC, _OFF, _BLUR, _GAIN, _SHK, _SHO, _SHW, _ATT = range(11)
_NSTATE = 11

_SHIFT = 4  # sub-pixel bits of the cv2 drawing calls
_ONE = 1 << _SHIFT


class _Geometry:
    """Fixed maps of one frame size: sector mask, depth attenuation, polar coordinates around the apex."""

    def __init__(self, H: int, W: int):
        self.H, self.W = H, W
        self.L = L = float(min(H, W))
        self.apex = (W / 2.0, -0.1 * L)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
        dx, dy = xx - self.apex[0], yy - self.apex[1]
        self.r = (np.hypot(dx, dy) / L).astype(np.float32)
        self.phi = np.arctan2(dx, dy).astype(np.float32)  # 0 = straight down
        fan = ((np.abs(self.phi) <= math.radians(36)) & (self.r >= 0.14) & (self.r <= 1.08)).astype(
            np.float32
        )
        self.fan = cv2.GaussianBlur(fan, (0, 0), max(0.5, L / 160))
        att = np.exp(-1.3 * self.r) * (1.0 + 1.1 * self.r)
        self.base = (self.fan * att / att[fan > 0].max()).astype(np.float32)
        self.px = L / 128.0  # pixels per "128-pixel-frame" pixel: blur widths scale with the frame

    def nearfield(self, rng: np.random.Generator) -> np.ndarray:
        """Bright layers of maternal tissue just under the probe (fixed to the probe, one per scan)."""
        out = np.zeros((self.H, self.W), np.float32)
        for _ in range(rng.integers(2, 4)):
            r0 = rng.uniform(0.16, 0.34)
            w = rng.uniform(0.008, 0.03)
            amp = rng.uniform(0.12, 0.35)
            wav = 1.0 + 0.3 * np.sin(self.phi * rng.uniform(3, 9) + rng.uniform(0, 6.3))
            out += amp * wav * np.exp(-0.5 * ((self.r - r0 - 0.02 * np.sin(self.phi * 4)) / w) ** 2)
        return out * self.fan

    def speckle_canvas(self, rng: np.random.Generator, side: int) -> np.ndarray:
        """Rayleigh speckle (magnitude of a lightly correlated complex Gaussian field), mean 1."""
        sig = max(0.5, 0.7 * self.px)
        re = cv2.GaussianBlur(rng.standard_normal((side, side), dtype=np.float32), (0, 0), sig)
        im = cv2.GaussianBlur(rng.standard_normal((side, side), dtype=np.float32), (0, 0), sig)
        mag = np.sqrt(re * re + im * im) ** 0.85
        return (mag / mag.mean()).astype(np.float32)

    def fresh_bank(self, rng: np.random.Generator, n: int = 8) -> np.ndarray:
        """A few small frame-to-frame noise fields (thermal noise, probe jitter)."""
        return np.exp(0.12 * rng.standard_normal((n, self.H, self.W), dtype=np.float32)).astype(np.float32)

    def to_px(self, cx, cy):
        return cx * self.W, cy * self.H

    def render(
        self,
        tissue: np.ndarray,
        nearfield: np.ndarray,
        speckle: np.ndarray,
        fresh: np.ndarray,
        st: np.ndarray,
    ) -> np.ndarray:
        """Tissue echogenicity (uint8) + state -> one uint8 ultrasound frame."""
        T = tissue.astype(np.float32) * (1.0 / 255.0)
        T += nearfield
        img = T * speckle
        img *= fresh
        blur = float(st[_BLUR]) * self.px
        if blur > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), blur)
        m = self.base * float(st[_GAIN])
        shk, att = float(st[_SHK]), float(st[_ATT])
        if shk > 0.01 or att > 0.01:
            ax, ay = self.apex
            x, y = self.to_px(st[_CX], st[_CY])
            phi_a = math.atan2(x - ax, y - ay)
            r_a = math.hypot(x - ax, y - ay) / self.L
            sh = np.ones_like(m)
            if shk > 0.01:
                wedge = np.exp(-0.5 * ((self.phi - (phi_a + st[_SHO])) / st[_SHW]) ** 2)
                sh -= shk * wedge * np.clip((self.r - (r_a - 0.2)) / 0.1, 0.0, 1.0)
            if att > 0.01:
                sh *= np.exp(-att * self.r)
            m = m * sh
        img *= m
        return cv2.convertScaleAbs(img, alpha=255.0)

    def speckle_at(self, canvas: np.ndarray, st: np.ndarray, origin: tuple[float, float]) -> np.ndarray:
        """The visit's speckle, carried along with the anatomy (translation and rotation)."""
        c, s = math.cos(st[_TH]), math.sin(st[_TH])
        x, y = self.to_px(st[_CX], st[_CY])
        ox, oy = origin
        M = np.array([[c, -s, x - (c * ox - s * oy)], [s, c, y - (s * ox + c * oy)]], np.float32)
        return cv2.warpAffine(
            canvas, M, (self.W, self.H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )


class _Draw:
    """Draws shapes given in anatomy coordinates (units of min(H, W), origin at the anatomy centre)."""

    def __init__(self, img: np.ndarray, g: _Geometry, st: np.ndarray, mirror: bool):
        self.img = img
        self.x0, self.y0 = g.to_px(st[_CX], st[_CY])
        self.k = float(st[_SC]) * g.L
        self.c, self.s = math.cos(st[_TH]), math.sin(st[_TH])
        self.m = -1.0 if mirror else 1.0
        self.deg = math.degrees(st[_TH])

    def p(self, x: float, y: float) -> tuple[int, int]:
        y = y * self.m
        X = self.x0 + self.k * (self.c * x - self.s * y)
        Y = self.y0 + self.k * (self.s * x + self.c * y)
        return round(X * _ONE), round(Y * _ONE)

    def ellipse(self, x, y, a, b, ang, val, thick=-1):
        axes = (max(1, round(self.k * a * _ONE)), max(1, round(self.k * b * _ONE)))
        cv2.ellipse(
            self.img,
            self.p(x, y),
            axes,
            self.deg + self.m * ang,
            0,
            360,
            int(val),
            thick,
            cv2.LINE_AA,
            _SHIFT,
        )

    def arc(self, x, y, a, b, ang, a0, a1, val, width):
        axes = (max(1, round(self.k * a * _ONE)), max(1, round(self.k * b * _ONE)))
        ang = self.deg + self.m * ang
        if self.m < 0:
            a0, a1 = -a1, -a0
        cv2.ellipse(
            self.img, self.p(x, y), axes, ang, a0, a1, int(val), self.thick(width), cv2.LINE_AA, _SHIFT
        )

    def ring(self, x, y, a, b, ang, width, val, inner_val):
        self.ellipse(x, y, a + width / 2, b + width / 2, ang, val)
        self.ellipse(x, y, max(a - width / 2, 1e-3), max(b - width / 2, 1e-3), ang, inner_val)

    def thick(self, width):
        return max(1, round(self.k * width))

    def line(self, x0, y0, x1, y1, val, width):
        cv2.line(self.img, self.p(x0, y0), self.p(x1, y1), int(val), self.thick(width), cv2.LINE_AA, _SHIFT)


# echogenicity levels (uint8) of the tissue map, before speckle and attenuation
_FLUID = 14


def _mix(base: float, val: float, alpha: float) -> float:
    return base + alpha * (val - base)


def _make_anatomy(plane: str, rng: np.random.Generator) -> dict:
    """Random instance of one anatomy (sizes, side of the structures, surrounding tissue)."""
    size = rng.uniform(0.88, 1.1)
    an: dict = {"plane": plane, "mirror": bool(rng.random() < 0.5), "blobs": []}
    # surrounding tissue: uterine wall / placenta and a few limbs or loops of cord, drawn relative to the
    # anatomy so they move with it
    n_blobs = int(rng.integers(4, 8)) if plane == BACKGROUND else int(rng.integers(1, 4))
    for i in range(n_blobs):
        if plane == BACKGROUND:
            d, ang = rng.uniform(0.0, 0.5), rng.uniform(0, 2 * math.pi)
            ax = (rng.uniform(0.06, 0.3), rng.uniform(0.04, 0.16))
            val = rng.uniform(40, 150)
        elif i == 0:  # placenta / uterine wall
            d, ang = rng.uniform(0.55, 0.7), rng.uniform(0, 2 * math.pi)
            ax = (rng.uniform(0.3, 0.45), rng.uniform(0.1, 0.18))
            val = rng.uniform(70, 110)
        else:  # limb or cord
            d, ang = rng.uniform(0.42, 0.55), rng.uniform(0, 2 * math.pi)
            ax = (rng.uniform(0.05, 0.12), rng.uniform(0.025, 0.05))
            val = rng.uniform(90, 150)
        an["blobs"].append((d * math.cos(ang), d * math.sin(ang), ax[0], ax[1], rng.uniform(0, 180), val))
    if plane in ("transventricular", "transcerebellar"):
        an["a"], an["b"] = 0.30 * size, 0.24 * size * rng.uniform(0.95, 1.05)
        an["cp"] = (rng.uniform(0.38, 0.5), rng.uniform(0.25, 0.35), rng.uniform(5, 25))  # x/a, y/b, angle
        an["csp"] = rng.uniform(0.3, 0.42)
        an["cb"] = (rng.uniform(0.42, 0.52), rng.uniform(0.13, 0.17))  # cerebellum x/a, lobe radius/a
    elif plane == "abdomen":
        an["a"], an["b"] = 0.27 * size, 0.25 * size * rng.uniform(0.95, 1.05)
        an["st"] = (
            rng.uniform(0.15, 0.35),
            rng.uniform(-0.45, -0.3),
            rng.uniform(0.2, 0.28),
            rng.uniform(0.13, 0.18),
            rng.uniform(-20, 20),
        )  # x/a, y/b, ax/a, ax/b, angle
    elif plane == "four_chamber":
        an["a"], an["b"] = 0.28 * size, 0.26 * size * rng.uniform(0.95, 1.05)
        an["heart"] = (rng.uniform(-0.1, 0.1), rng.uniform(-0.2, 0.0), rng.uniform(30, 60))  # x/a, y/b, angle
    else:
        an["a"] = an["b"] = 0.0
    return an


def _draw_anatomy(d: _Draw, an: dict, off: float) -> None:
    """Draw one anatomy instance; ``off`` in [0, 1] is the distance from its standard plane."""
    for x, y, a, b, ang, val in an["blobs"]:
        d.ellipse(x, y, a, b, ang, val)
    plane = an["plane"]
    if plane == BACKGROUND:
        return
    A, B = an["a"], an["b"]
    alpha = min(1.0, max(0.0, 1.0 - 1.5 * off))  # visibility of the inner structures
    shrink = math.sqrt(max(0.2, 1.0 - (0.85 * off) ** 2))  # off-plane section of a round body
    a, b = A * shrink, B * shrink
    bright = 1.0 - 0.35 * off
    if plane in ("transventricular", "transcerebellar"):
        brain = 62
        d.ring(0, 0, a, b, 0, 0.028, 235 * bright, brain)
        if alpha <= 0:
            return
        if plane == "transventricular":
            # midline with the cavum septi pellucidi, lateral ventricle with the choroid plexus
            d.line(-0.88 * a, 0, 0.88 * a, 0, _mix(brain, 175, alpha), 0.007)
            cx = -an["csp"] * a
            d.ellipse(cx, 0, 0.09 * a, 0.05 * b, 0, _mix(brain, 20, alpha))
            px, py, pang = an["cp"]
            d.ellipse(px * a, py * b, 0.26 * a, 0.14 * b, pang, _mix(brain, 18, alpha))
            d.ellipse(px * a, py * b, 0.17 * a, 0.085 * b, pang, _mix(brain, 215, alpha))
        else:
            # anterior midline, cavum, cerebellar hemispheres with vermis, cisterna magna behind
            d.line(-0.88 * a, 0, -0.1 * a, 0, _mix(brain, 170, alpha), 0.007)
            d.ellipse(-an["csp"] * a, 0, 0.09 * a, 0.05 * b, 0, _mix(brain, 20, alpha))
            cbx, rr = an["cb"]
            d.ellipse((cbx + rr + 0.08) * a, 0, 0.12 * a, 0.22 * b, 0, _mix(brain, 10, alpha))
            for sgn in (-1, 1):
                d.ellipse(cbx * a, sgn * 0.75 * rr * a, rr * a, 0.9 * rr * a, 0, _mix(brain, 150, alpha))
            d.line(cbx * a - 0.8 * rr * a, 0, cbx * a + 0.8 * rr * a, 0, _mix(brain, 210, alpha), 0.01)
    elif plane == "abdomen":
        liver = 92
        d.ring(0, 0, a, b, 0, 0.016, 160 * bright, liver)
        if alpha <= 0:
            return
        sx, sy, sa, sb, sang = an["st"]
        d.ellipse(sx * a, sy * b, sa * a, sb * b, sang, _mix(liver, 10, alpha))  # stomach bubble
        d.arc(-0.15 * a, 0.15 * b, 0.3 * a, 0.2 * b, 0, 200, 320, _mix(liver, 25, alpha), 0.012)  # umb. vein
        for k in range(3):  # spine ossification centres
            d.ellipse(
                (-0.1 + 0.1 * k) * a,
                0.78 * b + (0.03 if k == 1 else 0) * b,
                0.035 * a,
                0.035 * a,
                0,
                _mix(liver, 230, alpha),
            )
    elif plane == "four_chamber":
        lung = 105
        d.ring(0, 0, a, b, 0, 0.016, 150 * bright, lung)
        for k in (-1, 1):  # ribs
            d.arc(0, 0, a * 1.0, b * 1.0, 0, 60 + 25 * k, 75 + 25 * k, 220 * bright, 0.02)
        if alpha <= 0:
            return
        hx, hy, hang = an["heart"]
        th = math.radians(hang)
        c, s = math.cos(th), math.sin(th)

        def hp(u: float, v: float) -> tuple[float, float]:  # heart coordinates -> anatomy coordinates
            return hx * a + c * u - s * v, hy * b + s * u + c * v

        R = 0.55 * a
        d.ellipse(*hp(0, 0), R, 0.85 * R, hang, _mix(lung, 165, alpha))
        for u in (-1, 1):
            for v in (-1, 1):
                d.ellipse(*hp(0.42 * R * u, 0.38 * R * v), 0.34 * R, 0.3 * R, hang, _mix(lung, 12, alpha))
        d.line(*hp(-0.75 * R, 0), *hp(0.75 * R, 0), _mix(lung, 195, alpha), 0.008)
        d.line(*hp(0, -0.7 * R), *hp(0, 0.7 * R), _mix(lung, 195, alpha), 0.008)
        d.ellipse(0.0, 0.8 * b, 0.05 * a, 0.05 * a, 0, _mix(lung, 230, alpha))  # spine


def _key_points(an: dict) -> tuple[np.ndarray, np.ndarray]:
    """Salient points (anatomy coordinates, before mirroring) and how often gaze goes to each."""
    plane, a, b = an["plane"], an["a"], an["b"]
    if plane == "transventricular":
        px, py, _ = an["cp"]
        pts = [(px * a, py * b), (-an["csp"] * a, 0), (0.1 * a, 0), (-a, 0), (a, 0)]
        w = [0.45, 0.25, 0.15, 0.075, 0.075]
    elif plane == "transcerebellar":
        cbx, rr = an["cb"]
        pts = [(cbx * a, 0), ((cbx + rr + 0.08) * a, 0), (-an["csp"] * a, 0), (-a, 0)]
        w = [0.6, 0.15, 0.15, 0.1]
    elif plane == "abdomen":
        sx, sy = an["st"][:2]
        pts = [(sx * a, sy * b), (-0.15 * a, 0.05 * b), (0.0, 0.78 * b), (-a, 0)]
        w = [0.5, 0.25, 0.15, 0.1]
    elif plane == "four_chamber":
        hx, hy, hang = an["heart"]
        th, R = math.radians(hang), 0.55 * a
        c, s = math.cos(th), math.sin(th)
        lv = (hx * a + c * 0.42 * R - s * 0.38 * R, hy * b + s * 0.42 * R + c * 0.38 * R)
        pts = [(hx * a, hy * b), lv, (0.0, 0.8 * b), (0, -b)]
        w = [0.5, 0.25, 0.1, 0.15]
    else:  # background: the tissue blobs
        pts = [(x, y) for x, y, *_ in an["blobs"]]
        w = [1.0] * len(pts)
    weights = np.asarray(w, np.float64)
    return np.asarray(pts, np.float64), weights / weights.sum()


def _local_to_norm(g: _Geometry, S: np.ndarray, mirror: bool, lx, ly):
    """Anatomy coordinates -> normalised frame coordinates, for state rows ``S`` (vectorised)."""
    ly = -ly if mirror else ly
    k = S[..., _SC] * g.L
    c, s = np.cos(S[..., _TH]), np.sin(S[..., _TH])
    X = S[..., _CX] * g.W + k * (c * lx - s * ly)
    Y = S[..., _CY] * g.H + k * (s * lx + c * ly)
    return X / g.W, Y / g.H


# ----------------------------------------------------------------------------------------------------------
# scan plan: visits and per-frame states
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Visit:
    kind: str  # lead_in | good | poor | background
    plane: str
    start: int  # first frame
    hold: int  # first hold frame (== freeze for background)
    freeze: int  # frozen frame (rendered once, then repeated)
    end: int  # one past the last frame
    anatomy: dict
    origin: tuple[float, float]  # speckle canvas origin of this visit


def _frames(rng, rng_s: tuple[float, float], fps: float) -> int:
    return round(rng.uniform(*rng_s) * fps)


def _wobble(rng, n: int, fps: float, amp: float, fmax: float = 0.8, k: int = 3) -> np.ndarray:
    """Smooth random motion: a sum of ``k`` slow sinusoids with total amplitude ``amp``."""
    t = np.arange(n) / fps
    out = np.zeros(n)
    for _ in range(k):
        out += np.sin(2 * math.pi * rng.uniform(0.08, fmax) * t + rng.uniform(0, 2 * math.pi))
    return amp * out / k


def _smoothstep(u: np.ndarray) -> np.ndarray:
    return u * u * (3 - 2 * u)


def _visit_states(rng, kind: str, n_app: int, n_hold: int, n_freeze: int, fps: float) -> np.ndarray:
    """Per-frame states of one visit (approach -> hold -> freeze, or a free-moving background segment)."""
    n = n_app + n_hold + n_freeze
    S = np.zeros((n, _NSTATE))
    S[:, _SHW] = 0.2
    if kind in ("background", "lead_in"):
        S[:, _CX] = 0.5 + rng.uniform(-0.1, 0.1) + _wobble(rng, n, fps, 0.12)
        S[:, _CY] = 0.55 + rng.uniform(-0.08, 0.08) + _wobble(rng, n, fps, 0.08)
        S[:, _TH] = rng.uniform(-math.pi, math.pi) + _wobble(rng, n, fps, 0.3)
        S[:, _SC] = rng.uniform(0.85, 1.15)
        S[:, _BLUR] = rng.uniform(0.0, 0.6)
        S[:, _GAIN] = rng.uniform(0.8, 1.05)
        return S
    poor = kind == "poor"
    # hold target: near the centre of the sector for good holds, off-centre for a poor window
    if poor:
        r, ang = rng.uniform(0.12, 0.2), rng.uniform(0, 2 * math.pi)
        tx, ty = 0.5 + r * math.cos(ang), 0.55 + 0.7 * r * math.sin(ang)
    else:
        tx, ty = 0.5 + rng.uniform(-0.05, 0.05), 0.55 + rng.uniform(-0.05, 0.05)
    tth = rng.uniform(-0.6, 0.6)
    tsc = rng.uniform(0.9, 1.12)
    # approach: from an off-plane, off-centre, rotated view towards the target, with hand wobble
    u = _smoothstep(np.linspace(0.0, 1.0, n_app))
    sx, sy = 0.5 + rng.uniform(-0.35, 0.35), 0.5 + rng.uniform(-0.25, 0.3)
    sth, ssc = tth + rng.uniform(-0.9, 0.9), tsc * rng.uniform(0.8, 1.2)
    free = 1.0 - u
    app = S[:n_app]
    app[:, _CX] = sx + (tx - sx) * u + free * _wobble(rng, n_app, fps, 0.08, 1.2)
    app[:, _CY] = sy + (ty - sy) * u + free * _wobble(rng, n_app, fps, 0.06, 1.2)
    app[:, _TH] = sth + (tth - sth) * u + free * _wobble(rng, n_app, fps, 0.25, 1.0)
    app[:, _SC] = ssc + (tsc - ssc) * u
    o0, o1 = rng.uniform(0.75, 0.95), rng.uniform(0.3, 0.45)
    app[:, _OFF] = np.clip(o0 + (o1 - o0) * u**0.8 + free * _wobble(rng, n_app, fps, 0.12, 1.5), 0, 1)
    app[:, _BLUR] = 1.6 * app[:, _OFF]
    # hold (+ the rendered frozen frame): small probe and fetal motion around the target
    hold = S[n_app : n_app + n_hold + 1]
    m = len(hold)
    hold[:, _CX] = tx + _wobble(rng, m, fps, 0.012, 0.6)
    hold[:, _CY] = ty + _wobble(rng, m, fps, 0.01, 0.6)
    hold[:, _TH] = tth + _wobble(rng, m, fps, 0.03, 0.6)
    hold[:, _SC] = tsc + _wobble(rng, m, fps, 0.01, 0.4)
    if poor:
        hold[:, _OFF] = rng.uniform(0.18, 0.32) + _wobble(rng, m, fps, 0.03)
        hold[:, _BLUR] = rng.uniform(1.0, 1.6)
    else:
        hold[:, _OFF] = np.clip(rng.uniform(0.0, 0.06) + _wobble(rng, m, fps, 0.02), 0, 1)
        hold[:, _BLUR] = 0.0
    ramp = min(round(_RAMP_S * fps), n_hold)
    w = (np.arange(1, ramp + 1) / (ramp + 1))[:, None]
    hold[:ramp] = app[-1] * (1 - w) + hold[:ramp] * w
    # acoustic window of the whole visit
    if poor:
        S[:, _GAIN] = rng.uniform(0.55, 0.72)
        S[:, _SHK] = rng.uniform(0.6, 0.85)
        S[:, _SHO] = rng.choice([-1.0, 1.0]) * rng.uniform(0.03, 0.12)
        S[:, _SHW] = rng.uniform(0.05, 0.1)
        S[:, _ATT] = rng.uniform(0.4, 0.8)
    else:
        S[:, _GAIN] = rng.uniform(0.9, 1.05)
        if rng.random() < 0.3:  # a passing rib shadow while searching
            S[:n_app, _SHK] = rng.uniform(0.2, 0.4) * (1 - u)
            S[:, _SHO] = rng.uniform(-0.3, 0.3)
    # freeze: the frozen frame's state repeats
    S[n_app + n_hold + 1 :] = S[n_app + n_hold]
    return S


@dataclass
class _ScanPlan:
    scan_id: str
    visits: list[_Visit]
    S: np.ndarray  # (n_frames, _NSTATE)
    visit_of: np.ndarray  # (n_frames,) visit index
    src: np.ndarray  # (n_frames,) frame whose image is shown (== itself except during freezes)
    clips: list[dict]


def _plan_scan(cfg: SyntheticConfig, rng: np.random.Generator, scan_id: str, L: float) -> _ScanPlan:
    fps = cfg.fps
    seq = (
        ["good:transventricular"] * cfg.tv_visits
        + [f"good:{p}" for p in cfg.other_planes]
        + ["poor:transventricular"] * cfg.poor_tv_visits
        + [f"background:{BACKGROUND}"] * cfg.background_segments
    )
    order = [seq[i] for i in rng.permutation(len(seq))]
    visits: list[_Visit] = []
    states, vis_of, src = [], [], []
    clips: list[dict] = []
    clip_len = round(cfg.clip_s * fps)
    f = 0
    lo, hi = (round(x * fps) for x in cfg.approach_clip_s)

    def clip(start: int, end: int, label: str, quality: str, kind: str) -> None:
        clips.append(
            {
                "scan_id": scan_id,
                "start_frame": start,
                "end_frame": end,
                "label": label,
                "quality": quality,
                "kind": kind,
            }
        )

    for vi, item in enumerate([f"lead_in:{BACKGROUND}", *order]):
        kind, plane = item.split(":")
        if kind == "lead_in":
            n_app, n_hold, n_fr = round(cfg.lead_in_s * fps), 0, 0
        elif kind == "background":
            n_app, n_hold, n_fr = _frames(rng, cfg.background_s, fps), 0, 0
        else:
            tv_good = kind == "good" and plane == "transventricular"
            n_app = _frames(rng, cfg.tv_approach_s if tv_good else cfg.approach_s, fps)
            n_hold = _frames(rng, cfg.hold_s, fps)
            n_fr = max(2, _frames(rng, cfg.freeze_s, fps))
        n = n_app + n_hold + n_fr
        S = _visit_states(rng, kind, n_app, n_hold, n_fr, fps)
        anatomy = _make_anatomy(plane, rng)
        origin = (rng.uniform(-0.5, 0.5) * L, rng.uniform(-0.5, 0.5) * L)
        v = _Visit(kind, plane, f, f + n_app, f + n_app + n_hold, f + n, anatomy, origin)
        s = np.arange(f, f + n)
        s[n_app + n_hold :] = v.freeze  # the frozen frame repeats (no-op without a freeze)
        visits.append(v)
        states.append(S)
        vis_of.append(np.full(n, vi))
        src.append(s)
        if kind == "good":
            clip(v.freeze + 1 - clip_len, v.freeze + 1, plane, "1", "freeze")
            if plane == "transventricular":
                clip(v.freeze - hi, v.freeze - lo, APPROACH_TV, "0", "approach")
        elif kind == "poor":
            clip(v.freeze + 1 - clip_len, v.freeze + 1, plane, "0", "poor_window")
        elif kind == "background":
            clip(v.end - clip_len, v.end, BACKGROUND, "", "background")
        f += n
    for c in clips:  # guaranteed by SyntheticConfig's checks; a failure here is a bug in this module
        if not (cfg.min_frames_before_end <= c["end_frame"] <= f and c["start_frame"] >= 0):
            raise RuntimeError(f"generated clip {c} violates the frame bounds of a {f}-frame scan")
    return _ScanPlan(
        scan_id, visits, np.concatenate(states), np.concatenate(vis_of), np.concatenate(src), clips
    )


# ----------------------------------------------------------------------------------------------------------
# video, boxes, gaze
# ----------------------------------------------------------------------------------------------------------


def _write_video(
    path: Path, plan: _ScanPlan, g: _Geometry, cfg: SyntheticConfig, rng: np.random.Generator
) -> int:
    nearfield = g.nearfield(rng)
    side = int(4 * g.L)
    canvas = g.speckle_canvas(rng, side)
    bank = g.fresh_bank(rng)
    picks = rng.integers(0, len(bank), len(plan.src))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), cfg.fps, (g.W, g.H), False)
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a MJPG video writer for {path}")
    tissue = np.empty((g.H, g.W), np.uint8)
    frame = None
    try:
        for f in range(len(plan.src)):
            if plan.src[f] != f:  # frozen: the same image again
                writer.write(frame)
                continue
            v = plan.visits[plan.visit_of[f]]
            st = plan.S[f]
            tissue.fill(_FLUID)
            _draw_anatomy(_Draw(tissue, g, st, v.anatomy["mirror"]), v.anatomy, float(st[_OFF]))
            origin = (side / 2 + v.origin[0], side / 2 + v.origin[1])
            frame = g.render(tissue, nearfield, g.speckle_at(canvas, st, origin), bank[picks[f]], st)
            writer.write(frame)
    finally:
        writer.release()
    return len(plan.src)


def _outline_box(g: _Geometry, an: dict, st: np.ndarray):
    """Box (normalised, clipped to the frame) around the main outline, and whether it is visible enough."""
    off = st[..., _OFF]
    shrink = np.sqrt(np.maximum(0.2, 1.0 - (0.85 * off) ** 2))
    a, b = an["a"] * shrink, an["b"] * shrink
    k = st[..., _SC] * g.L
    c, s = np.cos(st[..., _TH]), np.sin(st[..., _TH])
    hx = k * np.sqrt((a * c) ** 2 + (b * s) ** 2) / g.W
    hy = k * np.sqrt((a * s) ** 2 + (b * c) ** 2) / g.H
    cx, cy = st[..., _CX], st[..., _CY]
    box = np.stack([cx - hx, cy - hy, cx + hx, cy + hy], -1)
    ok = (off < 0.8) & (cx > 0.02) & (cx < 0.98) & (cy > 0.02) & (cy < 0.98)
    return np.clip(box, 0.0, 1.0), ok


def _boxes(plan: _ScanPlan, g: _Geometry, cfg: SyntheticConfig) -> list[dict]:
    rows = []
    for f in range(0, len(plan.src), cfg.box_every):
        v = plan.visits[plan.visit_of[f]]
        if v.plane == BACKGROUND:
            continue
        box, ok = _outline_box(g, v.anatomy, plan.S[f])
        if ok and box[2] - box[0] > 0.05 and box[3] - box[1] > 0.05:
            rows.append(
                {
                    "scan_id": plan.scan_id,
                    "frame": f,
                    "x0": f"{box[0]:.5f}",
                    "y0": f"{box[1]:.5f}",
                    "x1": f"{box[2]:.5f}",
                    "y1": f"{box[3]:.5f}",
                    "plane": v.plane,
                }
            )
    return rows


def _gaze(plan: _ScanPlan, g: _Geometry, cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) array of time_s, x, y at the eye-tracker rate; NaN x/y during blinks."""
    fps, rate = cfg.fps, cfg.gaze_rate
    n_frames = len(plan.src)
    n = int(n_frames / fps * rate)
    t = np.arange(n) / rate
    fr = np.minimum((t * fps).astype(np.int64), n_frames - 1)
    xy = np.full((n, 2), np.nan)
    keys = [_key_points(v.anatomy) for v in plan.visits]
    visit_end = np.searchsorted(fr, [v.end for v in plan.visits])
    prev = None
    i = 0
    while i < n:
        f = fr[i]
        vi = int(plan.visit_of[f])
        v = plan.visits[vi]
        holding = f >= v.hold and v.kind in ("good", "poor")
        dwell = rng.gamma(4.0, (0.45 if holding else 0.3) / 4.0)
        n_sac = 2 if prev is not None else 0
        j = int(min(n, visit_end[vi], i + n_sac + max(3, round(dwell * rate))))
        idx = np.arange(i, j)
        pts, w = keys[vi]
        vis = min(1.0, max(0.0, 1.0 - 1.5 * plan.S[f, _OFF]))
        u = rng.random()
        if v.plane == BACKGROUND or (not holding and u > 0.35 + 0.55 * vis):
            if v.plane != BACKGROUND and rng.random() < 0.6:  # the body being searched
                lx, ly = rng.normal(0, 0.06, 2)
                X, Y = _local_to_norm(g, plan.S[fr[idx]], v.anatomy["mirror"], lx, ly)
            elif v.plane == BACKGROUND and rng.random() < 0.7:  # a tissue blob
                lx, ly = pts[rng.choice(len(w), p=w)] + rng.normal(0, 0.03, 2)
                X, Y = _local_to_norm(g, plan.S[fr[idx]], False, lx, ly)
            else:  # somewhere in the sector (searching)
                X = np.full(len(idx), rng.normal(0.5, 0.15))
                Y = np.full(len(idx), rng.normal(0.55, 0.15))
        else:  # a key structure, followed as the probe moves
            lx, ly = pts[rng.choice(len(w), p=w)] + rng.normal(0, 0.012, 2)
            X, Y = _local_to_norm(g, plan.S[fr[idx]], v.anatomy["mirror"], lx, ly)
        pos = np.stack([X, Y], -1) + rng.normal(0, 0.004, (len(idx), 2))
        if prev is not None and n_sac and len(idx) > n_sac:  # saccade: straight to the new target
            a = (np.arange(1, n_sac + 1) / (n_sac + 1))[:, None]
            pos[:n_sac] = prev * (1 - a) + pos[n_sac] * a
        xy[i:j] = pos
        prev = pos[-1]
        i = j
    xy = np.clip(xy, 0.0, 1.0)
    # blinks
    tb = rng.exponential(cfg.blink_interval_s)
    while tb < t[-1]:
        xy[(t >= tb) & (t < tb + rng.uniform(0.08, 0.25))] = np.nan
        tb += rng.exponential(cfg.blink_interval_s) + 0.3
    return np.column_stack([t, xy])


def _write_gaze(path: Path, gz: np.ndarray) -> None:
    lines = ["time_s,x,y"]
    for t, x, y in gz:
        lines.append(f"{t:.4f},NaN,NaN" if np.isnan(x) else f"{t:.4f},{x:.5f},{y:.5f}")
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------
# audio: a formant-synthesised language with plane-specific words
# ----------------------------------------------------------------------------------------------------------

_VOWELS = {  # F1, F2, F3 (Hz)
    "i": (270, 2290, 3010),
    "e": (530, 1840, 2480),
    "a": (730, 1090, 2440),
    "ae": (660, 1720, 2410),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}
_CONTOURS = ("rise", "fall", "flat", "risefall", "high", "low")
_CONSONANTS = ("none", "fricative", "plosive", "nasal")
_PLANE_SOUNDS = {  # preferred vowels, pitch contours and consonants of each plane's words
    "transventricular": (("i", "e"), ("rise", "high"), ("fricative",)),
    "transcerebellar": (("u", "o"), ("fall", "low"), ("plosive",)),
    "abdomen": (("a", "ae"), ("risefall", "flat"), ("nasal",)),
    "four_chamber": (("i", "a"), ("high", "fall"), ("plosive", "fricative")),
}


def _make_language(rng: np.random.Generator, words_per_plane: int = 3, chat_words: int = 8) -> dict:
    def syllable(pref):
        if pref is not None and rng.random() < 0.85:
            vs, cs, ks = pref
        else:
            vs, cs, ks = tuple(_VOWELS), _CONTOURS, _CONSONANTS
        return (str(rng.choice(vs)), str(rng.choice(cs)), str(rng.choice(ks)))

    lang = {
        p: [[syllable(_PLANE_SOUNDS[p]) for _ in range(rng.integers(2, 4))] for _ in range(words_per_plane)]
        for p in PLANES
    }
    lang["chat"] = [[syllable(None) for _ in range(rng.integers(1, 4))] for _ in range(chat_words)]
    return lang


def _contour(name: str, u: np.ndarray) -> np.ndarray:
    return {
        "rise": 0.88 + 0.32 * u,
        "fall": 1.2 - 0.35 * u,
        "flat": np.ones_like(u),
        "risefall": 0.95 + 0.3 * np.sin(np.pi * u),
        "high": 1.25 + 0.03 * u,
        "low": 0.82 - 0.03 * u,
    }[name]


def _resonate(x: np.ndarray, f: float, bw: float, sr: int) -> np.ndarray:
    r = math.exp(-math.pi * bw / sr)
    return lfilter([1.0 - r], [1.0, -2.0 * r * math.cos(2 * math.pi * f / sr), r * r], x)


def _syllable(syl, speaker: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    vowel, contour, cons = syl
    dur = rng.uniform(0.13, 0.22) * speaker["rate"]
    n = int(dur * sr)
    u = np.linspace(0.0, 1.0, n)
    f0 = speaker["f0"] * _contour(contour, u) * (1 + 0.01 * rng.standard_normal())
    phase = np.cumsum(f0) / sr
    src = np.diff(np.floor(phase), prepend=0.0)  # glottal pulse train
    src = lfilter([1.0], [1.0, -0.92], src) + 0.03 * rng.standard_normal(n)
    F = np.asarray(_VOWELS[vowel]) * speaker["formant"]
    y = sum(gain * _resonate(src, f, bw, sr) for f, bw, gain in zip(F, (80, 100, 140), (1.0, 0.6, 0.3)))
    y *= np.minimum(1.0, np.minimum(u / 0.15, (1.0 - u) / 0.3)).clip(0, 1) ** 0.7
    y /= np.sqrt(np.mean(y * y)) + 1e-9
    if cons == "none":
        return y
    m = int(rng.uniform(0.03, 0.06) * sr)
    noise = rng.standard_normal(m)
    if cons == "fricative":
        c = 0.25 * np.diff(noise, prepend=0.0) * np.hanning(m)
    elif cons == "plosive":
        c = np.zeros(m)
        k = int(0.012 * sr)
        c[-k:] = 0.8 * noise[-k:] * np.exp(-np.linspace(0, 4, k))
    else:  # nasal murmur
        c = 0.5 * np.sin(2 * np.pi * 250 * np.arange(m) / sr) * np.hanning(m)
    return np.concatenate([c, y])


def _audio(
    plan: _ScanPlan, cfg: SyntheticConfig, sr: int, lang: dict, rng: np.random.Generator
) -> np.ndarray:
    """Mono speech track of a scan: plane words while the plane is searched, held and frozen; chat; pauses."""
    dur = len(plan.src) / cfg.fps
    n = round(dur * sr)
    out = np.zeros(n)
    speaker = {
        "f0": rng.uniform(110, 230),
        "formant": rng.uniform(0.9, 1.12),
        "rate": rng.uniform(0.85, 1.15),
    }
    busy_until = 0.0
    fps = cfg.fps

    def say(words_of, t0, t1):
        nonlocal busy_until
        t = max(t0, busy_until)
        if t >= t1:
            return
        for _ in range(rng.integers(1, 4)):
            word = words_of[rng.integers(len(words_of))]
            for syl in word:
                y = _syllable(syl, speaker, sr, rng) * rng.uniform(0.08, 0.14)
                i = int(t * sr)
                k = min(len(y), n - i)
                if k <= 0:
                    return
                out[i : i + k] += y[:k]
                t += len(y) / sr + rng.uniform(0.02, 0.05)
            t += rng.uniform(0.08, 0.2)
        busy_until = t + rng.uniform(0.3, 0.8)  # pause

    for v in plan.visits:
        ts, th, tf, te = v.start / fps, v.hold / fps, v.freeze / fps, v.end / fps
        if v.plane in PLANES:
            words = lang[v.plane]
            if rng.random() < 0.5:  # "looking for the ..." while searching
                say(words, ts + rng.uniform(0.0, 0.5 * (th - ts)), th)
            if rng.random() < 0.85:
                say(words, th + rng.uniform(0.0, 0.5 * (tf - th)), te)
            if rng.random() < 0.7:  # naming the frozen plane
                say(words, tf, te)
        if rng.random() < cfg.chat_prob or (v.plane == BACKGROUND and rng.random() < 0.5):
            say(lang["chat"], ts + rng.uniform(0, te - ts), te)
    out += 0.002 * rng.standard_normal(n)  # room noise
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# still images and pairs
# ----------------------------------------------------------------------------------------------------------


def _image_state(q: float, rng: np.random.Generator) -> np.ndarray:
    """Quality q in [0, 1] -> renderer state: one continuous knob for offset, blur, shadow, gain, framing."""
    bad = 1.0 - q
    st = np.zeros(_NSTATE)
    r, ang = bad * 0.2 * rng.uniform(0.7, 1.0), rng.uniform(0, 2 * math.pi)
    st[_CX], st[_CY] = 0.5 + r * math.cos(ang), 0.55 + 0.7 * r * math.sin(ang)
    st[_TH] = rng.uniform(-0.7, 0.7)
    st[_SC] = rng.uniform(0.92, 1.1)
    st[_OFF] = float(np.clip(0.8 * bad + rng.uniform(-0.02, 0.02), 0.0, 1.0))
    st[_BLUR] = 2.2 * bad
    st[_GAIN] = 1.0 - 0.35 * bad
    st[_SHK] = 0.85 * bad
    st[_SHO] = rng.uniform(-0.15, 0.15)
    st[_SHW] = rng.uniform(0.06, 0.12)
    st[_ATT] = 0.9 * bad
    return st


def _images(out: Path, cfg: SyntheticConfig, g: _Geometry, rng: np.random.Generator):
    side = int(4 * g.L)
    canvas = g.speckle_canvas(rng, side)
    bank = g.fresh_bank(rng)
    nearfield = g.nearfield(rng)
    tissue = np.empty((g.H, g.W), np.uint8)
    rows, pairs = [], []
    n_val = round(cfg.images_per_plane * cfg.split_fractions[1])
    n_test = round(cfg.images_per_plane * cfg.split_fractions[2])
    for plane in cfg.image_planes:
        (out / "images" / plane).mkdir(parents=True, exist_ok=True)
        n = cfg.images_per_plane
        qs = (rng.permutation(n) + rng.uniform(0, 1, n)) / n  # stratified over [0, 1]
        splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
        splits = [splits[i] for i in rng.permutation(n)]
        items = [("train", q, s) for q, s in zip(qs, splits)]
        items += [("standard", rng.uniform(0.93, 1.0), "train") for _ in range(cfg.standard_per_plane)]
        plane_rows = []
        for i, (role, q, split) in enumerate(items):
            an = _make_anatomy(plane, rng)
            st = _image_state(float(q), rng)
            tissue.fill(_FLUID)
            _draw_anatomy(_Draw(tissue, g, st, an["mirror"]), an, float(st[_OFF]))
            origin = (side / 2 + rng.uniform(-0.5, 0.5) * g.L, side / 2 + rng.uniform(-0.5, 0.5) * g.L)
            img = g.render(
                tissue, nearfield, g.speckle_at(canvas, st, origin), bank[rng.integers(len(bank))], st
            )
            rel = f"images/{plane}/{role}_{i:04d}.png"
            cv2.imwrite(str(out / rel), img)
            plane_rows.append(
                {"image": rel, "plane": plane, "split": split, "role": role, "quality_score": f"{q:.4f}"}
            )
        rows += plane_rows
        for split in ("val", "test"):
            cand = [r for r in plane_rows if r["split"] == split and r["role"] == "train"]
            valid = [
                (a, b)
                for i, a in enumerate(cand)
                for b in cand[i + 1 :]
                if abs(float(a["quality_score"]) - float(b["quality_score"])) >= cfg.min_pair_gap
            ]
            for k in rng.permutation(len(valid))[: cfg.pairs_per_plane]:
                a, b = valid[k]
                if float(a["quality_score"]) < float(b["quality_score"]):
                    a, b = b, a
                pairs.append(
                    {
                        "better": a["image"],
                        "worse": b["image"],
                        "plane": plane,
                        "split": split,
                        "quality_better": a["quality_score"],
                        "quality_worse": b["quality_score"],
                    }
                )
    return rows, pairs


# ----------------------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _count(rows: list[dict], *keys: str) -> dict[str, int]:
    """Rows per combination of ``keys``, e.g. ``{"test/abdomen/1": 3}`` (an empty value shows as ``-``)."""
    return dict(sorted(Counter("/".join(str(r[k]) or "-" for k in keys) for r in rows).items()))


def _scan_splits(n: int, fractions, rng: np.random.Generator) -> list[str]:
    n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
    n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    return [splits[i] for i in rng.permutation(n)]


def _resolve(preset: str | SyntheticConfig) -> tuple[str, SyntheticConfig]:
    if isinstance(preset, SyntheticConfig):
        for name, cfg in PRESETS.items():
            if cfg == preset:
                return name, cfg
        return "custom", preset
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    return preset, PRESETS[preset]


def _generate_into(root: Path, name: str, cfg: SyntheticConfig, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    H, W = cfg.frame_size
    g = _Geometry(H, W)
    for sub in ("videos", "gaze", "audio", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lang = _make_language(rng)
    ids = [f"scan_{i:03d}" for i in range(cfg.n_scans)]
    splits = _scan_splits(cfg.n_scans, cfg.split_fractions, rng)
    special = rng.permutation(cfg.n_scans)
    hires = set(special[: cfg.n_hires_audio].tolist())
    silent = set(special[cfg.n_hires_audio : cfg.n_hires_audio + cfg.n_silent_audio].tolist())
    scans: list[dict[str, Any]] = []
    clips: list[dict[str, Any]] = []
    boxes: list[dict[str, Any]] = []
    for i, (sid, split) in enumerate(zip(ids, splits)):
        plan = _plan_scan(cfg, rng, sid, g.L)
        n_frames = _write_video(root / "videos" / f"{sid}.avi", plan, g, cfg, rng)
        _write_gaze(root / "gaze" / f"{sid}.csv", _gaze(plan, g, cfg, rng))
        sr = cfg.hires_audio_rate if i in hires else cfg.audio_rate
        audio = _audio(plan, cfg, sr, lang, rng)
        if i in silent:
            audio[:] = 0.0
        if i in hires:  # stereo: the second microphone hears it a little quieter, with its own noise
            audio = np.stack([audio, 0.8 * audio + 0.002 * rng.standard_normal(len(audio))], -1)
        sf.write(str(root / "audio" / f"{sid}.wav"), audio, sr, subtype="PCM_16")
        scans.append(
            {
                "scan_id": sid,
                "video": f"videos/{sid}.avi",
                "gaze": f"gaze/{sid}.csv",
                "audio": f"audio/{sid}.wav",
                "fps": f"{cfg.fps:g}",
                "split": split,
                "n_frames": n_frames,
                "audio_rate": sr,
                "audio_channels": 2 if i in hires else 1,
            }
        )
        for k, c in enumerate(plan.clips):
            clips.append({"clip_id": f"{sid}_c{k:02d}", **c, "split": split})
        boxes += _boxes(plan, g, cfg)
    images, pairs = _images(root, cfg, g, rng)
    _write_csv(
        root / "scans.csv",
        scans,
        ["scan_id", "video", "gaze", "audio", "fps", "split", "n_frames", "audio_rate", "audio_channels"],
    )
    _write_csv(
        root / "clips.csv",
        clips,
        ["clip_id", "scan_id", "start_frame", "end_frame", "label", "split", "quality", "kind"],
    )
    _write_csv(root / "images.csv", images, ["image", "plane", "split", "role", "quality_score"])
    _write_csv(
        root / "pairs.csv", pairs, ["better", "worse", "plane", "split", "quality_better", "quality_worse"]
    )
    _write_csv(root / "boxes.csv", boxes, ["scan_id", "frame", "x0", "y0", "x1", "y1", "plane"])
    counts = {
        "scans": _count(scans, "split"),
        "frames": sum(s["n_frames"] for s in scans),
        "clips": _count(clips, "split", "label", "quality"),
        "images": _count(images, "split", "role"),
        "pairs": _count(pairs, "split"),
        "boxes": len(boxes),
    }
    meta = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "preset": name,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "counts": counts,
    }
    (root / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def is_generated_dataset(root: str | Path) -> bool:
    """True if ``root`` holds a dataset written by this generator (its ``synthetic.json`` marker)."""
    try:
        meta = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == GENERATOR


def generate_dataset(
    out: str | Path, preset: str | SyntheticConfig = "tiny", seed: int = 0, overwrite: bool = False
) -> Path:
    """Generate a synthetic dataset at ``out`` and return its path.

    Deterministic for ``(preset, seed)``. The dataset is written into a temporary folder beside ``out`` and
    renamed into place when complete, so an interrupted run never leaves a half dataset at ``out``. An
    existing non-empty ``out`` is replaced only if it is a generated dataset and ``overwrite`` is True;
    anything else raises ``FileExistsError`` (user data is never deleted).
    """
    out = Path(out).expanduser().absolute()
    name, cfg = _resolve(preset)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not is_generated_dataset(out):
                raise FileExistsError(
                    f"{out} is not empty and is not a generated dataset (no {MARKER} from "
                    f"this generator): refusing to touch it"
                )
            if not overwrite:
                raise FileExistsError(
                    f"{out} already holds a generated dataset; pass overwrite=True "
                    f"(--overwrite) to replace it"
                )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _generate_into(tmp, name, cfg, seed)
        if out.exists() and any(out.iterdir()):
            # checked again: only a generated dataset is ever moved aside and deleted
            if not (overwrite and is_generated_dataset(out)):
                raise FileExistsError(f"{out} appeared while generating; refusing to replace it")
            trash = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(out, trash)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)  # onto a missing or empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_dataset(root: str | Path, preset: str | SyntheticConfig = "tiny", seed: int = 0) -> Path:
    """Generate the dataset at ``root`` if it is missing (or an empty folder); otherwise leave it alone."""
    root = Path(root).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        return root
    try:
        generate_dataset(root, preset, seed)
    except (FileExistsError, OSError):
        # another process generated it at the same time: fine if a complete dataset is now there
        if not is_generated_dataset(root):
            raise
    return root


def _summary(root: Path, seconds: float) -> str:
    meta = json.loads((root / MARKER).read_text())
    lines = [
        f"synthetic dataset at {root}",
        f"  preset={meta['preset']} seed={meta['seed']} version={meta['version']} time={seconds:.1f}s",
    ]
    for key, val in meta["counts"].items():
        if isinstance(val, dict):
            lines.append(f"  {key}: {sum(val.values())}")
            lines += [f"    {k}: {n}" for k, n in val.items()]
        else:
            lines.append(f"  {key}: {val}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datamodules.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="dataset folder to create")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing generated dataset")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = generate_dataset(args.out, args.preset, args.seed, args.overwrite)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_summary(root, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
