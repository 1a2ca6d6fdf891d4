"""Two nodes × one process on localhost through ``torchrun`` (gloo), as the README's multi-node command runs
them: one run folder, one W&B run and one prediction file per job, one clip cache for both nodes on this
(shared) filesystem, evaluation metrics equal to a single-process run of the same weights, and training
steps equal to one process's on the same global batches."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_args import SHORT_CLSTM_LAYOUT, TINY_CLSTM, tiny_data

pytestmark = pytest.mark.ddp

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path) -> dict[str, str]:
    return dict(
        os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", SONOLAB_CACHE=str(cache)
    )


def two_nodes(args: list[str], cwd: Path, cache: Path) -> None:
    """``torchrun --nnodes=2 --nproc_per_node=1 --node_rank=R ... lightning <args>`` for R = 0 and 1."""
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    launch = [
        str(bin_dir / "torchrun"),
        "--nnodes=2",
        "--nproc_per_node=1",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
    ]
    cluster = ["--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp"]
    procs = [
        subprocess.Popen(
            [*launch, f"--node_rank={rank}", str(bin_dir / "lightning"), *args, *cluster],
            cwd=cwd,
            env=_env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"node {rank} failed ({proc.returncode}):\n{out[-8000:]}"


def one_process(args: list[str], cwd: Path, cache: Path) -> None:
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "lightning"), *args],
        cwd=cwd,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]


def _metrics(root: Path, project: str, run_id: str) -> dict[str, float]:
    return json.loads((root / project / run_id / "test_metrics.json").read_text())["metrics"]


def _cache_dirs(cache: Path) -> list[Path]:
    return sorted(d for d in cache.rglob("*") if d.is_dir() and (d / "COMPLETE").is_file())


def test_vqa_two_nodes(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    base = [
        "--config",
        str(CONFIGS / "vqa.yaml"),
        "--config",
        str(CONFIGS / "vqa" / "no_zoom.yaml"),
        *tiny_data(tiny_dataset, batch_size=2),
        "--data.init_args.num_frames=4",
        "--model.init_args.num_frames=4",
        "--model.init_args.ngf=8",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--seed_everything=0",
        "--data.init_args.prepare_data_per_node=false",  # the "nodes" share this filesystem: one build
    ]
    two_nodes(["test", *base, "--run_id=two-nodes"], tmp_path, cache)
    built = _cache_dirs(cache)
    one_process(["test", *base, "--run_id=one-process"], tmp_path, cache)
    assert _cache_dirs(cache) == built, "the single-process run reuses the caches the two nodes built"
    runs = tmp_path / "runs"
    two, one = _metrics(runs, "sonolab-vqa", "two-nodes"), _metrics(runs, "sonolab-vqa", "one-process")
    for key in ("test/auc", "test/auc_l1", "test/auc_ssim", "test/auc_feature"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), (
            key
        )  # every clip scored once, by the same weights
    folder = runs / "sonolab-vqa" / "two-nodes"
    assert len(list((folder / "wandb").glob("offline-run-*"))) == 1, "one W&B run for the job"
    assert sorted(p.name for p in (runs / "sonolab-vqa").iterdir()) == ["one-process", "two-nodes"]
    assert len(built) == 1 and not list(cache.rglob("*.tmp-*")), "one cache for both nodes"

    two_nodes(["predict", *base, "--run_id=two-nodes-predict"], tmp_path, cache)
    (predictions,) = (runs / "sonolab-vqa" / "two-nodes-predict").glob("predictions*.csv")
    rows = list(csv.DictReader(predictions.open()))
    ids = [r["clip_id"] for r in rows]
    assert len(ids) == len(set(ids)), "each clip once in the job's one prediction file"


def test_dualrep_two_nodes(tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    base = [
        "--config",
        str(CONFIGS / "dualrep.yaml"),
        *tiny_data(tiny_dataset, batch_size=2),
        "--data.init_args.num_frames=4",
        "--data.init_args.frame_interval=4",
        "--data.init_args.audio_seconds=1.0",
        "--data.init_args.window_stride=120",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--seed_everything=0",
        "--data.init_args.prepare_data_per_node=false",
    ]
    two_nodes(["test", *base, "--run_id=two-nodes"], tmp_path, cache)
    built = _cache_dirs(cache)
    one_process(["test", *base, "--run_id=one-process"], tmp_path, cache)
    assert _cache_dirs(cache) == built, "the single-process run reuses the caches the two nodes built"
    runs = tmp_path / "runs"
    two, one = (
        _metrics(runs, "sonolab-dualrep", "two-nodes"),
        _metrics(runs, "sonolab-dualrep", "one-process"),
    )
    split_recall = [k for k in one if "R@" in k and "batch" not in k]
    assert split_recall, sorted(one)
    for key in split_recall:  # whole-split retrieval: every clip embedded once, gathered over the nodes
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    assert len(list((runs / "sonolab-dualrep" / "two-nodes" / "wandb").glob("offline-run-*"))) == 1
    assert built and not list(cache.rglob("*.tmp-*")), "each cache once (no second build left behind)"


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["state_dict"]


def test_clstm_training_on_two_nodes_equals_one_process_on_the_same_global_batch(tiny_dataset, tmp_path):
    """Two training steps on 2 nodes × 2 samples change every weight as one process does on batch 4.

    Both sides draw batches through Lightning's DistributedSampler with the same seed (the one-process run
    is DDP with one device), so each global batch holds the same samples; DDP averages the two ranks'
    gradients, which equals the gradient of the batch-4 mean loss. The net has no per-rank state or
    randomness: GroupNorm (BatchNorm statistics are per rank without SyncBatchNorm, which is GPU-only in
    torch) and no augmentation. VideoQualityGAN and DualRepSSL draw per-rank noise, pool items and
    augmented views, so their training cannot match a single process draw for draw; their evaluation
    metrics are compared above."""
    cache = tmp_path / "cache"
    base = [
        "--config",
        str(CONFIGS / "clstm_unet.yaml"),
        *TINY_CLSTM,
        *SHORT_CLSTM_LAYOUT,
        "--model.init_args.norm=group",
        "--model.init_args.augment=false",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--seed_everything=0",
        "--data.init_args.prepare_data_per_node=false",
    ]
    one_device = ["--trainer.strategy=ddp", "--trainer.devices=1"]  # one process, DDP's sampler
    two_nodes(["fit", *base, *tiny_data(tiny_dataset, batch_size=4), "--run_id=two-nodes"], tmp_path, cache)
    for batch_size in (4, 2):
        one_process(
            [
                "fit",
                *base,
                *tiny_data(tiny_dataset, batch_size=batch_size),
                *one_device,
                f"--run_id=b{batch_size}",
            ],
            tmp_path,
            cache,
        )
    runs = tmp_path / "runs" / "sonolab-clstm-unet"
    two, one, half = (_weights(runs / r / "checkpoints" / "last.ckpt") for r in ("two-nodes", "b4", "b2"))
    assert two.keys() == one.keys()
    for key, value in one.items():
        assert torch.allclose(two[key].float(), value.float(), rtol=1e-4, atol=1e-6), key
    # The control: half the global batch trains other weights, so the match above needs both ranks'
    # gradients. (`data.init_args.batch_size` is the global batch: each of the two ranks loads 2.)
    assert any(not torch.allclose(two[k].float(), half[k].float(), rtol=1e-4, atol=1e-6) for k in one)
