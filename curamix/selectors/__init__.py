"""Selection algorithms: choose documents by importance, by a learned score or by coverage.

- :mod:`~curamix.selectors.dsir`: DSIR, hashed n-gram importance resampling (Xie et al.
  2023), bit-compatible with the reference ``data-selection``.
- :mod:`~curamix.selectors.betr`: BETR, benchmark-targeted ranking and its cheap text
  classifier (Mizrahi et al. 2025).
- :mod:`~curamix.selectors.rds`: RDS+, position-weighted pooled LM states, max cosine to
  each task's queries, round-robin over tasks (Ivison et al. 2025).
- :mod:`~curamix.selectors.coreset`: CCS, SSL prototypes, k-center greedy, facility location,
  density-based pruning and random coresets over embeddings.
- :mod:`~curamix.selectors.adapt`: Adapt-infty, pseudo-skill clusters of projected proxy-LM
  gradients, a scorer per cluster by histogram entropy, coverage-centric sampling and
  cluster-wise permanent pruning (Maharana et al. 2025).

Plain numpy / scikit-learn / FAISS code: no pyspark, no prefect (the Spark jobs in
:mod:`curamix.pipelines` call these same functions).
"""
