"""One timing of VideoQualityGAN's ``Trainer.fit`` step for the sonolab tree on ``PYTHONPATH`` (a child of
``benchmarks.revisions``; run as a file, so that it imports nothing from this checkout but the model).

    PYTHONPATH=<tree> python benchmarks/revision_step.py <size> <steps> <flow_encoding>

Prints one JSON line: the step times after a warm-up step, the model's parameter count, the tree.
Only the constructor arguments and batch keys that every revision since the first VideoQualityGAN
accepts are used (sizes, ``use_zoom``, ``flow_encoding``; ``video``, ``flow``, ``gaze``, ``gaze_valid``;
``flow_color`` too, which a revision with the cached colour flow reads and an older one ignores).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch.utils.data import DataLoader

import lightning_modules
from lightning_modules.vqa_gan.base import encode_flow
from lightning_modules.vqa_gan.module import VideoQualityGAN

# batch, frames, frame size, network widths (the published shapes; tiny for the tests)
SIZES: dict[str, dict[str, Any]] = {
    "published": dict(batch=2, frames=8, image_size=256, model={}),
    "demo": dict(
        batch=8, frames=8, image_size=64, model=dict(ngf=16, max_channels=128, feature_dim=64, ndf=32)
    ),
    "tiny": dict(batch=2, frames=4, image_size=32, model=dict(ngf=4, max_channels=16, feature_dim=8, ndf=4)),
}
NORMAL = "transventricular"


def batches(size: dict[str, Any], flow_encoding: str, n: int = 2) -> list[dict[str, torch.Tensor]]:
    """The same random clips for every revision (seeded)."""
    b, t, hw = size["batch"], size["frames"], size["image_size"]
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        gaze = torch.rand(b, 1, t, hw, hw, generator=generator)
        flow = torch.randn(b, 2, t, hw, hw, generator=generator)
        batch = {
            "video": torch.rand(b, 1, t, hw, hw, generator=generator) * 2 - 1,
            "flow": flow,
            "gaze": gaze / gaze.sum(dim=(-2, -1), keepdim=True),
            "gaze_valid": torch.ones(b, t, dtype=torch.bool),
        }
        if flow_encoding == "color":
            batch["flow_color"] = encode_flow(flow, "color", 0.03)
        out.append(batch)
    return out


def main() -> None:
    size_name, steps, flow_encoding = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    size = SIZES[size_name]
    torch.manual_seed(0)
    model = VideoQualityGAN(
        image_size=size["image_size"],
        num_frames=size["frames"],
        use_zoom=False,
        zoom_checkpoint=None,
        flow_encoding=flow_encoding,
        normal_label=NORMAL,
        **size["model"],
    )
    clips = batches(size, flow_encoding)
    modalities = ["video", "flow", "gaze"] + (["flow_color"] if flow_encoding == "color" else [])

    class Clips(LightningDataModule):
        """What the model's setup asks the DataModule, and the fixed clips."""

        def __init__(self) -> None:
            super().__init__()
            self.classes, self.num_frames, self.modalities = [NORMAL, "other"], size["frames"], modalities

        def train_dataloader(self) -> DataLoader:
            return DataLoader([clips[i % len(clips)] for i in range(steps + 1)], batch_size=None)

    ends: list[float] = []

    class Clock(Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            ends.append(time.perf_counter())

    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    trainer.fit(model, datamodule=Clips())
    record = {
        "tree": str(os.path.dirname(os.path.dirname(lightning_modules.__file__))),
        "step_s": [b - a for a, b in itertools.pairwise(ends)],  # the first batch (warm-up) is left out
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }
    print("REVISION_STEP " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
