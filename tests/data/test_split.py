"""Issue 11, item 5: subjects and splits. A subject in two splits is an error naming the subject and rows;
``python -m datamodules.split`` writes seeded, stratified, subject-wise splits into a new manifest."""

from __future__ import annotations

import csv
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from datamodules.split import deal, main, parse_ratios
from datamodules.validate import validate_dataset

RATIOS = (0.7, 0.15, 0.15)


def test_deal_known_answer_and_within_one_unit() -> None:
    units = {"": [f"u{i}" for i in range(10)]}
    out = deal(units, RATIOS, seed=0)
    assert Counter(out.values()) == {"train": 7, "val": 2, "test": 1}
    assert deal(units, RATIOS, seed=0) == out  # seeded
    assert any(deal(units, RATIOS, seed=s) != out for s in range(1, 5))  # the seed matters
    rng = np.random.default_rng(0)
    for seed in range(30):  # any strata, any ratios: every split within one unit of its share
        ratios = rng.dirichlet([1, 1, 1])
        strata = {f"s{k}": [f"s{k}u{i}" for i in range(int(rng.integers(1, 9)))] for k in range(4)}
        n = sum(len(v) for v in strata.values())
        got = deal(strata, ratios, seed)
        assert sorted(got) == sorted(u for v in strata.values() for u in v)  # each unit exactly once
        counts = Counter(got.values())
        assert all(abs(counts[s] - r * n) < 1 for s, r in zip(("train", "val", "test"), ratios)), (
            counts,
            ratios,
        )


def test_stratified_deal_spreads_each_stratum() -> None:
    strata = {"a": [f"a{i}" for i in range(10)], "b": [f"b{i}" for i in range(10)]}
    out = deal(strata, (0.5, 0.5, 0.0), seed=3)
    for name in strata:
        assert Counter(out[u] for u in strata[name]) == {"train": 5, "val": 5}


def test_parse_ratios() -> None:
    assert parse_ratios("0.7,0.15,0.15") == (0.7, 0.15, 0.15)
    for bad in ("0.7,0.3", "0.5,0.5,0.5", "1,-0.5,0.5", "a,b,c"):
        with pytest.raises(ValueError):
            parse_ratios(bad)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write(path: Path, table: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


@pytest.fixture
def with_subjects(tiny_dataset: Path, tmp_path: Path) -> Path:
    """The tiny dataset (media symlinked) with subject_id: scans 0,1 -> P0 (train), 2,3 -> P1 (val),
    4,5 -> P2 (test); clips follow their scan."""
    root = tmp_path / "ds"
    root.mkdir()
    for entry in tiny_dataset.iterdir():
        if entry.suffix == ".csv":
            shutil.copy(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry)
    scans = rows(root / "scans.csv")
    split_of = {s["scan_id"]: ("train", "val", "test")[i // 2] for i, s in enumerate(scans)}  # no leak yet
    write(
        root / "scans.csv",
        [{**s, "subject_id": f"P{i // 2}", "split": split_of[s["scan_id"]]} for i, s in enumerate(scans)],
    )
    clips = rows(root / "clips.csv")
    write(root / "clips.csv", [{**c, "split": split_of[c["scan_id"]]} for c in clips])
    return root


def test_subject_in_two_splits_is_an_error_naming_subject_and_rows(with_subjects: Path) -> None:
    scans = rows(with_subjects / "scans.csv")
    split_of = {s["scan_id"]: s["split"] for s in scans}
    # make P0's two scans (lines 2 and 3) differ: scan 0 train, scan 1 val, clips following their scan
    scans[0]["split"], scans[1]["split"] = "train", "val"
    write(with_subjects / "scans.csv", scans)
    split_of.update({scans[0]["scan_id"]: "train", scans[1]["scan_id"]: "val"})
    clips = rows(with_subjects / "clips.csv")
    write(with_subjects / "clips.csv", [{**c, "split": split_of[c["scan_id"]]} for c in clips])
    report = validate_dataset(with_subjects, require=("scans", "clips"), deep=False, splits=())
    leak = [p for p in report.errors if p.column == "subject_id"]
    assert [(p.file, p.row) for p in leak] == [("scans.csv", 3)]
    assert "subject 'P0' is in 2 splits (train: scans.csv:2; val: scans.csv:3)" in leak[0].message
    n_clips = sum(c["scan_id"] == scans[1]["scan_id"] for c in clips)
    dependants = [p for p in report.errors if p.file == "clips.csv"]
    assert len(dependants) == n_clips and all("(scans.csv:3)" in p.message for p in dependants)
    assert scans[1]["scan_id"] not in report.manifests.scans  # the leaked scan is not among the valid rows


def test_split_command_writes_subject_wise_splits_into_a_new_file(
    with_subjects: Path, tmp_path: Path, capsys
):
    before = {p.name: p.read_bytes() for p in with_subjects.glob("*.csv")}
    args = ["--ratios", "0.5,0.5,0", "--by", "subject", "--stratify", "label", "--seed", "7"]
    out_clips, out_scans = tmp_path / "clips.new.csv", tmp_path / "scans.new.csv"
    assert main([str(with_subjects), *args, "--out", str(out_clips)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main([str(with_subjects), *args, "--manifest", "scans", "--out", str(out_scans)]) == 0
    # the user's files are untouched; an existing output is refused and left as it was
    assert {p.name: p.read_bytes() for p in with_subjects.glob("*.csv")} == before
    written = out_clips.read_bytes()
    assert main([str(with_subjects), *args, "--out", str(out_clips)]) == 1
    assert "exists" in capsys.readouterr().err and out_clips.read_bytes() == written

    subject = {s["scan_id"]: s["subject_id"] for s in rows(out_scans)}
    splits_of_subject: dict[str, set[str]] = defaultdict(set)
    for c in rows(out_clips):
        splits_of_subject[subject[c["scan_id"]]].add(c["split"])
    for s in rows(out_scans):
        splits_of_subject[s["subject_id"]].add(s["split"])  # the two outputs agree
    assert all(len(v) == 1 for v in splits_of_subject.values()), splits_of_subject
    counts = Counter(next(iter(v)) for v in splits_of_subject.values())
    assert abs(counts["train"] - 1.5) < 1 and abs(counts["val"] - 1.5) < 1 and counts["test"] == 0
    # seeded: the same command gives the same file
    again = tmp_path / "again.csv"
    assert main([str(with_subjects), *args, "--out", str(again)]) == 0
    assert again.read_bytes() == written
    # the new manifests validate (no leak, both splits filled)
    shutil.copy(out_clips, with_subjects / "clips.csv")
    shutil.copy(out_scans, with_subjects / "scans.csv")
    report = validate_dataset(with_subjects, require=("scans", "clips"), deep=False)
    assert report.ok, report.format()


def test_split_by_subject_needs_every_subject(with_subjects: Path, tmp_path: Path, capsys) -> None:
    scans = rows(with_subjects / "scans.csv")
    scans[2]["subject_id"] = ""
    write(with_subjects / "scans.csv", scans)
    assert main([str(with_subjects), "--by", "subject", "--out", str(tmp_path / "x.csv")]) == 1
    assert f"{scans[2]['scan_id']!r} has no subject_id" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    assert main([str(with_subjects), "--by", "scan", "--out", str(tmp_path / "x.csv")]) == 0


def test_split_images_by_image_stratified_by_plane(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "images.new.csv"
    args = ["--manifest", "images", "--by", "scan", "--ratios", "0.5,0.25,0.25", "--seed", "1"]
    assert main([str(tiny_dataset), *args, "--out", str(out)]) == 0
    new, old = rows(out), rows(tiny_dataset / "images.csv")
    assert [r["image"] for r in new] == [r["image"] for r in old]  # same rows, same order, new splits
    counts = Counter(r["split"] for r in new)
    assert all(abs(counts[s] - r * len(new)) < 1 for s, r in zip(("train", "val", "test"), (0.5, 0.25, 0.25)))
    for plane in {r["plane"] for r in new}:  # each plane spread over the splits in proportion
        mine = [r for r in new if r["plane"] == plane]
        assert abs(sum(r["split"] == "train" for r in mine) - len(mine) / 2) <= 2
