"""Proxy data: reading a run, document-level split, token caches, the mixture sampler."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from curamix.io.store import StageWriter
from curamix.proxy import data as pdata
from curamix.proxy.data import (
    EpochLimitError,
    MixtureSampler,
    eval_windows,
    load_run_domains,
    random_windows,
    split_documents,
    tokenize_domains,
)
from curamix.proxy.tokenizer import train_tokenizer
from curamix.schema import DOC_SCHEMA

# --------------------------------------------------------------------------------- run folders


def write_stage(run_dir, stage, key, docs, n_parts=2):
    w = StageWriter(run_dir, stage, key)
    (w.path("data")).mkdir()
    for i in range(n_parts):
        part = docs[i::n_parts]
        rows = {
            "id": [d[0] for d in part],
            "text": [d[2] for d in part],
            "domain": [d[1] for d in part],
            "source": ["x.jsonl"] * len(part),
            "n_chars": [len(d[2]) for d in part],
            "n_words": [len(d[2].split()) for d in part],
            "meta": [None] * len(part),
        }
        pq.write_table(pa.table(rows, schema=DOC_SCHEMA), w.path("data") / f"part-{i:05d}.parquet")
    return w.commit({"counts": {"docs": len(docs)}})


def test_load_run_domains_reads_latest_pool_stage(tmp_path):
    docs = [("w3", "web", "web three"), ("w1", "web", "web one"), ("c1", "code", "x = 1")]
    write_stage(tmp_path, "ingest", "k1", [*docs, ("w2", "web", "dup of web one")])
    assert load_run_domains(tmp_path, stage="ingest") == {
        "code": ["x = 1"],
        "web": ["web one", "dup of web one", "web three"],  # sorted by id
    }
    write_stage(tmp_path, "dedup", "k2", docs, n_parts=3)
    assert load_run_domains(tmp_path) == {"code": ["x = 1"], "web": ["web one", "web three"]}
    assert load_run_domains(tmp_path, domains=["web"]) == {"web": ["web one", "web three"]}
    with pytest.raises(ValueError, match=r"domains \['math'\] are not in"):
        load_run_domains(tmp_path, domains=["math"])
    with pytest.raises(FileNotFoundError, match="no completed 'select' output"):
        load_run_domains(tmp_path, stage="select")


# --------------------------------------------------------------------------------- split, cache


def test_split_documents_is_deterministic_and_by_document():
    texts = [f"document number {i}" for i in range(200)]
    train, val = split_documents(texts, 0.1, random_state=0)
    assert len(val) == 20 and len(train) == 180
    assert set(train) | set(val) == set(texts) and not set(train) & set(val)
    assert split_documents(texts, 0.1, random_state=0) == (train, val)
    # the held-out set does not depend on the order of the documents
    assert set(split_documents(texts[::-1], 0.1, random_state=0)[1]) == set(val)
    assert set(split_documents(texts, 0.1, random_state=1)[1]) != set(val)
    assert split_documents(["only one"], 0.5) == (["only one"], [])
    assert len(split_documents(texts[:3], 0.01)[1]) == 1  # at least one held out
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_documents(texts, 1.0)


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "code", "x", "=", "1", "news", "today"]
    return train_tokenizer([" ".join(rng.choice(words, 12)) for _ in range(200)], vocab_size=300)


def test_tokenize_domains_caches_by_tokenizer_and_content(tmp_path, tok, monkeypatch):
    domains = {
        "news": [f"news today {i}" for i in range(20)],
        "code": [f"x = {i}" for i in range(10)],
        "solo": ["alpha beta"],
    }
    train, val = tokenize_domains(tok, domains, tmp_path, val_fraction=0.2, random_state=0)
    assert set(train) == {"news", "code", "solo"} and set(val) == {"news", "code"}  # solo: 1 doc
    assert int((val["news"] == 0).sum()) == 4 and int((train["news"] == 0).sum()) == 16
    assert len(list(tmp_path.glob("*.npy"))) == 6

    import curamix.proxy.tokenizer as tk

    def boom(*a, **k):
        raise AssertionError("encoded again although cached")

    monkeypatch.setattr(tk, "encode_stream", boom)
    train2, val2 = tokenize_domains(tok, domains, tmp_path, val_fraction=0.2, random_state=0)
    for d in train:
        assert np.array_equal(train[d], train2[d])
    assert set(val2) == set(val)
    monkeypatch.undo()
    changed = {**domains, "code": [*domains["code"], "x = 99"]}
    tokenize_domains(tok, changed, tmp_path, val_fraction=0.2, random_state=0)
    assert len(list(tmp_path.glob("code-*.train.npy"))) == 2  # new content, new key
    assert len(list(tmp_path.glob("news-*.train.npy"))) == 1  # other domains reused


def test_eval_and_random_windows():
    s = np.arange(100, dtype=np.uint16)
    w = eval_windows(s, seq_len=10, max_tokens=35)
    assert w.shape == (3, 11) and w.dtype == np.int64
    assert np.array_equal(w[1], np.arange(10, 21))
    assert eval_windows(s[:5], 10, 100).shape == (1, 5)
    assert eval_windows(s[:1], 10, 100).shape[0] == 0
    r = random_windows(s, 4, 10, np.random.default_rng(0))
    assert r.shape == (4, 11)
    assert all(np.all(np.diff(row) % 100 == 1) for row in r)  # contiguous (wrapping)


# --------------------------------------------------------------------------------- sampler


def streams():
    return {
        "a": np.arange(0, 1000, dtype=np.uint16),
        "b": np.arange(1000, 1500, dtype=np.uint16),
        "c": np.arange(2000, 2200, dtype=np.uint16),
    }


def test_sampler_frequencies_match_weights():
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    s = MixtureSampler(streams(), weights, seq_len=4, batch_size=50, random_state=0)
    names = [d for _ in range(100) for d in s.next_batch()[1]]
    observed = np.array([names.count(d) for d in "abc"])
    expected = np.array([weights[d] for d in "abc"]) * len(names)
    assert stats.chisquare(observed, expected).pvalue > 0.01
    assert np.allclose(observed / len(names), [0.5, 0.3, 0.2], atol=0.02)
    assert s.tokens_seen == {d: observed[i] * 4 for i, d in enumerate("abc")}
    assert s.epochs["c"] == pytest.approx(observed[2] * 4 / 200)


def test_sampler_reads_each_domain_sequentially():
    s = MixtureSampler(streams(), {"c": 1.0}, seq_len=8, batch_size=4, random_state=1)
    batch, names = s.next_batch()
    assert batch.shape == (4, 9) and names == ["c"] * 4
    flat = np.concatenate([batch[0], *(row[1:] for row in batch[1:])])
    assert np.all(np.diff(flat - 2000) % 200 == 1)  # one contiguous (wrapping) run
    # one epoch of c = 200 / 8 = 25 rows, so every token is a target once
    s2 = MixtureSampler(streams(), {"c": 1.0}, seq_len=8, batch_size=25, random_state=1)
    b, _ = s2.next_batch()
    assert sorted(b[:, 1:].ravel().tolist()) == list(range(2000, 2200))
    assert s2.epochs["c"] == 1.0 and s2.epochs["a"] == 0.0


def test_sampler_max_epochs_raise_names_the_domain():
    s = MixtureSampler(streams(), {"c": 0.5, "a": 0.5}, 20, 10, max_epochs=1.0, random_state=0)
    with pytest.raises(EpochLimitError, match=r"domain 'c' would pass max_epochs=1\.0"):
        for _ in range(10):
            s.next_batch()
    assert s.epochs["c"] <= 1.0


def test_sampler_max_epochs_drop_renormalizes_with_warning():
    s = MixtureSampler(
        streams(), {"a": 0.5, "b": 0.25, "c": 0.25}, 20, 10, max_epochs=1.0, on_exhausted="drop"
    )
    with pytest.warns(UserWarning, match=r"domain 'c' reached max_epochs=1\.0"):
        for _ in range(6):
            s.next_batch()
    assert s.dropped == ["c"] and s.weights["c"] == 0.0
    assert s.weights["a"] == pytest.approx(2 / 3) and s.weights["b"] == pytest.approx(1 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            s.next_batch()
    assert s.epochs["c"] <= 1.0 and s.epochs["a"] < 1.0
    with pytest.warns(UserWarning, match=r"\['c'\] were dropped"):
        s.set_weights({"a": 0.5, "c": 0.5})
    assert s.weights == {"a": 1.0, "b": 0.0, "c": 0.0}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": 0.5, "z": 0.5}, r"unknown domains \['z'\]"),
        ({"a": 1.5, "b": -0.5}, r"non-negative, got \{'b': -0.5\}"),
        ({"a": 0.5, "b": 0.4}, "must sum to 1"),
        ({"a": float("nan"), "b": 1.0}, "finite"),
    ],
)
def test_set_weights_validation(weights, message):
    s = MixtureSampler(streams(), {"a": 1.0}, 4, 2)
    with pytest.raises(ValueError, match=message):
        s.set_weights(weights)
    assert s.weights == {"a": 1.0, "b": 0.0, "c": 0.0}
    s.set_weights({"a": 0.2, "b": 0.3, "c": 0.5 + 5e-7})  # within the tolerance
    with pytest.raises(ValueError, match=message):
        MixtureSampler(streams(), weights, 4, 2)


def test_sampler_empty_domain_named():
    with pytest.raises(ValueError, match=r"\['b'\] have no training tokens"):
        MixtureSampler({"a": np.arange(10), "b": np.zeros(0)}, {"a": 1.0}, 4, 2)


def test_sampler_state_dict_resumes_exactly():
    w = {"a": 0.4, "b": 0.3, "c": 0.3}
    s = MixtureSampler(streams(), w, 16, 8, random_state=5)
    for _ in range(3):
        s.next_batch()
    state = s.state_dict()
    expected = [s.next_batch() for _ in range(4)]
    r = MixtureSampler(streams(), w, 16, 8, random_state=99)
    r.load_state_dict(state)
    for (eb, en), (gb, gn) in zip(expected, [r.next_batch() for _ in range(4)], strict=True):
        assert np.array_equal(eb, gb) and en == gn
    assert r.tokens_seen == s.tokens_seen
    with pytest.raises(ValueError, match="sampler state is for domains"):
        MixtureSampler({"a": np.arange(10)}, {"a": 1.0}, 4, 2).load_state_dict(state)


def test_weight_tolerance_constant():
    assert pdata.WEIGHT_TOL == 1e-6


def test_run_folder_to_trained_proxy(tmp_path):
    """A run's documents -> tokenizer + cached streams in RUN/proxy -> a short training run."""
    from curamix.proxy.data import prepare_run_tokens
    from curamix.proxy.train import ProxyTrainConfig, train_proxy

    rng = np.random.default_rng(0)
    vocab = {"web": ["the", "page", "link", "home"], "math": ["1", "+", "2", "=", "3", "x"]}
    docs = [
        (f"{d}-{i:03d}", d, " ".join(rng.choice(vocab[d], size=30)))
        for d in vocab
        for i in range(40)
    ]
    write_stage(tmp_path, "ingest", "k", docs)
    tok, train, val = prepare_run_tokens(tmp_path, vocab_size=300, val_fraction=0.1)
    assert (tmp_path / "proxy" / "tokenizer-v300.json").is_file()
    assert len(list((tmp_path / "proxy" / "tokens").glob("*.npy"))) == 4
    assert set(train) == set(val) == {"math", "web"}
    assert int((val["web"] == 0).sum()) == 4  # 4 of 40 documents held out, EOS-separated
    cfg = ProxyTrainConfig(
        model="nano", vocab_size=tok.get_vocab_size(), seq_len=16, batch_size=4,
        total_tokens=16 * 4 * 30, eval_tokens=64, device="cpu", cpu_threads=1, lr=1e-2,
    )  # fmt: skip
    r = train_proxy(cfg, train, val, {"math": 0.5, "web": 0.5}, progress=False)
    assert r.metrics["train_loss"].iloc[-1] < r.metrics["train_loss"].iloc[0]
    assert set(r.val_losses) == {"math", "web"}


# ------------------------------------------------------------------- the pool's token sample


def _sample_pool(root, n_parts, seed=0):
    """Three domains of 40 documents (one of them short texts), split into ``n_parts``."""
    import random

    from curamix.demo import DOMAINS

    r = random.Random(seed)
    rows = [
        {"id": f"{d}-{i:03d}", "domain": d, "text": make(r) if d != "code" else f"x = {i}"}
        for d, make in list(DOMAINS.items())[:3]
        for i in range(40)
    ]
    folder = root / f"parts{n_parts}"
    folder.mkdir(parents=True)
    for k in range(n_parts):
        pq.write_table(pa.Table.from_pylist(rows[k::n_parts]), folder / f"part-{k:05d}.parquet")
    return sorted(str(p) for p in folder.glob("*.parquet")), rows


def _by_hand(rows, tok, seed, need, val_fraction):
    """The sample's rule, written out: each domain's documents by hash of (seed, id), encoded
    one by one, kept while fewer than ``need`` tokens come before them; split by text."""
    from curamix.pipelines.parts import sample_hash
    from curamix.proxy.tokenizer import encode_stream

    out = {}
    for d in sorted({r["domain"] for r in rows}):
        docs = sorted(
            (r for r in rows if r["domain"] == d),
            key=lambda r: (sample_hash(seed, r["id"]), r["id"]),
        )
        kept, total = [], 0
        for r in docs:
            if need is not None and total >= need:
                break
            kept.append(r["text"])
            total += len(encode_stream(tok, [r["text"]]))
        tr, va = split_documents(kept, val_fraction, seed)
        out[d] = (encode_stream(tok, tr), encode_stream(tok, va), len(kept))
    return out


def test_token_sample_is_the_budgeted_hash_prefix_for_any_parts(tmp_path, tok):
    parts1, rows = _sample_pool(tmp_path, 1)
    parts3, _ = _sample_pool(tmp_path, 3)
    need = 400
    a = pdata.sample_token_streams(parts1, tok, 5, need, tmp_path / "c1", "pool", 0.2)
    b = pdata.sample_token_streams(parts3, tok, 5, need, tmp_path / "c3", "pool", 0.2)
    want = _by_hand(rows, tok, 5, need, 0.2)
    assert a.digest == b.digest and set(a.train) == set(want)
    for d, (tr, va, n) in want.items():
        for s in (a, b):  # the same sample for one part or three
            assert np.array_equal(s.train[d], tr) and np.array_equal(s.val.get(d, va[:0]), va)
            assert s.domains[d]["sample_docs"] == n and s.domains[d]["covered"] == (n == 40)
        # the budget is reached with the last document, or the domain is smaller
        assert (len(tr) + len(va) >= need) == (d != "code")
    assert a.domains["news"]["sample_docs"] < 40 and a.domains["code"]["covered"]
    # another seed draws other documents; no budget takes every document, split as before
    assert (
        pdata.sample_token_streams(parts3, tok, 6, need, tmp_path / "c3", "pool", 0.2).digest
        != a.digest
    )
    full = pdata.sample_token_streams(parts3, tok, 5, None, tmp_path / "c3", "pool", 0.2)
    for d, (tr, va, n) in _by_hand(rows, tok, 5, None, 0.2).items():
        assert np.array_equal(full.train[d], tr) and np.array_equal(full.val[d], va)
        e = full.domains[d]
        assert n == e["sample_docs"] == e["docs"] == 40 and e["covered"]
        assert e["pool_train_tokens"] == len(tr)  # exact when the sample is the whole domain
    # a sampled domain's pool tokens: the sample's tokens per character, scaled to the domain
    e = a.domains["news"]
    per_char = (e["train_tokens"] + e["val_tokens"]) / e["sample_chars"]
    assert e["pool_train_tokens"] == pytest.approx(per_char * e["chars"] * 32 / 40, abs=1)


def test_token_sample_cache_and_short_rounds(tmp_path, tok, monkeypatch):
    parts, _ = _sample_pool(tmp_path, 2)
    calls = []

    def counting(paths, fn, schema):
        calls.append(schema)
        return pdata.run_parts_here(paths, fn, schema)

    a = pdata.sample_token_streams(parts, tok, 0, 500, tmp_path / "c", "pool", 0.1, run=counting)
    assert len(calls) == 2  # the pool's counts, then one round of shards
    assert len(list(a.folder.glob("part-*.parquet"))) == 2 and (a.folder / "sample.json").is_file()

    def boom(*_a):
        raise AssertionError("tokenized again although cached")

    again = pdata.sample_token_streams(parts, tok, 0, 500, tmp_path / "c", "pool", 0.1, run=boom)
    assert again.digest == a.digest and all(
        np.array_equal(again.train[d], a.train[d]) for d in a.train
    )
    # a first round far too small (characters per token guessed 1000x too low) takes more
    # rounds, never another sample
    monkeypatch.setattr(pdata, "CHARS_PER_TOKEN", 0.004)
    monkeypatch.setattr(pdata, "CANDIDATE_MIN_DOCS", 1)
    calls.clear()
    msgs = []
    small = pdata.sample_token_streams(
        parts, tok, 0, 500, tmp_path / "c2", "pool", 0.1, run=counting, say=msgs.append
    )
    assert len(calls) > 2 and any("fell short" in m for m in msgs)
    assert small.digest == a.digest


def test_prefix_cutoffs_and_tokenizer_shares():
    rng = np.random.default_rng(0)
    n = 200
    keys = pa.table(
        {
            "domain": rng.choice(["a", "b"], n).tolist(),
            "h": rng.integers(0, 50, n),
            "id": [f"d{i}" for i in range(n)],
            "n": rng.integers(1, 20, n),
        },
        schema=pdata.KEYS_SCHEMA,
    )
    cut = pdata.prefix_cutoffs(keys, {"a": 300, "b": 1e9})
    for d, budget in (("a", 300), ("b", 1e9)):
        rows = sorted(
            (h, i, m)
            for dd, h, i, m in zip(*(keys[c].to_pylist() for c in keys.column_names), strict=True)
            if dd == d
        )
        before = np.cumsum([m for *_, m in rows]) - [m for *_, m in rows]
        last = rows[int((before < budget).sum()) - 1]
        assert cut[d] == (last[0], last[1])
    assert cut["b"] == max(
        (h, i)
        for dd, h, i in zip(*(keys[c].to_pylist() for c in ("domain", "h", "id")), strict=True)
        if dd == "b"
    )
    assert pdata.prefix_cutoffs(keys, {"a": 0, "b": 1}).keys() == {"b"}
    # water-filling: the small domain keeps all of its characters, the rest split evenly
    assert pdata.tokenizer_shares({"a": 10, "b": 1000, "c": 1000}, 310) == {
        "a": 10,
        "b": 150,
        "c": 150,
    }
    assert pdata.tokenizer_shares({"a": 10, "b": 20}, 1000) == {"a": 10, "b": 20}


def test_tokenizer_texts_are_each_domains_first_characters(tmp_path):
    from curamix.pipelines.parts import sample_hash

    parts1, rows = _sample_pool(tmp_path, 1)
    parts3, _ = _sample_pool(tmp_path, 3)
    stats = pdata.pool_stats(parts3)
    assert stats == pdata.pool_stats(parts1)
    assert stats["code"] == {
        "docs": 40,
        "chars": sum(len(r["text"]) for r in rows if r["domain"] == "code"),
    }
    texts = pdata.sample_tokenizer_texts(parts3, stats, 2, max_chars=9000)
    assert texts == pdata.sample_tokenizer_texts(parts1, stats, 2, max_chars=9000)
    shares = pdata.tokenizer_shares({d: s["chars"] for d, s in stats.items()}, 9000)
    assert shares["code"] == stats["code"]["chars"] and len(texts["code"]) == 40  # all of code
    for d in ("news", "science"):
        order = sorted(
            (r for r in rows if r["domain"] == d), key=lambda r: (sample_hash(2, r["id"]), r["id"])
        )
        got = texts[d]
        assert got == [r["text"] for r in order[: len(got)]]  # a prefix of the hash order
        assert sum(map(len, got[:-1])) < shares[d] <= sum(map(len, got))  # the last crosses it


def test_token_need():
    assert pdata.token_need(1000, 10, 0.05, 1.5) == 1579  # ceil(1.5 * max(1000/0.95, 10/0.05))
    assert pdata.token_need(1000, 500, 0.05, 1.0) == 10_000  # validation's share decides
    assert pdata.token_need(1000, 100, 0.05, None) is None
    with pytest.raises(ValueError, match=r"margin must be at least 1, got 0\.5"):
        pdata.token_need(1000, 100, 0.05, 0.5)
