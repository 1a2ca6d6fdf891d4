"""Assign train / val / test splits scan- or subject-wise, stratified and seeded, into a NEW manifest.

    python -m datamodules.split DIR --ratios 0.7,0.15,0.15 --by subject|scan \\
        [--stratify label|quality] [--seed S] [--manifest clips|scans|images] --out NEW.csv

Real data has several scans per patient: splits must keep each subject in one split, or a model is tested on
patients it trained on. The unit of assignment is a subject (``subject_id`` column of scans.csv /
images.csv) or a scan (an image, for images.csv). ``--out`` receives a copy of the chosen manifest
(default: clips.csv when present, else images.csv, else scans.csv) with its ``split`` column set; the
user's files are never written, and an existing ``--out`` is refused. The same DIR, ``--by``,
``--stratify``, ratios and seed give the same assignment whichever manifest is written, so clips.csv and
scans.csv written by two runs agree.

Assignment (known, tested properties): units are grouped by stratum (the most common label — or quality —
of their rows, ties to the smallest), shuffled within a stratum by ``numpy.random.default_rng(seed)``,
strata in sorted order, then dealt one by one to the split furthest below its target share
(``ratio * units dealt so far``). Every split's unit count is within one unit of ``ratio * units``, and each
stratum is spread over the splits in proportion.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.errors import DataError
from datamodules.manifest import MANIFEST_FILES, SPLITS, Table, TableError, read_table, write_new_csv

BY = ("subject", "scan")
STRATIFY = ("label", "quality", "none")


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative shares of train, val, test summing to 1 (within 1e-6)."""
    values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"--ratios needs three shares of train,val,test that sum to 1, got {text!r}")
    return values[0], values[1], values[2]


def deal(units_by_stratum: dict[str, list[str]], ratios: Sequence[float], seed: int) -> dict[str, str]:
    """unit -> split (see the module docstring); deterministic for a seed."""
    rng = np.random.default_rng(seed)
    order: list[str] = []
    for stratum in sorted(units_by_stratum):
        units = sorted(units_by_stratum[stratum])
        order.extend(units[i] for i in rng.permutation(len(units)))
    counts = [0, 0, 0]
    out: dict[str, str] = {}
    for n, unit in enumerate(order, start=1):
        deficits = [ratios[s] * n - counts[s] for s in range(3)]
        best = max(range(3), key=lambda s: (deficits[s], -s))
        counts[best] += 1
        out[unit] = SPLITS[best]
    return out


def _table(root: Path, name: str, required: bool) -> Table | None:
    path = root / MANIFEST_FILES[name]
    if not path.is_file():
        if required:
            raise DataError(f"{path}: not found (needed to assign splits)")
        return None
    try:
        return read_table(path)
    except TableError as exc:
        raise DataError(f"{path}: {exc}") from None


def _column(table: Table, column: str, why: str) -> None:
    if column not in table.columns:
        raise DataError(
            f"{table.path.name}: no {column!r} column ({why}); header has: {', '.join(table.columns)}"
        )


def _stratum(values: list[str]) -> str:
    """The most common value (ties: the smallest); '' when there is none."""
    if not values:
        return ""
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


def assign(
    root: str | os.PathLike, ratios: Sequence[float], by: str, stratify: str, seed: int, manifest: str
) -> tuple[Table, dict[int, str], dict[str, str]]:
    """(the manifest's table, CSV line -> new split, unit -> split); errors name the file, line and column."""
    root = Path(root)
    if by not in BY or stratify not in STRATIFY:
        raise ValueError(f"--by must be one of {BY} and --stratify one of {STRATIFY}")
    strata_values: dict[int | str, str]  # by CSV line (images) or by scan id (scans, clips)
    if manifest == "images":
        table = _table(root, "images", required=True)
        assert table is not None
        _column(table, "image", "images.csv lists images")
        key = {line: row["image"] for line, row in table.rows}  # the unit of each row: the image ...
        subject_of = {row["image"]: row.get("subject_id", "") for _, row in table.rows}
        strata_values = {line: _row_stratum(table, row, stratify, "plane") for line, row in table.rows}
    else:
        scans = _table(root, "scans", required=True)
        assert scans is not None
        _column(scans, "scan_id", "scans.csv lists scans")
        subject_of = {row["scan_id"]: row.get("subject_id", "") for _, row in scans.rows}
        clips = _table(root, "clips", required=manifest == "clips")
        strata: dict[str, list[str]] = defaultdict(list)
        if clips is not None:
            _column(clips, "scan_id", "clips name their scan")
            for line, row in clips.rows:
                if row["scan_id"] not in subject_of:
                    raise DataError(f"clips.csv:{line}: scan_id: scan {row['scan_id']!r} is not in scans.csv")
                strata[row["scan_id"]].append(_row_stratum(clips, row, stratify, "label"))
        table = clips if manifest == "clips" else scans
        assert table is not None
        key = {line: row["scan_id"] for line, row in table.rows}
        strata_values = {}
        for scan_id in subject_of:
            strata_values[scan_id] = _stratum(strata[scan_id])
    file = MANIFEST_FILES["images" if manifest == "images" else "scans"]
    if by == "subject":
        owner = {}
        for unit, subject in subject_of.items():
            if not subject:
                raise DataError(
                    f"{file}: {unit!r} has no subject_id; --by subject needs a subject_id for every "
                    "row (or use --by scan)"
                )
            owner[unit] = subject
    else:
        owner = {unit: unit for unit in subject_of}
    # a unit's stratum: the most common stratum of its rows (images: one row each)
    per_unit: dict[str, list[str]] = defaultdict(list)
    if manifest == "images":
        for line, unit in key.items():
            per_unit[owner[unit]].append(strata_values[line])
    else:
        for scan_id in subject_of:
            if strata_values[scan_id]:
                per_unit[owner[scan_id]].append(strata_values[scan_id])
            else:
                per_unit.setdefault(owner[scan_id], [])
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for unit, values in per_unit.items():
        by_stratum[_stratum(values)].append(unit)
    split_of_unit = deal(by_stratum, ratios, seed)
    lines = {line: split_of_unit[owner[unit]] for line, unit in key.items()}
    return table, lines, split_of_unit


def _row_stratum(table: Table, row: dict[str, str], stratify: str, label_column: str) -> str:
    if stratify == "none":
        return ""
    column = label_column if stratify == "label" else "quality"
    _column(table, column, f"--stratify {stratify} reads it")
    return row.get(column, "")


def write_manifest(table: Table, lines: dict[int, str], out: Path) -> None:
    """The table with its split column set, created exclusively: an existing ``out`` is never replaced."""
    columns = list(table.columns) + ([] if "split" in table.columns else ["split"])
    try:
        write_new_csv(out, columns, ({**row, "split": lines[line]} for line, row in table.rows))
    except FileExistsError:
        raise DataError(
            f"{out} exists: give --out a new file (your manifests are never overwritten)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.split",
        description="Assign subject- or scan-wise train/val/test splits into a new manifest file.",
    )
    parser.add_argument("dir", help="dataset folder")
    parser.add_argument("--ratios", default="0.7,0.15,0.15", help="train,val,test shares (sum 1)")
    parser.add_argument("--by", choices=BY, default="subject", help="unit kept in one split")
    parser.add_argument("--stratify", choices=STRATIFY, default="label", help="balance splits by this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--manifest",
        choices=("clips", "scans", "images"),
        default=None,
        help="manifest to write with new splits (default: clips, else images, else scans, whichever exists)",
    )
    parser.add_argument("--out", required=True, help="the new manifest file (must not exist)")
    args = parser.parse_args(argv)
    root = Path(args.dir).expanduser()
    if not root.is_dir():
        print(f"error: dataset folder {root} does not exist", file=sys.stderr)
        return 2
    try:
        ratios = parse_ratios(args.ratios)
    except ValueError as exc:
        parser.error(str(exc))
    manifest = args.manifest or next(
        (m for m in ("clips", "images", "scans") if (root / MANIFEST_FILES[m]).is_file()), "scans"
    )
    out = Path(args.out).expanduser()
    try:
        if out.exists():
            raise DataError(f"{out} exists: give --out a new file (your manifests are never overwritten)")
        table, lines, units = assign(root, ratios, args.by, args.stratify, args.seed, manifest)
        write_manifest(table, lines, out)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = Counter(units.values())
    rows = Counter(lines.values())
    unit = "subjects" if args.by == "subject" else ("images" if manifest == "images" else "scans")
    print(
        f"wrote {out} ({MANIFEST_FILES[manifest]} with new splits): "
        + ", ".join(f"{s} {counts[s]} {unit} / {rows[s]} rows" for s in SPLITS)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
