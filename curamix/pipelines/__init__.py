"""Spark jobs: one module per stage of a run, the stage registry, and their shared parts.

- :mod:`~curamix.pipelines.registry`: every stage in run order with its upstream, key and
  runner (the one table the runner reads).
- :mod:`~curamix.pipelines.ingest`, ``dedup``, ``embed``, ``semdedup``, ``quality``, ``decontam``,
  ``dsir``, ``betr``, ``select``, ``coreset``: each stage's Spark glue over a kernel of
  :mod:`curamix.filters`, :mod:`curamix.embeddings` or :mod:`curamix.selectors`.
- :mod:`~curamix.pipelines.pool`: the skeleton of a stage that filters the pool (read the
  pool, decide per document, write data and ledger, account, publish).
- :mod:`~curamix.pipelines.parts`: one Spark task per Parquet part; seeded samples that do not
  depend on the partitioning. :mod:`~curamix.pipelines.session`: the one SparkSession.
"""
