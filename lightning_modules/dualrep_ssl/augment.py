"""Independent random views of the video and of its frame for contrastive pretraining (our addition).

The image stream is one of the clip's own frames, so video-image alignment can be solved by matching the
exact pixels (probe pose, position of the structures, speckle) instead of the anatomy, and such features
transfer badly: on the synthetic demo the pretrained encoder then fine-tunes *worse* than random weights.
Giving the clip and the frame independent geometric and intensity views (random resized crop, flip,
rotation, gain / contrast, blur, noise: the usual recipe of contrastive learning, e.g. SimCLR) leaves the
content they share as the only cue. The paper says nothing about augmentation; ``augment: false`` in the
config restores its plain setting.

One draw per item; a video item gets the same draw for all its frames (torchvision's v2 transforms apply
one set of parameters to all leading dimensions).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

__all__ = ["ViewAugment"]


class ViewAugment(nn.Module):
    """Random view of ``B×C×H×W`` images or ``B×C×T×H×W`` clips in ``[-1, 1]`` (same shape and range out).

    Args:
        crop_scale: area range of the random resized crop (resized back to the input size).
        max_rotation: degrees, uniform in ``±max_rotation``.
        flip: random horizontal flip.
        brightness, contrast: jitter strengths (torchvision ``ColorJitter``).
        blur_sigma: range of the Gaussian blur sigma in pixels (kernel 3), applied with probability 0.5.
        noise_std: std of additive Gaussian noise on the ``[0, 1]`` scale.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        max_rotation: float = 15.0,
        flip: bool = True,
        brightness: float = 0.3,
        contrast: float = 0.3,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        noise_std: float = 0.03,
    ) -> None:
        super().__init__()
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.crop_scale = tuple(crop_scale)
        ops: list[nn.Module] = []
        if flip:
            ops.append(v2.RandomHorizontalFlip())
        if max_rotation > 0:
            ops.append(v2.RandomRotation(max_rotation))
        ops.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
        ops.append(v2.RandomApply([v2.GaussianBlur(3, sigma=blur_sigma)], p=0.5))
        if noise_std > 0:
            ops.append(v2.GaussianNoise(sigma=noise_std, clip=True))
        self.ops = v2.Compose(ops)

    def view(self, item: Tensor) -> Tensor:
        """One item, ``…×C×H×W`` in ``[0, 1]`` (frames on the leading axis share the draw)."""
        size = list(item.shape[-2:])
        crop = v2.RandomResizedCrop(size, scale=self.crop_scale, ratio=(0.8, 1.25), antialias=True)
        return self.ops(crop(item))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (4, 5):
            raise ValueError(f"ViewAugment expects B×C×H×W or B×C×T×H×W, got {tuple(x.shape)}")
        unit = ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)
        if x.dim() == 5:  # C×T×H×W items -> T×C×H×W so that every frame gets the same draw
            views = [self.view(item.transpose(0, 1)).transpose(0, 1) for item in unit]
        else:
            views = [self.view(item) for item in unit]
        return (torch.stack(views) * 2.0 - 1.0).to(x.dtype)
