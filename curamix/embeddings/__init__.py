"""Embeddings and vector indices.

- :mod:`~curamix.embeddings.embed`: the one place that loads sentence-transformers models
  (the bundled all-MiniLM-L6-v2 offline by default) and embeds texts.
- :mod:`~curamix.embeddings.index`: every FAISS call: flat / IVF / IVF-PQ indices on CPU or
  GPU with a memory check, spherical k-means.
"""
