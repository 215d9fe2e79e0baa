"""The scoring pass from cached n-gram buckets equals scoring the texts again."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curamix.pipelines.dsir import cached_scores, count_part
from curamix.selectors.dsir import DSIRSelector


@pytest.mark.parametrize(
    "ngrams,length_normalize,separate", [(2, False, False), (3, True, False), (2, False, True)]
)
def test_cached_scores_equal_score_batch(tmp_path, ngrams, length_normalize, separate):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "é", "x₂", "!", "—", "42"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 40))) for _ in range(5000)]
    texts[3] = ""
    domains = ["a" if i % 3 else "b" for i in range(len(texts))]
    pq.write_table(
        pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "domain": domains}),
        tmp_path / "part-00000.parquet",
    )
    sel = DSIRSelector(
        ngrams=ngrams,
        min_example_length=0,
        length_normalize=length_normalize,
        separate_targets=separate,
        laplace=1.0,
    )
    target = {"a": texts[:300], "b": texts[300:400]} if separate else texts[:300]
    sel.fit(target, texts)
    cache = str(tmp_path / "cache.npz")
    counts = count_part(str(tmp_path / "part-00000.parquet"), sel, None, ["b"], cache).to_pylist()
    raw = next(r for r in counts if r["kind"] == "raw")
    assert np.array_equal(np.asarray(raw["counts"]), sel.counts(texts))
    b = next(r for r in counts if r["kind"] == "target" and r["name"] == "b")
    assert b["n_docs"] == domains.count("b")
    assert np.array_equal(
        np.asarray(b["counts"]),
        sel.counts([t for t, d in zip(texts, domains, strict=True) if d == "b"]),
    )
    got, got_len = cached_scores(sel, cache)
    want, want_len = sel.score_batch(texts)
    assert np.allclose(got, want, rtol=1e-10, atol=1e-9) and np.array_equal(got_len, want_len)
