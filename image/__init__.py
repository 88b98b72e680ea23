"""sandbox-image: build, provision and snapshot hardened VM images."""

from importlib import metadata

try:
    __version__ = metadata.version("sandbox-image")
except metadata.PackageNotFoundError:  # running from a tree that was never installed
    __version__ = "0+unknown"
