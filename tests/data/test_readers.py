"""Media readers: exact video indexing, truncated files, gaze, audio windows, log-mel, images."""

import math
import pickle

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from datamodules.readers import (
    GazeTrack,
    LogMel,
    MediaError,
    VideoReader,
    audio_info,
    fixations_for_frames,
    gaze_maps,
    load_audio,
    load_gaze,
    probe_video,
    read_image,
    worker_init,
)

N_FRAMES = 80  # grey level 3*i stays below 256


def _write_index_video(path, n=N_FRAMES, fps=25.0):
    """MJPG AVI whose frame i is uniformly grey at level 3*i (colour-encoded)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 32), True)
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((32, 32, 3), 3 * i, np.uint8))
    w.release()
    return path


@pytest.fixture(scope="module")
def index_video(tmp_path_factory):
    return _write_index_video(tmp_path_factory.mktemp("video") / "index.avi")


def _decoded_index(frames: np.ndarray) -> np.ndarray:
    levels = frames.reshape(len(frames), -1).mean(axis=1)
    idx = np.rint(levels / 3).astype(int)
    assert np.all(np.abs(levels - 3 * idx) < 1.5)  # unambiguous decoding of the level
    return idx


# ----------------------------------------------------------------------------------------------- video


def test_probe(index_video):
    info = probe_video(index_video)
    assert (info.frame_count, info.fps, info.width, info.height) == (N_FRAMES, 25.0, 32, 32)
    assert info.path == index_video


@pytest.mark.parametrize("seed", range(6))
def test_exact_indexing_random_sets(index_video, seed):
    rng = np.random.default_rng(seed)
    with VideoReader(index_video, max_forward_gap=[64, 3][seed % 2]) as reader:
        for _ in range(3):  # several reads on one reader: continues forward or re-seeks
            idx = rng.integers(0, N_FRAMES, rng.integers(1, 12))
            if seed % 3 == 0:
                idx = np.sort(idx)
            frames = reader.read(idx)
            assert frames.shape == (len(idx), 32, 32, 1) and frames.dtype == np.uint8
            np.testing.assert_array_equal(_decoded_index(frames), idx)


def test_unsorted_repeated_and_far_apart(index_video):
    idx = [79, 3, 3, 0, 70, 79, 1, 40, 2]
    with VideoReader(index_video) as reader:
        frames = reader.read(idx)
        np.testing.assert_array_equal(_decoded_index(frames), idx)
        np.testing.assert_array_equal(frames[0], frames[5])
        np.testing.assert_array_equal(_decoded_index(reader.read(range(N_FRAMES))), np.arange(N_FRAMES))


def test_inter_coded_video_matches_sequential_decoding(tmp_path):
    """mp4v (keyframes + P-frames): seeks to non-keyframes return what decoding from the start gives."""
    path = tmp_path / "p.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (32, 32), True)
    tex = cv2.resize(np.random.default_rng(0).integers(0, 256, (8, 48), dtype=np.uint8), (144, 32))
    for i in range(100):
        w.write(cv2.cvtColor(np.ascontiguousarray(tex[:, i : i + 32]), cv2.COLOR_GRAY2BGR))
    w.release()
    cap, seq = cv2.VideoCapture(str(path)), []
    while (frame := cap.read()[1]) is not None:
        seq.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    cap.release()
    assert len(seq) == probe_video(path).frame_count == 100
    rng = np.random.default_rng(0)
    for gap in (64, 2):
        with VideoReader(path, max_forward_gap=gap) as reader:
            for _ in range(10):
                idx = rng.integers(0, 100, 5)
                np.testing.assert_array_equal(reader.read(idx)[..., 0], np.stack(seq)[idx])


def test_size_and_channels(index_video):
    with VideoReader(index_video) as reader:
        rgb = reader.read([10, 20], size=(16, 24), channels=3)
        grey = reader.read([10, 20], size=(16, 24))
        assert reader.info.frame_count == N_FRAMES
    assert rgb.shape == (2, 16, 24, 3) and grey.shape == (2, 16, 24, 1)
    np.testing.assert_array_equal(_decoded_index(rgb), [10, 20])
    with pytest.raises(ValueError):
        VideoReader(index_video).read([0], channels=2)


def test_out_of_range_names_file_and_frame(index_video):
    with (
        VideoReader(index_video) as reader,
        pytest.raises(MediaError, match=rf"index\.avi: frame {N_FRAMES}\b"),
    ):
        reader.read([0, N_FRAMES])
    with pytest.raises(MediaError, match="frame -1"):
        VideoReader(index_video).read([-1])


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(MediaError, match=r"nope\.avi"):
        probe_video(tmp_path / "nope.avi")
    with pytest.raises(MediaError, match=r"nope\.avi"):
        VideoReader(tmp_path / "nope.avi").read([0])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(MediaError, match=r"junk\.mp4"):
        probe_video(junk)


def test_truncated_video(index_video, tmp_path):
    data = index_video.read_bytes()
    for frac in (0.5, 0.9):
        cut = tmp_path / f"cut{frac}.avi"
        cut.write_bytes(data[: int(len(data) * frac)])
        assert (
            probe_video(cut, check_last_frame=False).frame_count == N_FRAMES
        )  # the container still claims it
        with pytest.raises(MediaError, match=rf"cut{frac}\.avi: frame \d+: truncated") as err:
            probe_video(cut)
        bad = int(str(err.value).split("frame ")[1].split(":")[0])
        assert 0 < bad < N_FRAMES
        with VideoReader(cut) as reader:  # frames before the reported one decode (the one just before
            # it may be the partly written frame, which decodes to garbage)
            np.testing.assert_array_equal(_decoded_index(reader.read([bad - 2])), [bad - 2])
            with pytest.raises(MediaError, match=rf"cut{frac}\.avi: frame \d+: cannot be decoded"):
                reader.read([bad])


def test_reader_pickles_and_reopens_per_process(index_video):
    reader = VideoReader(index_video)
    reader.read([5])
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._cap is None
    np.testing.assert_array_equal(_decoded_index(clone.read([7, 6])), [7, 6])
    reader._pid = -1  # as if inherited by a forked worker: the capture must be replaced, not reused
    np.testing.assert_array_equal(_decoded_index(reader.read([1])), [1])
    reader.close()


class _Frames(torch.utils.data.Dataset):
    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.from_numpy(self.reader.read([i * 9])), np.random.randint(1 << 30)


def test_dataloader_workers(index_video):
    reader = VideoReader(index_video)
    reader.read([0])  # opened in the main process before the workers fork
    ds = _Frames(reader)

    def run():
        g = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, num_workers=2, worker_init_fn=worker_init, generator=g
        )
        frames, draws = zip(*loader)
        return torch.cat(frames).numpy(), torch.cat(draws).numpy()

    frames, draws = run()
    np.testing.assert_array_equal(_decoded_index(frames), np.arange(8) * 9)
    assert len(set(draws.tolist())) == 8  # workers are seeded differently
    np.testing.assert_array_equal(run()[1], draws)  # and reproducibly from torch's seed
    reader.close()


# ------------------------------------------------------------------------------------------------ gaze


def test_load_gaze(tmp_path):
    p = tmp_path / "gaze.csv"
    p.write_text(
        "x,time_s,pupil,y\n0.5,0.00,3,0.25\n,0.05,3,0.5\n0.1,0.10,, \n0.75,0.15,1,0.125\nnan,0.2,1,0.3\n"
    )
    track = load_gaze(p)
    np.testing.assert_array_equal(track.time_s, [0.0, 0.05, 0.10, 0.15, 0.2])
    np.testing.assert_array_equal(track.xy[[0, 3]], [[0.5, 0.25], [0.75, 0.125]])
    assert np.isnan(track.xy[[1, 2, 4]]).all()  # a missing x or y = no fixation (both NaN)


def test_load_gaze_errors(tmp_path):
    p = tmp_path / "g.csv"
    p.write_text("time_s,x\n0,0.5\n")
    with pytest.raises(MediaError, match=r"g\.csv: missing column 'y'"):
        load_gaze(p)
    p.write_text("time_s,x,y\n0,0.5,0.5\n0.1,abc,0.5\n")
    with pytest.raises(MediaError, match=r"g\.csv:3: x: not a number"):
        load_gaze(p)
    p.write_text("time_s,x,y\n0,0.5,0.5\n,0.5,0.5\n")
    with pytest.raises(MediaError, match=r"g\.csv:3: time_s"):
        load_gaze(p)
    with pytest.raises(MediaError, match=r"absent\.csv"):
        load_gaze(tmp_path / "absent.csv")


def test_fixations_for_frames():
    fps = 10.0
    t = np.array([0.0, 0.05, 0.0999, 0.1, 0.25, 0.31, 0.35])
    xy = np.array([[0.1, 0.1], [0.2, 0.2], [np.nan, np.nan], [0.3, 0.3], [0.4, 0.4], [0.5, 0.5], [0.6, 0.6]])
    fx = fixations_for_frames(GazeTrack(t, xy), fps, [3, 0, 1, 2, 9])
    np.testing.assert_array_equal(fx[0], [[0.5, 0.5], [0.6, 0.6]])
    np.testing.assert_array_equal(fx[1], [[0.1, 0.1], [0.2, 0.2]])  # NaN sample dropped, t=0.1 is frame 1
    np.testing.assert_array_equal(fx[2], [[0.3, 0.3]])
    np.testing.assert_array_equal(fx[3], [[0.4, 0.4]])
    assert fx[4].shape == (0, 2)


def test_gaze_maps():
    H, W, sigma = 24, 32, 3.0
    x, y = (10 + 0.5) / W, (7 + 0.5) / H  # the centre of pixel (row 7, col 10)
    two = np.array([[x, y], [0.8, 0.3]])
    maps, valid = gaze_maps([np.array([[x, y]]), np.empty((0, 2)), two], H, W, sigma)
    assert maps.shape == (3, H, W) and maps.dtype == np.float32
    np.testing.assert_array_equal(valid, [True, False, True])
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    assert np.unravel_index(maps[0].argmax(), (H, W)) == (7, 10)
    np.testing.assert_allclose(maps[1], 1.0 / (H * W))
    assert maps[0, 7, 13] / maps[0, 7, 10] == pytest.approx(math.exp(-0.5), rel=1e-5)  # 1 sigma along x
    assert maps[0, 4, 10] / maps[0, 7, 10] == pytest.approx(math.exp(-0.5), rel=1e-5)  # 1 sigma along y
    yy, xx = np.mgrid[0:H, 0:W] + 0.5  # brute-force 2-D reference for two fixations
    ref = sum(np.exp(-((xx - px * W) ** 2 + (yy - py * H) ** 2) / (2 * sigma**2)) for px, py in two)
    np.testing.assert_allclose(maps[2], ref / ref.sum(), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError):
        gaze_maps([two], H, W, 0.0)


# ----------------------------------------------------------------------------------------------- audio


def test_load_audio_window_exact_samples(tmp_path):
    p = tmp_path / "ramp.wav"
    ramp = (np.arange(16000) / 16000).astype(np.float32)
    sf.write(p, np.stack([ramp, -ramp + 0.5], axis=1), 16000, subtype="FLOAT")  # stereo: mean = 0.25
    assert audio_info(p) == (16000, 16000, 2)
    full = load_audio(p, 16000)
    assert full.dtype == torch.float32 and full.shape == (16000,)
    np.testing.assert_allclose(full.numpy(), 0.25, atol=1e-6)
    sf.write(p, ramp, 16000, subtype="FLOAT")
    win = load_audio(p, 16000, start_s=0.25, duration_s=0.5)
    np.testing.assert_array_equal(win.numpy(), ramp[4000:12000])
    tail = load_audio(p, 16000, start_s=0.75, duration_s=0.5)  # runs 0.25 s past the end
    assert tail.shape == (8000,)
    np.testing.assert_array_equal(tail[:4000].numpy(), ramp[12000:])
    assert not tail[4000:].any()
    head = load_audio(p, 16000, start_s=-0.125, duration_s=0.25)  # before the start: zeros too
    assert not head[:2000].any()
    np.testing.assert_array_equal(head[2000:].numpy(), ramp[:2000])


def test_load_audio_resamples(tmp_path):
    p = tmp_path / "tone.flac"
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    sf.write(p, np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1) * 0.5, sr)
    wav = load_audio(p, 16000, start_s=0.2, duration_s=1.0)
    assert wav.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(wav.numpy()))
    assert np.argmax(spectrum) == 440  # 1 s window: bin k is k Hz
    assert wav.abs().max() == pytest.approx(0.5, abs=0.02)
    assert load_audio(p, 16000, start_s=1.4, duration_s=0.3).shape == (4800,)


@pytest.mark.parametrize("sr", [44100, 48000, 8000])
def test_audio_window_equals_slice_of_whole_file(tmp_path, sr):
    p = tmp_path / "noise.wav"
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, int(1.2 * sr)).astype(np.float32)
    sf.write(p, noise, sr, subtype="FLOAT")
    whole = torchaudio.functional.resample(torch.from_numpy(noise), sr, 16000)
    assert torch.allclose(load_audio(p, 16000), whole, atol=1e-5)
    for start, dur in ((0.2, 0.5), (0.0, 0.25), (0.9, 0.3)):
        win = load_audio(p, 16000, start_s=start, duration_s=dur)
        a = round(start * 16000)
        assert win.shape == (round(dur * 16000),)
        torch.testing.assert_close(win, whole[a : a + len(win)], atol=1e-5, rtol=0)


def test_audio_errors(tmp_path):
    with pytest.raises(MediaError, match=r"none\.wav"):
        load_audio(tmp_path / "none.wav", 16000)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(MediaError, match=r"empty\.wav: empty audio"):
        load_audio(empty, 16000)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF nonsense" * 10)
    with pytest.raises(MediaError, match=r"junk\.wav"):
        load_audio(junk, 16000)
    with pytest.raises(MediaError, match=r"junk\.wav"):
        audio_info(junk)
    flac = tmp_path / "cut.flac"
    sf.write(flac, np.random.default_rng(0).uniform(-0.5, 0.5, 16000), 16000)
    flac.write_bytes(flac.read_bytes()[:4000])  # the header still claims 16000 samples
    for start in (0.0, 0.5):
        with pytest.raises(MediaError, match=r"cut\.flac: (truncated|cannot decode)"):
            load_audio(flac, 16000, start_s=start, duration_s=0.4)


def _slaney_hz_to_mel(f):
    f = np.asarray(f, np.float64)
    logstep = math.log(6.4) / 27.0
    return np.where(f < 1000, 3 * f / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) / logstep)


def _slaney_mel_to_hz(m):
    logstep = math.log(6.4) / 27.0
    return np.where(m < 15, 200 * m / 3, 1000 * np.exp(logstep * (m - 15)))


def test_logmel_matches_hand_built_reference():
    sr, n_fft, hop = 16000, 512, 160
    t = torch.arange(sr) / sr
    wav = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.1 * torch.sin(2 * math.pi * 3000 * t)
    out = LogMel()(wav)
    assert out.shape == (1, 64, 1 + sr // hop) and out.dtype == torch.float32
    spec = torch.stft(
        wav, n_fft, hop, n_fft, torch.hann_window(n_fft), center=True, pad_mode="reflect", return_complex=True
    )
    fb = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, 50.0, 8000.0, 64, sr, norm="slaney", mel_scale="slaney"
    )
    ref = 10 * torch.log10((fb.T @ spec.abs() ** 2).clamp(min=1e-10))
    torch.testing.assert_close(out[0], ref, atol=1e-3, rtol=1e-4)
    batch = LogMel()(torch.stack([wav, torch.zeros_like(wav)]))
    assert batch.shape == (2, 1, 64, 101)
    torch.testing.assert_close(batch[0], out, atol=1e-3, rtol=1e-4)
    assert batch[1].max().item() == pytest.approx(-100.0)  # silence: 10*log10(amin), no top_db


def test_logmel_1khz_peaks_in_the_right_bin():
    sr = 16000
    t = torch.arange(sr) / sr
    mel = LogMel()(torch.sin(2 * math.pi * 1000 * t))[0].mean(dim=-1)
    points = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(50.0), _slaney_hz_to_mel(8000.0), 64 + 2))
    expected = int(np.argmin(np.abs(points[1:-1] - 1000.0)))  # the filter centred nearest 1 kHz
    assert int(mel.argmax()) == expected


def test_logmel_under_autocast():
    wav = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LogMel()(wav)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, LogMel()(wav))


# ----------------------------------------------------------------------------------------------- image


def test_read_image_formats(tmp_path):
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 200  # stored as B, G, R
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    rgb = read_image(tmp_path / "c.png", channels=3)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [200, 20, 10])
    grey = read_image(tmp_path / "c.png")
    assert grey.shape == (20, 30, 1)
    assert grey[0, 0, 0] == cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[0, 0]
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([bgr, np.full((20, 30), 128, np.uint8)]))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", channels=3), rgb)
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((20, 30), 257 * 100, np.uint16))
    g16 = read_image(tmp_path / "g16.png", channels=3, size=(10, 12))
    assert g16.shape == (10, 12, 3) and (g16 == 100).all()
    cv2.imwrite(str(tmp_path / "g.bmp"), np.full((20, 30), 77, np.uint8))
    assert (read_image(tmp_path / "g.bmp", size=(5, 5)) == 77).all()


def test_read_image_errors(tmp_path):
    with pytest.raises(MediaError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(MediaError, match=r"bad\.png"):
        read_image(tmp_path / "bad.png")
