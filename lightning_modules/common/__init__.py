"""sonolab: lightning_modules/common."""
