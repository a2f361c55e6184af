"""Extractive QA service: FastAPI over an ONNX Runtime engine."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qa-service")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+local"
