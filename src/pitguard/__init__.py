"""pitguard: train, check and ship the cherry pit crop classifier."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pitguard")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load"]


def load(bundle, backend: str = "auto", device: str = "auto", threads: int = 0):
    """Load an exported bundle for inference; see :class:`pitguard.deploy.predict.Predictor`."""
    from pitguard.deploy.predict import load as _load

    return _load(bundle, backend, device, threads)
