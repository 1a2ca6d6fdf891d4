"""Every model as its demo or its published config builds it, as a ``benchmarks.steps.Case`` (model +
fixed batches).

Each model is built from its config exactly as ``lightning fit`` builds it (``SonolabCLI``, no
trainer run); its first training batches are drawn from its own DataModule once, so the step benchmark
times the model, not the loader (whose rate is measured on its own).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.steps import Case, to_device, vqa_case
from lightning_modules.cli import SonolabCLI, configure_interpolation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# the main config (the paper's sizes), then the demo overlay (small sizes for a CPU)
MODELS: dict[str, list[str]] = {
    "VideoQualityGAN": ["vqa.yaml", "vqa/demo.yaml"],
    "CRLUIQA": ["crl_uiqa.yaml", "crl_uiqa/demo.yaml"],
    "DualRepSSL": ["dualrep.yaml", "dualrep/demo.yaml"],
    "CLSTMUNet": ["clstm_unet.yaml", "clstm_unet/demo.yaml"],
}


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


def loader_rate(datamodule: Any, n: int) -> tuple[list[Any], float]:
    """The first ``n`` training batches and the loader's rate in batches/s over them (the first batch,
    which starts the iterator, included)."""
    batches = []
    start = time.perf_counter()
    for batch in datamodule.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            break
    return batches, len(batches) / (time.perf_counter() - start)


def config_case(
    name: str,
    extra: list[str] | None = None,
    n_batches: int = 4,
    device: torch.device | str = "cpu",
    size: str = "demo",
) -> Case:
    """``name`` (a key of MODELS) built from its demo config, or from its main config alone when ``size``
    is ``published`` (the paper's image size, clip length, widths and batch), + ``extra`` CLI arguments,
    with its first ``n_batches`` training batches on ``device``. VideoQualityGAN without its zoom-in
    (frozen, one frame per clip: a small share of the step), so no zoom pretraining is needed first."""
    if size not in ("demo", "published"):
        raise ValueError(f"size must be 'demo' or 'published', not {size!r}")
    extra = list(extra or [])
    note = None
    if name == "VideoQualityGAN":
        extra = ["--model.init_args.use_zoom=false", "--model.init_args.zoom_checkpoint=null", *extra]
        note = "without the zoom-in (frozen; one frame per clip)"
    cli = build(MODELS[name] if size == "demo" else MODELS[name][:1], extra)
    batches, rate = loader_rate(cli.datamodule, n_batches)
    device = torch.device(device)
    meta = {"batch": cli.datamodule.per_device_batch_size(), "loader_batches_per_s": rate}
    return Case(name, cli.model.to(device), to_device(batches, device), device, cli.datamodule, note, meta)


def case(name: str, size: str = "demo", device: torch.device | str = "cpu", **kwargs: Any) -> Case:
    """A model's case: VideoQualityGAN at a named size on random clips (``benchmarks.steps.VQA_SIZES``)
    when ``size`` is not ``demo-config``; every model from its demo config otherwise."""
    if name == "VideoQualityGAN" and size != "demo-config":
        return vqa_case(size, device=device)
    return config_case(name, device=device, **kwargs)
