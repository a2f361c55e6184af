"""The package version: pyproject.toml reads it from here, the User-Agent header sends it."""

__version__ = "0.1.0"
