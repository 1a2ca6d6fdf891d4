"""Shared fixtures: one tiny synthetic dataset per test session, caches in a temp folder, W&B off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sonolab")


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(session_tmp: Path) -> Path:
    """Clip caches go to a per-session folder, never the developer's ./.cache."""
    cache = session_tmp / "cache"
    os.environ["SONOLAB_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_dataset(session_tmp: Path) -> Path:
    """The tiny synthetic PULSE-style dataset (generated once; tests must not modify it)."""
    from datamodules.synthetic import generate_dataset

    return generate_dataset(session_tmp / "tiny", preset="tiny", seed=0)
