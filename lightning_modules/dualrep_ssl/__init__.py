"""DualRepSSL (Gridach et al., ICASSP 2023): dual representation learning from US video and speech.

:mod:`.nets` the encoders, projections, fusion heads and the tied ``DualRepNet`` (and ``ENCODER_PREFIXES``,
where each encoder lives in a pretraining checkpoint); :mod:`.cnn14` the PANNs CNN14 audio backbone;
:mod:`.losses` the MMCL / MMSL losses (pure functions); :mod:`.augment` the training views;
:mod:`.metrics` retrieval recall; :mod:`.module` the LightningModule ``DualRepSSL``. See README.md in this
folder. Like every sonolab package, this one only documents its modules: import from them.
"""
