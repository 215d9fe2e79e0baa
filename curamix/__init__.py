"""curamix: data curation and mixture pipeline for language-model pretraining.

From raw text pools to mixture weights: ingest, deduplicate, score and select documents,
search domain mixtures on small proxy models, fit scaling laws, export weights to trainers.
Heavy libraries (pyspark, torch, faiss, sentence-transformers) are imported lazily, so
``import curamix`` stays fast.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("curamix")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
