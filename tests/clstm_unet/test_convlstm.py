"""ConvLSTM cell equations against a hand-unrolled reference using the cell's own weights."""

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.clstm_unet.nets import ConvLSTM, ConvLSTMCell


def _reference_step(cell: ConvLSTMCell, x, h, c):
    """c = f·c + i·g, h = o·tanh(c); gates i, f, o, g from ONE conv over cat[x, h] (same padding)."""
    w, b = cell.conv.weight, cell.conv.bias
    hid = cell.hidden_ch
    z = F.conv2d(torch.cat([x, h], dim=1), w, b, padding=cell.kernel_size // 2)
    zi, zf, zo, zg = z[:, :hid], z[:, hid : 2 * hid], z[:, 2 * hid : 3 * hid], z[:, 3 * hid :]
    i, f, o, g = torch.sigmoid(zi), torch.sigmoid(zf), torch.sigmoid(zo), torch.tanh(zg)
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new


def _reference_step_elementwise(cell: ConvLSTMCell, x, h, c, bb, yy, xx):
    """Gates at ONE output pixel written out as explicit sums over the kernel window (no conv call)."""
    w, b = cell.conv.weight.double(), cell.conv.bias.double()
    inp = torch.cat([x, h], dim=1).double()
    k = cell.kernel_size
    r = k // 2
    padded = F.pad(inp, [r, r, r, r])
    window = padded[bb, :, yy : yy + k, xx : xx + k]  # (in+hid)×k×k
    z = (w * window.unsqueeze(0)).sum(dim=(1, 2, 3)) + b
    hid = cell.hidden_ch
    i = 1 / (1 + torch.exp(-z[:hid]))
    f = 1 / (1 + torch.exp(-z[hid : 2 * hid]))
    o = 1 / (1 + torch.exp(-z[2 * hid : 3 * hid]))
    g = torch.tanh(z[3 * hid :])
    c_new = f * c[bb, :, yy, xx].double() + i * g
    return o * torch.tanh(c_new), c_new


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_cell_two_steps_match_hand_unrolled(kernel_size):
    torch.manual_seed(0)
    cell = ConvLSTMCell(3, 4, kernel_size)
    with torch.no_grad():  # make every gate matter (the default forget bias is +1)
        cell.conv.bias.normal_()
    x1, x2 = torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)

    h0 = torch.zeros(2, 4, 6, 5)
    c0 = torch.zeros(2, 4, 6, 5)
    rh1, rc1 = _reference_step(cell, x1, h0, c0)
    rh2, rc2 = _reference_step(cell, x2, rh1, rc1)

    h1, c1 = cell(x1)  # zero initial state
    h2, c2 = cell(x2, (h1, c1))
    torch.testing.assert_close(h1, rh1)
    torch.testing.assert_close(c1, rc1)
    torch.testing.assert_close(h2, rh2)
    torch.testing.assert_close(c2, rc2)

    # explicit sums at a few pixels (incl. borders: zero "same" padding)
    for bb, yy, xx in [(0, 0, 0), (1, 5, 4), (0, 3, 2)]:
        eh1, ec1 = _reference_step_elementwise(cell, x1, h0, c0, bb, yy, xx)
        torch.testing.assert_close(h1[bb, :, yy, xx].double(), eh1, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(c1[bb, :, yy, xx].double(), ec1, atol=1e-6, rtol=1e-5)
        eh2, ec2 = _reference_step_elementwise(cell, x2, h1, c1, bb, yy, xx)
        torch.testing.assert_close(h2[bb, :, yy, xx].double(), eh2, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(c2[bb, :, yy, xx].double(), ec2, atol=1e-6, rtol=1e-5)


def test_cell_gate_order_is_i_f_o_g():
    """Saturate one gate block at a time through the bias and check the documented order."""
    cell = ConvLSTMCell(1, 1, 1)
    x = torch.zeros(1, 1, 1, 1)
    with torch.no_grad():
        cell.conv.weight.zero_()
        # i = σ(+∞) = 1, f irrelevant (c0 = 0), o = σ(+∞) = 1, g = tanh(0.5)
        cell.conv.bias.copy_(torch.tensor([50.0, 0.0, 50.0, 0.5]))
    h, c = cell(x)
    assert torch.allclose(c, torch.tanh(torch.tensor(0.5)))
    assert torch.allclose(h, torch.tanh(torch.tanh(torch.tensor(0.5))))
    with torch.no_grad():
        cell.conv.bias.copy_(torch.tensor([-50.0, 0.0, 50.0, 0.5]))  # input gate closed
    h, c = cell(x)
    assert torch.allclose(c, torch.zeros(1)) and torch.allclose(h, torch.zeros(1))
    with torch.no_grad():
        cell.conv.bias.copy_(torch.tensor([50.0, 0.0, -50.0, 0.5]))  # output gate closed
    h, c = cell(x)
    assert torch.allclose(h, torch.zeros(1), atol=1e-12) and c.abs().item() > 0.4
    # forget gate: with f = 1 and i = 0 the cell keeps c
    with torch.no_grad():
        cell.conv.bias.copy_(torch.tensor([-50.0, 50.0, 50.0, 0.5]))
    c_prev = torch.full((1, 1, 1, 1), 0.7)
    _, c = cell(x, (torch.zeros(1, 1, 1, 1), c_prev))
    assert torch.allclose(c, c_prev)


def test_forget_bias_initialised_to_one():
    cell = ConvLSTMCell(2, 3)
    assert torch.equal(cell.conv.bias[3:6], torch.ones(3))


def test_convlstm_runs_cell_over_time():
    torch.manual_seed(1)
    lstm = ConvLSTM(2, 3, 3)
    x = torch.randn(2, 4, 2, 5, 5)
    last, allh = lstm(x)
    assert last.shape == (2, 3, 5, 5) and allh.shape == (2, 4, 3, 5, 5)
    state = None
    for t in range(4):
        state = lstm.cells[0](x[:, t], state)
        torch.testing.assert_close(allh[:, t], state[0])
    torch.testing.assert_close(last, state[0])


def test_convlstm_stacked_layers_and_errors():
    lstm = ConvLSTM(2, 3, 3, num_layers=2)
    last, allh = lstm(torch.randn(1, 3, 2, 4, 4))
    assert last.shape == (1, 3, 4, 4) and allh.shape == (1, 3, 3, 4, 4)
    with pytest.raises(ValueError):
        lstm(torch.randn(1, 0, 2, 4, 4))
    with pytest.raises(ValueError):
        lstm(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError):
        ConvLSTMCell(1, 1, 2)
