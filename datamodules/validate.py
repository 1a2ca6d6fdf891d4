"""Dataset validator: checks a dataset folder against ``docs/data.md`` and reports every problem at once.

    python -m datamodules.validate DIR [--require scans,clips] [--splits train,val] [--shallow]

checks the manifests that exist (``--require`` default: those present, plus ``scans.csv`` when
``clips.csv`` or ``boxes.csv`` reference scans and ``images.csv`` when ``pairs.csv`` or ``boxes.csv`` name
images);

prints one line per problem (``file:row: column: what is wrong``, row = line number in the
CSV with the header on line 1) and a summary line; exits 0 without errors, 1 with errors,
2 when DIR does not exist.

From Python, :func:`validate_dataset` returns a :class:`ValidationReport`; :func:`load_dataset`
(used by every DataModule at ``setup``) raises :class:`DatasetValidationError` listing all
errors, or with ``skip_invalid=True`` logs and drops the bad rows and returns the rest.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.errors import DataError
from datamodules.manifest import (
    MANIFEST_FILES,
    SPLITS,
    BoxRecord,
    ClipRecord,
    ImageRecord,
    Manifests,
    PairRecord,
    ScanRecord,
    Table,
    TableError,
    box_references,
    check_header,
    parse_boxes,
    parse_clips,
    parse_images,
    parse_pairs,
    parse_scans,
    read_table,
    resolve_path,
)
from datamodules.readers import MediaError, VideoInfo, audio_info, load_gaze, probe_video, read_image

LOGGER_NAME = "sonolab.data"

#: audio whose absolute peak stays below this is reported as silent (warning).
SILENCE_PEAK = 1e-4
#: a gaze gap (no valid sample) longer than this many seconds inside the video is a warning.
GAZE_DROPOUT_S = 2.0
#: clips shorter than this many seconds are a warning.
MIN_CLIP_S = 0.5
#: audio shorter than the video by more than this fraction of the video (and more than
#: ``AUDIO_SHORT_MIN_S`` seconds) is a warning.
AUDIO_SHORT_FRACTION = 0.1
AUDIO_SHORT_MIN_S = 1.0
#: gaze whose last sample is past the end of the video by more than this fraction of the video (and more
#: than ``GAZE_LONG_MIN_S`` seconds) is a warning: wrong video, wrong fps or a recording not cut to the video.
GAZE_LONG_FRACTION = 0.2
GAZE_LONG_MIN_S = 1.0
#: float audio whose absolute peak exceeds this is a warning (clipping or wrong scaling; WAV floats are ±1).
AUDIO_FLOAT_PEAK = 1.0
#: the splits a training run needs; ``validate_dataset(splits=...)`` / ``--splits`` change it.
FIT_SPLITS = ("train", "val")
_AUDIO_BLOCK = 1 << 16

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One problem: ``file:row: column: message``; row is the CSV line (header = 1) or None.

    ``kind`` names a warning's kind (warnings are logged grouped by it); ``about`` the modality or target it
    concerns (``gaze``, ``audio``, ``label``, ``images``, ``pairs``; empty = any run), so a run is warned
    only about what it uses.
    """

    file: str
    row: int | None
    column: str | None
    message: str
    severity: Severity = "error"
    kind: str = ""
    about: str = ""

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        if self.column:
            return f"{where}: {self.column}: {self.message}"
        return f"{where}: {self.message}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith(("s", "x")) else "s")


class DatasetValidationError(DataError):
    """Raised when a dataset has errors; the message lists every error, ``.problems`` holds them."""

    def __init__(self, problems: Iterable[Problem], root: str | os.PathLike | None = None):
        self.problems: list[Problem] = [p for p in problems if p.severity == "error"]
        self.root = Path(root) if root is not None else None
        head = f"{_plural(len(self.problems), 'error')} in dataset {self.root}:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))

    def __reduce__(self):  # picklable across DataLoader / DDP workers
        return (type(self), (self.problems, self.root))


@dataclass
class ValidationReport:
    root: Path
    errors: list[Problem]
    warnings: list[Problem]
    #: only the rows without errors (and without a dependency on a dropped row).
    manifests: Manifests

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DatasetValidationError(self.errors, self.root)

    def summary(self) -> str:
        m = self.manifests
        present = [name for name in MANIFEST_FILES if (Path(self.root) / MANIFEST_FILES[name]).is_file()]
        counts = {
            "scans": len(m.scans),
            "clips": len(m.clips),
            "images": len(m.images),
            "pairs": len(m.pairs),
            "boxes": len(m.boxes),
        }
        singular = {"scans": "scan", "clips": "clip", "images": "image", "pairs": "pair", "boxes": "box"}
        valid = ", ".join(f"{counts[n]} {n if counts[n] != 1 else singular[n]}" for n in present)
        status = "OK" if self.ok else "FAILED"
        return (
            f"{status}: {self.root}: {_plural(len(self.errors), 'error')}, "
            f"{_plural(len(self.warnings), 'warning')}; valid rows: {valid or 'none'}"
        )

    def format(self, grouped: bool = False) -> str:
        """Every error, then the warnings (one line per kind with ``grouped``), then the summary."""
        lines = [f"error: {p}" for p in self.errors]
        warnings = group_warnings(self.warnings) if grouped else [str(p) for p in self.warnings]
        lines += [f"warning: {w}" for w in warnings]
        lines.append(self.summary())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


# --------------------------------------------------------------------------------------------
# collection of problems
# --------------------------------------------------------------------------------------------
class _Collector:
    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.failed: set[tuple[str, int]] = set()

    def __call__(
        self, file: str, row: int | None, column: str | None, message: str, severity: str = "error"
    ) -> None:
        self.problems.append(Problem(file, row, column, message, severity))  # type: ignore[arg-type]
        if severity == "error" and row is not None:
            self.failed.add((file, row))

    def of(self, kind: str, about: str = "") -> _Tagged:
        """``self.of(kind, about).warning(...)``: a warning of a named kind about a modality or target."""
        return _Tagged(self, kind, about)

    def error(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self(file, row, column, message, "error")

    def warning(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self(file, row, column, message, "warning")

    def ok(self, file: str, row: int) -> bool:
        return (file, row) not in self.failed


@dataclass
class _Tagged:
    collector: _Collector
    kind: str
    about: str

    def warning(self, file: str, row: int | None, column: str | None, message: str) -> None:
        self.collector.problems.append(Problem(file, row, column, message, "warning", self.kind, self.about))


def group_warnings(warnings: Iterable[Problem], first: int = 3) -> list[str]:
    """One line per kind of warning: the count, the kind and the first ``first`` of them (file:row and
    message), instead of one line each (362 lines of "no gaze for scan ..." on a real dataset). Warnings
    without a kind are grouped only with identical messages."""
    groups: dict[str, list[Problem]] = {}
    for p in warnings:
        groups.setdefault(p.kind or f"{p.file}: {p.column}: {p.message}", []).append(p)
    lines = []
    for group in groups.values():
        if len(group) == 1:
            lines.append(str(group[0]))
            continue
        shown = "; ".join(str(p) for p in group[:first])
        more = f"; ... and {len(group) - first} more" if len(group) > first else ""
        lines.append(f"{len(group)} x {group[0].kind or 'the same warning'}: {shown}{more}")
    return lines


def relevant_warnings(warnings: Iterable[Problem], uses: Iterable[str] | None) -> list[Problem]:
    """The warnings about what a run uses (``uses``: modalities and targets; None = all)."""
    if uses is None:
        return list(warnings)
    keep = set(uses)
    return [p for p in warnings if not p.about or p.about in keep]


def _normkey(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _parse_splits(splits: Iterable[str] | str | None) -> tuple[str, ...]:
    if splits is None:
        return ()
    if isinstance(splits, str):
        splits = splits.split(",")
    names = tuple(dict.fromkeys(s.strip().lower() for s in splits if s and s.strip()))
    unknown = [s for s in names if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s): {', '.join(unknown)} (allowed: {', '.join(SPLITS)})")
    return names


#: what ``require`` accepts: manifest names (a comma-separated string or an iterable), or a mapping of
#: name -> why the run needs it (said in the "required manifest is missing" error).
Require = Iterable[str] | str | Mapping[str, str] | None


def _parse_require(require: Require) -> dict[str, str]:
    """``{name: reason}`` (reason may be empty) of the manifests that must exist."""
    if require is None:
        return {}
    if isinstance(require, Mapping):
        items = [(str(k), str(v)) for k, v in require.items()]
    else:
        if isinstance(require, str):
            require = require.split(",")
        items = [(r, "") for r in require]
    names = {r.strip().lower().removesuffix(".csv"): why for r, why in items if r and r.strip()}
    unknown = sorted(set(names) - set(MANIFEST_FILES))
    if unknown:
        raise ValueError(
            f"unknown manifest name(s) in require: {', '.join(unknown)} "
            f"(allowed: {', '.join(MANIFEST_FILES)})"
        )
    return names


def present_requirements(root: str | os.PathLike) -> dict[str, str]:
    """What a dataset folder must hold, judged from what it holds (the validator's default): every manifest
    present, plus ``scans.csv`` when ``clips.csv`` exists or ``boxes.csv`` has boxes on scan frames, and
    ``images.csv`` when ``pairs.csv`` exists or ``boxes.csv`` has boxes on images."""
    root = Path(root)
    present = [name for name, file in MANIFEST_FILES.items() if (root / file).exists()]
    need = {name: "" for name in present}
    boxes = box_references(root) if "boxes" in present else {}
    referencing = [MANIFEST_FILES["clips"]] if "clips" in present else []
    referencing += [MANIFEST_FILES["boxes"]] if "scans" in boxes else []
    if referencing:
        need.setdefault("scans", f"{' and '.join(referencing)} reference scans by scan_id")
    naming = ["pairs.csv names images of images.csv"] if "pairs" in present else []
    naming += [boxes["images"]] if "images" in boxes else []
    if naming:
        need.setdefault("images", "; ".join(naming))
    return need


# --------------------------------------------------------------------------------------------
# the validator
# --------------------------------------------------------------------------------------------
class _Validator:
    def __init__(self, root: Path, require: dict[str, str], deep: bool, splits: tuple[str, ...] = FIT_SPLITS):
        self.root = root
        self.require = require
        self.deep = deep
        self.splits = splits
        self.p = _Collector()
        self.tables: dict[str, Table | None] = {}
        self._video_cache: dict[str, VideoInfo | MediaError] = {}
        self.video_info: dict[str, VideoInfo] = {}

    # -- helpers ------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        """A path as shown to the user: relative to the dataset root when inside it."""
        try:
            return (
                Path(os.path.relpath(path, self.root)).as_posix() if _inside(path, self.root) else str(path)
            )
        except ValueError:
            return str(path)

    def _exists(self, file: str, row: int, column: str, path: Path, what: str) -> bool:
        if path.is_file():
            return True
        if path.exists():
            self.p.error(file, row, column, f"{self.rel(path)} is not a file")
        else:
            self.p.error(file, row, column, f"{what} file not found: {self.rel(path)}")
        return False

    def _probe(self, path: Path) -> VideoInfo | MediaError:
        key = _normkey(path)
        if key not in self._video_cache:
            try:
                self._video_cache[key] = probe_video(path, check_last_frame=True)
            except MediaError as exc:
                self._video_cache[key] = exc
        return self._video_cache[key]

    # -- tables ----------------------------------------------------------------------------------
    def load_tables(self) -> None:
        for name, file in MANIFEST_FILES.items():
            path = self.root / file
            table: Table | None = None
            if not path.exists():
                if name in self.require:
                    why = self.require[name]
                    self.p.error(
                        file,
                        None,
                        None,
                        f"required manifest is missing ({path})" + (f": {why}" if why else ""),
                    )
            elif not path.is_file():
                self.p.error(file, None, None, f"{path} is not a file")
            else:
                try:
                    table = read_table(path)
                except TableError as exc:
                    self.p.error(file, None, None, str(exc))
                if table is not None and not check_header(name, table, self.p):
                    table = None
            self.tables[name] = table

    # -- scans ------------------------------------------------------------------------------------
    def check_scans(self) -> dict[str, ScanRecord]:
        table = self.tables["scans"]
        if table is None:
            return {}
        file = MANIFEST_FILES["scans"]
        scans = parse_scans(self.root, table, self.p)
        has_gaze_column = "gaze" in table.columns
        for scan in scans.values():
            if has_gaze_column and scan.gaze is None:
                self.p.of("no gaze for a scan", "gaze").warning(
                    file, scan.row, "gaze", f"no gaze for scan {scan.scan_id}"
                )
            video_ok = self._exists(file, scan.row, "video", scan.video, "video")
            gaze_ok = scan.gaze is not None and self._exists(file, scan.row, "gaze", scan.gaze, "gaze")
            audio_ok = scan.audio is not None and self._exists(file, scan.row, "audio", scan.audio, "audio")
            if not self.deep:
                continue
            info: VideoInfo | None = None
            if video_ok:
                got = self._probe(scan.video)
                if isinstance(got, MediaError):
                    self.p.error(file, scan.row, "video", self._media_msg(scan.video, got))
                else:
                    info = got
            fps = scan.fps
            if info is not None and fps is None:
                fps = float(info.fps or 0.0)
                if not math.isfinite(fps) or fps <= 0:
                    self.p.error(
                        file,
                        scan.row,
                        "video",
                        f"{self.rel(scan.video)} stores no frame rate; set the fps column",
                    )
                    fps = None
            if info is not None and self.p.ok(file, scan.row):
                self.video_info[scan.scan_id] = info
            duration = info.frame_count / fps if info is not None and fps else None
            if gaze_ok:
                assert scan.gaze is not None
                self._check_gaze(file, scan, duration)
            if audio_ok:
                assert scan.audio is not None
                self._check_audio(file, scan, duration)
        return scans

    def _media_msg(self, path: Path, exc: Exception) -> str:
        """A MediaError's message with its leading absolute path shortened to the displayed one."""
        msg, name = str(exc), self.rel(path)
        for prefix in (str(path), str(Path(_normkey(path)))):
            if msg.startswith(prefix):
                rest = msg[len(prefix) :]
                return name + rest if rest.startswith(":") else f"{name}: {rest.lstrip()}"
        return f"{name}: {msg}"

    def _check_gaze(self, file: str, scan: ScanRecord, duration: float | None) -> None:
        assert scan.gaze is not None
        name = self.rel(scan.gaze)
        # a file outside the dataset (``../../etc/passwd``) may be anything: never quote its contents
        quote = _inside(scan.gaze, self.root)
        try:
            load_gaze(scan.gaze, quote=quote)  # columns present, cells numeric
            lines, t, xy = _read_gaze_in_file_order(scan.gaze)
        except MediaError as exc:
            self.p.error(file, scan.row, "gaze", self._media_msg(scan.gaze, exc))
            return
        dec = np.flatnonzero(np.diff(t) < 0)
        if dec.size:
            i = int(dec[0])
            values = f": {t[i + 1]:g} after {t[i]:g}" if quote else ""
            self.p.error(
                file,
                scan.row,
                "gaze",
                f"{name}: time_s decreases {_plural(int(dec.size), 'time')} "
                f"(first on line {lines[i + 1]}{values})",
            )
        finite_xy = np.isfinite(xy).all(axis=1)
        with np.errstate(invalid="ignore"):
            outside = finite_xy & ((xy < 0.0) | (xy > 1.0)).any(axis=1)
        bad = np.flatnonzero(outside)
        if bad.size:
            i = int(bad[0])
            values = f": x={xy[i, 0]:g}, y={xy[i, 1]:g}" if quote else ""
            self.p.error(
                file,
                scan.row,
                "gaze",
                f"{name}: {_plural(int(bad.size), 'sample')} outside [0, 1] "
                f"(first on line {lines[i]}{values})",
            )
        if duration is None or dec.size or bad.size or t.size == 0:
            return
        last = float(np.max(t))
        if (
            last > 100.0 * duration
            and last / 1000.0 <= duration * (1.0 + GAZE_LONG_FRACTION) + GAZE_LONG_MIN_S
        ):
            self.p.error(
                file,
                scan.row,
                "gaze",
                f"{name}: time_s looks like milliseconds: the last sample is at {last:g} but the video "
                f"is {duration:.2f} s long; time_s must be seconds since the first frame (divide by 1000)",
            )
            return
        if last - duration > max(GAZE_LONG_MIN_S, GAZE_LONG_FRACTION * duration):
            self.p.of("gaze longer than the video", "gaze").warning(
                file,
                scan.row,
                "gaze",
                f"{name}: gaze runs to {last:.2f} s but the video is {duration:.2f} s "
                f"({last / duration:.1f}x): wrong gaze file or fps, or a recording not cut to the video; "
                "samples after the last frame are ignored",
            )
        valid_t = np.sort(t[finite_xy])
        valid_t = valid_t[(valid_t >= 0.0) & (valid_t < duration)]
        if valid_t.size == 0:
            self.p.of("no gaze inside the video", "gaze").warning(
                file,
                scan.row,
                "gaze",
                f"{name}: no valid gaze sample inside the video (0-{duration:.2f} s)",
            )
            return
        edges = np.concatenate([[0.0], valid_t, [duration]])
        gaps = np.diff(edges)
        k = int(np.argmax(gaps))
        if gaps[k] > GAZE_DROPOUT_S:
            n_long = int((gaps > GAZE_DROPOUT_S).sum())
            self.p.of("gaze drop-out", "gaze").warning(
                file,
                scan.row,
                "gaze",
                f"{name}: gaze drop-out of {gaps[k]:.2f} s ({edges[k]:.2f}-{edges[k + 1]:.2f} s); "
                f"{_plural(n_long, 'gap')} longer than {GAZE_DROPOUT_S:g} s",
            )

    def _check_audio(self, file: str, scan: ScanRecord, duration: float | None) -> None:
        assert scan.audio is not None
        name = self.rel(scan.audio)
        if scan.audio.stat().st_size == 0:
            self.p.error(file, scan.row, "audio", f"{name}: zero-length audio file (0 bytes)")
            return
        try:
            sample_rate, frames, _channels = audio_info(scan.audio)
        except MediaError as exc:
            self.p.error(file, scan.row, "audio", self._media_msg(scan.audio, exc))
            return
        if frames <= 0:
            self.p.error(file, scan.row, "audio", f"{name}: zero-length audio (no samples)")
            return
        import soundfile as sf

        peak = 0.0
        decoded = 0
        non_finite = 0
        first_bad: int | None = None
        try:
            for block in sf.blocks(str(scan.audio), blocksize=_AUDIO_BLOCK, dtype="float32", always_2d=True):
                if block.size:
                    finite = np.isfinite(block).all(axis=1)
                    if not finite.all():
                        non_finite += int((~finite).sum())
                        if first_bad is None:
                            first_bad = decoded + int(np.flatnonzero(~finite)[0])
                    if finite.any():
                        peak = max(peak, float(np.abs(block[finite]).max()))
                    decoded += block.shape[0]
        except (RuntimeError, ValueError, OSError) as exc:  # sf.LibsndfileError is a RuntimeError
            self.p.error(file, scan.row, "audio", f"{name}: cannot decode audio ({exc})")
            return
        if decoded == 0:
            self.p.error(file, scan.row, "audio", f"{name}: zero-length audio (no samples decoded)")
            return
        if non_finite:
            assert first_bad is not None
            self.p.error(
                file,
                scan.row,
                "audio",
                f"{name}: {_plural(non_finite, 'sample')} of {decoded} are NaN or infinite (first at sample "
                f"{first_bad}, {first_bad / sample_rate:.2f} s); they would make every log-mel feature of "
                "this scan NaN: re-export the audio, or leave the audio cell empty",
            )
            return
        if peak > AUDIO_FLOAT_PEAK:
            self.p.of("audio peaking outside [-1, 1]", "audio").warning(
                file,
                scan.row,
                "audio",
                f"{name}: float samples peak at {peak:.3g}, outside [-1, 1] (clipping or wrong scaling); "
                "log-mel features will be offset: rescale the audio to [-1, 1]",
            )
        if peak < SILENCE_PEAK:
            self.p.of("silent audio", "audio").warning(
                file, scan.row, "audio", f"{name}: silent audio (peak {peak:.1e} < {SILENCE_PEAK:g})"
            )
        if duration and sample_rate:
            audio_s = decoded / float(sample_rate)
            if duration - audio_s > max(AUDIO_SHORT_MIN_S, AUDIO_SHORT_FRACTION * duration):
                self.p.of("audio much shorter than the video", "audio").warning(
                    file,
                    scan.row,
                    "audio",
                    f"{name}: audio is {audio_s:.2f} s, much shorter than the video ({duration:.2f} s)",
                )

    # -- scan references (clips, boxes) -----------------------------------------------------------
    def _scan_lines(self) -> dict[str, int]:
        table = self.tables["scans"]
        lines: dict[str, int] = {}
        if table is not None:
            for line, row in table.rows:
                sid = row.get("scan_id", "")
                if sid:
                    lines.setdefault(sid, line)
        return lines

    def _check_scan_ref(
        self, file: str, row: int, scan_id: str, scans: dict[str, ScanRecord], scan_lines: dict[str, int]
    ) -> ScanRecord | None:
        scan = scans.get(scan_id)
        if scan is not None and self.p.ok(MANIFEST_FILES["scans"], scan.row):
            return scan
        if scan is not None or scan_id in scan_lines:
            line = scan.row if scan is not None else scan_lines[scan_id]
            self.p.error(file, row, "scan_id", f"scan {scan_id} is invalid (scans.csv:{line})")
        else:
            self.p.error(file, row, "scan_id", f"scan {scan_id!r} is not in scans.csv")
        return None

    def _fps(self, scan: ScanRecord) -> float | None:
        if scan.fps is not None:
            return scan.fps
        info = self.video_info.get(scan.scan_id)
        if info is not None and info.fps and math.isfinite(info.fps) and info.fps > 0:
            return float(info.fps)
        return None

    def check_clips(self, scans: dict[str, ScanRecord]) -> dict[str, ClipRecord]:
        table = self.tables["clips"]
        if table is None:
            return {}
        file = MANIFEST_FILES["clips"]
        clips = parse_clips(table, self.p)
        if self.tables["scans"] is None:
            if clips:
                self.p.error(
                    file,
                    None,
                    "scan_id",
                    f"cannot check the scans of {_plural(len(clips), 'clip')}: "
                    "scans.csv is missing or unusable",
                )
                for clip in clips.values():
                    self.p.failed.add((file, clip.row))
            return clips
        scan_lines = self._scan_lines()
        first_split: dict[str, tuple[str, int]] = {}
        for clip in clips.values():
            scan = self._check_scan_ref(file, clip.row, clip.scan_id, scans, scan_lines)
            if scan is None:
                continue
            if scan.split is not None:
                if clip.split != scan.split:
                    self.p.error(
                        file,
                        clip.row,
                        "split",
                        f"clip split {clip.split!r} disagrees with scan {scan.scan_id}'s split "
                        f"{scan.split!r} (scans.csv:{scan.row})",
                    )
            elif clip.scan_id in first_split:
                split0, line0 = first_split[clip.scan_id]
                if clip.split != split0:
                    self.p.error(
                        file,
                        clip.row,
                        "split",
                        f"scan {clip.scan_id} is in two splits: {clip.split!r} here, "
                        f"{split0!r} on line {line0} "
                        "(leakage; all clips of a scan must share a split)",
                    )
            else:
                first_split[clip.scan_id] = (clip.split, clip.row)
            info = self.video_info.get(scan.scan_id)
            if info is not None and clip.end_frame > info.frame_count:
                self.p.error(
                    file,
                    clip.row,
                    "end_frame",
                    f"{clip.end_frame} is past the end of {self.rel(scan.video)} ({info.frame_count} frames)",
                )
            fps = self._fps(scan)
            if fps and self.p.ok(file, clip.row) and clip.num_frames / fps < MIN_CLIP_S:
                self.p.of("clip shorter than 0.5 s", "").warning(
                    file,
                    clip.row,
                    "end_frame",
                    f"clip is {clip.num_frames / fps:.2f} s long ({_plural(clip.num_frames, 'frame')} at "
                    f"{fps:g} fps), shorter than {MIN_CLIP_S:g} s",
                )
        return clips

    def check_boxes(self, scans: dict[str, ScanRecord], images: dict[str, ImageRecord]) -> list[BoxRecord]:
        """Boxes on scan frames (the scan is valid, the frame inside its video) or on images (listed in
        images.csv and valid there: it exists and decodes); an image box holds its image's ``image_id``."""
        table = self.tables["boxes"]
        if table is None:
            return []
        file = MANIFEST_FILES["boxes"]
        boxes = parse_boxes(table, self.p)
        on_scans = [b for b in boxes if b.image is None]
        on_images = [b for b in boxes if b.image is not None]
        out: list[BoxRecord] = []
        for kept, needed, what in (
            (on_scans, "scans", "the scans of"),
            (on_images, "images", "the images of"),
        ):
            if kept and self.tables[needed] is None:
                self.p.error(
                    file,
                    None,
                    "image" if needed == "images" else "scan_id",
                    f"cannot check {what} {_plural(len(kept), 'box')}: {MANIFEST_FILES[needed]} is missing "
                    "or unusable",
                )
                for box in kept:
                    self.p.failed.add((file, box.row))
        if on_scans and self.tables["scans"] is not None:
            scan_lines = self._scan_lines()
            for box in on_scans:
                assert box.scan_id is not None and box.frame is not None
                scan = self._check_scan_ref(file, box.row, box.scan_id, scans, scan_lines)
                if scan is None:
                    continue
                info = self.video_info.get(scan.scan_id)
                if info is not None and box.frame >= info.frame_count:
                    self.p.error(
                        file,
                        box.row,
                        "frame",
                        f"frame {box.frame} is past the end of {self.rel(scan.video)} "
                        f"({info.frame_count} frames)",
                    )
        refs = self._image_refs()
        for box in boxes:
            if box.image is not None and self.tables["images"] is not None:
                image_id = self._check_image_ref(file, box.row, "image", box.image, images, refs)
                if image_id is not None and image_id != box.image:
                    box = BoxRecord(None, None, box.x0, box.y0, box.x1, box.y1, box.row, image_id)
            out.append(box)
        return out

    def _image_refs(self) -> tuple[dict[str, int], dict[str, tuple[str, int]]]:
        """Every images.csv row (valid or not), by id as written and by normalised path."""
        by_id: dict[str, int] = {}
        by_path: dict[str, tuple[str, int]] = {}
        itable = self.tables["images"]
        for line, row in itable.rows if itable is not None else ():
            written = row.get("image", "")
            if not written:
                continue
            by_id.setdefault(written, line)
            by_path.setdefault(_normkey(resolve_path(self.root, written)), (written, line))
        return by_id, by_path

    def _check_image_ref(
        self,
        file: str,
        row: int,
        column: str,
        written: str,
        images: dict[str, ImageRecord],
        refs: tuple[dict[str, int], dict[str, tuple[str, int]]],
    ) -> str | None:
        """The ``image_id`` of an image named in another manifest (as written, or the same path written
        differently), or None after an error: not in images.csv, or invalid there."""
        by_id, by_path = refs
        if written in by_id:
            image_id, line = written, by_id[written]
        elif _normkey(resolve_path(self.root, written)) in by_path:
            image_id, line = by_path[_normkey(resolve_path(self.root, written))]
        else:
            self.p.error(file, row, column, f"image {written!r} is not in images.csv")
            return None
        image = images.get(image_id)
        if image is None or not self.p.ok(MANIFEST_FILES["images"], image.row):
            self.p.error(file, row, column, f"image {written!r} is invalid (images.csv:{line})")
            return None
        return image_id

    # -- images, pairs ------------------------------------------------------------------------------
    def check_images(self) -> dict[str, ImageRecord]:
        table = self.tables["images"]
        if table is None:
            return {}
        file = MANIFEST_FILES["images"]
        images = parse_images(self.root, table, self.p)
        for image in images.values():
            if not self._exists(file, image.row, "image", image.path, "image"):
                continue
            if self.deep:
                try:
                    read_image(image.path, 1)
                except MediaError as exc:
                    self.p.error(file, image.row, "image", self._media_msg(image.path, exc))
        valid = [im for im in images.values() if self.p.ok(file, im.row)]
        if not any(im.role == "standard" for im in valid):
            self.p.of("empty standard-plane set", "images").warning(
                file, None, "role", "no valid image has role 'standard' (the standard-plane set is empty)"
            )
        by_split: dict[str, set[str]] = defaultdict(set)
        for im in valid:
            if im.role == "train":
                by_split[im.split].add(im.plane)
        for split, planes in by_split.items():
            if len(planes) < 2:
                self.p.of("fewer than 2 planes in a split", "label").warning(
                    file,
                    None,
                    "plane",
                    f"split {split!r} has fewer than 2 planes among role-'train' images "
                    f"({', '.join(sorted(planes))})",
                )
        return images

    def check_pairs(self, images: dict[str, ImageRecord]) -> list[PairRecord]:
        table = self.tables["pairs"]
        if table is None:
            return []
        file = MANIFEST_FILES["pairs"]
        pairs = parse_pairs(table, self.p)
        itable = self.tables["images"]
        if itable is None:
            if pairs:
                self.p.error(
                    file,
                    None,
                    None,
                    f"cannot check {_plural(len(pairs), 'pair')}: images.csv is missing or unusable",
                )
                for pair in pairs:
                    self.p.failed.add((file, pair.row))
            return pairs
        refs = self._image_refs()
        out: list[PairRecord] = []
        for pair in pairs:
            ids = [
                self._check_image_ref(file, pair.row, column, written, images, refs)
                for column, written in (("better", pair.better), ("worse", pair.worse))
            ]
            better, worse = ids
            if better is not None and worse is not None:
                if better == worse:
                    self.p.error(file, pair.row, "worse", f"better and worse are the same image ({better!r})")
                for column, image_id in (("better", better), ("worse", worse)):
                    plane = images[image_id].plane
                    if plane != pair.plane:
                        self.p.of("pair plane differs from its image's", "pairs").warning(
                            file,
                            pair.row,
                            "plane",
                            f"pair plane {pair.plane!r} differs from {column} image "
                            f"{image_id!r}'s plane {plane!r}",
                        )
                out.append(PairRecord(better, worse, pair.plane, pair.split, pair.row))
            else:
                out.append(pair)
        return out

    # -- splits -----------------------------------------------------------------------------------------
    def check_splits(self, m: Manifests) -> None:
        """A needed split with no row at all stops ``fit`` only after caching: report it here, at once. A
        split whose rows all have errors is explained by those errors (and by ``load_dataset`` when
        ``skip_invalid`` empties it)."""
        written: dict[str, set[str]] = defaultdict(set)  # split cells as written, valid or not, per manifest
        for name, counted_in in (
            ("clips", "clips"),
            ("scans", "clips"),
            ("images", "images"),
            ("scans", "boxes"),
            ("images", "boxes"),
        ):
            table = self.tables[name]
            for _, row in table.rows if table is not None else ():
                if counted_in != "images" or row.get("role", "") == "train":
                    written[MANIFEST_FILES[counted_in]].add(row.get("split", ""))
        self.p.problems.extend(
            p
            for split, p in empty_split_problems(m, self.require, self.splits)
            if split not in written[p.file]
        )

    # -- subjects -------------------------------------------------------------------------------------
    def check_subjects(self, m: Manifests) -> bool:
        """A subject (patient) in two splits leaks between them: an error on each row outside the subject's
        first split (in file order, scans before images), naming the subject and its rows per split; the
        clips, boxes and pairs of such a row are errors too. True if any was found."""
        f = MANIFEST_FILES
        rows: dict[str, dict[str, list[tuple[str, int, str]]]] = defaultdict(lambda: defaultdict(list))
        for scan in m.scans.values():
            split = m.scan_split(scan.scan_id)
            if scan.subject_id and split:
                rows[scan.subject_id][split].append((f["scans"], scan.row, scan.scan_id))
        for image in m.images.values():
            if image.subject_id:
                rows[image.subject_id][image.split].append((f["images"], image.row, image.image_id))
        found = False
        for subject, by_split in rows.items():
            if len(by_split) < 2:
                continue
            found = True
            listing = "; ".join(
                f"{split}: {', '.join(f'{file}:{row}' for file, row, _ in where)}"
                for split, where in by_split.items()
            )
            for where in list(by_split.values())[1:]:
                for file, row, row_id in where:
                    self.p.error(
                        file,
                        row,
                        "subject_id",
                        f"subject {subject!r} is in {len(by_split)} splits ({listing}); all scans and images "
                        f"of a subject must share one split (no patient leakage): fix the split column, or "
                        "write new splits with python -m datamodules.split --by subject",
                    )
                    self._fail_dependants(m, file, row_id, row)
        return found

    def _fail_dependants(self, m: Manifests, file: str, row_id: str, row: int) -> None:
        """The clips and boxes of a scan, or the pairs and boxes of an image, that became invalid after being
        checked."""
        f = MANIFEST_FILES
        if file == f["scans"]:
            why = f"scan {row_id} is invalid (scans.csv:{row})"
            for clip in m.clips.values():
                if clip.scan_id == row_id:
                    self.p.error(f["clips"], clip.row, "scan_id", why)
            for box in m.boxes:
                if box.scan_id == row_id:
                    self.p.error(f["boxes"], box.row, "scan_id", why)
            return
        for box in m.boxes:
            if box.image == row_id:
                self.p.error(f["boxes"], box.row, "image", f"image {row_id!r} is invalid (images.csv:{row})")
        for pair in m.pairs:
            for column, image_id in (("better", pair.better), ("worse", pair.worse)):
                if image_id == row_id:
                    self.p.error(
                        f["pairs"], pair.row, column, f"image {row_id!r} is invalid (images.csv:{row})"
                    )

    # -- everything ---------------------------------------------------------------------------------
    def run(self) -> ValidationReport:
        self.load_tables()
        scans = self.check_scans()
        clips = self.check_clips(scans)
        images = self.check_images()
        boxes = self.check_boxes(scans, images)
        pairs = self.check_pairs(images)

        ok = self.p.ok
        f = MANIFEST_FILES

        def valid_rows() -> Manifests:
            return Manifests(
                root=self.root,
                scans={k: s for k, s in scans.items() if ok(f["scans"], s.row)},
                clips={k: c for k, c in clips.items() if ok(f["clips"], c.row)},
                images={k: im for k, im in images.items() if ok(f["images"], im.row)},
                pairs=[p for p in pairs if ok(f["pairs"], p.row)],
                boxes=[b for b in boxes if ok(f["boxes"], b.row)],
                video_info={k: v for k, v in self.video_info.items() if ok(f["scans"], scans[k].row)},
            )

        manifests = valid_rows()
        if self.check_subjects(manifests):
            manifests = valid_rows()
        self.check_splits(manifests)
        # fewer than 2 classes in a split (kept clips only)
        labels: dict[str, set[str]] = defaultdict(set)
        for clip in manifests.clips.values():
            labels[clip.split].add(clip.label)
        for split in (s for s in ("train", "val", "test") if s in labels):
            if len(labels[split]) < 2:
                self.p.of("fewer than 2 classes in a split", "label").warning(
                    f["clips"],
                    None,
                    "label",
                    f"split {split!r} has fewer than 2 classes ({', '.join(sorted(labels[split]))})",
                )

        order = {name: i for i, name in enumerate(f.values())}
        problems = sorted(
            self.p.problems, key=lambda p: (order.get(p.file, len(order)), p.row if p.row is not None else 0)
        )
        return ValidationReport(
            root=self.root,
            errors=[p for p in problems if p.severity == "error"],
            warnings=[p for p in problems if p.severity == "warning"],
            manifests=manifests,
        )


def _read_gaze_in_file_order(path: Path) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(CSV line of each sample, time_s, xy) in file order; the file was checked by ``load_gaze``."""
    import csv

    lines: list[int] = []
    values: list[tuple[float, float, float]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            names = [h.strip() for h in next(reader)]
            cols = [names.index(c) for c in ("time_s", "x", "y")]
            prev = reader.line_num
            for row in reader:
                line, prev = prev + 1, reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                cells = [row[c].strip() if c < len(row) else "" for c in cols]
                values.append(tuple(float(v) if v else math.nan for v in cells))  # type: ignore[arg-type]
                lines.append(line)
    except (OSError, ValueError, StopIteration, csv.Error) as exc:
        raise MediaError(f"{path}: cannot read gaze file ({type(exc).__name__})") from None
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    xy = arr[:, 1:].copy()
    xy[np.isnan(xy).any(axis=1)] = np.nan
    return lines, arr[:, 0], xy


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(_normkey(path)).relative_to(_normkey(root))
        return True
    except ValueError:
        return False


def empty_split_problems(
    m: Manifests, require: Iterable[str], splits: Iterable[str]
) -> list[tuple[str | None, Problem]]:
    """``(split, error)`` for each needed split without a valid row: clips (+ scans used whole) when clips
    are required, role-'train' images in the train split when images are."""
    hint = "or, for a dataset used only to test or predict, validate with --splits test"
    require, splits = set(require), tuple(splits)
    out: list[tuple[str | None, Problem]] = []
    if "clips" in require:
        counts: dict[str, int] = defaultdict(int)
        for clip in m.clips.values():
            counts[clip.split] += 1
        with_clips = {c.scan_id for c in m.clips.values()}
        for scan in m.scans.values():  # scans used whole (sliding windows) carry their own split
            if scan.split and scan.scan_id not in with_clips:
                counts[scan.split] += 1
        have = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        for split in splits:
            if not counts.get(split):
                out.append(
                    (
                        split,
                        Problem(
                            MANIFEST_FILES["clips"],
                            None,
                            "split",
                            f"the {split!r} split has no valid clip or scan (valid rows per split: {have}); "
                            f"a training run needs {' and '.join(map(repr, splits))} data: put some scans in "
                            f"{split!r} (split column of clips.csv / scans.csv), {hint}",
                        ),
                    )
                )
    # boxes (zoom-in pretraining) take the split of their scan or image: train only, like images
    if "boxes" in require and "clips" not in require and "train" in splits:
        unsplit = sorted({b.scan_id for b in m.boxes if b.scan_id is not None and m.box_split(b) is None})
        if unsplit:
            out.append(
                (
                    None,  # not about one split: always reported
                    Problem(
                        MANIFEST_FILES["boxes"],
                        None,
                        "scan_id",
                        f"boxes of scans with no split ({', '.join(unsplit[:5])}"
                        f"{', ...' if len(unsplit) > 5 else ''}): give scans.csv a split column",
                    ),
                )
            )
        if not any(m.box_split(b) == "train" for b in m.boxes):
            out.append(
                (
                    "train",
                    Problem(
                        MANIFEST_FILES["boxes"],
                        None,
                        "split",
                        "the 'train' split has no valid box (a box takes the split of its scan or image): put "
                        f"some scans or images with boxes in 'train', {hint}",
                    ),
                )
            )
    # images: only train; evaluation may come from pairs.csv, the standard set or no validation at all
    if (
        "images" in require
        and "train" in splits
        and not any(im.role == "train" and im.split == "train" for im in m.images.values())
    ):
        out.append(
            (
                "train",
                Problem(
                    MANIFEST_FILES["images"],
                    None,
                    "split",
                    "the 'train' split has no valid role-'train' image; a training run needs some: "
                    f"put images in split 'train' with role 'train', {hint}",
                ),
            )
        )
    return out


def validate_dataset(
    root: str | os.PathLike,
    require: Require = ("scans", "clips"),
    deep: bool = True,
    splits: Iterable[str] | str = FIT_SPLITS,
) -> ValidationReport:
    """Check a dataset folder and return every problem found (never stops at the first).

    ``require`` names the manifests that must exist (``scans``, ``clips``, ``images``, ``pairs``,
    ``boxes``), or maps each to why the run needs it (the reason ends the "missing" error); the others are
    validated when present. :func:`present_requirements` gives what the folder itself implies. ``deep`` opens the media (probes every
    video once including its last frame, reads gaze files, decodes audio and images); with
    ``deep=False`` only the CSV structure and the existence of the media files are checked.
    ``splits`` are the splits that must hold valid rows in ``clips.csv`` + ``scans.csv`` when clips are
    required (train and val by default, what ``fit`` needs); with images required, ``train`` in ``splits``
    asks for role-'train' images in the train split.
    """
    root = Path(root).expanduser()
    names = _parse_require(require)
    need = _parse_splits(splits)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        return ValidationReport(
            root=root,
            errors=[Problem(str(root), None, None, f"dataset folder {what}")],
            warnings=[],
            manifests=Manifests(root=root),
        )
    return _Validator(root.resolve(), names, deep, need).run()


def load_dataset(
    root: str | os.PathLike,
    require: Require = ("scans", "clips"),
    deep: bool = True,
    skip_invalid: bool = False,
    logger: logging.Logger | None = None,
    splits: Iterable[str] | str = FIT_SPLITS,
    uses: Iterable[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    revalidate: bool = False,
) -> Manifests:
    """Validate and return the dataset's rows.

    Warnings are logged, grouped by kind (:func:`group_warnings`), and only those about what the run
    ``uses`` (modalities and targets, e.g. ``{"video", "gaze", "label"}``; None = all). With ``cache_dir``
    the validation result is reused while the dataset and the parameters are unchanged
    (:mod:`datamodules.validation_cache`); ``revalidate`` forces a full check.

    With errors, raises :class:`DatasetValidationError` listing them all, unless ``skip_invalid``: then
    every skipped row is logged and the valid rows are returned (problems that concern a whole required
    file, e.g. a missing manifest, still raise).
    """
    log = logger or logging.getLogger(LOGGER_NAME)

    def run() -> ValidationReport:
        return validate_dataset(root, require=require, deep=deep, splits=splits)

    if cache_dir is not None and Path(root).expanduser().is_dir():
        from datamodules.validation_cache import cached_validation

        params = {
            "require": _parse_require(require),
            "splits": list(_parse_splits(splits)),
            "deep": deep,
            "root": str(Path(root).expanduser().resolve()),
        }
        report = cached_validation(Path(root).expanduser(), cache_dir, params, run, revalidate)
    else:
        report = run()
    for line in group_warnings(relevant_warnings(report.warnings, uses)):
        log.warning("dataset warning: %s", line)
    if not report.errors:
        return report.manifests
    if not skip_invalid:
        raise DatasetValidationError(report.errors, report.root)
    names = _parse_require(require)
    required_files = {MANIFEST_FILES[n] for n in names}
    fatal = [
        p
        for p in report.errors
        if p.row is None and (p.file in required_files or p.file not in MANIFEST_FILES.values())
    ]
    emptied = [
        Problem(p.file, p.row, p.column, f"{p.message} (after skipping invalid rows)")
        for _, p in empty_split_problems(report.manifests, names, _parse_splits(splits))
    ]
    if fatal or emptied:
        raise DatasetValidationError(fatal + emptied, report.root)
    rows = sorted({(p.file, p.row) for p in report.errors if p.row is not None})
    for p in report.errors:
        if p.row is None:
            log.warning("skipping all rows of %s: %s", p.file, p)
        else:
            log.warning("skipping invalid row %s", p)
    log.warning(
        "skip_invalid: skipped %s of dataset %s (%s)",
        _plural(len(rows), "row"),
        report.root,
        _plural(len(report.errors), "error"),
    )
    return report.manifests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.validate",
        description="Check a sonolab dataset folder (docs/data.md) and report every problem.",
    )
    parser.add_argument("dir", help="dataset folder")
    parser.add_argument(
        "--require",
        default=None,
        help="comma-separated manifests that must exist (scans, clips, images, pairs, boxes); default: the "
        "manifests present, plus scans when clips or boxes reference them and images when pairs or boxes do; "
        "'' for none",
    )
    parser.add_argument(
        "--shallow", action="store_true", help="check CSVs and file existence only, open no media"
    )
    parser.add_argument(
        "--splits",
        default=",".join(FIT_SPLITS),
        help="comma-separated splits that must hold valid rows; default: train,val (what fit needs); "
        "'test' for a dataset used only to test or predict, '' for none",
    )
    parser.add_argument(
        "--all-warnings",
        action="store_true",
        help="list every warning on its own line (default: one line per kind, with a count and the first few)",
    )
    args = parser.parse_args(argv)
    root = Path(args.dir).expanduser()
    if not root.is_dir():
        print(
            f"error: dataset folder {root} {'is not a folder' if root.exists() else 'does not exist'}",
            file=sys.stderr,
        )
        return 2
    try:
        if args.require is None:
            require = present_requirements(root)
            if not require:
                print(
                    f"error: {root} holds no manifest ({', '.join(MANIFEST_FILES.values())}); "
                    "docs/data.md describes them",
                    file=sys.stderr,
                )
                return 1
        else:
            require = {n: "named in --require" for n in _parse_require(args.require)}
        splits = _parse_splits(args.splits)
    except ValueError as exc:
        parser.error(str(exc))
    report = validate_dataset(root, require=require, deep=not args.shallow, splits=splits)
    print(report.format(grouped=not args.all_warnings))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
