"""What the figure callbacks read from a LightningModule, written down as types and checked.

A callback that needs something from the module names it here; the module that provides it says so in
its docstring and type hints, and attaching the callback to a module that does not provide it stops the
run at ``setup`` with an error naming the callback, the module and what is missing (instead of a callback
that silently draws nothing).

* :class:`EvaluationModule`: ``last_evaluation[stage]`` (an :class:`Evaluation`) after every validation
  and test epoch; kept by :class:`lightning_modules.vqa_gan.base.QualityAnomalyModule`, read by
  ``callbacks.vqa_plots`` (and the VQA demo's table).
* :class:`ReconstructionModule`: ``reconstruction_views(batch)``; VideoQualityGAN and its baselines,
  read by ``callbacks.vqa_media``.
* :class:`SaliencyStepOutput`: what ``validation_step`` returns in saliency models (CLSTMUNet, the
  DualRepSSL saliency task), read by ``callbacks.saliency_maps``.

Models never import callbacks; callbacks import this module (and the models import it for the types).
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, runtime_checkable

import numpy as np
from torch import Tensor

__all__ = [
    "ContractError",
    "Evaluation",
    "EvaluationModule",
    "ReconstructionModule",
    "SaliencyStepOutput",
    "group_names",
    "require",
    "saliency_log_pred",
]


class ContractError(TypeError):
    """A callback is attached to a module that does not provide what the callback reads."""


class Evaluation(TypedDict):
    """One evaluated split of a quality-anomaly model, gathered over every rank (one entry per clip)."""

    scores: dict[str, np.ndarray]  # score name -> per-clip anomaly score (higher = more anomalous)
    target: np.ndarray  # 1 = low quality (anomalous), 0 = normal, -1 = unknown quality
    label: np.ndarray  # index into class_names (-1: no label)
    quality: np.ndarray  # the clip's quality flag (1, 0, -1 unknown)
    class_names: list[str]
    primary: str  # the score the threshold and the decision use
    threshold: float  # decision threshold of the primary score (NaN before it is chosen)
    epoch: int
    sanity: bool  # True for Lightning's sanity-check validation (figures skip it)


@runtime_checkable
class EvaluationModule(Protocol):
    """Keeps ``last_evaluation[stage]`` (``"val"`` / ``"test"``) after each validation / test epoch."""

    last_evaluation: dict[str, Evaluation]


@runtime_checkable
class ReconstructionModule(Protocol):
    """``reconstruction_views(batch)``: ``{"input", "reconstruction"[, "gaze", "gaze_prediction"]}``,
    each B×C×T×H×W, for a batch of clips."""

    def reconstruction_views(self, batch: dict[str, Any]) -> dict[str, Tensor]: ...


class SaliencyStepOutput(TypedDict):
    """What a saliency model's ``validation_step`` returns: ``log_pred``, B×1×H×W log-saliency (log of a
    map that sums to 1 over H·W), aligned with the batch's ``gaze`` maps."""

    log_pred: Tensor


def require(callback: object, pl_module: object, contract: type) -> None:
    """Raise :class:`ContractError` unless ``pl_module`` provides ``contract`` (a runtime-checkable
    Protocol of this module)."""
    if not isinstance(pl_module, contract):
        missing = [name for name in _members(contract) if not hasattr(pl_module, name)]
        raise ContractError(
            f"{type(callback).__name__} reads {', '.join(missing)} from the model, which "
            f"{type(pl_module).__name__} does not provide ({contract.__name__}, "
            f"lightning_modules/common/contracts.py); remove the callback from trainer.callbacks or use a "
            "model that provides it"
        )


def _members(contract: type) -> list[str]:
    names = [*getattr(contract, "__annotations__", {})]
    names += [n for n, v in vars(contract).items() if callable(v) and not n.startswith("_")]
    return names


def saliency_log_pred(callback: object, pl_module: object, outputs: Any, batch_hw: tuple[int, int]) -> Tensor:
    """``outputs["log_pred"]`` of a :class:`SaliencyStepOutput`, checked (type, key, B×1×H×W shape)."""
    if not isinstance(outputs, dict) or "log_pred" not in outputs:
        got = f"a dict with keys {sorted(outputs)}" if isinstance(outputs, dict) else type(outputs).__name__
        raise ContractError(
            f"{type(callback).__name__} needs {type(pl_module).__name__}.validation_step to return "
            f'{{"log_pred": B×1×H×W log-saliency}} (SaliencyStepOutput, lightning_modules/common/contracts.py), '
            f"got {got}"
        )
    log_pred = outputs["log_pred"]
    if not isinstance(log_pred, Tensor) or log_pred.dim() != 4 or log_pred.shape[1] != 1:
        shape = tuple(log_pred.shape) if isinstance(log_pred, Tensor) else type(log_pred).__name__
        raise ContractError(f"{type(callback).__name__}: log_pred must be B×1×H×W, got {shape}")
    if tuple(log_pred.shape[-2:]) != tuple(batch_hw):
        raise ContractError(
            f"{type(callback).__name__}: log_pred is {tuple(log_pred.shape[-2:])}, the gaze maps {tuple(batch_hw)}"
        )
    return log_pred


def group_names(evaluation: Evaluation) -> list[str]:
    """One group per clip: its label, with ``(q=0)`` / ``(q=1)`` appended where a label occurs with both
    qualities (e.g. ``transventricular (q=0)`` = poor-window TV clips vs the normal ``(q=1)`` ones)."""
    names = evaluation["class_names"]
    labels = [names[i] if 0 <= i < len(names) else "?" for i in evaluation["label"]]
    quality = list(evaluation["quality"])
    mixed = {lab for lab in set(labels) if len({q for l2, q in zip(labels, quality) if l2 == lab}) > 1}
    return [f"{lab} (q={q})" if lab in mixed else lab for lab, q in zip(labels, quality)]
