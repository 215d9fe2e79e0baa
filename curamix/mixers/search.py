"""Mixture search on proxy models: the step of ``curate_flow`` between selection and scaling laws.

:func:`run_mixture_search` trains a small proxy LM (``curamix.proxy``) on a run's curated pool
with a mixer choosing the domain weights, and writes ``RUN/mixture-<key>/``:

- ``mixture.json``: the mixer's weights as a validated :class:`curamix.mixture.Mixture`, with
  provenance (method, parameters, seed, code version, pool and target digests, proxy settings,
  validation and target losses);
- ``trajectory.csv`` / ``trajectory.parquet``: the weights after every update (step, tokens,
  ``w:<domain>``), ``weights.png`` the same as a plot, ``metrics.parquet`` the proxy's log;
- online methods: the trajectory compressed to stages (``mixture.schedule``:
  :func:`curamix.mixers.compress_trajectory`), recorded in the mixture's provenance
  (``schedule``) and drawn over the trajectory in ``schedule.png``; ``mixture.json`` holds
  the staged schedule with ``export: staged``, the final weights otherwise (the default);
- ``tokenizer.json`` and ``target.npy``: what the scaling step reuses;
- ``report.md``, ``manifest.json`` and ``_COMPLETE`` (written last).

The key hashes the search config (the sample's settings included, the engine not), the seed,
the pool's manifest and the target texts, so a rerun with the same inputs is skipped; a killed
search resumes from the proxy's checkpoint (``RUN/proxy/search-<key>/``). Every number comes
from seeded generators, so the same inputs give the same ``mixture.json``, byte for byte (on
one machine).

Methods: online mixers ride the proxy as its hook (``dga``, ``tikmix``: the target's gradient;
``doremi``: excess loss over a uniform reference run trained first); ``regmix`` trains
``regmix_runs`` short proxies on sampled mixtures and regresses the target loss on them; the
baselines (``uniform``, ``natural``, ``temperature``) set the weights from token counts and
train one proxy for the report.

Data: the proxy trains on a seeded, token-budgeted sample of each domain
(:func:`read_pool_sample`): its documents in the order of a hash of (seed, id), up to
``sample_margin`` times the tokens one proxy run can read from the domain, tokenized one task
per part into shards cached under ``RUN/proxy/tokens/``; the pool never sits in this process.
Token-count mixers and ``Mixture.domain_tokens`` use each domain's whole-pool train tokens
(estimated from its sample's tokens per character when the sample is not all of it). No
Prefect here, and no Spark import: the per-part tasks run on Spark through the ``run_parts``
callable the flow passes (``functools.partial(map_parts, spark)``).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curamix.config import MixtureSearchConfig, PipelineConfig, config_hash
from curamix.io.store import JobResult, load_completed, stage_writer

if TYPE_CHECKING:
    import polars as pl

    from curamix.mixers.base import BaseMixer
    from curamix.mixture import Mixture
    from curamix.proxy.train import ProxyResult, ProxyTrainConfig

STEP = "mixture"

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "dga": {"eta": 5.0, "ema": 0.5, "normalize": "cosine", "init": "uniform"},
    "tikmix": {
        "mode": "D",
        "hessian": "adam",
        "uniformity": 0.3,
        "diversity": 0.1,
        "trust_region": 0.05,
        "init": "uniform",
    },
    "doremi": {"eta": 1.0, "smoothing": 1e-3, "init": "uniform"},
    "regmix": {"n_candidates": 20_000, "top_k": 32, "max_iter": 300},
    "skillit": {"eta": 0.5, "window": 3, "eval_tokens": 4096},
    "uniform": {},
    "natural": {},
    "temperature": {"tau": 2.0},
}
"""Each method's constructor parameters unless ``mixture.params`` says otherwise (the online
settings are those of ``bench/mixers.py``)."""

_CLASSES = {
    "dga": "DGAMixer",
    "tikmix": "TiKMiXMixer",
    "doremi": "DoReMiMixer",
    "regmix": "RegMixMixer",
    "skillit": "SkillItMixer",
    "uniform": "UniformMixer",
    "natural": "NaturalMixer",
    "temperature": "TemperatureMixer",
}
ONLINE = ("dga", "tikmix", "doremi", "skillit")
NEEDS_TARGET = ("dga", "tikmix")


def make_mixer(method: str, params: Mapping[str, Any] | None = None, seed: int = 0) -> BaseMixer:
    """An unfitted mixer of ``method`` with :data:`DEFAULT_PARAMS` updated by ``params``.

    Raises ValueError naming an unknown method or parameter."""
    import curamix.mixers as mixers

    if method not in _CLASSES:
        raise ValueError(f"unknown mixture method {method!r}; known: {sorted(_CLASSES)}")
    cls = getattr(mixers, _CLASSES[method])
    kwargs = {**DEFAULT_PARAMS[method], **dict(params or {})}
    if "random_state" in cls._param_names():
        kwargs.setdefault("random_state", seed)
    unknown = sorted(set(kwargs) - set(cls._param_names()))
    if unknown:
        raise ValueError(
            f"mixture.params: {cls.__name__} takes no parameter(s) {unknown}; "
            f"it takes {cls._param_names()}"
        )
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Inputs


def pool_stage_for(cfg: PipelineConfig) -> str:
    """The stage whose documents the search trains on: ``mixture.stage``, else the run's last
    selection (coreset, select, betr: BETR keeps its best-scored documents in ``data/``), else
    the pool stage (decontam / quality / semdedup / dedup / ingest)."""
    from curamix.config import pool_stage

    assert cfg.mixture is not None
    if cfg.mixture.stage:
        return cfg.mixture.stage
    for stage in ("coreset", "select", "betr"):
        if stage in cfg.stages:
            return stage
    return pool_stage(cfg)


def target_spec(cfg: PipelineConfig) -> tuple[list[str], list[str]]:
    """(target file paths, target pool domains): the mixture section's, else the dsir one's."""
    m = cfg.mixture
    assert m is not None
    if m.target_inputs or m.target_domains:
        return [s.path for s in m.target_inputs], list(m.target_domains)
    if cfg.dsir is not None:
        return [s.path for s in cfg.dsir.target_inputs], list(cfg.dsir.target_domains)
    return [], []


def read_target_texts(paths: Sequence[str]) -> list[str]:
    """The texts of target files (read like ingest inputs; bad records left out)."""
    if not paths:
        return []
    import warnings

    from curamix.scaling_laws.data import read_texts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # bad records: counted by ingest's rules
        return read_texts(list(paths))


def pool_key(pool: JobResult) -> str:
    """What identifies a pool in the token cache's key: its stage, manifest hash and the names
    and sizes of its Parquet parts."""
    from curamix.io.store import part_files

    parts = [(Path(p).name, Path(p).stat().st_size) for p in part_files(pool.data_path)]
    return config_hash("pool", pool.stage, pool.manifest_hash, parts)


def parts_runner(
    cfg: MixtureSearchConfig, parts: Sequence[str], pool: JobResult, run_parts: Any = None
) -> tuple[Any, str]:
    """The :data:`~curamix.proxy.data.PartRunner` that tokenizes the sample, and its name:
    ``run_parts`` (one Spark task per part, given by the caller) for ``engine: spark`` and for
    ``auto`` above ``local_max_docs`` documents, else the parts one by one in this process.
    Raises ValueError for ``engine: spark`` without ``run_parts``."""
    from curamix.proxy.data import run_parts_here

    engine = cfg.engine
    if engine == "auto":
        n = pool.counts.get("out")
        if n is None:
            import pyarrow.parquet as pq

            n = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        engine = "local" if n <= cfg.local_max_docs else "spark"
    if engine == "spark" and run_parts is None:
        if cfg.engine == "spark":
            raise ValueError(
                "mixture.engine='spark' needs a Spark session: run the search from the flow "
                "(curate_flow), or set mixture.engine to local or auto"
            )
        engine = "local"
    return (run_parts if engine == "spark" else run_parts_here), engine


def read_pool_sample(
    run_dir: str | Path,
    cfg: MixtureSearchConfig,
    pool: JobResult,
    seed: int,
    tokenizer_path: str | Path,
    run_parts: Any = None,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[Any, Any]:
    """The tokenizer and the :class:`~curamix.proxy.data.TokenSample` the search trains on,
    without reading the pool into this process.

    The tokenizer at ``tokenizer_path`` is reused, or trained on
    :func:`~curamix.proxy.data.sample_tokenizer_texts` (each domain's first documents in the
    seeded hash order, 20 M characters in all) and saved there. The sample holds each
    domain's documents in the same order up to :func:`~curamix.proxy.data.token_need` stream
    tokens (``cfg.sample_margin``; None: the whole pool), tokenized one task per part into
    shards cached under ``RUN/proxy/tokens/`` (:func:`~curamix.proxy.data.sample_token_streams`).
    Raises ValueError when the pool has no documents."""
    from curamix.io.store import part_files
    from curamix.proxy.data import (
        pool_stats,
        sample_token_streams,
        sample_tokenizer_texts,
        token_need,
    )
    from curamix.proxy.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    parts = [str(p) for p in part_files(pool.data_path)]
    run, engine = parts_runner(cfg, parts, pool, run_parts)
    tokenizer_path = Path(tokenizer_path)
    stats = None
    if tokenizer_path.is_file():
        tok = load_tokenizer(tokenizer_path)
    else:
        stats = pool_stats(parts, run)
        if not stats:
            raise ValueError(f"no documents in {pool.data_path}: nothing to search a mixture over")
        say(f"mixture: training the tokenizer on a seeded sample of the pool ({engine} engine)")
        texts = sample_tokenizer_texts(parts, stats, seed, run=run, say=say)
        tok = train_tokenizer([t for d in sorted(texts) for t in texts[d]], cfg.vocab_size)
        save_tokenizer(tok, tokenizer_path)
    need = token_need(
        max(cfg.total_tokens, cfg.regmix_tokens or 0),
        cfg.eval_tokens,
        cfg.val_fraction,
        cfg.sample_margin,
    )
    sample = sample_token_streams(
        parts, tok, seed, need, Path(run_dir) / "proxy" / "tokens", pool_key(pool),
        cfg.val_fraction, run=run, stats=stats, say=say,
    )  # fmt: skip
    return tok, sample


def texts_digest(domains: Mapping[str, Sequence[str]] | Sequence[str]) -> str:
    """SHA-256 of texts (by domain when a mapping), independent of where they are stored."""
    from curamix.proxy.data import content_hash

    if isinstance(domains, Mapping):
        h = hashlib.sha256()
        for d in sorted(domains):
            h.update(f"{d}:{content_hash(list(domains[d]))}\n".encode())
        return h.hexdigest()
    return content_hash(list(domains))


def search_key(
    cfg: MixtureSearchConfig,
    seed: int,
    pool: JobResult,
    target_sha256: str,
    target_domains: Sequence[str] = (),
) -> str:
    """The output key: search settings (not the checkpoint interval), seed, pool, target.

    The ``schedule`` section counts only when it differs from the default, so searches from
    before it existed keep their key."""
    from curamix.config import ScheduleConfig
    from curamix.device import device_name

    exclude = {"checkpoint_every", "target_inputs", "engine", "local_max_docs"}
    if cfg.schedule == ScheduleConfig():
        exclude.add("schedule")
    graph_fields = [f for f in type(cfg).model_fields if f.startswith("skills_graph")]
    exclude.update(f for f in graph_fields if cfg.method != "skillit" or
                   getattr(cfg, f) == type(cfg).model_fields[f].default)  # fmt: skip
    settings = cfg.model_dump(mode="json", exclude=exclude)
    if cfg.method == "skillit" and cfg.skills_graph:  # the file's content, not its name
        settings["skills_graph_sha256"] = hashlib.sha256(
            Path(cfg.skills_graph).read_bytes()
        ).hexdigest()
    if "device" in settings:  # a CPU and a GPU search never share a folder
        settings["device"] = device_name(settings["device"])
    return config_hash(
        STEP, settings, seed, pool.stage, pool.manifest_hash, target_sha256, list(target_domains)
    )


# ---------------------------------------------------------------------------------------------
# Training


def proxy_config(
    cfg: MixtureSearchConfig, vocab_size: int, seed: int, total_tokens: int | None = None
) -> ProxyTrainConfig:
    """The proxy training settings of the search (``total_tokens`` overrides the budget)."""
    from curamix.proxy.train import ProxyTrainConfig

    budget = total_tokens or cfg.total_tokens
    return ProxyTrainConfig(
        model=cfg.model, vocab_size=vocab_size, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
        total_tokens=budget, lr=cfg.lr, eval_tokens=cfg.eval_tokens,
        update_every=cfg.update_every, hook_rows=cfg.hook_rows, seed=seed, device=cfg.device,
        cpu_threads=cfg.cpu_threads, checkpoint_every=cfg.checkpoint_every,
        log_every=max(1, min(cfg.update_every, 10)),
    )  # fmt: skip


def _trajectory(
    rows: list[tuple[int, int, Mapping[str, float]]], domains: Sequence[str]
) -> pl.DataFrame:
    import polars as pl

    schema = {"step": pl.Int64, "tokens": pl.Int64, **{f"w:{d}": pl.Float64 for d in domains}}
    return pl.DataFrame(
        [[s, t, *(float(w.get(d, 0.0)) for d in domains)] for s, t, w in rows],
        schema=schema,
        orient="row",
    )


def _save_weights_plot(fig: Any, ax: Any, title: str, path: str | Path) -> Path:
    """The weight plots' common axis, legend and file settings (no timestamp in the PNG)."""
    import matplotlib.pyplot as plt

    ax.set_ylabel("domain weight")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_trajectory(traj: pl.DataFrame, path: str | Path, title: str = "") -> Path:
    """Weight of each domain against proxy training tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for col in [c for c in traj.columns if c.startswith("w:")]:
        ax.plot(traj["tokens"], traj[col], marker="o", ms=2.5, lw=1.2, label=col[2:])
    ax.set_xlabel("proxy training tokens")
    return _save_weights_plot(fig, ax, title, path)


def plot_schedule(
    traj: pl.DataFrame,
    stages: Sequence[tuple[float, Mapping[str, float]]],
    total_tokens: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """The staged schedule (thick steps) over the continuous trajectory (thin steps), per
    domain in one colour, against the fraction of training; dotted lines at the boundaries.

    ``stages`` are ``(start fraction, weights)`` pairs (:func:`curamix.mixers.schedule_stages`),
    ``total_tokens`` the tokens of the run the trajectory comes from.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = np.append(np.asarray(traj["tokens"], dtype=np.float64), total_tokens) / total_tokens
    starts = [float(s) for s, _ in stages]
    sx = np.array([*starts, 1.0])
    cols = [c for c in traj.columns if c.startswith("w:")]
    for i, col in enumerate(cols):
        color = f"C{i % 10}"
        y = np.asarray(traj[col], dtype=np.float64)
        ax.step(x, np.append(y, y[-1]), where="post", color=color, lw=0.8, alpha=0.45)
        sy = [float(w.get(col[2:], 0.0)) for _, w in stages]
        ax.step(sx, [*sy, sy[-1]], where="post", color=color, lw=2.2, label=col[2:])
    for s in starts[1:]:
        ax.axvline(s, color="0.6", lw=0.6, ls=":")
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of training tokens")
    return _save_weights_plot(fig, ax, title, path)


def _train(
    pcfg: ProxyTrainConfig,
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    target: np.ndarray | None,
    out_dir: Path,
    hook: Any = None,
) -> ProxyResult:
    from curamix.proxy.train import train_proxy

    return train_proxy(
        pcfg, train, val, weights, target_tokens=target, out_dir=out_dir, hook=hook,
        progress=False,
    )  # fmt: skip


def _search(
    cfg: MixtureSearchConfig,
    seed: int,
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    target: np.ndarray | None,
    vocab_size: int,
    work: Path,
    inputs: Mapping[str, Any],
    say: Callable[[str], None],
    pool_tokens: Mapping[str, float] | None = None,
) -> tuple[BaseMixer, ProxyResult, list[tuple[int, int, dict[str, float]]], dict[str, Any]]:
    """Fit the mixer; returns it, the final proxy run, the weight trajectory and extras.

    ``pool_tokens``: each domain's training tokens in the whole pool (what token-count
    mixers weigh), when ``train`` holds a sample of it; default the streams' lengths."""
    from curamix.mixers import DomainStats

    method = cfg.method
    tokens = {
        d: float(pool_tokens[d] if pool_tokens is not None else len(train[d]))
        for d in sorted(train)
    }
    pcfg = proxy_config(cfg, vocab_size, seed)
    n_steps = pcfg.n_steps()
    extra: dict[str, Any] = {}
    mixer = make_mixer(method, cfg.params, seed)
    if method == "doremi":
        missing = [d for d in tokens if d not in val]
        if missing:
            raise ValueError(
                f"DoReMi needs validation documents in every domain; {missing} have none "
                "(a domain needs two or more documents)"
            )
        say(f"mixture: DoReMi reference run on uniform weights ({pcfg.total_tokens:,} tokens)")
        ref = _train(pcfg, train, val, dict.fromkeys(tokens, 1 / len(tokens)), target,
                     work / "reference")  # fmt: skip
        extra["reference_losses"] = {d: ref.val_losses[d] for d in tokens}
        stats = DomainStats(tokens, reference_losses=extra["reference_losses"], inputs=inputs)
    elif method == "regmix":
        budget = cfg.regmix_tokens or max(cfg.total_tokens // 4, cfg.batch_size * cfg.seq_len)
        stats = DomainStats(tokens, total_tokens=float(budget), inputs=inputs)
        designs = mixer.sample_mixtures(stats, cfg.regmix_runs)  # type: ignore[attr-defined]
        losses = []
        rcfg = proxy_config(cfg, vocab_size, seed, total_tokens=budget)
        for i, row in enumerate(designs):
            w = {d: float(x) for d, x in zip(stats.domains, row, strict=True)}
            res = _train(rcfg, train, val, w, target, work / f"regmix-{i:03d}")
            loss = res.target_loss if res.target_loss is not None else res.mean_val_loss
            losses.append(loss)
            say(f"mixture: RegMix run {i + 1}/{len(designs)}: loss {loss:.4f}")
        name = "target_loss" if target is not None else "mean_val_loss"
        mixer.fit(stats, designs, np.array(losses), target=name)  # type: ignore[call-arg]
        if getattr(mixer, "fallback_", None):
            say(f"mixture: RegMix fell back: {mixer.fallback_['reason']}")  # type: ignore[attr-defined]
        else:
            say(f"mixture: RegMix regressor CV Spearman {mixer.cv_spearman_:.3f}")  # type: ignore[attr-defined]
        extra["regmix_runs"] = [
            {"weights": dict(zip(stats.domains, map(float, r), strict=True)), "loss": float(y)}
            for r, y in zip(designs, losses, strict=True)
        ]
        extra["predicted_loss"] = float(mixer.predicted_loss_)  # type: ignore[attr-defined]
    elif method == "skillit":
        graph = _skillit_graph(cfg, seed, train, val, target, vocab_size, say)
        params = {**cfg.params, "graph": graph}
        if target is not None and "target" in graph.columns:
            params.setdefault("target_mask", ["target"])  # the targeted mode (docs/mixers.md)
        mixer = make_mixer(method, params, seed)
        extra["skills_graph"] = graph.to_dict()
        stats = DomainStats(tokens, inputs=inputs)
    else:
        stats = DomainStats(tokens, inputs=inputs)
    if method != "regmix":
        mixer.fit(stats)  # type: ignore[attr-defined]
    start = dict(mixer.weights_)
    online = method in ONLINE
    say(
        f"mixture: training the {cfg.model} proxy for {n_steps} steps with "
        f"{method}{' updating the weights every ' + str(cfg.update_every) + ' steps' if online else ''}"
    )
    res = _train(pcfg, train, val, start, target, work / "proxy", hook=mixer if online else None)
    rows: list[tuple[int, int, dict[str, float]]] = [(0, 0, start)]
    if online:
        rows += [(s, t, dict(w)) for s, t, w in mixer.history_]  # type: ignore[attr-defined]
    else:
        rows.append((res.steps, res.tokens_trained, dict(mixer.weights_)))
    return mixer, res, rows, extra


def _skillit_graph(
    cfg: MixtureSearchConfig,
    seed: int,
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    target: np.ndarray | None,
    vocab_size: int,
    say: Callable[[str], None],
) -> Any:
    """Skill-it's graph: ``mixture.skills_graph`` (a file), else estimated by the edge test on
    short proxy runs of the search's own proxy (:func:`curamix.mixers.estimate_skills_graph`)."""
    from curamix.mixers.skillit import estimate_skills_graph, resolve_skills_graph

    domains = sorted(train)
    if cfg.skills_graph:
        say(f"mixture: Skill-it graph from {cfg.skills_graph}")
        return resolve_skills_graph(cfg.skills_graph, domains, has_target=target is not None)
    one = cfg.batch_size * cfg.seq_len
    edge = cfg.skills_graph_tokens or max(one, cfg.total_tokens // 16)
    warm = cfg.skills_graph_warmup if cfg.skills_graph_warmup is not None else cfg.total_tokens // 8
    k = len(domains)
    runs = k if cfg.skills_graph_estimate == "single" else k * (k + 1) // 2
    say(
        f"mixture: estimating the Skill-it graph ({cfg.skills_graph_estimate} edge test): "
        f"{runs} proxy runs of {warm:,} warmup + {edge:,} tokens"
    )
    return estimate_skills_graph(
        proxy_config(cfg, vocab_size, seed, total_tokens=edge), {d: train[d] for d in domains},
        val, target, how=cfg.skills_graph_estimate, warmup_tokens=warm, on_run=say,
    )  # fmt: skip


def run_mixture_search(
    run_dir: str | Path,
    cfg: MixtureSearchConfig,
    pool: JobResult,
    seed: int = 0,
    target_texts: Sequence[str] = (),
    target_domains: Sequence[str] = (),
    on_step: Callable[[str], None] | None = None,
    run_parts: Any = None,
) -> JobResult:
    """Search the mixture of ``pool``'s domains; write ``RUN/mixture-<key>/`` (skipped when done).

    The proxy trains on a seeded, token-budgeted sample of the pool (:func:`read_pool_sample`),
    tokenized one task per part into cached shards; the pool never sits in this process.

    Parameters
    ----------
    run_dir : path
        The run folder.
    cfg : MixtureSearchConfig
    pool : JobResult
        The completed stage whose ``data/`` the proxy trains on.
    seed : int
        Seeds the pool sample (and so the tokenizer's), the train/validation split, the proxy
        and the mixer.
    target_texts : texts, optional
        The target (benchmark train texts): its loss is reported, its gradient drives DGA and
        TiKMiX, RegMix regresses it.
    target_domains : domains, optional
        Pool domains whose held-out documents are (also) the target.
    run_parts : PartRunner, optional
        Runs the sample's per-part tasks on Spark
        (``functools.partial(curamix.pipelines.parts.map_parts, spark)``; the flow passes it);
        see :func:`parts_runner` for when it is used.

    Returns
    -------
    JobResult
        ``stage="mixture"``; ``skipped`` when a completed output with the same key was there.

    Raises
    ------
    ValueError
        No documents, a method that needs a target without one, unknown target domains, bad
        mixer parameters (each message names the value).
    """
    from curamix.io.store import write_json_atomic
    from curamix.mixers.base import _jsonable
    from curamix.mixture import Mixture
    from curamix.proxy.tokenizer import encode_stream, tokenizer_hash

    say = on_step or (lambda _m: None)
    run_dir = Path(run_dir)
    make_mixer(cfg.method, cfg.params, seed)  # bad parameters fail before any work
    if cfg.method == "skillit" and "graph" in cfg.params:
        raise ValueError(
            f"mixture.params.graph={cfg.params['graph']!r}: give a graph file as "
            "mixture.skills_graph (its content then counts in the search's key)"
        )
    if cfg.method == "skillit" and cfg.skills_graph and not Path(cfg.skills_graph).is_file():
        raise ValueError(f"mixture.skills_graph {cfg.skills_graph!r} does not exist")
    target_texts = list(target_texts)
    if cfg.method in NEEDS_TARGET and not target_texts and not target_domains:
        raise ValueError(
            f"mixture.method {cfg.method!r} follows a target's gradient: give "
            "mixture.target_inputs or mixture.target_domains (or a dsir section with targets)"
        )
    target_sha = texts_digest(target_texts) if target_texts else ""
    key = search_key(cfg, seed, pool, target_sha, target_domains)
    done = load_completed(run_dir, STEP, key)
    if done is not None:
        say(f"mixture: skipped, already complete at {done.path}")
        return done

    t0 = time.perf_counter()
    work = run_dir / "proxy" / f"search-{key}"
    work.mkdir(parents=True, exist_ok=True)
    tok, sample = read_pool_sample(
        run_dir, cfg, pool, seed, work / "tokenizer.json", run_parts, say
    )
    train, val, per = sample.train, sample.val, sample.domains
    unknown = sorted(set(target_domains) - set(train))
    if unknown:
        raise ValueError(
            f"mixture target_domains {unknown} are not in the {pool.stage} output "
            f"(domains: {sorted(train)})"
        )
    n_docs = {d: e["docs"] for d, e in per.items()}
    say(
        f"mixture: {sum(n_docs.values()):,} documents in {len(per)} domains from "
        f"{pool.path.name}; the sample: "
        + ", ".join(f"{d} {e['sample_docs']:,} docs" for d, e in per.items())
    )
    empty = [d for d, v in train.items() if len(v) == 0]
    if empty:
        raise ValueError(f"domains {empty} have no training tokens")
    parts = []
    if target_texts:
        parts.append(encode_stream(tok, target_texts))
    parts += [np.asarray(val[d]) for d in target_domains if d in val]
    target = np.concatenate(parts) if parts else None
    if target is not None and len(target) < 2:
        raise ValueError("the target has fewer than two tokens")
    inputs = {
        "pool_stage": pool.stage,
        "pool_documents": int(sum(n_docs.values())),
        "sample_sha256": sample.digest,
        "sample_tokens_per_domain": sample.need,
        "target_sha256": target_sha or None,
        "target_domains": list(target_domains),
        "tokenizer_sha256": tokenizer_hash(tok),
    }
    pool_tokens = {d: float(e["pool_train_tokens"]) for d, e in per.items()}
    mixer, res, rows, extra = _search(
        cfg, seed, train, val, target, tok.get_vocab_size(), work, inputs, say, pool_tokens
    )
    mix = mixer.mixture()
    staged = None
    if cfg.method in ONLINE:
        from curamix.mixers.schedule import compress_trajectory, staged_mixture

        sc = cfg.schedule
        staged = compress_trajectory(rows, res.tokens_trained, sc.stages, sc.epsilon)
        mix = staged_mixture(staged, mix, sc.export)
        say(
            f"mixture: the trajectory ({staged.n_points} points) as {staged.n_stages} stages, "
            f"max L1 {staged.max_l1:.3f} to the continuous weights; mixture.json holds the "
            f"{sc.export} weights"
        )
    if cfg.upsample:
        from curamix.mixers import with_upsampling

        mix = with_upsampling(mix, cfg.upsample, cfg.upsample_factor, cfg.upsample_last)
    pcfg = proxy_config(cfg, tok.get_vocab_size(), seed)
    search_info = _jsonable(
        {
            "proxy": pcfg.model_dump(mode="json", exclude={"checkpoint_every", "cpu_threads"}),
            "n_params_non_embedding": res.n_params_non_embedding,
            "val_losses": res.val_losses,
            "target_loss": res.target_loss,
            "mean_val_loss": res.mean_val_loss,
            "epochs": res.epochs,
            **extra,
        }
    )
    mixture = Mixture(
        weights=mix.weights,
        schedule=mix.schedule,
        domain_tokens={d: pool_tokens[d] for d in mix.weights},
        provenance={**mix.provenance, "search": search_info},
    )
    import polars as pl

    domains = list(mixture.weights)
    traj = _trajectory(rows, domains)

    with stage_writer(run_dir, STEP, key) as w:
        mixture.write_json(w.path("mixture.json"))
        traj.write_csv(w.path("trajectory.csv"))
        traj.write_parquet(w.path("trajectory.parquet"))
        pl.from_pandas(res.metrics).write_parquet(w.path("metrics.parquet"))
        shutil.copyfile(work / "tokenizer.json", w.path("tokenizer.json"))
        if target is not None:
            with open(w.path("target.npy"), "wb") as fh:
                np.save(fh, np.asarray(target), allow_pickle=False)
        plot_trajectory(
            traj, w.path("weights.png"), f"{cfg.method} on the {cfg.model} proxy ({pool.stage})"
        )
        if "skills_graph" in extra:
            from curamix.mixers.skillit import plot_skills_graph, resolve_skills_graph

            graph = resolve_skills_graph(mixer.graph_, list(mixer.domains_))  # type: ignore[attr-defined]
            graph.write_json(w.path("skills_graph.json"))
            plot_skills_graph(graph, w.path("skills_graph.png"),
                              f"Skill-it graph ({graph.how}; rows: trained on)")  # fmt: skip
        if staged is not None:
            plot_schedule(
                traj,
                list(zip(staged.starts, staged.weights, strict=True)),
                res.tokens_trained,
                w.path("schedule.png"),
                f"{cfg.method}: {staged.n_stages} stages over {staged.n_points} updates "
                f"(max L1 {staged.max_l1:.3f}, mean {staged.mean_l1:.3f})",
            )
        counts = {
            "in": int(sum(n_docs.values())),
            "out": len(domains),
            "per_domain": {
                d: {
                    "docs": n_docs[d],
                    "train_tokens": round(pool_tokens[d]),
                    "sample_docs": per[d]["sample_docs"],
                    "sample_train_tokens": len(train[d]),
                    "sample_val_tokens": len(val[d]) if d in val else 0,
                    "covered": per[d]["covered"],
                    "weight": float(mixture.weights[d]),
                    "val_loss": float(res.val_losses[d]) if d in res.val_losses else None,
                }
                for d in domains
            },
        }
        manifest = {
            "config": cfg.model_dump(mode="json"),
            "config_hash": config_hash(cfg),
            "seed": seed,
            "method": cfg.method,
            "inputs": {"manifests": {pool.stage: pool.manifest_hash}, **inputs},
            "counts": counts,
            "weights": dict(mixture.weights),
            "target_loss": res.target_loss,
            "mean_val_loss": res.mean_val_loss,
            "timings": {"total_s": round(time.perf_counter() - t0, 3), "proxy_s": res.wall_s},
            "outputs": {
                "mixture": "mixture.json",
                "trajectory": "trajectory.parquet",
                "plot": "weights.png",
                "metrics": "metrics.parquet",
                "report": "report.md",
                **({"schedule_plot": "schedule.png"} if staged is not None else {}),
                **(
                    {"skills_graph": "skills_graph.json", "graph_plot": "skills_graph.png"}
                    if "skills_graph" in extra
                    else {}
                ),
            },
        }
        w.path("report.md").write_text(_report(manifest, mixture), encoding="utf-8")
        write_json_atomic(w.path("search.json"), search_info)
        result = w.commit(manifest)
    shutil.rmtree(work, ignore_errors=True)
    say(
        f"mixture: {cfg.method} done in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(f"{d} {v:.3f}" for d, v in mixture.weights.items())
    )
    return result


def load_search_streams(
    run_dir: str | Path, search: JobResult, pool: JobResult
) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """The tokenizer, train / validation streams and target stream a search used (from its
    folder and the token cache; the sample is drawn again, part by part in this process, when
    the cache is gone), for a later step such as the scaling sweep."""
    cfg = MixtureSearchConfig.model_validate(search.manifest["config"])
    tok, sample = read_pool_sample(
        run_dir,
        cfg.model_copy(update={"engine": "local"}),
        pool,
        int(search.manifest["seed"]),
        search.path / "tokenizer.json",
    )
    train, val = sample.train, sample.val
    tpath = search.path / "target.npy"
    target = np.load(tpath, allow_pickle=False) if tpath.is_file() else None
    return tok, train, val, target


def read_mixture(search: JobResult) -> Mixture:
    """The mixture a search wrote."""
    from curamix.mixture import Mixture

    return Mixture.read_json(search.path / "mixture.json")


def _report(manifest: Mapping[str, Any], mixture: Mixture) -> str:
    c = manifest["counts"]
    lines = [
        "# Mixture search",
        "",
        f"Method **{manifest['method']}** on a {manifest['config']['model']} proxy "
        f"({manifest['config']['total_tokens']:,} tokens, seed {manifest['seed']}), over "
        f"{c['in']:,} documents of the `{manifest['inputs']['pool_stage']}` output.",
        "",
        "The proxy trained on a seeded sample of each domain (its documents in the order of a "
        "hash of (seed, id), up to "
        + (
            f"{manifest['inputs']['sample_tokens_per_domain']:,} tokens"
            if manifest["inputs"].get("sample_tokens_per_domain")
            else "the whole domain"
        )
        + "). A domain's train tokens are estimated from its sample's tokens per character, "
        "unless the sample holds all of it (marked *).",
        "",
        "| domain | documents | sampled | train tokens | sample train tokens | weight | val loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d, row in c["per_domain"].items():
        vl = f"{row['val_loss']:.4f}" if row["val_loss"] is not None else "-"
        star = "*" if row["covered"] else ""
        lines.append(
            f"| {d} | {row['docs']:,} | {row['sample_docs']:,} | {row['train_tokens']:,}{star} "
            f"| {row['sample_train_tokens']:,} | {row['weight']:.4f} | {vl} |"
        )
    tl = manifest.get("target_loss")
    lines += [
        "",
        f"Mean validation loss {manifest['mean_val_loss']:.4f}"
        + (f"; target loss {tl:.4f}." if tl is not None else "."),
    ]
    for s in mixture.schedule:
        lines.append(
            f"From {s.start:.0%} of training ({s.name}): "
            + ", ".join(f"{d} {v:.3f}" for d, v in s.weights.items())
        )
    lines += ["", "![weights](weights.png)", ""]
    if manifest["outputs"].get("graph_plot"):
        lines += [
            "Skill-it's skills graph (`skills_graph.json`; rows: the domain trained on, columns: "
            "the loss it lowers, `target` the target set's):",
            "",
            "![skills graph](skills_graph.png)",
            "",
        ]
    sched = mixture.provenance.get("schedule")
    if isinstance(sched, Mapping) and sched.get("stages"):
        held = "holds this schedule" if sched["export"] == "staged" else "holds the final weights"
        lines += [
            f"The trajectory as {sched['n_stages']} stages ({sched['how']}): max L1 "
            f"{sched['max_l1']:.3f}, token-weighted mean L1 {sched['mean_l1']:.3f} to the "
            f"continuous weights; `mixture.json` {held} (`mixture.schedule.export`).",
            "",
            "![schedule](schedule.png)",
            "",
        ]
    return "\n".join(lines)


def mixture_table(mixture: Mixture) -> list[dict[str, Any]]:
    """Rows (domain, weight, later stages' weights, tokens, epochs) for a table artifact."""
    d = mixture.to_dict()
    rows = []
    for dom, w in sorted(mixture.weights.items(), key=lambda kv: -kv[1]):
        row: dict[str, Any] = {"domain": dom, "weight": round(float(w), 6)}
        for s in mixture.schedule:
            row[f"weight ({s.name or s.start})"] = round(float(s.weights[dom]), 6)
        if mixture.domain_tokens is not None:
            row["unique tokens"] = int(mixture.domain_tokens[dom])
        if "tokens_per_domain" in d:
            row["tokens"] = float(f"{d['tokens_per_domain'][dom]:.4g}")
        if "epochs" in d:
            row["epochs"] = round(float(d["epochs"][dom]), 3)
        rows.append(row)
    return rows
