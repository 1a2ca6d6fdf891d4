"""DualRepSSL (Gridach et al., ICASSP 2023): dual representation learning from US video and speech.

Phase 1: plain modules (:mod:`.nets`, :mod:`.cnn14`) and pure loss functions (:mod:`.losses`).
Names are imported lazily, so ``from lightning_modules.dualrep_ssl import mmcl_loss`` does not import
torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Cnn14": "cnn14",
    "ConvBlock": "cnn14",
    "cosine_similarity_matrix": "losses",
    "info_nce_excluding_positive": "losses",
    "mmcl_loss": "losses",
    "mmsl_loss": "losses",
    "retrieval_recall": "losses",
    "vse_hardest_negative_loss": "losses",
    "AudioEncoder": "nets",
    "BNProjection": "nets",
    "DualRepNet": "nets",
    "FusionHead": "nets",
    "ImageEncoder": "nets",
    "Projection": "nets",
    "VideoEncoder": "nets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs only
    from lightning_modules.dualrep_ssl.cnn14 import Cnn14, ConvBlock  # noqa: F401
    from lightning_modules.dualrep_ssl.losses import (  # noqa: F401
        cosine_similarity_matrix,
        info_nce_excluding_positive,
        mmcl_loss,
        mmsl_loss,
        retrieval_recall,
        vse_hardest_negative_loss,
    )
    from lightning_modules.dualrep_ssl.nets import (  # noqa: F401
        AudioEncoder,
        BNProjection,
        DualRepNet,
        FusionHead,
        ImageEncoder,
        Projection,
        VideoEncoder,
    )
