"""sonolab's own error type for data problems.

Every problem with a user's dataset, media file or cache folder raises a :class:`DataError` (or a subclass:
``MediaError``, ``TableError``, ``DatasetValidationError``, ``CacheError``), so callers and tests can tell
"your data is wrong, here is what to fix" apart from a bug. It subclasses ``ValueError`` so existing
``except ValueError`` / ``pytest.raises(ValueError)`` keep working.
"""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A problem with the dataset, a media file or the cache; the message names the file and what to do."""
