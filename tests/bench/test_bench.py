"""Benchmarks: the plain loop does what Trainer.fit does, `make bench --quick` and the reduced
`make bench-gpu` run end to end on a CPU and write what they promise (tiny sizes, 2 steps)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

# `benchmarks` is run from the checkout (`python -m benchmarks.run`), not installed: import it from there
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.steps import fixed_batches, optimizers_of, vqa_case


class _Reseed(Callback):
    """Same random draws (z, pool choices) in Lightning's step as in the plain one."""

    def on_train_batch_start(self, *args) -> None:
        torch.manual_seed(123)


def test_plain_step_is_the_lightning_step():
    """One G + D step of the plain loop changes every parameter exactly as Trainer.fit's step does: the
    benchmark's 'plain loop' runs the same nets, losses and optimisers, so its time is a fair reference."""
    from lightning.pytorch import Trainer

    case = vqa_case("tiny", n_batches=1)
    plain_model = copy.deepcopy(case.model)
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision="32-true",
        accelerator="cpu",
        devices=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[_Reseed()],
    )
    trainer.fit(case.model, datamodule=fixed_batches(case.batches, case.source))
    plain = copy.copy(case)
    plain.model = plain_model
    step = plain.plain_step("32-true")
    torch.manual_seed(123)
    step(case.batches[0], 0)
    before = dict(vqa_case("tiny", n_batches=1).model.named_parameters())
    lightning = dict(case.model.named_parameters())
    moved = 0
    for name, p in plain_model.named_parameters():
        torch.testing.assert_close(p, lightning[name], rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(p, before[name]))
    assert moved == len(lightning), "every parameter (G and D) took a step"
    opts = optimizers_of(plain_model.configure_optimizers())
    assert [o.defaults["fused"] for o in opts] == [True, True], "Adam's fused kernel on the CPU"


def test_fp16_step_uses_one_scaler_per_gan_optimizer():
    """16-mixed: the G and D steps each go through their own GradScaler and keep finite weights."""
    case = vqa_case("tiny", n_batches=1)
    step = case.plain_step("16-mixed")
    for i in range(2):
        step(case.batches[0], i)
    assert all(torch.isfinite(p).all() for p in case.model.parameters())
    scalers = [c.cell_contents for c in step.__closure__ if isinstance(c.cell_contents, torch.amp.GradScaler)]
    assert len(scalers) == 2 and scalers[0] is not scalers[1]


def test_bench_quick_compares_lightning_and_plain(tmp_path):
    from benchmarks.run import main

    out = tmp_path / "bench.json"
    report = main(["--quick", "--no-data", "--models", "tiny", "--precisions", "32-true", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    cpu = report["machine"]["cpu"]
    assert isinstance(cpu["avx512f"], bool) and isinstance(cpu["amx_bf16"], bool) and cpu["model"]
    (row,) = report["steps"]
    r = row["precisions"]["32-true"]
    assert r["steps_each"] == 2 and r["lightning_s"] > 0 and r["plain_s"] > 0
    assert r["lightning_over_plain"] == pytest.approx(r["lightning_s"] / r["plain_s"])


def test_full_bench_times_every_model_at_its_demo_and_published_size(tiny_dataset):
    """`make bench` lists each model twice (demo config, published size); a published case is the model's
    main config alone: CLSTMUNet's U-Net of width 32 and depth 4 on 128-pixel frames, not the demo's."""
    import yaml

    from benchmarks.models import CONFIGS, config_case
    from benchmarks.run import case_specs

    labels = [spec["label"] for spec in case_specs(quick=False, root=None)]
    for name in ("VideoQualityGAN", "CRLUIQA", "DualRepSSL", "CLSTMUNet"):
        assert f"{name} (demo config)" in labels
        assert sum(label.startswith(name) and "published" in label for label in labels) == 1
    assert all("demo" not in label for label in case_specs(False, None, ("published",)))

    main = yaml.safe_load((CONFIGS / "clstm_unet.yaml").read_text())
    tiny = [f"--data.init_args.root={tiny_dataset}", "--data.init_args.synthetic=null"]
    case = config_case("CLSTMUNet", extra=tiny, n_batches=1, size="published")
    hp, init = case.model.hparams, main["model"]["init_args"]
    assert (hp.base_channels, hp.depth) == (init["base_channels"], init["depth"]) == (32, 4)
    assert case.batches[0]["video"].shape[-1] == main["data"]["init_args"]["image_size"] == 128
    with pytest.raises(ValueError, match="size must be"):
        config_case("CLSTMUNet", size="paper")


def test_bench_gpu_reduced_form_runs_every_variant_on_cpu(tmp_path):
    from benchmarks.gpu import VARIANTS, main

    out = tmp_path / "gpu.json"
    report = main(["--reduced", "--out", str(out)])
    assert json.loads(out.read_text())["reduced"] is True
    results = report["cases"]["VideoQualityGAN tiny"]
    for name in set(VARIANTS) - {"bf16-mixed+compile"}:  # the reduced form compiles once
        assert "error" not in results[name], (name, results[name])
        assert results[name]["step_s"] > 0 and results[name]["steps"] == 2
    assert results["fp32+compile"]["compiled"] == ["d_feature"]  # the smallest network, eager backend
    assert results["flops_per_step"] > 0
    fp32 = results["fp32"]
    assert fp32["tflop_per_s"] == pytest.approx(results["flops_per_step"] / fp32["step_s"] / 1e12)


def test_peak_memory_is_the_steps_own_increase():
    """The memory subprocess reports its own steps' peak, not the (larger) test process's: ru_maxrss would
    carry this process's peak over through fork + exec and give an increase of 0."""
    from benchmarks.run import peak_memory

    mem = peak_memory({"vqa_size": "tiny"}, "32-true", 2, "cpu", timeout=300)
    assert "error" not in mem, mem
    assert 0 < mem["step_rss_increase_mb"] < 2000
    assert mem["peak_rss_mb"] == pytest.approx(mem["rss_before_steps_mb"] + mem["step_rss_increase_mb"])


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not (REPO / ".git").exists(), reason="needs the git checkout (benchmarks.revisions checks out commits)"
)
def test_revisions_times_a_commit_against_the_working_tree(tmp_path):
    """`python -m benchmarks.revisions HEAD .`: each revision's step timed in its own process from its own
    tree (a temporary git worktree for HEAD, this checkout for '.'), same network, ratios to the first;
    the worktree is removed afterwards and an unknown revision is a clear error."""
    from benchmarks.revisions import main

    out = tmp_path / "revisions.json"
    result = main(["HEAD", ".", "--size", "tiny", "--steps", "2", "--rounds", "1", "--out", str(out)])
    assert json.loads(out.read_text())["revisions"].keys() == {"HEAD", "."}
    rows = result["revisions"]
    assert rows["HEAD"]["ratio_to_first"] == 1 and rows["."]["ratio_to_first"] > 0
    assert all(len(row["step_s"]) == 2 and min(row["step_s"]) > 0 for row in rows.values())
    assert result["parameters"] > 0 and result["machine"]["cpu"]["model"] is not None
    worktrees = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True
    ).stdout
    assert "sonolab-revisions-" not in worktrees
    with pytest.raises(SystemExit, match="no-such-revision"):
        main(["no-such-revision", ".", "--size", "tiny", "--steps", "1", "--rounds", "1"])
