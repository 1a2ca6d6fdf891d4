"""cLSTMU-Net video gaze-saliency prediction (Savochkina et al., ISBI 2022).

Phase 1: the plain nn.Modules (:mod:`.nets`) and the sequence RandAugment policy (:mod:`.augment`); the
saliency metrics and loss are shared in :mod:`lightning_modules.common.saliency`.
"""

from lightning_modules.clstm_unet.augment import DEFAULT_TRANSFORMS, SequenceRandAugment
from lightning_modules.clstm_unet.nets import CLSTMUNet, ConvLSTM, ConvLSTMCell

__all__ = ["DEFAULT_TRANSFORMS", "CLSTMUNet", "ConvLSTM", "ConvLSTMCell", "SequenceRandAugment"]
