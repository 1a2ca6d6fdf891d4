"""Turn "a folder of videos + a labels CSV" into sonolab manifests: ``scans.csv`` and ``clips.csv``.

    python -m datamodules.import_videos VIDEOS_DIR --labels LABELS.csv [--out DATASET_DIR]
        [--file-column file] [--quality-column quality] [--subject-column subject_id]
        [--label-column label | --label NAME] [--high 1] [--low 0] [--split-column COL]

Real datasets often come as short videos, each labelled as a whole (clip-level quality), with a patient id
per video. Each listed video becomes one scan (``scan_id`` = its path without the extension, ``/`` → ``_``;
``subject_id`` from the subject column) and one clip covering the whole video (``start_frame`` 0,
``end_frame`` = the frame count the container reports, probed here). Quality cells in ``--high`` become 1,
in ``--low`` 0, empty cells unknown; anything else is an error naming the row. Every problem of the labels
file is reported at once. The files are created exclusively: an existing ``scans.csv`` or ``clips.csv`` in
the dataset folder is never replaced. Without ``--split-column`` the clips have no split yet: assign one
with ``python -m datamodules.split`` (subject-wise), as the VQA README's "Your own data" section shows.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from datamodules.errors import DataError
from datamodules.manifest import MANIFEST_FILES, SPLITS, TableError, read_table, write_new_csv
from datamodules.readers import MediaError, probe_video

__all__ = ["VIDEO_SUFFIXES", "import_videos", "main"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
SCAN_COLUMNS = ("scan_id", "video", "subject_id")
CLIP_COLUMNS = ("clip_id", "scan_id", "start_frame", "end_frame", "label", "quality", "split")


def _values(text: str | Sequence[str]) -> set[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    return {v.strip() for v in items if v.strip()}


def import_videos(
    videos: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike | None = None,
    file_column: str = "file",
    quality_column: str = "quality",
    subject_column: str | None = "subject_id",
    label_column: str | None = None,
    label: str | None = None,
    high: str | Sequence[str] = "1",
    low: str | Sequence[str] = "0",
    split_column: str | None = None,
) -> dict[str, int]:
    """Write ``scans.csv`` and ``clips.csv`` into ``out`` (default: the videos folder) and return counts.

    Raises DataError naming the labels file's rows (or the existing manifest) on any problem; nothing is
    written then.
    """
    videos = Path(videos).expanduser()
    labels = Path(labels).expanduser()
    out = Path(out).expanduser() if out is not None else videos
    if not videos.is_dir():
        raise DataError(f"{videos}: videos folder not found")
    targets = [out / MANIFEST_FILES["scans"], out / MANIFEST_FILES["clips"]]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise DataError(
            f"{', '.join(existing)} exist(s): import_videos never replaces a manifest; give --out a new "
            "dataset folder or move the file(s) away"
        )
    try:
        table = read_table(labels)
    except TableError as exc:
        raise DataError(f"{labels}: {exc}") from None
    if label_column is None and label is None:
        if "label" not in table.columns:
            raise DataError(
                f"{labels}: no 'label' column: give --label NAME (one label for every clip, e.g. the organ) "
                "or --label-column COLUMN (VideoQualityGAN's normal class is model.init_args.normal_label "
                "with quality 1)"
            )
        label_column = "label"
    needed = [file_column, quality_column]
    needed += [c for c in (subject_column, label_column, split_column) if c is not None]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(
            f"{labels}: no column(s) {', '.join(repr(c) for c in missing)}; header has: "
            f"{', '.join(table.columns)} (name yours with --file-column, --quality-column, --subject-column, "
            "--label-column, --split-column)"
        )
    high_values, low_values = _values(high), _values(low)
    if high_values & low_values:
        raise DataError(f"--high and --low share the value(s) {sorted(high_values & low_values)}")

    problems: list[str] = []
    scans: list[dict[str, str]] = []
    clips: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for line, row in table.rows:
        where = f"{labels.name}:{line}"
        name = row[file_column]
        if not name:
            problems.append(f"{where}: {file_column}: empty")
            continue
        path = videos / name
        scan_id = Path(name).with_suffix("").as_posix().replace("/", "_")
        if scan_id in seen:
            problems.append(
                f"{where}: {file_column}: {name} gives scan id {scan_id!r}, as line {seen[scan_id]}"
            )
            continue
        seen[scan_id] = line
        cell = row[quality_column]
        if cell in high_values:
            quality = "1"
        elif cell in low_values:
            quality = "0"
        elif cell == "":
            quality = ""
        else:
            problems.append(
                f"{where}: {quality_column}: {cell!r} is neither high ({','.join(sorted(high_values))}) nor "
                f"low ({','.join(sorted(low_values))}): list it with --high or --low, or leave it empty (unknown)"
            )
            continue
        clip_label = row[label_column] if label_column is not None else str(label)
        if not clip_label:
            problems.append(f"{where}: {label_column}: empty label")
            continue
        split = row[split_column] if split_column is not None else ""
        if split_column is not None and split not in SPLITS:
            problems.append(f"{where}: {split_column}: {split!r} is not one of {', '.join(SPLITS)}")
            continue
        subject = row[subject_column] if subject_column is not None else ""
        if subject_column is not None and not subject:
            problems.append(f"{where}: {subject_column}: empty subject (every video needs its patient)")
            continue
        try:
            info = probe_video(path)
        except MediaError as exc:
            problems.append(f"{where}: {file_column}: {exc}")
            continue
        video = Path(os.path.relpath(path, out)).as_posix()
        scans.append({"scan_id": scan_id, "video": video, "subject_id": subject})
        clips.append(
            {
                "clip_id": scan_id,
                "scan_id": scan_id,
                "start_frame": "0",
                "end_frame": str(info.frame_count),
                "label": clip_label,
                "quality": quality,
                "split": split,
            }
        )
    if problems:
        raise DataError(
            f"{len(problems)} problem(s) in {labels}; nothing was written:\n" + "\n".join(problems)
        )
    if not scans:
        raise DataError(f"{labels}: no rows (one row per video: {file_column}, {quality_column}, ...)")
    out.mkdir(parents=True, exist_ok=True)
    for path, columns, rows in ((targets[0], SCAN_COLUMNS, scans), (targets[1], CLIP_COLUMNS, clips)):
        write_new_csv(path, columns, rows)
    listed = {(videos / r[file_column]).resolve() for _, r in table.rows if r[file_column]}
    unlisted = [
        p
        for p in sorted(videos.rglob("*"))
        if p.suffix.lower() in VIDEO_SUFFIXES and p.resolve() not in listed
    ]
    return {
        "scans": len(scans),
        "high": sum(c["quality"] == "1" for c in clips),
        "low": sum(c["quality"] == "0" for c in clips),
        "unknown": sum(c["quality"] == "" for c in clips),
        "subjects": len({s["subject_id"] for s in scans if s["subject_id"]}),
        "unlisted": len(unlisted),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.import_videos",
        description="Write scans.csv + clips.csv for a folder of videos and a labels CSV (one clip per video).",
    )
    parser.add_argument("videos", help="folder of the videos (paths in the labels CSV are relative to it)")
    parser.add_argument("--labels", required=True, help="CSV with one row per video")
    parser.add_argument(
        "--out", default=None, help="dataset folder for the manifests (default: the videos folder)"
    )
    parser.add_argument("--file-column", default="file", help="column of the video path (default: file)")
    parser.add_argument(
        "--quality-column", default="quality", help="column of the clip quality (default: quality)"
    )
    parser.add_argument(
        "--subject-column", default="subject_id", help="column of the patient id (default: subject_id)"
    )
    parser.add_argument("--no-subject", action="store_true", help="the labels CSV has no patient column")
    parser.add_argument("--label-column", default=None, help="column of the clip label (default: label)")
    parser.add_argument(
        "--label", default=None, help="one label for every clip (when there is no label column)"
    )
    parser.add_argument(
        "--high", default="1", help="comma-separated quality values meaning high (default: 1)"
    )
    parser.add_argument("--low", default="0", help="comma-separated quality values meaning low (default: 0)")
    parser.add_argument("--split-column", default=None, help="column of an existing train/val/test split")
    args = parser.parse_args(argv)
    if args.label is not None and args.label_column is not None:
        parser.error("give --label or --label-column, not both")
    try:
        counts = import_videos(
            args.videos,
            args.labels,
            out=args.out,
            file_column=args.file_column,
            quality_column=args.quality_column,
            subject_column=None if args.no_subject else args.subject_column,
            label_column=args.label_column,
            label=args.label,
            high=args.high,
            low=args.low,
            split_column=args.split_column,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or args.videos)
    print(
        f"wrote {out / 'scans.csv'} and {out / 'clips.csv'}: {counts['scans']} videos, {counts['subjects']} "
        f"subjects; quality {counts['high']} high, {counts['low']} low, {counts['unknown']} unknown"
    )
    if counts["unlisted"]:
        print(
            f"note: {counts['unlisted']} video(s) in {args.videos} are not in {args.labels} and were left out"
        )
    if args.split_column is None:
        print(
            f"next: assign splits, e.g. python -m datamodules.split {out} --by subject --stratify quality "
            f"--out {out / 'clips.split.csv'}, review it, and move it to {out / 'clips.csv'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
