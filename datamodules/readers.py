"""Media readers of the data contract (docs/data.md): video, gaze, audio and still images.

Every reader raises :class:`MediaError` for unreadable media, with a message that names the file
(and the frame or CSV line where that applies), so a bad dataset fails with a message a person can act on.

Video frames are read by index with OpenCV: one seek to the smallest requested index, then
``grab()``/``retrieve()`` forward (a per-frame seek is several times slower on H.264 and seeking
accuracy is the backend's, not ours). :class:`VideoReader` opens its capture lazily, once per
process, so a reader created in the main process can be used inside DataLoader workers.

DICOM cine loops (what ultrasound machines export: ``.dcm`` files, or any file with the ``DICM`` preamble)
are read as videos through pydicom (the optional extra ``pip install 'sonolab[dicom]'``): its own decoders
and colour conversion (YBR to RGB, palette colour), the frame rate from the DICOM timing tags. A still image
given as a video is an error that says so and what to do instead.
"""

from __future__ import annotations

import csv
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
import torch
import torchaudio

from datamodules.errors import DataError

__all__ = [
    "DicomVideo",
    "GazeTrack",
    "LogMel",
    "MediaError",
    "VideoInfo",
    "VideoReader",
    "audio_info",
    "dicom_fps",
    "fixations_for_frames",
    "gaze_maps",
    "is_dicom",
    "load_audio",
    "load_gaze",
    "probe_video",
    "read_image",
    "worker_init",
]

#: files taken for still images when given as a video (cv2.VideoCapture would "open" them as 0-frame videos).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_INSTALL = "pip install 'sonolab[dicom]'"


class MediaError(DataError):
    """A media file (video, gaze CSV, audio, image) is missing or cannot be read.

    The message always starts with the file's path and names the frame / CSV line when there is one.
    """


# ----------------------------------------------------------------------------------------------- video


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video. ``fps`` is 0.0 when the container stores no rate."""

    path: Path
    frame_count: int
    fps: float
    width: int
    height: int


# Captures inherited through fork() are never released in the child: freeing an FFmpeg decoder whose
# worker threads only exist in the parent can hang. They are parked here instead (a few KB each).
_INHERITED_CAPTURES: list[cv2.VideoCapture] = []


def _still_image_error(path: Path) -> MediaError:
    return MediaError(
        f"{path}: a still image, not a video: a scans.csv video must be a video file or a DICOM cine loop. "
        "List still images in images.csv instead (boxes for zoom-in pretraining can point at them: "
        "python -m datamodules.masks writes images.csv and boxes.csv from a folder of images and segmentation "
        "masks), or pack the frames of one scan into one video file (e.g. with ffmpeg or cv2.VideoWriter)"
    )


def _is_still_image(path: Path) -> bool:
    """An image file by name, or by content (a PNG/JPEG/... signature OpenCV's image reader recognises)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        return bool(cv2.haveImageReader(str(path))) and path.suffix.lower() != ".gif"
    except cv2.error:
        return False


def _open_capture(path: Path) -> cv2.VideoCapture:
    if not path.is_file():
        raise MediaError(f"{path}: video file not found")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise _still_image_error(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise MediaError(f"{path}: cannot open video (not a container/codec OpenCV can read)")
    return cap


def _info_from_capture(path: Path, cap: cv2.VideoCapture) -> VideoInfo:
    frame_count = round(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if frame_count <= 0 and _is_still_image(path):
        raise _still_image_error(path)
    if frame_count <= 0:
        raise MediaError(f"{path}: video reports no frames (CAP_PROP_FRAME_COUNT = {frame_count})")
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    if not math.isfinite(fps) or fps <= 0:
        fps = 0.0
    width = round(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = round(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return VideoInfo(path=path, frame_count=frame_count, fps=fps, width=width, height=height)


def _decodes(path: Path, index: int) -> np.ndarray | None:
    """Decode frame ``index`` with a fresh capture (a failed read can leave a capture unusable)."""
    cap = _open_capture(path)
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        return frame if ok and frame is not None else None
    finally:
        cap.release()


def probe_video(path: str | os.PathLike, check_last_frame: bool = True) -> VideoInfo:
    """Open a video and return its :class:`VideoInfo`.

    With ``check_last_frame`` the last frame the container claims is decoded; when that fails (a
    truncated file) a binary search finds the first undecodable frame and :class:`MediaError` names
    it. Seeking in a truncated file is less reliable than decoding it forward, so the frame named is
    the first one *found* undecodable; the frames before it decode. A DICOM file (:func:`is_dicom`) is read
    with pydicom (:class:`DicomVideo`); its last frame is decoded with ``check_last_frame``.
    """
    path = Path(path)
    if is_dicom(path):
        dicom = DicomVideo(path)
        if check_last_frame:
            dicom.frame(dicom.info.frame_count - 1)
        return dicom.info
    cap = _open_capture(path)
    try:
        info = _info_from_capture(path, cap)
    finally:
        cap.release()
    if not check_last_frame:
        return info
    last = _decodes(path, info.frame_count - 1)
    if last is not None:
        if info.width <= 0 or info.height <= 0:
            info = VideoInfo(path, info.frame_count, info.fps, last.shape[1], last.shape[0])
        return info
    good, bad = -1, info.frame_count - 1  # invariant: frame `bad` fails; frames <= `good` decode
    while bad - good > 1:
        mid = (good + bad) // 2
        if _decodes(path, mid) is not None:
            good = mid
        else:
            bad = mid
    if good < 0:
        raise MediaError(
            f"{path}: frame 0: video cannot be decoded (container reports {info.frame_count} frames)"
        )
    raise MediaError(
        f"{path}: frame {bad}: truncated or corrupt video: container reports {info.frame_count} frames "
        f"but frame {bad} cannot be decoded (frames 0..{good} decode)"
    )


# ----------------------------------------------------------------------------------------------- DICOM


def is_dicom(path: str | os.PathLike) -> bool:
    """A ``.dcm`` / ``.dicom`` file, or any file with the DICOM preamble (``DICM`` at byte 128)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _pydicom(path: Path):
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise MediaError(
            f"{path}: a DICOM file: reading DICOM cine loops needs pydicom >= 3.0, which is not installed: "
            f"{DICOM_INSTALL}"
        ) from None
    return pydicom


def _positive(value: object) -> float | None:
    """A DICOM numeric value (DS/IS, maybe a string) as a positive finite float, else None."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def dicom_fps(ds) -> float:
    """Frame rate of a DICOM cine loop from its timing tags; 0.0 when it has none.

    The acquisition timing comes first, since gaze and audio are aligned with frames by time: Frame Time
    (0018,1063, ms per frame), then Frame Time Vector (0018,1065, ms since the previous frame, the first
    entry 0: the mean of the others), then the display rates Cine Rate (0018,0040) and Recommended Display
    Frame Rate (0008,2144), in frames per second.
    """
    frame_time = _positive(ds.get("FrameTime"))
    if frame_time is not None:
        return 1000.0 / frame_time
    vector = ds.get("FrameTimeVector")
    if vector is not None:
        values = (
            list(vector) if not isinstance(vector, str | bytes) and hasattr(vector, "__iter__") else [vector]
        )
        steps = [v for v in (_positive(x) for x in values[1:]) if v is not None]
        if steps and len(steps) == len(values) - 1:
            return 1000.0 / (sum(steps) / len(steps))
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds.get(keyword))
        if rate is not None:
            return rate
    return 0.0


class DicomVideo:
    """A DICOM file read as a video: ``info`` (frames, fps from :func:`dicom_fps`, size) and ``frame(i)``
    (uint8 H×W grey or H×W×3 BGR, like an OpenCV frame).

    Pixel data are decoded by pydicom (compressed transfer syntaxes need its decoder plugins), YBR colour is
    converted to RGB and palette colour applied with pydicom's own helpers, MONOCHROME1 is inverted, and
    samples of more than 8 bits are scaled from their Bits Stored range to 0-255.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise MediaError(f"{self.path}: video file not found")
        pydicom = _pydicom(self.path)
        try:
            # large values (the pixel data) are read only when a frame is decoded
            self.ds = pydicom.dcmread(str(self.path), defer_size="512 KB")
        except Exception as exc:  # InvalidDicomError, a truncated header, ...
            raise MediaError(f"{self.path}: not a readable DICOM file ({exc})") from None
        ds = self.ds
        if "PixelData" not in ds:
            raise MediaError(
                f"{self.path}: DICOM file without pixel data (a report or structured document, not a cine loop)"
            )
        rows, cols = _positive(ds.get("Rows")), _positive(ds.get("Columns"))
        if rows is None or cols is None:
            raise MediaError(f"{self.path}: DICOM file without Rows / Columns")
        frames = int(_positive(ds.get("NumberOfFrames")) or 1)
        self.info = VideoInfo(self.path, frames, dicom_fps(ds), int(cols), int(rows))

    def _decode(self, index: int) -> np.ndarray:
        from pydicom.pixels import pixel_array  # one frame; YBR_FULL / YBR_FULL_422 converted to RGB

        return pixel_array(self.ds, index=index)

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as uint8 H×W (grey) or H×W×3 (BGR)."""
        n = self.info.frame_count
        if not 0 <= index < n:
            raise MediaError(f"{self.path}: frame {index}: out of range (video has {n} frames)")
        try:
            arr = np.asarray(self._decode(index))
            pi = str(self.ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
            if pi == "PALETTE COLOR":
                from pydicom.pixels import apply_color_lut

                arr = apply_color_lut(arr, self.ds)
        except MediaError:
            raise
        except Exception as exc:  # truncated pixel data, a transfer syntax without a decoder, ...
            syntax = getattr(getattr(self.ds, "file_meta", None), "TransferSyntaxUID", None)
            hint = (
                f"its transfer syntax {syntax.name} is compressed: install a pydicom decoder plugin for it "
                "(pylibjpeg, pillow or gdcm)"
                if syntax is not None and syntax.is_compressed
                else "truncated or corrupt DICOM file"
            )
            raise MediaError(
                f"{self.path}: frame {index}: DICOM pixel data cannot be decoded ({exc}); {hint}"
            ) from None
        arr = self._to_uint8(arr, pi)
        if arr.ndim == 3 and arr.shape[2] == 3:
            return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2:
            raise MediaError(f"{self.path}: frame {index}: unsupported DICOM pixel layout {arr.shape}")
        return arr

    def _to_uint8(self, arr: np.ndarray, pi: str) -> np.ndarray:
        if arr.dtype != np.uint8:
            if arr.dtype.kind == "f":
                lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
                arr = (np.nan_to_num(arr) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
            else:
                bits = int(_positive(self.ds.get("BitsStored")) or arr.dtype.itemsize * 8)
                if pi == "PALETTE COLOR":  # LUT entries are 8 or 16 bits
                    bits = 16 if arr.max(initial=0) > 255 else 8
                wide = arr.astype(np.float64)
                if arr.dtype.kind == "i":
                    wide += 2.0 ** (bits - 1)
                arr = wide * (255.0 / (2.0**bits - 1))
            arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        if pi == "MONOCHROME1":  # 0 = white
            arr = 255 - arr
        return arr


def _to_channels(img: np.ndarray, channels: int, rgb_order: bool) -> np.ndarray:
    """Convert a grey / BGR / BGRA (or RGB / RGBA with ``rgb_order``) uint8 image to 1 or 3 channels."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img[:, :, None] if channels == 1 else cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    n = img.shape[2]
    if n == 3:
        code = {
            1: cv2.COLOR_RGB2GRAY if rgb_order else cv2.COLOR_BGR2GRAY,
            3: None if rgb_order else cv2.COLOR_BGR2RGB,
        }
    elif n == 4:
        code = {
            1: cv2.COLOR_RGBA2GRAY if rgb_order else cv2.COLOR_BGRA2GRAY,
            3: cv2.COLOR_RGBA2RGB if rgb_order else cv2.COLOR_BGRA2RGB,
        }
    else:
        raise ValueError(f"unsupported channel count {n}")
    out = img if code[channels] is None else cv2.cvtColor(img, code[channels])
    return out[:, :, None] if out.ndim == 2 else out


def _resize(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize an H×W×C image to ``size`` = (height, width) with INTER_AREA; keeps the channel axis."""
    if size is None or (img.shape[0], img.shape[1]) == tuple(size):
        return img
    out = cv2.resize(img, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)
    return out[:, :, None] if out.ndim == 2 else out


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")


class VideoReader:
    """Exact-index frame reader over one video file.

    ``VideoReader(path)`` opens nothing; the cv2 capture is opened on first use, once per process
    (the pid is stored and a capture inherited by a forked DataLoader worker is replaced), so readers
    can be made in the main process and pickled or forked into workers. Use as a context manager or
    call :meth:`close`.

    Reads continue from where the previous read stopped when the next requested frame is ahead by
    at most ``max_forward_gap`` frames; otherwise one seek (``CAP_PROP_POS_FRAMES``) is made.
    """

    def __init__(self, path: str | os.PathLike, info: VideoInfo | None = None, max_forward_gap: int = 64):
        self.path = Path(path)
        self.max_forward_gap = int(max_forward_gap)
        self._info = info
        self._cap: cv2.VideoCapture | None = None
        self._pid: int | None = None
        self._pos: int | None = None  # index of the frame the next grab() returns
        self._dicom: DicomVideo | None = None  # a DICOM cine loop is read with pydicom, not OpenCV

    # -- lifecycle
    def _dicom_video(self) -> DicomVideo | None:
        """The pydicom reader when the file is DICOM (opened once), else None."""
        if self._dicom is None and is_dicom(self.path):
            self._dicom = DicomVideo(self.path)
            if self._info is None:
                self._info = self._dicom.info
        return self._dicom

    def _capture(self) -> cv2.VideoCapture:
        pid = os.getpid()
        if self._cap is not None and self._pid != pid:
            _INHERITED_CAPTURES.append(self._cap)
            self._cap = None
        if self._cap is None:
            self._cap = _open_capture(self.path)
            self._pid = pid
            self._pos = None
            if self._info is None:
                self._info = _info_from_capture(self.path, self._cap)
        return self._cap

    def close(self) -> None:
        self._dicom = None
        if self._cap is not None and self._pid == os.getpid():
            self._cap.release()
        elif self._cap is not None:
            _INHERITED_CAPTURES.append(self._cap)
        self._cap, self._pid, self._pos = None, None, None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_cap=None, _pid=None, _pos=None, _dicom=None)
        return state

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r})"

    @property
    def info(self) -> VideoInfo:
        if self._info is None and self._dicom_video() is None:
            self._capture()
        assert self._info is not None
        return self._info

    # -- reading
    def _fail(self, index: int, what: str) -> MediaError:
        self.close()  # a failed read can leave the capture in a bad state
        return MediaError(f"{self.path}: frame {index}: {what}")

    def read(
        self, indices: Sequence[int], size: tuple[int, int] | None = None, channels: int = 1
    ) -> np.ndarray:
        """Frames ``indices`` (any order, repeats allowed) as uint8 N×H×W×channels.

        ``channels`` 1 = grey, 3 = RGB; ``size`` = (height, width) resizes with INTER_AREA.
        """
        _check_channels(channels)
        idx = [int(i) for i in indices]
        n_frames = self.info.frame_count
        for i in idx:
            if not 0 <= i < n_frames:
                raise MediaError(f"{self.path}: frame {i}: out of range (video has {n_frames} frames)")
        if not idx:
            h, w = size if size is not None else (self.info.height, self.info.width)
            return np.empty((0, h, w, channels), np.uint8)
        decoded: dict[int, np.ndarray] = {}
        for target in sorted(set(idx)):
            decoded[target] = _resize(_to_channels(self._decode(target), channels, rgb_order=False), size)
        first = decoded[idx[0]]
        out = np.empty((len(idx), *first.shape), np.uint8)
        for k, i in enumerate(idx):
            out[k] = decoded[i]
        return out

    def _decode(self, target: int) -> np.ndarray:
        dicom = self._dicom_video()
        if dicom is not None:
            return dicom.frame(target)
        cap = self._capture()
        if self._pos is None or target < self._pos or target - self._pos > self.max_forward_gap:
            if not cap.set(cv2.CAP_PROP_POS_FRAMES, target):
                raise self._fail(target, "seek failed")
            self._pos = target
        while self._pos < target:
            if not cap.grab():
                raise self._fail(self._pos, "cannot be decoded (truncated or corrupt video?)")
            self._pos += 1
        ok = cap.grab()
        frame = cap.retrieve()[1] if ok else None
        if frame is None:
            raise self._fail(target, "cannot be decoded (truncated or corrupt video?)")
        self._pos = target + 1
        if frame.dtype != np.uint8:
            raise self._fail(target, f"unsupported pixel type {frame.dtype}")
        return frame


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: single-threaded OpenCV, numpy/random seeded from torch's worker seed."""
    cv2.setNumThreads(0)
    info = torch.utils.data.get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ------------------------------------------------------------------------------------------------ gaze


@dataclass
class GazeTrack:
    """Eye-tracker samples sorted by time: ``time_s`` (N,) float64 seconds since the first video frame,
    ``xy`` (N, 2) float64 normalised frame coordinates; a NaN row is "no fixation"."""

    time_s: np.ndarray
    xy: np.ndarray


_GAZE_COLUMNS = ("time_s", "x", "y")


def load_gaze(path: str | os.PathLike, quote: bool = True) -> GazeTrack:
    """Read a gaze CSV (columns ``time_s, x, y``; others ignored; empty/NaN x or y = no fixation).

    Line numbers in errors count the header as line 1; blank lines are skipped. Samples are returned
    sorted by time (validation reports files whose time_s decreases). ``quote=False`` keeps the file's
    contents (header names, cells) out of error messages: the validator passes it for files outside the
    dataset folder, which may be anything (``../../etc/passwd``).
    """
    path = Path(path)

    def shown(text: str) -> str:
        return text if quote else "<not shown: file outside the dataset>"

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise MediaError(f"{path}: empty gaze file (expected columns {', '.join(_GAZE_COLUMNS)})")
            names = [h.strip() for h in header]
            missing = [c for c in _GAZE_COLUMNS if c not in names]
            if missing:
                raise MediaError(
                    f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                    + ", ".join(repr(m) for m in missing)
                    + f" (found {shown(', '.join(names))})"
                )
            cols = [names.index(c) for c in _GAZE_COLUMNS]
            rows: list[tuple[int, str, str, str]] = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                time_s, x, y = (row[c].strip() if c < len(row) else "" for c in cols)
                rows.append((reader.line_num, time_s, x, y))
    except FileNotFoundError:
        raise MediaError(f"{path}: gaze file not found") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise MediaError(f"{path}: not a readable CSV file ({shown(str(e))})") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise MediaError(f"{path}: cannot read gaze file ({e.strerror or type(e).__name__})") from None

    n = len(rows)
    raw = np.array([r[1:] for r in rows], dtype=object).reshape(n, 3)
    raw[raw == ""] = "nan"
    try:
        values = raw.astype(np.float64)
    except ValueError:
        values = None
    if values is None or not np.isfinite(values[:, 0]).all():
        for line, *cells in rows:  # slow path, only to name the offending line
            for name, cell in zip(_GAZE_COLUMNS, cells):
                try:
                    v = float(cell) if cell else math.nan
                except ValueError:
                    raise MediaError(f"{path}:{line}: {name}: not a number: {shown(repr(cell))}") from None
                if name == "time_s" and not math.isfinite(v):
                    raise MediaError(f"{path}:{line}: time_s: missing or not finite: {shown(repr(cell))}")
                if name != "time_s" and math.isinf(v):
                    raise MediaError(f"{path}:{line}: {name}: not finite: {shown(repr(cell))}")
    assert values is not None
    if np.isinf(values[:, 1:]).any():
        bad = int(np.flatnonzero(np.isinf(values[:, 1:]).any(axis=1))[0])
        raise MediaError(f"{path}:{rows[bad][0]}: x/y: not finite")
    time_s = values[:, 0].copy()
    xy = values[:, 1:].copy()
    xy[np.isnan(xy).any(axis=1)] = np.nan
    if n > 1 and np.any(np.diff(time_s) < 0):
        order = np.argsort(time_s, kind="stable")
        time_s, xy = time_s[order], xy[order]
    return GazeTrack(time_s=time_s, xy=xy)


def fixations_for_frames(track: GazeTrack, fps: float, frame_indices: Sequence[int]) -> list[np.ndarray]:
    """For each frame ``f``, the valid gaze points (k×2, normalised x, y) with ``f/fps <= t < (f+1)/fps``."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    time_s = np.asarray(track.time_s, np.float64)
    xy = np.asarray(track.xy, np.float64).reshape(-1, 2)
    valid = ~np.isnan(xy).any(axis=1) & ~np.isnan(time_s)
    time_s, xy = time_s[valid], xy[valid]
    if time_s.size > 1 and np.any(np.diff(time_s) < 0):
        order = np.argsort(time_s, kind="stable")
        time_s, xy = time_s[order], xy[order]
    frames = np.asarray(frame_indices, np.float64).reshape(-1)
    lo = np.searchsorted(time_s, frames / fps, side="left")
    hi = np.searchsorted(time_s, (frames + 1) / fps, side="left")
    return [xy[a:b] for a, b in zip(lo, hi)]


def gaze_maps(
    fixations: Sequence[np.ndarray], height: int, width: int, sigma_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame gaze maps: float32 T×H×W (each sums to 1) and a bool (T,) ``valid`` mask.

    A frame's map is the sum of unnormalised Gaussians of std ``sigma_px`` centred at its fixations
    (x·width, y·height in continuous pixel coordinates, pixel j's centre at j + 0.5), built as a sum of
    outer products of 1-D Gaussians, then normalised. A frame without fixation gets the uniform map
    1/(H·W) and ``valid = False``.
    """
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px}")
    T = len(fixations)
    maps = np.empty((T, height, width), np.float32)
    valid = np.zeros(T, bool)
    ys = np.arange(height, dtype=np.float64) + 0.5
    xs = np.arange(width, dtype=np.float64) + 0.5
    inv = 1.0 / (2.0 * float(sigma_px) ** 2)
    for t, pts in enumerate(fixations):
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        pts = pts[~np.isnan(pts).any(axis=1)]
        if len(pts) == 0:
            maps[t] = 1.0 / (height * width)
            continue
        cx, cy = pts[:, 0] * width, pts[:, 1] * height
        gx = np.exp(-((xs[None, :] - cx[:, None]) ** 2) * inv)  # k×W
        gy = np.exp(-((ys[None, :] - cy[:, None]) ** 2) * inv)  # k×H
        m = gy.T @ gx  # H×W = sum_k outer(gy_k, gx_k)
        total = m.sum()
        if not total > 0:  # sigma far below a pixel: the limit is mass at the fixation pixels
            m = np.zeros((height, width))
            r = np.clip(np.floor(cy).astype(int), 0, height - 1)
            c = np.clip(np.floor(cx).astype(int), 0, width - 1)
            np.add.at(m, (r, c), 1.0)
            total = m.sum()
        maps[t] = m / total
        valid[t] = True
    return maps, valid


def fixation_maps(fixations: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Per-frame binary fixation maps, bool T×H×W: True at the pixel ``(floor(y·H), floor(x·W))`` of each
    valid gaze sample of the frame (clipped to the frame; NaN rows skipped); all False without fixation.

    The ground truth of NSS (MIT saliency benchmark: the real fixation points, not the peaks of a blurred
    map); the same rasterisation as ``lightning_modules.common.saliency.fixation_map_from_points``.
    """
    maps = np.zeros((len(fixations), height, width), bool)
    for t, pts in enumerate(fixations):
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        pts = pts[~np.isnan(pts).any(axis=1)]
        if len(pts):
            cols = np.clip(np.floor(pts[:, 0] * width).astype(np.int64), 0, width - 1)
            rows = np.clip(np.floor(pts[:, 1] * height).astype(np.int64), 0, height - 1)
            maps[t, rows, cols] = True
    return maps


# ----------------------------------------------------------------------------------------------- audio


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(sample_rate, frames, channels)`` of an audio file, from its header."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio file not found")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise MediaError(f"{path}: cannot decode audio ({e})") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def load_audio(
    path: str | os.PathLike, sample_rate: int, start_s: float = 0.0, duration_s: float | None = None
) -> torch.Tensor:
    """Mono float32 audio of the window ``[start_s, start_s + duration_s)`` at ``sample_rate``.

    Only the window (plus the few samples of context the resampling filter needs) is read, seeking
    in the file's own rate; channels are averaged; the window is resampled with
    ``torchaudio.functional.resample``, so it equals the same stretch of the whole file resampled.
    Parts of the window before 0 or past the end of the file are zeros, and with ``duration_s`` the
    result has exactly ``round(duration_s * sample_rate)`` samples. ``duration_s=None`` reads to the
    end of the file.
    """
    path = Path(path)
    sr_in, n_file, _ = audio_info(path)
    if n_file <= 0:
        raise MediaError(f"{path}: empty audio (0 samples)")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    sample_rate = int(sample_rate)
    start = round(start_s * sr_in)
    if duration_s is None:
        stop = max(n_file, start)
    else:
        if duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
        stop = start + math.ceil(duration_s * sr_in)
    g = math.gcd(sr_in, sample_rate)
    orig, new = sr_in // g, sample_rate // g
    if orig != new:
        # torchaudio's filter reaches ceil(6 * orig / (0.99 * min(orig, new))) input samples either side;
        # whole periods of context (`orig` in <-> `new` out) keep the output grid aligned
        reach = math.ceil(6 * orig / (0.99 * min(orig, new))) + 1
        periods = math.ceil(reach / orig)
        ctx_in, ctx_out = periods * orig, periods * new
    else:
        ctx_in = ctx_out = 0
    lo, hi = start - ctx_in, stop + ctx_in
    buf = np.zeros(hi - lo, np.float32)
    a, b = max(lo, 0), min(hi, n_file)
    if b > a:
        try:
            with sf.SoundFile(str(path)) as fh:
                fh.seek(a)
                data = fh.read(b - a, dtype="float32", always_2d=True)
        except Exception as e:
            raise MediaError(f"{path}: cannot decode audio ({e})") from None
        if len(data) < b - a:
            raise MediaError(
                f"{path}: truncated audio: header reports {n_file} samples but decoding stops at "
                f"sample {a + len(data)}"
            )
        buf[a - lo : b - lo] = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wav = torch.from_numpy(buf)
    if orig != new:
        wav = torchaudio.functional.resample(wav, orig_freq=sr_in, new_freq=sample_rate)
    n_out = math.ceil((stop - start) * new / orig) if duration_s is None else round(duration_s * sample_rate)
    wav = wav[ctx_out : ctx_out + n_out]
    if wav.numel() < n_out:
        wav = torch.nn.functional.pad(wav, (0, n_out - wav.numel()))
    return wav.contiguous().to(torch.float32)


class LogMel(torch.nn.Module):
    """CNN14's log-mel front end: |STFT|² (hann, centre, reflect pad) → Slaney mel (Slaney norm) →
    10·log10(max(x, amin)), no top_db. ``forward((..., samples)) -> (..., 1, n_mels, frames)`` float32.

    Always computed in float32 (autocast is disabled inside)."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 50.0,
        f_max: float = 8000.0,
        amin: float = 1e-10,
    ):
        super().__init__()
        self.amin = float(amin)
        self.n_mels = int(n_mels)
        self.hop_length = int(hop_length)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=n_fft,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            window_fn=torch.hann_window,
            power=2.0,
            center=True,
            pad_mode="reflect",
            norm="slaney",
            mel_scale="slaney",
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            mel = self.mel(waveform.float())
            return (10.0 * torch.log10(mel.clamp(min=self.amin))).unsqueeze(-3)


# ----------------------------------------------------------------------------------------------- image


def read_image(path: str | os.PathLike, channels: int = 1, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a still image as uint8 H×W×channels (1 = grey, 3 = RGB), resized to ``size`` = (height, width).

    Grey, grey+alpha, BGR and BGRA input are accepted (alpha is dropped); 16-bit input is scaled to
    8 bits (÷257); float input is taken as [0, 1] when its maximum is ≤ 1, else as [0, 255].
    """
    _check_channels(channels)
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: image file not found")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MediaError(f"{path}: cannot decode image (not a format OpenCV reads)")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        scale = 255.0 if np.nanmax(img) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise MediaError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 2:  # grey + alpha
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise MediaError(f"{path}: unsupported channel count {img.shape[2]}")
    return _resize(_to_channels(img, channels, rgb_order=False), size)
