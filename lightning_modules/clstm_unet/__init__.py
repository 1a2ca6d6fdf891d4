"""cLSTMU-Net video gaze-saliency prediction (Savochkina et al., ISBI 2022).

:mod:`.nets` the plain nn.Modules (ConvLSTM, U-Net, ``nets.CLSTMUNet``, exported here as ``CLSTMUNet``);
:mod:`.augment` the sequence RandAugment policy; :mod:`.module` the LightningModule
``lightning_modules.clstm_unet.module.CLSTMUNet`` the configs name; :mod:`.stream` streaming prediction over
a video; :mod:`.tables` the paper's tables as runs. The saliency metrics and loss are shared in
:mod:`lightning_modules.common.saliency`. See README.md in this folder.
"""

from lightning_modules.clstm_unet.augment import DEFAULT_TRANSFORMS, SequenceRandAugment
from lightning_modules.clstm_unet.nets import CLSTMUNet, ConvLSTM, ConvLSTMCell

__all__ = ["DEFAULT_TRANSFORMS", "CLSTMUNet", "ConvLSTM", "ConvLSTMCell", "SequenceRandAugment"]
