"""sonolab models: one folder per paper (``vqa_gan``, ``crl_uiqa``, ``dualrep_ssl`` + ``finetune``,
``clstm_unet``), what they share (``common``: run folders and outputs, checkpoints, metrics), and the
``lightning`` CLI (``cli``, ``sweep``, ``collate``). Packages only document their modules: import from them.
"""
