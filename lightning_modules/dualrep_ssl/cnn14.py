"""PANNs CNN14 (Kong et al., 2020) on log-mel input, laid out like the public checkpoints.

Layout (attribute names equal the public checkpoints' state-dict keys):

* ``bn0``: ``BatchNorm2d(mel_bins)`` normalising each mel bin;
* ``conv_block1`` … ``conv_block6``: two 3×3 convolutions (no bias), each followed by BatchNorm and ReLU,
  then 2×2 average pooling (``conv_block6``: 1×1, i.e. none); channels 1→64→128→256→512→1024→2048;
  dropout 0.2 after every block;
* mean over frequency, then max + mean over time, dropout 0.5;
* ``fc1``: Linear 2048→2048 + ReLU → the 2048-d embedding (dropout 0.5 on it in training, as in PANNs);
* ``fc_audioset`` (optional): Linear 2048→527, sigmoid → AudioSet clip-wise probabilities (computed from
  the fc1 output before that dropout, as in PANNs).

Input is the log-mel spectrogram only, ``B×1×mels×frames`` (the data layer's batch layout; the front end
there is the CNN14 one: 16 kHz, n_fft 512, hop 160, 64 mels 50–8000 Hz, Slaney, 10·log10 with amin 1e-10).
Raw waveforms are not accepted: the STFT/log-mel front end lives in the data layer, not here.
Conversion to PANNs' internal ``(B, 1, time, mels)`` layout happens in :meth:`Cnn14.forward`.
SpecAugment and mixup, which PANNs applied inside its model during AudioSet training, are not part of this
module (augmentation belongs to the data layer).

Public checkpoints (e.g. ``Cnn14_16k_mAP=0.438.pth``) also hold the front end's fixed STFT/mel weights
(``spectrogram_extractor.*``, ``logmel_extractor.*``). :meth:`Cnn14.load_pretrained` accepts and ignores
them. Such checkpoints nest the weights under ``"model"``; :func:`~lightning_modules.common.weights.
load_state_dict_file` finds them there. ``load_pretrained("audioset")`` reads the official 16 kHz file
(Zenodo record 3987831) from ``$TORCH_HOME/hub/checkpoints/Cnn14_16k_mAP=0.438.pth``, downloading it there
when a network allows (:mod:`lightning_modules.common.pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.common.pretrained import load_init

__all__ = ["CNN14_CHANNELS", "FRONT_END_KEYS", "Cnn14", "ConvBlock"]

CNN14_CHANNELS = (64, 128, 256, 512, 1024, 2048)
# State-dict keys of the public checkpoints that belong to the (torchlibrosa) front end, not to this module.
FRONT_END_KEYS = ("spectrogram_extractor.*", "logmel_extractor.*")


def _init_layer(layer: nn.Conv2d | nn.Linear) -> None:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _init_bn(bn: nn.BatchNorm2d) -> None:
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)


class ConvBlock(nn.Module):
    """Two (3×3 conv, no bias → BatchNorm → ReLU), then average pooling of ``pool_size``."""

    def __init__(self, in_channels: int, out_channels: int, pool_size: tuple[int, int] = (2, 2)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool_size = tuple(pool_size)
        for conv in (self.conv1, self.conv2):
            _init_layer(conv)
        for bn in (self.bn1, self.bn2):
            _init_bn(bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if self.pool_size != (1, 1):
            x = F.avg_pool2d(x, kernel_size=self.pool_size)
        return x


class Cnn14(nn.Module):
    """PANNs CNN14 on log-mel input.

    Args:
        mel_bins: number of mel bins of the input (64 for the 16 kHz checkpoints); ``bn0`` normalises them.
        num_classes: size of the AudioSet head ``fc_audioset`` (527); ``None`` builds no head.
        weights_path: optional checkpoint (local file or ``"audioset"``) loaded with :meth:`load_pretrained`
            at construction.

    ``forward(logmel)`` takes ``B×1×mels×frames`` (or ``B×mels×frames``) and returns
    ``{"embedding": B×2048}`` plus ``"clipwise": B×num_classes`` (sigmoid) when the head exists.
    Frames and mels must both be at least 32 (five 2× poolings).
    """

    embedding_dim = 2048

    def __init__(self, mel_bins: int = 64, num_classes: int | None = 527, weights_path: str | None = None):
        super().__init__()
        self.mel_bins = mel_bins
        self.num_classes = num_classes
        self.bn0 = nn.BatchNorm2d(mel_bins)
        _init_bn(self.bn0)
        in_ch = 1
        for i, out_ch in enumerate(CNN14_CHANNELS, start=1):
            pool = (1, 1) if i == len(CNN14_CHANNELS) else (2, 2)
            self.add_module(f"conv_block{i}", ConvBlock(in_ch, out_ch, pool_size=pool))
            in_ch = out_ch
        self.fc1 = nn.Linear(2048, 2048, bias=True)
        _init_layer(self.fc1)
        if num_classes is not None:
            self.fc_audioset = nn.Linear(2048, num_classes, bias=True)
            _init_layer(self.fc_audioset)
        if weights_path:
            self.load_pretrained(weights_path)

    @property
    def blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i}") for i in range(1, len(CNN14_CHANNELS) + 1)]

    def forward(self, logmel: torch.Tensor) -> dict[str, torch.Tensor]:
        if logmel.dim() == 3:
            logmel = logmel.unsqueeze(1)
        if logmel.dim() != 4 or logmel.shape[1] != 1:
            raise ValueError(f"Cnn14 expects log-mel B×1×mels×frames, got shape {tuple(logmel.shape)}")
        _, _, mels, frames = logmel.shape
        if mels != self.mel_bins:
            raise ValueError(f"Cnn14 was built for {self.mel_bins} mel bins, input has {mels}")
        if frames < 32 or mels < 32:
            raise ValueError(f"Cnn14 needs at least 32 frames and 32 mel bins, got {mels}×{frames}")

        # bn0 over mel bins: put mels on the channel axis, (B, mels, 1, frames).
        x = self.bn0(logmel.transpose(1, 2)).transpose(1, 2)  # back to (B, 1, mels, frames)
        x = x.transpose(2, 3)  # PANNs layout (B, 1, time, mels)
        for block in self.blocks:
            x = block(x)
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over frequency -> (B, 2048, time)
        x = x.amax(dim=2) + x.mean(dim=2)  # max + mean over time
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu(self.fc1(x))
        out = {"embedding": F.dropout(x, p=0.5, training=self.training)}
        if self.num_classes is not None:
            out["clipwise"] = torch.sigmoid(self.fc_audioset(x))
        return out

    def load_pretrained(
        self,
        path: str | os.PathLike,
        prefix: str | None = None,
        strict: bool = True,
        ignore: Sequence[str] = (),
    ) -> tuple[list[str], list[str]]:
        """Load a CNN14 checkpoint (public PANNs layout or our own): a local file or ``"audioset"``.

        ``"audioset"`` is the official ``Cnn14_16k_mAP=0.438.pth`` from the torch.hub cache (downloaded
        there when missing and a network allows; ``prefix`` must then be ``None``).

        The front end's ``spectrogram_extractor.*`` / ``logmel_extractor.*`` keys of the public checkpoints
        are ignored (our log-mel is computed in the data layer); without a head, ``fc_audioset.*`` is
        ignored too. Other arguments as in :func:`~lightning_modules.common.weights.load_weights`.
        """
        ignore = (*FRONT_END_KEYS, *ignore)
        if self.num_classes is None:
            ignore = (*ignore, "fc_audioset.*")
        return load_init(self, "cnn14", path, prefix=prefix, strict=strict, ignore=ignore)
