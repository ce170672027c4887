"""trustmap: where an image classifier looks, and how much to trust it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trustmap")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

from trustmap.errors import CheckpointError, ConfigError, DataError, ModelError, TrustmapError

__all__ = [
    "__version__",
    "audit",
    "TrustmapError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "ConfigError",
]


def __getattr__(name: str) -> object:
    """``trustmap.audit`` is imported on first use: ``import trustmap`` stays light (the CLI's
    ``--version`` and error classes need no torch)."""
    if name == "audit":
        from trustmap.api import audit

        return audit
    raise AttributeError(f"module 'trustmap' has no attribute {name!r}")
