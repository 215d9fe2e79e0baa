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

The key hashes the search config, the seed, the pool's manifest and the target texts, so a
rerun with the same inputs is skipped; a killed search resumes from the proxy's checkpoint
(``RUN/proxy/search-<key>/``). Every number comes from seeded generators, so the same inputs
give the same ``mixture.json``, byte for byte (on one machine).

Methods: online mixers ride the proxy as its hook (``dga``, ``tikmix``: the target's gradient;
``doremi``: excess loss over a uniform reference run trained first); ``regmix`` trains
``regmix_runs`` short proxies on sampled mixtures and regresses the target loss on them; the
baselines (``uniform``, ``natural``, ``temperature``) set the weights from token counts and
train one proxy for the report. No Prefect and no Spark here.
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
    "uniform": "UniformMixer",
    "natural": "NaturalMixer",
    "temperature": "TemperatureMixer",
}
ONLINE = ("dga", "tikmix", "doremi")
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


def read_domains(data_path: str | Path) -> dict[str, list[str]]:
    """A stage's documents as ``{domain: [text, ...]}`` (:func:`curamix.proxy.data.read_domain_texts`)."""
    from curamix.proxy.data import read_domain_texts

    out = read_domain_texts(data_path)
    if not out:
        raise ValueError(f"no documents in {data_path}: nothing to search a mixture over")
    return out


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

    exclude = {"checkpoint_every", "target_inputs"}
    if cfg.schedule == ScheduleConfig():
        exclude.add("schedule")
    settings = cfg.model_dump(mode="json", exclude=exclude)
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
) -> tuple[BaseMixer, ProxyResult, list[tuple[int, int, dict[str, float]]], dict[str, Any]]:
    """Fit the mixer; returns it, the final proxy run, the weight trajectory and extras."""
    from curamix.mixers import DomainStats

    method = cfg.method
    tokens = {d: float(len(train[d])) for d in sorted(train)}
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


def run_mixture_search(
    run_dir: str | Path,
    cfg: MixtureSearchConfig,
    pool: JobResult,
    seed: int = 0,
    target_texts: Sequence[str] = (),
    target_domains: Sequence[str] = (),
    on_step: Callable[[str], None] | None = None,
) -> JobResult:
    """Search the mixture of ``pool``'s domains; write ``RUN/mixture-<key>/`` (skipped when done).

    Parameters
    ----------
    run_dir : path
        The run folder.
    cfg : MixtureSearchConfig
    pool : JobResult
        The completed stage whose ``data/`` the proxy trains on.
    seed : int
        Seeds the tokenizer sample, the train/validation split, the proxy and the mixer.
    target_texts : texts, optional
        The target (benchmark train texts): its loss is reported, its gradient drives DGA and
        TiKMiX, RegMix regresses it.
    target_domains : domains, optional
        Pool domains whose held-out documents are (also) the target.

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
    from curamix.proxy.data import tokenize_domains
    from curamix.proxy.tokenizer import encode_stream, load_or_train_tokenizer, tokenizer_hash

    say = on_step or (lambda _m: None)
    run_dir = Path(run_dir)
    make_mixer(cfg.method, cfg.params, seed)  # bad parameters fail before any work
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
    texts = read_domains(pool.data_path)
    unknown = sorted(set(target_domains) - set(texts))
    if unknown:
        raise ValueError(
            f"mixture target_domains {unknown} are not in the {pool.stage} output "
            f"(domains: {sorted(texts)})"
        )
    n_docs = {d: len(v) for d, v in texts.items()}
    say(
        f"mixture: {sum(n_docs.values()):,} documents in {len(texts)} domains from {pool.path.name}"
    )
    work = run_dir / "proxy" / f"search-{key}"
    work.mkdir(parents=True, exist_ok=True)
    tok = load_or_train_tokenizer(work / "tokenizer.json", texts, cfg.vocab_size, random_state=seed)
    train, val = tokenize_domains(
        tok, texts, run_dir / "proxy" / "tokens", cfg.val_fraction, random_state=seed
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
        "pool_sha256": texts_digest(texts),
        "target_sha256": target_sha or None,
        "target_domains": list(target_domains),
        "tokenizer_sha256": tokenizer_hash(tok),
    }
    mixer, res, rows, extra = _search(
        cfg, seed, train, val, target, tok.get_vocab_size(), work, inputs, say
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
        domain_tokens={d: float(len(train[d])) for d in mix.weights},
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
                    "train_tokens": len(train[d]),
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
    folder and the token cache), for a later step such as the scaling sweep."""
    from curamix.proxy.data import tokenize_domains
    from curamix.proxy.tokenizer import load_tokenizer

    cfg = MixtureSearchConfig.model_validate(search.manifest["config"])
    tok = load_tokenizer(search.path / "tokenizer.json")
    train, val = tokenize_domains(
        tok,
        read_domains(pool.data_path),
        Path(run_dir) / "proxy" / "tokens",
        cfg.val_fraction,
        random_state=int(search.manifest["seed"]),
    )
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
        "| domain | documents | train tokens | weight | val loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for d, row in c["per_domain"].items():
        vl = f"{row['val_loss']:.4f}" if row["val_loss"] is not None else "-"
        lines.append(
            f"| {d} | {row['docs']:,} | {row['train_tokens']:,} | {row['weight']:.4f} | {vl} |"
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
