"""trustmap: where an image classifier looks, and how much to trust it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trustmap")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

from trustmap.errors import CheckpointError, ConfigError, DataError, ModelError, TrustmapError

__all__ = [
    "__version__",
    "TrustmapError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "ConfigError",
]
