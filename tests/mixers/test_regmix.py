"""RegMix: the reference's sampler (prior, temperature, epoch cap), the regression and search,
and the held-out ranking on the RegMix paper's real proxy runs."""

from __future__ import annotations

import numpy as np
import pytest

from curamix.mixers import (
    DomainStats,
    RegMixMixer,
    dirichlet_mixtures,
    epoch_caps,
    mixture_regressor,
)
from curamix.mixers.tikmix import TiKMiXMixer
from tests.mixers import assert_valid

TARGET = "metric/the_pile_pile_cc_val_loss"

# Token shares of the 17 Pile domains under RegMix's tokenizer: the prior of the reference's
# sampler (sail-sg/regmix, mixture_config/synthesize_mixture.py, get_token_distribution).
PILE_PRIOR = {
    "train_the_pile_arxiv": 0.113285273,
    "train_the_pile_freelaw": 0.079608651,
    "train_the_pile_nih_exporter": 0.003913491,
    "train_the_pile_pubmed_central": 0.185375901,
    "train_the_pile_wikipedia_en": 0.051081359,
    "train_the_pile_dm_mathematics": 0.015962925,
    "train_the_pile_github": 0.101750772,
    "train_the_pile_philpapers": 0.003707518,
    "train_the_pile_stackexchange": 0.066529351,
    "train_the_pile_enron_emails": 0.001750772,
    "train_the_pile_gutenberg_pg_19": 0.027085479,
    "train_the_pile_pile_cc": 0.236869207,
    "train_the_pile_ubuntu_irc": 0.01184346,
    "train_the_pile_europarl": 0.007929969,
    "train_the_pile_hackernews": 0.008032956,
    "train_the_pile_pubmed_abstracts": 0.038825953,
    "train_the_pile_uspto_backgrounds": 0.046446962,
}


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


def test_bad_runs_are_named():
    stats = DomainStats({"a": 1e6, "b": 1e6})
    R = np.array([[0.5, 0.5], [0.2, 0.8], [1.0, 0.0]])
    m = RegMixMixer(n_candidates=200, top_k=4, max_iter=5)
    with pytest.raises(ValueError, match="loss of run 1 is nan"):
        m.fit(stats, R, [1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match=r"run 2 sums to 0\.9"):
        m.fit(stats, np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.0]]), [1, 2, 3])
    with pytest.raises(ValueError, match="run 0 has a negative"):
        m.fit(stats, np.array([[1.5, -0.5], [0.2, 0.8], [1.0, 0.0]]), [1, 2, 3])
    with pytest.raises(ValueError, match=r"run 0 names unknown domains \['c'\]"):
        m.fit(stats, [{"a": 0.5, "c": 0.5}, {"a": 1.0}], [1, 2])
    with pytest.warns(UserWarning, match="renormalised 1 runs"):
        m.fit(stats, np.array([[0.5, 0.5], [0.2, 0.803], [1.0, 0.0]]), [1, 2, 3])


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
    # TiKMiX-M fits the same regressor (same defaults): the bar holds for it by construction
    t = TiKMiXMixer()
    assert (t.max_iter, t.learning_rate) == (mixer.max_iter, mixer.learning_rate)
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
