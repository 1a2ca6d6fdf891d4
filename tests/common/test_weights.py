"""lightning_modules.common.weights: file layouts, prefixes, ignore patterns, error messages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.common.weights import format_keys, load_state_dict_file, load_weights


class Tiny(nn.Module):
    def __init__(self, hidden: int = 3):
        super().__init__()
        self.fc = nn.Linear(2, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 1)


def _filled(seed: int = 0, hidden: int = 3) -> Tiny:
    torch.manual_seed(seed)
    m = Tiny(hidden)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
        m.bn.running_mean.normal_()
    return m


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


def test_plain_state_dict_round_trip(tmp_path):
    src = _filled(1)
    path = tmp_path / "plain.pt"
    torch.save(src.state_dict(), path)
    dst = Tiny()
    missing, unexpected = load_weights(dst, path)
    assert missing == [] and unexpected == []
    _assert_same(src, dst)


def test_legacy_format_file_loads(tmp_path):
    """Old research checkpoints use torch's pre-zip format, which cannot be memory-mapped: read normally."""
    src = _filled(2)
    path = tmp_path / "legacy.pth"
    torch.save({"model": src.state_dict()}, path, _use_new_zipfile_serialization=False)
    dst = Tiny()
    assert load_weights(dst, path) == ([], [])
    _assert_same(src, dst)


@pytest.mark.parametrize("container", ["state_dict", "model"])
def test_nested_containers(tmp_path, container):
    src = _filled(2)
    path = tmp_path / "nested.pt"
    torch.save({container: src.state_dict(), "epoch": 3, "hparams": {"lr": 0.1, "name": "x"}}, path)
    sd = load_state_dict_file(path)
    assert set(sd) == set(src.state_dict())
    dst = Tiny()
    load_weights(dst, path)
    _assert_same(src, dst)


def test_lightning_checkpoint_with_prefix(tmp_path):
    src = _filled(3)
    state = {f"model.encoder.{k}": v for k, v in src.state_dict().items()}
    state["model.other.weight"] = torch.zeros(4)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10, "optimizer_states": []}, path)
    dst = Tiny()
    assert load_weights(dst, path, prefix="model.encoder.") == ([], [])
    _assert_same(src, dst)
    with pytest.raises(ValueError, match=r"prefix 'nope\.' matches no key of .*last\.ckpt"):
        load_weights(Tiny(), path, prefix="nope.")


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_state_dict_file(path)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_weights(Tiny(), path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "weird.pt"
    torch.save({"epoch": 1, "notes": "x"}, path)
    with pytest.raises(ValueError, match=r"no state dict found in .*weird\.pt.*epoch"):
        load_state_dict_file(path)
    path2 = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path2)
    with pytest.raises(ValueError, match="list"):
        load_state_dict_file(path2)


def test_strict_error_lists_missing_unexpected_and_shape(tmp_path):
    src = _filled(4, hidden=5)  # fc/bn/head shapes differ from Tiny(3)
    state = src.state_dict()
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError) as err:
        load_weights(Tiny(3), path)
    msg = str(err.value)
    assert "bad.pt" in msg and "Tiny" in msg
    assert "missing keys 1: head.bias" in msg
    assert "unexpected keys 1: extra.weight" in msg
    assert "shape-mismatched keys" in msg and "fc.weight (file (5, 2) vs module (3, 2))" in msg


def test_non_strict_loads_the_rest(tmp_path):
    src = _filled(5)
    state = src.state_dict()
    del state["head.bias"]
    state["head.weight"] = torch.zeros(1, 7)  # wrong shape: skipped, reported missing
    state["extra"] = torch.ones(2)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    dst = _filled(6)
    before = dst.head.weight.detach().clone()
    missing, unexpected = load_weights(dst, path, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"]
    assert unexpected == ["extra"]
    torch.testing.assert_close(dst.fc.weight, src.fc.weight)
    torch.testing.assert_close(dst.head.weight, before)


def test_ignore_patterns_both_sides(tmp_path):
    src = _filled(7)
    state = dict(src.state_dict())
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(3, 1, 4)
    del state["head.weight"], state["head.bias"]
    path = tmp_path / "ign.pt"
    torch.save(state, path)
    # glob pattern and plain "prefix." form
    missing, unexpected = load_weights(Tiny(), path, ignore=("spectrogram_extractor.*", "head."))
    assert missing == [] and unexpected == []
    with pytest.raises(RuntimeError, match="spectrogram_extractor"):
        load_weights(Tiny(), path, ignore=("head.*",))


def test_num_batches_tracked_absent_is_fine(tmp_path):
    src = _filled(8)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    assert load_weights(Tiny(), path) == ([], [])


def test_format_keys_truncates():
    keys = [f"k{i}" for i in range(13)]
    text = format_keys(keys)
    assert text.startswith("13: k0, k1")
    assert "k9" in text and "k10" not in text and text.endswith("(+3 more)")
