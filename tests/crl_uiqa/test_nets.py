"""Backbone builder, scorer/classifier shapes, loading local weights (plain and Lightning-style)."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.crl_uiqa.nets import (
    PlaneClassifier,
    QualityScorer,
    build_backbone,
    detect_prefix,
    load_backbone_weights,
)


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("efficientnet_b0", 1280)])
def test_build_backbone(name: str, dim: int) -> None:
    model, feat_dim = build_backbone(name, in_channels=1)
    assert feat_dim == dim
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, dim)
    with pytest.raises(ValueError, match="cannot build timm backbone"):
        build_backbone("no_such_model", 1)


def test_scorer_and_classifier_shapes() -> None:
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    scorer = QualityScorer("resnet18", in_channels=1, proj_dim=16).eval()
    s = scorer(x)
    assert s.shape == (3,) and bool(((s >= 0) & (s <= 1)).all())
    assert scorer.embed(x).shape == (3, 512)
    clf = PlaneClassifier(num_classes=4, backbone="resnet18", in_channels=1).eval()
    assert clf(x).shape == (3, 4) and clf.embed(x).shape == (3, 512)
    rgb = QualityScorer("resnet18", in_channels=3, proj_dim=8)
    assert rgb(torch.zeros(2, 3, 32, 32)).shape == (2,)


def test_scorer_from_lightning_checkpoint_of_classifier(tmp_path) -> None:
    torch.manual_seed(0)
    clf = PlaneClassifier(num_classes=3, backbone="resnet18", in_channels=1)
    # a Lightning checkpoint of a module holding the classifier as self.model
    ckpt = {"state_dict": {f"model.{k}": v for k, v in clf.state_dict().items()}, "epoch": 3}
    path = tmp_path / "clf.ckpt"
    torch.save(ckpt, path)
    scorer = QualityScorer("resnet18", in_channels=1, pretrained_path=path).eval()
    clf.eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(scorer.embed(x), clf.embed(x))
    # plain state dict of the backbone alone
    plain = tmp_path / "backbone.pt"
    torch.save(clf.backbone.state_dict(), plain)
    backbone, _ = build_backbone("resnet18", 1, plain)
    torch.testing.assert_close(backbone.eval()(x), clf.embed(x))


def test_loader_errors_list_keys(tmp_path) -> None:
    clf = PlaneClassifier(num_classes=3, backbone="resnet18", in_channels=1)
    sd = clf.backbone.state_dict()
    sd.pop("conv1.weight")
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    backbone, _ = build_backbone("resnet18", 1)
    with pytest.raises(RuntimeError, match=r"missing keys[^\n]*conv1\.weight"):
        load_backbone_weights(backbone, path)
    # wrong channel count: shape mismatch named
    rgb = tmp_path / "rgb.pt"
    torch.save(build_backbone("resnet18", 3)[0].state_dict(), rgb)
    with pytest.raises(RuntimeError, match=r"shape-mismatched keys[^\n]*conv1\.weight"):
        load_backbone_weights(backbone, rgb)
    with pytest.raises(ValueError, match="ambiguous weights prefix"):
        detect_prefix(["a.x", "b.x"], ["x"])
    with pytest.raises(ValueError, match="no key of the weights file matches"):
        detect_prefix(["foo"], ["bar"])
    assert detect_prefix(
        ["model.backbone.fc.w", "model.backbone.conv.w", "model.head.w"], ["fc.w", "conv.w"]
    ) == ("model.backbone.")
