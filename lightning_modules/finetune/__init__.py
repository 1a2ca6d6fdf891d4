"""Downstream tasks of DualRepSSL (Gridach et al., 2023): standard-plane detection and saliency prediction.

:mod:`.module` holds the LightningModules (``PlaneDetection``, ``SaliencyFinetune``), :mod:`.nets` the
encoder initialisation (DualRepSSL checkpoint, supervised weights file or random) and the saliency decoder.
"""
