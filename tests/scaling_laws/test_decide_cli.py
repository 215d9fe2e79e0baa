"""Decisions for a compute budget, the fit report, and the `fit` / `recommend` commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from curamix.cli import app
from curamix.scaling_laws import MixingLaw, Pool
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
    report = (tmp_path / "report.md").read_text()
    assert "Held out" in report and "95% interval" in report
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


def test_degenerate_fits_are_flagged(tmp_path):
    # One token budget only: the data term cannot be identified, and the report says so.
    df = _sweep_table()
    df = pd.concat([df[df["tokens"] == 1e9]] * 2, ignore_index=True)
    df["tokens"] = 1e9
    fits = fit_table(df, tmp_path, n_boot=30, holdout=None)
    warnings = fits["chinchilla"]["warnings"]
    assert any("distinct D" in w for w in warnings), warnings
    assert "**Warning:**" in (tmp_path / "report.md").read_text()


def test_cli_fit_and_recommend(tmp_path):
    table = tmp_path / "results.csv"
    _sweep_table().to_csv(table, index=False)
    runner = CliRunner()
    res = runner.invoke(app, ["fit", str(table), "--law", "chinchilla", "--law", "mixing",
                              "--n-boot", "20"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "held-out" in res.output
    out = tmp_path / "rec.json"
    res = runner.invoke(app, ["recommend", "--compute", "1e21", "--fits", str(tmp_path / "fits"),
                              "--upsample", "b", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())
    assert rec["compute"] == 1e21
    assert sum(rec["mixture"]["weights"].values()) == pytest.approx(1.0)
    assert rec["mixture"]["schedule"][0]["name"] == "upsample"
    # Bad input: a clear message and exit code 2, not a traceback.
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"n_params": [1e6, -1], "tokens": [1e8, 1e8], "loss": [3.0, 3.0]}).to_csv(bad)
    res = runner.invoke(app, ["fit", str(bad)])
    assert res.exit_code == 2
    assert "N must be finite and > 0; entry 1" in " ".join(res.output.split())
    res = runner.invoke(app, ["recommend", "--compute", "1e21", "--fits", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "run `curamix fit` first" in " ".join(res.output.split())


def test_cli_recommend_to_run_then_export(tmp_path):
    table = tmp_path / "results.csv"
    _sweep_table().to_csv(table, index=False)
    runner = CliRunner()
    assert runner.invoke(app, ["fit", str(table), "--law", "mixing", "--law", "chinchilla",
                               "--n-boot", "0"]).exit_code == 0  # fmt: skip
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
    # A domain without a data location is refused, naming it.
    res = runner.invoke(app, ["export", "-f", "megatron", str(run), "--paths", '{"a": "/x"}',
                              "--stage", "0"])  # fmt: skip
    assert res.exit_code == 2
