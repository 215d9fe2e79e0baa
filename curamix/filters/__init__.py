"""Per-document keep/remove kernels: deduplication and decontamination.

- :mod:`~curamix.filters.dedup`: exact (normalized text hash) and MinHash-LSH near-duplicate
  detection with Jaccard verification and connected components.
- :mod:`~curamix.filters.semdedup`: SemDeDup, semantic duplicates within k-means clusters of
  embeddings (Abbas et al. 2023).
- :mod:`~curamix.filters.decontam`: word n-gram overlap with benchmark test sets.

Plain numpy / numba / scipy code: no pyspark, no prefect.
"""
