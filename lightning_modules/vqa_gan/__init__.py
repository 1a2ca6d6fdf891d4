"""VideoQualityGAN (Zhao et al., MICCAI 2022): unsupervised ultrasound video clinical-quality assessment.

``nets``: encoder / decoders / discriminators and the STAE and image-only baselines; ``zoom``: the
GoogLeNet spatial-transformer zoom-in; ``losses``: losses and anomaly scores; ``pool``: the fake
history pool; ``schedule``: the linear-decay LR rule. The LightningModule lives in ``module``.
"""
