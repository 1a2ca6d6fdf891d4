"""sonolab: lightning_modules."""
