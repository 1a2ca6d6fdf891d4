"""Typed records for the dataset manifests (``docs/data.md``) and their row-level parsing.

The CSV manifests of a dataset folder are parsed into frozen records here. Parsing is
row by row and never stops at the first problem: every problem found in a row is handed
to a ``report`` callback (``report(file, row, column, message, severity)``) and the row is
left out of the result when it had an error. Cross-file checks (a clip's scan exists, a
scan's clips share a split, pairs name listed images) and media checks live in
:mod:`datamodules.validate`, which is the entry point the DataModules use.

Row numbers are the line numbers a user sees in an editor: the header is line 1.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from datamodules.errors import DataError

if TYPE_CHECKING:
    from datamodules.readers import VideoInfo

SPLITS = ("train", "val", "test")
ROLES = ("train", "standard")
PAIR_SPLITS = ("val", "test")

#: manifest name -> file name inside the dataset root, in the order they are checked.
MANIFEST_FILES: dict[str, str] = {
    "scans": "scans.csv",
    "clips": "clips.csv",
    "images": "images.csv",
    "pairs": "pairs.csv",
    "boxes": "boxes.csv",
}

#: columns that must be present in the header (and, for these, non-empty in every row).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "scans": ("scan_id", "video"),
    "clips": ("clip_id", "scan_id", "start_frame", "end_frame", "label", "split"),
    "images": ("image", "plane", "split", "role"),
    "pairs": ("better", "worse", "plane"),
    "boxes": ("x0", "y0", "x1", "y1"),
}

#: a box row names where its frame is: ``scan_id`` + ``frame`` (a frame of a scan's video) or ``image`` (an
#: image of images.csv); the header must hold at least one of these column sets.
BOX_SOURCES: dict[str, tuple[str, ...]] = {"scans": ("scan_id", "frame"), "images": ("image",)}

#: optional columns the parser understands (others are kept in ``ImageRecord.extra`` or ignored).
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "scans": ("gaze", "audio", "fps", "split", "subject_id"),
    "clips": ("quality",),
    "images": ("subject_id",),
    "pairs": ("split",),
    "boxes": ("scan_id", "frame", "image"),
}

#: ``report(file, row, column, message, severity)``; severity is ``"error"`` or ``"warning"``.
Reporter = Callable[[str, "int | None", "str | None", str, str], None]


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanRecord:
    scan_id: str
    video: Path
    gaze: Path | None
    audio: Path | None
    fps: float | None
    split: str | None
    row: int
    #: the patient / subject the scan is of (optional column): splits must not share a subject.
    subject_id: str | None = None


@dataclass(frozen=True)
class ClipRecord:
    clip_id: str
    scan_id: str
    start_frame: int
    end_frame: int
    label: str
    split: str
    quality: int | None
    row: int

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


@dataclass(frozen=True)
class ImageRecord:
    image_id: str  # the path string as written in images.csv
    path: Path  # resolved against the dataset root
    plane: str
    split: str
    role: str
    row: int
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    subject_id: str | None = None


@dataclass(frozen=True)
class PairRecord:
    better: str  # image_id of the better image
    worse: str  # image_id of the worse image
    plane: str
    split: str
    row: int


@dataclass(frozen=True)
class BoxRecord:
    """A box on frame ``frame`` of scan ``scan_id``, or (``scan_id`` and ``frame`` None) on ``image``, an
    image of images.csv (after validation: its ``image_id``)."""

    scan_id: str | None
    frame: int | None
    x0: float
    y0: float
    x1: float
    y1: float
    row: int
    image: str | None = None


@dataclass
class Manifests:
    """The parsed (and, after :func:`datamodules.validate.validate_dataset`, valid) rows of a dataset."""

    root: Path
    scans: dict[str, ScanRecord] = field(default_factory=dict)
    clips: dict[str, ClipRecord] = field(default_factory=dict)
    images: dict[str, ImageRecord] = field(default_factory=dict)
    pairs: list[PairRecord] = field(default_factory=list)
    boxes: list[BoxRecord] = field(default_factory=list)
    #: scan_id -> VideoInfo, filled by deep validation.
    video_info: dict[str, VideoInfo] = field(default_factory=dict)
    _probed: dict[str, VideoInfo] = field(default_factory=dict, init=False, repr=False, compare=False)

    def clips_in(
        self,
        split: str,
        labels: Iterable[str] | None = None,
        quality: int | Iterable[int | None] | None = None,
    ) -> list[ClipRecord]:
        """Clips of ``split`` (in manifest order), optionally only these labels / quality values."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (allowed: {', '.join(SPLITS)})")
        label_set = None if labels is None else set(labels)
        if quality is None:
            quality_set: set[int | None] | None = None
        elif isinstance(quality, int):
            quality_set = {quality}
        else:
            quality_set = set(quality)
        out = []
        for clip in self.clips.values():
            if clip.split != split:
                continue
            if label_set is not None and clip.label not in label_set:
                continue
            if quality_set is not None and clip.quality not in quality_set:
                continue
            out.append(clip)
        return out

    def scan_split(self, scan_id: str) -> str | None:
        """The scan's split: its ``split`` cell, else the split of its clips, else None."""
        scan = self.scans.get(scan_id)
        if scan is not None and scan.split:
            return scan.split
        for clip in self.clips.values():
            if clip.scan_id == scan_id:
                return clip.split
        return None

    def box_split(self, box: BoxRecord) -> str | None:
        """A box's split: its image's split, or its scan's (:meth:`scan_split`)."""
        if box.image is not None:
            image = self.images.get(box.image)
            return image.split if image is not None else None
        assert box.scan_id is not None
        return self.scan_split(box.scan_id)

    def fps(self, scan_id: str) -> float:
        """Frame rate of a scan: the ``fps`` column, else the one stored in the video container."""
        scan = self.scans[scan_id]
        if scan.fps is not None:
            return scan.fps
        info = self.video_info.get(scan_id)
        if info is None:
            info = self._probed.get(scan_id)
        if info is None:
            from datamodules.readers import probe_video

            info = probe_video(scan.video, check_last_frame=False)
            self._probed[scan_id] = info
        fps = float(info.fps or 0.0)
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"scan {scan_id}: {scan.video} has no frame rate; set the fps column")
        return fps

    def manifest_files(self) -> list[Path]:
        """The manifest CSVs present in the dataset root."""
        root = Path(self.root)
        return [root / name for name in MANIFEST_FILES.values() if (root / name).is_file()]

    def media_files(self) -> list[Path]:
        """Every media file referenced by the kept rows (videos, gaze, audio, images), without repeats."""
        seen: dict[Path, None] = {}
        for scan in self.scans.values():
            for p in (scan.video, scan.gaze, scan.audio):
                if p is not None:
                    seen.setdefault(p, None)
        for image in self.images.values():
            seen.setdefault(image.path, None)
        return list(seen)


# --------------------------------------------------------------------------------------------
# CSV reading
# --------------------------------------------------------------------------------------------
@dataclass
class Table:
    """A CSV file: stripped header names and ``(line, {column: stripped cell})`` rows."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]
    #: (line, number of cells) for rows with more cells than the header.
    long_rows: list[tuple[int, int]] = field(default_factory=list)


class TableError(DataError):
    """The CSV file could not be read at all (not UTF-8, no header, ...)."""


def read_table(path: Path) -> Table:
    """Read a UTF-8 CSV with a header; blank lines are skipped, cells are stripped."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            rows: list[tuple[int, dict[str, str]]] = []
            long_rows: list[tuple[int, int]] = []
            prev = 0
            for cells in reader:
                line = prev + 1
                prev = reader.line_num
                if not cells or all(not c.strip() for c in cells):
                    continue
                if header is None:
                    header = [c.strip() for c in cells]
                    continue
                if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
                    long_rows.append((line, len(cells)))
                row = {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(header)}
                rows.append((line, row))
    except UnicodeDecodeError as exc:
        raise TableError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise TableError(f"malformed CSV: {exc}") from None
    except OSError as exc:
        raise TableError(f"cannot read: {exc.strerror or exc}") from None
    if header is None:
        raise TableError("empty file (no header row)")
    return Table(path=path, columns=header, rows=rows, long_rows=long_rows)


def resolve_path(root: Path, value: str) -> Path:
    """A manifest path: relative to the dataset root, absolute paths kept (``~`` expanded; ``~name`` of an
    unknown user, or ``~`` without a home, stays as written and is reported as a missing file)."""
    try:
        p = Path(value).expanduser()
    except RuntimeError:
        p = Path(value)
    return p if p.is_absolute() else Path(root) / p


def parse_int(value: str) -> int | None:
    """An integer cell (``"12"``; ``"12.0"`` as written by pandas is accepted), else None."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        f = float(value)
    except ValueError:
        return None
    if math.isfinite(f) and f.is_integer():
        return int(f)
    return None


def parse_float(value: str) -> float | None:
    """A finite float cell, else None."""
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


# --------------------------------------------------------------------------------------------
# row parsing
# --------------------------------------------------------------------------------------------
class _RowChecker:
    """Collects the problems of one row and forwards them to the reporter."""

    def __init__(self, file: str, line: int, row: Mapping[str, str], report: Reporter):
        self.file, self.line, self.row, self._report = file, line, row, report
        self.failed = False

    def error(self, column: str | None, message: str) -> None:
        self.failed = True
        self._report(self.file, self.line, column, message, "error")

    def warning(self, column: str | None, message: str) -> None:
        self._report(self.file, self.line, column, message, "warning")

    def get(self, column: str) -> str:
        return self.row.get(column, "") or ""

    def required(self, column: str) -> str | None:
        value = self.get(column)
        if not value:
            self.error(column, "empty (required)")
            return None
        return value

    def choice(self, column: str, allowed: tuple[str, ...], what: str, required: bool = True) -> str | None:
        value = self.required(column) if required else (self.get(column) or None)
        if value is None:
            return None
        if value not in allowed:
            self.error(column, f"unknown {what} {value!r} (allowed: {', '.join(allowed)})")
            return None
        return value

    def frame(self, column: str) -> int | None:
        value = self.required(column)
        if value is None:
            return None
        n = parse_int(value)
        if n is None:
            self.error(column, f"{value!r} is not an integer frame index")
            return None
        if n < 0:
            self.error(column, f"{n} is negative")
            return None
        return n

    def unit(self, column: str) -> float | None:
        value = self.required(column)
        if value is None:
            return None
        f = parse_float(value)
        if f is None:
            self.error(column, f"{value!r} is not a number")
            return None
        if not 0.0 <= f <= 1.0:
            self.error(column, f"{value} is outside [0, 1]")
            return None
        return f


def check_header(name: str, table: Table, report: Reporter) -> bool:
    """Report missing required columns (all at once) and over-long rows; False if unusable."""
    file = MANIFEST_FILES[name]
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in table.columns]
    dupes = sorted({c for c in table.columns if c and table.columns.count(c) > 1})
    if name == "boxes" and not any(all(c in table.columns for c in cs) for cs in BOX_SOURCES.values()):
        if any(c in table.columns for c in BOX_SOURCES["scans"]):
            missing += [c for c in BOX_SOURCES["scans"] if c not in table.columns]
        else:
            missing.append("scan_id + frame (boxes on scan frames) or image (boxes on images.csv images)")
    ok = True
    if missing:
        report(
            file,
            None,
            None,
            f"missing required column{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
            f"(header has: {', '.join(c for c in table.columns if c) or 'nothing'})",
            "error",
        )
        ok = False
    if dupes:
        report(
            file,
            1,
            None,
            f"duplicate column name{'s' if len(dupes) > 1 else ''}: {', '.join(dupes)}",
            "error",
        )
        ok = False
    for line, n in table.long_rows:
        report(file, line, None, f"row has {n} cells but the header has {len(table.columns)}", "warning")
    return ok


def parse_scans(root: Path, table: Table, report: Reporter) -> dict[str, ScanRecord]:
    file = MANIFEST_FILES["scans"]
    out: dict[str, ScanRecord] = {}
    first_line: dict[str, int] = {}
    for line, row in table.rows:
        c = _RowChecker(file, line, row, report)
        scan_id = c.required("scan_id")
        if scan_id is not None and scan_id in first_line:
            c.error("scan_id", f"duplicate scan_id {scan_id!r} (first on line {first_line[scan_id]})")
        elif scan_id is not None:
            first_line[scan_id] = line
        video = c.required("video")
        gaze = c.get("gaze") or None
        audio = c.get("audio") or None
        fps: float | None = None
        if c.get("fps"):
            fps = parse_float(c.get("fps"))
            if fps is None or fps <= 0:
                c.error("fps", f"{c.get('fps')!r} is not a positive frame rate")
        split = c.choice("split", SPLITS, "split", required=False)
        if c.failed:
            continue
        assert scan_id is not None and video is not None
        out[scan_id] = ScanRecord(
            scan_id=scan_id,
            video=resolve_path(root, video),
            gaze=resolve_path(root, gaze) if gaze else None,
            audio=resolve_path(root, audio) if audio else None,
            fps=fps,
            split=split,
            row=line,
            subject_id=c.get("subject_id") or None,
        )
    return out


def parse_clips(table: Table, report: Reporter) -> dict[str, ClipRecord]:
    file = MANIFEST_FILES["clips"]
    out: dict[str, ClipRecord] = {}
    first_line: dict[str, int] = {}
    for line, row in table.rows:
        c = _RowChecker(file, line, row, report)
        clip_id = c.required("clip_id")
        if clip_id is not None and clip_id in first_line:
            c.error("clip_id", f"duplicate clip_id {clip_id!r} (first on line {first_line[clip_id]})")
        elif clip_id is not None:
            first_line[clip_id] = line
        scan_id = c.required("scan_id")
        start = c.frame("start_frame")
        end = c.frame("end_frame")
        if start is not None and end is not None and start >= end:
            c.error("end_frame", f"end_frame {end} is not after start_frame {start} (range is [start, end))")
        label = c.required("label")
        split = c.choice("split", SPLITS, "split")
        quality: int | None = None
        q = c.get("quality")
        if q and q.lower() != "nan":
            f = parse_float(q)
            if f not in (0.0, 1.0):
                c.error("quality", f"{q!r} is not 1, 0 or empty")
            else:
                quality = int(f)
        if c.failed:
            continue
        assert clip_id and scan_id and label and split and start is not None and end is not None
        out[clip_id] = ClipRecord(clip_id, scan_id, start, end, label, split, quality, line)
    return out


def parse_images(root: Path, table: Table, report: Reporter) -> dict[str, ImageRecord]:
    file = MANIFEST_FILES["images"]
    known = {"image", "plane", "split", "role", "subject_id"}
    out: dict[str, ImageRecord] = {}
    first_line: dict[Path, tuple[int, str | None]] = {}
    for line, row in table.rows:
        c = _RowChecker(file, line, row, report)
        image = c.required("image")
        path = resolve_path(root, image) if image else None
        if path is not None:
            key = Path(_normpath(path))
            if key in first_line:
                first, written = first_line[key]
                same = "" if written == image else f" as {written!r}"
                c.error("image", f"duplicate image {image!r} (first on line {first}{same})")
            else:
                first_line[key] = (line, image)
        plane = c.required("plane")
        split = c.choice("split", SPLITS, "split")
        role = c.choice("role", ROLES, "role")
        if c.failed:
            continue
        assert image and path and plane and split and role
        extra = {k: v for k, v in row.items() if k not in known and k}
        out[image] = ImageRecord(image, path, plane, split, role, line, extra, c.get("subject_id") or None)
    return out


def parse_pairs(table: Table, report: Reporter) -> list[PairRecord]:
    """Pairs with the better/worse cells as written (validate maps them to image ids)."""
    file = MANIFEST_FILES["pairs"]
    out: list[PairRecord] = []
    for line, row in table.rows:
        c = _RowChecker(file, line, row, report)
        better = c.required("better")
        worse = c.required("worse")
        plane = c.required("plane")
        split = c.choice("split", PAIR_SPLITS, "pair split", required=False) or "test"
        if c.failed:
            continue
        assert better and worse and plane
        out.append(PairRecord(better, worse, plane, split, line))
    return out


def parse_boxes(table: Table, report: Reporter) -> list[BoxRecord]:
    """Boxes on a scan's frame (``scan_id`` + ``frame``) or on an image (``image``): exactly one per row."""
    file = MANIFEST_FILES["boxes"]
    out: list[BoxRecord] = []
    for line, row in table.rows:
        c = _RowChecker(file, line, row, report)
        scan_id: str | None = None
        frame: int | None = None
        image = c.get("image") or None
        on_scan = bool(c.get("scan_id") or c.get("frame"))
        if image is not None and on_scan:
            c.error(
                "image",
                f"the row names both an image ({image!r}) and a scan frame "
                f"(scan_id {c.get('scan_id')!r}, frame {c.get('frame')!r}): give exactly one of them",
            )
        elif image is None and not on_scan and "image" in table.columns:
            c.error("image", "empty: give an image of images.csv, or scan_id + frame")
        elif image is None:
            scan_id = c.required("scan_id")
            frame = c.frame("frame")
        x0, y0, x1, y1 = (c.unit(k) for k in ("x0", "y0", "x1", "y1"))
        if x0 is not None and x1 is not None and x0 >= x1:
            c.error("x1", f"x0 {x0:g} >= x1 {x1:g} (need x0 < x1)")
        if y0 is not None and y1 is not None and y0 >= y1:
            c.error("y1", f"y0 {y0:g} >= y1 {y1:g} (need y0 < y1)")
        if c.failed:
            continue
        out.append(BoxRecord(scan_id, frame, x0, y0, x1, y1, line, image))  # type: ignore[arg-type]
    return out


def box_references(root: str | Path) -> dict[str, str]:
    """What the rows of ``root/boxes.csv`` reference: ``{"scans": why, "images": why}`` for the manifests they
    name (scan_id / image cells); empty when the file is absent or unreadable (its validation says why)."""
    path = Path(root) / MANIFEST_FILES["boxes"]
    try:
        table = read_table(path)
    except (TableError, OSError):
        return {}
    out: dict[str, str] = {}
    if any(row.get("scan_id") for _, row in table.rows):
        out["scans"] = "boxes.csv reference scans by scan_id"
    if any(row.get("image") for _, row in table.rows):
        out["images"] = "boxes.csv reference images of images.csv by image"
    return out


def _normpath(path: Path) -> str:
    import os

    return os.path.normpath(os.path.abspath(path))


def write_new_csv(
    path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]], lineterminator: str = "\r\n"
) -> None:
    """A manifest written as a new file: an existing ``path`` is never replaced (FileExistsError)."""
    with open(path, "x", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator=lineterminator)
        writer.writeheader()
        writer.writerows(rows)
