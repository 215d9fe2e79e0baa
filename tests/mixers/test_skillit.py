"""Skill-it: the multiplicative-weights update over a skills graph (direction, window, target
mask, normalisation, against a transcription of the reference), the graph's inputs and checks,
the edge test on a planted dependency, and the mixer as the proxy hook and in the search."""

from __future__ import annotations

import json
import random
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from curamix.mixers import DomainStats, SkillItMixer, SkillsGraph, skillit_weights
from curamix.mixers.skillit import (
    estimate_skills_graph,
    graph_density,
    plot_skills_graph,
    resolve_skills_graph,
)
from tests.mixers import assert_valid, make_metrics

DOMAINS = ["a", "t", "b"]
TOKENS = {"a": 1e6, "t": 1e6, "b": 1e6}

PREREQ = {"a": {"a": 1.0, "t": 0.5}, "t": {"t": 1.0}, "b": {"b": 1.0}}
"""a is a prerequisite of t (the reference's 0.5 off-diagonal edge); b is unrelated."""


def metrics(losses: dict[str, float], step: int = 100, target: float | None = None):
    """Step metrics carrying held-out validation losses (what the hook evaluates)."""
    m = make_metrics(losses=losses, step=step)
    m.val_losses = dict(losses)
    m.val_target_loss = target
    return m


def quiet(**kwargs) -> SkillItMixer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # degenerate-graph warnings
        return SkillItMixer(**kwargs).fit(TOKENS)


def reference_update(prior, graph, all_losses, eta, mw_window, target_mask, normalize, loss_0):
    """``HazyResearch/skill-it`` trainer/mw_trainer.py, the update after each round (no lone
    nodes), transcribed: the window of the last ``mw_window`` evaluations, summed (averaged
    with a target mask), optionally divided by ``loss_0``, then ``weights_init * exp(eta *
    graph.dot(loss_arr))``."""
    idx = len(all_losses)
    if target_mask is not None:
        loss_arr = np.array(all_losses[max(0, idx - mw_window) : idx]).mean(axis=0)
    else:
        loss_arr = np.array(all_losses[max(0, idx - mw_window) : idx]).sum(axis=0)
    if normalize:
        weights = np.multiply(prior, np.exp(eta * graph.dot(np.divide(loss_arr, loss_0))))
    else:
        weights = np.multiply(prior, np.exp(eta * graph.dot(loss_arr)))
    return weights / weights.sum()


# ---------------------------------------------------------------------------------------------
# The update


def test_high_loss_on_a_target_moves_weight_to_its_prerequisite():
    low = quiet(graph=PREREQ, eta=0.5)
    high = quiet(graph=PREREQ, eta=0.5)
    for step in (100, 200, 300):
        low(metrics({"a": 2.0, "t": 2.0, "b": 2.0}, step))
        w = high(metrics({"a": 2.0, "t": 4.0, "b": 2.0}, step))
        assert_valid(w, DOMAINS)
    # t's high loss lifts t (its own edge) and a (the prerequisite edge) over the unrelated b
    assert high.weights_["a"] > high.weights_["b"] and high.weights_["t"] > high.weights_["b"]
    assert high.weights_["b"] < low.weights_["b"] and high.weights_["t"] > low.weights_["t"]
    # by exactly exp(eta * A_at * (sum of t's window losses)): a and b otherwise tie
    ratio = high.weights_["a"] / high.weights_["b"]
    assert ratio == pytest.approx(np.exp(0.5 * 0.5 * 3 * 4.0), rel=1e-12)
    assert ratio > low.weights_["a"] / low.weights_["b"]
    # without the edge, a gains nothing from t's loss
    no_edge = quiet(graph={"a": {"a": 1.0}, "t": {"t": 1.0}, "b": {"b": 1.0}}, eta=0.5)
    for step in (100, 200, 300):
        no_edge(metrics({"a": 2.0, "t": 4.0, "b": 2.0}, step))
    assert no_edge.weights_["a"] == pytest.approx(no_edge.weights_["b"])
    # targeted at t (a target mask): the higher t's loss, the more weight a itself gets
    target_a = []
    for lt in (1.0, 2.0, 4.0):
        m = quiet(graph={"a": {"t": 1.0}, "t": {}, "b": {}}, eta=0.5, target_mask="t")
        m(metrics({"a": 2.0, "t": lt, "b": 2.0}))
        target_a.append(m.weights_["a"])
    assert target_a[0] < target_a[1] < target_a[2]
    e = np.exp(0.5 * 0.5 * 4.0)  # a 0/1 graph's off-diagonal 1 weighs 0.5 (the reference's)
    assert target_a[2] == pytest.approx(e / (e + 2), rel=1e-12)


def test_identity_graph_is_loss_proportional_exponentiation():
    stats = DomainStats({"a": 3e6, "t": 1e6, "b": 1e6})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mixer = SkillItMixer(graph=None, eta=0.2, window=3, prior="natural").fit(stats)
    prior = stats.shares()
    assert mixer.weights_array() == pytest.approx(prior)  # exp(eta * I @ 1) is flat
    rounds = [[3.0, 5.0, 4.0], [2.5, 4.5, 4.2], [2.0, 4.4, 4.1]]
    for i, r in enumerate(rounds):
        mixer(metrics(dict(zip(DOMAINS, r, strict=True)), 100 * (i + 1)))
    expect = prior * np.exp(0.2 * np.sum(rounds, axis=0))
    assert mixer.weights_array() == pytest.approx(expect / expect.sum(), rel=1e-12)


def test_the_window_sums_exactly_the_last_T_rounds():
    rng = np.random.default_rng(0)
    rounds = rng.uniform(1, 6, size=(6, 3))
    graph = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 1.0]])
    mixer = quiet(graph=graph, eta=0.3, window=3)
    for i, r in enumerate(rounds):
        w = mixer(metrics(dict(zip(DOMAINS, r, strict=True)), 100 * (i + 1)))
        last = rounds[max(0, i - 2) : i + 1]
        expect = np.exp(0.3 * graph @ last.sum(axis=0))
        assert np.array(list(w.values())) == pytest.approx(expect / expect.sum(), rel=1e-12)
    # a round older than T does not count: change round 0, replay, same final weights
    changed = rounds.copy()
    changed[:3] += 10.0
    other = quiet(graph=graph, eta=0.3, window=3)
    for i, r in enumerate(changed):
        other(metrics(dict(zip(DOMAINS, r, strict=True)), 100 * (i + 1)))
    assert other.weights_ == pytest.approx(mixer.weights_, rel=1e-12)
    # but with T = 4 it would
    longer = quiet(graph=graph, eta=0.3, window=4)
    for i, r in enumerate(changed):
        longer(metrics(dict(zip(DOMAINS, r, strict=True)), 100 * (i + 1)))
    assert longer.weights_ != pytest.approx(mixer.weights_)


def test_target_mask_reads_only_the_target_losses_and_averages_the_window():
    graph = {"a": {"a": 1.0, "target": 0.8}, "t": {"t": 1.0, "target": 0.2}, "b": {"b": 1.0}}
    mixer = quiet(graph=graph, eta=0.5, target_mask="target")
    assert mixer.columns_ == ["target"]
    # before any loss: p ∝ exp(eta * A[:, target] @ 1) (the reference's loss_init of ones)
    e = np.exp(0.5 * np.array([0.8, 0.2, 0.0]))
    assert mixer.weights_array() == pytest.approx(e / e.sum())
    other = quiet(graph=graph, eta=0.5, target_mask=["target"])
    tl = [5.0, 4.6, 4.4, 4.3]
    for i, t in enumerate(tl):
        mixer(metrics({"a": 1.0, "t": 9.0, "b": 3.0}, 100 * (i + 1), target=t))
        # the domains' losses are wildly different here: they must not matter
        other(metrics({"a": 7.0, "t": 0.5, "b": 6.0}, 100 * (i + 1), target=t))
    assert other.weights_ == pytest.approx(mixer.weights_, rel=1e-12)
    mean = np.mean(tl[-3:])  # targeted mode averages the window (the reference's .mean)
    expect = np.exp(0.5 * np.array([0.8, 0.2, 0.0]) * mean)
    assert mixer.weights_array() == pytest.approx(expect / expect.sum(), rel=1e-12)
    assert mixer.weights_["a"] > mixer.weights_["t"] > mixer.weights_["b"]
    with pytest.raises(ValueError, match="needs the target's loss"):
        mixer(metrics({"a": 1.0, "t": 1.0, "b": 1.0}, 900))


def test_normalize_loss_divides_by_the_first_rounds_losses():
    graph = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rounds = np.array([[2.0, 8.0, 4.0], [1.8, 6.0, 3.0], [1.5, 5.0, 3.5]])
    mixer = quiet(graph=graph, eta=0.5, normalize_loss=True)
    for i, r in enumerate(rounds):
        mixer(metrics(dict(zip(DOMAINS, r, strict=True)), 100 * (i + 1)))
    assert mixer.loss0_ == pytest.approx(rounds[0].tolist())
    expect = np.exp(0.5 * graph @ (rounds.sum(axis=0) / rounds[0]))
    assert mixer.weights_array() == pytest.approx(expect / expect.sum(), rel=1e-12)
    # relative loss: a skill's loss scale (say a 10x larger loss unit) no longer matters
    scaled = quiet(graph=graph, eta=0.5, normalize_loss=True)
    for i, r in enumerate(rounds * np.array([10.0, 1.0, 1.0])):
        scaled(metrics(dict(zip(DOMAINS, r, strict=True)), 100 * (i + 1)))
    assert scaled.weights_ == pytest.approx(mixer.weights_, rel=1e-12)
    raw = quiet(graph=graph, eta=0.5)
    for i, r in enumerate(rounds):
        raw(metrics(dict(zip(DOMAINS, r, strict=True)), 100 * (i + 1)))
    assert raw.weights_["t"] > mixer.weights_["t"]  # t's raw loss is the largest, not relatively


@pytest.mark.parametrize(
    ("mask", "normalize", "window"), [(None, False, 3), (None, True, 2), ([1], True, 3)]
)
def test_update_equals_the_reference_transcription(mask, normalize, window):
    rng = np.random.default_rng(1)
    k = 4
    graph = rng.uniform(0, 1, size=(k, k)) * (rng.random((k, k)) < 0.5) + np.eye(k)
    prior = rng.dirichlet(np.ones(k))
    losses = list(rng.uniform(1, 5, size=(5, k)))
    cols = list(range(k)) if mask is None else mask
    used = [r[cols] for r in losses]
    got = skillit_weights(prior, graph[:, cols], used, 0.4, window,
                          reduce="sum" if mask is None else "mean",
                          loss0=used[0] if normalize else None)  # fmt: skip
    ref = reference_update(prior, graph[:, cols], used, 0.4, window, mask, normalize, used[0])
    assert got == pytest.approx(ref, rel=1e-12)


def test_initialize_loss_starts_the_history_with_the_mean_first_loss():
    mixer = quiet(graph=PREREQ, eta=0.5, initialize_loss=True, window=3)
    first = {"a": 2.0, "t": 5.0, "b": 2.0}
    mixer(metrics(first, 100))
    assert mixer.losses_ == [[3.0, 3.0, 3.0], [2.0, 5.0, 2.0]]
    A = mixer.graph_.matrix
    expect = np.exp(0.5 * A @ np.array([5.0, 8.0, 5.0]))
    assert mixer.weights_array() == pytest.approx(expect / expect.sum(), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# The graph: inputs, checks, warnings


def test_graph_files_and_forms(tmp_path):
    dense = {"skills": ["t", "b", "a"], "columns": ["a", "t", "b", "target"],
             "matrix": [[0, 1, 0, 0.3], [0, 0, 1, 0], [1, 1, 0, 0.9]]}  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps(dense))
    g = resolve_skills_graph(tmp_path / "g.json", DOMAINS)
    assert g.skills == ("a", "t", "b") and g.columns == ("a", "t", "b", "target")
    assert g.matrix[0].tolist() == [1.0, 1.0, 0.0, 0.9]  # rows reordered (not 0/1: kept)
    # a 0/1 graph's off-diagonal ones weigh 0.5 (the reference's synthetic convention)
    binary = {"skills": DOMAINS, "matrix": [[1, 1, 0], [0, 1, 0], [0, 0, 1]]}
    (tmp_path / "b.json").write_text(json.dumps(binary))
    assert resolve_skills_graph(tmp_path / "b.json", DOMAINS).matrix[0].tolist() == [1, 0.5, 0]
    np.save(tmp_path / "g.npy", np.array([[1.0, 0.5, 0, 0.2], [0, 1, 0, 0], [0, 0, 1, 0]]))
    n = resolve_skills_graph(tmp_path / "g.npy", DOMAINS, has_target=True)
    assert n.columns[-1] == "target" and n.matrix[0, 3] == 0.2
    edges = resolve_skills_graph({"a": {"t": 0.5, "target": 1.0}}, DOMAINS)
    assert edges.columns == ("a", "t", "b", "target") and edges.matrix.sum() == 1.5
    # what the search writes reads back unchanged
    est = SkillsGraph(tuple(DOMAINS), ("a", "t", "b"), np.diag([1.0, 0.4, 0.2]), how="single")
    est.write_json(tmp_path / "est.json")
    back = resolve_skills_graph(tmp_path / "est.json", DOMAINS)
    assert back.matrix.tolist() == est.matrix.tolist()


def test_bad_graphs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"has shape \(2, 2\); expected \(3, 3\)"):
        SkillItMixer(graph=np.eye(2)).fit(TOKENS)
    with pytest.raises(ValueError, match=r"entry \['t', 'a'\] is -0.2; entries must be >= 0"):
        SkillItMixer(graph={"t": {"a": -0.2}}).fit(TOKENS)
    bad = np.eye(3)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"entry \['t', 'b'\] is nan"):
        SkillItMixer(graph=bad).fit(TOKENS)
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=r"skills graph file '.*nope.json' does not exist"):
        SkillItMixer(graph=str(missing)).fit(TOKENS)
    with pytest.raises(ValueError, match=r"names unknown skills \['math'\]"):
        SkillItMixer(graph={"a": {"math": 1.0}}).fit(TOKENS)
    (tmp_path / "u.json").write_text(json.dumps({"skills": ["a", "t", "b", "code"],
                                                 "matrix": np.eye(4).tolist()}))  # fmt: skip
    with pytest.raises(ValueError, match=r"names unknown skills \['code'"):
        SkillItMixer(graph=str(tmp_path / "u.json")).fit(TOKENS)
    (tmp_path / "m.json").write_text(
        json.dumps({"skills": ["a", "t"], "matrix": np.eye(2).tolist()})
    )
    with pytest.raises(ValueError, match=r"lacks rows for domains \['b'\]"):
        SkillItMixer(graph=str(tmp_path / "m.json")).fit(TOKENS)
    with pytest.raises(ValueError, match=r"target_mask names \['target'\], not columns"):
        SkillItMixer(graph=None, target_mask="target").fit(TOKENS)
    with pytest.raises(ValueError, match="window must be an integer >= 1, got 0"):
        SkillItMixer(window=0).fit(TOKENS)
    with pytest.raises(ValueError, match="eta must be finite and >= 0, got -1"):
        SkillItMixer(eta=-1).fit(TOKENS)
    mixer = quiet(graph=PREREQ)
    with pytest.raises(ValueError, match="needs held-out validation losses"):
        mixer(make_metrics(losses={"a": 1.0, "t": 1.0, "b": 1.0}))
    with pytest.raises(ValueError, match=r"validation loss of domain 't' is nan at step 100"):
        mixer(metrics({"a": 1.0, "t": float("nan"), "b": 1.0}))
    with pytest.raises(ValueError, match=r"no validation loss for domain 'b'"):
        mixer(metrics({"a": 1.0, "t": 1.0}))
    assert mixer.n_updates_ == 0 and mixer.losses_ == []


def test_nearly_empty_or_complete_graphs_warn():
    with pytest.warns(UserWarning, match=r"nearly empty: 0 of 6 off-diagonal"):
        SkillItMixer(graph=None).fit(TOKENS)
    with pytest.warns(UserWarning, match=r"nearly complete: 6 of 6 off-diagonal"):
        SkillItMixer(graph=np.ones((3, 3)) * 0.8 + np.eye(3) * 0.2).fit(TOKENS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = SkillItMixer(graph={"a": {"a": 1, "t": 0.5}, "t": {"t": 1, "b": 0.5},
                                "b": {"b": 1}}).fit(TOKENS)  # fmt: skip
    assert m.graph_warning_ is None and graph_density(m.graph_) == (2, 6)


def test_state_dict_round_trip_through_torch_save(tmp_path):
    a = quiet(graph=PREREQ, normalize_loss=True)
    a(metrics({"a": 2.0, "t": 4.0, "b": 3.0}, 100))
    a(metrics({"a": 1.9, "t": 3.5, "b": 2.9}, 200))
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = quiet(graph=PREREQ, normalize_loss=True)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    m = metrics({"a": 1.7, "t": 3.1, "b": 2.8}, 300)
    assert a(m) == b(m)
    assert b.history_ == a.history_ and b.loss0_ == a.loss0_
    prov = a.mixture().provenance
    assert prov["method"] == "skillit" and prov["skills_graph"]["matrix"][0] == [1.0, 0.5, 0.0]


# ---------------------------------------------------------------------------------------------
# The edge test


def planted(seed: int, K: int = 64, n: int = 6000):
    """Three synthetic domains. ``a``: pairs ``x f(x)``; ``t``: half ``a``'s pairs, half pairs
    ``z g(z)`` of its own; ``u``: independent tokens of a range nobody else uses. Training on
    ``a`` teaches half of ``t`` (the planted dependency); ``u`` teaches ``t`` nothing."""
    rng = np.random.default_rng(seed)
    f, g = K + rng.permutation(K), 3 * K + rng.permutation(K)

    def pairs(lo, m, n):
        x = rng.integers(lo, lo + K, n)
        return np.stack([x, m[x - lo]], 1)

    def streams(n):
        t = np.where(rng.random(n)[:, None] < 0.5, pairs(0, f, n), pairs(2 * K, g, n))
        return {"a": pairs(0, f, n).reshape(-1), "t": t.reshape(-1),
                "u": rng.integers(4 * K, 5 * K, 2 * n)}  # fmt: skip

    return streams(n), streams(512), 5 * K


@pytest.mark.parametrize("seed", [0, 1])
def test_single_edge_test_recovers_a_planted_dependency(seed):
    from curamix.proxy.train import ProxyTrainConfig

    train, val, vocab = planted(seed)
    cfg = ProxyTrainConfig(model="nano", vocab_size=vocab, seq_len=32, batch_size=8,
                           total_tokens=4096, lr=3e-3, warmup=0.0, eval_tokens=1024,
                           device="cpu", cpu_threads=1, seed=seed)  # fmt: skip
    g = estimate_skills_graph(cfg, train, val, how="single", warmup_tokens=4096)
    A = dict(zip(g.skills, g.matrix, strict=True))
    a, t = g.columns.index("a"), g.columns.index("t")
    assert g.info["runs"] == 3 and g.info["tokens_per_run"] == 4096
    assert A["a"][t] > 0.3 * A["t"][t] > 0  # training on a lowers t's loss, near t itself
    assert A["t"][a] > 0.3 * A["a"][a]  # t holds a's pairs: the edge back is there too
    assert A["u"][t] < 0.2 * A["a"][t] and A["u"][a] < 0.2 * A["t"][a]  # u helps neither
    assert g.matrix.max() == pytest.approx(1.0) and (g.matrix >= 0).all()
    clipped = np.clip(g.raw, 0, None)
    assert g.matrix == pytest.approx(clipped / clipped.max())  # raw: the decreases in nats


def test_pairwise_edge_test_is_the_reference_comparison(monkeypatch):
    """With a trainer whose losses follow a planted rule, the pairwise estimate is exactly
    ``A[i, j] = L_j({j}) - L_j({i, j})`` (clipped), the diagonal ``L_j(base) - L_j({j})``, the
    target column the single estimate's; the base losses come from the switch point."""
    import curamix.proxy.train as train_mod
    from curamix.proxy.train import ProxyTrainConfig, StepMetrics

    names = ["a", "t", "u"]
    base = {"a": 4.0, "t": 5.0, "u": 4.5, "target": 6.0}
    # per-token benefit of training on row i for column j: a helps t more than t itself
    B = {"a": {"a": 1.0, "t": 0.8, "u": 0.0, "target": 0.3},
         "t": {"a": 0.1, "t": 0.4, "u": 0.0, "target": 0.5},
         "u": {"a": 0.0, "t": 0.0, "u": 0.6, "target": 0.0}}  # fmt: skip
    calls = []

    def fake_train(cfg, train, val, weights, target_tokens=None, hook=None, **kw):
        assert weights == pytest.approx({d: 1 / 3 for d in names})  # the uniform warmup
        m = StepMetrics(step=cfg.update_every, tokens=0, lr=0.0, weights=dict(weights),
                        domain_losses={}, target_loss=None, tokens_seen={}, epochs={},
                        train_loss=0.0)  # fmt: skip
        if hook.needs_val_losses:
            m.val_losses = {d: base[d] for d in names}
            m.val_target_loss = base["target"]
        w = hook(m)
        calls.append(w)
        loss = {c: base[c] - sum(w.get(i, 0.0) * B[i][c] for i in names) for c in base}
        return SimpleNamespace(val_losses={d: loss[d] for d in names}, target_loss=loss["target"])

    monkeypatch.setattr(train_mod, "train_proxy", fake_train)
    cfg = ProxyTrainConfig(model="nano", vocab_size=64, seq_len=8, batch_size=2,
                           total_tokens=64, device="cpu")  # fmt: skip
    streams = {d: np.arange(40) % 64 for d in names}
    g = estimate_skills_graph(cfg, streams, streams, np.arange(40), how="pairwise",
                              warmup_tokens=160, scale=False)  # fmt: skip
    assert len(calls) == 3 + 3  # k singles + k(k-1)/2 pairs
    A = {
        s: dict(zip(g.columns, row, strict=True)) for s, row in zip(g.skills, g.matrix, strict=True)
    }
    assert A["a"]["t"] == pytest.approx(0.5 * (0.8 - 0.4))  # L_t({t}) - L_t({a, t})
    assert A["t"]["a"] == 0.0  # t is a worse teacher of a than a itself: clipped
    assert g.raw[1, 0] == pytest.approx(0.5 * (0.1 - 1.0))
    assert A["u"]["t"] == 0.0 and A["a"]["u"] == 0.0
    assert [A[d][d] for d in names] == pytest.approx([1.0, 0.4, 0.6])  # self-decrease
    assert [A[d]["target"] for d in names] == pytest.approx([0.3, 0.5, 0.0])
    assert g.info["base_losses"] == base and g.info["warmup_tokens"] == 160
    scaled = estimate_skills_graph(cfg, streams, streams, np.arange(40), how="pairwise",
                                   warmup_tokens=160)  # fmt: skip
    assert scaled.matrix == pytest.approx(g.matrix / g.matrix.max())


def test_plot_skills_graph(tmp_path):
    g = resolve_skills_graph(PREREQ, DOMAINS)
    p = plot_skills_graph(g, tmp_path / "g.png")
    assert p.stat().st_size > 2000


# ---------------------------------------------------------------------------------------------
# As the proxy hook and in the search


def test_mixer_as_the_proxy_hook_reads_held_out_losses():
    from curamix.proxy.train import ProxyTrainConfig, train_proxy

    train, val, vocab = planted(0, K=16, n=3000)
    target = val["t"][:600]
    cfg = ProxyTrainConfig(model="nano", vocab_size=vocab, seq_len=32, batch_size=8,
                           total_tokens=8 * 32 * 40, eval_tokens=512, update_every=10,
                           device="cpu", cpu_threads=1, seed=0)  # fmt: skip
    graph = {"a": {"a": 1.0, "target": 0.9}, "t": {"t": 1.0, "target": 0.4}, "u": {"u": 1.0}}
    mixer = SkillItMixer(graph=graph, eta=1.0, target_mask="target").fit(
        DomainStats.from_streams(train)
    )
    res = train_proxy(cfg, train, val, mixer.weights_, target_tokens=target, hook=mixer,
                      progress=False)  # fmt: skip
    assert mixer.n_updates_ == 4 and len(mixer.losses_) == 4
    # the last round's target loss is the final held-out evaluation (same model, same rows)
    assert mixer.losses_[-1][0] == pytest.approx(res.target_loss, rel=1e-6)
    assert mixer.losses_[0][0] > mixer.losses_[-1][0]  # the target loss fell
    w = mixer.weights_
    assert w["a"] > w["t"] > w["u"]  # a helps the target most, u not at all
    assert res.weights == pytest.approx(w)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Three demo domains, 12 documents each, and target texts like the first domain's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curamix.demo import DOMAINS as DEMO
    from curamix.io.store import JobResult

    root = tmp_path_factory.mktemp("pool")
    r = random.Random(0)
    makers = list(DEMO.items())[:3]
    rows = [
        {"id": f"{d}-{i}", "domain": d, "text": make(r)} for d, make in makers for i in range(12)
    ]
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "part-00000.parquet")
    (root / "manifest.json").write_text("{}")
    return JobResult("select", root, {}, skipped=True), [makers[0][1](r) for _ in range(8)]


def test_search_estimates_the_graph_and_publishes_it(pool, tmp_path):
    from curamix.config import MixtureSearchConfig
    from curamix.mixers.search import run_mixture_search, search_key
    from curamix.mixture import Mixture

    res, target = pool
    cfg = MixtureSearchConfig(method="skillit", vocab_size=300, seq_len=32, batch_size=4,
                              total_tokens=128 * 40, update_every=5, eval_tokens=512,
                              checkpoint_every=None)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = run_mixture_search(tmp_path / "run", cfg, res, seed=0, target_texts=target)
    mix = Mixture.read_json(out.path / "mixture.json")
    graph = json.loads((out.path / "skills_graph.json").read_text())
    assert graph["how"] == "single" and graph["columns"][-1] == "target"
    assert graph["info"]["runs"] == 3 and graph["info"]["warmup_tokens"] == 128 * 5
    assert mix.provenance["method"] == "skillit" and mix.provenance["columns"] == ["target"]
    assert mix.provenance["n_updates"] == 8
    assert (out.path / "skills_graph.png").stat().st_size > 2000
    assert "![skills graph](skills_graph.png)" in (out.path / "report.md").read_text()
    manifest = json.loads((out.path / "manifest.json").read_text())
    assert manifest["outputs"]["graph_plot"] == "skills_graph.png"
    # the graph file, reused: no estimate, and its content is in the key
    from_file = cfg.model_copy(update={"skills_graph": str(out.path / "skills_graph.json")})
    assert search_key(from_file, 0, res, "x") != search_key(cfg, 0, res, "x")
    with pytest.raises(ValueError, match=r"mixture.skills_graph '.*missing.json' does not exist"):
        run_mixture_search(tmp_path / "run2",
                           cfg.model_copy(update={"skills_graph": str(tmp_path / "missing.json")}),
                           res, seed=0, target_texts=target)  # fmt: skip
    with pytest.raises(ValueError, match=r"mixture.params.graph='g.json': give a graph file as"):
        run_mixture_search(tmp_path / "run3", cfg.model_copy(update={"params": {"graph": "g.json"}}),
                           res, seed=0, target_texts=target)  # fmt: skip
    # other methods' keys ignore the Skill-it fields
    dga = MixtureSearchConfig(method="dga")
    assert search_key(dga.model_copy(update={"skills_graph_tokens": 99}), 0, res, "x") == (
        search_key(dga, 0, res, "x")
    )
