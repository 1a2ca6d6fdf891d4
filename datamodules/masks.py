"""Boxes from segmentation masks: a folder of still images + masks becomes ``images.csv`` + ``boxes.csv``.

    python -m datamodules.masks DIR --masks MASKS [--images IMAGES] [--mask-suffix _Annotation]
        [--mode auto|filled|outline] [--plane PLANE] [--ratios 0.7,0.15,0.15] [--seed 0] [--out FILE]
        [--skip-empty]

Zoom-in pretraining needs an approximate box around the main structure of each image (``boxes.csv``, docs/data.md).
Public ultrasound sets ship segmentation masks instead: filled masks (a region) or outline masks (a drawn
contour, e.g. the fetal-head ellipse). Each mask ``<stem><suffix>.<ext>`` in MASKS belongs to the image
``<stem>.<ext'>`` (matched by file name, any image extension, in any sub-folder); its box is

* ``filled``: the bounding box of the largest connected component (8-connectivity, OpenCV
  ``connectedComponentsWithStats``), whole pixels: a component over columns ``a..b`` spans ``[a, b + 1)``;
* ``outline``: the bounding box of the ellipse fitted (``cv2.fitEllipse``) to the outer contour of the
  largest component, so a contour with gaps still gives the whole structure; the same convention (the
  ellipse through the outermost pixel centres, plus half a pixel);
* ``auto`` (default): ``outline`` when the largest component covers less than half of its convex hull (a
  thin contour), else ``filled``.

Boxes are normalised by the mask's size (x / width, y / height; 0, 0 = top-left), the project's box
convention, so a mask stored at another resolution than its image (same aspect ratio) gives the same box.
A mask pixel is "on" above half of the mask's maximum (0/1, 0/255 and JPEG-noisy masks alike).

Without ``DIR/images.csv`` the images of ``--images`` are listed in a new one (role ``train``, plane
``--plane``, splits dealt per image with ``--ratios`` and ``--seed`` as ``python -m datamodules.split``
does); with it, masks are matched to its rows. The boxes go to ``DIR/boxes.csv`` (or ``--out``). Existing
files are never overwritten: an existing output is refused. Empty masks are an error listing them
(``--skip-empty`` writes the others and lists the skipped ones); masks without an image are an error;
images without a mask are listed as a warning.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datamodules.errors import DataError
from datamodules.manifest import MANIFEST_FILES, SPLITS, TableError, read_table, resolve_path, write_new_csv
from datamodules.readers import IMAGE_SUFFIXES
from datamodules.split import deal, parse_ratios

MODES = ("auto", "filled", "outline")
#: ``auto``: a largest component covering less than this share of its convex hull is an outline.
OUTLINE_SOLIDITY = 0.5


class EmptyMaskError(DataError):
    """The mask has no pixel above half its maximum."""


@dataclass(frozen=True)
class MaskBox:
    """A box in normalised coordinates and how it was made (``filled`` or ``outline``)."""

    x0: float
    y0: float
    x1: float
    y1: float
    mode: str


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as bool H×W: pixels above half the maximum (over the colour channels)."""
    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot decode the mask (not an image OpenCV reads)")
    if img.ndim == 3:
        img = img[:, :, :3].max(axis=2)
    img = np.nan_to_num(img.astype(np.float64))
    peak = float(img.max(initial=0.0))
    return img > peak / 2.0 if peak > 0 else np.zeros(img.shape, bool)


def mask_box(mask: np.ndarray, mode: str = "auto") -> MaskBox:
    """The normalised box of a bool mask (see the module docstring); :class:`EmptyMaskError` when it is empty."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    mask = np.asarray(mask, bool)
    H, W = mask.shape
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        raise EmptyMaskError("empty mask")
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == k).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate(contours).reshape(-1, 2)
    if mode == "auto":
        hull = cv2.contourArea(cv2.convexHull(points))
        mode = "outline" if hull > 0 and stats[k, cv2.CC_STAT_AREA] < OUTLINE_SOLIDITY * hull else "filled"
    if mode == "outline" and len(points) >= 5:
        (cx, cy), (w, h), angle = cv2.fitEllipse(points)
        t = math.radians(angle)
        a, b = w / 2.0, h / 2.0
        ex = math.hypot(a * math.cos(t), b * math.sin(t))
        ey = math.hypot(a * math.sin(t), b * math.cos(t))
        # pixel centres are integers in OpenCV; a pixel j covers [j, j + 1) in box coordinates
        x0, x1 = max(cx - ex, 0.0), min(cx + ex + 1.0, float(W))
        y0, y1 = max(cy - ey, 0.0), min(cy + ey + 1.0, float(H))
        return MaskBox(x0 / W, y0 / H, x1 / W, y1 / H, "outline")
    x, y, w, h = (int(v) for v in stats[k, :4])
    return MaskBox(x / W, y / H, (x + w) / W, (y + h) / H, "filled")  # (an outline of < 5 points: its box)


def _files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden ones skipped), sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _written(root: Path, path: Path) -> str:
    """A path as a manifest cell: relative to the dataset root (posix) when inside it, else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot decode the image")
    return img.shape[0], img.shape[1]


@dataclass
class Result:
    """What :func:`boxes_from_masks` found: the rows to write and every problem, by kind."""

    images: list[dict[str, str]]  # images.csv rows to write (empty when images.csv exists)
    boxes: list[dict[str, str]]
    errors: list[str]
    empty: list[str]  # masks with no pixel on
    without_mask: list[str]  # images with no mask


def boxes_from_masks(
    root: str | os.PathLike,
    masks: str | os.PathLike,
    images: str | os.PathLike | None = None,
    suffix: str = "",
    mode: str = "auto",
    plane: str = "unknown",
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Result:
    """Match masks to images and compute their boxes (see the module docstring); writes nothing."""
    root, mask_dir = Path(root), Path(masks)
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not mask_dir.is_dir():
        raise DataError(f"mask folder {mask_dir} does not exist")
    images_csv = root / MANIFEST_FILES["images"]
    errors: list[str] = []
    # stem -> (image_id as written in images.csv, path)
    by_stem: dict[str, list[tuple[str, Path]]] = {}
    new_images: list[str] = []
    if images_csv.exists():
        try:
            table = read_table(images_csv)
        except TableError as exc:
            raise DataError(f"{images_csv}: {exc}") from None
        if "image" not in table.columns:
            raise DataError(f"{images_csv}: no 'image' column (header has: {', '.join(table.columns)})")
        for _, row in table.rows:
            if row.get("image"):
                path = resolve_path(root, row["image"])
                by_stem.setdefault(path.stem, []).append((row["image"], path))
    else:
        if images is None:
            raise DataError(
                f"{root} has no images.csv: give --images FOLDER (the images the masks belong to) and it is "
                "written from that folder"
            )
        image_dir = Path(images)
        if not image_dir.is_dir():
            raise DataError(f"image folder {image_dir} does not exist")
        same = image_dir.resolve() == mask_dir.resolve()
        if same and not suffix:
            raise DataError(
                f"images and masks are both in {image_dir}: give --mask-suffix (e.g. _Annotation) to tell "
                "a mask <stem><suffix>.png from its image <stem>.png"
            )
        for path in _files(image_dir):
            if same and path.stem.endswith(suffix):
                continue  # a mask
            image_id = _written(root, path)
            by_stem.setdefault(path.stem, []).append((image_id, path))
            new_images.append(image_id)
    for stem, found in sorted(by_stem.items()):
        if len(found) > 1:
            errors.append(
                f"{len(found)} images share the file name stem {stem!r} ({', '.join(i for i, _ in found)}): "
                "masks are matched by file name, so rename them"
            )
    used: set[str] = set()
    boxes: list[dict[str, str]] = []
    empty: list[str] = []
    mask_files = [p for p in _files(mask_dir) if p.stem.endswith(suffix)]
    if not mask_files:
        raise DataError(
            f"no mask in {mask_dir}"
            + (f" whose name ends with {suffix!r}" if suffix else "")
            + " (image files)"
        )
    unmatched: list[str] = []
    for mask_path in mask_files:
        stem = mask_path.stem[: len(mask_path.stem) - len(suffix)] if suffix else mask_path.stem
        matches = by_stem.get(stem)
        if not matches:
            unmatched.append(str(mask_path))
            continue
        image_id, image_path = matches[0]
        if image_id in used:
            errors.append(f"{mask_path}: a second mask for image {image_id}")
            continue
        used.add(image_id)
        try:
            mask = read_mask(mask_path)
            ih, iw = _size(image_path)
        except DataError as exc:
            errors.append(str(exc))
            continue
        mh, mw = mask.shape
        if abs(mw / mh - iw / ih) > 0.01 * (iw / ih):
            errors.append(
                f"{mask_path}: mask is {mw}x{mh} but its image {image_path} is {iw}x{ih} (another aspect ratio: "
                "the wrong mask, or a cropped one)"
            )
            continue
        try:
            box = mask_box(mask, mode)
        except EmptyMaskError:
            empty.append(str(mask_path))
            continue
        boxes.append(
            {
                "image": image_id,
                "x0": f"{box.x0:.6f}",
                "y0": f"{box.y0:.6f}",
                "x1": f"{box.x1:.6f}",
                "y1": f"{box.y1:.6f}",
                "mask": _written(root, mask_path),
                "mode": box.mode,
            }
        )
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (
            f", ... and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        )
        where = "in images.csv" if images_csv.exists() else f"in {images}"
        errors.append(
            f"{len(unmatched)} mask(s) without an image {where} (a mask <stem>{suffix}.<ext> belongs to the "
            f"image <stem>.<ext>; check --mask-suffix): {shown}"
        )
    rows: list[dict[str, str]] = []
    if new_images:
        split_of = deal({"": new_images}, ratios, seed)
        rows = [{"image": i, "plane": plane, "split": split_of[i], "role": "train"} for i in new_images]
    without = sorted(i for found in by_stem.values() for i, _ in found if i not in used)
    return Result(rows, boxes, errors, empty, without)


def _listing(items: list[str], first: int = 10) -> str:
    more = f"\n  ... and {len(items) - first} more" if len(items) > first else ""
    return "".join(f"\n  {i}" for i in items[:first]) + more


def _write(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    write_new_csv(path, columns, rows, lineterminator="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.masks",
        description="Write boxes.csv (and images.csv when missing) from a folder of segmentation masks.",
    )
    parser.add_argument("dir", help="dataset folder: the manifests are written here")
    parser.add_argument("--masks", required=True, help="folder of mask images (searched recursively)")
    parser.add_argument(
        "--images", default=None, help="folder of the images (needed when DIR has no images.csv)"
    )
    parser.add_argument(
        "--mask-suffix", default="", help="mask file name = image stem + this + extension (e.g. _Annotation)"
    )
    parser.add_argument(
        "--mode", choices=MODES, default="auto", help="filled region, outline (ellipse fit) or auto"
    )
    parser.add_argument("--plane", default="unknown", help="plane of the images in a new images.csv")
    parser.add_argument(
        "--ratios", default="0.7,0.15,0.15", help="train,val,test shares for a new images.csv"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    parser.add_argument(
        "--out", default=None, help="boxes file to write (default DIR/boxes.csv; must not exist)"
    )
    parser.add_argument(
        "--skip-empty", action="store_true", help="write the other boxes when some masks are empty"
    )
    args = parser.parse_args(argv)
    root = Path(args.dir).expanduser()
    try:
        ratios = parse_ratios(args.ratios)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out).expanduser() if args.out else root / MANIFEST_FILES["boxes"]
    images_csv = root / MANIFEST_FILES["images"]
    try:
        if not root.is_dir():
            raise DataError(
                f"dataset folder {root} does not exist (create it; the manifests are written there)"
            )
        if out.exists():
            raise DataError(f"{out} exists: give --out a new file (your files are never overwritten)")
        result = boxes_from_masks(
            root, args.masks, args.images, args.mask_suffix, args.mode, args.plane, ratios, args.seed
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in result.errors:
        print(f"error: {line}", file=sys.stderr)
    if result.empty and not args.skip_empty:
        print(
            f"error: {len(result.empty)} empty mask(s) (no pixel on): give --skip-empty to write the other "
            f"boxes without them{_listing(result.empty)}",
            file=sys.stderr,
        )
    if result.errors or (result.empty and not args.skip_empty):
        print("nothing written", file=sys.stderr)
        return 1
    if result.empty:
        print(
            f"warning: skipped {len(result.empty)} empty mask(s) (no box for them):{_listing(result.empty)}"
        )
    if result.without_mask:
        print(
            f"warning: {len(result.without_mask)} image(s) have no mask (listed in images.csv, no box):"
            f"{_listing(result.without_mask)}"
        )
    if not result.boxes:
        print("error: no box to write", file=sys.stderr)
        return 1
    if not result.images:
        print(f"{images_csv} exists: masks matched to its rows (it is not rewritten; --images is not used)")
    else:
        _write(images_csv, ["image", "plane", "split", "role"], result.images)
        counts = {s: sum(r["split"] == s for r in result.images) for s in SPLITS}
        print(
            f"wrote {images_csv} ({len(result.images)} images: "
            + ", ".join(f"{s} {n}" for s, n in counts.items())
            + ")"
        )
    _write(out, ["image", "x0", "y0", "x1", "y1", "mask", "mode"], result.boxes)
    modes = {m: sum(b["mode"] == m for b in result.boxes) for m in ("filled", "outline")}
    print(f"wrote {out} ({len(result.boxes)} boxes: {modes['filled']} filled, {modes['outline']} outline)")
    if out == root / MANIFEST_FILES["boxes"]:
        print(f"next: python -m datamodules.validate {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
