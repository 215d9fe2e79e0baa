"""The proxy sweep: one row per cell, reruns skip finished cells, a lost cell is redone
identically, and the CLI goes from an ingested run to fitted laws."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pandas as pd
import pytest
from typer.testing import CliRunner

from curamix.cli import app
from curamix.scaling_laws.sweep import SweepConfig, natural_mixture, run_sweep

DOMAINS = ("books", "code", "news")


def _texts(shared_data, n: int = 150) -> dict[str, list[str]]:
    out = {}
    for d in DOMAINS:
        with gzip.open(shared_data / "corpus" / f"{d}.jsonl.gz", "rt") as f:
            out[d] = [json.loads(line)["text"] for line in islice(f, n)]
    return out


@pytest.fixture(scope="module")
def streams(shared_data):
    from curamix.proxy.data import tokenize_domains
    from curamix.proxy.tokenizer import train_tokenizer

    texts = _texts(shared_data)
    tok = train_tokenizer([t for v in texts.values() for t in v], vocab_size=512)
    return tokenize_domains(tok, texts, None, 0.1, 0)


CFG = SweepConfig(
    models=["nano", "tiny"], token_budgets=[8192, 24576], vocab_size=512, seq_len=64,
    batch_size=8, eval_tokens=2048, checkpoint_every=None, cpu_threads=1,
)  # fmt: skip


@pytest.mark.realdata
def test_sweep_table_rerun_and_lost_cell(tmp_path, streams):
    train, val = streams
    df = run_sweep(tmp_path, CFG, train, val, progress=False, log=lambda s: None)
    assert len(df) == 4
    assert set(df["model"]) == {"nano", "tiny"}
    assert (df.groupby("model")["n_params"].nunique() == 1).all()
    assert (
        df.loc[df.model == "tiny", "n_params"].iloc[0]
        > df.loc[df.model == "nano", "n_params"].iloc[0]
    )
    assert (df["flops"] == 6 * df["n_params"] * df["tokens"]).all()
    w = natural_mixture(train)
    for d in DOMAINS:
        assert df[f"w:{d}"].tolist() == pytest.approx([w[d]] * 4)
        assert df[f"val:{d}"].notna().all()
    # More tokens, lower loss, for each model.
    for _, g in df.groupby("model"):
        g = g.sort_values("tokens")
        assert g["loss"].iloc[1] < g["loss"].iloc[0]
    table = pd.read_parquet(tmp_path / "scaling" / "results.parquet")
    assert table["key"].tolist() == df["key"].tolist()

    # A rerun trains nothing and returns the same table.
    logs: list[str] = []
    again = run_sweep(tmp_path, CFG, train, val, progress=False, log=logs.append)
    assert sum("skipped" in line for line in logs) == 4
    pd.testing.assert_frame_equal(again, df)

    # A cell whose result is lost is retrained, to the same loss (deterministic on CPU).
    cell = next((tmp_path / "scaling" / "runs").glob("tiny-24576-*"))
    (cell / "row.json").unlink()
    for f in cell.glob("checkpoint*"):
        f.unlink()
    redo = run_sweep(tmp_path, CFG, train, val, progress=False, log=lambda s: None)
    assert redo["loss"].tolist() == df["loss"].tolist()


def test_sweep_config_refuses_bad_grids():
    with pytest.raises(ValueError, match="unknown model presets"):
        SweepConfig(models=["huge"])
    with pytest.raises(ValueError, match="smaller than one batch"):
        SweepConfig(token_budgets=[100], batch_size=8, seq_len=64)


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.realdata
def test_cli_sweep_from_an_ingested_run(spark, tmp_path, shared_data):
    src = tmp_path / "in"
    src.mkdir()
    for d, texts in _texts(shared_data, 120).items():
        (src / f"{d}.jsonl").write_text(
            "".join(json.dumps({"id": f"{d}{i}", "text": t}) + "\n" for i, t in enumerate(texts))
        )
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(src), "--run-dir", str(run), "--master", "local[2]"])
    assert res.exit_code == 0, res.output
    args = ["sweep", str(run), "-m", "nano", "-m", "tiny", "-t", "4096", "-t", "8192", "-t",
            "16384", "--vocab-size", "512", "--seq-len", "64", "--batch-size", "8",
            "--n-boot", "20"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(run / "scaling" / "results.parquet")
    assert len(df) == 6 and set(df["mixture"]) == {"natural"}
    assert (run / "scaling" / "fits" / "fits.json").is_file()
    assert (run / "proxy").is_dir()  # the tokenizer and token streams are kept with the run
    # Keep-fraction sweep over the DSIR ranking toward the code domain, with a target file.
    res = runner.invoke(app, ["score", "dsir", str(run), "--target-domain", "code"])
    assert res.exit_code == 0, res.output
    args = ["sweep", str(run), "-m", "nano", "--keep", "0.3", "--keep", "0.7",
            "--target", str(src / "code.jsonl"), "--vocab-size", "512", "--seq-len", "64",
            "--batch-size", "8", "--n-boot", "20"]  # fmt: skip
    for t in (2048, 4096, 8192, 12288, 16384):
        args += ["-t", str(t)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    kf = pd.read_parquet(run / "scaling" / "filter" / "results.parquet")
    assert len(kf) == 10 and kf["target_loss"].notna().all()
    fits = json.loads((run / "scaling" / "filter" / "fits" / "fits.json").read_text())
    assert set(fits["filtering"]["pools"]) == {"0.3", "0.7"}
    assert fits["filtering"]["metric"] == "target_loss"
    for pool in fits["filtering"]["pools"].values():  # each pool's law has its verdict
        assert pool["ci_level"] == 0.9 and isinstance(pool["identification"]["identified"], bool)
    res = runner.invoke(
        app, ["recommend", "-c", "1e15", "--fits", str(run / "scaling" / "filter" / "fits")]
    )
    assert res.exit_code == 0 and "data-filtering" in " ".join(res.output.split())
    # Too few runs for the law: a clear error, exit code 2.
    small = tmp_path / "small.csv"
    df.head(4).to_csv(small, index=False)
    res = runner.invoke(app, ["fit", str(small)])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "5 parameters (A, B, E, alpha, beta) and needs more runs" in out


def test_top_fraction_is_order_independent_and_breaks_ties_by_id():
    from curamix.scaling_laws.sweep import top_fraction

    df = pd.DataFrame(
        {"id": [f"d{i}" for i in range(10)], "domain": ["a", "b"] * 5,
         "text": [f"t{i}" for i in range(10)], "score": [5, 1, 5, 2, 9, 0, 3, 3, 3, 7]}
    )  # fmt: skip
    top = top_fraction(df, 0.5)
    assert top == {"a": ["t0", "t2", "t4", "t6"], "b": ["t9"]}
    assert top_fraction(df.sample(frac=1, random_state=3), 0.5) == top
    assert sum(map(len, top_fraction(df, 0.01).values())) == 1
    with pytest.raises(ValueError, match="keep fraction"):
        top_fraction(df, 0.0)


@pytest.mark.realdata
def test_keep_fraction_sweep_fits_filtering_laws_and_recommends(tmp_path, shared_data):
    from curamix.proxy.data import tokenize_domains
    from curamix.proxy.tokenizer import train_tokenizer
    from curamix.scaling_laws.decide import recommend
    from curamix.scaling_laws.fit import fit_table, load_fits
    from curamix.scaling_laws.sweep import run_keep_fraction_sweep

    texts = _texts(shared_data, 120)
    rows = [{"id": f"{d}{i:04d}", "domain": d, "text": t} for d, v in texts.items()
            for i, t in enumerate(v)]  # fmt: skip
    scored = pd.DataFrame(rows)
    # A stand-in for DSIR scores toward code: code documents first, then by length.
    scored["score"] = (scored["domain"] == "code") * 1e6 + scored["text"].str.len()
    tok = train_tokenizer(scored["text"].tolist(), vocab_size=512)
    target = tokenize_domains(tok, {"code": texts["code"]}, None, 0.5, 1)[1]["code"]
    cfg = SweepConfig(models=["nano"], token_budgets=[4096, 8192, 16384, 32768, 65536],
                      vocab_size=512, seq_len=64, batch_size=8, eval_tokens=2048,
                      checkpoint_every=None, cpu_threads=1)  # fmt: skip
    df = run_keep_fraction_sweep(tmp_path, cfg, scored, [0.2, 0.6], target_tokens=target,
                                 tokenizer=tok, progress=False, log=lambda s: None)  # fmt: skip
    assert len(df) == 10 and set(df["keep_fraction"]) == {0.2, 0.6}
    sizes = df.groupby("keep_fraction")["unique_tokens"].first()
    assert sizes[0.2] < sizes[0.6]
    assert df["target_loss"].notna().all()
    # The top 20% is code only (the score puts code first): no other domain's column is set.
    small = df[df["keep_fraction"] == 0.2]
    assert small["w:code"].eq(1.0).all()
    assert (tmp_path / "scaling" / "filter" / "results.parquet").is_file()

    fits = fit_table(df, tmp_path / "fits", laws=("filtering",), n_boot=20)
    assert set(fits["filtering"]["pools"]) == {"0.2", "0.6"}
    pools = load_fits(tmp_path / "fits")["filtering_pools"]
    rec = recommend(1e12, filtering_pools=pools)
    assert rec.keep_fraction in (0.2, 0.6) and "data-filtering" in rec.keep_fraction_source
