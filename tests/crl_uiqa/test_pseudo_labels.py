"""Pseudo-labels: k-NN distance scores, Yeo-Johnson, min-max, grouping, storage, embedding extraction; and the
labels of the code before the move to the data layer (scipy + hand min-max) as known answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from datamodules.pseudo_labels import (
    embed_images,
    knn_distance_scores,
    label_transform,
    load_pseudo_labels,
    make_pseudo_labels,
    save_pseudo_labels,
)

BEFORE = json.loads((Path(__file__).parent / "data" / "pseudo_labels_before.json").read_text())

# Standard planes on the x axis at 0, 1, 3, 10; four images with hand-computed neighbour distances.
STANDARD = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
IMAGES = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [5.0, 0.0]])
# distances: (0,0): 0 1 3 10 | (2,0): 2 1 1 8 | (0,4): 4 sqrt17 5 sqrt116 | (5,0): 5 4 2 5
EXPECTED_K1 = [-0.0, -1.0, -4.0, -2.0]
EXPECTED_K2 = [-0.5, -1.0, -(4.0 + math.sqrt(17.0)) / 2.0, -3.0]


@pytest.mark.parametrize("chunk_size", [1, 3, 4096])
def test_knn_scores_hand_values(chunk_size: int) -> None:
    s1 = knn_distance_scores(IMAGES, STANDARD, k=1, chunk_size=chunk_size)
    s2 = knn_distance_scores(IMAGES, STANDARD, k=2, chunk_size=chunk_size)
    torch.testing.assert_close(s1, torch.tensor(EXPECTED_K1), atol=1e-6, rtol=0)
    torch.testing.assert_close(s2, torch.tensor(EXPECTED_K2), atol=1e-6, rtol=0)
    s4 = knn_distance_scores(IMAGES, STANDARD, k=4)
    assert s4[0].item() == pytest.approx(-(0 + 1 + 3 + 10) / 4)


def test_knn_scores_match_bruteforce() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(50, 16, generator=g, dtype=torch.float64)
    std = torch.randn(9, 16, generator=g, dtype=torch.float64)
    d = np.linalg.norm(emb.numpy()[:, None, :] - std.numpy()[None, :, :], axis=2)
    want = -np.sort(d, axis=1)[:, :4].mean(axis=1)
    got = knn_distance_scores(emb, std, k=4, chunk_size=7)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_knn_scores_errors() -> None:
    with pytest.raises(ValueError, match=r"k must be in \[1, number of standard planes = 4\]"):
        knn_distance_scores(IMAGES, STANDARD, k=5)
    with pytest.raises(ValueError, match="k must be"):
        knn_distance_scores(IMAGES, STANDARD, k=0)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        knn_distance_scores(IMAGES, torch.zeros(3, 5), k=1)
    with pytest.raises(ValueError, match="empty"):
        knn_distance_scores(IMAGES, torch.zeros(0, 2), k=1)


def test_yeo_johnson_step_equals_scipy() -> None:
    """The fitted sklearn PowerTransformer is scipy's Yeo-Johnson: same maximum-likelihood λ, same values."""
    x = np.random.default_rng(0).lognormal(size=200) * -1.0
    pipe = label_transform(x, smoothing=True)
    y_ref, lam_ref = scipy.stats.yeojohnson(x)
    assert pipe["yeo_johnson"].lambdas_[0] == pytest.approx(lam_ref)
    np.testing.assert_allclose(pipe["yeo_johnson"].transform(x[:, None])[:, 0], y_ref)
    np.testing.assert_allclose(pipe.transform(x[:, None])[:, 0], (y_ref - y_ref.min()) / np.ptp(y_ref))
    with pytest.raises(ValueError, match="does not separate"):
        label_transform(np.ones(5), smoothing=True)


def test_minmax_step_exact_range_and_constant() -> None:
    x = np.array([-3.3, 0.1, 7.7, 2.0])
    pipe = label_transform(x, smoothing=False)
    y = pipe.transform(x[:, None])[:, 0]
    assert y.min() == 0.0 and y.max() == 1.0
    np.testing.assert_allclose(y, (x - x.min()) / (x.max() - x.min()))
    with pytest.raises(ValueError, match="does not separate"):
        label_transform(np.full(4, 2.5), smoothing=False)
    # applied to new scores the fitted range is kept, so values may leave [0, 1]
    np.testing.assert_allclose(pipe.transform(np.array([[-3.3 - 11.0], [7.7 + 11.0]]))[:, 0], [-1.0, 2.0])


def test_make_pseudo_labels_paper_pipeline() -> None:
    g = torch.Generator().manual_seed(1)
    std = torch.randn(10, 8, generator=g)
    emb = torch.randn(100, 8, generator=g) * torch.rand(100, 1, generator=g) * 3
    pl = make_pseudo_labels(emb, std, k=3, extra_params={"embedder": "resnet18"})
    raw = knn_distance_scores(emb, std, 3).double().numpy()
    np.testing.assert_allclose(pl.raw_scores, raw)
    y, lam = scipy.stats.yeojohnson(raw)
    np.testing.assert_allclose(pl.labels, (y - y.min()) / (y.max() - y.min()), atol=1e-12)
    assert pl.labels.min() == 0.0 and pl.labels.max() == 1.0
    assert pl.lmbda == pytest.approx(lam)
    assert pl.k == 3
    # Yeo-Johnson is increasing: the order of the raw scores is kept
    np.testing.assert_array_equal(np.argsort(pl.labels, kind="stable"), np.argsort(raw, kind="stable"))
    p = pl.params
    assert p["k"] == 3 and p["smoothing"] is True and p["n_images"] == 100 and p["n_standard"] == 10
    assert p["embed_dim"] == 8 and p["embedder"] == "resnet18" and p["lambda"] == pytest.approx(lam)
    json.dumps(p)  # JSON-serialisable

    plain = make_pseudo_labels(emb, std, k=3, smoothing=False)
    assert plain.lmbda is None and plain.params["smoothing"] is False
    np.testing.assert_allclose(plain.labels, (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-12)
    # the closest image to the standard set gets 1
    assert plain.labels[np.argmax(raw)] == 1.0

    # applying the stored parameters to the training scores reproduces the labels
    np.testing.assert_allclose(pl.apply(raw), pl.labels, atol=1e-12)
    np.testing.assert_allclose(plain.apply(raw), plain.labels, atol=1e-12)


def test_make_pseudo_labels_grouped() -> None:
    # group a: standards near the origin; group b: standards far away. Each image only sees its own group.
    std = torch.tensor([[0.0, 0.0], [0.5, 0.0], [100.0, 0.0], [101.0, 0.0]])
    std_groups = ["a", "a", "b", "b"]
    emb = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0], [100.0, 1.0], [100.0, 5.0]])
    groups = ["a", "a", "a", "b", "b"]
    pl = make_pseudo_labels(emb, std, k=1, smoothing=False, groups=groups, standard_groups=std_groups)
    np.testing.assert_allclose(pl.raw_scores, [-1.0, -3.0, -2.0, -1.0, -5.0])
    np.testing.assert_allclose(pl.labels, [1.0, 0.0, 0.5, 1.0, 0.0])
    assert set(pl.params["groups"]) == {"a", "b"} and pl.lmbda is None
    np.testing.assert_allclose(pl.apply(pl.raw_scores, groups), pl.labels, atol=1e-12)
    with pytest.raises(ValueError, match="groups without any standard image"):
        make_pseudo_labels(emb, std, k=1, groups=["a", "a", "a", "b", "c"], standard_groups=std_groups)
    with pytest.raises(ValueError, match="group 'a'"):
        make_pseudo_labels(emb, std, k=3, groups=groups, standard_groups=std_groups)


def test_save_load_roundtrip_and_checks(tmp_path) -> None:
    ids = ["img/a.png", "img/b.png", "img/c.png"]
    labels = np.array([0.0, 1.0, 1.0 / 3.0])
    params = {"k": 5, "smoothing": True, "lambda": 1.2345678901234567, "embedder": "resnet18"}
    path = save_pseudo_labels(
        tmp_path / "sub" / "pl.json", ids, labels, params, raw_scores=[-1.0, -0.1, -0.5]
    )
    assert [p.name for p in path.parent.iterdir()] == ["pl.json"]  # no temporary file left behind
    got_ids, got_labels, got_params = load_pseudo_labels(path, expected_params={"k": 5, "smoothing": True})
    assert got_ids == ids
    np.testing.assert_array_equal(got_labels, labels)  # exact float64 round trip
    assert got_params == params
    with pytest.raises(ValueError, match=r"k: file has 5, expected 7") as e:
        load_pseudo_labels(path, expected_params={"k": 7, "embedder": "resnet50"})
    assert "embedder" in str(e.value)
    with pytest.raises(ValueError, match="missing in file"):
        load_pseudo_labels(path, expected_params={"seed": 0})
    # overwriting is atomic and replaces the content
    save_pseudo_labels(path, ids[:1], labels[:1], params)
    assert load_pseudo_labels(path)[0] == ids[:1]
    with pytest.raises(ValueError, match="duplicate ids"):
        save_pseudo_labels(path, ["x", "x"], [0.0, 1.0], params)
    with pytest.raises(ValueError, match="2 ids but 3 labels"):
        save_pseudo_labels(path, ["x", "y"], [0.0, 1.0, 0.5], params)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a pseudo-label file"):
        load_pseudo_labels(other)
    with pytest.raises(FileNotFoundError):
        load_pseudo_labels(tmp_path / "missing.json")


class _Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.9)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.lin(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # not used: embed() is preferred
        raise AssertionError("embed_images must call embed()")


def test_embed_images() -> None:
    torch.manual_seed(0)
    model = _Embedder().train()
    images = torch.randn(7, 1, 2, 2)
    loader = [
        {"image": images[i : i + 3], "image_id": [f"id{j}" for j in range(i, min(i + 3, 7))]}
        for i in (0, 3, 6)
    ]
    emb, ids = embed_images(model, loader, "cpu")
    assert model.training  # mode restored
    assert ids == [f"id{j}" for j in range(7)]
    torch.testing.assert_close(emb, model.lin(images.flatten(1)).detach())  # eval mode: no dropout
    assert not emb.requires_grad
    assert embed_images(model, [{"image": images}], "cpu")[0].shape == (7, 3)


# --------------------------------------------------------------------------------------------- before / after


@pytest.mark.parametrize("smoothing", [True, False])
@pytest.mark.parametrize("grouped", [False, True])
def test_labels_equal_the_code_before_the_move(smoothing: bool, grouped: bool) -> None:
    """sklearn's PowerTransformer + MinMaxScaler give the labels that scipy's Yeo-Johnson and the hand-written
    min-max gave (recorded before the change), on the training set and applied to new scores."""
    want = BEFORE["pure"][f"smoothing={smoothing},grouped={grouped}"]
    g = torch.Generator().manual_seed(1)
    std = torch.randn(10, 8, generator=g, dtype=torch.float64)
    emb = torch.randn(60, 8, generator=g, dtype=torch.float64)
    emb = emb * torch.rand(60, 1, generator=g, dtype=torch.float64) * 3
    groups, std_groups = ["a"] * 30 + ["b"] * 30, ["a"] * 5 + ["b"] * 5
    pl = make_pseudo_labels(
        emb[:50],
        std,
        3,
        smoothing,
        groups=groups[:50] if grouped else None,
        standard_groups=std_groups if grouped else None,
    )
    np.testing.assert_allclose(pl.raw_scores, want["raw"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(pl.labels, want["labels"], rtol=0, atol=1e-9)
    assert (pl.lmbda is None) == (want["lambda"] is None)
    if pl.lmbda is not None:
        assert pl.lmbda == pytest.approx(want["lambda"], rel=1e-9)
    new = knn_distance_scores(emb[50:], std[5:] if grouped else std, 3)
    np.testing.assert_allclose(
        pl.apply(new, groups[50:] if grouped else None), want["applied"], rtol=0, atol=1e-9
    )
