"""skipat-deploy: export, quantize, compile and profile ViT / SkipAt models for Snapdragon NPUs."""

from importlib import metadata

try:  # the version is said once, in pyproject.toml
    __version__ = metadata.version("skipat-deploy")
except metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"
