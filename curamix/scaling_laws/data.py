"""Readers for scaling-law inputs: points tables and RegMix-format proxy results (polars)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl


def read_table(path: str | Path) -> pl.DataFrame:
    """A CSV, TSV or Parquet table as a polars frame (CSV types inferred from every row); the
    error names the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such table: {path}")
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix in (".csv", ".tsv"):
        return pl.read_csv(
            path, separator="\t" if path.suffix == ".tsv" else ",", infer_schema_length=None
        )
    raise ValueError(f"{path}: expected a .csv, .tsv or .parquet table")


def require_columns(df: Any, columns: Sequence[str], where: str) -> None:
    """``df``: any frame with ``columns`` (polars or pandas)."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; has {list(df.columns)}")


# Token shares of the 17 Pile domains under RegMix's tokenizer: the prior of the reference's
# sampler (sail-sg/regmix, mixture_config/synthesize_mixture.py, get_token_distribution).
REGMIX_PILE_PRIOR: dict[str, float] = {
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
"""The prior of RegMix's sampler for its released runs (``../shared/data/scaling/regmix``)."""


def read_regmix(
    mixture_path: str | Path,
    loss_path: str | Path,
    target: str,
    domains: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Mixtures ``R`` (runs x domains), the ``target`` loss per run, and the domain names.

    The files are RegMix's: ``index`` plus one weight column per domain, and ``index`` plus
    one loss column per validation set. Rows are joined on ``index``; ``domains`` fixes
    the column order (use the training table's to read a held-out one).
    """
    mix = read_table(mixture_path)
    loss = read_table(loss_path)
    require_columns(mix, ["index"], str(mixture_path))
    require_columns(loss, ["index", target], str(loss_path))
    df = mix.join(
        loss.select("index", target), on="index", how="inner", validate="1:1", maintain_order="left"
    )
    if df.height != mix.height:
        raise ValueError(
            f"{loss_path}: {mix.height - df.height} of {mix.height} mixtures have no loss row"
        )
    cols = list(domains) if domains is not None else [c for c in mix.columns if c != "index"]
    require_columns(df, cols, str(mixture_path))
    R = df.select(cols).cast(pl.Float64).to_numpy()
    return R, df.get_column(target).cast(pl.Float64).to_numpy(), cols


def read_texts(paths: Sequence[str | Path]) -> list[str]:
    """The texts of files, folders or globs (any format ingest reads), e.g. a target set.

    Bad records are left out with a warning that counts them; no text at all is an error.
    """
    import warnings

    from curamix.config import IngestConfig, InputSpec
    from curamix.io.inputs import expand_inputs
    from curamix.io.records import STATS_REASON, read_unit_table

    units = expand_inputs(IngestConfig(inputs=[InputSpec(path=str(p)) for p in paths])).units
    texts: list[str] = []
    bad = 0
    for unit in units:
        table = pl.from_arrow(read_unit_table(unit).select(["text", "reason"]))
        ok = table.filter(pl.col("reason").is_null())
        bad += table.filter(pl.col("reason") != STATS_REASON).height  # not the per-file row
        texts += ok.get_column("text").to_list()
    if bad:
        warnings.warn(f"{bad} bad records left out of {list(map(str, paths))}", stacklevel=2)
    if not texts:
        raise ValueError(f"no texts in {list(map(str, paths))}")
    return texts
