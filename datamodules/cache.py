"""A cache of decoded, resized frames (and optionally Farneback flow), read back by memory map.

Decoding and optical flow are computed once (``ClipCache.build``, from ``prepare_data``) and stored
under ``cache_root/<key[:16]>``, where the key hashes the dataset fingerprint, the preprocessing
parameters and the item list. Layout of a complete cache directory::

    frames.npy   (total_frames, H, W, C) uint8, items back to back
    flow.npy     (total_frames, 2, H, W) float16 (dx, dy), only with CacheParams.flow
    index.json   {item_id: [offset, length]} into the first axis
    params.json  human-readable parameters, key, fingerprint, sizes
    COMPLETE     written last; holds the full key

Builds are atomic: everything is written into ``cache_root/<key[:16]>.tmp-<pid>-<host>-<random>`` and
``os.replace``d to the final name at the end, so a killed build never leaves a directory that
``is_complete`` trusts; stale temporary directories of dead processes are removed by the next build.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from datamodules.flow import FlowParams, farneback_flow
from datamodules.readers import VideoReader

__all__ = ["CacheError", "CacheParams", "CacheView", "ClipCache", "ClipSpec", "dataset_fingerprint"]

CACHE_VERSION = 1  # bump when the layout or the computation changes: old caches then miss
_TMP_RE = re.compile(r"\.tmp-(\d+)-([A-Za-z0-9]*)-([0-9a-f]+)$")
_STALE_FOREIGN_S = 24 * 3600  # temp dirs of other hosts are removed only when this old


class CacheError(RuntimeError):
    """The cache is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class ClipSpec:
    """One cached item: the frames ``frame_indices`` (in this order) of ``video``."""

    item_id: str
    video: Path
    frame_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "item_id", str(self.item_id))
        object.__setattr__(self, "video", Path(self.video))
        object.__setattr__(self, "frame_indices", tuple(int(i) for i in self.frame_indices))
        if not self.frame_indices:
            raise ValueError(f"ClipSpec {self.item_id!r}: no frame indices")


@dataclass(frozen=True)
class CacheParams:
    """Frames resized to ``size`` = (height, width) with ``channels`` 1 (grey) or 3 (RGB); with ``flow``,
    Farneback flow over each item's own frame sequence in cached order (flow[0] = 0), computed on grey."""

    size: tuple[int, int]
    channels: int = 1
    flow: FlowParams | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if min(self.size) <= 0:
            raise ValueError(f"size must be positive, got {self.size}")

    def as_dict(self) -> dict:
        return {
            "size": list(self.size),
            "channels": self.channels,
            "flow": None if self.flow is None else self.flow.as_dict(),
        }


def dataset_fingerprint(root: str | os.PathLike, files: Iterable[str | os.PathLike]) -> str:
    """sha256 over each file's path relative to ``root`` (absolute if outside it), size and mtime_ns.

    Cheap: only ``stat`` is called, no media bytes are read. Order and duplicates of ``files`` do not
    matter. A missing file raises ``FileNotFoundError`` naming it.
    """
    root = Path(root).resolve()
    entries = set()
    for f in files:
        p = Path(f)
        p = (root / p) if not p.is_absolute() else p
        p = p.resolve()
        try:
            st = p.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: file not found (dataset fingerprint)") from None
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = p.as_posix()
        entries.add((rel, st.st_size, st.st_mtime_ns))
    h = hashlib.sha256()
    for rel, size, mtime in sorted(entries):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- building


def _compute_item(
    reader: VideoReader, spec: ClipSpec, params: CacheParams
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames (T×H×W×C uint8) and flow (T×2×H×W float16 or None) of one item."""
    frames = reader.read(spec.frame_indices, size=params.size, channels=params.channels)
    if params.flow is None:
        return frames, None
    grey = (
        frames[..., 0]
        if params.channels == 1
        else np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    )
    flow = farneback_flow(grey, params.flow)  # 2×T×H×W float32
    return frames, np.ascontiguousarray(flow.transpose(1, 0, 2, 3)).astype(np.float16)


_WORKER_MAPS: dict[str, np.ndarray] = {}


def _open_rw(path: Path) -> np.ndarray:
    key = str(path)
    if key not in _WORKER_MAPS:
        _WORKER_MAPS[key] = np.load(path, mmap_mode="r+")
    return _WORKER_MAPS[key]


def _run_task(
    task: tuple[Path, Path, Path | None, CacheParams, list[tuple[ClipSpec, int]]], on_item=None
) -> int:
    """Compute one group of items of one video and write them into the memmaps; returns the item count.
    ``on_item()`` is called after each item (progress in the serial build)."""
    video, frames_path, flow_path, params, items = task
    frames_mm = _open_rw(frames_path)
    flow_mm = _open_rw(flow_path) if flow_path is not None else None
    with VideoReader(video) as reader:
        for spec, offset in items:
            # looked up at call time so tests can patch it
            frames, flow = globals()["_compute_item"](reader, spec, params)
            n = len(spec.frame_indices)
            frames_mm[offset : offset + n] = frames
            if flow_mm is not None:
                flow_mm[offset : offset + n] = flow
            if on_item is not None:
                on_item()
    frames_mm.flush()
    if flow_mm is not None:
        flow_mm.flush()
    return len(items)


def _worker_setup() -> None:
    cv2.setNumThreads(1)
    _WORKER_MAPS.clear()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def remove_stale_tmp(cache_root: str | os.PathLike) -> list[Path]:
    """Remove ``*.tmp-<pid>-<host>-*`` build directories whose process is dead; returns those removed.

    A directory of this host is stale when its pid no longer exists; one of another host (a shared
    file system) only when it is older than a day, since its pid cannot be checked from here.
    """
    root = Path(cache_root)
    removed = []
    if not root.is_dir():
        return removed
    host = _host_tag()
    for d in root.iterdir():
        m = _TMP_RE.search(d.name)
        if m is None or not d.is_dir():
            continue
        pid, tag = int(m.group(1)), m.group(2)
        if tag == host:
            stale = pid != os.getpid() and not _pid_alive(pid)
        else:
            try:
                stale = time.time() - d.stat().st_mtime > _STALE_FOREIGN_S
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class ClipCache:
    """Decoded, resized frames (+ optional flow) of a list of items, keyed by dataset and parameters.

    ``ClipCache(cache_root, fingerprint, params, specs)``; ``build()`` once (idempotent, safe to race
    with other processes), then ``open()`` for a :class:`CacheView`.
    """

    def __init__(
        self,
        cache_root: str | os.PathLike,
        fingerprint: str,
        params: CacheParams,
        specs: Sequence[ClipSpec],
    ):
        self.cache_root = Path(cache_root)
        self.fingerprint = str(fingerprint)
        self.params = params
        self.specs = list(specs)
        seen: set[str] = set()
        for s in self.specs:
            if s.item_id in seen:
                raise ValueError(f"duplicate item id {s.item_id!r} in ClipCache specs")
            seen.add(s.item_id)
        payload = {
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "params": params.as_dict(),
            "items": [[s.item_id, str(s.video), list(s.frame_indices)] for s in self.specs],
        }
        self.key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        self.path = self.cache_root / self.key[:16]

    def __repr__(self) -> str:
        return f"ClipCache({str(self.path)!r}, items={len(self.specs)}, complete={self.is_complete()})"

    def is_complete(self) -> bool:
        marker = self.path / "COMPLETE"
        try:
            return marker.read_text().strip() == self.key
        except OSError:
            return False

    def open(self) -> CacheView:
        if not self.is_complete():
            raise CacheError(
                f"clip cache {self.path} is not built (or its build was interrupted); "
                "call ClipCache.build() (DataModule.prepare_data) first"
            )
        return CacheView(self.path)

    def build(self, num_workers: int = 0, progress: bool = True, start_method: str = "spawn") -> Path:
        """Compute every item into the cache unless it is already complete; returns :attr:`path`.

        ``num_workers > 0`` computes groups of items in a ``multiprocessing`` pool (``start_method``,
        spawn by default: safe after torch/OpenCV have started threads) whose workers write straight
        into the memory maps the main process preallocated.
        """
        if self.is_complete():
            return self.path
        self.cache_root.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(self.cache_root)
        tmp = self.cache_root / f"{self.key[:16]}.tmp-{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            self._build_into(tmp, num_workers, progress, start_method)
            self._publish(tmp)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.path

    def _layout(self) -> tuple[dict[str, list[int]], int]:
        index, offset = {}, 0
        for s in self.specs:
            index[s.item_id] = [offset, len(s.frame_indices)]
            offset += len(s.frame_indices)
        return index, offset

    def _tasks(self, frames_path: Path, flow_path: Path | None, index: dict, chunk: int) -> list:
        by_video: dict[Path, list[tuple[ClipSpec, int]]] = defaultdict(list)
        for s in self.specs:
            by_video[s.video].append((s, index[s.item_id][0]))
        tasks = []
        for video, items in by_video.items():
            items.sort(key=lambda it: min(it[0].frame_indices))  # forward reading within a video
            for i in range(0, len(items), chunk):
                tasks.append((video, frames_path, flow_path, self.params, items[i : i + chunk]))
        return tasks

    def _build_into(self, tmp: Path, num_workers: int, progress: bool, start_method: str) -> None:
        H, W = self.params.size
        C = self.params.channels
        index, total = self._layout()
        frames_path = tmp / "frames.npy"
        flow_path = tmp / "flow.npy" if self.params.flow is not None else None
        mm = np.lib.format.open_memmap(frames_path, mode="w+", dtype=np.uint8, shape=(total, H, W, C))
        del mm
        if flow_path is not None:
            mm = np.lib.format.open_memmap(flow_path, mode="w+", dtype=np.float16, shape=(total, 2, H, W))
            del mm
        chunk = 8 if num_workers > 0 else 1 << 30
        tasks = self._tasks(frames_path, flow_path, index, chunk)
        bar = tqdm(total=len(self.specs), desc="caching clips", unit="clip", disable=not progress)
        try:
            if num_workers > 0 and len(tasks) > 1:
                ctx = mp.get_context(start_method)
                with ctx.Pool(min(num_workers, len(tasks)), initializer=_worker_setup) as pool:
                    for n in pool.imap_unordered(_run_task, tasks):
                        bar.update(n)
            else:
                for task in tasks:
                    _run_task(task, on_item=lambda: bar.update(1))
        finally:
            bar.close()
            _WORKER_MAPS.pop(str(frames_path), None)
            if flow_path is not None:
                _WORKER_MAPS.pop(str(flow_path), None)
        (tmp / "index.json").write_text(json.dumps(index))
        meta = {
            "version": CACHE_VERSION,
            "key": self.key,
            "fingerprint": self.fingerprint,
            "params": self.params.as_dict(),
            "items": len(self.specs),
            "total_frames": total,
            "frames": {"file": "frames.npy", "shape": [total, H, W, C], "dtype": "uint8"},
            "flow": None
            if flow_path is None
            else {
                "file": "flow.npy",
                "shape": [total, 2, H, W],
                "dtype": "float16",
                "channels": ["dx", "dy"],
            },
            "videos": sorted({str(s.video) for s in self.specs}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "params.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        (tmp / "COMPLETE").write_text(self.key + "\n")

    def _publish(self, tmp: Path) -> None:
        for _ in range(3):
            try:
                os.replace(tmp, self.path)
                return
            except OSError:
                if self.is_complete():  # another process won the race: keep theirs
                    return
                if self.path.exists():  # an incomplete final dir can only come from outside meddling
                    shutil.rmtree(self.path, ignore_errors=True)
        os.replace(tmp, self.path)


class CacheView:
    """Read access to a complete cache directory. Memory maps are opened lazily, once per process;
    pickling drops them (safe to send to DataLoader workers). Slices returned are read-only."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            raw = json.loads((self.path / "index.json").read_text())
            self.params = json.loads((self.path / "params.json").read_text())
        except (OSError, ValueError) as e:
            raise CacheError(f"clip cache {self.path}: unreadable index ({e})") from None
        self._index = {k: (int(v[0]), int(v[1])) for k, v in raw.items()}
        self._has_flow = (self.path / "flow.npy").is_file()
        self._frames: np.ndarray | None = None
        self._flow: np.ndarray | None = None
        self._pid: int | None = None

    @property
    def ids(self) -> list[str]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def __repr__(self) -> str:
        return f"CacheView({str(self.path)!r}, items={len(self)}, flow={self._has_flow})"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_frames=None, _flow=None, _pid=None)
        return state

    def _maps(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._frames is None or self._pid != os.getpid():
            self._frames = np.load(self.path / "frames.npy", mmap_mode="r")
            self._flow = np.load(self.path / "flow.npy", mmap_mode="r") if self._has_flow else None
            self._pid = os.getpid()
        return self._frames, self._flow

    def _span(self, item_id: str) -> tuple[int, int]:
        try:
            return self._index[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in clip cache {self.path}") from None

    def frames(self, item_id: str) -> np.ndarray:
        """length×H×W×C uint8 (read-only memmap slice)."""
        off, n = self._span(item_id)
        return self._maps()[0][off : off + n]

    def flow(self, item_id: str) -> np.ndarray | None:
        """length×2×H×W float16 (dx, dy; read-only memmap slice), or None when the cache has no flow."""
        off, n = self._span(item_id)
        flow = self._maps()[1]
        return None if flow is None else flow[off : off + n]
