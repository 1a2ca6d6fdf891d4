"""sonolab: datamodules."""
