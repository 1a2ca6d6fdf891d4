"""Property-based fault tests (hypothesis): random small manifests and media fed to the validator, the
readers and the DataModules either load or raise sonolab's own :class:`~datamodules.errors.DataError`,
never an unrelated exception, never a hang (each test has a timeout).

``make test`` runs a bounded number of examples per property (``FAST``); the ``slow`` copies
(``make test-slow``) run many more.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodules.errors import DataError
from datamodules.manifest import TableError, read_table
from datamodules.readers import MediaError, audio_info, load_audio, load_gaze, probe_video, read_image
from datamodules.validate import load_dataset, main, validate_dataset

FAST = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
FPS, N_FRAMES, SR = 10, 12, 8000

logging.getLogger("sonolab.data").setLevel(logging.ERROR)


# ------------------------------------------------------------------ a small pool of real media files
def _media(root: Path) -> None:
    """Valid media the random manifests may point at (plus a few broken ones)."""
    (root / "videos").mkdir(parents=True)
    w = cv2.VideoWriter(str(root / "videos" / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (16, 16))
    for i in range(N_FRAMES):
        w.write(np.full((16, 16, 3), 20 * i, np.uint8))
    w.release()
    (root / "videos" / "junk.avi").write_bytes(b"not a video")
    (root / "gaze").mkdir()
    (root / "gaze" / "g.csv").write_text("time_s,x,y\n0,0.5,0.5\n0.5,0.2,0.3\n1.0,,\n")
    (root / "audio").mkdir()
    sf.write(str(root / "audio" / "a.wav"), np.zeros(SR, np.float32) + 0.1, SR)
    (root / "images").mkdir()
    for name in ("i1", "i2"):
        cv2.imwrite(str(root / "images" / f"{name}.png"), np.full((8, 8), 100, np.uint8))
    (root / "images" / "bad.png").write_bytes(b"\x89PNG broken")


PATHS = ["videos/v.avi", "videos/junk.avi", "videos/missing.avi", "gaze/g.csv", "audio/a.wav", "images/i1.png",
         "images/i2.png", "images/bad.png", "../outside.csv", "/etc/hostname", "", "videos"]  # fmt: skip
WORDS = ["s1", "s2", "c1", "c2", "train", "val", "test", "standard", "tv", "tc", "0", "1", "5", "12", "-1",
         "1.5", "nan", "inf", "", "0.5", "1e9", "x", "é", '"', ",", "\n"]  # fmt: skip
COLUMNS = {
    "scans.csv": ["scan_id", "video", "gaze", "audio", "fps", "split"],
    "clips.csv": ["clip_id", "scan_id", "start_frame", "end_frame", "label", "split", "quality"],
    "images.csv": ["image", "plane", "split", "role"],
    "pairs.csv": ["better", "worse", "plane", "split"],
    "boxes.csv": ["scan_id", "frame", "image", "x0", "y0", "x1", "y1"],  # a box on a scan frame or an image
}
cell = st.one_of(st.sampled_from(WORDS), st.sampled_from(PATHS), st.text(max_size=6))


@st.composite
def manifest(draw: st.DrawFn, file: str) -> str | None:
    """CSV text: a header (maybe with a column missing or extra) and 0-4 rows of mixed valid and junk cells;
    or None (the file is absent)."""
    if draw(st.integers(0, 5)) == 0:
        return None
    columns = list(COLUMNS[file])
    if draw(st.integers(0, 6)) == 0:
        columns.pop(draw(st.integers(0, len(columns) - 1)))
    if draw(st.booleans()):
        columns.append("extra")
    rows = draw(st.lists(st.lists(cell, min_size=len(columns), max_size=len(columns) + 1), max_size=4))
    buf = io.StringIO()
    import csv

    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


datasets = st.fixed_dictionaries({f: manifest(f) for f in COLUMNS})


def _with_dataset(manifests: dict[str, str | None], check: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        _media(root)
        (Path(tmp) / "outside.csv").write_text("SECRET,x\n1,2\n")
        for file, text in manifests.items():
            if text is not None:
                (root / file).write_text(text, encoding="utf-8")
        check(root)


def _validate(root: Path) -> None:
    for require in (("scans", "clips"), ("images",), ()):
        report = validate_dataset(root, require=require)
        assert "SECRET" not in report.format()  # never quotes a file outside the dataset
        with contextlib.suppress(DataError):
            load_dataset(root, require=require, skip_invalid=True)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(root), "--require", ""]) in (0, 1)


def _datamodules(root: Path) -> None:
    from datamodules.boxes import BoxFrameDataModule
    from datamodules.clips import VideoClipDataModule
    from datamodules.images import ImageDataModule

    common = {
        "root": str(root),
        "synthetic": None,
        "image_size": 16,
        "batch_size": 1,
        "cache_dir": str(root / ".c"),
    }
    for make in (
        lambda: VideoClipDataModule(**common, num_frames=2, frame_interval=1),
        lambda: ImageDataModule(**common, eval_on="images"),
        lambda: BoxFrameDataModule(**common),
    ):
        dm = make()
        try:
            dm.prepare_data()
            dm.setup("fit")
            next(iter(dm.train_dataloader()))
        except DataError:
            pass


@pytest.mark.timeout(120)
@FAST
@given(datasets)
def test_validator_random_manifests(manifests) -> None:
    _with_dataset(manifests, _validate)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@SLOW
@given(datasets)
def test_validator_random_manifests_many(manifests) -> None:
    _with_dataset(manifests, _validate)


@pytest.mark.timeout(120)
@FAST
@given(datasets)
def test_datamodules_random_manifests(manifests) -> None:
    _with_dataset(manifests, _datamodules)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@SLOW
@given(datasets)
def test_datamodules_random_manifests_many(manifests) -> None:
    _with_dataset(manifests, _datamodules)


# ------------------------------------------------------------------ readers on random bytes
def _valid_wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.linspace(-0.5, 0.5, 400, dtype=np.float32), SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _valid_png() -> bytes:
    return cv2.imencode(".png", np.full((4, 4), 7, np.uint8))[1].tobytes()


def _mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or a valid file cut short / with bytes overwritten (the interesting failures)."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed[: draw(st.integers(0, len(seed)))])
        for _ in range(draw(st.integers(0, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    return st.one_of(st.binary(max_size=256), mutate())


def _read_all(kind: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / {"gaze": "g.csv", "audio": "a.wav", "image": "i.png", "video": "v.avi"}[kind]
        path.write_bytes(data)
        try:
            if kind == "gaze":
                with contextlib.suppress(TableError):  # the manifest reader on the same bytes
                    read_table(path)
                track = load_gaze(path)
                assert track.time_s.shape[0] == track.xy.shape[0]
            elif kind == "audio":
                audio_info(path)
                wav = load_audio(path, 16000, 0.0, 0.05)
                assert wav.shape == (800,)
            elif kind == "image":
                assert read_image(path, 3, (4, 4)).shape == (4, 4, 3)
            else:
                probe_video(path)
        except MediaError:
            pass


gaze_text = st.one_of(
    st.binary(max_size=200),
    st.lists(st.lists(cell, min_size=0, max_size=4), max_size=6).map(
        lambda rows: ("time_s,x,y\n" + "\n".join(",".join(r) for r in rows)).encode("utf-8")
    ),
)


@pytest.mark.timeout(120)
@FAST
@given(st.one_of(gaze_text.map(lambda b: ("gaze", b)), _mutated(_valid_wav()).map(lambda b: ("audio", b)),
                 _mutated(_valid_png()).map(lambda b: ("image", b)), st.binary(max_size=300).map(lambda b: ("video", b))))  # fmt: skip
def test_readers_random_bytes(item) -> None:
    _read_all(*item)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@SLOW
@given(st.one_of(gaze_text.map(lambda b: ("gaze", b)), _mutated(_valid_wav()).map(lambda b: ("audio", b)),
                 _mutated(_valid_png()).map(lambda b: ("image", b)), st.binary(max_size=300).map(lambda b: ("video", b))))  # fmt: skip
def test_readers_random_bytes_many(item) -> None:
    _read_all(*item)


@pytest.mark.timeout(120)
@FAST
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(float("nan"))),
        min_size=1,
        max_size=64,
    )
)
def test_validator_random_audio_samples(samples) -> None:
    """Any float samples (NaN, inf, huge) give errors or warnings, never an exception."""

    def check(root: Path) -> None:
        sf.write(str(root / "audio" / "a.wav"), np.asarray(samples, np.float32), SR, subtype="FLOAT")
        report = validate_dataset(root, require=("scans",), splits=())
        bad = not np.isfinite(np.asarray(samples, np.float32)).all()
        assert any("NaN or infinite" in p.message for p in report.errors) == bad, report.format()

    _with_dataset({"scans.csv": "scan_id,video,audio\ns1,videos/v.avi,audio/a.wav\n"}, check)
