"""CRL-UIQA: unsupervised ultrasound image quality assessment (Guo et al., MICCAI 2024).

Modules (plain ``nn.Module`` s and pure functions; the LightningModule comes separately):

* :mod:`.nets` — timm backbone, :class:`~.nets.QualityScorer` (score in ``[0, 1]``), :class:`~.nets.PlaneClassifier`.
* :mod:`.pseudo_labels` — k-NN distance scores to the standard planes, Yeo-Johnson, min-max, storage.
* :mod:`.views` — weak (flip / rotation) and strong (Gaussian / motion blur of degree ε) views.
* :mod:`.losses` — ``L_d``, ``L_c``, ``L_r`` and their weighted sum.
* :mod:`.baselines` — NIQE, BRISQUE, MSSIM / MS-SSIM baselines (offline re-implementations).

Pairwise accuracy and other evaluation helpers are in :mod:`lightning_modules.common.pairwise`.
"""
