"""Issue 11: what a scans.csv video may be. DICOM cine loops (written here with pydicom) are read as videos,
frames and frame rate with known answers; a still image given as a video says what it is and what to do."""

from __future__ import annotations

import builtins
import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.boxes import BoxFrameDataModule
from datamodules.readers import MediaError, VideoReader, probe_video
from datamodules.validate import main as validate_main
from datamodules.validate import validate_dataset

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage


def write_dicom(
    path: Path, frames: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8, **tags
) -> Path:
    """An uncompressed (explicit VR little endian) multi-frame DICOM of ``frames`` (N×H×W or N×H×W×3)."""
    pytest.importorskip("pydicom", minversion="3.0", reason="the dicom extra: pip install 'sonolab[dicom]'")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    frames = np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    n, h, w = frames.shape[:3]
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, n
    ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
    ds.PhotometricInterpretation = photometric
    if frames.ndim == 4:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = frames.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 24, 32), dtype=np.uint8)


def test_grey_cine_loop_frames_and_frame_time(tmp_path: Path, grey: np.ndarray) -> None:
    path = write_dicom(tmp_path / "loop.dcm", grey, FrameTime=40)  # 40 ms per frame = 25 fps
    info = probe_video(path)
    assert (info.frame_count, info.fps, info.width, info.height) == (6, 25.0, 32, 24)
    with VideoReader(path) as reader:
        out = reader.read([5, 0, 3, 3])
        assert out.shape == (4, 24, 32, 1)
        np.testing.assert_array_equal(out[..., 0], grey[[5, 0, 3, 3]])
        rgb = reader.read([1], channels=3)[0]
        np.testing.assert_array_equal(rgb, np.repeat(grey[1][:, :, None], 3, axis=2))
        resized = reader.read([2], size=(12, 16))[0, :, :, 0]
        np.testing.assert_array_equal(resized, cv2.resize(grey[2], (16, 12), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize(
    ("tags", "fps"),
    [
        ({"FrameTime": 20}, 50.0),
        ({"FrameTimeVector": [0, 40, 40, 40, 40, 40]}, 25.0),
        ({"CineRate": 30}, 30.0),
        ({"RecommendedDisplayFrameRate": 15}, 15.0),
        ({"FrameTime": 50, "CineRate": 30}, 20.0),  # the acquisition timing wins over the display rate
        ({}, 0.0),
    ],
)
def test_frame_rate_from_timing_tags(tmp_path: Path, grey: np.ndarray, tags: dict, fps: float) -> None:
    assert probe_video(write_dicom(tmp_path / "loop.dcm", grey, **tags)).fps == pytest.approx(fps)


def test_rgb_and_ybr_colour(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (3, 10, 14, 3), dtype=np.uint8)
    with VideoReader(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", CineRate=30)) as reader:
        np.testing.assert_array_equal(reader.read([0, 1, 2], channels=3), rgb)
        grey = cv2.cvtColor(rgb[2], cv2.COLOR_RGB2GRAY)
        np.testing.assert_array_equal(reader.read([2], channels=1)[0, :, :, 0], grey)
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")  # what many ultrasound machines store
    with VideoReader(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", CineRate=30)) as reader:
        out = reader.read([0, 1, 2], channels=3).astype(int)
    assert np.abs(out - rgb.astype(int)).max() <= 2  # the colour round trip's rounding only


def test_12_bit_monochrome1_is_scaled_and_inverted(tmp_path: Path) -> None:
    frames = np.array([[[0, 4095], [1365, 2730]]] * 2, np.uint16)
    path = write_dicom(tmp_path / "m1.dcm", frames, "MONOCHROME1", bits=12, FrameTime=100)
    with VideoReader(path) as reader:
        out = reader.read([1])[0, :, :, 0]
    np.testing.assert_array_equal(out, [[255, 0], [170, 85]])  # 255 - round(v * 255 / 4095)


def test_dicom_scan_validates_and_trains_from_the_cache(tmp_path: Path, grey: np.ndarray) -> None:
    """A .dcm scan video goes through validation (probe to the last frame) and the clip cache like any video."""
    root = tmp_path / "ds"
    (root / "videos").mkdir(parents=True)
    for name in ("a", "b"):
        write_dicom(root / "videos" / f"{name}.dcm", grey, FrameTime=40)
    _csv(
        root / "scans.csv",
        ["scan_id", "video", "split"],
        [["a", "videos/a.dcm", "train"], ["b", "videos/b.dcm", "val"]],
    )
    _csv(
        root / "boxes.csv",
        ["scan_id", "frame", "x0", "y0", "x1", "y1"],
        [["a", 5, 0.1, 0.2, 0.6, 0.7], ["b", 2, 0.0, 0.0, 0.5, 0.5]],
    )
    report = validate_dataset(root, require=("scans", "boxes"))
    assert report.ok, report.format()
    assert report.manifests.video_info["a"].frame_count == 6 and report.manifests.fps("a") == 25.0
    dm = BoxFrameDataModule(
        root=str(root), synthetic=None, image_size=[12, 16], batch_size=1, cache_dir=str(tmp_path / "c")
    )
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    expected = cv2.resize(grey[5], (16, 12), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(batch["image"][0, 0].numpy(), expected, atol=1e-6)
    assert batch["image_id"] == ["a@5"]


def test_truncated_dicom_is_an_error_naming_the_file(tmp_path: Path, grey: np.ndarray) -> None:
    path = write_dicom(tmp_path / "loop.dcm", grey, FrameTime=40)
    path.write_bytes(path.read_bytes()[:-500])  # the last frame's pixel data cut off
    with pytest.raises(
        MediaError, match=r"loop\.dcm: frame 5: DICOM pixel data cannot be decoded.*truncated"
    ):
        probe_video(path)


def test_missing_pydicom_says_how_to_install(tmp_path: Path, grey: np.ndarray, monkeypatch) -> None:
    path = write_dicom(tmp_path / "loop.dcm", grey, FrameTime=40)
    real_import = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(MediaError, match=r"loop\.dcm: a DICOM file.*pip install 'sonolab\[dicom\]'"):
        probe_video(path)


# ------------------------------------------------------------------------------------------ still images


def test_still_image_given_as_a_video_says_what_to_do(tmp_path: Path, grey: np.ndarray) -> None:
    png = tmp_path / "frame.png"
    cv2.imwrite(str(png), grey[0])
    for path in (png, shutil.copy(png, tmp_path / "named_like_a_video.avi")):
        with pytest.raises(MediaError) as err:
            probe_video(path)
        message = str(err.value)
        assert message.startswith(f"{path}: a still image, not a video")
        assert "images.csv" in message and "python -m datamodules.masks" in message
        assert "CAP_PROP_FRAME_COUNT" not in message
        with pytest.raises(MediaError, match="a still image, not a video"):
            VideoReader(path).read([0])


def test_validator_reports_a_still_image_scan_on_its_row(tmp_path: Path, grey: np.ndarray, capsys) -> None:
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "x.png"), grey[0])
    _csv(root / "scans.csv", ["scan_id", "video", "split"], [["s1", "images/x.png", "train"]])
    assert validate_main([str(root), "--splits", ""]) == 1
    out = capsys.readouterr().out
    assert "error: scans.csv:2: video: images/x.png: a still image, not a video" in out


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
