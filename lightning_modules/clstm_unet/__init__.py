"""cLSTMU-Net video gaze-saliency prediction (Savochkina et al., ISBI 2022).

:mod:`.nets` the plain nn.Modules (``ConvLSTMCell``, ``ConvLSTM``, the U-Net parts and ``ConvLSTMUNet``, the
network); :mod:`.augment` the sequence RandAugment policy; :mod:`.module` the LightningModule ``CLSTMUNet``
the configs name; :mod:`.stream` streaming prediction over a video. The paper's tables are the studies in
``configs/sweeps/clstm_*.yaml``. The saliency metrics and loss are shared in :mod:`lightning_modules.common.saliency`. See README.md
in this folder. Like every sonolab package, this one only documents its modules: import from them.
"""
