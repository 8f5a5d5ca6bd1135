"""bertcli: pretrain BERT from raw text to a checkpoint that loads in Hugging Face transformers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bertcli")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
