"""Perplexity scores under a reference proxy (Marion et al. 2023)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch


def _docs(shared_data, domain: str, n: int) -> list[str]:
    out = []
    with gzip.open(shared_data / "corpus" / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line)["text"])
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module")
def math_reference(shared_data):
    from curamix.proxy.perplexity import reference_proxy

    math, news = _docs(shared_data, "math", 500), _docs(shared_data, "news", 100)
    model, tok = reference_proxy(
        math[:400], vocab_size=512, seq_len=64, total_tokens=120_000, random_state=0,
        device="cpu", cpu_threads=1,
    )  # fmt: skip
    return model, tok, math[400:], news


def test_padding_does_not_change_a_documents_loss(math_reference):
    """Batched, right-padded scores equal each document's own loss computed alone."""
    from curamix.proxy.perplexity import doc_losses

    model, tok, held_out, news = math_reference
    texts = [held_out[0], "x", news[0][:40], held_out[1]]
    got = doc_losses(model, tok, texts, batch_size=4)
    assert np.isnan(got[1])  # one token: nothing to predict
    for i in (0, 2, 3):
        ids = tok.encode(texts[i], add_special_tokens=False).ids[: model.cfg.seq_len + 1]
        with torch.no_grad():
            alone = float(model.loss(torch.tensor([ids])))
        assert got[i] == pytest.approx(alone, rel=1e-5)
    short = doc_losses(model, tok, texts[:1], max_tokens=8)
    ids = tok.encode(texts[0], add_special_tokens=False).ids[:9]
    with torch.no_grad():
        assert short[0] == pytest.approx(float(model.loss(torch.tensor([ids]))), rel=1e-5)


def test_reference_domain_scores_lower_than_an_unseen_domain(math_reference):
    from curamix.proxy.perplexity import doc_losses

    model, tok, held_out, news = math_reference
    math_loss, news_loss = doc_losses(model, tok, held_out), doc_losses(model, tok, news)
    assert np.isfinite(math_loss).all() and np.isfinite(news_loss).all()
    # held-out math documents are far more predictable than news to a math-trained proxy
    assert np.median(math_loss) < np.median(news_loss) - 0.5
    assert (math_loss < np.median(news_loss)).mean() > 0.9


def test_same_seed_same_scores(math_reference, shared_data):
    from curamix.proxy.perplexity import doc_losses, reference_proxy

    model, tok, held_out, _ = math_reference
    again, tok2 = reference_proxy(
        _docs(shared_data, "math", 400), vocab_size=512, seq_len=64, total_tokens=120_000,
        random_state=0, device="cpu", cpu_threads=1,
    )  # fmt: skip
    np.testing.assert_array_equal(
        doc_losses(model, tok, held_out[:20]), doc_losses(again, tok2, held_out[:20])
    )


def test_bad_input_is_refused(math_reference):
    from curamix.proxy.perplexity import doc_losses, reference_proxy

    model, tok, held_out, _ = math_reference
    with pytest.raises(ValueError, match="smaller than one batch"):
        reference_proxy(held_out, seq_len=64, batch_size=16, total_tokens=100)
    with pytest.raises(ValueError, match="at least one non-empty text"):
        reference_proxy(["", ""])
    with pytest.raises(ValueError, match="max_tokens"):
        doc_losses(model, tok, held_out[:2], max_tokens=10_000)
