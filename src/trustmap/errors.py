"""One exception hierarchy, so callers can catch everything trustmap raises on bad input.

Every message names the file or argument, what was wrong, and what to do about it.
"""

import difflib
from collections.abc import Iterable


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


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped name, else ""."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
