"""sonolab DataModules (``clips``, ``images``, ``sequences``, ``boxes``) on the shared base (``base``), and
the data path behind them: manifests, validation, readers, caches; ``synthetic`` generates a dataset."""
