"""all_gather_with_grad across 2 gloo CPU processes: losses and input gradients equal single-process ones.

The test runs this file as a script (``python test_all_gather.py OUT_DIR PORT``), which spawns 2 ranks
with ``torch.multiprocessing.spawn``; each rank holds half of a fixed batch, writes its loss values and
input gradients to OUT_DIR, and the test compares them with the same losses computed on the whole batch
in one process. (Running as a script keeps the spawned workers importable whatever pytest's import mode.)

Each rank backpropagates ``loss / world_size``: that is what DDP's gradient averaging does to the
parameter gradients, so the input gradients must then equal the single-process ones exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.dualrep_ssl.losses import info_nce_excluding_positive, mmcl_loss, mmsl_loss

WORLD = 2
N, D = 6, 5  # whole batch; each rank holds N / WORLD rows
TAU, PI, MARGIN = 0.1, 0.5, 0.2
NAMES = ("F_v", "F_a", "F_va", "F_i", "F_vi", "mu_v", "mu_a", "mu_i")
USED = {"nce": NAMES[:2], "mmcl": NAMES[:5], "mmsl": NAMES[5:]}


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {name: torch.randn(N, D, generator=g) for name in NAMES}


def _local_losses(x: dict[str, torch.Tensor], gather) -> dict[str, torch.Tensor]:
    """The three losses as one rank computes them (``gather`` returns ``(list(tensors), 0)`` in one process)."""
    # 1) InfoNCE: local video queries against the keys of all ranks
    (keys,), off = gather(x["F_a"])
    nce = info_nce_excluding_positive(x["F_v"], keys, TAU, positive_offset=off)
    # 2) MMCL: same pattern with all four key sets
    (f_a, f_va, f_i, f_vi), off = gather(x["F_a"], x["F_va"], x["F_i"], x["F_vi"])
    mmcl, _ = mmcl_loss(x["F_v"], f_a, f_va, f_i, f_vi, pi=PI, tau=TAU, positive_offset=off)
    # 3) MMSL: hardest negatives need rows and columns -> every rank computes the full-batch loss
    (mu_v, mu_a, mu_i), _ = gather(x["mu_v"], x["mu_a"], x["mu_i"])
    mmsl, _ = mmsl_loss(mu_v, mu_a, mu_i, margin=MARGIN)
    return {"nce": nce, "mmcl": mmcl, "mmsl": mmsl}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from lightning_modules.common.distributed import all_gather_with_grad, gather_for_contrastive

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        per = N // world
        full = _batch()
        results: dict[str, torch.Tensor] = {}
        for loss_name in ("nce", "mmcl", "mmsl"):
            x = {k: v[rank * per : (rank + 1) * per].clone().requires_grad_(True) for k, v in full.items()}
            loss = _local_losses(x, gather_for_contrastive)[loss_name]
            (loss / world).backward()
            value = loss.detach().clone()
            dist.all_reduce(value)
            results[f"{loss_name}/loss"] = value / world  # mean over ranks
            for k, v in x.items():
                results[f"{loss_name}/grad/{k}"] = (
                    v.grad.clone() if v.grad is not None else torch.zeros_like(v)
                )
        # unequal local batch sizes: rank 0 holds 3 rows, rank 1 holds 2
        rows = torch.arange(3.0 if rank == 0 else 2.0).add(10 * rank).view(-1, 1).requires_grad_(True)
        gathered = all_gather_with_grad(rows)
        results["uneven/gathered"] = gathered.detach().clone()
        (gathered * torch.arange(1.0, 6.0).view(-1, 1)).sum().backward()
        results["uneven/grad"] = rows.grad.clone()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
@pytest.mark.timeout(120)
def test_gathered_losses_and_gradients_match_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    per = N // WORLD
    for loss_name in ("nce", "mmcl", "mmsl"):
        x = {k: v.clone().requires_grad_(True) for k, v in _batch().items()}
        loss = _local_losses(x, lambda *t: (list(t), 0))[loss_name]
        loss.backward()
        for r, res in enumerate(ranks):
            torch.testing.assert_close(res[f"{loss_name}/loss"], loss.detach(), rtol=1e-5, atol=1e-6)
            for k, v in x.items():
                expected = v.grad[r * per : (r + 1) * per] if v.grad is not None else torch.zeros(per, D)
                torch.testing.assert_close(
                    res[f"{loss_name}/grad/{k}"],
                    expected,
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda m, k=k, r=r, ln=loss_name: f"{ln}: grad of {k} on rank {r}: {m}",
                )
        for k in USED[loss_name]:  # the comparison is not between zeros
            assert x[k].grad is not None and x[k].grad.abs().sum() > 0, (loss_name, k)

    want = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0]).view(-1, 1)
    for res in ranks:
        torch.testing.assert_close(res["uneven/gathered"], want)
    # d/d rows of sum_r sum_j w_j·gathered_j: each rank contributes w once -> WORLD·w for its own slice
    torch.testing.assert_close(ranks[0]["uneven/grad"], WORLD * torch.tensor([[1.0], [2.0], [3.0]]))
    torch.testing.assert_close(ranks[1]["uneven/grad"], WORLD * torch.tensor([[4.0], [5.0]]))


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(WORLD, int(sys.argv[2]), sys.argv[1]), nprocs=WORLD, join=True)
