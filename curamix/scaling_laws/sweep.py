"""Proxy sweeps: a grid of model sizes x token budgets x mixtures, one results table.

Each cell trains one proxy (:func:`curamix.proxy.train.train_proxy`) into its own folder
``RUN/scaling/runs/<model>-<tokens>-<mixture>-<key>/`` and leaves ``row.json`` there when
it finishes; a rerun skips finished cells and resumes an interrupted one from its checkpoint.
``RUN/scaling/results.parquet`` (written atomically after every cell) has one row per run:
``model``, ``n_params`` (non-embedding, Kaplan's N), ``n_params_total``, ``tokens``,
``flops`` (6ND), ``loss`` (mean validation loss over domains), ``target_loss``,
``val:<domain>``, ``w:<domain>``, ``wall_s``, ``tokens_per_s``, ``seed``.

Every cell uses its own cosine schedule over its own budget (approach 3 needs runs trained to
completion, not checkpoints of one long run).

Keep-fraction sweeps (``run_keep_fraction_sweep``) train on the top-x% of a ranked pool (DSIR
or BETR scores) instead of a mixture; their rows carry ``keep_fraction`` and
``unique_tokens`` (the subset's training tokens), which is what the data-filtering and
data-constrained laws need.

The tables are built, joined and written with polars; the public functions still return
pandas frames (``.to_pandas()``), which the CLI and the flow index.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import polars as pl
from pydantic import Field, model_validator

from curamix.config import CuramixModel
from curamix.device import device_name
from curamix.io.store import write_json_atomic

if TYPE_CHECKING:
    from curamix.proxy.train import ProxyResult


class SweepConfig(CuramixModel):
    """A proxy sweep grid and the training settings shared by its cells."""

    models: list[str] = Field(default_factory=lambda: ["nano", "tiny", "xs"])
    """Model presets (``curamix.proxy.model.PRESETS``)."""
    token_budgets: list[int] = Field(default_factory=lambda: [250_000, 500_000, 1_000_000])
    mixtures: dict[str, dict[str, float]] | None = None
    """Named mixtures; None: one mixture, ``natural`` (each domain's token share)."""
    vocab_size: int = 4096
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    warmup: float = 0.05
    eval_tokens: int = 32_768
    seed: int = 0
    device: str = "auto"
    cpu_threads: int | None = None
    checkpoint_every: int | None = 200

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        from curamix.proxy.model import PRESETS

        bad = [m for m in self.models if m not in PRESETS]
        if bad:
            raise ValueError(f"unknown model presets {bad}; known {list(PRESETS)}")
        if not self.models or not self.token_budgets:
            raise ValueError("a sweep needs at least one model and one token budget")
        small = [b for b in self.token_budgets if b < self.batch_size * self.seq_len]
        if small:
            raise ValueError(
                f"token budgets {small} are smaller than one batch "
                f"({self.batch_size} x {self.seq_len} tokens)"
            )
        return self


def top_fraction(scored: pd.DataFrame, fraction: float) -> dict[str, list[str]]:
    """The top ``fraction`` of ``scored`` (columns id, domain, text, score) by score, by domain.

    Ties are broken by id, so the subset does not depend on row order; at least one document
    is kept.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"keep fraction must be in (0, 1], got {fraction!r}")
    missing = {"id", "domain", "text", "score"} - set(scored.columns)
    if missing:
        raise ValueError(f"scored pool lacks columns {sorted(missing)}")
    k = max(1, round(fraction * len(scored)))
    top = scored.sort_values(["score", "id"], ascending=[False, True], kind="mergesort").head(k)
    top = top.sort_values(["domain", "id"], kind="mergesort")
    return {d: g["text"].tolist() for d, g in top.groupby("domain", sort=True)}


def load_scored_pool(run_dir: str | Path, score_stage: str = "dsir") -> pd.DataFrame:
    """The run's pool documents joined with the latest ``score_stage`` scores (by id)."""
    from curamix.io.store import latest_result, part_files
    from curamix.proxy.data import _pool_stage

    run_dir = Path(run_dir)
    res = latest_result(run_dir, score_stage)
    if res is None:
        raise FileNotFoundError(f"no completed '{score_stage}' output in {run_dir}")
    scores = pl.read_parquet(part_files(res.path / "scores"), columns=["id", "score"])
    pool = latest_result(run_dir, _pool_stage(run_dir))
    if pool is None:
        raise FileNotFoundError(f"no completed pool stage (ingest/dedup) in {run_dir}")
    docs = pl.read_parquet(part_files(pool.data_path), columns=["id", "domain", "text"])
    out = docs.join(scores, on="id", how="inner", validate="1:1", maintain_order="left")
    if out.height != docs.height:
        raise ValueError(f"{docs.height - out.height} pool documents have no {score_stage} score")
    return out.to_pandas()


def _results_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Sweep rows as a table; a column some rows lack (another mixture's domains) is null."""
    return pl.from_dicts(rows, infer_schema_length=None) if rows else pl.DataFrame()


def _write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    df.write_parquet(tmp)
    tmp.replace(path)


def natural_mixture(train_tokens: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each domain's share of the training tokens."""
    total = sum(len(v) for v in train_tokens.values())
    if total == 0:
        raise ValueError("no training tokens in any domain")
    return {d: len(v) / total for d, v in train_tokens.items()}


def _cell_key(cfg: SweepConfig, model: str, budget: int, weights: Mapping[str, float],
              data_key: str) -> str:  # fmt: skip
    spec = {
        "model": model, "budget": budget, "weights": sorted(weights.items()),
        "data": data_key, "device": device_name(cfg.device),
        **cfg.model_dump(exclude={"models", "token_budgets", "mixtures", "device",
                                  "cpu_threads", "checkpoint_every"}),
    }  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def _data_key(train: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, streams in (("train", train), ("val", val)):
        for d in sorted(streams):
            arr = np.ascontiguousarray(streams[d])
            h.update(f"{name}:{d}:{arr.dtype}:{arr.size}".encode())
            h.update(arr[:4096].tobytes())
            h.update(arr[-4096:].tobytes())
    return h.hexdigest()[:16]


def _row(model: str, mix_name: str, res: ProxyResult, cfg: SweepConfig, key: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model": model,
        "mixture": mix_name,
        "n_params": res.n_params_non_embedding,
        "n_params_total": res.n_params,
        "tokens": res.tokens_trained,
        "flops": res.flops,
        "loss": res.mean_val_loss,
        "target_loss": res.target_loss,
        "wall_s": res.wall_s,
        "tokens_per_s": res.tokens_per_s,
        "seed": cfg.seed,
        "key": key,
    }
    row.update({f"val:{d}": v for d, v in res.val_losses.items()})
    row.update({f"w:{d}": v for d, v in res.weights.items()})
    return row


def run_sweep(
    run_dir: str | Path,
    cfg: SweepConfig,
    train_tokens: Mapping[str, np.ndarray] | None = None,
    val_tokens: Mapping[str, np.ndarray] | None = None,
    target_tokens: np.ndarray | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Train every cell of the grid that is not finished yet; return the results table.

    ``train_tokens``/``val_tokens`` default to the run's own token streams
    (:func:`curamix.proxy.data.prepare_run_tokens` with ``cfg.vocab_size``).
    """
    return sweep_results(
        run_dir, cfg, train_tokens, val_tokens, target_tokens, progress, log
    ).to_pandas()


def sweep_results(
    run_dir: str | Path,
    cfg: SweepConfig,
    train_tokens: Mapping[str, np.ndarray] | None = None,
    val_tokens: Mapping[str, np.ndarray] | None = None,
    target_tokens: np.ndarray | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pl.DataFrame:
    """:func:`run_sweep` with the results table as a polars frame (as written to
    ``results.parquet``)."""
    rows = _sweep_rows(run_dir, cfg, train_tokens, val_tokens, target_tokens, progress, log)
    return _results_table(rows)


def _sweep_rows(
    run_dir: str | Path,
    cfg: SweepConfig,
    train_tokens: Mapping[str, np.ndarray] | None,
    val_tokens: Mapping[str, np.ndarray] | None,
    target_tokens: np.ndarray | None,
    progress: bool,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """:func:`run_sweep`'s work: the rows of the results table, written as it goes."""
    from curamix.proxy.train import ProxyTrainConfig, train_proxy

    run_dir = Path(run_dir)
    if train_tokens is None or val_tokens is None:
        from curamix.proxy.data import prepare_run_tokens

        _, train_tokens, val_tokens = prepare_run_tokens(
            run_dir, vocab_size=cfg.vocab_size, random_state=cfg.seed
        )
    mixtures = cfg.mixtures or {"natural": natural_mixture(train_tokens)}
    data_key = _data_key(train_tokens, val_tokens)
    root = run_dir / "scaling"
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "sweep.json", cfg.model_dump())
    rows: list[dict] = []
    cells = [(m, b, n) for m in cfg.models for b in cfg.token_budgets for n in mixtures]
    t0 = time.perf_counter()
    for i, (model, budget, mix_name) in enumerate(cells, 1):
        weights = mixtures[mix_name]
        key = _cell_key(cfg, model, budget, weights, data_key)
        cell = root / "runs" / f"{model}-{budget}-{mix_name}-{key}"
        done = cell / "row.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            log(f"[{i}/{len(cells)}] {cell.name}: done earlier, skipped")
        else:
            log(f"[{i}/{len(cells)}] {cell.name}: training {model} on {budget:,} tokens")
            tcfg = ProxyTrainConfig(
                model=model, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len,
                batch_size=cfg.batch_size, total_tokens=budget, lr=cfg.lr, warmup=cfg.warmup,
                eval_tokens=cfg.eval_tokens, seed=cfg.seed, device=cfg.device,
                cpu_threads=cfg.cpu_threads, checkpoint_every=cfg.checkpoint_every,
            )  # fmt: skip
            res = train_proxy(tcfg, train_tokens, val_tokens, weights,
                              target_tokens=target_tokens, out_dir=cell,
                              progress=progress)  # fmt: skip
            row = _row(model, mix_name, res, cfg, key)
            write_json_atomic(done, row)
            rows.append(row)
            log(
                f"    loss {row['loss']:.4f}  N={row['n_params']:,}  "
                f"{row['tokens_per_s']:,.0f} tok/s  {row['wall_s']:.1f}s"
            )
        _write_parquet_atomic(_results_table(rows), root / "results.parquet")
    log(
        f"sweep: {len(cells)} cells in {time.perf_counter() - t0:.1f}s -> {root / 'results.parquet'}"
    )
    return rows


def run_keep_fraction_sweep(
    run_dir: str | Path,
    cfg: SweepConfig,
    scored: pd.DataFrame,
    fractions: list[float],
    target_tokens: np.ndarray | None = None,
    tokenizer: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Train ``cfg``'s grid on the top-x% of ``scored`` for each x in ``fractions``.

    Each subset is tokenized once (cached under ``RUN/proxy/tokens``) and trained with its
    natural mixture; validation is each subset's own held-out documents, and
    ``target_tokens`` (e.g. the benchmark the scores point at) gives ``target_loss``, the
    error a data-filtering law is fitted on. Rows gain ``keep_fraction`` and
    ``unique_tokens``; results go to ``RUN/scaling/filter/results.parquet``.
    """
    from curamix.proxy.data import tokenize_domains
    from curamix.proxy.tokenizer import load_or_train_tokenizer, tokenizer_path

    run_dir = Path(run_dir)
    if cfg.mixtures:
        raise ValueError("a keep-fraction sweep trains each subset on its natural mixture")
    if tokenizer is None:
        by_domain = {d: g["text"].tolist() for d, g in scored.groupby("domain", sort=True)}
        tokenizer = load_or_train_tokenizer(
            tokenizer_path(run_dir, cfg.vocab_size), by_domain, cfg.vocab_size,
            random_state=cfg.seed,
        )  # fmt: skip
    tables: list[pl.DataFrame] = []
    for frac in sorted(set(fractions)):
        texts = top_fraction(scored, frac)
        train, val = tokenize_domains(
            tokenizer, texts, run_dir / "proxy" / "tokens", random_state=cfg.seed
        )
        unique = int(sum(len(v) for v in train.values()))
        log(f"keep {frac:.0%}: {sum(map(len, texts.values())):,} docs, {unique:,} train tokens")
        sub = run_dir / "scaling" / "filter" / f"keep-{frac:g}"
        df = sweep_results(sub, cfg, train, val, target_tokens, progress, log)
        cols = df.columns
        df = df.with_columns(
            pl.lit(float(frac)).alias("keep_fraction"),
            pl.lit(unique, dtype=pl.Int64).alias("unique_tokens"),
        ).select([*cols[:1], "keep_fraction", "unique_tokens", *cols[1:]])
        tables.append(df)
    out = pl.concat(tables, how="diagonal_relaxed")
    _write_parquet_atomic(out, run_dir / "scaling" / "filter" / "results.parquet")
    return out.to_pandas()
