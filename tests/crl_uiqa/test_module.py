"""CRL-UIQA modules, the dataset pseudo-label step and the frame ranking, without the CLI.

Known answers: the loss a training step returns against hand-computed MSE; what each view feeds the loss (the
pseudo-label target unchanged by the weak view, the ε that the strong view drew); the learning-rate schedule
(and the same values as the hand-written lambda it replaced); the classical baselines on reference images;
labels of a dataset against the pure functions of ``datamodules.pseudo_labels`` and against the labels of the
code before they moved to the data layer; the DataModule's batches carrying them; the embedding from a
DualRepSSL checkpoint; rankings by a brightness scorer.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.stats
import torch
from lightning.pytorch import Trainer
from torch import nn

import lightning_modules.crl_uiqa.module as module_mod
from datamodules.errors import DataError
from datamodules.images import ImageDataModule
from datamodules.pseudo_labels import (
    PseudoLabelSpec,
    dataset_pseudo_labels,
    embed_images,
    load_pseudo_labels,
    make_pseudo_labels,
)
from datamodules.pseudo_labels import main as pseudo_label_command
from datamodules.readers import VideoReader
from lightning_modules.crl_uiqa.classical import ClassicalIQA
from lightning_modules.crl_uiqa.embedding import DUALREP_IMAGE_PREFIX, build_embedding_model
from lightning_modules.crl_uiqa.module import CRLUIQA
from lightning_modules.crl_uiqa.nets import PlaneClassifier
from lightning_modules.crl_uiqa.plane_classifier import PlaneClassifierModule
from lightning_modules.crl_uiqa.ranking import rank_clip, rank_frames, rank_images
from lightning_modules.crl_uiqa.views import blur


class MeanScorer(nn.Module):
    """Score = mean pixel value: exactly invariant to flips and 90° turns, known for any image."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3)) + self.bias


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) * 2 - 1


def textures(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth random textures in [-1, 1] (distinct enough that each is its own closest reference)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g) * 2 - 1
    return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------- CRLUIQA steps


def test_training_step_without_views_is_alpha_times_mse() -> None:
    torch.manual_seed(0)
    model = CRLUIQA(image_size=32, in_channels=1, proj_dim=8, consistency=False, relativity=False, alpha=0.05)
    x = images(3)
    loss = model.training_step({"image": x, "pseudo_label": torch.tensor([0.7, 0.1, 0.4])}, 0)
    with torch.no_grad():
        p = model.scorer(x)
    want = 0.05 * ((torch.tensor([0.7, 0.1, 0.4]) - p) ** 2).mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-7)
    assert loss.requires_grad


def test_training_step_feeds_each_view_to_its_loss_term(monkeypatch: pytest.MonkeyPatch) -> None:
    model = CRLUIQA(image_size=32, in_channels=1, proj_dim=8, right_angles=True, eps_range=(0.1, 0.3))
    model.scorer = MeanScorer()
    drawn: dict[str, torch.Tensor] = {}
    seen: dict[str, object] = {}
    real_strong, real_loss = module_mod.strong_view, module_mod.crl_loss

    def strong(images_: torch.Tensor, eps_range, **kwargs):
        out, eps = real_strong(images_, eps_range, **kwargs)
        drawn.update(images=out, eps=eps)
        return out, eps

    def loss(p, p_weak, p_strong, q, eps, *args):
        seen.update(p=p, p_weak=p_weak, p_strong=p_strong, q=q, eps=eps)
        return real_loss(p, p_weak, p_strong, q, eps, *args)

    monkeypatch.setattr(module_mod, "strong_view", strong)
    monkeypatch.setattr(module_mod, "crl_loss", loss)
    x = images(4, seed=3)
    model.training_step({"image": x, "pseudo_label": torch.tensor([0.75, 0.75, 0.25, 0.5])}, 0)
    # L_d's target is the pseudo-label of the source image, whatever the views do
    torch.testing.assert_close(seen["q"], torch.tensor([0.75, 0.75, 0.25, 0.5]))
    torch.testing.assert_close(seen["p"], x.mean(dim=(1, 2, 3)))
    # the weak view (flips / right-angle turns) is quality-preserving: same mean, same score
    torch.testing.assert_close(seen["p_weak"], seen["p"], rtol=0, atol=1e-6)
    # the strong view is scored on the blurred images, and the loss gets the ε that made them
    assert seen["eps"] is drawn["eps"]
    assert bool(((drawn["eps"] >= 0.1) & (drawn["eps"] <= 0.3)).all())
    torch.testing.assert_close(seen["p_strong"], drawn["images"].mean(dim=(1, 2, 3)))
    assert not torch.equal(drawn["images"], x)


def test_ablation_switches_drop_views(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"weak": 0, "strong": 0}
    real_weak, real_strong = module_mod.weak_view, module_mod.strong_view

    def weak(*a, **k):
        calls["weak"] += 1
        return real_weak(*a, **k)

    def strong(*a, **k):
        calls["strong"] += 1
        return real_strong(*a, **k)

    monkeypatch.setattr(module_mod, "weak_view", weak)
    monkeypatch.setattr(module_mod, "strong_view", strong)
    batch = {"image": images(2), "pseudo_label": torch.tensor([0.2, 0.8])}
    for consistency, relativity in ((True, False), (False, True)):
        model = CRLUIQA(image_size=32, proj_dim=8, consistency=consistency, relativity=relativity)
        model.scorer = MeanScorer()
        model.training_step(batch, 0)
    assert calls == {"weak": 1, "strong": 1}


def test_views_and_scores_stay_float32_under_bf16_autocast() -> None:
    x = images(4)
    model = CRLUIQA(image_size=32, proj_dim=8).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kind in ("gaussian", "motion"):
            out, eps = module_mod.strong_view(x, (0.2, 0.3), kinds=(kind,))
            assert out.dtype == torch.float32 and eps.dtype == torch.float32
        assert model(x).dtype == torch.float32


def test_bad_hyperparameters_are_named() -> None:
    with pytest.raises(ValueError, match="eps_range"):
        CRLUIQA(image_size=32, eps_range=(0.3, 1.2))
    with pytest.raises(ValueError, match="blur_kinds"):
        CRLUIQA(image_size=32, blur_kinds=["box"])
    with pytest.raises(ValueError, match="alpha"):
        CRLUIQA(image_size=32, alpha=-1.0)
    with pytest.raises(ValueError, match="blur_levels"):
        CRLUIQA(image_size=32, blur_levels=[0.0, 2.0, 1.0])
    with pytest.raises(FileNotFoundError, match=r"no_such\.ckpt"):
        CRLUIQA(image_size=32, embedding="no_such.ckpt", init_from_embedding=True)
    with pytest.raises(FileNotFoundError, match=r"pseudo_labels\.embedding='no_such\.ckpt'"):
        PseudoLabelSpec(embedding="no_such.ckpt")
    with pytest.raises(KeyError, match=r"data\.init_args\.pseudo_labels"):
        CRLUIQA(image_size=32, proj_dim=8).training_step({"image": images(2)}, 0)
    with pytest.raises(ValueError, match="method"):
        ClassicalIQA(image_size=32, method="piqe")


def test_scorer_starts_from_the_embedding_network() -> None:
    model = CRLUIQA(image_size=32, proj_dim=8, init_from_embedding=True, embedding_seed=3)
    embedder = build_embedding_model(seed=3, in_channels=1).net
    for key, value in embedder.state_dict().items():
        assert torch.equal(model.scorer.backbone.state_dict()[key], value), key
    with pytest.raises(ValueError, match="embedding network is a resnet18, the scorer a resnet10t"):
        CRLUIQA(image_size=32, backbone="resnet10t", init_from_embedding=True)
    with pytest.raises(ValueError, match="not both"):
        CRLUIQA(image_size=32, init_from_embedding=True, pretrained_path="x.pt")


def test_sgd_with_linear_decay() -> None:
    model = CRLUIQA(image_size=32, proj_dim=8, lr=1e-3, final_lr_ratio=0.01)
    model.trainer = Trainer(
        max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (
        1e-3,
        0.937,
        True,
        5e-4,
    )
    lrs = []
    for _ in range(13):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    factors = [lr / 1e-3 for lr in lrs]
    assert [factors[e] for e in (0, 5, 10)] == pytest.approx([1.0, 1.0 - 0.99 * 0.5, 0.01])
    # the same values as the LambdaLR it replaced: max(ratio, 1 - (1 - ratio) * epoch / epochs), held after
    assert factors == pytest.approx([max(0.01, 1.0 - 0.99 * e / 10) for e in range(13)], rel=1e-12)
    # no fixed length (max_epochs=-1): a constant learning rate
    model.trainer = Trainer(
        max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    assert set(model.configure_optimizers()) == {"optimizer"}


def test_pseudo_label_agreement_and_predict_rows() -> None:
    model = CRLUIQA(image_size=32, proj_dim=8)
    model.scorer = MeanScorer()
    model.init_metrics(["a", "b"])
    bright, dark = torch.full((2, 1, 16, 16), 0.5), torch.full((2, 1, 16, 16), -0.5)
    batch = {
        "better": bright,
        "worse": dark,
        "better_id": ["i0", "i2"],
        "worse_id": ["i1", "i3"],
        "plane": ["a", "b"],
        # the pseudo-labels of i0..i3 are 0.9, 0.1, 0.2, 0.6
        "better_pseudo_label": torch.tensor([0.9, 0.2]),
        "worse_pseudo_label": torch.tensor([0.1, 0.6]),
    }
    model.validation_step(batch, 0)
    # the scorer ranks both pairs right; the pseudo-labels only the first (0.9 > 0.1, 0.2 < 0.6)
    assert model.pairwise["val"].counts()["overall"] == {"T": 2, "F": 0}
    assert model.pseudo_pairwise["val"].counts() == {
        "overall": {"T": 1, "F": 1},
        "a": {"T": 1, "F": 0},
        "b": {"T": 0, "F": 1},
    }
    # constant images: blurring changes nothing, so no image is strictly monotonic
    assert float(model.monotonic["val"].compute()) == 0.0
    rows = model.predict_step({"image": bright, "image_id": ["x.png", "y.png"], "plane": ["a", "a"]}, 0)
    assert rows["image"] == ["x.png", "y.png"] and rows["plane"] == ["a", "a"]
    torch.testing.assert_close(rows["score"], torch.tensor([0.5, 0.5]))


# --------------------------------------------------------------------------------------------- baselines


def test_mssim_baseline_scores_references_one_and_blur_lower() -> None:
    std = textures(4, seed=1)
    planes = ["a", "a", "b", "b"]
    model = ClassicalIQA(image_size=48, method="mssim").fit_references(std, planes)
    torch.testing.assert_close(model.score(std, planes), torch.ones(4), rtol=0, atol=1e-5)
    blurred = blur(std, torch.full((4,), 0.2), "gaussian")
    assert bool((model.score(blurred, planes) < 0.999).all())
    # per plane, the reference of a plane-b image is only searched among plane-b standards
    crossed = model.score(std[2:], ["a", "a"])
    assert bool((crossed < 0.99).all())
    model.init_metrics(["a", "b"])
    model.validation_step({"better": std, "worse": blurred, "plane": planes}, 0)
    assert model.pairwise["val"].counts()["overall"] == {"T": 4, "F": 0}
    assert float(model.monotonic["val"].compute()) == 1.0


def test_niqe_and_brisque_baselines_fit_on_standards() -> None:
    std = textures(6, size=64, seed=2)
    planes = ["a"] * 6
    niqe = ClassicalIQA(image_size=64, method="niqe").fit_references(std, planes)
    assert niqe.niqe_patch_size == 16
    flat = torch.full((1, 1, 64, 64), -1.0)  # no textured patch: NIQE is undefined, ranked last
    scores = niqe.score(torch.cat([std[:2], flat]), ["a"] * 3)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    assert bool(torch.isfinite(scores[:2]).all()) and scores[2].item() == -math.inf
    brisque = ClassicalIQA(image_size=64, method="brisque").fit_references(std, planes)
    s = brisque.score(std, planes)
    assert s.shape == (6,) and bool(torch.isfinite(s).all())
    with pytest.raises(ValueError, match="one plane per image"):
        niqe.fit_references(std, ["a"])


def test_plane_classifier_module_steps() -> None:
    torch.manual_seed(0)
    model = PlaneClassifierModule(image_size=32, in_channels=1, planes=["x", "y", "z"])
    x = images(4)
    assert model(x).shape == (4, 3) and model.embed(x).shape == (4, 512)
    loss = model.training_step({"image": x, "label": torch.tensor([0, 1, 2, 1])}, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    rows = model.predict_step({"image": x, "image_id": list("abcd"), "plane": ["x"] * 4}, 0)
    assert set(rows["predicted_plane"]) <= {"x", "y", "z"} and len(rows["probability"]) == 4
    assert bool(((rows["probability"] >= 1 / 3) & (rows["probability"] <= 1)).all())
    assert model.hparams["planes"] == ["x", "y", "z"]


# --------------------------------------------------------------------------------------------- dataset step


@pytest.fixture(scope="module")
def tiny_dm(tiny_dataset) -> ImageDataModule:
    dm = ImageDataModule(root=str(tiny_dataset), synthetic=None, image_size=32, batch_size=8)
    dm.setup("fit")
    return dm


def loader_of(dm: ImageDataModule, records) -> list[dict]:
    """One batch holding every image of ``records``, in order."""
    ds = dm.image_dataset(records)
    return [
        {
            "image": torch.stack([ds[i]["image"] for i in range(len(ds))]),
            "image_id": [r.image_id for r in records],
        }
    ]


def test_random_embedding_is_seeded_and_leaves_the_global_rng(tiny_dm: ImageDataModule) -> None:
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_embedding_model(seed=7, in_channels=1)
    after = torch.rand(3)
    b = build_embedding_model(seed=7, in_channels=1)
    assert a.backbone == "resnet18" and a.kind == "random" and torch.equal(before, after)
    for pa, pb in zip(a.net.state_dict().values(), b.net.state_dict().values()):
        assert torch.equal(pa, pb)
    # with the residual branches live, distinct small images get distinct embeddings
    emb, _ = embed_images(a.net, loader_of(tiny_dm, tiny_dm.records(role="train")[:6]), "cpu")
    assert float(torch.cdist(emb, emb).max()) > 0


def test_classifier_checkpoint_as_embedding(tmp_path) -> None:
    torch.manual_seed(0)
    clf = PlaneClassifier(num_classes=3, backbone="resnet10t", in_channels=1).eval()
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in clf.state_dict().items()},
        "hyper_parameters": {"backbone": "resnet10t", "planes": ["a", "b", "c"]},
    }
    path = tmp_path / "plane_classifier.ckpt"
    torch.save(ckpt, path)
    emb = build_embedding_model(str(path), backbone="resnet18", in_channels=1)
    assert emb.backbone == "resnet10t" and emb.kind == "checkpoint" and len(emb.sha256) == 64
    x = images(2)
    torch.testing.assert_close(emb.net.eval()(x), clf.embed(x))


def dualrep_checkpoint(path: Path, seed: int = 0) -> torch.nn.Module:
    """A DualRepSSL checkpoint in the real layout (``net.<encoder>.…`` under ``state_dict``, other encoders and
    heads beside the image encoder); returns the image encoder whose weights it holds."""
    from lightning_modules.dualrep_ssl.nets import ImageEncoder

    torch.manual_seed(seed)
    encoder = ImageEncoder().eval()
    state = {f"net.image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["net.video_encoder.backbone.stem.0.weight"] = torch.randn(45, 3, 1, 7, 7)
    state["net.mmcl_proj.i.linear.weight"] = torch.randn(512, 512)
    torch.save({"state_dict": state, "hyper_parameters": {"use_image": True, "latent_dim": 512}}, path)
    return encoder


def test_dualrep_checkpoint_image_encoder_as_embedding(tmp_path) -> None:
    """A DualRepSSL checkpoint gives its self-supervised image encoder as P(.), weights and all, and the scorer
    starts from it (the embedding for data without labels)."""
    from lightning_modules.dualrep_ssl.module import DualRepSSL
    from lightning_modules.dualrep_ssl.nets import ImageEncoder

    # the prefix is where DualRepSSL really keeps its image encoder
    keys = list(DualRepSSL(image_size=32, in_channels=1).state_dict())
    assert {f"{DUALREP_IMAGE_PREFIX}{k}" for k in ImageEncoder().state_dict()} <= set(keys)
    path = tmp_path / "dualrep.ckpt"
    encoder = dualrep_checkpoint(path)
    emb = build_embedding_model(str(path), in_channels=1)
    assert emb.kind == "dualrep_ssl" and emb.backbone == "resnet18"
    for key, value in encoder.state_dict().items():
        assert torch.equal(emb.net.state_dict()[key], value), key
    x = images(2)
    torch.testing.assert_close(emb.net.eval()(x), encoder(x))  # grey in, ImageNet-normalised RGB inside
    model = CRLUIQA(image_size=32, proj_dim=8, init_from_embedding=True, embedding=str(path))
    torch.testing.assert_close(model.scorer.eval().embed(x), encoder(x))
    bad = tmp_path / "not_dualrep.ckpt"
    torch.save({"state_dict": {"net.image_encoder.backbone.conv1.weight": torch.zeros(3)}}, bad)
    with pytest.raises(ValueError, match="DualRepSSL image encoder does not load"):
        build_embedding_model(str(bad))


def test_imagenet_embedding_from_the_torch_hub_cache(tmp_path, monkeypatch) -> None:
    """``embedding: imagenet``: torchvision's ImageNet ResNet-18 file, read from a pre-seeded $TORCH_HOME (no
    network) through timm's loader (grey: first convolution summed over RGB); its hash is the identity, and the
    scorer starts from it."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    ref = torchvision.models.resnet18()
    state = ref.state_dict()
    state["conv1.weight"] = torch.arange(state["conv1.weight"].numel()).reshape(64, 3, 7, 7) * 1e-3
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    emb = build_embedding_model("imagenet", backbone="resnet18", in_channels=1)
    assert emb.kind == "imagenet" and emb.backbone == "resnet18"
    assert emb.sha256 == hashlib.sha256((cache / "resnet18-f37072fd.pth").read_bytes()).hexdigest()
    torch.testing.assert_close(emb.net.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(emb.net.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert PseudoLabelSpec(embedding="imagenet").embedding == "imagenet"
    model = CRLUIQA(image_size=32, proj_dim=8, init_from_embedding=True, embedding="imagenet")
    torch.testing.assert_close(model.scorer.backbone.conv1.weight, emb.net.conv1.weight)
    with pytest.raises(ValueError, match="resnet10t has no pretrained source 'imagenet'"):
        build_embedding_model("imagenet", backbone="resnet10t")


def test_dataset_pseudo_labels_match_the_formulas_and_are_cached(tiny_dm: ImageDataModule, tmp_path) -> None:
    spec = PseudoLabelSpec(k=2, seed=1)
    result = dataset_pseudo_labels(tiny_dm, spec, "cpu", progress=False)
    records = tiny_dm.records(role="train")
    assert set(result.labels) == {r.image_id for r in records}
    assert result.path.parent.name == "crl_uiqa" and result.path.is_file()
    # the same numbers from the pure functions: embeddings -> per-plane k-NN, Yeo-Johnson, min-max
    model = build_embedding_model(seed=1, in_channels=1).net
    std_records = tiny_dm.records(role="standard")
    train = [r for r in records if r.split == "train"]
    emb, _ = embed_images(model, loader_of(tiny_dm, train), "cpu")
    std, _ = embed_images(model, loader_of(tiny_dm, std_records), "cpu")
    made = make_pseudo_labels(
        emb, std, 2, True, groups=[r.plane for r in train], standard_groups=[r.plane for r in std_records]
    )
    got = np.array([result.labels[r.image_id] for r in train])
    np.testing.assert_allclose(got, made.labels, atol=1e-6)
    for plane in {r.plane for r in train}:
        sel = np.array([r.plane == plane for r in train])
        assert got[sel].min() == pytest.approx(0.0, abs=1e-12) and got[sel].max() == pytest.approx(1.0)
    # other splits: the training split's λ, min and max (stored with the labels) applied to their raw scores
    others = [r for r in records if r.split != "train"]
    for r in others:
        p = result.params["groups"][r.plane]
        y = scipy.stats.yeojohnson(np.array([result.raw_scores[r.image_id]]), lmbda=p["lambda"])[0]
        assert result.labels[r.image_id] == pytest.approx((y - p["lo"]) / (p["hi"] - p["lo"]), abs=1e-9)
    assert result.train_ids == [r.image_id for r in train]
    # second call: read back, file untouched; another k: another file
    mtime = result.path.stat().st_mtime_ns
    again = dataset_pseudo_labels(tiny_dm, spec, "cpu", progress=False)
    assert again.labels == result.labels and result.path.stat().st_mtime_ns == mtime
    other = dataset_pseudo_labels(tiny_dm, PseudoLabelSpec(k=1, seed=1), "cpu", progress=False)
    assert other.path != result.path
    # an explicit file made with other parameters is refused, naming the difference
    with pytest.raises(ValueError, match=r"spec\.k: file has 2, expected 1"):
        dataset_pseudo_labels(
            tiny_dm, PseudoLabelSpec(k=1, seed=1, file=str(result.path)), "cpu", progress=False
        )


BEFORE = json.loads((Path(__file__).parent / "data" / "pseudo_labels_before.json").read_text())


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("k2_seed1", PseudoLabelSpec(k=2, seed=1)),
        ("k2_seed1_nosmooth", PseudoLabelSpec(k=2, seed=1, smoothing=False)),
        ("k3_pooled", PseudoLabelSpec(k=3, seed=0, per_plane=False)),
    ],
)
def test_data_stage_labels_equal_the_module_path_before(tiny_dm: ImageDataModule, name, spec) -> None:
    """The labels of the tiny dataset (32 px, random resnet18) as the old module-side step made them."""
    result = dataset_pseudo_labels(tiny_dm, spec, "cpu", progress=False)
    want = BEFORE["tiny"][name]
    assert set(result.labels) == set(want["labels"])
    ids = sorted(want["labels"])
    np.testing.assert_allclose(
        [result.raw_scores[i] for i in ids], [want["raw_scores"][i] for i in ids], rtol=1e-5
    )
    np.testing.assert_allclose([result.labels[i] for i in ids], [want["labels"][i] for i in ids], atol=1e-5)


def test_datamodule_delivers_pseudo_labels_in_batches(tiny_dataset, tmp_path) -> None:
    """With ``pseudo_labels`` set, training images and evaluation pairs carry their labels; predict batches and a
    DataModule without the option carry none; the stage is cached under the DataModule's cache folder."""
    spec = PseudoLabelSpec(k=2, seed=1)
    kwargs = dict(
        root=str(tiny_dataset), synthetic=None, image_size=32, batch_size=4, cache_dir=str(tmp_path)
    )
    dm = ImageDataModule(**kwargs, pseudo_labels=spec)
    dm.prepare_data()
    made = dm.pseudo
    assert made is not None and made.path.parent == tmp_path / "crl_uiqa"
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    want = made.lookup(list(train["image_id"]))
    torch.testing.assert_close(train["pseudo_label"], want)
    assert train["pseudo_label"].dtype == torch.float32
    pairs = next(iter(dm.val_dataloader()))
    torch.testing.assert_close(pairs["better_pseudo_label"], made.lookup(list(pairs["better_id"])))
    torch.testing.assert_close(pairs["worse_pseudo_label"], made.lookup(list(pairs["worse_id"])))
    assert dm.state_dict()["pseudo_labels"]["file"] == str(made.path)
    # another process (another rank, a later run) reads the same file back at setup without re-embedding
    mtime = made.path.stat().st_mtime_ns
    other = ImageDataModule(**kwargs, pseudo_labels=spec)
    other.setup("fit")
    assert other.pseudo is not None and other.pseudo.labels == made.labels
    assert made.path.stat().st_mtime_ns == mtime
    predict = ImageDataModule(**kwargs, pseudo_labels=spec)
    predict.setup("predict")
    assert predict.pseudo is None and "pseudo_label" not in next(iter(predict.predict_dataloader()))
    plain = ImageDataModule(**kwargs)
    plain.setup("fit")
    assert "pseudo_label" not in next(iter(plain.train_dataloader()))
    with pytest.raises(DataError, match="no pseudo-label"):
        plain.datasets["train"].attach_pseudo_labels({})


def test_pseudo_label_command(tiny_dataset, tmp_path) -> None:
    out = tmp_path / "labels.json"
    pseudo_label_command(
        ["--root", str(tiny_dataset), "--image-size", "32", "--k", "2", "--no-smoothing", "--out", str(out)]
    )
    ids, labels, params = load_pseudo_labels(out)
    assert params["smoothing"] is False and params["spec"]["k"] == 2 and params["image_size"] == [32, 32]
    doc = json.loads(out.read_text())
    assert len(ids) == len(doc["raw_scores"]) and np.all(np.isfinite(labels))


def test_crl_modules_never_import_a_datamodule() -> None:
    """The model package reads its pseudo-labels from the batch: no crl_uiqa module imports the DataModules or
    the pseudo-label stage (data helpers such as readers stay allowed)."""
    package = Path(module_mod.__file__).parent
    for file in package.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name not in ("datamodules.images", "datamodules.pseudo_labels"), f"{file.name}: {name}"


# --------------------------------------------------------------------------------------------- ranking


def brightness(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3))


def test_rank_frames_best_first_with_stable_ties() -> None:
    levels = [0.1, 0.5, -0.2, 0.5, 0.0]
    frames = torch.stack([torch.full((1, 8, 8), v) for v in levels])
    ranking = rank_frames(brightness, frames, names=[f"f{i}" for i in range(5)], batch_size=2)
    assert ranking.order == [1, 3, 0, 4, 2]
    assert ranking.best_index == 1 and ranking.best_name == "f1" and ranking.best_score == pytest.approx(0.5)
    assert [r["rank"] for r in ranking.rows()] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="no frames"):
        rank_frames(brightness, frames[:0])


def test_rank_images_and_clip(tmp_path, tiny_dataset) -> None:
    paths = []
    for i, grey in enumerate((40, 200, 120)):
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), np.full((20, 30), grey, np.uint8))
        paths.append(p)
    ranking = rank_images(brightness, paths, image_size=16)
    assert ranking.best_name == str(paths[1]) and ranking.order == [1, 2, 0]
    video = tiny_dataset / "videos" / "scan_000.avi"
    clip = rank_clip(brightness, video, 10, 40, image_size=32, step=3)
    with VideoReader(video) as reader:
        frames = reader.read(list(range(10, 40, 3)), size=(32, 32))
    assert clip.names == [str(i) for i in range(10, 40, 3)]
    assert clip.best_name == str(10 + 3 * int(np.argmax(frames.reshape(len(frames), -1).mean(axis=1))))
    with pytest.raises(ValueError, match="step"):
        rank_clip(brightness, video, 0, 5, image_size=32, step=0)


# --------------------------------------------------------------------------------------------- Fig. 2 panel


def test_view_panel_scores_each_view() -> None:
    from callbacks.crl_views import plot_view_panel, view_panel

    def sharpness(x: torch.Tensor) -> torch.Tensor:
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))

    x = textures(2, size=32, seed=4)
    views, scores, titles = view_panel(x, sharpness, eps_levels=(0.05, 0.1, 0.2), n_weak=2)
    assert titles == ["source", "weak 1", "weak 2", "gaussian ε=0.05", "gaussian ε=0.1", "gaussian ε=0.2"]
    assert len(views) == 2 and all(len(row) == 6 and row[0].shape == (1, 32, 32) for row in views)
    torch.testing.assert_close(torch.tensor([row[0] for row in scores]), sharpness(x))
    for row in scores:  # stronger blur, lower sharpness
        assert row[0] > row[3] > row[4] > row[5]
    fig = plot_view_panel(views, scores, titles, "t")
    assert len(fig.axes) == 12
