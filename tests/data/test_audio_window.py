"""Item 9 of issue 11: a clip's audio window ends where the clip ends, zero-padded before 0 s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.clips import ClipDataset, ClipItem, audio_window

SR = 1000  # samples per second of the test WAV and of the window: sample n encodes time n / SR


def time_wav(path: Path, seconds: float) -> Path:
    """A WAV whose sample n holds (n + 1) / 10000: the value says which instant it is (never 0)."""
    n = int(seconds * SR)
    sf.write(str(path), ((np.arange(n) + 1) / 10000.0).astype(np.float32), SR, subtype="FLOAT")
    return path


def dataset(seconds: float) -> ClipDataset:
    """A dataset that only reads audio (no cache, no log-mel: ``audio_wave`` is the raw window)."""
    return ClipDataset([], None, ["audio"], [], (8, 8), 1.0, SR, seconds, None, "last")  # type: ignore[arg-type]


def item(audio: Path, last_frame: int, fps: float) -> ClipItem:
    return ClipItem("c", "s", (last_frame,), "x", -1, fps, audio_path=audio)


def test_audio_window_is_never_clamped_to_zero() -> None:
    assert audio_window(9, 10.0, 2.0) == pytest.approx((-1.0, 1.0))
    assert audio_window(29, 10.0, 2.0) == pytest.approx((1.0, 3.0))


def test_clip_ending_at_one_second_gets_minus_one_to_one_zero_padded(tmp_path: Path) -> None:
    wav = time_wav(tmp_path / "t.wav", 5.0)
    wave = dataset(2.0).audio_wave(item(wav, last_frame=9, fps=10.0))  # clip ends at 1.0 s
    assert wave.shape == (2 * SR,)
    assert torch.all(wave[:SR] == 0), "[-1, 0) s lies before the scan: zeros"
    expected = (np.arange(SR) + 1) / 10000.0  # [0, 1) s: samples 0..999, nothing after 1.0 s
    np.testing.assert_allclose(wave[SR:].numpy(), expected, rtol=0, atol=1e-7)


def test_window_inside_the_scan_reads_exactly_the_two_seconds_before_the_clip_end(tmp_path: Path) -> None:
    wav = time_wav(tmp_path / "t.wav", 5.0)
    wave = dataset(2.0).audio_wave(item(wav, last_frame=29, fps=10.0))  # ends at 3.0 s
    expected = (np.arange(1 * SR, 3 * SR) + 1) / 10000.0
    np.testing.assert_allclose(wave.numpy(), expected, rtol=0, atol=1e-7)
