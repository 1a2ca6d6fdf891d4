"""Train-step throughput of every model through Lightning, against a plain PyTorch loop as the reference.

Each model is built from its demo config exactly as `lightning fit` builds it. Lightning: `Trainer.fit`
over a fixed number of steps (no validation, logger or checkpoints). Reference: the same batches, the
module's own `training_step` + backward + optimiser step in a bare loop (automatic-optimisation models
only: the GAN's manual optimisation needs a Trainer). The overhead ratio says what Lightning costs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer

from lightning_modules.cli import SonolabCLI, configure_interpolation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

MODELS: dict[str, list[str]] = {
    "VideoQualityGAN": ["vqa.yaml", "vqa/demo.yaml"],
    "CRLUIQA": ["crl_uiqa.yaml", "crl_uiqa/demo.yaml"],
    "DualRepSSL": ["dualrep.yaml", "dualrep/demo.yaml"],
    "CLSTMUNet": ["clstm_unet.yaml", "clstm_unet/demo.yaml"],
}


ZOOM_DEMO = Path("checkpoints/zoom-demo/best.ckpt")


def extra_args(name: str) -> tuple[list[str], str | None]:
    """Per-model overrides: the GAN's demo config loads the zoom-in checkpoint `make demo` writes; without
    one the GAN is timed without its (frozen, one-frame-per-clip) zoom-in, and the result says so."""
    if name == "VideoQualityGAN" and not ZOOM_DEMO.is_file():
        return ["--model.init_args.use_zoom=false"], f"{ZOOM_DEMO} missing: timed without the zoom-in"
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


def lightning_steps_per_s(cli: SonolabCLI, steps: int, precision: str) -> float:
    trainer = Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
        accelerator="auto",
        devices=1,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return trainer.global_step / (time.perf_counter() - start)


def reference_steps_per_s(cli: SonolabCLI, steps: int, precision: str) -> float | None:
    model = cli.model
    if not model.automatic_optimization:
        return None
    optimizers: Any = model.configure_optimizers()
    if isinstance(optimizers, dict):
        optimizers = optimizers["optimizer"]
    if isinstance(optimizers, (list, tuple)):
        optimizers = optimizers[0]
        if isinstance(optimizers, (list, tuple)):
            optimizers = optimizers[0]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    loader = cli.datamodule.train_dataloader()
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    use_amp = precision.endswith("mixed")
    done, start = 0, time.perf_counter()
    while done < steps:
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
                loss = model.training_step(batch, done)
            loss = loss["loss"] if isinstance(loss, dict) else loss
            optimizers.zero_grad(set_to_none=True)
            loss.backward()
            optimizers.step()
            done += 1
            if done >= steps:
                break
    return done / (time.perf_counter() - start)


def bench_models(steps: int = 10, precision: str = "bf16-mixed") -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, configs in MODELS.items():
        if not all((CONFIGS / c).exists() for c in configs):
            results[name] = {"skipped": f"missing config among {configs}"}
            continue
        extra, note = extra_args(name)
        cli = build(configs, extra)
        batch_size = cli.datamodule.per_device_batch_size()
        lightning = lightning_steps_per_s(cli, steps, precision)
        reference = reference_steps_per_s(build(configs, extra), steps, precision)
        results[name] = {
            "note": note,
            "precision": precision,
            "batch_size": batch_size,
            "lightning_steps_per_s": lightning,
            "lightning_samples_per_s": lightning * batch_size,
            "reference_steps_per_s": reference,
            "lightning_overhead": (reference / lightning) if reference else None,
        }
        print(name, results[name], flush=True)
    return results
