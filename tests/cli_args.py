"""Command-line arguments the CLI tests share (importable from any test: `pythonpath = ["tests"]`)."""

from __future__ import annotations

from pathlib import Path


def tiny_data(root: Path, batch_size: int = 4) -> list[str]:
    """The tiny synthetic dataset at `root`, as it is (no regeneration), 32×32 frames, no loader workers."""
    return [
        f"--data.init_args.root={root}",
        "--data.init_args.synthetic=null",
        "--data.init_args.image_size=32",
        f"--data.init_args.batch_size={batch_size}",
        "--data.init_args.num_workers=0",
    ]


def last_checkpoint(trainer) -> str:
    """The run's last.ckpt (written by the LastCheckpoint callback every run has), or '' when none was saved."""
    from callbacks.checkpoints import LastCheckpoint

    return next(
        (c.last_model_path for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), ""
    )
