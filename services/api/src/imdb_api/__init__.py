"""IMDb rating model HTTP service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imdb-api")
except PackageNotFoundError:  # pragma: no cover (running from a source tree without metadata)
    __version__ = "0.0.0"
