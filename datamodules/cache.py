"""A cache of decoded, resized frames (and optionally Farneback flow and its colour image), read back by
memory map.

Decoding and optical flow are computed once (``ClipCache.build``, from ``prepare_data``) and stored
under ``cache_root/<key[:16]>``, where the key hashes the dataset fingerprint, the preprocessing
parameters and the item list. Layout of a complete cache directory::

    frames.npy   (total_frames, H, W, C) uint8, items back to back
    flow.npy     (total_frames, 2, H, W) float16 (dx, dy), only with CacheParams.flow
    flow_color.npy (total_frames, 3, H, W) uint8, the colour image of flow.npy (``flow_color_image``),
                 only with CacheParams.flow_color
    index.json   {item_id: [offset, length]} into the first axis
    params.json  human-readable parameters, key, fingerprint, sizes
    COMPLETE     written last; holds the full key

Builds are atomic: everything is written into ``cache_root/<key[:16]>.tmp-<pid>-<host>-<random>`` and
``os.replace``d to the final name at the end, so a killed build never leaves a directory that
``is_complete`` trusts; stale temporary directories of dead processes are removed by the next build.

Builds also commit finished work in pieces: each item's frames (and flow) are flushed to disk before its
id is appended to ``done.txt`` in the temporary directory. A build of the same key that finds the
temporary directory of a dead (killed) or failed build takes it over (one atomic rename, so two resumers
never share one) and computes only the items not listed there; an item written halfway is never listed,
so it is computed again.
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
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from datamodules.errors import DataError
from datamodules.flow import FlowParams, farneback_flow, flow_color_image
from datamodules.readers import VideoReader

__all__ = ["CacheError", "CacheParams", "CacheView", "ClipCache", "ClipSpec", "dataset_fingerprint"]

CACHE_VERSION = 1  # bump when the layout or the computation changes: old caches then miss
_TMP_RE = re.compile(r"\.tmp-(\d+)-([A-Za-z0-9]*)-([0-9a-f]+)$")
_STALE_FOREIGN_S = 24 * 3600  # temp dirs of other hosts are removed only when this old
_JOURNAL = "done.txt"  # ids of the items whose data is on disk, one per line, appended after a flush
_PROGRESS = "progress.json"  # {"key": ...}: which cache a temporary directory is building
_ABANDONED = "ABANDONED"  # written when a build fails in a live process: its directory may be taken over


class CacheError(DataError, RuntimeError):
    """The cache is missing, incomplete, inconsistent or cannot be written (a :class:`DataError`; also a
    ``RuntimeError`` as before)."""


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
    Farneback flow over each item's own frame sequence in cached order (flow[0] = 0), computed on grey;
    with ``flow_color`` (needs ``flow``) also the colour image of that flow (computed once here instead
    of at every training step: VideoQualityGAN's ``flow_encoding: color``)."""

    size: tuple[int, int]
    channels: int = 1
    flow: FlowParams | None = None
    flow_color: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if min(self.size) <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.flow_color and self.flow is None:
            raise ValueError("flow_color needs flow parameters (the colour image is drawn from the flow)")

    def as_dict(self) -> dict:
        """The parameters in the cache key. ``flow_color`` appears only when on, so caches without it keep
        their key (and are not rebuilt) while a colour cache never matches one built without it."""
        out = {
            "size": list(self.size),
            "channels": self.channels,
            "flow": None if self.flow is None else self.flow.as_dict(),
        }
        if self.flow_color:
            out["flow_color"] = True
        return out


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


_WORKER_MAPS: dict[str, np.memmap] = {}


def _color_path(flow_path: Path) -> Path:
    """``flow_color.npy`` next to ``flow.npy``."""
    return flow_path.with_name("flow_color.npy")


def _open_rw(path: Path) -> np.memmap:
    key = str(path)
    if key not in _WORKER_MAPS:
        _WORKER_MAPS[key] = np.load(path, mmap_mode="r+")
    return _WORKER_MAPS[key]


def _run_task(
    task: tuple[Path, Path, Path | None, CacheParams, list[tuple[ClipSpec, int]]],
    on_item: Callable[[str], None] | None = None,
) -> list[str]:
    """Compute one group of items of one video and write them into the memmaps; returns their ids once
    their data is flushed to disk. ``on_item(item_id)`` is called after each item's data is flushed (the
    serial build commits each item). The colour flow image (``params.flow_color``) is drawn from the
    float16 flow as stored, so it equals the colour image of the flow a DataLoader reads back."""
    video, frames_path, flow_path, params, items = task
    frames_mm = _open_rw(frames_path)
    flow_mm = _open_rw(flow_path) if flow_path is not None else None
    color_mm = _open_rw(_color_path(flow_path)) if flow_path is not None and params.flow_color else None

    def flush() -> None:
        for mm in (frames_mm, flow_mm, color_mm):
            if mm is not None:
                mm.flush()

    with VideoReader(video) as reader:
        for spec, offset in items:
            # looked up at call time so tests can patch it
            frames, flow = globals()["_compute_item"](reader, spec, params)
            n = len(spec.frame_indices)
            frames_mm[offset : offset + n] = frames
            if flow_mm is not None:
                flow_mm[offset : offset + n] = flow
            if color_mm is not None:
                color_mm[offset : offset + n] = flow_color_image(flow)
            if on_item is not None:
                flush()
                on_item(spec.item_id)
    flush()
    return [spec.item_id for spec, _ in items]


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


def _is_stale(d: Path, host: str) -> bool:
    """No process works in this build directory any more: its build failed (``ABANDONED``), its process
    on this host is dead, or (another host: its pid cannot be checked) it is older than a day."""
    m = _TMP_RE.search(d.name)
    if m is None or not d.is_dir():
        return False
    if (d / _ABANDONED).exists():
        return True
    pid, tag = int(m.group(1)), m.group(2)
    if tag == host:
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - d.stat().st_mtime > _STALE_FOREIGN_S
    except FileNotFoundError:
        return False


def remove_stale_tmp(cache_root: str | os.PathLike) -> list[Path]:
    """Remove ``*.tmp-<pid>-<host>-*`` build directories no process works in; returns those removed.

    A directory of this host is stale when its pid no longer exists or its build failed; one of another
    host (a shared file system) only when it is older than a day, since its pid cannot be checked from here.
    """
    root = Path(cache_root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    host = _host_tag()
    for d in root.iterdir():
        if _is_stale(d, host):
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
        tmp = self.cache_root / f"{self.key[:16]}.tmp-{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}"
        try:
            self.cache_root.mkdir(parents=True, exist_ok=True)
            resumed = self._take_over(tmp)
            remove_stale_tmp(self.cache_root)
            if not resumed:
                tmp.mkdir()
                (tmp / _PROGRESS).write_text(json.dumps({"key": self.key}))
            self._build_into(tmp, num_workers, progress, start_method)
            self._publish(tmp)
        except OSError as exc:
            self._abandon(tmp)
            raise self._write_error(exc) from exc
        except BaseException:
            self._abandon(tmp)  # Ctrl-C, an unreadable video: the finished items are kept for the next build
            raise
        return self.path

    def _write_error(self, exc: OSError) -> CacheError:
        """A write failure as a message that says which folder and what to do."""
        import errno

        if exc.errno == errno.ENOSPC:
            what = "the disk is full: free space there, or set SONOLAB_CACHE to a folder on a larger disk"
        else:
            what = (
                "set SONOLAB_CACHE (or data.init_args.cache_dir) to a folder you can write, "
                "or make this one writable"
            )
        return CacheError(
            f"cannot write the clip cache in {self.cache_root} ({exc.strerror or type(exc).__name__}"
            f"{': ' + str(exc.filename) if exc.filename else ''}): {what}"
        )

    def _abandon(self, tmp: Path) -> None:
        """Mark a failed build's directory so the next build takes it over (or removes it if it has
        nothing finished); never raises."""
        try:
            if tmp.is_dir():
                if (tmp / _JOURNAL).is_file():
                    (tmp / _ABANDONED).write_text(f"{os.getpid()}\n")
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass

    def _take_over(self, tmp: Path) -> bool:
        """Rename the stale build directory of this key with the most finished items to ``tmp``; True
        when one was taken (a racing build renames it first: then this one starts afresh)."""
        host = _host_tag()
        found: list[tuple[int, Path]] = []
        for d in self.cache_root.glob(f"{self.key[:16]}.tmp-*"):
            try:
                if not _is_stale(d, host) or json.loads((d / _PROGRESS).read_text()).get("key") != self.key:
                    continue
                found.append((len(_read_journal(d)), d))
            except (OSError, ValueError):
                continue
        for _, d in sorted(found, key=lambda x: x[0], reverse=True):
            try:
                os.replace(d, tmp)
            except OSError:
                continue
            (tmp / _ABANDONED).unlink(missing_ok=True)
            return True
        return False

    def _layout(self) -> tuple[dict[str, list[int]], int]:
        index, offset = {}, 0
        for s in self.specs:
            index[s.item_id] = [offset, len(s.frame_indices)]
            offset += len(s.frame_indices)
        return index, offset

    def _tasks(
        self,
        frames_path: Path,
        flow_path: Path | None,
        index: dict,
        chunk: int,
        done: AbstractSet[str] = frozenset(),
    ) -> list:
        by_video: dict[Path, list[tuple[ClipSpec, int]]] = defaultdict(list)
        for s in self.specs:
            if s.item_id not in done:
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
        shapes: list[tuple[Path, type[np.generic], tuple[int, ...]]] = [
            (frames_path, np.uint8, (total, H, W, C))
        ]
        if flow_path is not None:
            shapes.append((flow_path, np.float16, (total, 2, H, W)))
            if self.params.flow_color:
                shapes.append((_color_path(flow_path), np.uint8, (total, 3, H, W)))
        done = _read_journal(tmp) if all(_npy_shape(p) == shape for p, _, shape in shapes) else set()
        if not done:
            for path, dtype, shape in shapes:
                mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
                del mm
            (tmp / _JOURNAL).write_text("")
        done &= set(index)
        chunk = 8 if num_workers > 0 else 1 << 30
        tasks = self._tasks(frames_path, flow_path, index, chunk, done)
        bar = tqdm(
            total=len(self.specs), initial=len(done), desc="caching clips", unit="clip", disable=not progress
        )
        with open(tmp / _JOURNAL, "a") as journal:

            def commit(ids: list[str]) -> None:
                """The items' data is flushed: record them, durably, as finished."""
                journal.write("".join(f"{i}\n" for i in ids))
                journal.flush()
                os.fsync(journal.fileno())
                bar.update(len(ids))

            try:
                if num_workers > 0 and len(tasks) > 1:
                    ctx = mp.get_context(start_method)
                    with ctx.Pool(min(num_workers, len(tasks)), initializer=_worker_setup) as pool:
                        for ids in pool.imap_unordered(_run_task, tasks):
                            commit(ids)
                else:
                    for task in tasks:
                        _run_task(task, on_item=lambda item_id: commit([item_id]))
            finally:
                bar.close()
            for path, _, _ in shapes:
                _WORKER_MAPS.pop(str(path), None)
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
            "flow_color": None
            if flow_path is None or not self.params.flow_color
            else {
                "file": "flow_color.npy",
                "shape": [total, 3, H, W],
                "dtype": "uint8",
                "channels": ["R", "G", "B"],
            },
            "videos": sorted({str(s.video) for s in self.specs}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "params.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        (tmp / _JOURNAL).unlink()
        (tmp / _PROGRESS).unlink(missing_ok=True)
        (tmp / "COMPLETE").write_text(self.key + "\n")

    def _publish(self, tmp: Path) -> None:
        for _ in range(3):
            try:
                os.replace(tmp, self.path)
                return
            except OSError:
                if self.is_complete():  # another process won the race: keep theirs, drop ours
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                if self.path.exists():  # an incomplete final dir can only come from outside meddling
                    shutil.rmtree(self.path, ignore_errors=True)
        os.replace(tmp, self.path)


def _read_journal(d: Path) -> set[str]:
    """Ids of the finished items of a build directory; a last line cut by a kill is not counted."""
    try:
        text = (d / _JOURNAL).read_text()
    except (OSError, UnicodeDecodeError):
        return set()
    lines = text.split("\n")
    return {line for line in lines[:-1] if line}  # the part after the last newline is unfinished


def _npy_shape(path: Path) -> tuple[int, ...] | None:
    """Shape in a .npy header, or None when the file is missing or unreadable."""
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


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
        self._has_flow_color = (self.path / "flow_color.npy").is_file()
        self._frames: np.ndarray | None = None
        self._flow: np.ndarray | None = None
        self._flow_color: np.ndarray | None = None
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
        state.update(_frames=None, _flow=None, _flow_color=None, _pid=None)
        return state

    def _maps(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._frames is None or self._pid != os.getpid():
            self._frames = np.load(self.path / "frames.npy", mmap_mode="r")
            self._flow = np.load(self.path / "flow.npy", mmap_mode="r") if self._has_flow else None
            self._flow_color = (
                np.load(self.path / "flow_color.npy", mmap_mode="r") if self._has_flow_color else None
            )
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

    def flow_color(self, item_id: str) -> np.ndarray | None:
        """length×3×H×W uint8 colour image of the flow (read-only memmap slice), or None when the cache
        has none (built without ``CacheParams.flow_color``)."""
        off, n = self._span(item_id)
        self._maps()
        return None if self._flow_color is None else self._flow_color[off : off + n]
