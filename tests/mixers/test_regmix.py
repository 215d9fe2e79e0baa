"""RegMix: the reference's sampler (prior, temperature, epoch cap), the regression and search,
the regressor chosen by run count with its cross-validated Spearman and visible fallback, and
the held-out ranking on the RegMix paper's real proxy runs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from curamix.mixers import (
    DomainStats,
    RegMixMixer,
    RegressorFallbackWarning,
    choose_regressor,
    cross_val_spearman,
    dirichlet_mixtures,
    epoch_caps,
    fit_mixture_regressor,
    make_regressor,
    mixture_regressor,
)
from curamix.mixers.regressor import fit_estimator
from curamix.mixers.tikmix import TiKMiXMixer
from curamix.scaling_laws.data import REGMIX_PILE_PRIOR
from tests.mixers import assert_valid

TARGET = "metric/the_pile_pile_cc_val_loss"

PILE_PRIOR = REGMIX_PILE_PRIOR


def test_sampler_respects_caps_and_temperature():
    prior = np.array(list(PILE_PRIOR.values()))
    prior = prior / prior.sum()
    caps = np.minimum(1.0, 15 * prior)
    X = dirichlet_mixtures(prior, 20_000, random_state=0, caps=caps)
    assert X.shape == (20_000, 17)
    assert np.allclose(X.sum(1), 1.0) and (X >= 0).all()
    assert (caps + 1e-12 >= X).all()
    # temperature 0.5 flattens the prior: the mean sample gives small domains more than
    # their share (before rejection the mean is exactly the tempered prior)
    free = dirichlet_mixtures(prior, 20_000, random_state=1, caps=None)
    tempered = np.sqrt(prior) / np.sqrt(prior).sum()
    assert free.mean(0) == pytest.approx(tempered, abs=0.01)
    # sparse samples at low concentration, as the reference's (0.1 .. 5)
    assert np.median((X > 1e-3).sum(1)) < 12
    assert np.array_equal(
        dirichlet_mixtures(prior, 50, 7, caps=caps), dirichlet_mixtures(prior, 50, 7, caps=caps)
    )


def test_epoch_caps_and_impossible_budget():
    stats = DomainStats({"a": 100.0, "b": 300.0}, total_tokens=500.0)
    assert epoch_caps(stats, 2.0) == pytest.approx([0.4, 1.0])
    assert epoch_caps(stats, None) == pytest.approx([1.0, 1.0])
    # without a budget the pool itself is the budget (the reference: cap = 15 * share)
    assert epoch_caps(DomainStats({"a": 1.0, "b": 39.0}), 15.0) == pytest.approx([0.375, 1.0])
    with pytest.raises(ValueError, match="within 2 epochs per domain"):
        epoch_caps(DomainStats({"a": 100.0, "b": 300.0}, total_tokens=1000.0), 2.0)


def test_fit_proposes_the_known_optimum_on_synthetic_runs():
    rng = np.random.default_rng(0)
    domains = ["a", "b", "c", "d"]
    stats = DomainStats(dict.fromkeys(domains, 1e6))
    best = np.array([0.1, 0.5, 0.3, 0.1])

    def loss(R):
        return 2.0 + np.square(R - best).sum(1)

    mixer = RegMixMixer(n_candidates=20_000, top_k=64, max_iter=300, learning_rate=0.05)
    R = mixer.sample_mixtures(stats, 400)
    assert R.shape == (400, 4)
    mixer.fit(stats, R, loss(R) + rng.normal(0, 1e-3, len(R)), target="synthetic")
    assert_valid(mixer.weights_, domains)
    assert np.abs(mixer.weights_array() - best).max() < 0.1
    assert mixer.predicted_loss_ < np.median(loss(R))
    assert mixer.score(R[:100], loss(R[:100])) > 0.9
    mix = mixer.mixture()
    p = mix.provenance
    assert p["method"] == "regmix" and p["proxy_runs"]["n_runs"] == 400
    assert p["predicted_loss"] == pytest.approx(mixer.predicted_loss_)
    assert p["target"] == "synthetic" and p["seed"] == 0


@pytest.mark.filterwarnings("ignore::curamix.mixers.regressor.RegressorFallbackWarning")
def test_bad_runs_are_named():
    stats = DomainStats({"a": 1e6, "b": 1e6})
    R = np.array([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0], [0.7, 0.3]])
    m = RegMixMixer(n_candidates=200, top_k=4, max_iter=5)
    with pytest.raises(ValueError, match="loss of run 1 is nan"):
        m.fit(stats, R, [1.0, float("nan"), 2.0, 3.0])
    with pytest.raises(ValueError, match="loss of run 3 is inf"):
        m.fit(stats, R, [1.0, 2.0, 3.0, float("inf")])
    with pytest.raises(ValueError, match=r"run 2 sums to 0\.9"):
        m.fit(stats, np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.0], [0.7, 0.3]]), [1, 2, 3, 4])
    with pytest.raises(ValueError, match="run 0 has a negative"):
        m.fit(stats, np.array([[1.5, -0.5], [0.2, 0.8], [1.0, 0.0], [0.7, 0.3]]), [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"run 0 names unknown domains \['c'\]"):
        m.fit(stats, [{"a": 0.5, "c": 0.5}, {"a": 1.0}], [1, 2])
    # fewer runs than the regressor can be fitted and cross-validated on: the count is named
    with pytest.raises(ValueError, match="need at least 4 proxy runs, got 3"):
        m.fit(stats, R[:3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"all 4 runs have the same score 2\.0"):
        m.fit(stats, R, [2.0, 2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="fallback must be one of"):
        RegMixMixer(fallback="mean").fit(stats, R, [1, 2, 3, 4])
    with pytest.warns(UserWarning, match="renormalised 1 runs"):
        m.fit(stats, np.array([[0.5, 0.5], [0.2, 0.803], [1.0, 0.0], [0.7, 0.3]]), [1, 2, 3, 4])


def test_choose_regressor_by_run_count():
    """The documented thresholds; below 4 runs a ValueError names the count."""
    assert [choose_regressor(n) for n in (4, 8, 16, 63, 64, 512, 1024, 1025)] == [
        "ridge", "ridge", "ridge", "ridge", "gp", "gp", "gp", "hgb",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"at least 4 proxy runs .* got 3"):
        choose_regressor(3)
    with pytest.raises(ValueError, match=r"at least 4 proxy runs .* got 2"):
        make_regressor("hgb", 2)
    with pytest.raises(ValueError, match=r"regressor must be one of .* got 'lgbm'"):
        make_regressor("lgbm", 16)
    # the reference's trees keep scikit-learn's leaf of 20 (no split below 40 runs); the
    # rule's trees scale the leaf with the runs
    assert mixture_regressor().get_params()["min_samples_leaf"] == 20
    assert make_regressor("hgb", 16).get_params()["min_samples_leaf"] == 2
    assert make_regressor("hgb", 5000).get_params()["min_samples_leaf"] == 20


def test_cv_spearman_of_a_mean_predictor_is_zero_not_minus_one():
    """Plain leave-one-out scores a training-mean predictor at Spearman -1; the contrast with
    each fold's training mean makes it 0 (p = 1), so it can never pass the check."""
    from sklearn.dummy import DummyRegressor

    rng = np.random.default_rng(0)
    X = rng.dirichlet(np.ones(3), 12)
    y = rng.normal(size=12)
    cv = cross_val_spearman(DummyRegressor(), X, y)
    assert (cv["spearman"], cv["pvalue"], cv["folds"]) == (0.0, 1.0, "leave-one-out")
    assert cv["rmse"] == pytest.approx(cv["rmse_mean"])
    # a real signal is significant, and K-fold from 64 runs on
    X = rng.dirichlet(np.ones(3), 64)
    y = 2.0 + X[:, 0] + rng.normal(0, 0.01, 64)
    fit = fit_mixture_regressor(X, y)
    assert fit.kind == "gp" and fit.cv_folds == "5-fold"
    assert fit.cv_spearman > 0.9 and fit.significant and fit.cv_rmse < fit.cv_rmse_mean


def test_pure_noise_losses_fall_back_visibly(tmp_path):
    """Random losses: the CV Spearman is not significant, so the mixer warns, names the
    figure in provenance, and returns the best observed run (or the prior mean, or says it
    kept the proposal)."""
    domains = ["a", "b", "c", "d"]
    stats = DomainStats(dict.fromkeys(domains, 1e6))
    mixer = RegMixMixer(n_candidates=2000, top_k=16, random_state=0)
    R = mixer.sample_mixtures(stats, 24)
    y = np.random.default_rng(3).normal(3.0, 0.1, 24)
    with pytest.warns(RegressorFallbackWarning, match=r"CV Spearman over 24 runs is -?0\.\d+"):
        mixer.fit(stats, R, y, target="noise")
    fb = mixer.fallback_
    assert fb is not None and fb["returned"] == "best_run" and fb["run"] == int(np.argmin(y))
    assert fb["cv_pvalue"] >= 0.01 and "not significantly above 0" in fb["reason"]
    assert mixer.weights_array() == pytest.approx(R[np.argmin(y)])
    assert mixer.cv_spearman_ == fb["cv_spearman"]
    assert_valid(mixer.weights_, domains)
    # the artifact carries it (search.py writes this provenance to RUN/mixture-*/mixture.json)
    path = mixer.mixture().write_json(tmp_path / "mixture.json")
    prov = json.loads(path.read_text())["provenance"]
    assert prov["fallback"]["reason"] == fb["reason"]
    assert prov["regressor"]["kind"] == "ridge" and prov["regressor"]["n_runs"] == 24
    assert prov["regressor"]["cv_spearman"] == pytest.approx(fb["cv_spearman"])
    with pytest.warns(RegressorFallbackWarning, match="prior mean"):
        prior = RegMixMixer(n_candidates=2000, top_k=16, fallback="prior").fit(stats, R, y)
    cand = dirichlet_mixtures(stats.shares(), 2000, np.random.default_rng([0, 2]),
                              caps=epoch_caps(stats, 15.0))  # fmt: skip
    assert prior.weights_array() == pytest.approx(cand.mean(0))
    with pytest.warns(RegressorFallbackWarning, match="proposal anyway"):
        kept = RegMixMixer(n_candidates=2000, top_k=16, fallback="none").fit(stats, R, y)
    assert kept.weights_ == kept.proposal_ and kept.fallback_["returned"] == "none"


def _pile_runs(shared_data):
    from curamix.scaling_laws.data import read_regmix

    d = shared_data / "scaling" / "regmix"
    R, y, cols = read_regmix(d / "train_mixture_1m.csv", d / "train_pile_loss_1m.csv", TARGET)
    Rt, yt, _ = read_regmix(
        d / "test_mixture_1m.csv", d / "test_pile_loss_1m.csv", TARGET, cols
    )  # fmt: skip
    # rounded weights (rows sum to 1 within 0.004): renormalise here, once
    return R / R.sum(1, keepdims=True), y, Rt / Rt.sum(1, keepdims=True), yt, cols


@pytest.mark.realdata
def test_regmix_at_16_and_8_real_runs(shared_data):
    """16 of RegMix's real runs: the old trees predict a constant; the chosen regressor ranks
    the held-out runs, reports its CV Spearman and is used. 8 runs: here the CV cannot vouch
    for the regressor, and the fallback is in the warning and the provenance."""
    from scipy.stats import spearmanr

    R, y, Rt, yt, cols = _pile_runs(shared_data)
    stats = DomainStats(PILE_PRIOR)
    idx = np.random.default_rng(0).choice(len(R), 16, replace=False)
    old = fit_estimator(mixture_regressor(), R[idx], y[idx])  # the old default: no split
    assert np.ptp(old.predict(Rt)) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegressorFallbackWarning)
        mixer = RegMixMixer(n_candidates=5000, top_k=16).fit(stats, R[idx], y[idx], TARGET)
    pred = mixer.predict(Rt)
    assert np.ptp(pred) > 0.05 and np.ptp(mixer.top_k_losses_) > 0
    assert spearmanr(pred, yt)[0] > 0.7  # held-out 1M runs
    prov = mixer.mixture().provenance
    assert prov["fallback"] is None and prov["regressor"]["kind"] == "ridge"
    assert prov["regressor"]["cv_folds"] == "leave-one-out"
    assert prov["regressor"]["cv_spearman"] == pytest.approx(mixer.cv_spearman_)
    assert mixer.cv_spearman_ > 0.5 and prov["regressor"]["cv_pvalue"] < 0.01
    assert mixer.weights_ == mixer.proposal_
    # the proposal: more Pile-CC than the prior, and a held-out run near it beats the prior's
    w = mixer.weights_array()
    assert w[cols.index("train_the_pile_pile_cc")] > 0.5
    nearest = yt[np.argmin(np.abs(Rt - w).sum(1))]
    prior = stats.shares() ** 0.5 / (stats.shares() ** 0.5).sum()
    assert nearest < yt[np.argmin(np.abs(Rt - prior).sum(1))]

    idx8 = np.random.default_rng(0).choice(len(R), 8, replace=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RegressorFallbackWarning)
        m8 = RegMixMixer(n_candidates=5000, top_k=16).fit(stats, R[idx8], y[idx8], TARGET)
    p8 = m8.mixture().provenance
    assert p8["regressor"]["n_runs"] == 8 and p8["regressor"]["kind"] == "ridge"
    assert np.isfinite(p8["regressor"]["cv_spearman"])
    warned = [str(c.message) for c in caught if c.category is RegressorFallbackWarning]
    # on this subset (6 of the bench's 10 at 8 runs) the CV cannot show a ranking: the mixer
    # says so, names the figure, and returns the best of the 8 runs
    assert len(warned) == 1 and p8["fallback"] is not None
    assert f"CV Spearman over 8 runs is {m8.cv_spearman_:.3f}" in p8["fallback"]["reason"]
    assert p8["fallback"]["reason"] in warned[0] and p8["regressor"]["cv_pvalue"] >= 0.01
    assert m8.weights_array() == pytest.approx(R[idx8][np.argmin(y[idx8])])
    assert p8["fallback"]["observed_loss"] == pytest.approx(y[idx8].min())
    assert p8["fallback"]["regressor_proposal"] == m8.proposal_ != m8.weights_


@pytest.mark.realdata
@pytest.mark.slow
def test_regmix_ranks_held_out_pile_runs(shared_data):
    """Fit on the 512 1M-parameter runs; rank held-out mixtures at 1M, 60M and 1B."""
    from curamix.scaling_laws.data import read_regmix

    d = shared_data / "scaling" / "regmix"
    R, y, cols = read_regmix(d / "train_mixture_1m.csv", d / "train_pile_loss_1m.csv", TARGET)
    assert cols == list(PILE_PRIOR) and len(R) == 512
    stats = DomainStats(PILE_PRIOR, inputs={"runs": "sail-sg/regmix data/ (1M proxies)"})
    with pytest.warns(UserWarning, match="renormalised"):  # rows sum to 1 within 0.004
        mixer = RegMixMixer(n_candidates=100_000, top_k=128, random_state=0).fit(
            stats, R, y, target=TARGET
        )
    rho = {}
    for scale in ("1m", "60m", "1B"):
        Rt, yt, _ = read_regmix(
            d / f"test_mixture_{scale}.csv", d / f"test_pile_loss_{scale}.csv", TARGET, cols
        )
        with pytest.warns(UserWarning, match="renormalised"):
            rho[scale] = mixer.score(Rt, yt)
    print("RegMix Spearman:", {k: round(v, 4) for k, v in rho.items()})
    assert rho["1m"] >= 0.97
    assert rho["1B"] >= 0.95
    assert rho["60m"] >= 0.95
    # 512 runs: the rule's Gaussian process, cross-validated; TiKMiX-M chooses its regressor
    # with the same rule and defaults, so the bar holds for it by construction
    assert mixer.regressor_fit_.kind == "gp" and mixer.fallback_ is None
    assert mixer.cv_spearman_ > 0.95
    t = TiKMiXMixer()
    assert (t.max_iter, t.learning_rate, t.regressor) == (
        mixer.max_iter, mixer.learning_rate, mixer.regressor
    )  # fmt: skip
    assert mixture_regressor().get_params()["max_iter"] == 1000
    # the proposed mixture: valid, within the 15-epoch caps, predicted better than every run
    w = mixer.weights_array()
    assert_valid(mixer.weights_, cols)
    assert (w <= 15 * np.array(list(PILE_PRIOR.values())) / sum(PILE_PRIOR.values()) + 1e-9).all()
    assert mixer.predicted_loss_ < y.min() + 0.05
    top = sorted(mixer.weights_.items(), key=lambda kv: -kv[1])[:5]
    print("RegMix proposal:", [(k.removeprefix("train_the_pile_"), round(v, 3)) for k, v in top],
          "predicted", round(mixer.predicted_loss_, 4), "best run", round(float(y.min()), 4))  # fmt: skip
    assert top[0][0] == "train_the_pile_pile_cc"  # the target's own domain leads
