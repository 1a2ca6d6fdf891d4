"""Steady-state training throughput of every model through Lightning (`make bench BENCH_ARGS=--models`).

Each model is built from its demo config exactly as `lightning fit` builds it and trained for a few batches
(no validation, logger or checkpoints); the rate skips the first batch (warm-up) and the Trainer's setup.
The data caches are built first (outside the timing), so the figure is the model's, not the decoder's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer

from lightning_modules.cli import SonolabCLI, configure_interpolation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

MODELS: dict[str, list[str]] = {
    "VideoQualityGAN": ["vqa.yaml", "vqa/demo.yaml"],
    "CRLUIQA": ["crl_uiqa.yaml", "crl_uiqa/demo.yaml"],
    "DualRepSSL": ["dualrep.yaml", "dualrep/demo.yaml"],
    "CLSTMUNet": ["clstm_unet.yaml", "clstm_unet/demo.yaml"],
}


def extra_args(name: str) -> tuple[list[str], str | None]:
    """Per-model overrides: the GAN is timed without its zoom-in (frozen, one frame per clip: a small share
    of the step), so the benchmark needs no pretraining first; the result says so."""
    if name == "VideoQualityGAN":
        return ["--model.init_args.use_zoom=false"], "timed without the zoom-in (frozen; one frame per clip)"
    return [], None


def build(configs: list[str], extra: list[str] | None = None) -> SonolabCLI:
    """Model + DataModule from configs, as `lightning fit` makes them, with the data set up."""
    from lightning.pytorch import LightningDataModule, LightningModule

    configure_interpolation()
    args = [a for c in configs for a in ("--config", str(CONFIGS / c))]
    cli = SonolabCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        run=False,
        args=[*args, *(extra or []), "--trainer.logger=false"],
        save_config_callback=None,
        auto_configure_optimizers=False,
    )
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    return cli


class BatchClock(Callback):
    """Wall time at the end of every training batch: the rate skips the first (warm-up) batch and excludes
    the Trainer's setup, so it is the steady-state training throughput."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter())

    def batches_per_s(self) -> float:
        if len(self.times) < 2:
            raise RuntimeError(f"need at least 2 timed batches, got {len(self.times)}")
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def lightning_batches_per_s(cli: SonolabCLI, batches: int, precision: str) -> float:
    """Training batches per second through ``Trainer.fit`` (one batch = one G and one D step for the GAN)."""
    clock = BatchClock()
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=batches,  # one epoch of at most this many batches
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
        accelerator="auto",
        devices=1,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock.batches_per_s()


def bench_models(batches: int = 11, precision: str = "bf16-mixed") -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, configs in MODELS.items():
        if not all((CONFIGS / c).exists() for c in configs):
            results[name] = {"skipped": f"missing config among {configs}"}
            continue
        extra, note = extra_args(name)
        cli = build(configs, extra)
        batch_size = cli.datamodule.per_device_batch_size()
        rate = lightning_batches_per_s(cli, batches, precision)
        results[name] = {
            "note": note,
            "precision": precision,
            "batch_size": batch_size,
            "train_batches_per_s": rate,
            "train_samples_per_s": rate * batch_size,
        }
        print(name, results[name], flush=True)
    return results
