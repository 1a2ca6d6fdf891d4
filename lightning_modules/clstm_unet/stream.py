"""Streaming saliency prediction over a whole video: every frame encoded once, features in a ring buffer.

cLSTMU-Net predicts frame t from a window of frames around it (``num_before`` before, ``num_after`` after, at
``frame_interval``). Running the whole network on every window would encode each frame L + 1 times. Here each
new frame goes through the encoder once; its bottleneck (the temporal feature) is kept in a ring buffer of
the last ``frame_interval·(num_before + num_after) + 1`` frames, and the prediction for a frame costs one
encoder pass plus the ConvLSTM over its window and the decoder. Since the ConvLSTM starts from a zero state
at the first frame of every window (as in training), it is re-run over the window for each frame: that is
L + 1 small steps on bottleneck-sized maps, cheap next to the encoder.

Placement:

- **before** (``num_after = 0``, the paper's best): causal. The map for frame t is ready as soon as frame
  t arrives, so it works on a live scan.
- **after / both** (``num_after = A > 0``): the map for frame t needs frames up to t + A·k, so it is emitted
  A·k frames late (``latency``); :meth:`StreamingSaliency.flush` emits the last ones at the end of a video.
  On a live scan this is a delay of A·k frames (200 ms for A = 6 at 30 fps).
- At the start (and, with frames after, the end) of a video, a window reaching outside it repeats the first
  (last) frame: the prediction equals the model run on the window of clamped frame indices
  (:func:`window_indices`). Every frame gets a map.

Equivalence: in eval mode :class:`StreamingSaliency` gives the same maps (to float tolerance) as
``net(video[:, :, window_indices(t)], num_before)`` for every frame t: :func:`window_predictions` is that
reference (``--verify N`` runs it on the first N frames and reports the largest difference and its speed).

Command::

    python -m lightning_modules.clstm_unet.stream --checkpoint runs/.../last.ckpt --video scan.mp4 --out out/

writes ``out/saliency.npy`` (N×H×W float32 at the model's resolution, each map sums to 1),
``out/overlay.mp4`` (the video with the predicted map as a heat map and its peak, at the video's resolution)
and ``out/stream.json`` (frames, frames per second of the model and end to end, latency, settings).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from datamodules.base import as_hw
from lightning_modules.clstm_unet.nets import ConvLSTMUNet

__all__ = [
    "StreamReport",
    "StreamingSaliency",
    "overlay_heatmap",
    "preprocess_frame",
    "stream_video",
    "window_indices",
    "window_predictions",
]


def window_indices(
    target: int, num_frames: int, num_before: int, num_after: int, frame_interval: int = 1
) -> list[int]:
    """Frame indices of the window of ``target``: before-frames, target, after-frames (time order), each
    clamped to [0, num_frames − 1] (the edge frame repeats where the window leaves the video)."""
    offsets = range(-num_before, num_after + 1)
    return [min(max(target + frame_interval * j, 0), num_frames - 1) for j in offsets]


@dataclass
class _Entry:
    """What the ring buffer keeps of one frame: its temporal feature and, while it may still be a
    target, the spatial encoder's skips and bottleneck."""

    context: Tensor  # 1×C×h×w
    skips: list[Tensor] | None
    bottleneck: Tensor | None


class StreamingSaliency:
    """Push frames one by one, get each frame's saliency map once its window is complete.

    ``push(frame)`` takes one frame C×H×W in [-1, 1] (the model's size) and returns the maps that became
    ready as ``(frame_index, map H×W)`` pairs (probabilities summing to 1, float32 on the CPU): for the
    before-only placement exactly the pushed frame's map; with ``num_after`` > 0 the map from
    ``latency`` frames ago (none during the first ``latency`` pushes). ``flush()`` emits the remaining maps
    at the end of the video. The network is put in eval mode.
    """

    def __init__(
        self,
        net: ConvLSTMUNet,
        frame_interval: int = 1,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        if frame_interval < 1:
            raise ValueError(f"frame_interval must be >= 1, got {frame_interval}")
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.frame_interval = frame_interval
        self.num_before = net.num_before if net.use_temporal else 0
        self.num_after = net.num_after if net.use_temporal else 0
        self.reset()

    @property
    def latency(self) -> int:
        """Frames between a frame's arrival and its map (0 for the before-only placement)."""
        return self.frame_interval * self.num_after

    @property
    def buffer_size(self) -> int:
        """Frames whose features the ring buffer holds."""
        return self.frame_interval * (self.num_before + self.num_after) + 1

    def reset(self) -> None:
        """Start a new video."""
        self._entries: dict[int, _Entry] = {}
        self._next_frame = 0  # index the next pushed frame gets
        self._next_target = 0  # next frame whose map is due

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def push(self, frame: Tensor) -> list[tuple[int, Tensor]]:
        if frame.dim() != 3 or frame.shape[0] != self.net.in_channels:
            raise ValueError(f"frame must be {self.net.in_channels}×H×W, got {tuple(frame.shape)}")
        index = self._next_frame
        x = frame.to(self.device, torch.float32).unsqueeze(0)
        with self._autocast():
            skips, bottleneck = self.net.encode_frame(x)
            context = bottleneck if self.net.temporal_encoder is None else self.net.encode_context_frame(x)
        self._entries[index] = _Entry(context, list(skips), bottleneck)
        self._next_frame += 1
        ready = []
        while self._next_target + self.latency <= index:
            ready.append(self._emit(self._next_target, last_frame=index))
        self._evict()
        return ready

    @torch.no_grad()
    def flush(self) -> list[tuple[int, Tensor]]:
        """Maps of the frames still waiting for frames after them (windows clamped to the last frame)."""
        last = self._next_frame - 1
        ready = [self._emit(self._next_target, last_frame=last) for _ in range(self._next_target, last + 1)]
        self._evict()
        return ready

    def _emit(self, target: int, last_frame: int) -> tuple[int, Tensor]:
        idx = window_indices(target, last_frame + 1, self.num_before, self.num_after, self.frame_interval)
        entry = self._entries[target]
        assert entry.skips is not None and entry.bottleneck is not None
        context_idx = idx[: self.num_before] + idx[self.num_before + 1 :]
        context = torch.stack([self._entries[i].context for i in context_idx], dim=1) if context_idx else None
        with self._autocast():
            log_map = self.net.decode(
                entry.skips,
                entry.bottleneck,
                context,
                target_context=entry.context if self.net.temporal_encoder is not None else None,
            )
        self._next_target = target + 1
        return target, log_map.float().exp()[0, 0].cpu()

    def _evict(self) -> None:
        """Keep the features of the last ``buffer_size`` frames, and skips only for frames still due."""
        oldest = self._next_frame - self.buffer_size
        for i in [i for i in self._entries if i < oldest]:
            del self._entries[i]
        for i, entry in self._entries.items():
            if i < self._next_target:
                entry.skips, entry.bottleneck = None, None


@torch.no_grad()
def window_predictions(
    net: ConvLSTMUNet, video: Tensor, frame_interval: int = 1, batch_size: int = 16
) -> Tensor:
    """Reference: the full network on every frame's (clamped) window of ``video`` C×N×H×W -> N×H×W maps.

    Encodes each frame L + 1 times; used to check :class:`StreamingSaliency` and to measure what it saves.
    """
    net.eval()
    num_before = net.num_before if net.use_temporal else 0
    num_after = net.num_after if net.use_temporal else 0
    n = video.shape[1]
    maps = []
    for start in range(0, n, batch_size):
        windows = [
            video[:, window_indices(t, n, num_before, num_after, frame_interval)]
            for t in range(start, min(n, start + batch_size))
        ]
        maps.append(net(torch.stack(windows), num_before).exp()[:, 0])
    return torch.cat(maps)


# ---------------------------------------------------------------------------------------------------------
# video in, arrays and overlay out
# ---------------------------------------------------------------------------------------------------------


def preprocess_frame(frame_bgr: np.ndarray, size: tuple[int, int], channels: int) -> Tensor:
    """A decoded OpenCV frame (BGR or grey uint8) -> C×H×W float32 in [-1, 1] at ``size`` = (H, W).

    The same steps as the training data (``datamodules.readers.VideoReader``): BGR -> grey (or RGB), INTER_AREA
    resize, then ``x / 127.5 − 1``.
    """
    if frame_bgr.ndim == 2 or frame_bgr.shape[2] == 1:
        grey = frame_bgr.reshape(frame_bgr.shape[0], frame_bgr.shape[1])
        img = grey[:, :, None] if channels == 1 else cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    elif channels == 1:
        img = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
    else:
        img = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    if img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        img = img[:, :, None] if img.ndim == 2 else img
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def overlay_heatmap(frame_bgr: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a saliency map (any size, scaled by its max) as a JET heat map over a frame -> H×W×3 BGR uint8,
    with a circle at the map's peak."""
    if frame_bgr.ndim == 2 or frame_bgr.shape[2] == 1:
        frame_bgr = cv2.cvtColor(frame_bgr.reshape(frame_bgr.shape[:2]), cv2.COLOR_GRAY2BGR)
    H, W = frame_bgr.shape[:2]
    sal = cv2.resize(saliency.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    peak = float(sal.max())
    scaled = np.clip(sal / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(sal)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(frame_bgr, 1.0 - alpha, heat, alpha, 0.0)
    row, col = np.unravel_index(int(np.argmax(sal)), sal.shape)
    cv2.circle(out, (int(col), int(row)), max(2, min(H, W) // 40), (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _read_frames(path: Path, max_frames: int | None) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"{path}: cannot open the video (missing file or unsupported container)")
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            n += 1
            yield frame
    finally:
        cap.release()


def _open_writer(path: Path, fps: float, size_wh: tuple[int, int]) -> tuple[cv2.VideoWriter, Path]:
    """mp4v in .mp4, else MJPG in .avi (OpenCV builds differ in the encoders they carry)."""
    for fourcc, suffix in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        target = path.with_suffix(suffix)
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*fourcc), fps, size_wh)
        if writer.isOpened():
            return writer, target
        writer.release()
        target.unlink(missing_ok=True)
    raise RuntimeError(f"OpenCV cannot write a video here (tried mp4v {path}.mp4 and MJPG .avi)")


@dataclass
class StreamReport:
    """What :func:`stream_video` did and how fast."""

    video: str
    frames: int
    saliency: str
    overlay: str | None
    model_fps: float  # frames per second of the network alone (encode + ConvLSTM + decode)
    total_fps: float  # frames per second end to end (decode video, network, write arrays and video)
    latency_frames: int
    buffer_frames: int
    num_before: int
    num_after: int
    frame_interval: int
    image_size: list[int]
    device: str
    precision: str
    verified_frames: int = 0
    max_abs_diff: float | None = None  # streaming vs full-window reference on the verified frames
    reference_fps: float | None = None  # frames per second of the full-window reference


def stream_video(
    net: ConvLSTMUNet,
    video: str | Path,
    out: str | Path,
    image_size: int | Sequence[int],
    frame_interval: int = 1,
    device: str = "cpu",
    precision: str = "32",
    overlay: bool = True,
    alpha: float = 0.5,
    max_frames: int | None = None,
    verify_frames: int = 0,
) -> StreamReport:
    """Stream ``video`` through ``net``; write ``saliency.npy``, ``overlay.mp4`` and ``stream.json`` to ``out``."""
    video, out = Path(video), Path(out)
    if precision not in ("32", "bf16"):
        raise ValueError(f"precision must be '32' or 'bf16', got {precision!r}")
    size = as_hw(image_size if isinstance(image_size, int) else list(image_size))
    out.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise FileNotFoundError(f"{video}: cannot open the video (missing file or unsupported container)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    cap.release()

    streamer = StreamingSaliency(net, frame_interval, device, torch.bfloat16 if precision == "bf16" else None)
    raw_path = out / ".saliency.f32"
    writer: cv2.VideoWriter | None = None
    overlay_path: Path | None = None
    pending: dict[int, np.ndarray] = {}  # original frames waiting for their (delayed) map
    kept: list[Tensor] = []  # model-size frames for --verify
    n_frames = 0
    model_seconds = 0.0
    start = time.perf_counter()

    def write(ready: list[tuple[int, Tensor]], raw) -> None:
        nonlocal writer, overlay_path
        for index, sal in ready:
            sal_np = sal.numpy().astype(np.float32)
            raw.write(sal_np.tobytes())
            frame = pending.pop(index)
            if overlay:
                if writer is None:
                    writer, overlay_path = _open_writer(
                        out / "overlay", fps, (frame.shape[1], frame.shape[0])
                    )
                writer.write(overlay_heatmap(frame, sal_np, alpha))

    try:
        with raw_path.open("wb") as raw:
            for frame in _read_frames(video, max_frames):
                x = preprocess_frame(frame, size, net.in_channels)
                if n_frames < verify_frames:
                    kept.append(x)
                pending[n_frames] = frame
                n_frames += 1
                tick = time.perf_counter()
                ready = streamer.push(x)
                model_seconds += time.perf_counter() - tick
                write(ready, raw)
            tick = time.perf_counter()
            ready = streamer.flush()
            model_seconds += time.perf_counter() - tick
            write(ready, raw)
    finally:
        if writer is not None:
            writer.release()
    if n_frames == 0:
        raw_path.unlink(missing_ok=True)
        raise ValueError(f"{video}: no frame could be decoded")
    saliency = np.lib.format.open_memmap(
        out / "saliency.npy", mode="w+", dtype=np.float32, shape=(n_frames, *size)
    )
    saliency[:] = np.fromfile(raw_path, dtype=np.float32).reshape(n_frames, *size)
    saliency.flush()
    del saliency
    raw_path.unlink()
    total_seconds = time.perf_counter() - start

    report = StreamReport(
        video=str(video),
        frames=n_frames,
        saliency=str(out / "saliency.npy"),
        overlay=str(overlay_path) if overlay_path else None,
        model_fps=n_frames / max(model_seconds, 1e-9),
        total_fps=n_frames / max(total_seconds, 1e-9),
        latency_frames=streamer.latency,
        buffer_frames=streamer.buffer_size,
        num_before=streamer.num_before,
        num_after=streamer.num_after,
        frame_interval=frame_interval,
        image_size=list(size),
        device=str(device),
        precision=precision,
    )
    if kept:
        report = _verify(report, net, kept, frame_interval, out)
    (out / "stream.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _verify(
    report: StreamReport, net: ConvLSTMUNet, frames: list[Tensor], frame_interval: int, out: Path
) -> StreamReport:
    """Compare the streamed maps of the first frames with the full-window reference (on the same frames
    only, so their end-of-window clamping matches a stream cut after them) and time the reference one
    frame at a time, as a live predictor without the ring buffer would run."""
    clip = torch.stack(frames, dim=1).to(next(net.parameters()).device)
    cut = StreamingSaliency(net, frame_interval, clip.device)
    streamed = [m for f in clip.unbind(1) for _, m in cut.push(f)] + [m for _, m in cut.flush()]
    tick = time.perf_counter()
    reference = window_predictions(net, clip, frame_interval, batch_size=1).float().cpu()
    seconds = time.perf_counter() - tick
    diff = (torch.stack(streamed) - reference).abs().max().item()
    report.verified_frames = len(frames)
    report.max_abs_diff = diff
    report.reference_fps = len(frames) / max(seconds, 1e-9)
    return report


def load_network(checkpoint: str | Path, device: str = "cpu") -> tuple[ConvLSTMUNet, dict]:
    """The network and hyper-parameters of a :class:`~lightning_modules.clstm_unet.module.CLSTMUNet`
    checkpoint."""
    from lightning_modules.clstm_unet.module import CLSTMUNet
    from lightning_modules.common.checkpoints import load_module

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    module = load_module(CLSTMUNet, path, map_location=device)
    return module.net.eval(), dict(module.hparams)


def main(argv: Sequence[str] | None = None) -> StreamReport:
    parser = argparse.ArgumentParser(
        description="Streaming cLSTMU-Net saliency over a video: arrays, overlay video, frames per second."
    )
    parser.add_argument("--checkpoint", required=True, help="a CLSTMUNet Lightning checkpoint (.ckpt)")
    parser.add_argument("--video", required=True, help="any OpenCV-readable video")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--no-overlay", action="store_true", help="write the arrays only")
    parser.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity in the overlay")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="N",
        help="also run the full-window reference on the first N frames: max difference and its fps",
    )
    args = parser.parse_args(argv)
    net, hparams = load_network(args.checkpoint, args.device)
    report = stream_video(
        net,
        args.video,
        args.out,
        image_size=hparams["image_size"],
        frame_interval=int(hparams.get("frame_interval", 1)),
        device=args.device,
        precision=args.precision,
        overlay=not args.no_overlay,
        alpha=args.alpha,
        max_frames=args.max_frames,
        verify_frames=args.verify,
    )
    placement = "before" if report.num_after == 0 else ("after" if report.num_before == 0 else "both")
    print(
        f"{report.frames} frames, placement {placement} ({report.num_before} before, {report.num_after} after, "
        f"latency {report.latency_frames} frames): model {report.model_fps:.1f} fps, "
        f"end to end {report.total_fps:.1f} fps"
    )
    if report.verified_frames:
        print(
            f"verified {report.verified_frames} frames against the full-window model: max |diff| "
            f"{report.max_abs_diff:.2e}, full-window model {report.reference_fps:.1f} fps"
        )
    print(f"wrote {report.saliency}" + (f" and {report.overlay}" if report.overlay else ""))
    return report


if __name__ == "__main__":
    main()
