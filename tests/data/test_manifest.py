"""Manifest records and row parsing (datamodules/manifest.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.manifest import (
    ROLES,
    SPLITS,
    BoxRecord,
    ClipRecord,
    ImageRecord,
    Manifests,
    ScanRecord,
    TableError,
    check_header,
    parse_boxes,
    parse_clips,
    parse_images,
    parse_pairs,
    parse_scans,
    read_table,
    resolve_path,
)
from datamodules.readers import VideoInfo


class Collect:
    def __init__(self):
        self.items: list[tuple] = []

    def __call__(self, file, row, column, message, severity="error"):
        self.items.append((file, row, column, message, severity))

    def at(self, row, column):
        return [i[3] for i in self.items if i[1] == row and i[2] == column]


def table(tmp_path: Path, text: str, name: str = "t.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_table(path)


def test_constants():
    assert SPLITS == ("train", "val", "test") and ROLES == ("train", "standard")


def test_read_table_line_numbers_and_cells(tmp_path):
    t = table(
        tmp_path,
        "\ufeff scan_id , video \n"  # BOM, padded names
        "s1, a.avi \n"  # line 2
        "\n"  # blank line 3
        's2,"multi\nline.avi"\n'  # lines 4-5
        "s3,c.avi,extra\n",  # line 6, one cell too many
    )
    assert t.columns == ["scan_id", "video"]
    assert t.rows == [
        (2, {"scan_id": "s1", "video": "a.avi"}),
        (4, {"scan_id": "s2", "video": "multi\nline.avi"}),
        (6, {"scan_id": "s3", "video": "c.avi"}),
    ]
    assert t.long_rows == [(6, 3)]


def test_read_table_short_rows_are_padded(tmp_path):
    t = table(tmp_path, "a,b,c\n1\n")
    assert t.rows == [(2, {"a": "1", "b": "", "c": ""})]


def test_read_table_unreadable(tmp_path):
    with pytest.raises(TableError, match="empty file"):
        table(tmp_path, "\n\n")
    (tmp_path / "latin.csv").write_bytes("a,b\n\xe9t\xe9,1\n".encode("latin-1"))
    with pytest.raises(TableError, match="not UTF-8"):
        read_table(tmp_path / "latin.csv")


def test_resolve_path(tmp_path):
    assert resolve_path(tmp_path, "videos/a.avi") == tmp_path / "videos" / "a.avi"
    assert resolve_path(tmp_path, "/data/x.avi") == Path("/data/x.avi")


def test_check_header_names_missing_columns(tmp_path):
    c = Collect()
    t = table(tmp_path, "clip_id,scan_id,start_frame,split,notes\n")
    assert not check_header("clips", t, c)
    assert c.items == [
        (
            "clips.csv",
            None,
            None,
            "missing required columns: end_frame, label (header has: clip_id, scan_id, start_frame, split, notes)",
            "error",
        )
    ]
    c = Collect()
    assert check_header("clips", table(tmp_path, "clip_id,scan_id,start_frame,end_frame,label,split\n"), c)
    assert c.items == []


def test_parse_scans(tmp_path):
    c = Collect()
    t = table(
        tmp_path,
        "scan_id,video,gaze,audio,fps,split\n"
        "s1,v/s1.avi,g/s1.csv,a/s1.wav,25,train\n"  # 2
        "s2,/abs/s2.mp4,,,,\n"  # 3
        "s1,v/x.avi,,,,\n"  # 4 duplicate
        "s4,,,,fast,holdout\n",  # 5 empty video, bad fps, bad split
    )
    scans = parse_scans(tmp_path, t, c)
    assert scans == {
        "s1": ScanRecord(
            "s1", tmp_path / "v/s1.avi", tmp_path / "g/s1.csv", tmp_path / "a/s1.wav", 25.0, "train", 2
        ),
        "s2": ScanRecord("s2", Path("/abs/s2.mp4"), None, None, None, None, 3),
    }
    assert c.at(4, "scan_id") == ["duplicate scan_id 's1' (first on line 2)"]
    assert c.at(5, "video") == ["empty (required)"]
    assert c.at(5, "fps") == ["'fast' is not a positive frame rate"]
    assert c.at(5, "split") == ["unknown split 'holdout' (allowed: train, val, test)"]
    assert len(c.items) == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        scans["s1"].split = "val"  # type: ignore[misc]


def test_parse_clips(tmp_path):
    c = Collect()
    t = table(
        tmp_path,
        "clip_id,scan_id,start_frame,end_frame,label,split,quality\n"
        "c1,s1,0,10,tv,train,1\n"  # 2
        "c2,s1,10.0,20,tc,train,0.0\n"  # 3 (pandas-style floats are accepted)
        "c3,s1,4,4,tc,train,\n"  # 4 empty range
        "c4,s1,2.5,-3,tc,train,yes\n"  # 5
        "c1,s1,0,1,,val,\n",  # 6 duplicate, empty label
    )
    clips = parse_clips(t, c)
    assert clips == {
        "c1": ClipRecord("c1", "s1", 0, 10, "tv", "train", 1, 2),
        "c2": ClipRecord("c2", "s1", 10, 20, "tc", "train", 0, 3),
    }
    assert clips["c1"].num_frames == 10
    assert c.at(4, "end_frame") == ["end_frame 4 is not after start_frame 4 (range is [start, end))"]
    assert c.at(5, "start_frame") == ["'2.5' is not an integer frame index"]
    assert c.at(5, "end_frame") == ["-3 is negative"]
    assert c.at(5, "quality") == ["'yes' is not 1, 0 or empty"]
    assert c.at(6, "clip_id") == ["duplicate clip_id 'c1' (first on line 2)"]
    assert c.at(6, "label") == ["empty (required)"]
    assert len(c.items) == 6


def test_parse_images_pairs_boxes(tmp_path):
    c = Collect()
    t = table(
        tmp_path,
        "image,plane,split,role,operator\n"
        "im/a.png,tv,train,standard,X\n"  # 2
        "im/b.png,tc,test,train,\n"  # 3
        "im/./a.png,tv,train,train,\n",  # 4 the same file as line 2
    )
    images = parse_images(tmp_path, t, c)
    assert images == {
        "im/a.png": ImageRecord(
            "im/a.png", tmp_path / "im/a.png", "tv", "train", "standard", 2, {"operator": "X"}
        ),
        "im/b.png": ImageRecord(
            "im/b.png", tmp_path / "im/b.png", "tc", "test", "train", 3, {"operator": ""}
        ),
    }
    assert images["im/a.png"].extra == {"operator": "X"}
    assert c.at(4, "image") == ["duplicate image 'im/./a.png' (first on line 2 as 'im/a.png')"]

    c = Collect()
    pairs = parse_pairs(table(tmp_path, "better,worse,plane,split\na,b,tv,\nc,d,tv,val\ne,,tv,x\n"), c)
    assert [(p.better, p.worse, p.split, p.row) for p in pairs] == [
        ("a", "b", "test", 2),
        ("c", "d", "val", 3),
    ]
    assert c.at(4, "worse") == ["empty (required)"]
    assert c.at(4, "split") == ["unknown pair split 'x' (allowed: val, test)"]

    c = Collect()
    boxes = parse_boxes(
        table(tmp_path, "scan_id,frame,x0,y0,x1,y1\ns1,3,0,0.1,1,0.9\ns1,x,0.5,0.5,0.4,nan\n"), c
    )
    assert boxes == [BoxRecord("s1", 3, 0.0, 0.1, 1.0, 0.9, 2)]
    assert c.at(3, "frame") == ["'x' is not an integer frame index"]
    assert c.at(3, "x1") == ["x0 0.5 >= x1 0.4 (need x0 < x1)"]
    assert c.at(3, "y1") == ["'nan' is not a number"]


def _manifests(tmp_path: Path) -> Manifests:
    root = tmp_path
    scans = {
        "s1": ScanRecord("s1", root / "v/1.avi", root / "g/1.csv", None, 25.0, "train", 2),
        "s2": ScanRecord("s2", root / "v/2.avi", None, root / "a/2.wav", None, None, 3),
        "s3": ScanRecord("s3", root / "v/1.avi", None, None, None, None, 4),
    }
    clips = {
        "c1": ClipRecord("c1", "s1", 0, 10, "tv", "train", 1, 2),
        "c2": ClipRecord("c2", "s1", 10, 20, "tc", "train", None, 3),
        "c3": ClipRecord("c3", "s2", 0, 20, "tv", "val", 0, 4),
        "c4": ClipRecord("c4", "s2", 0, 20, "tc", "val", 1, 5),
    }
    images = {"i/a.png": ImageRecord("i/a.png", root / "i/a.png", "tv", "train", "train", 2)}
    return Manifests(root=root, scans=scans, clips=clips, images=images)


def test_manifests_helpers(tmp_path):
    m = _manifests(tmp_path)
    assert [c.clip_id for c in m.clips_in("train")] == ["c1", "c2"]
    assert [c.clip_id for c in m.clips_in("val", labels=["tc"])] == ["c4"]
    assert [c.clip_id for c in m.clips_in("train", quality=1)] == ["c1"]
    assert [c.clip_id for c in m.clips_in("train", quality=[None])] == ["c2"]
    assert m.clips_in("test") == []
    with pytest.raises(ValueError, match="unknown split"):
        m.clips_in("dev")
    assert (m.scan_split("s1"), m.scan_split("s2"), m.scan_split("s3")) == ("train", "val", None)
    assert m.media_files() == [
        tmp_path / "v/1.avi",
        tmp_path / "g/1.csv",
        tmp_path / "v/2.avi",
        tmp_path / "a/2.wav",
        tmp_path / "i/a.png",
    ]
    assert m.manifest_files() == []
    (tmp_path / "clips.csv").write_text("x\n")
    (tmp_path / "scans.csv").write_text("x\n")
    assert m.manifest_files() == [tmp_path / "scans.csv", tmp_path / "clips.csv"]


def test_manifests_fps(tmp_path):
    m = _manifests(tmp_path)
    assert m.fps("s1") == 25.0  # the column wins
    m.video_info["s2"] = VideoInfo(tmp_path / "v/2.avi", 20, 12.5, 32, 32)
    assert m.fps("s2") == 12.5  # else the container's (from validation)
    # else the container is probed once
    (tmp_path / "v").mkdir()
    writer = cv2.VideoWriter(str(tmp_path / "v/1.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 8, (32, 32))
    for _ in range(3):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()
    assert m.fps("s3") == pytest.approx(8.0)
    with pytest.raises(KeyError):
        m.fps("nope")


def test_resolve_path_of_an_unknown_user_stays_as_written(tmp_path):
    """Found by tests/faults/test_properties.py: ``~0`` (no such user) raised RuntimeError from expanduser."""
    assert resolve_path(tmp_path, "~no_such_user_x9") == tmp_path / "~no_such_user_x9"
