"""DGA: moves weight toward the domain aligned with the target (synthetic, and on real data
with a GSM8K target: math rises and the GSM8K loss falls); EMA, bases, checks."""

from __future__ import annotations

import functools
import gzip
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# The mixer as the train_proxy hook, on real data: direction, not just motion

DIRECTION_DOMAINS = ("math", "code", "wiki", "news", "reviews", "books", "tech")
"""The real-data pool of the direction tests. GSM8K's aligned domain is math; the corpus's
question/answer-format domains (qa, commonsense) and the broad web/science crawls are left
out: at this scale their gradients align with GSM8K's as much as math's does (see
docs/mixers.md, "Direction on real data"), so with them the test would be of a tie."""


@dataclass(frozen=True)
class DirectionSetup:
    """Real-data proxy setting shared by the DGA and TiKMiX direction tests."""

    cfg: Any
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    """Held-out documents of every domain, and ``gsm8k_test`` (GSM8K's test split)."""
    target: np.ndarray
    """GSM8K train texts: the target the mixers see (hook gradient, in-sample loss)."""

    @property
    def start(self) -> dict[str, float]:
        return {d: 1.0 / len(self.train) for d in self.train}

    @functools.cached_property
    def uniform(self) -> Any:
        """The static uniform run with the same seed and budget (what the mixers must beat);
        trained on first use."""
        from curamix.proxy.train import train_proxy

        return train_proxy(self.cfg, self.train, self.val, self.start,
                           target_tokens=self.target, progress=False)  # fmt: skip


def _sample_docs(path, n: int, seed: int = 0, chars: int = 1500) -> list[str]:
    """``n`` documents drawn at random (seeded) from a JSONL.gz file, cut to ``chars``."""
    with gzip.open(path, "rt") as fh:
        lines = fh.readlines()
    idx = np.sort(np.random.default_rng(seed).choice(len(lines), n, replace=False))
    return [json.loads(lines[i])["text"][:chars] for i in idx]


@functools.lru_cache(maxsize=1)
def direction_setup(data_dir: str) -> DirectionSetup:
    """7 real domains (100 training + 10 held-out documents each), GSM8K as the target, a
    nano proxy for 300 steps of 8 x 64 tokens (154k tokens), hook every 10 steps with 8 rows.

    lr 1e-3 rather than the proxy default 3e-3: at 3e-3 this nano proxy's loss curve has
    seed-dependent plateaus (uniform runs' GSM8K loss 4.53-4.73 over three seeds), larger than
    any mixture effect at this budget; at 1e-3 uniform runs agree within 0.01, and the
    mixture's effect on the target (about 0.05) is visible in one seeded run.
    """
    from curamix.proxy.tokenizer import encode_stream, train_tokenizer
    from curamix.proxy.train import ProxyTrainConfig

    root = Path(data_dir)
    texts = {d: _sample_docs(root / "corpus" / f"{d}.jsonl.gz", 110) for d in DIRECTION_DOMAINS}
    target = _sample_docs(root / "targets" / "gsm8k_train.jsonl.gz", 100)
    held_out = _sample_docs(root / "targets" / "gsm8k_test.jsonl.gz", 40)
    tok = train_tokenizer([t for ts in texts.values() for t in ts] + target, vocab_size=512)
    train = {d: encode_stream(tok, ts[:100]) for d, ts in texts.items()}
    val = {d: encode_stream(tok, ts[100:]) for d, ts in texts.items()}
    val["gsm8k_test"] = encode_stream(tok, held_out)
    cfg = ProxyTrainConfig(
        model="nano", vocab_size=tok.get_vocab_size(), seq_len=64, batch_size=8,
        total_tokens=8 * 64 * 300, lr=1e-3, update_every=10, hook_rows=8, eval_tokens=8192,
        device="cpu", cpu_threads=1, seed=0,
    )  # fmt: skip
    return DirectionSetup(cfg, train, val, encode_stream(tok, target))


def assert_moves_toward_math(setup: DirectionSetup, mixer: Any, res: Any) -> dict[str, float]:
    """The direction checks shared by DGA and TiKMiX; returns the measured figures.

    - the mixture the proxy trained on (each update's weights over the steps they were in
      force, the start included) gives math at least start + 0.04 and one of the two largest
      weights, and the sampler really drew that much more math (its token share);
    - the held-out GSM8K loss (test split, never seen by the mixer) ends at least 0.01 below
      the static uniform run's, and the in-sample target loss and math's own held-out loss
      end below it too.

    Margins from seeds 0-5 of this setting (docs/mixers.md, "Direction on real data"). The
    last weights alone are not checked: online, they keep following the current alignment
    (once math is learnt its alignment drops, and so does its weight), so they swing around
    the trained-on mixture (math's last weight ranged 0.04-0.50 over those seeds).
    """
    domains = list(setup.train)
    start = setup.start["math"]
    in_force = [setup.start] + [w for _, _, w in mixer.history_[:-1]]
    trained = {d: float(np.mean([w[d] for w in in_force])) for d in domains}
    share = res.tokens_seen["math"] / sum(res.tokens_seen.values())
    uni = setup.uniform
    figures = {
        "math_start": start,
        "math_trained": trained["math"],
        "math_last": mixer.weights_["math"],
        "math_share": share,
        "gsm8k_test_uniform": uni.val_losses["gsm8k_test"],
        "gsm8k_test_mixer": res.val_losses["gsm8k_test"],
        "target_uniform": uni.target_loss,
        "target_mixer": res.target_loss,
        "math_val_uniform": uni.val_losses["math"],
        "math_val_mixer": res.val_losses["math"],
    }
    assert "math" in sorted(trained, key=trained.get)[-2:], (trained, figures)
    assert trained["math"] > start + 0.04, figures
    assert share > start + 0.04, figures
    assert res.val_losses["gsm8k_test"] < uni.val_losses["gsm8k_test"] - 0.01, figures
    assert res.target_loss < uni.target_loss, figures
    assert res.val_losses["math"] < uni.val_losses["math"], figures
    return figures


@pytest.mark.slow
@pytest.mark.realdata
def test_dga_moves_weight_to_math_and_lowers_gsm8k_loss(shared_data):
    """DGA with the pipeline's settings (``mixers.search.DEFAULT_PARAMS``) as the hook of a
    real-data proxy with a GSM8K target: it trains on more math than the uniform start, and
    the GSM8K loss (held-out and in-sample) ends below the static uniform run's.

    Measured (seed 0): math 0.143 -> 0.322 trained-on (last 0.440, token share 0.335);
    held-out GSM8K loss 4.785 (uniform) -> 4.726, in-sample 4.762 -> 4.697. Seeds 0-5: math
    led the trained-on mixture in 5 of 6 (second to reviews in the other), the held-out GSM8K
    loss fell by 0.029-0.067 in 6 of 6.
    """
    from curamix.mixers.search import DEFAULT_PARAMS
    from curamix.proxy.train import train_proxy

    setup = direction_setup(str(shared_data))
    mixer = DGAMixer(**DEFAULT_PARAMS["dga"]).fit(DomainStats.from_streams(setup.train))
    assert mixer.weights_ == pytest.approx(setup.start)
    res = train_proxy(setup.cfg, setup.train, setup.val, setup.start,
                      target_tokens=setup.target, hook=mixer, progress=False)  # fmt: skip
    assert mixer.n_updates_ == 30
    assert res.weights == pytest.approx(mixer.weights_)  # the sampler took the mixer's weights
    for _, _, w in mixer.history_:
        assert_valid(w, list(setup.train))
    figures = assert_moves_toward_math(setup, mixer, res)
    print("DGA direction:", {k: round(v, 4) for k, v in figures.items()})
    mix = mixer.mixture()
    assert isinstance(mix, Mixture) and len(mix.provenance["history"]) == 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Mixture.from_dict(mix.to_dict())
