"""What the models, callbacks and commands share: run folders and what is written into them (``runs``),
checkpoint loading (``checkpoints``, ``weights``), DDP gathering (``distributed``) and metrics
(``anomaly``, ``pairwise``, ``saliency``)."""
