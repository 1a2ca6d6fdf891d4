"""Dataset validator (datamodules/validate.py): one valid tiny dataset, each test corrupts one thing."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from datamodules.validate import (
    DatasetValidationError,
    Problem,
    ValidationReport,
    load_dataset,
    main,
    validate_dataset,
)

FPS = 10
N_FRAMES = 30  # 3 s per video
SR = 8000
ALL = ("scans", "clips", "images", "pairs", "boxes")
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ builders
def write_video(path: Path, n: int = N_FRAMES, fps: int = FPS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (32, 32))
    assert writer.isOpened()
    rng = np.random.default_rng(len(str(path)))
    for _ in range(n):
        writer.write(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    writer.release()


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def gaze_rows(seconds: float = N_FRAMES / FPS, step: float = 0.05) -> list[list]:
    rows = []
    for i in range(round(seconds / step)):
        t = i * step
        rows.append([f"{t:.3f}", f"{0.3 + 0.4 * (i % 7) / 7:.3f}", f"{0.6 - 0.3 * (i % 5) / 5:.3f}"])
    rows[10][1] = rows[10][2] = ""  # a blink
    return rows


def write_wav(path: Path, seconds: float = N_FRAMES / FPS, amplitude: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(str(path), (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((16, 16), value, np.uint8)
    img[4:12, 4:12] = 255 - value
    assert cv2.imwrite(str(path), img)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def set_cell(root: Path, file: str, line: int, column: str, value) -> None:
    """Set one cell; ``line`` is the editor line (header = 1)."""
    rows = read_rows(root / file)
    rows[line - 1][rows[0].index(column)] = str(value)
    write_csv(root / file, rows[0], rows[1:])


def append_row(root: Path, file: str, cells: dict) -> int:
    rows = read_rows(root / file)
    rows.append([str(cells.get(c, "")) for c in rows[0]])
    write_csv(root / file, rows[0], rows[1:])
    return len(rows)  # its line number


def find(problems: list[Problem], file: str, row: int | None, column: str | None) -> Problem:
    hits = [p for p in problems if (p.file, p.row, p.column) == (file, row, column)]
    assert hits, f"no problem at {file}:{row}: {column}; got:\n" + "\n".join(map(str, problems))
    assert len(hits) == 1, "\n".join(map(str, hits))
    return hits[0]


def assert_only_error(
    report: ValidationReport, file: str, row: int | None, column: str | None, fragment: str
):
    """The report's errors are exactly this one (plus the rows depending on it, given by caller)."""
    p = find(report.errors, file, row, column)
    assert fragment in p.message, str(p)
    return p


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "ds"
    scans = []
    for sid, fps, split in (("s1", "", "train"), ("s2", "10", "val"), ("s3", "", "")):
        write_video(root / "videos" / f"{sid}.avi")
        write_csv(root / "gaze" / f"{sid}.csv", ["time_s", "x", "y"], gaze_rows())
        write_wav(root / "audio" / f"{sid}.wav")
        scans.append([sid, f"videos/{sid}.avi", f"gaze/{sid}.csv", f"audio/{sid}.wav", fps, split])
    write_csv(root / "scans.csv", ["scan_id", "video", "gaze", "audio", "fps", "split"], scans)
    write_csv(
        root / "clips.csv",
        ["clip_id", "scan_id", "start_frame", "end_frame", "label", "split", "quality"],
        [
            ["c1", "s1", 0, 10, "tv", "train", 1],  # line 2
            ["c2", "s1", 10, 30, "tc", "train", 0],  # line 3
            ["c3", "s2", 0, 30, "tv", "val", ""],  # line 4
            ["c4", "s2", 5, 25, "tc", "val", 1],  # line 5
            ["c5", "s3", 0, 20, "tv", "test", 0],  # line 6
            ["c6", "s3", 8, 28, "tc", "test", ""],  # line 7
        ],
    )
    for i, name in enumerate("abcdef"):
        write_png(root / "images" / f"{name}.png", 20 * i)
    write_csv(
        root / "images.csv",
        ["image", "plane", "split", "role", "sonographer"],
        [
            ["images/a.png", "tv", "train", "train", "A"],  # line 2
            ["images/b.png", "tc", "train", "train", "B"],  # line 3
            ["images/c.png", "tv", "test", "standard", ""],  # line 4
            ["images/d.png", "tv", "test", "train", "A"],  # line 5
            ["images/e.png", "tc", "test", "train", "B"],  # line 6
            ["images/f.png", "tc", "test", "train", "B"],  # line 7
        ],
    )
    write_csv(
        root / "pairs.csv",
        ["better", "worse", "plane", "split"],
        [["images/c.png", "images/d.png", "tv", "test"], ["images/e.png", "images/f.png", "tc", ""]],
    )
    write_csv(
        root / "boxes.csv",
        ["scan_id", "frame", "x0", "y0", "x1", "y1"],
        [["s1", 5, 0.1, 0.2, 0.6, 0.7], ["s2", 29, 0, 0, 1, 1]],
    )
    return root


@pytest.fixture
def ds(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(template, root)
    return root


def check(root: Path, **kw) -> ValidationReport:
    kw.setdefault("require", ALL)
    return validate_dataset(root, **kw)


# ------------------------------------------------------------------------------------------- valid
def test_valid_dataset_has_no_problems(ds):
    report = check(ds)
    assert report.ok and report.errors == [] and report.warnings == [], report.format()
    m = report.manifests
    assert list(m.scans) == ["s1", "s2", "s3"]
    assert [c.clip_id for c in m.clips_in("val")] == ["c3", "c4"]
    assert len(m.images) == 6 and len(m.pairs) == 2 and len(m.boxes) == 2
    assert m.pairs[1].split == "test"
    assert {k: v.frame_count for k, v in m.video_info.items()} == {"s1": 30, "s2": 30, "s3": 30}
    assert m.fps("s1") == pytest.approx(10.0) and m.fps("s2") == 10.0
    assert m.scan_split("s3") == "test"
    assert report.format().splitlines()[-1].startswith("OK: ")
    report.raise_if_errors()


def test_problem_str_and_error_message(ds):
    p = Problem("clips.csv", 12, "end_frame", "900 is past the end of videos/s3.avi (850 frames)", "error")
    assert str(p) == "clips.csv:12: end_frame: 900 is past the end of videos/s3.avi (850 frames)"
    assert str(Problem("clips.csv", None, None, "required manifest is missing")) == (
        "clips.csv: required manifest is missing"
    )
    err = DatasetValidationError([p], ds)
    assert str(err).splitlines() == [f"1 error in dataset {ds}:", f"  {p}"]
    assert err.problems == [p] and isinstance(err, ValueError)


# --------------------------------------------------------------------------------------- errors
def test_missing_media_file_and_dependent_rows(ds):
    (ds / "videos" / "s2.avi").unlink()
    report = check(ds)
    assert_only_error(report, "scans.csv", 3, "video", "video file not found: videos/s2.avi")
    # rows depending on the invalid scan are dropped, each with its own line
    for file, row in (("clips.csv", 4), ("clips.csv", 5), ("boxes.csv", 3)):
        assert find(report.errors, file, row, "scan_id").message == "scan s2 is invalid (scans.csv:3)"
    assert len(report.errors) == 4
    assert "s2" not in report.manifests.scans
    assert sorted(report.manifests.clips) == ["c1", "c2", "c5", "c6"]


def test_missing_required_manifest_and_columns(ds):
    (ds / "pairs.csv").unlink()
    rows = read_rows(ds / "boxes.csv")
    write_csv(ds / "boxes.csv", ["scan_id", "frame", "x0", "y0"], [r[:4] for r in rows[1:]])
    report = check(ds)
    assert_only_error(report, "pairs.csv", None, None, "required manifest is missing")
    assert_only_error(report, "boxes.csv", None, None, "missing required columns: x1, y1")
    assert len(report.errors) == 2
    # not required -> not an error
    assert check(ds, require=("scans", "clips", "images", "boxes")).errors == [report.errors[1]]


def test_missing_gaze_audio_and_image_files(ds):
    (ds / "gaze" / "s1.csv").unlink()
    (ds / "audio" / "s3.wav").unlink()
    (ds / "images" / "b.png").unlink()
    report = check(ds, deep=False)
    assert_only_error(report, "scans.csv", 2, "gaze", "gaze file not found: gaze/s1.csv")
    assert_only_error(report, "scans.csv", 4, "audio", "audio file not found: audio/s3.wav")
    assert_only_error(report, "images.csv", 3, "image", "image file not found: images/b.png")


def test_unreadable_video(ds):
    (ds / "videos" / "s1.avi").write_bytes(os.urandom(4000))
    report = check(ds)
    assert_only_error(report, "scans.csv", 2, "video", "videos/s1.avi: cannot open video")
    # shallow validation opens no media
    assert check(ds, deep=False).ok


def test_truncated_video(ds):
    path = ds / "videos" / "s3.avi"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = check(ds)
    p = assert_only_error(report, "scans.csv", 4, "video", "truncated or corrupt video")
    assert p.message.startswith("videos/s3.avi: frame ")
    assert {(q.file, q.row) for q in report.errors} == {("scans.csv", 4), ("clips.csv", 6), ("clips.csv", 7)}


def test_frame_range_past_the_end(ds):
    set_cell(ds, "clips.csv", 5, "end_frame", 31)
    report = check(ds)
    assert_only_error(report, "clips.csv", 5, "end_frame", "31 is past the end of videos/s2.avi (30 frames)")
    assert len(report.errors) == 1
    assert "c4" not in report.manifests.clips


def test_frame_values(ds):
    set_cell(ds, "clips.csv", 2, "start_frame", "abc")
    set_cell(ds, "clips.csv", 3, "start_frame", -1)
    set_cell(ds, "clips.csv", 4, "start_frame", 30)
    set_cell(ds, "clips.csv", 5, "quality", 2)
    report = check(ds)
    assert_only_error(report, "clips.csv", 2, "start_frame", "'abc' is not an integer")
    assert_only_error(report, "clips.csv", 3, "start_frame", "-1 is negative")
    assert_only_error(report, "clips.csv", 4, "end_frame", "end_frame 30 is not after start_frame 30")
    assert_only_error(report, "clips.csv", 5, "quality", "'2' is not 1, 0 or empty")
    assert len(report.errors) == 4


def test_gaze_outside_unit_square(ds):
    rows = read_rows(ds / "gaze" / "s1.csv")
    rows[4][1] = "1.5"  # line 5
    rows[8][2] = "-0.2"  # line 9
    write_csv(ds / "gaze" / "s1.csv", rows[0], rows[1:])
    report = check(ds)
    assert_only_error(
        report, "scans.csv", 2, "gaze", "gaze/s1.csv: 2 samples outside [0, 1] (first on line 5: x=1.5"
    )
    assert len(report.errors) == 4  # + clips c1, c2 and the box of s1


def test_gaze_without_needed_columns(ds):
    rows = read_rows(ds / "gaze" / "s2.csv")
    write_csv(ds / "gaze" / "s2.csv", ["t", "x", "y"], rows[1:])
    report = check(ds)
    assert_only_error(report, "scans.csv", 3, "gaze", "gaze/s2.csv: missing column 'time_s'")


def test_gaze_non_numeric_and_decreasing_time(ds):
    rows = read_rows(ds / "gaze" / "s1.csv")
    rows[6][1] = "left"  # line 7
    write_csv(ds / "gaze" / "s1.csv", rows[0], rows[1:])
    rows = read_rows(ds / "gaze" / "s2.csv")
    rows[3][0], rows[4][0] = rows[4][0], rows[3][0]  # lines 4, 5 swapped
    write_csv(ds / "gaze" / "s2.csv", rows[0], rows[1:])
    report = check(ds)
    assert_only_error(report, "scans.csv", 2, "gaze", "gaze/s1.csv:7: x: not a number: 'left'")
    assert_only_error(report, "scans.csv", 3, "gaze", "gaze/s2.csv: time_s decreases 1 time (first on line 5")


def test_zero_length_audio(ds):
    sf.write(str(ds / "audio" / "s2.wav"), np.zeros(0, np.float32), SR)
    (ds / "audio" / "s3.wav").write_bytes(b"")
    report = check(ds)
    assert_only_error(report, "scans.csv", 3, "audio", "audio/s2.wav: zero-length audio")
    assert_only_error(report, "scans.csv", 4, "audio", "audio/s3.wav: zero-length audio file (0 bytes)")


def test_undecodable_audio(ds):
    (ds / "audio" / "s1.wav").write_bytes(b"RIFF" + os.urandom(2000))
    report = check(ds)
    assert_only_error(report, "scans.csv", 2, "audio", "audio/s1.wav: cannot decode audio")


def test_image_that_does_not_decode(ds):
    (ds / "images" / "d.png").write_bytes(b"\x89PNG garbage" * 10)
    report = check(ds)
    assert_only_error(report, "images.csv", 5, "image", "images/d.png: cannot decode image")
    # the pair naming it is dropped with its own line
    assert_only_error(report, "pairs.csv", 2, "worse", "image 'images/d.png' is invalid (images.csv:5)")
    assert len(report.errors) == 2


def test_duplicate_ids(ds):
    line_s = append_row(ds, "scans.csv", {"scan_id": "s1", "video": "videos/s2.avi"})
    line_c = append_row(
        ds,
        "clips.csv",
        {"clip_id": "c3", "scan_id": "s1", "start_frame": 0, "end_frame": 5, "label": "tv", "split": "train"},
    )
    line_i = append_row(
        ds, "images.csv", {"image": "./images/a.png", "plane": "tv", "split": "train", "role": "train"}
    )
    report = check(ds)
    assert_only_error(report, "scans.csv", line_s, "scan_id", "duplicate scan_id 's1' (first on line 2)")
    assert_only_error(report, "clips.csv", line_c, "clip_id", "duplicate clip_id 'c3' (first on line 4)")
    assert_only_error(
        report, "images.csv", line_i, "image", "duplicate image './images/a.png' (first on line 2"
    )
    assert len(report.errors) == 3
    assert report.manifests.clips["c3"].scan_id == "s2"  # the first one is kept


def test_unknown_split_and_role(ds):
    set_cell(ds, "clips.csv", 6, "split", "tset")
    set_cell(ds, "images.csv", 2, "role", "reference")
    set_cell(ds, "pairs.csv", 2, "split", "train")
    report = check(ds)
    assert_only_error(report, "clips.csv", 6, "split", "unknown split 'tset' (allowed: train, val, test)")
    assert_only_error(report, "images.csv", 2, "role", "unknown role 'reference' (allowed: train, standard)")
    assert_only_error(report, "pairs.csv", 2, "split", "unknown pair split 'train' (allowed: val, test)")
    assert len(report.errors) == 3


def test_scan_in_two_splits(ds):
    set_cell(ds, "clips.csv", 7, "split", "val")  # s3 has no split in scans.csv: clips disagree
    set_cell(ds, "clips.csv", 3, "split", "val")  # s1 is 'train' in scans.csv
    report = check(ds)
    assert_only_error(
        report, "clips.csv", 7, "split", "scan s3 is in two splits: 'val' here, 'test' on line 6"
    )
    assert_only_error(
        report, "clips.csv", 3, "split", "clip split 'val' disagrees with scan s1's split 'train'"
    )
    assert len(report.errors) == 2


def test_clip_of_unknown_scan(ds):
    set_cell(ds, "clips.csv", 2, "scan_id", "s9")
    report = check(ds)
    assert_only_error(report, "clips.csv", 2, "scan_id", "scan 's9' is not in scans.csv")


def test_pair_naming_missing_image(ds):
    set_cell(ds, "pairs.csv", 2, "better", "images/zz.png")
    set_cell(ds, "pairs.csv", 3, "worse", "images/e.png")
    report = check(ds)
    assert_only_error(report, "pairs.csv", 2, "better", "image 'images/zz.png' is not in images.csv")
    assert_only_error(report, "pairs.csv", 3, "worse", "better and worse are the same image")
    assert len(report.errors) == 2


def test_bad_boxes(ds):
    set_cell(ds, "boxes.csv", 2, "x0", 0.8)  # x0 0.8 >= x1 0.6
    set_cell(ds, "boxes.csv", 3, "frame", 30)  # past the end (30 frames)
    append_row(ds, "boxes.csv", {"scan_id": "s1", "frame": 0, "x0": 0, "y0": 0.1, "x1": 1.5, "y1": 0.2})
    append_row(ds, "boxes.csv", {"scan_id": "s7", "frame": 0, "x0": 0, "y0": 0.1, "x1": 0.5, "y1": 0.2})
    report = check(ds)
    assert_only_error(report, "boxes.csv", 2, "x1", "x0 0.8 >= x1 0.6")
    assert_only_error(
        report, "boxes.csv", 3, "frame", "frame 30 is past the end of videos/s2.avi (30 frames)"
    )
    assert_only_error(report, "boxes.csv", 4, "x1", "1.5 is outside [0, 1]")
    assert_only_error(report, "boxes.csv", 5, "scan_id", "scan 's7' is not in scans.csv")
    assert len(report.errors) == 4 and report.manifests.boxes == []


def test_all_problems_are_reported_together(ds):
    set_cell(ds, "clips.csv", 5, "end_frame", 99)
    (ds / "videos" / "s3.avi").write_bytes(b"not a video")
    set_cell(ds, "clips.csv", 6, "label", "")
    with pytest.raises(DatasetValidationError) as ei:
        load_dataset(ds, require=ALL)
    err = ei.value
    lines = str(err).splitlines()
    assert lines[0] == f"4 errors in dataset {ds.resolve()}:"
    where = [(p.file, p.row, p.column) for p in err.problems]
    assert where == [
        ("scans.csv", 4, "video"),
        ("clips.csv", 5, "end_frame"),
        ("clips.csv", 6, "label"),  # (already dropped, so its scan is not checked)
        ("clips.csv", 7, "scan_id"),
    ]
    assert lines[1:] == [f"  {p}" for p in err.problems]


def test_two_corruptions_two_errors_in_one_raise(ds):
    set_cell(ds, "clips.csv", 2, "split", "training")
    set_cell(ds, "boxes.csv", 2, "y1", 0.1)
    with pytest.raises(DatasetValidationError) as ei:
        load_dataset(ds, require=ALL)
    assert [str(p) for p in ei.value.problems] == [
        "clips.csv:2: split: unknown split 'training' (allowed: train, val, test)",
        "boxes.csv:2: y1: y0 0.2 >= y1 0.1 (need y0 < y1)",
    ]


# --------------------------------------------------------------------------------------- warnings
def test_warnings_do_not_fail(ds, caplog):
    write_wav(ds / "audio" / "s1.wav", amplitude=0.0)  # silent
    rows = read_rows(ds / "gaze" / "s2.csv")
    for r in rows[1:]:
        if 0.3 <= float(r[0]) <= 2.8:
            r[1] = r[2] = "nan"
    write_csv(ds / "gaze" / "s2.csv", rows[0], rows[1:])  # drop-out 0.25 .. 2.85 s
    set_cell(ds, "clips.csv", 2, "end_frame", 3)  # 0.3 s clip
    write_wav(ds / "audio" / "s3.wav", seconds=1.0)  # 1 s of audio for a 3 s video
    set_cell(ds, "scans.csv", 4, "gaze", "")

    report = check(ds)
    assert report.ok, report.format()
    assert "silent audio" in find(report.warnings, "scans.csv", 2, "audio").message
    assert "gaze drop-out of 2.60 s" in find(report.warnings, "scans.csv", 3, "gaze").message
    assert "shorter than 0.5 s" in find(report.warnings, "clips.csv", 2, "end_frame").message
    assert "much shorter than the video" in find(report.warnings, "scans.csv", 4, "audio").message
    assert "no gaze for scan s3" in find(report.warnings, "scans.csv", 4, "gaze").message
    assert len(report.warnings) == 5

    caplog.set_level(logging.WARNING, logger="sonolab.data")
    m = load_dataset(ds, require=ALL)
    assert len(m.clips) == 6 and m.clips["c1"].end_frame == 3
    assert sum("silent audio" in r.getMessage() for r in caplog.records) == 1


def test_dataset_level_warnings(ds):
    set_cell(ds, "images.csv", 4, "role", "train")  # no standard image left
    set_cell(ds, "clips.csv", 6, "label", "tc")  # test split: one class only
    set_cell(ds, "pairs.csv", 2, "plane", "tc")
    report = check(ds)
    assert report.ok, report.format()
    assert "standard-plane set is empty" in find(report.warnings, "images.csv", None, "role").message
    assert (
        "split 'test' has fewer than 2 classes (tc)"
        in find(report.warnings, "clips.csv", None, "label").message
    )
    plane = [p for p in report.warnings if p.file == "pairs.csv"]
    assert [(p.row, p.column) for p in plane] == [(2, "plane"), (2, "plane")]
    assert "pair plane 'tc' differs from better image 'images/c.png'" in plane[0].message


# ------------------------------------------------------------------------------------ skip_invalid
def test_skip_invalid_drops_exactly_the_bad_rows(ds, caplog):
    set_cell(ds, "clips.csv", 5, "end_frame", 31)  # c4
    (ds / "audio" / "s3.wav").write_bytes(b"junk")  # s3 -> c5, c6
    set_cell(ds, "images.csv", 6, "split", "?")  # e.png -> pair on line 3
    caplog.set_level(logging.WARNING, logger="sonolab.data")
    m = load_dataset(ds, require=ALL, skip_invalid=True)
    assert sorted(m.scans) == ["s1", "s2"]
    assert sorted(m.clips) == ["c1", "c2", "c3"]
    assert sorted(m.images) == [
        "images/a.png",
        "images/b.png",
        "images/c.png",
        "images/d.png",
        "images/f.png",
    ]
    assert [p.row for p in m.pairs] == [2]
    assert [b.row for b in m.boxes] == [2, 3]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping invalid row")]
    assert [s.split(" ")[3].rstrip(":") for s in skipped] == [
        "scans.csv:4",
        "clips.csv:5",
        "clips.csv:6",
        "clips.csv:7",
        "images.csv:6",
        "pairs.csv:3",
    ]
    assert any("skipped 6 rows" in r.getMessage() for r in caplog.records)


def test_skip_invalid_still_fails_on_a_missing_required_manifest(ds):
    (ds / "clips.csv").unlink()
    with pytest.raises(DatasetValidationError, match=r"clips\.csv: required manifest is missing"):
        load_dataset(ds, skip_invalid=True)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_exit_codes(ds, tmp_path, capsys):
    assert main([str(ds), "--require", "scans,clips,images"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("OK: ") and "3 scans, 6 clips, 6 images, 2 pairs, 2 boxes" in out[-1]

    line = append_row(
        ds,
        "clips.csv",
        {"clip_id": "c7", "scan_id": "s2", "start_frame": 0, "end_frame": 31, "label": "tv", "split": "val"},
    )
    set_cell(ds, "clips.csv", 2, "end_frame", 3)
    assert main([str(ds)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"error: clips.csv:{line}: end_frame: 31 is past the end of videos/s2.avi (30 frames)",
        "warning: clips.csv:2: end_frame: clip is 0.30 s long (3 frames at 10 fps), shorter than 0.5 s",
        out[-1],
    ]
    assert out[-1].startswith("FAILED: ") and "1 error, 1 warning" in out[-1]
    assert main([str(ds), "--shallow"]) == 0  # frame counts are not known without opening media

    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_as_module(ds):
    (ds / "images" / "a.png").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "datamodules.validate", str(ds), "--require", "images", "--shallow"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "error: images.csv:2: image: image file not found: images/a.png" in proc.stdout


# ------------------------------------------------------------------ faults of issue 12 (docs/faults.md)
def test_nan_audio_is_an_error_naming_the_sample(ds):
    """A float WAV with NaN samples would make every log-mel feature of the scan NaN (peaks used nanmax)."""
    wav = (0.1 * np.sin(np.arange(3 * SR) / 10)).astype(np.float32)
    wav[100:110] = np.nan
    sf.write(str(ds / "audio" / "s1.wav"), wav, SR, subtype="FLOAT")
    report = check(ds)
    p = assert_only_error(report, "scans.csv", 2, "audio", "audio/s1.wav: 10 samples of 24000 are NaN")
    assert "first at sample 100, 0.01 s" in p.message and "re-export the audio" in p.message


def test_float_audio_peaking_far_above_one_is_a_warning(ds):
    sf.write(str(ds / "audio" / "s1.wav"), np.full(3 * SR, 50.0, np.float32), SR, subtype="FLOAT")
    report = check(ds)
    assert report.ok, report.format()
    p = find(report.warnings, "scans.csv", 2, "audio")
    assert "float samples peak at 50, outside [-1, 1]" in p.message and "rescale" in p.message


def test_empty_val_split_is_an_error(ds):
    for line in (4, 5):  # c3, c4: the val clips
        set_cell(ds, "clips.csv", line, "split", "test")
    set_cell(ds, "scans.csv", 3, "split", "test")  # s2
    report = check(ds)
    p = assert_only_error(report, "clips.csv", None, "split", "the 'val' split has no valid clip or scan")
    assert "(valid rows per split: test 4, train 2)" in p.message and "--splits test" in p.message
    assert len(report.errors) == 1
    with pytest.raises(DatasetValidationError, match="'val' split has no valid clip"):
        load_dataset(ds, require=ALL)
    assert check(ds, splits="train,test").ok  # a dataset meant for testing only
    assert main([str(ds), "--splits", "train"]) == 0


def test_empty_train_split_of_images_is_an_error(ds):
    for line in (2, 3):
        set_cell(ds, "images.csv", line, "split", "val")
    p = assert_only_error(
        check(ds), "images.csv", None, "split", "the 'train' split has no valid role-'train'"
    )
    assert "--splits test" in p.message


def test_split_emptied_by_skip_invalid_is_an_error(ds):
    """Rows with errors explain an empty split; skipping them must not leave fit without val data."""
    (ds / "videos" / "s2.avi").unlink()  # the only val scan
    report = check(ds)
    assert all(p.column != "split" for p in report.errors), report.format()  # the row errors say why
    with pytest.raises(DatasetValidationError, match=r"'val' split has no valid clip.*after skipping"):
        load_dataset(ds, require=ALL, skip_invalid=True)


def test_gaze_twice_as_long_as_the_video_is_a_warning(ds):
    write_csv(ds / "gaze" / "s1.csv", ["time_s", "x", "y"], gaze_rows(seconds=6.0))
    report = check(ds)
    assert report.ok, report.format()
    p = find(report.warnings, "scans.csv", 2, "gaze")
    assert "gaze runs to 5.95 s but the video is 3.00 s (2.0x)" in p.message
    assert "wrong gaze file or fps" in p.message


def test_gaze_in_milliseconds_is_an_error_not_a_dropout_warning(ds):
    rows = gaze_rows()
    for r in rows:
        r[0] = f"{float(r[0]) * 1000:g}"
    write_csv(ds / "gaze" / "s1.csv", ["time_s", "x", "y"], rows)
    report = check(ds)
    p = assert_only_error(report, "scans.csv", 2, "gaze", "time_s looks like milliseconds")
    assert "last sample is at 2950" in p.message and "divide by 1000" in p.message
    assert not any("drop-out" in w.message for w in report.warnings), report.format()


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_path_outside_the_dataset_is_never_quoted(ds, tmp_path, how):
    """``../../etc/passwd`` as a gaze file: rejected without echoing a byte of it."""
    secret = tmp_path / "secret.csv"
    secret.write_text("root:SECRET:0:0,line\nSECRET2,1,2\n")
    written = "../secret.csv" if how == "relative" else str(secret)
    set_cell(ds, "scans.csv", 2, "gaze", written)
    report = check(ds)
    p = find(report.errors, "scans.csv", 2, "gaze")
    assert "missing columns 'time_s', 'x', 'y'" in p.message and "not shown" in p.message
    assert "SECRET" not in report.format()
    # a file inside the dataset is quoted, to help fix it
    (ds / "gaze" / "s2.csv").write_text("t,x,y\n0,0.5,0.5\n")
    assert "(found t, x, y)" in find(check(ds).errors, "scans.csv", 3, "gaze").message


def test_outside_gaze_with_bad_cells_is_not_quoted(ds, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("time_s,x,y\n0,SECRET,0.5\n")
    set_cell(ds, "scans.csv", 2, "gaze", str(secret))
    report = check(ds)
    assert "x: not a number" in find(report.errors, "scans.csv", 2, "gaze").message
    assert "SECRET" not in report.format()


def test_unknown_require_or_split_option_is_a_usage_error(ds, capsys):
    for option in (["--splits", "train,bogus"], ["--require", "scans,videos"]):
        with pytest.raises(SystemExit) as exit_info:
            main([str(ds), *option])
        assert exit_info.value.code == 2
        assert "bogus" in capsys.readouterr().err or "videos" in option[1]
    with pytest.raises(ValueError, match=r"unknown split\(s\): bogus \(allowed: train, val, test\)"):
        validate_dataset(ds, splits="bogus")
