"""Readers of scaling-law inputs: tables (polars), RegMix files, target texts."""

import json
import warnings

import numpy as np
import polars as pl
import pytest

from curamix.scaling_laws.data import read_regmix, read_table, read_texts


def test_read_table_csv_tsv_parquet(tmp_path):
    df = pl.DataFrame({"n_params": [1e6, 3e6], "tokens": [1e8, 3e8], "loss": [3.1, 2.9]})
    df.write_csv(tmp_path / "t.csv")
    df.write_csv(tmp_path / "t.tsv", separator="\t")
    df.write_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.tsv", "t.parquet"):
        got = read_table(tmp_path / name)
        assert isinstance(got, pl.DataFrame) and got.equals(df), name
    with pytest.raises(FileNotFoundError, match="no such table"):
        read_table(tmp_path / "none.csv")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ValueError, match=r"t\.txt: expected a \.csv"):
        read_table(tmp_path / "t.txt")


def test_read_regmix_joins_on_index_in_mixture_order(tmp_path):
    pl.DataFrame({"index": [2, 0, 1], "a": [0.5, 1.0, 0.0], "b": [0.5, 0.0, 1.0]}).write_csv(
        tmp_path / "mix.csv"
    )
    pl.DataFrame({"index": [0, 1, 2], "loss": [3.0, 2.0, 2.5]}).write_csv(tmp_path / "loss.csv")
    R, y, cols = read_regmix(tmp_path / "mix.csv", tmp_path / "loss.csv", "loss")
    assert cols == ["a", "b"]
    np.testing.assert_array_equal(R, [[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(y, [2.5, 3.0, 2.0])
    R, _, cols = read_regmix(tmp_path / "mix.csv", tmp_path / "loss.csv", "loss", ["b", "a"])
    assert cols == ["b", "a"] and R[0].tolist() == [0.5, 0.5] and R[1].tolist() == [0.0, 1.0]
    pl.DataFrame({"index": [0, 1], "loss": [3.0, 2.0]}).write_csv(tmp_path / "short.csv")
    with pytest.raises(ValueError, match="1 of 3 mixtures have no loss row"):
        read_regmix(tmp_path / "mix.csv", tmp_path / "short.csv", "loss")
    with pytest.raises(ValueError, match=r"missing columns \['val'\]"):
        read_regmix(tmp_path / "mix.csv", tmp_path / "loss.csv", "val")


def test_read_texts_counts_only_bad_records(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file warns about nothing
        assert read_texts([good]) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "three"}) + "\n" + json.dumps({"text": ""}) + "\nnot json\n")
    with pytest.warns(UserWarning, match="^2 bad records left out"):
        assert read_texts([bad]) == ["three"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": " "}) + "\n")
    with (
        pytest.warns(UserWarning, match="^1 bad records"),
        pytest.raises(ValueError, match="no texts"),
    ):
        read_texts([empty])
