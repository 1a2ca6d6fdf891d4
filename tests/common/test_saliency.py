"""Saliency metrics against values worked out by hand on 2×2 / 3×3 maps (MIT benchmark definitions)."""

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.common.saliency import (
    EPS,
    KLDivergenceSaliency,
    SaliencyCC,
    SaliencyMetrics,
    SaliencyNSS,
    SaliencySIM,
    cc,
    centre_bias_map,
    fixation_map_from_points,
    fixations_from_gaze_map,
    kld,
    nss,
    saliency_kld_loss,
    sim,
)

REPO = Path(__file__).resolve().parents[2]


def t(rows, dtype=torch.float64):
    """A single map as a 1×1×H×W tensor."""
    return torch.tensor(rows, dtype=dtype).view(1, 1, len(rows), len(rows[0]))


# -- KLD ---------------------------------------------------------------------------------------------------


def test_kld_2x2_by_hand():
    P = t([[0.1, 0.2], [0.3, 0.4]])
    G = t([[0.0, 0.5], [0.5, 0.0]])
    # Σ G·log(ε + G/(P + ε)): only the two G = 0.5 pixels count
    expected = 0.5 * math.log(EPS + 0.5 / (0.2 + EPS)) + 0.5 * math.log(EPS + 0.5 / (0.3 + EPS))
    assert math.isclose(expected, 0.5 * math.log(2.5) + 0.5 * math.log(5 / 3), rel_tol=1e-12)
    assert kld(P, G).item() == pytest.approx(expected, rel=1e-12)
    # both maps are normalised to sum 1 first
    assert kld(10 * P, 4 * G).item() == pytest.approx(expected, rel=1e-12)
    assert kld(P.float(), G.float()).item() == pytest.approx(expected, rel=1e-6)
    assert kld(G, G).item() == pytest.approx(0.0, abs=1e-12)


def test_kld_epsilon_when_prediction_has_zeros():
    P = t([[0.0, 0.5], [0.5, 0.0]])
    G = t([[0.5, 0.5], [0.0, 0.0]])
    # pixel (0,0): 0.5·log(ε + 0.5/(0 + ε)) = 0.5·log(0.5/ε + ε); pixel (0,1): 0.5·log(ε + 1)
    expected = 0.5 * math.log(EPS + 0.5 / EPS) + 0.5 * math.log(EPS + 0.5 / (0.5 + EPS))
    assert expected == pytest.approx(17.6753, abs=1e-4)  # finite, dominated by log(1/ε)
    assert kld(P, G).item() == pytest.approx(expected, rel=1e-12)
    assert kld(P.float(), G.float()).item() == pytest.approx(expected, rel=1e-6)
    # a different ε gives a different (finite) number: the ε is part of the definition
    other = 0.5 * math.log(1e-6 + 0.5 / 1e-6) + 0.5 * math.log(1e-6 + 0.5 / (0.5 + 1e-6))
    assert kld(P, G, eps=1e-6).item() == pytest.approx(other, rel=1e-12)
    assert abs(other - expected) > 5


# -- SIM ---------------------------------------------------------------------------------------------------


def test_sim_2x2_by_hand_with_min_max():
    P = t([[1.0, 2.0], [3.0, 4.0]])  # min-max -> [0, 1/3, 2/3, 1], /2 -> [0, 1/6, 1/3, 1/2]
    G = t([[1.0, 2.0], [2.0, 1.0]])  # min-max -> [0, 1, 1, 0],     /2 -> [0, 1/2, 1/2, 0]
    assert sim(P, G).item() == pytest.approx(1 / 6 + 1 / 3, rel=1e-12)
    # pysaliency's SIM (no min-max) would give Σ min([.1,.2,.3,.4], [1/6,1/3,1/3,1/6]) = .7667: not ours
    assert sim(P, G).item() != pytest.approx(0.1 + 0.2 + 0.3 + 1 / 6, abs=1e-3)
    assert sim(G, G).item() == pytest.approx(1.0)


def test_sim_3x3_by_hand():
    P = t([[0, 0, 0], [0, 2, 2], [0, 0, 0]])  # -> 1/2 at (1,1), (1,2)
    G = t([[0, 0, 0], [0, 4, 0], [0, 0, 0]])  # -> 1 at (1,1)
    assert sim(P, G).item() == pytest.approx(0.5)
    # a constant map is treated as uniform (no min-max range)
    assert sim(torch.ones(1, 1, 3, 3, dtype=torch.float64), G).item() == pytest.approx(1 / 9)


# -- CC ----------------------------------------------------------------------------------------------------


def test_cc_2x2_by_hand():
    P = t([[1.0, 2.0], [3.0, 4.0]])  # centred [-1.5, -.5, .5, 1.5]
    G = t([[0.0, 0.0], [1.0, 1.0]])  # centred [-.5, -.5, .5, .5]
    # Σ p·g = 2, Σ p² = 5, Σ g² = 1
    assert cc(P, G).item() == pytest.approx(2 / math.sqrt(5), rel=1e-12)
    assert cc(P, 5 - P).item() == pytest.approx(-1.0)
    assert cc(3 * P + 7, P).item() == pytest.approx(1.0)
    assert cc(torch.ones_like(P), G).item() == 0.0


def test_prediction_resized_bilinear_to_ground_truth_size():
    pred = t([[0.0, 1.0], [0.0, 1.0]])  # bilinear (align_corners=False) to 4 columns: [0, .25, .75, 1]
    gt = t([[0, 1, 2, 3]] * 4)
    # Pearson of [0, .25, .75, 1] and [0, 1, 2, 3]: cov 1.75, Σp² .625, Σg² 5
    assert cc(pred, gt).item() == pytest.approx(1.75 / math.sqrt(0.625 * 5), rel=1e-12)
    up = F.interpolate(pred, size=(4, 4), mode="bilinear", align_corners=False)
    for fn in (kld, sim, cc):
        assert fn(pred, gt).item() == pytest.approx(fn(up, gt).item(), rel=1e-12)


# -- NSS ---------------------------------------------------------------------------------------------------


def test_nss_3x3_by_hand_ddof1_vs_ddof0():
    P = t([[0, 0, 0], [0, 9, 0], [0, 0, 0]])  # mean 1, Σ(x−1)² = 8·1 + 64 = 72
    centre = t([[0, 0, 0], [0, 1, 0], [0, 0, 0]]).bool()
    # ddof 1: std = sqrt(72/8) = 3 -> (9 − 1)/3;  ddof 0: std = sqrt(72/9) = sqrt(8)
    assert nss(P, centre).item() == pytest.approx(8 / 3, rel=1e-12)
    assert nss(P, centre, ddof=0).item() == pytest.approx(8 / math.sqrt(8), rel=1e-12)
    assert nss(P, centre).item() != pytest.approx(nss(P, centre, ddof=0).item(), rel=1e-3)
    two = t([[1, 0, 0], [0, 1, 0], [0, 0, 0]])  # centre + a corner: mean of 8/3 and −1/3
    assert nss(P, two).item() == pytest.approx((8 / 3 - 1 / 3) / 2, rel=1e-12)
    assert nss(P, two, ddof=0).item() == pytest.approx((8 - 1) / (2 * math.sqrt(8)), rel=1e-12)


def test_kld_of_an_all_zero_prediction_is_scored_as_the_mit_code_does():
    """MIT KLdiv.m leaves an all-zero map un-normalised (``if any(map1(:))``): Σ G·log(ε + G/ε)."""
    zero = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    uniform = torch.full((1, 1, 16, 16), 1 / 256, dtype=torch.float64)
    expected = math.log(EPS + (1 / 256) / EPS)  # 256 pixels of G = 1/256
    assert expected == pytest.approx(30.4985, abs=1e-4)
    assert kld(zero, uniform).item() == pytest.approx(expected, rel=1e-12)
    # G on two pixels (3/4, 1/4), any scale: 0.75·log(ε + 0.75/ε) + 0.25·log(ε + 0.25/ε)
    G = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    G[0, 0, 3, 4], G[0, 0, 9, 9] = 6.0, 2.0
    two = 0.75 * math.log(EPS + 0.75 / EPS) + 0.25 * math.log(EPS + 0.25 / EPS)
    assert two == pytest.approx(35.4814, abs=1e-4)
    assert kld(zero, G).item() == pytest.approx(two, rel=1e-12)
    assert kld(G, torch.zeros_like(G)).item() == 0.0  # an all-zero ground truth: 0, as in MIT
    # the metric class counts the broken frame in its mean instead of skipping it as NaN
    metric = KLDivergenceSaliency()
    metric.update(torch.cat([zero, G]), torch.cat([uniform, G]))
    assert metric.compute().item() == pytest.approx((expected + 0.0) / 2, rel=1e-6)  # float32 state


def test_nss_metric_class_and_function_share_one_definition_at_the_real_fixations():
    g = torch.Generator().manual_seed(3)
    P = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64)
    # blurred gaze maps (positive everywhere) and the binary maps of their real fixation points
    fix = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    fix[0, 0, 2, 3] = fix[1, 0, 5, 5] = fix[1, 0, 6, 1] = fix[2, 0, 0, 7] = True  # item 3: no fixation
    gaze = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64) + 0.01
    z = (P - P.mean(dim=(2, 3), keepdim=True)) / P.flatten(1).std(dim=1).view(4, 1, 1, 1)  # MIT: ddof 1
    by_hand = [z[0, 0, 2, 3], (z[1, 0, 5, 5] + z[1, 0, 6, 1]) / 2, z[2, 0, 0, 7]]
    scores = nss(P, fix)
    for i in range(3):
        assert scores[i].item() == pytest.approx(by_hand[i].item(), rel=1e-12)
    assert math.isnan(scores[3].item())
    metric = SaliencyNSS()
    metric.update(P, gaze, fixations=fix)  # the fixations, not the blurred map's local maxima
    assert metric.compute().item() == pytest.approx(sum(v.item() for v in by_hand) / 3, rel=1e-6)
    # the collection passes fixations to NSS only; KLD/SIM/CC still compare with the gaze map
    out = SaliencyMetrics()
    out.update(P, gaze, fixations=fix)
    values = out.compute()
    assert values["nss"].item() == pytest.approx(metric.compute().item(), rel=1e-6)
    assert values["kld"].item() == pytest.approx(kld(P, gaze).mean().item(), rel=1e-6)


def test_nss_of_a_continuous_density_map_uses_map_greater_than_zero():
    """The documented rule for data with only fixation-density maps: fixated = density > 0 (MIT)."""
    P = t([[0, 0, 0], [0, 9, 0], [0, 0, 0]])
    density = t([[0.0, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.4]])  # two pixels > 0: centre, corner
    assert nss(P, density).item() == pytest.approx((8 / 3 - 1 / 3) / 2, rel=1e-12)
    metric = SaliencyNSS()
    metric.update(P, density)  # no fixations given: the target density, > 0
    assert metric.compute().item() == pytest.approx((8 / 3 - 1 / 3) / 2, rel=1e-6)
    # a map positive everywhere fixates every pixel: the mean of a z-score, 0
    assert nss(P, torch.full((1, 1, 3, 3), 1 / 9)).item() == pytest.approx(0.0, abs=1e-12)


def test_nss_degenerate_cases():
    P = t([[0, 0, 0], [0, 9, 0], [0, 0, 0]])
    assert math.isnan(nss(P, torch.zeros(1, 1, 3, 3, dtype=torch.bool)).item())  # no fixation
    assert nss(torch.ones(1, 1, 3, 3), t([[1, 0, 0], [0, 0, 0], [0, 0, 0]])).item() == 0.0  # constant


def test_batched_metrics_are_per_sample():
    P = torch.cat([t([[0.1, 0.2], [0.3, 0.4]]), t([[1.0, 2.0], [3.0, 4.0]])])
    G = torch.cat([t([[0.0, 0.5], [0.5, 0.0]]), t([[0.0, 0.0], [1.0, 1.0]])])
    for fn in (kld, sim, cc):
        out = fn(P, G)
        assert out.shape == (2,)
        for i in range(2):
            assert out[i].item() == pytest.approx(fn(P[i : i + 1], G[i : i + 1]).item())
        # B×H×W is accepted too
        torch.testing.assert_close(fn(P[:, 0], G[:, 0]), out)


# -- fixations ---------------------------------------------------------------------------------------------


def test_fixation_map_from_points():
    pts = torch.tensor([[0.5, 0.25], [1.0, 1.0], [float("nan"), float("nan")], [0.0, 0.9]])
    m = fixation_map_from_points(pts, 4, 4)
    assert m.shape == (1, 4, 4) and m.dtype == torch.bool
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 2] = expected[3, 3] = expected[3, 0] = True  # (x=.5,y=.25) -> row 1, col 2; (1,1) clipped
    assert torch.equal(m[0], expected)
    batch = fixation_map_from_points([pts, torch.tensor([[2.0, 1.0]])], 4, 4, normalized=False)
    assert batch.shape == (2, 1, 4, 4)
    assert batch[1, 0].nonzero().tolist() == [[1, 2]]
    assert not fixation_map_from_points(torch.empty(0, 2), 3, 3).any()


def test_fixations_from_gaze_map_local_maxima():
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    g = torch.exp(-((ys - 8) ** 2 + (xs - 10) ** 2) / 18) + 0.6 * torch.exp(
        -((ys - 22) ** 2 + (xs - 25) ** 2) / 18
    )
    gaze = (g / g.sum()).view(1, 1, 32, 32)
    fix = fixations_from_gaze_map(gaze)
    assert fix.shape == gaze.shape and fix.dtype == torch.bool
    assert sorted(map(tuple, fix[0, 0].nonzero().tolist())) == [(8, 10), (22, 25)]
    # min_rel drops the weaker peak
    assert fixations_from_gaze_map(gaze, min_rel=0.7)[0, 0].nonzero().tolist() == [[8, 10]]
    # a uniform map (frame without gaze) has no fixation
    assert not fixations_from_gaze_map(torch.full((2, 1, 8, 8), 1 / 64)).any()


# -- loss and baseline -------------------------------------------------------------------------------------


def test_saliency_kld_loss_by_hand_and_gradients():
    P = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    logits = torch.log(P).view(1, 1, 2, 2).clone().requires_grad_(True)
    G = t([[0.0, 0.5], [0.5, 0.0]])
    loss = saliency_kld_loss(logits, G)
    expected = 0.5 * (math.log(0.5) - math.log(0.2)) + 0.5 * (math.log(0.5) - math.log(0.3))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss.item() == pytest.approx(kld(P.view(1, 1, 2, 2), G).item(), rel=1e-9)
    loss.backward()
    # d/dlogits of KL(G‖softmax) = softmax − G
    torch.testing.assert_close(logits.grad.view(-1), P - G.view(-1))
    # un-normalised logits and targets are normalised; torch's kl_div agrees
    raw = torch.randn(3, 1, 4, 5, dtype=torch.float64)
    gt = torch.rand(3, 1, 4, 5, dtype=torch.float64)
    ref = F.kl_div(
        raw.flatten(1).log_softmax(1),
        gt.flatten(1) / gt.flatten(1).sum(1, keepdim=True),
        reduction="batchmean",
    )
    assert saliency_kld_loss(raw + 3.0, 7 * gt).item() == pytest.approx(ref.item(), rel=1e-10)


def test_saliency_kld_loss_valid_mask_and_reductions():
    raw = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    gt = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    per = saliency_kld_loss(raw, gt, reduction="none")
    assert per.shape == (3,)
    valid = torch.tensor([True, False, True])
    assert saliency_kld_loss(raw, gt, valid).item() == pytest.approx(((per[0] + per[2]) / 2).item())
    assert saliency_kld_loss(raw, gt, reduction="sum").item() == pytest.approx(per.sum().item())
    assert saliency_kld_loss(raw, gt, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(saliency_kld_loss(raw.bfloat16(), gt))


def test_centre_bias_map():
    m = centre_bias_map(9, 13, sigma_frac=0.2)
    assert m.shape == (9, 13)
    assert m.sum().item() == pytest.approx(1.0, rel=1e-6)
    assert divmod(int(m.argmax()), 13) == (4, 6)
    torch.testing.assert_close(m, m.flip(0))
    torch.testing.assert_close(m, m.flip(1))
    # widths relative to the size: σ_y = 0.1·10 = 1 px, σ_x = 0.1·20 = 2 px; the centre is at (5, 10) and
    # pixel i's centre at i + 0.5, so row 5 / row 6 are 0.5 / 1.5 px from it, column 10 / 12 are 0.5 / 2.5 px
    m64 = centre_bias_map(10, 20, sigma_frac=0.1, dtype=torch.float64)
    assert (m64[6, 10] / m64[5, 10]).item() == pytest.approx(math.exp(-(1.5**2 - 0.5**2) / 2))
    assert (m64[5, 12] / m64[5, 10]).item() == pytest.approx(math.exp(-(2.5**2 - 0.5**2) / (2 * 2**2)))


# -- torchmetrics ------------------------------------------------------------------------------------------


def _batch():
    P = torch.cat(
        [t([[0.1, 0.2], [0.3, 0.4]]), t([[1.0, 2.0], [3.0, 4.0]]), t([[4.0, 1.0], [1.0, 1.0]])]
    ).float()
    G = torch.cat(
        [t([[0.0, 0.5], [0.5, 0.0]]), t([[0.0, 0.0], [1.0, 1.0]]), t([[1.0, 0.0], [0.0, 0.0]])]
    ).float()
    return P, G


@pytest.mark.parametrize(("cls", "fn"), [(KLDivergenceSaliency, kld), (SaliencySIM, sim), (SaliencyCC, cc)])
def test_metric_classes_mean_over_samples(cls, fn):
    P, G = _batch()
    metric = cls()
    metric.update(P[:2], G[:2])
    metric.update(P[2:], G[2:])
    assert metric.compute().item() == pytest.approx(fn(P, G).mean().item(), rel=1e-6)
    metric.reset()
    metric.update(P, G, valid=torch.tensor([True, False, True]))
    assert metric.compute().item() == pytest.approx(fn(P, G)[[0, 2]].mean().item(), rel=1e-6)
    # log-probability input
    logm = cls(log_input=True)
    logm.update(torch.log(P / P.sum(dim=(2, 3), keepdim=True)), G)
    assert logm.compute().item() == pytest.approx(fn(P, G).mean().item(), rel=1e-5)


def test_nss_metric_with_gaze_maps_and_fixation_maps():
    P = torch.cat([t([[0, 0, 0], [0, 9, 0], [0, 0, 0]])] * 3).float()
    gaze = torch.zeros(3, 1, 3, 3)
    gaze[0, 0, 1, 1] = 1.0  # fixation at the centre -> 8/3
    gaze[1, 0, 0, 0] = 1.0  # corner -> −1/3
    # item 2 has no fixation (an empty fixation map): NaN, skipped. (Until issue 11 a uniform gaze map stood
    # for "no gaze" here; under the MIT rule map > 0 a uniform map fixates every pixel, see the test below.)
    metric = SaliencyNSS()
    metric.update(P, gaze)
    assert metric.compute().item() == pytest.approx((8 / 3 - 1 / 3) / 2, rel=1e-6)
    m0 = SaliencyNSS(ddof=0)
    m0.update(P, fixations_from_gaze_map(gaze))  # a bool fixation map is used as is
    assert m0.compute().item() == pytest.approx((8 - 1) / (2 * math.sqrt(8)), rel=1e-6)
    empty = SaliencyNSS()
    empty.update(P[2:], gaze[2:])
    assert math.isnan(empty.compute().item())


def test_saliency_metrics_collection():
    P, G = _batch()
    metrics = SaliencyMetrics(prefix="val/")
    metrics.update(P, G)
    out = metrics.compute()
    assert set(out) == {"val/kld", "val/sim", "val/cc", "val/nss"}
    assert out["val/kld"].item() == pytest.approx(kld(P, G).mean().item(), rel=1e-6)
    assert out["val/cc"].item() == pytest.approx(cc(P, G).mean().item(), rel=1e-6)
    # identical states after an all-invalid first batch must not merge the metrics
    metrics = SaliencyMetrics()
    metrics.update(P, G, valid=torch.zeros(3, dtype=torch.bool))
    metrics.update(P, G)
    out = metrics.compute()
    assert out["kld"].item() == pytest.approx(kld(P, G).mean().item(), rel=1e-6)
    assert out["sim"].item() == pytest.approx(sim(P, G).mean().item(), rel=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_metrics_sync_across_two_gloo_processes(tmp_path):
    """Each rank sees a different, uneven share; compute() on every rank is the global sample mean."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, torch, torch.distributed as dist
            from lightning_modules.common.saliency import SaliencyMetrics, kld, cc
            dist.init_process_group("gloo")
            rank = dist.get_rank()
            g = torch.Generator().manual_seed(0)
            P, G = torch.rand(5, 1, 6, 6, generator=g), torch.rand(5, 1, 6, 6, generator=g)
            mine = slice(0, 2) if rank == 0 else slice(2, 5)
            m = SaliencyMetrics()
            m.update(P[mine], G[mine])
            out = m.compute()
            assert abs(out["kld"].item() - kld(P, G).mean().item()) < 1e-5, out
            assert abs(out["cc"].item() - cc(P, G).mean().item()) < 1e-5, out
            dist.destroy_process_group()
            print("ok", rank)
            """
        )
    )
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, out
        assert f"ok {r}" in out
