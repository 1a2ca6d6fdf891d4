"""Lightning callbacks the configs attach: checkpoints and guards (``checkpoints``, ``guards``), prediction
writers (``predictions``, ``dualrep_embeddings``) and per-model figures (``vqa_plots``, ``vqa_media``,
``saliency_maps``, ``crl_views``). They write into the run folder through :mod:`lightning_modules.common.runs`
and read what a module exposes through its documented contract (see each callback's docstring)."""
