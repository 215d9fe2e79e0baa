"""Decisions for a compute budget, the fit report, and the `fit` / `recommend` commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from curamix.cli import app
from curamix.scaling_laws import MixingLaw, Pool, ScalingLawFitError
from curamix.scaling_laws._base import UnidentifiedFitError
from curamix.scaling_laws.chinchilla import chinchilla_loss
from curamix.scaling_laws.decide import betr_keep_percent, recommend
from curamix.scaling_laws.fit import fit_table, load_fits

TRUTH = {"E": 1.7, "A": 400.0, "B": 1500.0, "alpha": 0.34, "beta": 0.28}


def _sweep_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for n in (1e6, 3e6, 1e7, 3e7):
        for d in (1e8, 3e8, 1e9, 3e9):
            w = rng.dirichlet(np.ones(3))
            loss = chinchilla_loss(n, d, **TRUTH) * np.exp(rng.normal(0, 0.002))
            rows.append({"n_params": n, "tokens": d, "loss": loss,
                         **{f"w:{k}": v for k, v in zip("abc", w, strict=True)}})  # fmt: skip
    return pd.DataFrame(rows)


def _mixing_table(seed: int = 0, n: int = 40) -> pd.DataFrame:
    """Runs at one size whose loss depends on the mixture: ``2 + exp(r . t)``."""
    rng = np.random.default_rng(seed)
    R = rng.dirichlet(np.ones(3), size=n)
    loss = 2.0 + np.exp(R @ np.array([-2.0, 0.5, 0.3])) + rng.normal(0, 0.002, n)
    return pd.DataFrame({"loss": loss, **{f"w:{k}": R[:, j] for j, k in enumerate("abc")}})


def test_betr_rule_and_defaults():
    assert betr_keep_percent(1e21) == pytest.approx(4e-5 * 1e21**0.25)
    assert betr_keep_percent(1e40) == 100.0
    with pytest.raises(ValueError, match="compute"):
        betr_keep_percent(-1.0)
    rec = recommend(1e21)
    assert 6 * rec.n_params * rec.n_tokens == pytest.approx(1e21)
    assert "published" in rec.size_source and "BETR" in rec.keep_fraction_source
    assert rec.mixture is None


def test_recommend_uses_filtering_and_mixing_laws_with_caps():
    rng = np.random.default_rng(0)
    R = rng.dirichlet(np.ones(3), size=80)
    t = np.array([-2.0, 0.5, 0.3])
    law = MixingLaw(random_state=0).fit(R, 2.0 + np.exp(R @ t), domains=["a", "b", "c"])
    # Without a bootstrap nothing shows the law is identified: it is not used.
    with pytest.raises(UnidentifiedFitError, match="mixing law is not identified: no bootstrap"):
        recommend(1e17, mixing=law, allow_fallback=False)
    assert recommend(1e17, mixing=law).mixture is None
    law.bootstrap(n_boot=20, random_state=0)
    assert law.identify().identified
    pools = {0.1: Pool(1e9, 3.0, -0.27, 0.1, 0.5), 0.4: Pool(4e9, 3.0, -0.25, 0.1, 0.5)}
    rec = recommend(1e17, filtering_pools=pools, mixing=law, upsample=["b"])
    assert rec.keep_fraction in (0.1, 0.4) and "data-filtering" in rec.keep_fraction_source
    assert rec.mixture.weights["a"] > 0.9  # the law's optimum: domain a lowers the loss
    assert rec.mixture.schedule[0].start == pytest.approx(0.85)
    # Domain a has few unique tokens: the 4-epoch cap binds and the mixture respects it.
    d_opt = rec.n_tokens
    capped = recommend(
        1e17, mixing=law, domain_tokens={"a": 0.05 * d_opt / 4, "b": 1e30, "c": 1e30}
    )
    assert capped.mixture.weights["a"] <= 0.05 + 1e-6
    assert max(capped.mixture.epochs().values()) <= 4.0 + 1e-6
    assert any("caps" in n for n in capped.notes)


def test_fit_table_report_and_holdout(tmp_path):
    df = _sweep_table()
    fits = fit_table(df, tmp_path, laws=("chinchilla", "mixing"), n_boot=30)
    held = fits["chinchilla"]["heldout"]
    assert len(held) == 1 and held[0]["n_params"] == 3e7 and held[0]["tokens"] == 3e9
    assert abs(held[0]["rel_error"]) < 0.01
    assert fits["chinchilla"]["warnings"] == []
    assert (tmp_path / "chinchilla.png").stat().st_size > 10_000
    assert (tmp_path / "mixing.png").stat().st_size > 10_000
    # The loss does not depend on the mixture here: the mixing law is (rightly) not identified.
    assert not fits["mixing"]["identification"]["identified"]
    assert fits["mixing"]["warnings"] == fits["mixing"]["identification"]["reasons"] != []
    report = (tmp_path / "report.md").read_text()
    assert "Held out" in report and "90% interval" in report and "**Identified**" in report
    assert "**Not identified**" in report  # the mixing law's verdict
    laws = load_fits(tmp_path)
    assert laws["chinchilla"].params_["alpha"] == pytest.approx(
        fits["chinchilla"]["params"]["alpha"]
    )
    assert laws["mixing"].domains_ == ["a", "b", "c"]


def test_fit_table_takes_polars_and_reports_sklearn_errors(tmp_path):
    import polars as pl
    from sklearn.metrics import mean_absolute_percentage_error

    from curamix.scaling_laws.fit import holdout_largest

    df = _sweep_table()
    a = fit_table(df, tmp_path / "pd", laws=("chinchilla", "mixing"), n_boot=10)
    b = fit_table(pl.from_pandas(df), tmp_path / "pl", laws=("chinchilla", "mixing"), n_boot=10)
    assert a == b
    assert (tmp_path / "pd" / "report.md").read_text() == (
        tmp_path / "pl" / "report.md"
    ).read_text()
    # The fitted runs' error is sklearn's mean absolute percentage error of the law.
    held = holdout_largest(df)
    assert held.tolist() == holdout_largest(pl.from_pandas(df)).tolist() and held.sum() == 1
    law = load_fits(tmp_path / "pd")["chinchilla"]
    train = df[~held]
    pred = law.predict(train["n_params"].to_numpy(), train["tokens"].to_numpy())
    assert a["chinchilla"]["train_mean_abs_rel_error"] == pytest.approx(
        mean_absolute_percentage_error(train["loss"], pred), rel=1e-9
    )


def test_degenerate_fits_are_refused_or_flagged(tmp_path):
    df = _sweep_table()
    # One token budget: the data term cannot be fitted at all; the error names the value.
    one = df[df["tokens"] == 1e9]
    with pytest.raises(ScalingLawFitError, match=r"D has one distinct value \(1e\+09\)"):
        fit_table(one, tmp_path / "one", n_boot=10, holdout=None)
    # Two budgets: fitted, but not identified, and the report says why.
    two = df[df["tokens"].isin([1e8, 3e9])]
    fits = fit_table(two, tmp_path / "two", n_boot=30, holdout=None)
    ident = fits["chinchilla"]["identification"]
    assert not ident["identified"] and ident["distinct"] == {"N": 4, "D": 2}
    assert any("only 2 distinct D values" in r for r in ident["reasons"]), ident["reasons"]
    assert "**Not identified**" in (tmp_path / "two" / "report.md").read_text()


def test_cli_fit_and_recommend(tmp_path):
    table = tmp_path / "results.csv"
    _sweep_table().to_csv(table, index=False)
    runner = CliRunner()
    res = runner.invoke(app, ["fit", str(table), "--n-boot", "30"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "held-out" in out and "chinchilla: identified" in out and "90% bootstrap" in out
    rec_path = tmp_path / "rec.json"
    res = runner.invoke(app, ["recommend", "--compute", "1e21", "--fits", str(tmp_path / "fits"),
                              "--out", str(rec_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rec = json.loads(rec_path.read_text())
    assert rec["compute"] == 1e21 and rec["identification"]["identified"]
    assert "fitted ChinchillaLaw" in rec["size_source"] and rec["fallback_reason"] is None
    lo, hi = rec["intervals"]["n_params"]
    assert lo <= rec["n_params"] <= hi and f"[{lo:.4g} - {hi:.4g}]" in res.output
    # The mixing law on runs whose loss depends on the mixture: the mixture, with upsampling.
    mix_table = tmp_path / "mix.csv"
    _mixing_table().to_csv(mix_table, index=False)
    res = runner.invoke(app, ["fit", str(mix_table), "--law", "mixing", "-o",
                              str(tmp_path / "mixfits"), "--n-boot", "20"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", "--compute", "1e21", "--fits",
                              str(tmp_path / "mixfits"), "--upsample", "b", "--out",
                              str(rec_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rec = json.loads(rec_path.read_text())
    assert sum(rec["mixture"]["weights"].values()) == pytest.approx(1.0)
    assert rec["mixture"]["weights"]["a"] > 0.9
    assert rec["mixture"]["schedule"][0]["name"] == "upsample"
    assert "published" in rec["size_source"]  # no Chinchilla fit in these fits
    # Bad input: a clear message and exit code 2, not a traceback.
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"n_params": [1e6, -1], "tokens": [1e8, 1e8], "loss": [3.0, 3.0]}).to_csv(bad)
    res = runner.invoke(app, ["fit", str(bad)])
    assert res.exit_code == 2
    assert "row 1" in res.output and "n_params = -1" in " ".join(res.output.split())
    nan = tmp_path / "nan.csv"
    df = _sweep_table()
    df.loc[5, "loss"] = float("nan")
    df.to_csv(nan, index=False)
    res = runner.invoke(app, ["fit", str(nan)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "row 5" in out and "loss = NaN/missing" in out
    res = runner.invoke(app, ["recommend", "--compute", "1e21", "--fits", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "run `curamix fit` first" in " ".join(res.output.split())


def test_cli_recommend_refuses_an_unidentified_fit_without_fallback(tmp_path):
    table = tmp_path / "results.csv"
    df = _sweep_table()
    df[df["n_params"].isin([1e6, 3e7])].to_csv(table, index=False)  # two sizes only
    runner = CliRunner()
    assert runner.invoke(app, ["fit", str(table), "--n-boot", "20"]).exit_code == 0
    fits = str(tmp_path / "fits")
    res = runner.invoke(app, ["recommend", "-c", "1e21", "--fits", fits, "--no-fallback"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "refusing to size a model" in out
    assert "only 2 distinct N values" in out
    res = runner.invoke(app, ["recommend", "-c", "1e21", "--fits", fits])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "NOT identified" in out and "published Chinchilla" in out


def test_cli_recommend_to_run_then_export(tmp_path):
    table = tmp_path / "results.csv"
    _mixing_table().to_csv(table, index=False)
    runner = CliRunner()
    assert runner.invoke(app, ["fit", str(table), "--law", "mixing", "--n-boot",
                               "20"]).exit_code == 0  # fmt: skip
    run = tmp_path / "run"
    res = runner.invoke(app, ["recommend", "-c", "1e20", "--fits", str(tmp_path / "fits"),
                              "--upsample", "c", "--run-dir", str(run)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (run / "mixture.json").is_file()
    # Megatron has no schedule: one --data-path file per stage (main, then the upsampling).
    res = runner.invoke(app, ["export", "-f", "megatron", str(run), "--prefix-template",
                              "/data/{domain}_text_document"])  # fmt: skip
    assert res.exit_code == 0, res.output
    files = sorted((run / "export").glob("mixture_megatron_*.txt"))
    assert [f.stem.rsplit("_", 1)[1] for f in files] == ["main", "upsample"]
    for f in files:
        text = f.read_text().split()
        weights = [float(w) for w in text[0::2]]
        assert sum(weights) == pytest.approx(1.0)
        assert all(p.startswith("/data/") for p in text[1::2])
    res = runner.invoke(app, ["export", "-f", "yaml", str(run)])
    assert res.exit_code == 0, res.output
    # The YAML's header carries the decision: where the sizes came from, and why.
    header = (run / "export" / "mixture_yaml.yaml").read_text().split("\nweights:")[0]
    assert "# size source: published Chinchilla constants" in header
    assert "# note: no fitted Chinchilla law was given" in header
    # A domain without a data location is refused, naming it.
    res = runner.invoke(app, ["export", "-f", "megatron", str(run), "--paths", '{"a": "/x"}',
                              "--stage", "0"])  # fmt: skip
    assert res.exit_code == 2
