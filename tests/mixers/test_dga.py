"""DGA: moves weight toward the domain aligned with the target; EMA, bases, checks, hook use."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import torch

from curamix.mixers import DGAMixer, DomainStats, eg_step
from curamix.mixture import Mixture
from tests.mixers import assert_valid, make_metrics

DOMAINS = ["web", "code", "math", "wiki"]
TOKENS = {"web": 4e6, "code": 3e6, "math": 2e6, "wiki": 1e6}


def grads(seed: int = 0, dim: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {d: rng.normal(size=dim) for d in DOMAINS}


@pytest.mark.parametrize("normalize", ["none", "doge", "cosine"])
def test_target_equal_to_one_domain_pulls_weight_to_it(normalize):
    g = grads()
    eta = {"none": 0.05, "doge": 2e4, "cosine": 2.0}[normalize]
    mixer = DGAMixer(eta=eta, ema=0.5, normalize=normalize, init="uniform").fit(TOKENS)
    before = mixer.weights_["math"]
    for step in range(1, 9):
        w = mixer(make_metrics(g, target=g["math"], step=100 * step))
        assert_valid(w, DOMAINS)
    assert w == mixer.weights_
    assert mixer.weights_["math"] > before + 0.3
    assert max(mixer.weights_, key=mixer.weights_.get) == "math"
    assert mixer.n_updates_ == 8 and [h[0] for h in mixer.history_] == list(range(100, 900, 100))
    assert_valid(mixer.mixture().weights, DOMAINS)


def test_eg_step_and_ema_convention():
    a = np.array([0.5, 0.25, 0.25])
    s = np.array([1.0, 0.0, -1.0])
    hat = a * np.exp(2 * s)
    hat /= hat.sum()
    assert eg_step(a, s, eta=2) == pytest.approx(hat)
    # the EMA weighs the old weights by `ema` and is part of the recursion
    assert eg_step(a, s, eta=2, ema=0.75) == pytest.approx(0.75 * a + 0.25 * hat)
    # huge scores do not overflow; a zero weight stays zero
    out = eg_step(np.array([0.0, 0.5, 0.5]), np.array([1e6, 1e5, -1e5]), eta=1.0)
    assert np.isfinite(out).all() and out[0] == 0 and out[1] == pytest.approx(1.0)
    # smoothing keeps every domain reachable
    assert eg_step(np.array([0.0, 1.0]), np.zeros(2), 1.0, smoothing=0.1)[0] == pytest.approx(0.05)


def test_mixer_applies_ema_recursively():
    g = grads(1)
    m0 = DGAMixer(eta=0.1, ema=0.0, init="uniform").fit(TOKENS)
    m9 = DGAMixer(eta=0.1, ema=0.9, init="uniform").fit(TOKENS)
    metrics = make_metrics(g, target=g["code"])
    a0 = np.array(list(m0(metrics).values()))
    a9 = np.array(list(m9(metrics).values()))
    u = np.full(4, 0.25)
    assert a9 == pytest.approx(0.9 * u + 0.1 * a0)


def test_distribution_reweighting_over_bases():
    g = grads(2)
    bases = {
        "textual": {"web": 0.5, "wiki": 0.5},
        "technical": {"code": 0.5, "math": 0.5},
    }
    mixer = DGAMixer(eta=0.05, ema=0.0, bases=bases, init="uniform").fit(TOKENS)
    assert mixer.weights_ == pytest.approx({"web": 0.25, "code": 0.25, "math": 0.25, "wiki": 0.25})
    target = 0.5 * (g["code"] + g["math"])
    for step in range(5):
        mixer(make_metrics(g, target=target, step=step + 1))
    assert mixer.basis_weights_["technical"] > 0.9
    # the domain mixture is basis_weights @ bases
    b = mixer.basis_weights_
    assert mixer.weights_["code"] == pytest.approx(0.5 * b["technical"])
    assert mixer.weights_["wiki"] == pytest.approx(0.5 * b["textual"])
    assert_valid(mixer.weights_, DOMAINS)
    assert mixer.mixture().provenance["basis_weights"] == pytest.approx(b)
    default = DGAMixer(bases=bases).fit(TOKENS)  # uniform over the bases by default
    assert default.basis_weights_ == {"textual": 0.5, "technical": 0.5}
    assert DGAMixer().fit(TOKENS).weights_["web"] == pytest.approx(0.4)  # natural otherwise
    with pytest.raises(ValueError, match="basis 'bad'"):
        DGAMixer(bases={"bad": {"web": 0.5}}).fit(TOKENS)
    with pytest.raises(ValueError, match=r"no basis .* \['math', 'wiki'\]"):
        DGAMixer(bases={"b": {"web": 0.5, "code": 0.5}}).fit(TOKENS)


def test_bad_input_is_named():
    g = grads()
    mixer = DGAMixer().fit(TOKENS)
    with pytest.raises(ValueError, match="needs per-domain and target gradients"):
        mixer(make_metrics(g))  # no target gradient
    bad = dict(g, code=np.full(64, np.nan))
    with pytest.raises(ValueError, match="gradient of domain 'code' has NaN"):
        mixer(make_metrics(bad, target=g["web"]))
    extra = dict(g, books=g["web"])
    with pytest.raises(ValueError, match=r"unknown domains \['books'\]"):
        mixer(make_metrics(extra, target=g["web"]))
    with pytest.raises(ValueError, match="weights must sum to 1"):
        DGAMixer(init={"web": 0.5, "code": 0.3, "math": 0.1, "wiki": 0.05}).fit(TOKENS)
    with pytest.raises(ValueError, match=r"unknown domains \['books'\]"):
        DGAMixer(init={"books": 1.0}).fit(TOKENS)
    with pytest.raises(ValueError, match="ema must be in"):
        DGAMixer(ema=1.0).fit(TOKENS)
    assert mixer.n_updates_ == 0  # nothing was applied


def test_state_dict_round_trip_through_torch_save(tmp_path):
    g = grads(3)
    a = DGAMixer(eta=0.05).fit(TOKENS)
    a(make_metrics(g, target=g["wiki"], step=10))
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = DGAMixer(eta=0.05).fit(TOKENS)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    m = make_metrics(g, target=g["web"], step=20)
    assert a(m) == b(m)
    assert b.history_ == a.history_


# ---------------------------------------------------------------------------------------------
# The mixer as the train_proxy hook


def _docs(path, n):
    with gzip.open(path, "rt") as fh:
        return [json.loads(line)["text"][:1500] for _, line in zip(range(n), fh, strict=False)]


@pytest.mark.slow
@pytest.mark.realdata
def test_dga_as_train_proxy_hook(shared_data):
    from curamix.proxy.tokenizer import encode_stream, train_tokenizer
    from curamix.proxy.train import ProxyTrainConfig, train_proxy

    domains = {
        d: _docs(shared_data / "corpus" / f"{d}.jsonl.gz", 80) for d in ("math", "wiki", "code")
    }
    target = _docs(shared_data / "targets" / "gsm8k_train.jsonl.gz", 80)
    tok = train_tokenizer([t for ts in domains.values() for t in ts] + target, vocab_size=512)
    train = {d: encode_stream(tok, ts[:70]) for d, ts in domains.items()}
    val = {d: encode_stream(tok, ts[70:]) for d, ts in domains.items()}
    target_tokens = encode_stream(tok, target)
    cfg = ProxyTrainConfig(
        model="nano", vocab_size=tok.get_vocab_size(), seq_len=64, batch_size=8,
        total_tokens=8 * 64 * 60, lr=3e-3, update_every=10, hook_rows=4, eval_tokens=2048,
        device="cpu", cpu_threads=1, seed=0,
    )  # fmt: skip
    mixer = DGAMixer(eta=2.0, ema=0.5, normalize="cosine", init="uniform").fit(
        DomainStats.from_streams(train)
    )
    start = dict(mixer.weights_)
    res = train_proxy(cfg, train, val, start, target_tokens=target_tokens, hook=mixer,
                      progress=False)  # fmt: skip
    assert mixer.n_updates_ == 6
    assert res.weights == pytest.approx(mixer.weights_)  # the sampler took the mixer's weights
    assert sum(abs(mixer.weights_[d] - start[d]) for d in start) > 0.01
    for _, _, w in mixer.history_:
        assert_valid(w, list(train))
    mix = mixer.mixture()
    assert isinstance(mix, Mixture) and len(mix.provenance["history"]) == 6
    # the logged weights changed during training
    assert res.metrics["weight/math"].nunique() > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Mixture.from_dict(mix.to_dict())
