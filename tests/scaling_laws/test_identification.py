"""Fits prove they are identified before a decision uses them; decisions carry bootstrap
intervals and extrapolation factors, name their fallback, never size a model below the
smallest proxy, and never read a domain past the epoch cap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curamix.mixture import Mixture
from curamix.scaling_laws import ChinchillaLaw, ScalingLawFitError
from curamix.scaling_laws._base import UnidentifiedFitError
from curamix.scaling_laws.chinchilla import chinchilla_loss, optimal_allocation
from curamix.scaling_laws.decide import CHINCHILLA_PUBLISHED, recommend
from curamix.scaling_laws.fit import fit_table, load_fits

TRUTH = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.28}
SIZES = (1e6, 3e6, 1e7, 3e7)
BUDGETS = (1e8, 3e8, 1e9, 3e9)


def _runs(sizes=SIZES, budgets=BUDGETS, seed: int = 0, **truth):
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(sizes, budgets, indexing="ij"))
    L = chinchilla_loss(N, D, **{**TRUTH, **truth}) * np.exp(rng.normal(0, 0.002, N.size))
    return N, D, L


@pytest.fixture(scope="module")
def identified():
    """A 4 x 4 sweep of the law with 0.2% noise, bootstrapped: identified."""
    law = ChinchillaLaw().fit(*_runs())
    law.bootstrap(n_boot=100, random_state=0, level=0.9)
    law.identify()
    return law


@pytest.fixture(scope="module")
def two_sizes():
    """Two model sizes only: fitted, bootstrapped, not identified."""
    law = ChinchillaLaw().fit(*_runs(sizes=(1e6, 3e7)))
    law.bootstrap(n_boot=50, random_state=0)
    law.identify()
    return law


def test_identified_fit_reports_intervals_widths_and_counts(identified):
    ident = identified.identification_
    assert ident.identified and ident.reasons == ()
    assert ident.distinct == {"N": 4, "D": 4} and ident.at_bounds == ()
    assert ident.ci_level == 0.9 and ident.n_boot == 100 == identified.params_boot_.shape[0]
    for k, (lo, hi) in identified.params_ci_.items():
        est = identified.params_[k]
        assert lo < est < hi, (k, lo, est, hi)
        assert ident.rel_width[k] == pytest.approx((hi - lo) / abs(est))
        # the interval is the percentile interval of the draws, not a restated estimate
        col = identified.params_boot_[:, list(identified.params_).index(k)]
        assert (lo, hi) == pytest.approx(tuple(np.percentile(col, [5, 95])))
    assert ident.decades["B"] == pytest.approx(
        np.log10(np.divide(*identified.params_ci_["B"][::-1]))
    )


def test_without_bootstrap_nothing_is_shown():
    law = ChinchillaLaw().fit(*_runs())
    ident = law.identify()
    assert not ident.identified
    assert ident.reasons == ("no bootstrap intervals (n_boot = 0): identifiability not shown",)


def test_too_few_sizes_and_a_term_without_effect_are_not_identified(two_sizes):
    reasons = two_sizes.identification_.reasons
    assert any(r.startswith("only 2 distinct N values (1e+06, 3e+07)") for r in reasons), reasons
    # A model-size term 1e-9 of the loss: the runs say nothing about A or alpha.
    law = ChinchillaLaw().fit(*_runs(A=1e-9))
    law.bootstrap(n_boot=30, random_state=0)
    ident = law.identify()
    assert not ident.identified
    assert all(r.startswith("alpha") for r in ident.reasons), ident.reasons


def test_recommendation_carries_intervals_and_extrapolation(identified):
    C = 1e19
    rec = recommend(C, chinchilla=identified)
    assert rec.size_source.startswith("fitted ChinchillaLaw (identified: 4 model sizes x 4")
    assert rec.fallback_reason is None and rec.identification["identified"]
    assert rec.ci_level == 0.9
    for key, point in (("n_params", rec.n_params), ("n_tokens", rec.n_tokens),
                       ("predicted_loss", rec.predicted_loss)):  # fmt: skip
        lo, hi = rec.intervals[key]
        assert lo < point < hi, (key, lo, point, hi)
    # The N interval is the percentile interval of N_opt over the bootstrap draws.
    _, A, B, al, be = identified.params_boot_.T
    n_draws, _ = optimal_allocation(C, A, B, al, be)
    assert rec.intervals["n_params"] == pytest.approx(list(np.percentile(n_draws, [5, 95])))
    # Extrapolation factors from the largest run kept in the fit (N 3e7, D 3e9, C 6*3e7*3e9).
    ex = rec.extrapolation
    assert ex["n_params"] == pytest.approx(rec.n_params / 3e7)
    assert ex["tokens"] == pytest.approx(rec.n_tokens / 3e9)
    assert ex["compute"] == pytest.approx(C / (6 * 3e7 * 3e9))
    assert any(n.startswith("extrapolation from the largest proxy run") for n in rec.notes)


def test_an_unidentified_fit_is_refused_or_replaced_by_published_constants(two_sizes):
    C = 1e21
    with pytest.raises(UnidentifiedFitError, match=r"refusing to size a model from it: .*only 2 "
                       r"distinct N values.*scaling.allow_fallback"):  # fmt: skip
        recommend(C, chinchilla=two_sizes, allow_fallback=False)
    rec = recommend(C, chinchilla=two_sizes)
    published = ChinchillaLaw.from_params(CHINCHILLA_PUBLISHED).compute_optimal(C)
    assert (rec.n_params, rec.n_tokens) == pytest.approx(published)
    assert rec.size_source.startswith("published Chinchilla constants (Hoffmann et al. 2022")
    assert "fallback: fit not identified" in rec.size_source
    assert "only 2 distinct N values" in rec.fallback_reason
    assert not rec.identification["identified"]
    assert rec.intervals is None and rec.predicted_loss is None
    assert any("not identified" in n and "published" in n for n in rec.notes)


def test_never_below_the_smallest_proxy(identified, two_sizes):
    C = 1e14  # N_opt ~ 1e5 by the fitted law, below the 1e6-parameter smallest proxy
    n_raw, _ = identified.compute_optimal(C)
    assert n_raw < 1e6
    rec = recommend(C, chinchilla=identified)
    assert rec.n_params == 1e6 and rec.n_tokens == pytest.approx(C / 6e6)
    assert rec.intervals["n_params"][0] >= 1e6 and rec.min_params == 1e6
    assert any("below the smallest proxy run" in n for n in rec.notes)
    # The published fallback is floored at the rejected fit's smallest proxy too.
    assert ChinchillaLaw.from_params(CHINCHILLA_PUBLISHED).compute_optimal(1e12)[0] < 1e6
    assert recommend(1e12, chinchilla=two_sizes).n_params == 1e6


def test_epoch_cap_and_data_limit():
    base = Mixture(
        {"web": 0.5, "code": 0.3, "math": 0.2},
        domain_tokens={"web": 1e12, "code": 1e9, "math": 1e12},
        provenance={"method": "dga", "seed": None, "history": [1, 2]},
    )
    rec = recommend(1e21, base_mixture=base, max_epochs=4.0)
    m = rec.mixture
    assert m.total_tokens == pytest.approx(rec.n_tokens)
    epochs = m.epochs()
    assert max(epochs.values()) <= 4.0 + 1e-9 and epochs["code"] == pytest.approx(4.0)
    # code is capped; web and math keep their ratio (the excess is spread in proportion).
    assert m.weights["web"] / m.weights["math"] == pytest.approx(2.5)
    assert m.provenance["method"] == "dga" and m.provenance["max_epochs"] == 4.0
    assert "history" not in m.provenance
    assert any(n.startswith("epoch cap (4 per domain") and "code would be read" in n
               for n in rec.notes)  # fmt: skip
    assert rec.mixture_source == "dga weights, re-spread within 4 epochs per domain"
    # Too few unique tokens for D_opt: D is capped at 4 epochs of everything.
    small = Mixture(base.weights, domain_tokens={"web": 1e9, "code": 1e9, "math": 1e9})
    rec = recommend(1e21, base_mixture=small, max_epochs=4.0)
    assert rec.n_tokens == pytest.approx(1.2e10)
    assert max(rec.mixture.epochs().values()) <= 4.0 + 1e-9
    assert any(n.startswith("data-limited") for n in rec.notes)


def test_fits_json_keeps_the_verdict_and_the_draws(tmp_path):
    N, D, L = _runs()
    df = pd.DataFrame({"n_params": N, "tokens": D, "loss": L})
    fits = fit_table(df, tmp_path, n_boot=60, holdout=None)
    chin = fits["chinchilla"]
    assert chin["identification"]["identified"] and chin["ci_level"] == 0.9
    assert len(chin["bootstrap"]["draws"]) == chin["bootstrap"]["n_ok"] == 60
    assert chin["fit_range"]["n_params"] == [1e6, 3e7]
    loaded = load_fits(tmp_path)["chinchilla"]
    assert loaded.identification_.identified and loaded.params_boot_.shape == (60, 5)
    a = recommend(1e19, chinchilla=loaded)
    law = ChinchillaLaw().fit(N, D, L)
    law.bootstrap(n_boot=60, random_state=0)
    b = recommend(1e19, chinchilla=law)
    assert a.n_params == pytest.approx(b.n_params)
    for k, v in a.intervals.items():
        assert v == pytest.approx(b.intervals[k])


def test_bad_input_is_named(tmp_path):
    N, D, L = _runs()
    df = pd.DataFrame({"n_params": N, "tokens": D, "loss": L})
    nan = df.copy()
    nan.loc[7, "loss"] = np.nan
    with pytest.raises(
        ValueError, match=r"row 7 .*: loss = NaN/missing is not a finite number > 0"
    ):
        fit_table(nan, tmp_path / "a", n_boot=0)
    with pytest.raises(ScalingLawFitError, match=r"N has one distinct value \(1e\+06\)"):
        fit_table(df.assign(n_params=1e6), tmp_path / "b", n_boot=0, holdout=None)
    with pytest.raises(ScalingLawFitError, match=r"5 parameters .* needs more runs .*; got 4"):
        fit_table(df.iloc[[0, 5, 10, 15]], tmp_path / "c", n_boot=0, holdout=None)
    with pytest.raises(ValueError, match="compute must be finite and > 0 FLOPs, got nan"):
        recommend(float("nan"))
