"""A user's own data: a folder of videos + a labels CSV with patients, through the commands of the VQA
README's "Your own data: videos + a labels CSV" section, run exactly as written there."""

from __future__ import annotations

import csv
import os
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_args import read_csv, readme_commands, run_readme_line

from datamodules.errors import DataError
from datamodules.import_videos import import_videos as import_folder

REPO = Path(__file__).resolve().parents[2]
README = REPO / "lightning_modules" / "vqa_gan" / "README.md"
SECTION = "## Your own data: videos + a labels CSV"
PATIENTS = [f"p{i:02d}" for i in range(1, 11)]  # p01..p05 good, p06..p10 poor; two videos each
FRAMES = 60  # the README's clips need >= 57 frames (8 frames at interval 8)


def write_video(path: Path, good: bool, seed: int) -> None:
    """A short grey MJPG video: a bright moving ellipse (good) or speckle without structure (poor)."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 48), False)
    assert writer.isOpened()
    for t in range(FRAMES):
        frame = rng.integers(0, 40, (48, 48), dtype=np.uint8)
        if good:
            cv2.ellipse(frame, (20 + t % 8, 24), (12, 8), 0, 0, 360, 220, -1)
        writer.write(frame)
    writer.release()


def write_foreign_dataset(folder: Path) -> None:
    """``my_videos/`` (20 videos) and ``my_labels.csv`` (file, quality good/poor, patient) in ``folder``."""
    videos = folder / "my_videos"
    videos.mkdir()
    rows = []
    for i, patient in enumerate(PATIENTS):
        good = i < 5
        for j, suffix in enumerate("ab"):
            name = f"{patient}_{suffix}.avi"
            write_video(videos / name, good, seed=10 * i + j)
            rows.append({"file": name, "quality": "good" if good else "poor", "patient": patient})
    with open(folder / "my_labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "quality", "patient"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder as a user's: their videos and labels, and sonolab's configs/ beside them."""
    write_foreign_dataset(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_flow_from_videos_and_labels_to_vqa(user_folder: Path):
    commands = readme_commands(README, SECTION)
    assert [shlex.split(c)[:3] for c in commands][:4] == [
        ["python", "-m", "datamodules.import_videos"],
        ["python", "-m", "datamodules.split"],
        ["mv", "my_videos/clips.split.csv", "my_videos/clips.csv"],
        ["python", "-m", "datamodules.validate"],
    ]
    assert shlex.split(commands[3]) == ["python", "-m", "datamodules.validate", "my_videos"]  # no flags
    cli = None
    for line in commands:
        cli = run_readme_line(line) or cli
        if "datamodules.import_videos" in line:
            scans = read_csv("my_videos/scans.csv")
            clips = read_csv("my_videos/clips.csv")
            assert len(scans) == len(clips) == 20
            assert scans[0] == {"scan_id": "p01_a", "video": "p01_a.avi", "subject_id": "p01"}
            assert clips[0]["start_frame"] == "0" and clips[0]["end_frame"] == str(FRAMES)
            assert {c["label"] for c in clips} == {"lung"}
            assert [c["quality"] for c in clips] == ["1"] * 10 + ["0"] * 10
    # subject-wise splits: every patient's videos in one split; 3/1/1 patients of each quality
    clips = read_csv("my_videos/clips.csv")
    split_of = {}
    for clip in clips:
        patient = clip["scan_id"].split("_")[0]
        assert split_of.setdefault(patient, clip["split"]) == clip["split"], f"{patient} in two splits"
    for quality, patients in (("1", PATIENTS[:5]), ("0", PATIENTS[5:])):
        counts = {s: sum(split_of[p] == s for p in patients) for s in ("train", "val", "test")}
        assert counts == {"train": 3, "val": 1, "test": 1}, quality
    # VQA trained on the normal class only: 3 good patients x 2 videos
    assert cli is not None and cli.trainer.state.finished
    assert cli.datamodule.split_composition("train") == {("lung", 1): 6}
    assert cli.model.normal_label == "lung" and cli.model.score_choice == "auto"
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    aucs = [metrics[f"val/auc_{name}"] for name in cli.model.score_names]
    assert metrics["val/primary_score_index"] == float(np.argmax(aucs))  # the best validation AUC
    assert metrics["val/auc"] == max(aucs)


def test_dropping_the_train_filter_stops_fit_naming_the_keys(user_folder: Path):
    commands = readme_commands(README, SECTION)
    for line in commands[:4]:
        run_readme_line(line)
    fit = shlex.split(commands[4])
    with pytest.raises(ValueError) as info:
        run_readme_line(shlex.join([*fit, "--data.init_args.train_filter=null"]))
    message = str(info.value)
    assert "data.init_args.train_filter" in message and "model.init_args.normal_label='lung'" in message
    assert "6 clip(s)" in message and "6 x lung (quality 0)" in message


def test_import_reports_every_bad_row_and_never_replaces_a_manifest(tmp_path: Path):
    write_foreign_dataset(tmp_path)
    videos, labels = tmp_path / "my_videos", tmp_path / "my_labels.csv"
    text = labels.read_text().replace("p02_a.avi,good", "p02_a.avi,ok").replace("p03_b.avi", "p03_c.avi")
    labels.write_text(text)
    with pytest.raises(DataError) as info:
        import_folder(videos, labels, subject_column="patient", label="lung", high="good", low="poor")
    message = str(info.value)
    assert "2 problem(s)" in message and "nothing was written" in message
    assert "my_labels.csv:4: quality: 'ok' is neither high (good) nor low (poor)" in message
    assert "my_labels.csv:7: file:" in message and "p03_c.avi: video file not found" in message
    assert not (videos / "scans.csv").exists() and not (videos / "clips.csv").exists()
    # without a label column or --label: says what to give
    with pytest.raises(DataError, match="--label NAME"):
        import_folder(videos, labels, subject_column="patient")
    # an existing manifest is never replaced
    (videos / "clips.csv").write_text("mine\n")
    with pytest.raises(DataError, match="never replaces"):
        import_folder(videos, labels, subject_column="patient", label="lung", high="good,ok", low="poor")
    assert (videos / "clips.csv").read_text() == "mine\n"
    # into a new dataset folder: video paths relative to it; a video left out of the labels is counted
    labels.write_text("".join(line for line in text.splitlines(True) if "p03_c" not in line))
    counts = import_folder(
        videos,
        labels,
        out=tmp_path / "ds",
        subject_column="patient",
        label="lung",
        high="good,ok",
        low="poor",
    )
    assert counts == {"scans": 19, "high": 9, "low": 10, "unknown": 0, "subjects": 10, "unlisted": 1}
    scans = read_csv(tmp_path / "ds" / "scans.csv")
    assert scans[0]["video"] == "../my_videos/p01_a.avi"
    assert os.path.isfile(tmp_path / "ds" / scans[0]["video"])
