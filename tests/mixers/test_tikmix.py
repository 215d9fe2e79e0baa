"""TiKMiX: influence sign and preconditioning, TiKMiX-D regularisers and trust region,
TiKMiX-M recovering a known optimum, the stage-wise hook."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from curamix.mixers import (
    TiKMiXMixer,
    group_influence,
    tikmix_d_weights,
    tikmix_m_weights,
    tikmix_objective,
)
from tests.mixers import assert_valid, make_metrics

DOMAINS = ["web", "code", "math", "wiki"]
TOKENS = {"web": 4e6, "code": 3e6, "math": 2e6, "wiki": 1e6}


def test_group_influence_sign_and_preconditioner():
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    g_t = torch.tensor([2.0, 1.0], dtype=torch.float64)
    infl, sim = group_influence(G, g_t)
    # benefit: a domain whose gradient points with the target's helps (positive)
    assert infl == pytest.approx([2.0, 1.0, -2.0])
    assert sim == pytest.approx(np.array([[1, 0, -1], [0, 1, 0], [-1, 0, 1]]))
    p = torch.tensor([0.5, 4.0], dtype=torch.float64)  # diagonal H^-1
    infl_p, _ = group_influence(G, g_t, p)
    assert infl_p == pytest.approx([1.0, 4.0, -1.0])


def test_d_puts_more_weight_on_higher_influence():
    infl = np.array([0.1, 0.5, 2.0, -1.0])
    w = tikmix_d_weights(infl, uniformity=0.2)
    assert np.argsort(w).tolist() == [3, 0, 1, 2]
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    # without any regulariser the optimum is the vertex of the largest influence
    assert tikmix_d_weights(infl, uniformity=0.0) == pytest.approx([0, 0, 1, 0], abs=1e-6)


def test_d_uniformity_pulls_toward_uniform():
    infl = np.array([0.1, 0.5, 2.0, -1.0])
    dist = [
        np.abs(tikmix_d_weights(infl, uniformity=u) - 0.25).sum()
        for u in (0.05, 0.2, 1.0, 5.0, 100.0)
    ]
    assert all(a > b for a, b in itertools.pairwise(dist))
    assert dist[-1] < 0.01
    # the closed form agrees with SLSQP (forced by a loose trust region)
    closed = tikmix_d_weights(infl, uniformity=0.5)
    slsqp = tikmix_d_weights(infl, np.full(4, 0.25), uniformity=0.5, trust_region=1.0)
    assert slsqp == pytest.approx(closed, abs=1e-4)
    assert (
        tikmix_objective(closed[None], infl, 0.5)[0]
        >= tikmix_objective(np.full((1, 4), 0.25), infl, 0.5)[0]
    )


def test_d_diversity_and_trust_region():
    infl = np.array([1.0, 0.99, 0.5])
    # domains 0 and 1 have identical gradients, 2 is orthogonal: diversity shifts weight to 2
    C = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=float)
    w0 = tikmix_d_weights(infl, uniformity=0.1, diversity=0.0, similarity=C)
    w1 = tikmix_d_weights(infl, uniformity=0.1, diversity=1.0, similarity=C)
    assert w1[2] > w0[2] + 0.1
    cur = np.array([0.2, 0.3, 0.5])
    w = tikmix_d_weights(infl, cur, uniformity=0.0, trust_region=0.1)
    assert np.abs(w - cur).max() <= 0.1 + 1e-9 and w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.3, abs=1e-6)  # moved as far as allowed toward the best


def test_m_recovers_argmax_of_known_function():
    w_star = np.array([0.45, 0.3, 0.15, 0.1])

    def score(W):
        return -np.square(W - w_star).sum(1)

    w, pred = tikmix_m_weights(
        score, np.full(4, 0.25), np.random.default_rng(0), n_fit=400, n_search=5000, top_k=1,
        max_iter=300, learning_rate=0.05,
    )  # fmt: skip
    assert np.abs(w - w_star).max() < 0.08
    assert pred > -0.01
    # through the estimator, and the mean of the top-k
    mixer = TiKMiXMixer(
        mode="M", score_fn=score, top_k=8, n_fit=400, n_search=5000, max_iter=300,
        learning_rate=0.05, random_state=0,
    ).fit(TOKENS)  # fmt: skip
    out = mixer.update_from_influence(np.zeros(4))
    assert_valid(out, DOMAINS)
    assert np.abs(mixer.weights_array() - w_star).max() < 0.08
    assert mixer.predicted_score_ is not None


def test_m_default_score_follows_influence():
    infl = {"web": 0.0, "code": 0.1, "math": 1.0, "wiki": -0.5}
    mixer = TiKMiXMixer(
        mode="M", uniformity=1.0, n_fit=400, n_search=5000, top_k=16, max_iter=300,
        learning_rate=0.05,
    ).fit(TOKENS)  # fmt: skip
    w = mixer.update_from_influence(infl)
    assert max(w, key=w.get) == "math"
    # close to TiKMiX-D's exact optimum of the same objective
    exact = tikmix_d_weights(np.array(list(infl.values())), uniformity=1.0)
    assert np.abs(mixer.weights_array() - exact).max() < 0.15


def test_stagewise_hook_with_gradients():
    rng = np.random.default_rng(0)
    g = {d: rng.normal(size=32) for d in DOMAINS}
    mixer = TiKMiXMixer(mode="D", uniformity=0.2, trust_region=0.15).fit(TOKENS)
    start = mixer.weights_array()
    for s in range(1, 4):
        w = mixer(make_metrics(g, target=g["math"], step=50 * s))
        assert_valid(w, DOMAINS)
    assert mixer.weights_["math"] > start[2] + 0.2  # three stages of at most +0.15 each
    assert mixer.influence_[2] == pytest.approx(float(np.dot(g["math"], g["math"])), rel=1e-4)
    mix = mixer.mixture()
    assert mix.provenance["method"] == "tikmix" and mix.provenance["n_updates"] == 3
    assert mix.provenance["influence"]["math"] > 0


def test_adam_preconditioner_given_or_accumulated():
    rng = np.random.default_rng(1)
    g = {d: rng.normal(size=16) for d in DOMAINS}
    m = make_metrics(g, target=g["code"])
    v = torch.full((16,), 4.0)
    a = TiKMiXMixer(hessian="adam").fit(TOKENS)
    a.partial_fit(m, precond=v)
    expect = np.dot(g["code"], g["code"]) / (2.0 + 1e-8)
    assert a.influence_[1] == pytest.approx(expect, rel=1e-4)
    b = TiKMiXMixer(hessian="adam", beta2=0.9).fit(TOKENS)
    b(m)  # its own squared-gradient average, bias-corrected: v = sum_i w_i g_i^2
    w0 = np.array(list(b.history_[0][2].values()))
    assert b.n_sq_ == 1 and b.sq_avg_ is not None
    natural = np.array(list(TOKENS.values())) / sum(TOKENS.values())
    v_own = (natural[:, None] * np.stack([g[d] for d in DOMAINS]) ** 2).sum(0)
    p = 1 / (np.sqrt(v_own) + 1e-8)
    assert b.influence_[1] == pytest.approx(float((g["code"] * p) @ g["code"]), rel=1e-4)
    assert_valid(dict(zip(DOMAINS, w0, strict=True)), DOMAINS)
    with pytest.raises(ValueError, match="precond has 3 entries"):
        a.partial_fit(m, precond=torch.ones(3))


def test_state_dict_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    g = {d: rng.normal(size=16) for d in DOMAINS}
    a = TiKMiXMixer(hessian="adam", influence_ema=0.5).fit(TOKENS)
    a(make_metrics(g, target=g["wiki"], step=1))
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = TiKMiXMixer(hessian="adam", influence_ema=0.5).fit(TOKENS)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    m = make_metrics(g, target=g["web"], step=2)
    assert a(m) == pytest.approx(b(m))


def test_bad_input_is_named():
    mixer = TiKMiXMixer().fit(TOKENS)
    with pytest.raises(ValueError, match="influence of domain 'math' is nan"):
        mixer.update_from_influence({"web": 0, "code": 0, "math": float("nan"), "wiki": 0})
    with pytest.raises(ValueError, match=r"unknown domains \['books'\]"):
        mixer.update_from_influence({"web": 0, "code": 0, "math": 0, "wiki": 0, "books": 1})
    with pytest.raises(ValueError, match="mode must be"):
        TiKMiXMixer(mode="X").fit(TOKENS)
    with pytest.raises(ValueError, match="needs per-domain and target gradients"):
        mixer(make_metrics(losses=dict.fromkeys(DOMAINS, 3.0)))
