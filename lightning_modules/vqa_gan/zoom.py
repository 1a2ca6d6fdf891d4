"""Zoom-in module of VideoQualityGAN: a spatial transformer that crops the main structure.

The localisation net is torchvision's GoogLeNet (InceptionV1) with its ``fc`` replaced by a head that
predicts a constrained, axis-aligned, isotropic affine crop

    theta = [[s, 0, tx],
             [0, s, ty]]   with s in [s_min, 1] and tx, ty in [-1, 1]

in the normalised coordinates of ``F.affine_grid`` (``align_corners=False``): an output pixel at
``(x, y) ∈ [-1, 1]²`` samples the input at ``(s·x + tx, s·y + ty)``. The crop therefore covers the
fraction ``s`` of the frame's width and of its height (it keeps the frame's aspect ratio, square for
square frames), centred at ``((tx + 1) / 2, (ty + 1) / 2)`` in ``[0, 1]`` frame coordinates.

The head is initialised to the identity crop (s = 1, tx = ty = 0): raw outputs ``(u, vx, vy)`` are
zero and map to ``s = min(1, 1 − (1 − s_min)·tanh(u))`` (the clamp at 1 uses a straight-through
gradient so the identity start is not a dead point), ``tx = tanh(vx)``, ``ty = tanh(vy)``.

One theta per clip is predicted from one frame (``frame_index=-1``: the last, freeze frame, by
default) and applied to every frame of the clip, to its optical flow (resampled and rescaled so it
equals the flow of the zoomed video) and to its gaze maps (resampled and renormalised).

The localiser may start from ImageNet (``weights_path="imagenet"``): torchvision's
``GoogLeNet_Weights.IMAGENET1K_V1``, read by torchvision's own loader from the torch.hub cache
(``$TORCH_HOME/hub/checkpoints/googlenet-1378be20.pth``, downloaded there when a network allows; see
:mod:`lightning_modules.common.pretrained`). Those weights expect inputs scaled to ``[-1, 1]`` (torchvision
builds that GoogLeNet with ``transform_input=True``), so the localiser then gets the frames in ``[-1, 1]``
instead of ImageNet-normalised ones (the same holds for a local torchvision GoogLeNet state dict); the
buffer ``transform_input`` records which, so a checkpoint restores the input scaling it was trained with.
Grey frames are repeated to RGB; with the ``[-1, 1]`` input that is exactly the first convolution summed
over RGB, as timm's ``adapt_input_conv`` builds it for 1-channel models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import googlenet

from lightning_modules.common.pretrained import is_source_name, pretrained_state_dict

__all__ = ["ZoomIn", "box_from_theta", "theta_from_box", "warp", "warp_flow", "warp_gaze"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------- box <-> theta
def box_from_theta(theta: Tensor) -> Tensor:
    """``B×2×3`` axis-aligned theta → ``B×4`` box ``(x0, y0, x1, y1)`` in ``[0, 1]`` frame coordinates
    (the region of the input frame that the crop shows)."""
    sx, sy = theta[:, 0, 0], theta[:, 1, 1]
    tx, ty = theta[:, 0, 2], theta[:, 1, 2]
    return torch.stack([(tx - sx + 1) / 2, (ty - sy + 1) / 2, (tx + sx + 1) / 2, (ty + sy + 1) / 2], dim=1)


def theta_from_box(box: Tensor, s_min: float | None = None, square: bool = True) -> Tensor:
    """``B×4`` box ``(x0, y0, x1, y1)`` in ``[0, 1]`` → ``B×2×3`` theta of the crop centred on the box.

    ``square=True`` (what :class:`ZoomIn` can represent): one scale ``s = max(w, h)``, the smallest
    crop with the frame's aspect ratio that contains the box; it fills the box's longer side. The
    scale is clamped to ``[s_min, 1]`` when ``s_min`` is given. ``square=False`` gives separate scales
    ``sx = w``, ``sy = h`` (a crop that fills the box exactly and stretches it). The crop is centred
    on the box even where that reaches outside the frame.
    """
    x0, y0, x1, y1 = box.unbind(dim=1)
    w, h = x1 - x0, y1 - y0
    if square:
        s = torch.maximum(w, h)
        if s_min is not None:
            s = s.clamp(min=s_min, max=1.0)
        sx = sy = s
    else:
        sx, sy = w, h
    zero = torch.zeros_like(sx)
    tx, ty = x0 + x1 - 1, y0 + y1 - 1
    return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], dim=1)


# --------------------------------------------------------------------------------------- warping
def _size(out_size: int | Sequence[int] | None, h: int, w: int) -> tuple[int, int]:
    if out_size is None:
        return h, w
    if isinstance(out_size, int):
        return out_size, out_size
    oh, ow = out_size
    return int(oh), int(ow)


def warp(
    x: Tensor,
    theta: Tensor,
    out_size: int | Sequence[int] | None = None,
    fill: float = -1.0,
    mode: str = "bilinear",
) -> Tensor:
    """Apply ``theta`` (``B×2×3``) to ``x``: ``B×C×H×W`` images or ``B×C×T×H×W`` clips (the same
    theta for every frame). ``out_size`` (int or (h, w), default: the input size) is the output frame
    size; pixels sampled outside the input get ``fill`` (-1 = black for videos in [-1, 1])."""
    if x.dim() not in (4, 5):
        raise ValueError(f"warp expects B×C×H×W or B×C×T×H×W, got {tuple(x.shape)}")
    if theta.shape != (x.shape[0], 2, 3):
        raise ValueError(f"theta must be {x.shape[0]}×2×3, got {tuple(theta.shape)}")
    clip = x.dim() == 5
    if clip:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        theta = theta.repeat_interleave(t, dim=0)
    else:
        b, c, h, w = x.shape
        frames = x
    oh, ow = _size(out_size, h, w)
    # sampled in float32 whatever the input dtype (bf16 grids are too coarse), cast back at the end
    grid = F.affine_grid(theta.float(), [frames.shape[0], c, oh, ow], align_corners=False)
    out = F.grid_sample(frames.float() - fill, grid, mode=mode, padding_mode="zeros", align_corners=False)
    out = (out + fill).to(x.dtype)
    if clip:
        out = out.reshape(b, t, c, oh, ow).transpose(1, 2)
    return out


def warp_flow(flow: Tensor, theta: Tensor, out_size: int | Sequence[int] | None = None) -> Tensor:
    """Resample a flow field ``B×2×T×H×W`` (or ``B×2×H×W``) of (dx, dy) in input pixels with
    ``theta`` AND transform the vectors into output pixels, so the result is the flow of the warped
    video. For ``theta = [[s,0,tx],[0,s,ty]]`` and ``out_size`` = input size the vectors are divided by
    ``s``; in general ``v_out = diag(W_out/W, H_out/H) · A⁻¹ · v_in`` with ``A`` the 2×2 part of theta.
    Outside the input the flow is 0."""
    if flow.shape[1] != 2:
        raise ValueError(f"flow must have 2 channels (dx, dy), got {tuple(flow.shape)}")
    h, w = flow.shape[-2:]
    oh, ow = _size(out_size, h, w)
    sampled = warp(flow, theta, out_size, fill=0.0)
    a_inv = torch.linalg.inv(theta[:, :, :2].to(torch.float32))
    scale_out = torch.tensor([ow / 2.0, oh / 2.0], device=flow.device)
    scale_in = torch.tensor([2.0 / w, 2.0 / h], device=flow.device)
    m = scale_out[None, :, None] * a_inv * scale_in[None, None, :]  # B×2×2
    extra = sampled.dim() - 2
    vec = sampled.movedim(1, -1).to(torch.float32)  # B×(T)×H×W×2
    m = m.reshape(m.shape[0], *([1] * extra), 2, 2)
    out = (m @ vec.unsqueeze(-1)).squeeze(-1)
    return out.movedim(-1, 1).to(flow.dtype)


def warp_gaze(gaze: Tensor, theta: Tensor, out_size: int | Sequence[int] | None = None) -> Tensor:
    """Resample gaze maps ``B×1×T×H×W`` (or ``B×1×H×W``) with ``theta`` and renormalise every frame to
    sum 1. A frame whose mass falls entirely outside the crop becomes a uniform map (the data
    contract's "no fixation" map)."""
    out = warp(gaze, theta, out_size, fill=0.0).clamp_min(0)
    total = out.sum(dim=(-2, -1), keepdim=True)
    uniform = torch.full_like(out, 1.0 / (out.shape[-1] * out.shape[-2]))
    return torch.where(total > 0, out / total.clamp_min(torch.finfo(out.dtype).tiny), uniform)


# ------------------------------------------------------------------------------------------ module
class ZoomIn(nn.Module):
    """Spatial-transformer zoom-in (see the module docstring for the crop parametrisation).

    Args:
        s_min: smallest crop scale (fraction of the frame's side), in (0, 1].
        weights_path: optional initial weights: ``"imagenet"`` (torchvision's ImageNet GoogLeNet from the
            torch.hub cache, see the module docstring), a local torchvision GoogLeNet state dict (its
            ``fc`` and ``aux*`` entries are ignored and the head stays at identity), or a sonolab
            checkpoint of this module (``ZoomIn.state_dict()``, possibly nested in a Lightning
            checkpoint's ``state_dict`` under any prefix).
        localizer_size: frames are resized to this size for the localiser (``None``: as given).

    The localiser sees frames in ``[-1, 1]``: grey frames are repeated to 3 channels, then normalised
    with the ImageNet mean and std, or, with ``transform_input`` (set by the ImageNet weights), kept in
    ``[-1, 1]`` as torchvision's ImageNet GoogLeNet expects.
    """

    # buffers (register_buffer), which the type checker cannot see
    mean: Tensor
    std: Tensor
    transform_input: Tensor

    def __init__(
        self, s_min: float = 0.25, weights_path: str | Path | None = None, localizer_size: int | None = None
    ) -> None:
        super().__init__()
        if not 0 < s_min <= 1:
            raise ValueError(f"s_min must be in (0, 1], got {s_min}")
        self.s_min = float(s_min)
        self.localizer_size = localizer_size
        self.localizer = googlenet(weights=None, aux_logits=False, init_weights=True)
        self.localizer.fc = nn.Linear(self.localizer.fc.in_features, 3)
        self.reset_head()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # True: the localiser takes frames in [-1, 1] (torchvision's ImageNet GoogLeNet, transform_input)
        self.register_buffer("transform_input", torch.tensor(False))
        if weights_path is not None:
            self.load_weights(weights_path)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints from before the ImageNet option have no flag: they were ImageNet-normalised
        state_dict.setdefault(prefix + "transform_input", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_head(self) -> None:
        """Zero the head so every frame gets the identity crop."""
        nn.init.zeros_(self.localizer.fc.weight)
        nn.init.zeros_(self.localizer.fc.bias)

    def load_weights(self, path: str | Path) -> None:
        """Load ``"imagenet"``, a torchvision GoogLeNet state dict or a ZoomIn checkpoint (see ``__init__``)."""
        state: Any
        if is_source_name(path):
            state = pretrained_state_dict("googlenet", str(path))
        else:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        marker = "localizer.fc.weight"
        prefixes = [k[: -len(marker)] for k in state if k.endswith(marker)]
        if prefixes:  # a ZoomIn checkpoint, maybe nested
            prefix = prefixes[0]
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            self.load_state_dict(own, strict=True)
            return
        backbone = {k: v for k, v in state.items() if not k.startswith(("fc.", "aux1.", "aux2."))}
        missing, unexpected = self.localizer.load_state_dict(backbone, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{path} is neither a torchvision GoogLeNet state dict nor a ZoomIn checkpoint "
                f"(missing: {missing[:5]}, unexpected: {list(unexpected)[:5]})"
            )
        # torchvision's GoogLeNet weights (ImageNet, its only published ones) take [-1, 1] inputs
        self.transform_input.fill_(True)

    def freeze(self) -> ZoomIn:
        """Eval mode and no gradients (the paper's zoom-in is frozen after pretraining)."""
        self.eval()
        self.requires_grad_(False)
        return self

    # -- theta
    def _localizer_input(self, frames: Tensor) -> Tensor:
        if frames.dim() != 4 or frames.shape[1] not in (1, 3):
            raise ValueError(f"predict_theta expects B×1×H×W or B×3×H×W frames, got {tuple(frames.shape)}")
        x = (frames.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.localizer_size is not None and tuple(x.shape[-2:]) != (self.localizer_size,) * 2:
            x = F.interpolate(x, size=(self.localizer_size,) * 2, mode="bilinear", align_corners=False)
        if self.transform_input:
            return x * 2 - 1
        return (x - self.mean) / self.std

    def theta_from_raw(self, raw: Tensor) -> Tensor:
        """Head outputs ``B×3`` (u, vx, vy) → constrained theta ``B×2×3``."""
        u, vx, vy = raw.float().unbind(dim=1)
        s_raw = 1 - (1 - self.s_min) * torch.tanh(u)
        s = s_raw + (s_raw.clamp(max=1.0) - s_raw).detach()  # forward: min(1, s); straight-through grad
        tx, ty = torch.tanh(vx), torch.tanh(vy)
        zero = torch.zeros_like(s)
        return torch.stack([torch.stack([s, zero, tx], 1), torch.stack([zero, s, ty], 1)], dim=1)

    def predict_theta(self, frames: Tensor) -> Tensor:
        """Frames ``B×C×H×W`` in ``[-1, 1]`` → theta ``B×2×3``."""
        return self.theta_from_raw(self.localizer(self._localizer_input(frames)))

    def box_from_theta(self, theta: Tensor) -> Tensor:
        return box_from_theta(theta)

    def theta_from_box(self, box: Tensor, square: bool = True) -> Tensor:
        """Target theta for a box (see :func:`theta_from_box`), scale clamped to ``[s_min, 1]``."""
        return theta_from_box(box, s_min=self.s_min, square=square)

    def warp(self, x: Tensor, theta: Tensor, out_size: int | Sequence[int] | None = None) -> Tensor:
        return warp(x, theta, out_size)

    def warp_flow(self, flow: Tensor, theta: Tensor, out_size: int | Sequence[int] | None = None) -> Tensor:
        return warp_flow(flow, theta, out_size)

    def warp_gaze(self, gaze: Tensor, theta: Tensor, out_size: int | Sequence[int] | None = None) -> Tensor:
        return warp_gaze(gaze, theta, out_size)

    def forward(
        self,
        video: Tensor,
        flow: Tensor | None = None,
        gaze: Tensor | None = None,
        frame_index: int = -1,
        out_size: int | Sequence[int] | None = None,
        theta: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """Zoom a clip ``B×C×T×H×W``: theta from frame ``frame_index`` (unless ``theta`` is given),
        applied to all frames, the flow and the gaze. Returns ``{"video", "flow", "gaze", "theta",
        "box"}`` (``flow`` / ``gaze`` are ``None`` when not given)."""
        if video.dim() != 5:
            raise ValueError(f"ZoomIn expects B×C×T×H×W clips, got {tuple(video.shape)}")
        if theta is None:
            theta = self.predict_theta(video[:, :, frame_index])
        return {
            "video": warp(video, theta, out_size),
            "flow": None if flow is None else warp_flow(flow, theta, out_size),
            "gaze": None if gaze is None else warp_gaze(gaze, theta, out_size),
            "theta": theta,
            "box": box_from_theta(theta),
        }
