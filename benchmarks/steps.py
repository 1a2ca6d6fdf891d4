"""One training step of each model, run two ways on the same nets, losses, optimisers and batches.

* ``lightning``: ``Trainer.fit`` over a fixed list of batches (no validation, logger, checkpoints or
  progress bar); a callback records the wall time at the end of every batch.
* ``plain``: a plain PyTorch loop. VideoQualityGAN: its G step then D step with the model's own
  ``generator_losses`` / ``discriminator_losses`` and its two Adams from ``configure_optimizers``, the
  other optimiser's nets frozen as ``toggle_optimizer`` does; the others: ``training_step`` → backward →
  ``step`` of the optimiser(s) ``configure_optimizers`` returns.

Both run under the precision's autocast (``bf16-mixed``: CPU/GPU bf16; ``16-mixed``: fp16 with one
``GradScaler`` per optimiser, so the GAN's two steps keep independent loss scales). Used by
``benchmarks.run`` (``make bench``), ``benchmarks.gpu`` (``make bench-gpu``) and ``benchmarks.profile_step``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")

# VideoQualityGAN sizes: the demo overlay (configs/vqa/demo.yaml), the published shapes (batch 2 as timed
# against the official code in issue 14; ngf 32, 1024-d feature, 8 frames of 256×256) and a tiny one for
# smoke tests.
VQA_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        batch=2, image_size=32, num_frames=4, model=dict(ngf=4, max_channels=16, feature_dim=8, ndf=4)
    ),
    "demo": dict(
        batch=8, image_size=64, num_frames=8, model=dict(ngf=16, max_channels=128, feature_dim=64, ndf=32)
    ),
    "published": dict(batch=2, image_size=256, num_frames=8, model=dict()),
    "published-batch8": dict(batch=8, image_size=256, num_frames=8, model=dict()),  # bench-gpu's TFLOP/s row
}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast Lightning's precision plugin enters for ``precision``."""
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def set_requires_grad(nets: list[torch.nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def optimizers_of(configured: Any) -> list[torch.optim.Optimizer]:
    """The optimisers in whatever ``configure_optimizers`` returned (one, a list, a dict, a tuple of lists)."""
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, dict):
        return [configured["optimizer"]]
    if isinstance(configured, (list, tuple)):
        if configured and isinstance(configured[0], (list, tuple)):
            return list(configured[0])
        return [o for c in configured for o in optimizers_of(c)]
    raise TypeError(f"cannot find the optimisers in {type(configured).__name__}")


def loss_of(out: Any) -> Tensor:
    return out["loss"] if isinstance(out, dict) else out


@dataclass
class Case:
    """A model, its fixed training batches (on the device) and how to build its plain step. ``source``:
    what the model's ``setup`` may ask the DataModule (its classes, frames, modalities...)."""

    name: str
    model: Any
    batches: list[Any]
    device: torch.device
    source: Any = None
    note: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    compiled: list[str] | None = None  # networks compiled in place (benchmarks.gpu)

    def plain_step(self, precision: str) -> Callable[[Any, int], None]:
        """A closure doing one training step on a batch, with fresh optimisers (and scalers for fp16)."""
        from lightning_modules.vqa_gan.module import VideoQualityGAN

        model = self.model.to(self.device).train()
        model.trainer = None  # a plain loop: no Trainer (self.log is then a no-op), even after a fit
        optimizers = optimizers_of(model.configure_optimizers())
        fp16 = precision == "16-mixed"
        scalers = [torch.amp.GradScaler(self.device.type, enabled=fp16) for _ in optimizers]
        cast = lambda: autocast(precision, self.device)  # noqa: E731

        def backward_step(loss: Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        if isinstance(model, VideoQualityGAN):
            opt_g, opt_d = optimizers
            scaler_g, scaler_d = scalers
            gen, dis = model.generator_nets(), model.discriminator_nets()

            def gan_step(batch: Any, index: int) -> None:
                with cast():
                    inp = model.inputs(batch, with_gaze=True)
                    set_requires_grad(dis, False)
                    loss_g, _, fake, feature = model.generator_losses(
                        inp["video"], inp["flow"], inp["gaze"], inp["gaze_valid"]
                    )
                    backward_step(loss_g, opt_g, scaler_g)
                    set_requires_grad(dis, True)
                    set_requires_grad(gen, False)
                    d_video, d_feature = model.discriminator_losses(inp["video"], fake, feature)
                    backward_step(d_video + d_feature, opt_d, scaler_d)
                    set_requires_grad(gen, True)

            return gan_step

        # the work Trainer.fit does to a batch before training_step (CLSTMUNet's RandAugment)
        prepare = getattr(model, "augment_batch", lambda batch: batch)

        def step(batch: Any, index: int) -> None:
            with cast():
                loss = loss_of(model.training_step(prepare(batch), index))
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                scalers[0].scale(loss).backward()
                for opt, scaler in zip(optimizers, scalers):
                    scaler.step(opt)
                    scaler.update()

        return step


def vqa_case(
    size: str = "demo",
    device: torch.device | str = "cpu",
    n_batches: int = 2,
    seed: int = 0,
    flow_encoding: str = "raw",
) -> Case:
    """VideoQualityGAN (gaze weight 0.1, no zoom-in: frozen, one frame per clip) on random clips of the
    given size; gaze maps are normalised Gaussians-free random maps (the step's cost does not depend on
    their content). ``flow_encoding="color"`` also puts the colour flow image in each batch, as the clip
    cache does (``flow_color``). The clips come from their own generator seeded with ``seed``, so they are
    the same whatever the model's initialisation draws (``benchmarks.revisions`` times several versions
    of the model on them)."""
    from lightning_modules.vqa_gan.base import encode_flow
    from lightning_modules.vqa_gan.module import VideoQualityGAN

    spec = VQA_SIZES[size]
    device = torch.device(device)
    torch.manual_seed(seed)
    model = VideoQualityGAN(
        image_size=spec["image_size"],
        num_frames=spec["num_frames"],
        use_zoom=False,
        zoom_checkpoint=None,
        flow_encoding=flow_encoding,
        **spec["model"],
    )
    b, t, hw = spec["batch"], spec["num_frames"], spec["image_size"]
    clips = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        gaze = torch.rand(b, 1, t, hw, hw, generator=clips)
        flow = torch.randn(b, 2, t, hw, hw, generator=clips)
        batch = {
            "video": torch.rand(b, 1, t, hw, hw, generator=clips) * 2 - 1,
            "flow": flow,
            "gaze": gaze / gaze.sum(dim=(-2, -1), keepdim=True),
            "gaze_valid": torch.ones(b, t, dtype=torch.bool),
        }
        if flow_encoding == "color":
            batch["flow_color"] = encode_flow(flow, "color", scale=1.0)  # the colour image ignores the scale
        batches.append(batch)
    meta = {"batch": b, "frames": t, "image_size": hw, **spec["model"]}
    modalities = ["video", "flow", "gaze"] + (["flow_color"] if flow_encoding == "color" else [])
    source = SimpleNamespace(classes=[model.normal_label], num_frames=t, modalities=modalities)
    return Case(
        f"VideoQualityGAN[{size}]", model.to(device), to_device(batches, device), device, source, meta=meta
    )


def fixed_batches(batches: list[Any], source: Any) -> Any:
    """A LightningDataModule that trains on ``batches`` (a list: no loader cost, the same batches as the
    plain loop) and answers every other attribute from ``source`` (the real DataModule or a stand-in)."""
    from lightning.pytorch import LightningDataModule

    class FixedBatches(LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(batches, batch_size=None, shuffle=False)  # each item is a whole batch

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__") or source is None:
                raise AttributeError(name)
            return getattr(source, name)

    return FixedBatches()


class BatchClock:
    """Lightning callback recording the wall time at the end of every training batch."""

    def __init__(self) -> None:
        from lightning.pytorch import Callback

        clock = self

        class _Clock(Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = _Clock()

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def lightning_times(case: Case, precision: str, steps: int) -> list[float]:
    """Per-step wall times of ``Trainer.fit`` over ``steps + 1`` batches (the first one is the warm-up: its
    time includes the Trainer's setup and is not returned)."""
    from lightning.pytorch import Trainer

    clock = BatchClock()
    batches = [case.batches[i % len(case.batches)] for i in range(steps + 1)]
    trainer = Trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
        accelerator=case.device.type,
        devices=1,
        num_sanity_val_steps=0,
        callbacks=[clock.callback],
    )
    trainer.fit(case.model, datamodule=fixed_batches(batches, case.source))
    return clock.step_times()


def plain_times(case: Case, precision: str, steps: int) -> list[float]:
    """Per-step wall times of the plain loop after one warm-up step."""
    step = case.plain_step(precision)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        step(case.batches[i % len(case.batches)], i)
        if case.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def compare(case: Case, precision: str, steps: int, rounds: int = 2) -> dict[str, Any]:
    """Median step time of Lightning and of the plain loop, interleaved in this process: ``rounds`` times
    a Lightning block then a plain block of ``steps`` steps each, so load changes hit both alike."""
    light: list[float] = []
    plain: list[float] = []
    for _ in range(rounds):
        light += lightning_times(case, precision, steps)
        plain += plain_times(case, precision, steps)
    ml, mp = statistics.median(light), statistics.median(plain)
    return {
        "lightning_s": ml,
        "plain_s": mp,
        "lightning_over_plain": ml / mp,
        "steps_each": len(light),
        "lightning_all_s": light,
        "plain_all_s": plain,
    }
