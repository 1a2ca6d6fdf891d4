"""Shared fixtures: one tiny synthetic dataset per test session, caches in a temp folder, W&B off."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

HEAVY_LIST = Path(__file__).with_name("heavy_tests.txt")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests listed in tests/heavy_tests.txt (the ones that took seconds in a full run, measured
    with SONOLAB_TEST_REPORT below) as ``heavy``: ``make test-quick`` leaves them out."""
    if not HEAVY_LIST.is_file():
        return
    heavy = {line.split("#")[0].strip() for line in HEAVY_LIST.read_text().splitlines()} - {""}
    for item in items:
        if item.nodeid in heavy:
            item.add_marker(pytest.mark.heavy)


def _resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


TRIM_ABOVE_MB = float(os.environ.get("SONOLAB_TEST_TRIM_MB", "2048"))


def release_memory() -> None:
    """Above TRIM_ABOVE_MB resident: collect garbage and return freed heap pages to the OS (glibc keeps
    them otherwise, so a one-process run of hundreds of trainings would hold every run's high-water mark).
    Below it nothing is done: a trim costs about a second."""
    if not Path("/proc/self/statm").is_file() or _resident_mb() < TRIM_ABOVE_MB:
        return
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture(autouse=True)
def released_memory():
    """Memory released after every test (and before every CLI run of :func:`run_cli`)."""
    yield
    release_memory()


@pytest.fixture(autouse=True)
def own_wandb_service_per_process():
    """After every test, forget this process's W&B service. A W&B run in this process exports
    WANDB_SERVICE; every `lightning` process a later test starts would inherit it and attach to this
    service instead of starting its own, as a user's command does (under load a second run of the same id
    then failed: "run ID two-nodes is in use"). This process's own W&B runs keep their connection."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """With SONOLAB_TEST_REPORT=<file>: one JSON line per test with its wall time, the process's resident
    memory after it and the peak so far (how the heavy list and the memory figures are measured)."""
    path = os.environ.get("SONOLAB_TEST_REPORT")
    if not path:
        yield
        return
    import json
    import resource
    import time

    start = time.perf_counter()
    yield
    record = {
        "test": item.nodeid,
        "seconds": round(time.perf_counter() - start, 2),
        "rss_mb": round(_resident_mb()),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


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


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run the `lightning` CLI in this process, in a temp working dir (runs/, caches land there).

    Usage: ``cli = run_cli(["fit", "--config", str(CONFIGS / "vqa.yaml"), ...])``; returns the LightningCLI.
    Config paths must be absolute (use the CONFIGS constant via `configs_dir`).
    """
    from lightning_modules.cli import main

    monkeypatch.chdir(tmp_path)

    def run(args: list[str]):
        release_memory()  # what the test's previous runs freed (drop their CLI objects first: `del cli`)
        return main([str(a) for a in args])

    return run


@pytest.fixture
def run_cli_subprocess(tmp_path: Path):
    """Run the installed `lightning` console script, as a user does, in a fresh process (needed for DDP:
    Lightning re-launches the command once per device). Returns the CompletedProcess; raises with the output
    on a non-zero exit status."""
    import subprocess
    import sys

    script = Path(sys.executable).with_name("lightning")
    if not script.is_file():
        raise FileNotFoundError(f"{script} missing: run `make install` (it installs the console scripts)")

    def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(os.environ, WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [str(script), *map(str, args)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"CLI failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    return CONFIGS
