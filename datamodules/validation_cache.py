"""The validation result as a data product: cached by dataset fingerprint + parameters, like the clip cache.

Deep validation opens every medium (probes each video to its last frame, decodes each audio file): tens of
seconds on a real dataset, before every ``fit``, ``test`` and ``predict``. Its result depends only on the
manifests' bytes, the referenced media files (path, size, mtime) and the validation parameters (required
manifests, splits, depth), so it is stored under ``<cache>/validation/<key>.json`` and reused while none of
those change. A changed, added or removed file changes the key and the dataset is validated again;
``revalidate=True`` (``data.init_args.revalidate``) forces a full check.

The entry is JSON of plain records (never a pickle: a cache folder may be shared), written atomically
(temporary file + rename), and ignored when unreadable or of another format version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from datamodules.manifest import (
    MANIFEST_FILES,
    BoxRecord,
    ClipRecord,
    ImageRecord,
    Manifests,
    PairRecord,
    ScanRecord,
    TableError,
    read_table,
    resolve_path,
)
from datamodules.readers import VideoInfo
from lightning_modules.common.runs import atomic_write

log = logging.getLogger("sonolab.data")

#: bump when the validator's checks or this file's layout change: old entries are then never read.
FORMAT_VERSION = 2  # 2: boxes on images (BoxRecord.image), still-image and DICOM video checks

#: manifest name -> the columns that hold media paths.
MEDIA_COLUMNS: dict[str, tuple[str, ...]] = {"scans": ("video", "gaze", "audio"), "images": ("image",)}


def _stat(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except (OSError, ValueError):  # absent, unreadable, or not a path at all (a NUL byte): validation says
        return [str(path), "missing"]
    return [str(path), st.st_size, st.st_mtime_ns]


def validation_key(root: str | os.PathLike, params: dict[str, Any]) -> str:
    """sha256 of the manifests' bytes, every referenced media file's (path, size, mtime_ns) — missing ones
    included, so adding one changes the key — and ``params``. Reads only the CSVs and ``stat``s media."""
    root = Path(root).resolve()
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, params], sort_keys=True, default=str).encode())
    for name, file in MANIFEST_FILES.items():
        path = root / file
        try:
            data = path.read_bytes()
        except OSError:
            h.update(f"{file}\0absent\n".encode())
            continue
        h.update(f"{file}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        columns = MEDIA_COLUMNS.get(name)
        if not columns:
            continue
        try:
            table = read_table(path)
        except TableError:
            continue  # the bytes are hashed; validation reports the file
        media = {
            resolve_path(root, row[c]) for _, row in table.rows for c in columns if row.get(c, "").strip()
        }
        for entry in sorted((_stat(p) for p in media), key=str):
            h.update(json.dumps(entry).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ (de)coding
def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _record(obj: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def encode(report: Any) -> dict[str, Any]:
    """A :class:`~datamodules.validate.ValidationReport` as JSON-ready plain data."""
    m: Manifests = report.manifests
    return {
        "version": FORMAT_VERSION,
        "root": str(report.root),
        "errors": [_record(p) for p in report.errors],
        "warnings": [_record(p) for p in report.warnings],
        "manifests": {
            "root": str(m.root),
            "scans": [_record(s) for s in m.scans.values()],
            "clips": [_record(c) for c in m.clips.values()],
            "images": [_record(i) for i in m.images.values()],
            "pairs": [_record(p) for p in m.pairs],
            "boxes": [_record(b) for b in m.boxes],
            "video_info": {k: _record(v) for k, v in m.video_info.items()},
        },
    }


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def decode(data: dict[str, Any]) -> Any:
    """The inverse of :func:`encode`."""
    from datamodules.validate import Problem, ValidationReport

    d = data["manifests"]
    scans = {
        s["scan_id"]: ScanRecord(
            **{**s, "video": Path(s["video"]), "gaze": _path(s["gaze"]), "audio": _path(s["audio"])}
        )
        for s in d["scans"]
    }
    manifests = Manifests(
        root=Path(d["root"]),
        scans=scans,
        clips={c["clip_id"]: ClipRecord(**c) for c in d["clips"]},
        images={i["image_id"]: ImageRecord(**{**i, "path": Path(i["path"])}) for i in d["images"]},
        pairs=[PairRecord(**p) for p in d["pairs"]],
        boxes=[BoxRecord(**b) for b in d["boxes"]],
        video_info={k: VideoInfo(**{**v, "path": Path(v["path"])}) for k, v in d["video_info"].items()},
    )
    return ValidationReport(
        root=Path(data["root"]),
        errors=[Problem(**p) for p in data["errors"]],
        warnings=[Problem(**p) for p in data["warnings"]],
        manifests=manifests,
    )


# ------------------------------------------------------------------------------------------------ the cache
def cached_validation(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    params: dict[str, Any],
    validate: Any,
    revalidate: bool = False,
) -> Any:
    """``validate()``'s report, read from ``cache_dir/validation`` when the dataset and ``params`` are
    unchanged (and ``revalidate`` is False), else computed and stored. A cache folder that cannot be
    written costs only the reuse: the report is returned and a warning says why."""
    key = validation_key(root, params)
    folder = Path(cache_dir) / "validation"
    entry = folder / f"{key}.json"
    if not revalidate and entry.is_file():
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
            if data.get("version") == FORMAT_VERSION:
                log.info("dataset %s unchanged since its last validation: reusing %s", root, entry)
                return decode(data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable validation cache %s (%s): validating again", entry, exc)
    report = validate()
    try:
        atomic_write(entry, lambda tmp: tmp.write_text(json.dumps(encode(report)), encoding="utf-8"))
    except OSError as exc:
        log.warning(
            "cannot store the validation result in %s (%s): the next run validates again", folder, exc
        )
    return report
