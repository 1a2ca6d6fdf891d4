"""PairwiseAccuracy (hand example, ties, per plane, DDP sync), the Spearman metric, blur_monotonicity."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import scipy.stats
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.regression import SpearmanCorrCoef

from lightning_modules.common.pairwise import PairwiseAccuracy, blur_monotonicity

# pair:   0     1 (tie)  2     3     4 (tie)
BETTER = [0.9, 0.5, 0.3, 0.7, 0.2]
WORSE = [0.1, 0.5, 0.4, 0.6, 0.2]
PLANES = ["4ch", "4ch", "abdomen", "abdomen", "head"]
# T: pairs 0 and 3. F: 1 (tie), 2, 4 (tie). overall 2/5; 4ch 1/2; abdomen 1/2; head 0/1; brain: no pair.


def test_hand_example_with_ties_and_planes() -> None:
    m = PairwiseAccuracy(planes=["4ch", "abdomen", "head", "brain"])
    m.update(torch.tensor(BETTER), torch.tensor(WORSE), PLANES)
    out = m.compute()
    assert out["overall"].item() == pytest.approx(0.4)
    assert out["plane/4ch"].item() == pytest.approx(0.5)
    assert out["plane/abdomen"].item() == pytest.approx(0.5)
    assert out["plane/head"].item() == 0.0
    assert math.isnan(out["plane/brain"].item())
    assert m.counts() == {
        "overall": {"T": 2, "F": 3},
        "4ch": {"T": 1, "F": 1},
        "abdomen": {"T": 1, "F": 1},
        "head": {"T": 0, "F": 1},
        "brain": {"T": 0, "F": 0},
    }
    # accumulation over updates; an update without planes counts only overall
    m.update(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), ["brain", "brain"])
    m.update(torch.tensor([1.0]), torch.tensor([0.0]))
    out = m.compute()
    assert out["overall"].item() == pytest.approx(5 / 8)
    assert out["plane/brain"].item() == 1.0
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(m.compute()["overall"].item())


def test_nan_counts_as_false_and_errors() -> None:
    m = PairwiseAccuracy()
    m.update(torch.tensor([float("nan"), 1.0, 0.5]), torch.tensor([0.0, float("nan"), 0.4]))
    assert m.compute()["overall"].item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="not in the metric's plane list"):
        m.update(torch.tensor([1.0]), torch.tensor([0.0]), ["4ch"])
    with pytest.raises(ValueError, match="entries"):
        m.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="duplicate"):
        PairwiseAccuracy(planes=["a", "a"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, queue: mp.Queue) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        m = PairwiseAccuracy(planes=["4ch", "abdomen", "head"])
        # rank 0 gets pairs 0-2, rank 1 pairs 3-4 of the hand example
        sl = slice(0, 3) if rank == 0 else slice(3, 5)
        m.update(torch.tensor(BETTER[sl]), torch.tensor(WORSE[sl]), PLANES[sl])
        out = m.compute()
        queue.put((rank, {k: float(v) for k, v in out.items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_sync_of_per_plane_counts() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = dict(queue.get() for _ in range(2))
    for r in (0, 1):
        assert results[r]["overall"] == pytest.approx(0.4)
        assert results[r]["plane/4ch"] == pytest.approx(0.5)
        assert results[r]["plane/abdomen"] == pytest.approx(0.5)
        assert results[r]["plane/head"] == 0.0


def test_spearman_metric_the_module_logs() -> None:
    """``spearman_pseudo`` is torchmetrics' SpearmanCorrCoef (the one Spearman in the code): hand values, and
    scipy's average-rank Spearman on data with ties, accumulated over batches."""

    def rho(a, b) -> float:
        metric = SpearmanCorrCoef()
        metric.update(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32))
        return float(metric.compute())

    # (torchmetrics keeps an epsilon in the denominator: equal to ~1e-6)
    assert rho([1.0, 2.0, 3.0], [10, 20, 30]) == pytest.approx(1.0, abs=1e-5)
    assert rho([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0, abs=1e-5)
    assert rho([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5, abs=1e-5)
    # no ordering: no correlation
    assert rho([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    metric = SpearmanCorrCoef()
    for i in range(0, 40, 16):
        metric.update(torch.tensor(a[i : i + 16]), torch.tensor(b[i : i + 16]))
    assert float(metric.compute()) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-5)


def test_blur_monotonicity() -> None:
    images = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def sharpness(x: torch.Tensor) -> torch.Tensor:
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))

    assert blur_monotonicity(sharpness, images, [0.0, 0.5, 1.0, 2.0]) == 1.0
    assert blur_monotonicity(lambda x: -sharpness(x), images, [0.0, 1.0, 2.0]) == 0.0
    assert blur_monotonicity(lambda x: torch.zeros(x.shape[0]), images, [0.0, 1.0]) == 0.0  # ties break it
    with pytest.raises(ValueError, match="increasing"):
        blur_monotonicity(sharpness, images, [1.0, 0.5])
