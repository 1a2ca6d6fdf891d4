"""Downstream modules: encoder initialisation from a DualRepSSL checkpoint / weights file, plane detection,
saliency fine-tuning (shapes, targets, losses, metrics, predictions)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchvision.models import resnet18

from lightning_modules.common.saliency import saliency_kld_loss
from lightning_modules.dualrep_ssl.nets import ImageEncoder, VideoEncoder
from lightning_modules.finetune.module import PlaneDetection, SaliencyFinetune
from lightning_modules.finetune.nets import SaliencyDecoder, build_encoder, initialisation

CLASSES = ["abdomen", "background", "four_chamber"]


def _fake_dualrep_checkpoint(path, with_image: bool = True) -> dict[str, torch.Tensor]:
    """A Lightning-style checkpoint holding DualRepSSL's encoder keys (``net.<encoder>.…``)."""
    torch.manual_seed(7)
    state = {f"net.video_encoder.{k}": v for k, v in VideoEncoder().state_dict().items()}
    if with_image:
        state.update({f"net.image_encoder.{k}": v for k, v in ImageEncoder().state_dict().items()})
    state["net.mmcl_proj.v.fc.weight"] = torch.zeros(512, 512)
    torch.save({"state_dict": state, "epoch": 3}, path)
    return state


def test_initialisation_choices(tmp_path):
    assert initialisation(None, None) == "random"
    assert initialisation("a.ckpt", None) == "ssl"
    assert initialisation(None, "w.pth") == "weights_file"
    with pytest.raises(ValueError, match="alternatives"):
        initialisation("a.ckpt", "w.pth")
    with pytest.raises(ValueError, match="input='audio'"):
        build_encoder("audio")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        build_encoder("image", pretrained=str(tmp_path / "missing.ckpt"))


def test_encoders_load_from_a_dualrep_checkpoint(tmp_path):
    path = tmp_path / "dualrep.ckpt"
    state = _fake_dualrep_checkpoint(path)
    image = build_encoder("image", pretrained=str(path))
    torch.testing.assert_close(image.backbone.conv1.weight, state["net.image_encoder.backbone.conv1.weight"])
    torch.testing.assert_close(
        image.backbone.layer4[1].bn2.running_mean,
        state["net.image_encoder.backbone.layer4.1.bn2.running_mean"],
    )
    video = build_encoder("video", pretrained=str(path))
    torch.testing.assert_close(
        video.backbone.stem[0].weight, state["net.video_encoder.backbone.stem.0.weight"]
    )

    no_image = tmp_path / "no_image.ckpt"
    _fake_dualrep_checkpoint(no_image, with_image=False)
    with pytest.raises(ValueError, match="without the image stream"):
        build_encoder("image", pretrained=str(no_image))


def test_encoder_loads_a_supervised_weights_file(tmp_path):
    torch.manual_seed(3)
    tv = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    enc = build_encoder("image", weights_file=str(path))
    torch.testing.assert_close(enc.backbone.layer2[0].conv1.weight, tv.layer2[0].conv1.weight)


# ------------------------------------------------------------------ plane detection


def _plane_batch(labels: list[int]) -> dict:
    g = torch.Generator().manual_seed(0)
    n = len(labels)
    return {
        "image": torch.rand(n, 1, 32, 32, generator=g) * 2 - 1,
        "video": torch.rand(n, 1, 4, 32, 32, generator=g) * 2 - 1,
        "label": torch.tensor(labels),
        "clip_id": [f"c{i}" for i in range(n)],
    }


@pytest.fixture(scope="module")
def plane() -> PlaneDetection:
    torch.manual_seed(0)
    return PlaneDetection(image_size=32, in_channels=1, classes=CLASSES, pretrained=None)


def test_plane_detection_forward_loss_and_label_checks(plane):
    plane.train()
    batch = _plane_batch([0, 1, 2, 1])
    logits = plane(batch["image"])
    assert logits.shape == (4, 3) and logits.dtype == torch.float32
    plane.log = lambda *a, **k: None  # no Trainer attached
    loss = plane.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert plane.hparams["classes"] == CLASSES  # stored for load_from_checkpoint
    with pytest.raises(ValueError, match="outside the classes"):
        plane.training_step(_plane_batch([0, -1]), 0)
    with pytest.raises(KeyError, match="modalities"):
        plane.input_tensor({"video": batch["video"], "label": batch["label"]})


def test_plane_metrics_macro_and_per_class_known_answer(plane):
    """3 classes, 6 items; predictions hand-chosen so that per-class P/R/F1 are known."""
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 3).float()
    plane.macro["test"].reset()
    plane.per_class["test"].reset()
    plane.macro["test"].update(logits, target)
    plane.per_class["test"].update(logits, target)
    logged = {}
    plane.log_dict = lambda d, **k: logged.update(d)
    plane.log = lambda name, value, **k: logged.update({name: value})
    plane.log_epoch("test")
    # precision: class0 1/2, class1 2/3, class2 1/1; recall: 1/2, 2/2, 1/2
    p = [1 / 2, 2 / 3, 1.0]
    r = [1 / 2, 1.0, 1 / 2]
    f1 = [2 * a * b / (a + b) for a, b in zip(p, r)]
    for i, name in enumerate(CLASSES):
        assert float(logged[f"test/precision/{name}"]) == pytest.approx(p[i])
        assert float(logged[f"test/recall/{name}"]) == pytest.approx(r[i])
        assert float(logged[f"test/f1/{name}"]) == pytest.approx(f1[i])
    assert float(logged["test/precision"]) == pytest.approx(sum(p) / 3)
    assert float(logged["test/recall"]) == pytest.approx(sum(r) / 3)
    assert float(logged["test/f1"]) == pytest.approx(sum(f1) / 3)
    assert float(logged["test/accuracy"]) == pytest.approx(4 / 6)


def test_plane_classes_come_from_the_data():
    torch.manual_seed(0)
    model = PlaneDetection(image_size=32, in_channels=1, input="video")
    assert model.head is None
    model.trainer = SimpleNamespace(datamodule=SimpleNamespace(classes=CLASSES))
    model.setup("fit")
    assert model.classes == CLASSES and model.head[1].out_features == 3
    assert model(_plane_batch([0, 1])["video"]).shape == (2, 3)
    model.trainer = SimpleNamespace(datamodule=SimpleNamespace(classes=["abdomen", "background"]))
    with pytest.raises(ValueError, match="differ from the data"):
        model.setup("test")
    with pytest.raises(ValueError, match="at least 2 distinct"):
        PlaneDetection(classes=["abdomen"])


def test_plane_predict_columns(plane):
    plane.eval()
    with torch.no_grad():
        columns = plane.predict_step(_plane_batch([2, 0, 1]), 0)
    assert columns["clip_id"] == ["c0", "c1", "c2"]
    assert columns["label"] == ["four_chamber", "abdomen", "background"]
    assert all(p in CLASSES for p in columns["prediction"])
    probs = torch.stack([columns[f"p_{c}"] for c in CLASSES], dim=1)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    torch.testing.assert_close(columns["confidence"], probs.max(1).values)


# ------------------------------------------------------------------ saliency


def test_saliency_decoder_shapes():
    torch.manual_seed(0)
    dec = SaliencyDecoder((32, 16, 8, 8))
    maps = [torch.randn(2, c, s, s) for c, s in zip((64, 128, 256, 512), (8, 4, 2, 1))]
    assert dec(maps, (32, 32)).shape == (2, 1, 32, 32)
    maps3d = [torch.randn(2, c, t, s, s) for c, t, s in zip((64, 128, 256, 512), (4, 2, 1, 1), (8, 4, 2, 1))]
    assert dec(maps3d, (24, 40)).shape == (2, 1, 24, 40)
    with pytest.raises(ValueError, match="one entry per feature map"):
        SaliencyDecoder((32, 16))


def _saliency_batch(t: int = 3, target: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    gaze = torch.rand(2, 1, t, 32, 32, generator=g)
    gaze = gaze / gaze.sum(dim=(-1, -2), keepdim=True)
    return {
        "video": torch.rand(2, 1, t, 32, 32, generator=g) * 2 - 1,
        "gaze": gaze,
        "gaze_valid": torch.tensor([[True] * t, [True] * (t - 1) + [False]]),
        "target_index": torch.tensor([target, target]),
        "label": torch.tensor([0, 1]),
        "clip_id": ["a@1", "b@5"],
    }


@pytest.mark.parametrize("input_kind", ["image", "video"])
def test_saliency_outputs_log_probability_maps_of_the_target_frame(input_kind):
    torch.manual_seed(0)
    model = SaliencyFinetune(image_size=32, in_channels=1, input=input_kind, decoder_channels=[32, 16, 8, 8])
    batch = _saliency_batch(t=3, target=2)
    x = model.input_tensor(batch)
    if input_kind == "image":
        torch.testing.assert_close(x, batch["video"][:, :, 2])  # the target frame
    else:
        assert x.shape == (2, 1, 3, 32, 32)
    log_pred = model(x)
    assert log_pred.shape == (2, 1, 32, 32) and log_pred.dtype == torch.float32
    torch.testing.assert_close(log_pred.exp().sum(dim=(1, 2, 3)), torch.ones(2))
    gaze, valid = model.target(batch)
    torch.testing.assert_close(gaze, batch["gaze"][:, :, 2])
    assert valid.tolist() == [True, False]
    model.log = lambda *a, **k: None
    loss = model.training_step(batch, 0)
    torch.testing.assert_close(loss, saliency_kld_loss(log_pred, gaze, valid))


def test_saliency_predict_columns_and_uniform_prediction_scores():
    torch.manual_seed(0)
    model = SaliencyFinetune(image_size=32, in_channels=1, decoder_channels=[32, 16, 8, 8]).eval()
    # zero the head: a uniform prediction, whose CC with any map is 0 and KLD is KL(G || uniform)
    torch.nn.init.zeros_(model.decoder.head.weight)
    torch.nn.init.zeros_(model.decoder.head.bias)
    batch = _saliency_batch(t=2, target=1)
    with torch.no_grad():
        columns = model.predict_step(batch, 0)
    assert columns["clip_id"] == ["a@1", "b@5"]
    assert columns["gaze_valid"].tolist() == [1, 0]
    g = batch["gaze"][0, 0, 1].flatten()
    expected_kld = (g * torch.log(2.2204e-16 + g / (1 / 1024 + 2.2204e-16))).sum()
    assert columns["kld"][0].item() == pytest.approx(expected_kld.item(), rel=1e-4)
    assert columns["cc"][0].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isnan(columns["kld"][1])  # no fixation on the target frame: no score
    assert 0 <= columns["peak_x"][0].item() <= 1 and 0 <= columns["peak_y"][0].item() <= 1


def test_saliency_nss_is_taken_at_the_batch_fixations():
    """Issue 11: NSS at the target frame's real fixation points (the batch's ``fixations``), MIT definition."""
    torch.manual_seed(0)
    model = SaliencyFinetune(image_size=32, in_channels=1, decoder_channels=[32, 16, 8, 8]).eval()
    batch = _saliency_batch(t=2, target=1)
    fix = torch.zeros(2, 1, 2, 32, 32, dtype=torch.bool)
    fix[0, 0, 1, 4, 7] = fix[0, 0, 1, 20, 30] = True  # item 0's target frame: two fixations
    batch["fixations"] = fix
    with torch.no_grad():
        columns = model.predict_step(batch, 0)
        pred = model(model.input_tensor(batch)).exp()[0, 0].double()
    z = (pred - pred.mean()) / pred.flatten().std()  # ddof 1
    assert columns["nss"][0].item() == pytest.approx(((z[4, 7] + z[20, 30]) / 2).item(), rel=1e-4)
    assert torch.isnan(columns["nss"][1])  # no fixation on item 1's target frame
    torch.testing.assert_close(model.fixations(batch, batch["gaze"][:, :, 1]), fix[:, :, 1])
