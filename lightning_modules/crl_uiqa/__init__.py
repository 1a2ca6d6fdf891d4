"""CRL-UIQA: unsupervised ultrasound image quality assessment (Guo et al., MICCAI 2024).

LightningModules (:mod:`.module`): :class:`~.module.CRLUIQA` (the method and its Table 1 ablations),
:class:`~.module.ClassicalIQA` (NIQE / BRISQUE / MSSIM baselines), :class:`~.module.PlaneClassifierModule`
(the embedding model for the pseudo-labels). Around them: :mod:`.labelling` (the pseudo-label step on a
dataset, cached; ``python -m lightning_modules.crl_uiqa.pseudo_labels``), :mod:`.ranking` (best frame of a
clip), :mod:`.tables` (the paper's tables as config stacks). See README.md.

Building blocks (plain ``nn.Module`` s and pure functions):

* :mod:`.nets` — timm backbone, :class:`~.nets.QualityScorer` (score in ``[0, 1]``), :class:`~.nets.PlaneClassifier`.
* :mod:`.pseudo_labels` — k-NN distance scores to the standard planes, Yeo-Johnson, min-max, storage.
* :mod:`.views` — weak (flip / rotation) and strong (Gaussian / motion blur of degree ε) views.
* :mod:`.losses` — ``L_d``, ``L_c``, ``L_r`` and their weighted sum.
* :mod:`.baselines` — NIQE, BRISQUE, MSSIM / MS-SSIM baselines (offline re-implementations).

Pairwise accuracy and other evaluation helpers are in :mod:`lightning_modules.common.pairwise`.
"""
