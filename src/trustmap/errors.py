"""One exception hierarchy, so callers can catch everything trustmap raises on bad input.

Every message names the file or argument, what was wrong, and what to do about it.
"""


class TrustmapError(Exception):
    """Base class of every error trustmap raises on purpose."""


class DataError(TrustmapError, ValueError):
    """A dataset file, a dataset name or an array given to the API is not usable."""


class ModelError(TrustmapError, ValueError):
    """An unknown model name or arguments a model cannot be built with."""


class CheckpointError(TrustmapError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


class ConfigError(TrustmapError, ValueError):
    """A configuration key or value is not allowed."""
