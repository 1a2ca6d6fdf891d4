"""sonolab: callbacks."""
