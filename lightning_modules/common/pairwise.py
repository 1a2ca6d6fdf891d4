"""Pairwise quality evaluation: accuracy on (better, worse) pairs, blur monotonicity (CRL-UIQA).

* :class:`PairwiseAccuracy` — the metric of CRL-UIQA (Guo et al., MICCAI 2024, Sec. 3.2): over pairs whose
  better image is known, ``T`` = pairs scored ``better > worse``, ``F`` = the rest, accuracy ``T / (T + F)``.
  **Ties count as F** (a scorer that cannot separate two images has not ranked them), and so does a NaN score.
  Counts are kept globally and per plane; the per-plane counts live in fixed-size tensors over the plane list
  given at construction, so every state is a tensor reduced with ``dist_reduce_fx="sum"`` under DDP.
* :func:`blur_monotonicity` — fraction of images whose score strictly decreases at every step of increasing
  Gaussian blur.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torchmetrics import Metric
from torchvision.transforms.v2 import functional as TF

__all__ = ["PairwiseAccuracy", "blur_monotonicity", "gaussian_blur_sigma"]


class PairwiseAccuracy(Metric):
    """Accuracy ``T / (T + F)`` over (better, worse) score pairs, overall and per plane.

    Args:
        planes: names of the planes to count separately (fixed at construction). ``update`` calls with
            ``planes=None`` count only overall; a plane outside this list is an error.

    ``compute()`` returns a flat dict (ready for ``log_dict``): ``"overall"`` and ``"plane/<name>"`` for every
    plane of the list; an accuracy with no pair is NaN. :meth:`counts` returns the ``T``/``F`` counts.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor
    plane_correct: torch.Tensor
    plane_total: torch.Tensor

    def __init__(self, planes: Sequence[str] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.planes = [str(p) for p in (planes or [])]
        if len(set(self.planes)) != len(self.planes):
            raise ValueError(f"duplicate plane names: {self.planes}")
        self._index = {p: i for i, p in enumerate(self.planes)}
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        n = len(self.planes)
        self.add_state("plane_correct", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("plane_total", default=torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        better_scores: torch.Tensor,
        worse_scores: torch.Tensor,
        planes: Sequence[str] | None = None,
    ) -> None:
        """Add pairs: ``better_scores[i]`` is the score of the image known to be better in pair ``i``."""
        better = torch.as_tensor(better_scores, device=self.device).reshape(-1)
        worse = torch.as_tensor(worse_scores, device=self.device).reshape(-1)
        if better.shape != worse.shape:
            raise ValueError(f"better_scores has {better.numel()} entries, worse_scores {worse.numel()}")
        hit = (better > worse).long()  # ties and NaN -> False -> F
        self.correct += hit.sum()
        self.total += hit.numel()
        if planes is None:
            return
        planes = [str(p) for p in planes]
        if len(planes) != hit.numel():
            raise ValueError(f"{len(planes)} planes for {hit.numel()} pairs")
        unknown = sorted(set(planes) - set(self._index))
        if unknown:
            raise ValueError(f"planes {unknown} are not in the metric's plane list {self.planes}")
        idx = torch.tensor([self._index[p] for p in planes], dtype=torch.long, device=self.device)
        self.plane_correct.index_add_(0, idx, hit)
        self.plane_total.index_add_(0, idx, torch.ones_like(hit))

    def compute(self) -> dict[str, torch.Tensor]:
        def acc(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return t.double() / n.double() if int(n) > 0 else torch.tensor(float("nan"), dtype=torch.float64)

        out = {"overall": acc(self.correct, self.total)}
        for i, p in enumerate(self.planes):
            out[f"plane/{p}"] = acc(self.plane_correct[i], self.plane_total[i])
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"overall": {"T": .., "F": ..}, "<plane>": {...}}`` of this process's (unsynced) state."""
        out = {"overall": {"T": int(self.correct), "F": int(self.total - self.correct)}}
        for i, p in enumerate(self.planes):
            out[p] = {"T": int(self.plane_correct[i]), "F": int(self.plane_total[i] - self.plane_correct[i])}
        return out


def gaussian_blur_sigma(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``B×C×H×W`` images with ``sigma`` pixels (kernel ``2·ceil(3σ)+1``); ``sigma <= 0`` = copy."""
    if sigma <= 0:
        return images.clone()
    ks = min(2 * math.ceil(3.0 * sigma) + 1, 2 * (min(images.shape[-2:]) - 1) + 1)
    return TF.gaussian_blur(images, [ks, ks], [float(sigma), float(sigma)])


def blur_monotonicity(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    levels: Sequence[float],
    blur_fn: Callable[[torch.Tensor, float], torch.Tensor] = gaussian_blur_sigma,
) -> float:
    """Fraction of images whose score strictly decreases at every step of increasing blur.

    Args:
        score_fn: ``B×C×H×W -> B`` scores (higher = better); called under ``torch.inference_mode``.
        images: ``B×C×H×W`` source images.
        levels: increasing blur levels (default ``blur_fn``: Gaussian σ in pixels; 0 = the source image).
        blur_fn: ``(images, level) -> images``.

    An image counts only if ``score(level_0) > score(level_1) > ...`` (a tie breaks monotonicity).
    """
    levels = [float(v) for v in levels]
    if len(levels) < 2:
        raise ValueError("need at least 2 blur levels")
    if any(b <= a for a, b in itertools.pairwise(levels)):
        raise ValueError(f"levels must be strictly increasing, got {levels}")
    with torch.inference_mode():
        scores = torch.stack(
            [torch.as_tensor(score_fn(blur_fn(images, lv))).reshape(-1).cpu() for lv in levels], 1
        )
    ok = (scores[:, :-1] > scores[:, 1:]).all(dim=1)
    return float(ok.double().mean())
