"""CRL-UIQA: unsupervised ultrasound image quality assessment (Guo et al., MICCAI 2024).

LightningModules, one per file: :class:`~.module.CRLUIQA` (the method and its Table 1 ablations),
:class:`~.classical.ClassicalIQA` (NIQE / BRISQUE / MSSIM baselines), :class:`~.plane_classifier.PlaneClassifierModule`
(an embedding model for the pseudo-labels); :mod:`.evaluation` holds the pairwise evaluation the scorers share.
The pseudo-labels are a data product (:mod:`datamodules.pseudo_labels`, delivered in the batch); around the
modules: :mod:`.ranking` (best frame of a clip). See README.md.

Building blocks (plain ``nn.Module`` s and pure functions):

* :mod:`.nets` — timm backbone, :class:`~.nets.QualityScorer` (score in ``[0, 1]``), :class:`~.nets.PlaneClassifier`.
* :mod:`.embedding` — the pseudo-label embedding network ``P(.)``: seeded random backbone, plane-classifier or
  DualRepSSL checkpoint, weights file.
* :mod:`.views` — weak (flip / rotation) and strong (Gaussian / motion blur of degree ε) views.
* :mod:`.losses` — ``L_d``, ``L_c``, ``L_r`` and their weighted sum.
* :mod:`.baselines` — NIQE, BRISQUE, MSSIM / MS-SSIM baselines (offline re-implementations).

Pairwise accuracy and blur monotonicity are in :mod:`lightning_modules.common.pairwise`.
"""
