"""Byte-level BPE tokenizer: deterministic training, lossless round trip, save / reuse."""

from __future__ import annotations

import numpy as np
import pytest

from curamix.proxy import tokenizer as tk
from curamix.proxy.tokenizer import (
    EOS,
    encode_stream,
    load_or_train_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    tokenizer_sample,
    train_tokenizer,
)


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences over a Zipf-ish vocabulary of 400 random lowercase words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(400)]
    p = 1.0 / np.arange(1, 401)
    p /= p.sum()
    return [" ".join(rng.choice(words, size=rng.integers(5, 40), p=p)) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [*synthetic_texts(300), "naïve café 🙂 ünïcode\n\ttabs  and  spaces", "x = f(y) + 1;"]


def test_training_is_deterministic(texts):
    a = train_tokenizer(texts, vocab_size=400)
    b = train_tokenizer(list(texts), vocab_size=400)
    assert a.to_str() == b.to_str()
    assert tokenizer_hash(a) == tokenizer_hash(b)
    assert a.get_vocab_size() == 400
    assert a.token_to_id(EOS) == 0


def test_round_trip_decode_is_lossless(texts):
    tok = train_tokenizer(texts, vocab_size=400)
    for t in [*texts[-2:], "never seen: Ωμέγα 中文 \u2028 end", "  leading spaces"]:
        ids = tok.encode(t).ids
        assert tok.decode(ids) == t
    assert len(tok.encode(texts[0]).ids) < len(texts[0].encode()) / 2  # merges compress


def test_vocab_size_validated():
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(["a"], vocab_size=100)


def test_save_load_and_reuse(tmp_path, texts, monkeypatch):
    tok = train_tokenizer(texts, vocab_size=300)
    path = save_tokenizer(tok, tmp_path / "tok.json")
    assert tokenizer_hash(load_tokenizer(path)) == tokenizer_hash(tok)

    target = tmp_path / "run" / "proxy" / "tokenizer-v300.json"
    first = load_or_train_tokenizer(target, {"a": texts[:150], "b": texts[150:]}, vocab_size=300)
    assert target.is_file()

    def boom(*a, **k):
        raise AssertionError("retrained although the file exists")

    monkeypatch.setattr(tk, "train_tokenizer", boom)
    again = load_or_train_tokenizer(target, {"a": ["other"]}, vocab_size=300)
    assert tokenizer_hash(again) == tokenizer_hash(first)


def test_load_rejects_foreign_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "plain.json"
    Tokenizer(models.BPE()).save(str(path))
    with pytest.raises(ValueError, match="no '<\\|endoftext\\|>' token"):
        load_tokenizer(path)


def test_encode_stream_separates_documents_with_eos(texts):
    tok = train_tokenizer(texts, vocab_size=300)
    docs = texts[:5]
    stream = encode_stream(tok, docs, batch_size=2)
    assert stream.dtype == np.uint16
    assert int((stream == 0).sum()) == 5 and stream[-1] == 0
    pieces = np.split(stream, np.flatnonzero(stream == 0) + 1)[:-1]
    assert [tok.decode(p[:-1].tolist()) for p in pieces] == docs
    assert len(encode_stream(tok, [])) == 0


def test_tokenizer_sample_caps_chars_and_balances_domains():
    domains = {"big": ["x" * 100] * 100, "small": ["y" * 100] * 3}
    s = tokenizer_sample(domains, max_chars=2000, random_state=0)
    assert s == tokenizer_sample(domains, max_chars=2000, random_state=0)
    assert sum(map(len, s)) <= 2100
    assert sum(t[0] == "y" for t in s) == 3  # the small domain's unused share goes to big
    assert sum(t[0] == "x" for t in s) == 17


@pytest.mark.realdata
def test_round_trip_on_real_documents(shared_data):
    """Code, math and web text from ../shared/data round-trip through a small tokenizer."""
    import gzip
    import itertools
    import json

    texts = []
    for domain in ("code", "math", "web"):
        with gzip.open(shared_data / "corpus" / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in itertools.islice(fh, 100)]
    tok = train_tokenizer(texts, vocab_size=2000)
    assert tok.get_vocab_size() == 2000
    stream = encode_stream(tok, texts)
    assert int((stream == 0).sum()) == len(texts)
    assert all(tok.decode(tok.encode(t).ids) == t for t in texts)
    assert len(stream) < sum(len(t.encode()) for t in texts) / 2.5  # BPE compresses real text
