"""Plain nn.Modules of cLSTMU-Net (Savochkina et al., ISBI 2022): a ConvLSTM and the U-Net around it.

Architecture (paper Sec. 2.3 and Fig. 1, no public code; choices we had to make are marked *choice*):

- **Spatial path**: a U-Net encoder (``depth`` levels of two 3×3 conv-norm-ReLU blocks, each followed by
  2×2 max pooling, then a bottleneck block) encodes the *target* frame; its per-level outputs are the skip
  connections.
- **Temporal path**: the context frames (``num_before`` frames before the target and ``num_after`` after it)
  are encoded by a *time-distributed* encoder, i.e. one encoder applied to every frame with the same weights.
  The paper says the temporal input "mimics the encoder layer structure", that the time-distributed layer
  "shares the weights between the images in a sequence", and its contribution is "a U-Net with feature
  sharing between 2 inputs". *Choice*: by default (``share_encoder=True``) the time-distributed encoder IS the
  spatial encoder (one set of weights for target and context frames). ``share_encoder=False`` gives the
  temporal path its own encoder of the same shape (only its bottleneck is used).
- **ConvLSTM at the bottleneck**: the paper's second input is "a sequence of frames preceding and including
  the US frame in question", so (``temporal_includes_target=True``, default) the ConvLSTM runs, in time order,
  over the bottlenecks of the context frames *and* the target frame (before-frames, target, after-frames).
  Its last hidden state summarises the clip.
- **Fusion** *choice*: ``cat[target bottleneck, ConvLSTM h_T]`` → 1×1 conv (+ norm + ReLU) back to the
  bottleneck width; the decoder starts from the fused map ("the output of the cLSTM is fed into a decoder
  where after a transpose convolution it is concatenated with the skip connection").
- **Decoder**: per level a 2×2 transposed convolution, concat with the skip, two 3×3 conv blocks; a 1×1 conv
  to one channel; softmax over all H·W pixels (we return ``log_softmax``; ``exp`` of it sums to 1 per map).
- ``use_temporal=False`` drops the temporal path: the spatial-only U-Net baseline (the paper's RA(n, m)
  models from [5]).

Placement of the context (paper Table 2: before / before & after / after) is only ``num_before`` and
``num_after``. The paper's best model uses "a video clip of 6 frames" before the target; whether the 6
includes the target is not stated, we default to ``num_before=6`` (REFERENCE_NOTES: "sequences of 6 frames
before the target did best").

Streaming (phase 2 predictor): :meth:`ConvLSTMUNet.encode_frame` gives ``(skips, bottleneck)`` of one frame;
keep the bottlenecks of past frames in a ring buffer and call :meth:`ConvLSTMUNet.decode` with them, so each
frame is encoded once. ``forward`` is exactly ``decode(*encode_frame(target), stacked context bottlenecks)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvLSTM", "ConvLSTMCell", "ConvLSTMUNet", "UNetEncoder"]


# ---------------------------------------------------------------------------------------------------------
# ConvLSTM
# ---------------------------------------------------------------------------------------------------------


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step (Shi et al. 2015, without peephole connections).

    A single ``Conv2d(in_ch + hidden_ch -> 4·hidden_ch, kernel_size, padding="same")`` over
    ``cat[x_t, h_{t-1}]`` (input channels first) produces the four gate pre-activations, split along the
    channel dimension in the order **i, f, o, g** (``conv(...).chunk(4, dim=1)``)::

        i = σ(z_i)   f = σ(z_f)   o = σ(z_o)   g = tanh(z_g)
        c_t = f · c_{t-1} + i · g
        h_t = o · tanh(c_t)

    The state is zero when not given. The forget-gate bias is initialised to 1 (a common trick to keep
    memory early in training); all other parameters use PyTorch's default Conv2d init.
    """

    GATE_ORDER = ("i", "f", "o", "g")

    def __init__(self, in_ch: int, hidden_ch: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for same padding, got {kernel_size}")
        self.in_ch = in_ch
        self.hidden_ch = hidden_ch
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(
            in_ch + hidden_ch, 4 * hidden_ch, kernel_size, padding=kernel_size // 2, bias=bias
        )
        if self.conv.bias is not None:
            with torch.no_grad():
                self.conv.bias[hidden_ch : 2 * hidden_ch].fill_(1.0)

    def init_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Zero ``(h, c)`` for an input ``x`` of shape B×in_ch×H×W."""
        b, _, h, w = x.shape
        zeros = x.new_zeros(b, self.hidden_ch, h, w)
        return zeros, zeros.clone()

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """``x`` B×in_ch×H×W, ``state`` ``(h, c)`` each B×hidden×H×W (zeros if None) -> ``(h_t, c_t)``."""
        h, c = self.init_state(x) if state is None else state
        z_i, z_f, z_o, z_g = self.conv(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        i, f, o, g = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.sigmoid(z_o), torch.tanh(z_g)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """A (stack of) :class:`ConvLSTMCell` run over a sequence B×T×C×H×W in order t = 0..T−1.

    ``forward`` returns ``(last_h, all_h)``: the last layer's hidden state after the last step (B×hidden×H×W)
    and its hidden states at every step (B×T×hidden×H×W). With ``num_layers > 1`` layer k+1 takes layer k's
    hidden states as its input sequence. Zero initial state.
    """

    def __init__(self, in_ch: int, hidden_ch: int, kernel_size: int = 3, num_layers: int = 1) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be >= 1")
        self.hidden_ch = hidden_ch
        self.cells = nn.ModuleList(
            ConvLSTMCell(in_ch if k == 0 else hidden_ch, hidden_ch, kernel_size) for k in range(num_layers)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 5:
            raise ValueError(f"ConvLSTM expects B×T×C×H×W, got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("ConvLSTM needs at least one time step")
        seq = x
        for cell in self.cells:
            state = None
            outs = []
            for t in range(seq.shape[1]):
                state = cell(seq[:, t], state)
                outs.append(state[0])
            seq = torch.stack(outs, dim=1)
        return seq[:, -1], seq


# ---------------------------------------------------------------------------------------------------------
# U-Net parts
# ---------------------------------------------------------------------------------------------------------


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, ch), ch) if ch % min(8, ch) == 0 else nn.GroupNorm(1, ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}: use 'batch', 'instance', 'group' or 'none'")


class DoubleConv(nn.Sequential):
    """(3×3 conv → norm → ReLU) × 2."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch") -> None:
        bias = norm == "none"
        # not in place after an InstanceNorm (its output is a view: autograd would copy every gradient back)
        inplace = norm != "instance"
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias),
            _norm(norm, out_ch),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias),
            _norm(norm, out_ch),
            nn.ReLU(inplace=inplace),
        )


class UNetEncoder(nn.Module):
    """U-Net contracting path: ``depth`` levels (DoubleConv, then 2×2 max-pool) and a bottleneck DoubleConv.

    Level k has ``base·2^k`` channels; the bottleneck has ``base·2^depth`` channels at 1/2^depth resolution.
    ``forward(x B×C×H×W) -> (skips, bottleneck)`` with ``skips`` the ``depth`` pre-pool level outputs,
    finest first.
    """

    def __init__(self, in_channels: int, base_channels: int, depth: int, norm: str = "batch") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be >= 1")
        widths = [base_channels * 2**k for k in range(depth + 1)]
        self.widths = widths
        self.levels = nn.ModuleList(
            DoubleConv(in_channels if k == 0 else widths[k - 1], widths[k], norm) for k in range(depth)
        )
        self.bottleneck = DoubleConv(widths[depth - 1], widths[depth], norm)

    @property
    def out_channels(self) -> int:
        return self.widths[-1]

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return skips, self.bottleneck(x)


class UNetDecoder(nn.Module):
    """U-Net expanding path: per level ConvTranspose2d(2, stride 2) → concat skip → DoubleConv; 1×1 head."""

    def __init__(self, widths: Sequence[int], out_channels: int = 1, norm: str = "batch") -> None:
        super().__init__()
        depth = len(widths) - 1
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2) for k in reversed(range(depth))
        )
        self.blocks = nn.ModuleList(
            DoubleConv(2 * widths[k], widths[k], norm) for k in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, skips: Sequence[Tensor], x: Tensor) -> Tensor:
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips)):
            x = up(x)
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if dh or dw:  # odd sizes: pooling floored, pad back to the skip's size
                x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


def log_softmax_2d(logits: Tensor) -> Tensor:
    """``log_softmax`` over all pixels of each map: B×1×H×W -> B×1×H×W, ``exp`` sums to 1 per map."""
    return logits.flatten(1).log_softmax(dim=1).view_as(logits)


# ---------------------------------------------------------------------------------------------------------
# cLSTMU-Net
# ---------------------------------------------------------------------------------------------------------


class ConvLSTMUNet(nn.Module):
    """cLSTMU-Net video saliency predictor (or the spatial-only U-Net with ``use_temporal=False``).

    Args:
        in_channels: channels of the video frames (C of the batch's ``video``).
        base_channels: width of the first U-Net level; level k has ``base·2^k``.
        depth: number of down-sampling levels (input H, W ideally divisible by ``2**depth``; other sizes
            are handled by padding in the decoder).
        convlstm_hidden: ConvLSTM hidden channels; None = the bottleneck width ``base·2^depth``.
        convlstm_kernel: ConvLSTM kernel size (odd).
        convlstm_layers: stacked ConvLSTM layers.
        num_before: context frames before the target frame.
        num_after: context frames after the target frame.
        use_temporal: False = spatial-only U-Net on the target frame (context frames ignored).
        share_encoder: True = the time-distributed context encoder is the spatial encoder (shared weights).
        temporal_includes_target: True = the ConvLSTM sequence is before-frames, target, after-frames
            (the paper's "frames preceding and including the US frame"); False = context frames only.
        norm: "batch" (default), "instance", "group" or "none".

    Shapes: ``forward(video B×C×T×H×W, target_index)`` -> log-saliency B×1×H×W (``log_softmax`` over H·W).
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        depth: int = 4,
        convlstm_hidden: int | None = None,
        convlstm_kernel: int = 3,
        convlstm_layers: int = 1,
        num_before: int = 6,
        num_after: int = 0,
        use_temporal: bool = True,
        share_encoder: bool = True,
        temporal_includes_target: bool = True,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if num_before < 0 or num_after < 0:
            raise ValueError("num_before and num_after must be >= 0")
        if use_temporal and not temporal_includes_target and num_before + num_after == 0:
            raise ValueError("temporal path without the target needs num_before + num_after > 0")
        self.in_channels = in_channels
        self.num_before = num_before
        self.num_after = num_after
        self.use_temporal = use_temporal
        self.share_encoder = share_encoder
        self.temporal_includes_target = temporal_includes_target

        self.encoder = UNetEncoder(in_channels, base_channels, depth, norm)
        bott = self.encoder.out_channels
        self.bottleneck_channels = bott
        self.temporal_encoder: UNetEncoder | None = None
        self.convlstm: ConvLSTM | None = None
        self.fuse: nn.Module | None = None
        if use_temporal:
            if not share_encoder:
                self.temporal_encoder = UNetEncoder(in_channels, base_channels, depth, norm)
            hidden = convlstm_hidden or bott
            self.convlstm = ConvLSTM(bott, hidden, convlstm_kernel, convlstm_layers)
            self.fuse = nn.Sequential(
                nn.Conv2d(bott + hidden, bott, 1, bias=norm == "none"),
                _norm(norm, bott),
                nn.ReLU(inplace=norm != "instance"),
            )
        self.decoder = UNetDecoder(self.encoder.widths, 1, norm)

    # -- sequence layout ---------------------------------------------------------------------------------

    @property
    def num_context(self) -> int:
        """Context frames the temporal path uses (0 for the spatial-only model)."""
        return self.num_before + self.num_after if self.use_temporal else 0

    @property
    def sequence_length(self) -> int:
        """Frames ``forward`` needs around the target: ``num_before + 1 + num_after`` (1 if spatial-only)."""
        return self.num_context + 1

    def context_indices(self, target_index: int) -> list[int]:
        """Time indices of the context frames, before-frames then after-frames, each in time order."""
        if not self.use_temporal:
            return []
        before = range(target_index - self.num_before, target_index)
        after = range(target_index + 1, target_index + 1 + self.num_after)
        return [*before, *after]

    # -- pieces for streaming ----------------------------------------------------------------------------

    def encode_frame(self, frame: Tensor) -> tuple[list[Tensor], Tensor]:
        """Spatial encoder on frames B×C×H×W -> ``(skips, bottleneck)``; with a shared encoder the
        bottleneck is also the frame's temporal feature (what a streaming predictor buffers)."""
        return self.encoder(frame)

    def encode_context_frame(self, frame: Tensor) -> Tensor:
        """Temporal-path feature of frames B×C×H×W: the time-distributed encoder's bottleneck."""
        if self.temporal_encoder is None:
            return self.encoder(frame)[1]
        return self.temporal_encoder(frame)[1]

    def decode(
        self,
        skips: Sequence[Tensor],
        bottleneck: Tensor,
        context_bottlenecks: Tensor | None = None,
        target_context: Tensor | None = None,
    ) -> Tensor:
        """Decode the target's encoder outputs (+ context) into a log-saliency map B×1×H×W.

        ``context_bottlenecks``: B×L×C×h×w, L = ``num_before + num_after``: the ``num_before`` frames before
        the target then the ``num_after`` frames after it, each in time order (as :meth:`context_indices`),
        from :meth:`encode_context_frame` (= :meth:`encode_frame`'s bottleneck with a shared encoder).
        ``target_context``: the target's temporal feature; only needed when the encoder is not shared and
        ``temporal_includes_target`` (with a shared encoder it is ``bottleneck``). Ignored when
        ``use_temporal`` is False.
        """
        x = bottleneck
        if self.use_temporal:
            assert self.convlstm is not None and self.fuse is not None
            L = self.num_before + self.num_after
            if context_bottlenecks is None:
                if L:
                    raise ValueError(f"decode needs context_bottlenecks with L = {L} frames")
                context_bottlenecks = bottleneck.new_zeros(bottleneck.shape[0], 0, *bottleneck.shape[1:])
            if context_bottlenecks.dim() != 5 or context_bottlenecks.shape[1] != L:
                raise ValueError(
                    f"context_bottlenecks must be B×{L}×C×h×w, got {tuple(context_bottlenecks.shape)}"
                )
            parts = [context_bottlenecks[:, : self.num_before]]
            if self.temporal_includes_target:
                if target_context is None:
                    if not self.share_encoder:
                        raise ValueError(
                            "share_encoder=False: pass target_context=encode_context_frame(target)"
                        )
                    target_context = bottleneck
                parts.append(target_context.unsqueeze(1))
            parts.append(context_bottlenecks[:, self.num_before :])
            h_last, _ = self.convlstm(torch.cat(parts, dim=1))
            x = self.fuse(torch.cat([bottleneck, h_last], dim=1))
        return log_softmax_2d(self.decoder(skips, x))

    # -- full model --------------------------------------------------------------------------------------

    @staticmethod
    def _as_int_index(target_index: int | Tensor) -> int:
        if isinstance(target_index, Tensor):
            flat = target_index.reshape(-1)
            if flat.numel() == 0:
                raise ValueError("empty target_index")
            if flat.numel() > 1 and not bool((flat == flat[0]).all()):
                raise ValueError("target_index must be the same for every item of the batch")
            return int(flat[0])
        return int(target_index)

    def forward(self, video: Tensor, target_index: int | Tensor) -> Tensor:
        """``video`` B×C×T×H×W in [-1, 1]; ``target_index`` an int (or the batch's B int64 tensor, all equal).

        Returns the log-saliency B×1×H×W of the target frame (``log_softmax`` over H·W).
        """
        if video.dim() != 5:
            raise ValueError(f"video must be B×C×T×H×W, got {tuple(video.shape)}")
        t = self._as_int_index(target_index)
        T = video.shape[2]
        ctx = self.context_indices(t)
        if not 0 <= t < T or any(not 0 <= i < T for i in ctx):
            raise ValueError(
                f"target_index {t} with num_before={self.num_before}, num_after={self.num_after} "
                f"needs frames outside the T={T} frames given"
            )
        B = video.shape[0]
        if not self.use_temporal:
            skips, bottleneck = self.encode_frame(video[:, :, t])
            return self.decode(skips, bottleneck)

        if self.temporal_encoder is None:
            # One batched pass of the shared encoder over target + context frames (target first).
            frames = video[:, :, [t, *ctx]].transpose(1, 2).flatten(0, 1)  # (B·(1+L))×C×H×W
            skips_all, bott_all = self.encoder(frames)
            n = 1 + len(ctx)
            skips = [s.unflatten(0, (B, n))[:, 0] for s in skips_all]
            bott_all = bott_all.unflatten(0, (B, n))
            return self.decode(skips, bott_all[:, 0], bott_all[:, 1:])

        skips, bottleneck = self.encode_frame(video[:, :, t])
        idx = [t, *ctx] if self.temporal_includes_target else ctx
        feats = self.temporal_encoder(video[:, :, idx].transpose(1, 2).flatten(0, 1))[1].unflatten(
            0, (B, len(idx))
        )
        if self.temporal_includes_target:
            return self.decode(skips, bottleneck, feats[:, 1:], target_context=feats[:, 0])
        return self.decode(skips, bottleneck, feats)

    @torch.no_grad()
    def predict_saliency(self, video: Tensor, target_index: int | Tensor) -> Tensor:
        """Probabilities B×1×H×W (each map sums to 1): ``forward(...).exp()`` without gradients."""
        return self.forward(video, target_index).exp()
