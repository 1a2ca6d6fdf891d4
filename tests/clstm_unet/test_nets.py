"""ConvLSTMUNet (the network of CLSTMUNet) shapes, normalisation, placement of the context and the encode/decode split."""

import pytest
import torch
from autograd_graph import autograd_ops

from lightning_modules.clstm_unet.nets import ConvLSTMUNet

SMALL = dict(in_channels=1, base_channels=4, depth=2, convlstm_hidden=6)


def _placement(L: int, where: str) -> tuple[int, int]:
    if where == "before":
        return L, 0
    if where == "after":
        return 0, L
    return L // 2, L - L // 2  # both


@pytest.mark.parametrize("L", [0, 4, 6, 10])
@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_shapes_and_softmax_for_each_length_and_placement(L, where):
    torch.manual_seed(0)
    nb, na = _placement(L, where)
    net = ConvLSTMUNet(**SMALL, num_before=nb, num_after=na)
    assert net.sequence_length == L + 1
    video = torch.rand(2, 1, L + 1, 16, 16) * 2 - 1
    out = net(video, nb)
    assert out.shape == (2, 1, 16, 16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(dim=(1, 2, 3)), torch.ones(2))
    out.mean().backward()
    assert net.encoder.levels[0][0].weight.grad is not None
    assert net.convlstm is not None and net.convlstm.cells[0].conv.weight.grad is not None


def test_target_index_from_batch_tensor_and_longer_video():
    torch.manual_seed(0)
    net = ConvLSTMUNet(**SMALL, num_before=2, num_after=1).eval()
    video = torch.rand(2, 1, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        a = net(video, torch.tensor([5, 5]))
        b = net(video[:, :, 3:7], 2)  # the same window cut out
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        net(video, torch.tensor([5, 4]))
    with pytest.raises(ValueError):
        net(video, 1)  # needs two frames before
    with pytest.raises(ValueError):
        net(video, 7)  # needs one frame after


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize(("nb", "na"), [(6, 0), (0, 4), (3, 2), (0, 0)])
def test_forward_equals_decode_of_encoded_frames(share, nb, na):
    torch.manual_seed(0)
    net = ConvLSTMUNet(**SMALL, num_before=nb, num_after=na, share_encoder=share)
    # non-trivial BatchNorm running statistics, then eval (so per-frame encoding == batched encoding)
    net.train()
    with torch.no_grad():
        net(torch.rand(3, 1, nb + na + 1, 16, 16) * 2 - 1, nb)
    net.eval()
    video = torch.rand(2, 1, nb + na + 1, 16, 16) * 2 - 1
    t = nb
    with torch.no_grad():
        full = net(video, t)
        skips, bott = net.encode_frame(video[:, :, t])
        ctx = [net.encode_context_frame(video[:, :, i]) for i in net.context_indices(t)]
        stacked = torch.stack(ctx, dim=1) if ctx else bott.new_zeros(2, 0, *bott.shape[1:])
        kwargs = {} if share else {"target_context": net.encode_context_frame(video[:, :, t])}
        split = net.decode(skips, bott, stacked, **kwargs)
    torch.testing.assert_close(full, split, atol=1e-5, rtol=1e-5)
    if share:  # with a shared encoder the buffered feature is encode_frame's bottleneck
        assert all(
            torch.equal(c, net.encode_frame(video[:, :, i])[1]) for c, i in zip(ctx, net.context_indices(t))
        )


def test_context_changes_output_only_with_temporal_path():
    torch.manual_seed(0)
    video = torch.rand(1, 1, 5, 16, 16) * 2 - 1
    other = video.clone()
    other[:, :, :4] = torch.rand(1, 1, 4, 16, 16) * 2 - 1  # change only the context frames
    # GroupNorm: per-sample normalisation keeps activations O(1) at init (fresh BatchNorm running
    # statistics in eval mode shrink the bottleneck to ~1e-3 and hide the context's effect)
    temporal = ConvLSTMUNet(**SMALL, num_before=4, norm="group").eval()
    spatial = ConvLSTMUNet(**SMALL, num_before=4, use_temporal=False, norm="group").eval()
    with torch.no_grad():
        assert (temporal(video, 4) - temporal(other, 4)).abs().max() > 1e-5
        torch.testing.assert_close(spatial(video, 4), spatial(other, 4))


def test_spatial_only_baseline_has_no_temporal_parameters():
    net = ConvLSTMUNet(**SMALL, use_temporal=False)
    assert net.convlstm is None and net.fuse is None and net.temporal_encoder is None
    assert net.num_context == 0 and net.context_indices(3) == []
    out = net(torch.rand(2, 1, 1, 16, 16), 0)
    torch.testing.assert_close(out.exp().sum(dim=(1, 2, 3)), torch.ones(2))


def test_shared_vs_separate_encoder_parameters():
    shared = ConvLSTMUNet(**SMALL, num_before=2)
    separate = ConvLSTMUNet(**SMALL, num_before=2, share_encoder=False)
    assert shared.temporal_encoder is None
    assert separate.temporal_encoder is not None
    n_enc = sum(p.numel() for p in shared.encoder.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    n_sep = sum(p.numel() for p in separate.parameters())
    assert n_sep - n_shared == n_enc


def test_odd_input_size_multichannel_and_no_target_in_sequence():
    net = ConvLSTMUNet(in_channels=3, base_channels=4, depth=3, num_before=2, temporal_includes_target=False)
    out = net(torch.rand(1, 3, 3, 30, 22) * 2 - 1, 2)
    assert out.shape == (1, 1, 30, 22)
    torch.testing.assert_close(out.exp().sum(), torch.tensor(1.0))
    with pytest.raises(ValueError):
        ConvLSTMUNet(**SMALL, num_before=0, num_after=0, temporal_includes_target=False)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_norm_options(norm):
    net = ConvLSTMUNet(**SMALL, num_before=1, norm=norm)
    out = net(torch.rand(2, 1, 2, 16, 16), 1)
    torch.testing.assert_close(out.exp().sum(dim=(1, 2, 3)), torch.ones(2))


def test_predict_saliency_and_bf16_autocast():
    net = ConvLSTMUNet(**SMALL, num_before=2).eval()
    video = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    p = net.predict_saliency(video, 2)
    torch.testing.assert_close(p.sum(dim=(1, 2, 3)), torch.ones(2))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = net(video, 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_backward_never_copies_gradients_back_through_a_norm_view(norm):
    """An in-place ReLU on an InstanceNorm output (a view) would make autograd copy every gradient back
    through the view (CopySlices) in the backward pass."""
    net = ConvLSTMUNet(**{**SMALL, "norm": norm}, num_before=2, num_after=0)
    ops = autograd_ops(net(torch.rand(2, 1, 3, 16, 16), 2))
    assert "CopySlices" not in ops and "ConvolutionBackward0" in ops
