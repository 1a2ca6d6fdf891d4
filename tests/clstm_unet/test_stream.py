"""Streaming prediction: equal to the full model on every frame's window, each frame encoded once, bounded
buffer, the same preprocessing as training, arrays / overlay video / report on disk, the command."""

import json

import cv2
import lightning
import numpy as np
import pytest
import torch

from datamodules.readers import VideoReader
from lightning_modules.clstm_unet.module import CLSTMUNet
from lightning_modules.clstm_unet.nets import ConvLSTMUNet
from lightning_modules.clstm_unet.stream import (
    StreamingSaliency,
    main,
    overlay_heatmap,
    preprocess_frame,
    stream_video,
    window_indices,
    window_predictions,
)

SMALL = dict(in_channels=1, base_channels=4, depth=2, convlstm_hidden=4)


def _net(nb: int, na: int, **kwargs) -> ConvLSTMUNet:
    """A small net with non-trivial BatchNorm statistics, in eval mode, made sensitive to its context.

    A freshly initialised net gives almost uniform maps that barely depend on the context frames, so any
    window would pass a closeness check: sharpen the output and amplify the ConvLSTM's share of the fused
    bottleneck so that each frame of the window visibly changes the map.
    """
    torch.manual_seed(0)
    net = ConvLSTMUNet(**SMALL, num_before=nb, num_after=na, **kwargs)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 1, nb + na + 1, 16, 16) * 2 - 1, nb)
        net.decoder.head.weight.mul_(100.0)
        if net.convlstm is not None and net.fuse is not None:
            net.fuse[0].weight[:, net.bottleneck_channels :].mul_(30.0)
            net.convlstm.cells[0].conv.weight.mul_(3.0)
    return net.eval()


def test_window_indices_clamp_at_both_ends():
    assert window_indices(5, 20, 3, 0) == [2, 3, 4, 5]
    assert window_indices(1, 20, 3, 0) == [0, 0, 0, 1]
    assert window_indices(18, 20, 1, 2) == [17, 18, 19, 19]
    assert window_indices(4, 20, 2, 1, frame_interval=3) == [0, 1, 4, 7]
    assert window_indices(0, 1, 0, 0) == [0]


def _stream_all(streamer: StreamingSaliency, video: torch.Tensor) -> tuple[list[int], torch.Tensor, list]:
    order, maps, per_push = [], [], []
    for frame in video.unbind(1):
        ready = streamer.push(frame)
        per_push.append([i for i, _ in ready])
        for i, m in ready:
            order.append(i)
            maps.append(m)
    for i, m in streamer.flush():
        order.append(i)
        maps.append(m)
    return order, torch.stack(maps), per_push


@pytest.mark.parametrize(
    ("nb", "na", "interval", "share"),
    [(3, 0, 1, True), (3, 0, 2, True), (0, 2, 1, True), (2, 1, 1, True), (2, 1, 2, False), (0, 0, 1, True)],
)
def test_streaming_equals_full_model_on_each_frames_window(nb, na, interval, share):
    net = _net(nb, na, share_encoder=share)
    video = torch.rand(1, 11, 16, 16) * 2 - 1
    streamer = StreamingSaliency(net, frame_interval=interval)
    order, streamed, per_push = _stream_all(streamer, video)
    assert order == list(range(11))  # every frame gets exactly one map, in order
    reference = window_predictions(net, video, frame_interval=interval, batch_size=4)
    torch.testing.assert_close(streamed.log(), reference.log(), atol=5e-5, rtol=0)
    torch.testing.assert_close(streamed.sum(dim=(1, 2)), torch.ones(11))
    # latency: a frame's map comes out latency = interval·num_after pushes after the frame
    latency = interval * na
    assert streamer.latency == latency
    assert per_push[:latency] == [[]] * latency
    assert per_push[latency] == [0] and per_push[-1] == [10 - latency]
    # each streamed map depends on exactly the frames of its (clamped) window: change one frame and
    # only the maps whose window holds it change, by far more than the tolerance above
    for changed in (0, 5, 10):
        other = video.clone()
        other[:, changed] = -other[:, changed]
        _, streamed_other, _ = _stream_all(StreamingSaliency(net, frame_interval=interval), other)
        change = (streamed_other.log() - streamed.log()).abs().amax(dim=(1, 2))
        for t in range(11):
            if changed in window_indices(t, 11, nb, na, interval):
                assert change[t] > 5e-4, (changed, t)
            else:
                assert change[t] == 0, (changed, t)


def test_spatial_only_model_streams_the_target_frame_alone():
    net = _net(0, 0, use_temporal=False)
    video = torch.rand(1, 5, 16, 16) * 2 - 1
    _, streamed, _ = _stream_all(StreamingSaliency(net), video)
    with torch.no_grad():
        single = net(video.permute(1, 0, 2, 3).unsqueeze(2), 0).exp()[:, 0]
    torch.testing.assert_close(streamed, single, atol=1e-5, rtol=1e-4)


def test_each_frame_is_encoded_once_and_the_buffer_stays_bounded():
    net = _net(4, 1)
    calls = []
    net.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    streamer = StreamingSaliency(net, frame_interval=2)
    assert streamer.buffer_size == 2 * (4 + 1) + 1
    for frame in (torch.rand(1, 30, 16, 16) * 2 - 1).unbind(1):
        streamer.push(frame)
        assert len(streamer._entries) <= streamer.buffer_size
        kept_skips = [i for i, e in streamer._entries.items() if e.skips is not None]
        assert len(kept_skips) <= streamer.latency + 1  # full-resolution skips only for frames still due
    streamer.flush()
    assert calls == [1] * 30  # one single-frame encoder pass per frame, nothing re-encoded


def test_frames_of_the_wrong_shape_are_rejected():
    streamer = StreamingSaliency(_net(1, 0))
    with pytest.raises(ValueError, match="1×H×W"):
        streamer.push(torch.zeros(3, 16, 16))


def _write_video(path, frames_bgr, fps: float = 10.0):
    H, W = frames_bgr[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    assert writer.isOpened()
    for f in frames_bgr:
        writer.write(f)
    writer.release()


def _frames(n: int, H: int = 40, W: int = 48, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    return [np.roll(base, 2 * i, axis=1) for i in range(n)]


@pytest.mark.parametrize("channels", [1, 3])
def test_preprocessing_is_the_training_readers(tmp_path, channels):
    path = tmp_path / "clip.avi"
    _write_video(path, _frames(3))
    with VideoReader(path) as reader:
        expected = reader.read([0, 1, 2], size=(16, 24), channels=channels)  # T×H×W×C uint8
    cap = cv2.VideoCapture(str(path))
    for t in range(3):
        ok, frame = cap.read()
        assert ok
        x = preprocess_frame(frame, (16, 24), channels)
        assert x.shape == (channels, 16, 24)
        ref = torch.from_numpy(expected[t]).permute(2, 0, 1).float() / 127.5 - 1.0
        torch.testing.assert_close(x, ref)
    cap.release()


def test_overlay_heatmap_marks_the_peak():
    frame = np.zeros((20, 30, 3), np.uint8)
    sal = np.zeros((10, 15), np.float32)
    sal[2, 12] = 1.0
    out = overlay_heatmap(frame, sal, alpha=1.0)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    hot = np.unravel_index(int(np.argmax(out[:, :, 2].astype(int) - out[:, :, 0])), out.shape[:2])
    assert abs(hot[0] - 5) <= 2 and abs(hot[1] - 25) <= 2  # red (JET maximum) near the upsampled peak


def test_stream_video_writes_arrays_overlay_and_report(tmp_path):
    video_path = tmp_path / "scan.avi"
    _write_video(video_path, _frames(9))
    net = _net(2, 0)
    report = stream_video(net, video_path, tmp_path / "out", image_size=16, verify_frames=5)
    sal = np.load(tmp_path / "out" / "saliency.npy")
    assert sal.shape == (9, 16, 16) and sal.dtype == np.float32
    np.testing.assert_allclose(sal.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    cap = cv2.VideoCapture(str(video_path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(preprocess_frame(f, (16, 16), 1))
    cap.release()
    reference = window_predictions(net, torch.stack(frames, dim=1)).numpy()
    np.testing.assert_allclose(sal, reference, atol=1e-5)
    overlay = cv2.VideoCapture(report.overlay)
    n, shape = 0, None
    while True:
        ok, f = overlay.read()
        if not ok:
            break
        n, shape = n + 1, f.shape
    overlay.release()
    assert n == 9 and shape == (40, 48, 3)  # at the video's own resolution
    saved = json.loads((tmp_path / "out" / "stream.json").read_text())
    assert saved["frames"] == 9 and saved["latency_frames"] == 0 and saved["model_fps"] > 0
    assert saved["verified_frames"] == 5 and saved["max_abs_diff"] < 1e-5
    assert not list((tmp_path / "out").glob(".saliency*"))  # temporary raw file removed


def test_stream_command_from_a_checkpoint(tmp_path, capsys):
    video_path = tmp_path / "scan.avi"
    _write_video(video_path, _frames(6))
    torch.manual_seed(0)
    module = CLSTMUNet(
        image_size=16, in_channels=1, base_channels=4, depth=2, convlstm_hidden=4, num_before=1, num_after=1
    )
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            CLSTMUNet.CHECKPOINT_HYPER_PARAMS_KEY: dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        ckpt,
    )
    report = main(
        ["--checkpoint", str(ckpt), "--video", str(video_path), "--out", str(tmp_path / "o"), "--no-overlay"]
    )
    assert report.frames == 6 and report.latency_frames == 1 and report.overlay is None
    assert "placement both" in capsys.readouterr().out
    assert np.load(tmp_path / "o" / "saliency.npy").shape == (6, 16, 16)
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--video", str(video_path), "--out", "x"])
    with pytest.raises(FileNotFoundError, match=r"nothing\.avi"):
        main(
            [
                "--checkpoint",
                str(ckpt),
                "--video",
                str(tmp_path / "nothing.avi"),
                "--out",
                str(tmp_path / "p"),
            ]
        )
