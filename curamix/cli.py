"""The ``curamix`` command line: ``ingest``, ``run``, ``dedup``, ``embed``, ``semdedup``,
``decontam``, ``score`` (``dsir``, ``betr``), ``select``, ``coreset``, ``sweep``, ``fit``,
``recommend``, ``export``, ``status``, ``demo`` (the Prefect flow), ``serve``.

Every command prints where its outputs are. Bad configs and a missing Java runtime end with
a one-paragraph message and exit code 2, not a traceback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from curamix import __version__
from curamix.config import ConfigError, PipelineConfig, build_config, load_config

app = typer.Typer(
    help="curamix: data curation and mixtures for LM pretraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextmanager
def _friendly_errors() -> Iterator[None]:
    from curamix.pipelines.dedup import DedupGateError
    from curamix.pipelines.session import JavaMissingError

    try:
        yield
    except (ConfigError, JavaMissingError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    except DedupGateError as err:  # SemDedupGateError too
        err_console.print(f"[bold red]safety gate:[/] {err}")
        raise typer.Exit(3) from None


@contextmanager
def _steps() -> Iterator[Callable[[str], None]]:
    """A step logger that prints each step with the time since the command started."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        console.print(f"[dim]{time.perf_counter() - t0:7.1f}s[/] {msg}")

    yield say


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _results_table(results: dict) -> None:
    for stage, res in results.items():
        c = res.counts
        per_domain = c.get("per_domain", {})
        cols = list(dict.fromkeys(k for d in per_domain.values() for k in d))
        table = Table(
            title=f"{stage}: {'skipped (already complete)' if res.skipped else 'done'}",
            title_justify="left",
        )
        table.add_column("domain")
        for col in cols:
            table.add_column(col, justify="right")
        for domain, d in per_domain.items():
            table.add_row(domain or "?", *(_fmt(d.get(k, "")) for k in cols))
        table.add_row("[bold]total", *(f"[bold]{_fmt(c[k])}" if k in c else "" for k in cols))
        console.print(table)
        if c.get("quarantine_reasons"):
            console.print(
                "quarantined by reason: "
                + ", ".join(f"{k}={v}" for k, v in c["quarantine_reasons"].items())
            )
        if "kl_reduction" in res.manifest:
            kl = res.manifest["kl_reduction"]
            console.print(
                f"KL reduction toward the target: {kl['selected']:.4f} (random selection of the same size: {kl['random_same_size']:.4f})"
            )
        console.print(f"outputs: [cyan]{res.path}[/]")
        for name in (
            "data",
            "scores",
            "ledger",
            "quarantine",
            "report.md",
            "scores_hist.png",
            "component_sizes.png",
        ):
            if (res.path / name).exists():
                console.print(f"  {name:<15} {res.path / name}")
        console.print(f"  {'manifest':<15} {res.path / 'manifest.json'}")


def _run(cfg: PipelineConfig, only: list[str] | None = None) -> dict:
    from curamix.pipelines.session import get_spark
    from curamix.progress import spark_progress
    from curamix.runner import run_pipeline

    with _steps() as say:
        say(f"run folder: {cfg.run_dir}")
        say(f"starting Spark ({cfg.spark.master})")
        spark = get_spark(cfg.spark)
        with spark_progress(spark, console):
            results = run_pipeline(cfg, spark=spark, on_step=say, only=only)
    _results_table(results)
    return results


@app.command()
def ingest(
    inputs: Annotated[
        list[str], typer.Argument(help="Files, folders or globs (JSONL[.gz|.zst], Parquet, .txt).")
    ],
    run_dir: Annotated[Path, typer.Option("--run-dir", "-o", help="Run folder.")] = Path(
        "runs/default"
    ),
    format: Annotated[str, typer.Option(help="auto, jsonl, parquet, txt or hf.")] = "auto",
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    id_field: Annotated[str, typer.Option(help="Field holding the source id.")] = "id",
    domain: Annotated[str | None, typer.Option(help="One domain for all inputs.")] = None,
    domain_field: Annotated[
        str | None, typer.Option(help="Record field holding the domain.")
    ] = None,
    max_doc_bytes: Annotated[
        int, typer.Option(help="Size limit per document (UTF-8 bytes).")
    ] = 1_000_000,
    oversize: Annotated[
        str, typer.Option(help="quarantine or split documents over the limit.")
    ] = "quarantine",
    master: Annotated[str, typer.Option(help="Spark master URL.")] = "local[*]",
) -> None:
    """Ingest raw files into the document store of RUN_DIR (bad records are quarantined)."""
    with _friendly_errors():
        spec = {
            "format": format,
            "text_field": text_field,
            "id_field": id_field,
            "domain": domain,
            "domain_field": domain_field,
        }
        cfg = build_config(
            {
                "run_dir": str(run_dir),
                "stages": ["ingest"],
                "spark": {"master": master},
                "ingest": {
                    "inputs": [{"path": p, **spec} for p in inputs],
                    "max_doc_bytes": max_doc_bytes,
                    "oversize": oversize,
                },
            },
            origin="command line",
        )
        _run(cfg)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: section.field=value.")
    ] = None,
) -> None:
    """Run the stages a pipeline YAML lists (finished stages are skipped)."""
    with _friendly_errors():
        cfg = load_config(config, set_ or [])
        _run(cfg)


score_app = typer.Typer(help="Score the documents of a run (DSIR, BETR).", no_args_is_help=True)
app.add_typer(score_app, name="score")


@score_app.command("dsir")
def score_dsir(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest.")],
    target_domain: Annotated[
        list[str] | None,
        typer.Option("--target-domain", "-d", help="Pool domain used as target (repeatable)."),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", "-t", help="Target file, folder or glob (repeatable)."),
    ] = None,
    hash_mode: Annotated[
        str,
        typer.Option(
            help="fast (the reference's sha256 buckets, each distinct n-gram hashed once), "
            "sha256 (the reference's string path, slow) or hash64 (64-bit buckets, no table).",
        ),
    ] = "fast",
    num_buckets: Annotated[int, typer.Option(help="Hashed n-gram buckets.")] = 10_000,
    ngrams: Annotated[int, typer.Option(help="Longest n-gram.")] = 2,
    laplace: Annotated[float, typer.Option(help="Pseudo-count added to target buckets.")] = 0.0,
    min_example_length: Annotated[
        int, typer.Option(help="Shorter documents are never selected (tokens).")
    ] = 100,
    length_normalize: Annotated[
        bool, typer.Option(help="Divide log weights by token count.")
    ] = False,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(help="Score long documents as the mean of chunks of this many tokens."),
    ] = None,
    separate_targets: Annotated[
        bool, typer.Option(help="One weight vector per target domain.")
    ] = False,
) -> None:
    """Fit DSIR toward the targets and score every document of the run (Xie et al. 2023)."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "target_domains": target_domain or [],
            "target_inputs": [{"path": str(Path(p).resolve())} for p in target or []],
            "hash_mode": hash_mode,
            "num_buckets": num_buckets,
            "ngrams": ngrams,
            "laplace": laplace,
            "min_example_length": min_example_length,
            "length_normalize": length_normalize,
            "chunk_tokens": chunk_tokens,
            "separate_targets": separate_targets,
        }
        _run(extend_run_config(run_dir, "dsir", section), only=["dsir"])


@score_app.command("betr")
def score_betr(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest.")],
    benchmark: Annotated[
        list[str],
        typer.Option(
            "--benchmark", "-b", help="Benchmark TRAIN file, folder or glob (repeatable)."
        ),
    ],
    sample: Annotated[int, typer.Option(help="Pool documents embedded and ranked.")] = 10_000,
    aggregation: Annotated[str, typer.Option(help="max (best rank) or mean.")] = "max",
    positive_fraction: Annotated[
        float, typer.Option(help="Top share of the ranked sample labelled positive.")
    ] = 0.1,
    keep_tokens: Annotated[
        float | None, typer.Option(help="Share of the pool's tokens kept (default 0.1).")
    ] = None,
    compute: Annotated[
        float | None,
        typer.Option(help="Training FLOPs: keep F_opt(C) = 4e-5 C^0.25 percent of tokens."),
    ] = None,
    model: Annotated[str, typer.Option(help="Embedding model name or folder.")] = (
        "all-MiniLM-L6-v2"
    ),
    max_seq_length: Annotated[int, typer.Option(help="Embedding truncation (tokens).")] = 256,
) -> None:
    """Rank a pool sample against benchmark examples, train a text classifier on the ranking and
    keep the best-scored share of tokens (BETR, Mizrahi et al. 2025)."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "benchmark_inputs": [{"path": str(Path(p).resolve())} for p in benchmark],
            "sample": sample,
            "aggregation": aggregation,
            "positive_fraction": positive_fraction,
            "keep_tokens": keep_tokens,
            "compute": compute,
            "embed": {"model": model, "max_seq_length": max_seq_length},
        }
        results = _run(extend_run_config(run_dir, "betr", section), only=["betr"])
        b = results["betr"].manifest.get("betr", {})
        if b:
            console.print(
                f"kept {b['kept_token_share']:.1%} of the tokens ({b['kept_doc_share']:.1%} of "
                f"the documents); held-out accuracy {b['classifier']['heldout']['accuracy']:.3f}"
            )
        console.print(f"report: [cyan]{results['betr'].path / 'report.md'}[/]")


@app.command("dedup")
def dedup_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest.")],
    threshold: Annotated[float, typer.Option(help="Jaccard threshold of near duplicates.")] = 0.8,
    ngram: Annotated[int, typer.Option(help="Shingle size (words or characters).")] = 5,
    unit: Annotated[str, typer.Option(help="word or char shingles.")] = "word",
    num_perm: Annotated[int, typer.Option(help="MinHash permutations.")] = 128,
    bands: Annotated[int | None, typer.Option(help="LSH bands (default: optimal).")] = None,
    rows: Annotated[int | None, typer.Option(help="LSH rows per band.")] = None,
    scope: Annotated[str, typer.Option(help="global, or local (within each domain).")] = "global",
    exact: Annotated[bool, typer.Option(help="Remove exact duplicates.")] = True,
    near: Annotated[bool, typer.Option(help="Remove MinHash near duplicates.")] = True,
    verify: Annotated[bool, typer.Option(help="Check candidates by exact Jaccard.")] = True,
    domain_priority: Annotated[
        list[str] | None,
        typer.Option("--prefer-domain", help="Keep documents of this domain first (repeatable)."),
    ] = None,
    max_removal_rate: Annotated[
        float, typer.Option(help="Fail when a domain would lose more than this share.")
    ] = 0.5,
    max_component_size: Annotated[
        int, typer.Option(help="List components larger than this in the report.")
    ] = 1000,
) -> None:
    """Remove exact and MinHash-LSH near duplicates, with verified clusters and safety gates."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "threshold": threshold,
            "ngram": ngram,
            "unit": unit,
            "num_perm": num_perm,
            "bands": bands,
            "rows": rows,
            "scope": scope,
            "exact": exact,
            "near": near,
            "verify": verify,
            "domain_priority": domain_priority or [],
            "max_removal_rate": max_removal_rate,
            "max_component_size": max_component_size,
        }
        results = _run(extend_run_config(run_dir, "dedup", section), only=["dedup"])
        console.print(f"report: [cyan]{results['dedup'].path / 'report.md'}[/]")


@app.command("decontam")
def decontam_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest (or dedup).")],
    test: Annotated[
        list[str],
        typer.Option("--test", help="Benchmark test set file (JSONL with id, text); repeatable."),
    ],
    ngram: Annotated[int, typer.Option(help="Word n-gram length.")] = 13,
    min_words: Annotated[
        int, typer.Option(help="Shorter texts get one n-gram of all their words if this long.")
    ] = 8,
    min_matches: Annotated[
        int, typer.Option(help="Matched n-grams that make a document contaminated.")
    ] = 1,
    keep: Annotated[
        bool, typer.Option("--keep", help="Flag contaminated documents in the ledger only.")
    ] = False,
) -> None:
    """Flag and remove documents sharing word n-grams with benchmark test sets (GPT-3 style)."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "test_inputs": [{"path": str(Path(p).resolve())} for p in test],
            "ngram": ngram,
            "min_words": min_words,
            "min_matches": min_matches,
            "remove": not keep,
        }
        results = _run(extend_run_config(run_dir, "decontam", section), only=["decontam"])
        c = results["decontam"].counts
        console.print(
            f"contaminated: {c['flagged']} of {c['in']} documents, removed {c['removed']}, "
            f"kept {c['kept']}"
        )
        console.print(f"report: [cyan]{results['decontam'].path / 'report.md'}[/]")


@app.command("embed")
def embed_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest (or dedup).")],
    model: Annotated[
        str,
        typer.Option(help="Sentence-transformers model: the bundled default or a local folder."),
    ] = "all-MiniLM-L6-v2",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Documents per forward pass.")] = 64,
    max_seq_length: Annotated[int, typer.Option(help="Truncation in model tokens.")] = 256,
    sample: Annotated[
        int | None, typer.Option(help="Embed a seeded sample of this many documents.")
    ] = None,
    index: Annotated[
        str, typer.Option(help="FAISS index: auto, flat, ivf, ivfpq or hnsw.")
    ] = "auto",
    gpu: Annotated[str, typer.Option(help="FAISS on the GPU: auto, on or off.")] = "auto",
) -> None:
    """Embed the pool's documents with a sentence-transformers model and index them (FAISS)."""
    from curamix.runner import extend_run_config
    from curamix.selectors.embed import EmbeddingModelError
    from curamix.selectors.index import GPUUnavailableError, IndexTooLargeError

    with _friendly_errors():
        section = {
            "model": model,
            "device": device,
            "batch_size": batch_size,
            "max_seq_length": max_seq_length,
            "sample": sample,
            "index": {"kind": index, "gpu": gpu},
        }
        try:
            results = _run(extend_run_config(run_dir, "embed", section), only=["embed"])
        except (EmbeddingModelError, IndexTooLargeError, GPUUnavailableError) as err:
            err_console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None
        r = results["embed"]
        ix = r.manifest.get("index") or {}
        console.print(
            f"embedded: {r.counts['embedded']} of {r.counts['in']} documents, {r.manifest['dim']} "
            f"dims, {r.manifest['docs_per_s']} docs/s; index: {ix.get('kind', 'none')}"
        )
        console.print(f"report: [cyan]{r.path / 'report.md'}[/]")


@app.command("semdedup")
def semdedup_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed embed stage.")],
    eps: Annotated[
        float, typer.Option(help="Remove documents with cosine > 1 - eps to an earlier one.")
    ] = 0.05,
    n_clusters: Annotated[
        int | None, typer.Option(help="Spherical k-means clusters (default ~sqrt(n/2)).")
    ] = None,
    keep: Annotated[str, typer.Option(help="far (keep far-from-centroid first) or near.")] = "far",
    scope: Annotated[str, typer.Option(help="global, or local (within each domain).")] = "global",
    max_removal_rate: Annotated[
        float, typer.Option(help="Fail when a domain would lose more than this share.")
    ] = 0.5,
) -> None:
    """Remove semantic duplicates within k-means clusters of the embeddings (SemDeDup)."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "eps": eps,
            "n_clusters": n_clusters,
            "keep": keep,
            "scope": scope,
            "max_removal_rate": max_removal_rate,
        }
        results = _run(extend_run_config(run_dir, "semdedup", section), only=["semdedup"])
        c = results["semdedup"].counts
        console.print(f"semantic duplicates: {c['removed']} of {c['in']} removed, kept {c['kept']}")
        console.print(f"report: [cyan]{results['semdedup'].path / 'report.md'}[/]")


@app.command("coreset")
def coreset_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed embed stage.")],
    method: Annotated[
        str,
        typer.Option(help="ccs, prototypes, kcenter, facility_location, dbp or random."),
    ] = "ccs",
    k: Annotated[int | None, typer.Option(help="Documents to keep.")] = None,
    fraction: Annotated[float | None, typer.Option(help="Share of the pool to keep.")] = None,
    score: Annotated[
        str,
        typer.Option(
            help="prototype (k-means distance), dsir or betr (a scoring stage's scores), or "
            "proxy_loss (loss under a small reference proxy trained on a pool sample)."
        ),
    ] = "prototype",
    beta: Annotated[float, typer.Option(help="CCS: hardest share dropped first.")] = 0.3,
    strata: Annotated[int, typer.Option(help="CCS: equal-width score strata.")] = 50,
    keep_easy: Annotated[
        bool, typer.Option("--keep-easy", help="Prototypes: keep the easiest, not the hardest.")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the run's).")] = None,
) -> None:
    """Keep a coreset of the pool: CCS, SSL prototypes, k-center greedy or random."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "method": method,
            "k": k,
            "fraction": fraction,
            "score": score,
            "beta": beta,
            "strata": strata,
            "keep_hard": not keep_easy,
        }
        cfg = extend_run_config(run_dir, "coreset", section)
        if seed is not None:
            cfg = cfg.model_copy(update={"seed": seed})
        results = _run(cfg, only=["coreset"])
        console.print(f"report: [cyan]{results['coreset'].path / 'report.md'}[/]")


@app.command("select")
def select_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed scoring stage.")],
    k: Annotated[int | None, typer.Option(help="Documents to select.")] = None,
    fraction: Annotated[float | None, typer.Option(help="Share of the pool to select.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the Gumbel noise (default: the run's).")
    ] = None,
    top_k: Annotated[bool, typer.Option("--top-k", help="Highest weights, no sampling.")] = False,
) -> None:
    """Select documents by importance resampling over the run's DSIR scores."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        cfg = extend_run_config(run_dir, "select", {"k": k, "fraction": fraction, "top_k": top_k})
        if seed is not None:
            cfg = cfg.model_copy(update={"seed": seed})
        results = _run(cfg, only=["select"])
        report = results["select"].path / "report.md"
        console.print(f"report: [cyan]{report}[/]")


@app.command()
def status(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a run's stages, their counts and what remains to run."""
    from curamix.runner import run_status

    with _friendly_errors():
        rows = run_status(run_dir)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
        return
    table = Table(title=f"run {run_dir}", title_justify="left")
    for col in ("stage", "state", "in", "kept", "removed", "quarantined", "out", "folder"):
        table.add_column(col)
    colors = {"done": "green", "stale": "yellow", "pending": "white", "error": "red"}
    for r in rows:
        c = r.counts
        table.add_row(
            r.stage,
            f"[{colors.get(r.state, 'white')}]{r.state}[/]",
            *(str(c.get(k, "")) for k in ("in", "kept", "removed", "quarantined", "out")),
            r.folder or "",
        )
    console.print(table)
    for r in rows:
        if r.detail:
            console.print(f"  {r.stage}: {r.detail}")
    remaining = [r.stage for r in rows if r.state != "done"]
    console.print(
        "remaining: " + (", ".join(remaining) if remaining else "nothing, every stage is done")
    )


@app.command()
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the demo corpus and its run.")
    ] = Path("demo"),
    n_docs: Annotated[int, typer.Option(help="Clean pool documents to generate.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed of the generator and the run.")] = 0,
    run_pipeline: Annotated[
        bool, typer.Option("--run/--no-run", help="Run the pipeline after generating.")
    ] = True,
) -> None:
    """Generate the SYNTHETIC demo corpus and run the Prefect flow curate_flow on it."""
    from curamix.demo import write_demo_corpus, write_demo_pipeline

    with _friendly_errors():
        t = time.perf_counter()
        corpus = write_demo_corpus(out, n_docs=n_docs, seed=seed)
        pipeline = write_demo_pipeline(out, seed=seed)
        console.print(
            f"demo corpus (synthetic, seed {seed}): {corpus.total_records} records in {len(corpus.n_docs)} domains, "
            f"{corpus.n_exact_dups} exact + {corpus.n_near_dups} near duplicates, {corpus.n_leaked} leaked benchmark "
            f"items, {sum(corpus.n_bad.values())} bad records ({time.perf_counter() - t:.1f}s)"
        )
        console.print(
            f"  raw pool   {corpus.raw_dir}\n  targets    {corpus.targets_dir}\n  truth      {corpus.truth_dir}\n  pipeline   {pipeline}"
        )
        if not run_pipeline:
            return
        load_config(pipeline)  # a bad config fails here, before Prefect starts
        _prefect_env()
        from curamix.flows.curate import curate_flow

        console.print(
            "running the pipeline as the Prefect flow curate_flow "
            + (
                f"against {os.environ['PREFECT_API_URL']}"
                if os.environ.get("PREFECT_API_URL")
                else "(ephemeral Prefect; set PREFECT_API_URL to watch it in a server's UI)"
            )
        )
        t = time.perf_counter()
        summary = curate_flow(str(pipeline))
        results = _flow_results(summary)
        _results_table(results)
        if "dedup" in results:
            from curamix.demo import dedup_recall

            found = dedup_recall(results["dedup"].path, corpus.truth_dir)
            console.print(
                "dedup vs the injected duplicates (truth/duplicates.jsonl): "
                + ", ".join(f"{k} {f}/{n}" for k, (f, n) in found.items())
            )
        _flow_report(summary)
        console.print(f"flow finished in {time.perf_counter() - t:.0f}s")
        console.print(f"next: [bold]curamix status {out / 'run'}[/]")
        console.print(
            f"explore: open [bold]notebooks/explore.ipynb[/] in Jupyter with "
            f"CURAMIX_RUN={(out / 'run').resolve()} (composition, removals, scores, weights, "
            "fits, export)"
        )


def _prefect_env() -> None:
    """Prefect settings for a local run: a patient ephemeral server, no analytics."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _flow_results(summary: dict) -> dict:
    """The stage results of a ``curate_flow`` summary, as ``JobResult`` objects."""
    from curamix.config import KNOWN_STAGES
    from curamix.io.store import MANIFEST, JobResult

    out = {}
    for step, s in summary["steps"].items():
        if step in KNOWN_STAGES:
            path = Path(s["path"])
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            out[step] = JobResult(step, path, manifest, skipped=s["skipped"])
    return out


def _flow_report(summary: dict) -> None:
    """The mixture weights and where every output and artifact of a flow run is."""
    from curamix.flows.artifacts import step_plots
    from curamix.mixture import Mixture

    steps = summary["steps"]
    for step in ("mixture", "scaling"):
        if step not in steps:
            continue
        path = Path(steps[step]["path"])
        state = "skipped (already complete)" if steps[step]["skipped"] else "done"
        console.print(f"[bold]{step}[/]: {state}\noutputs: [cyan]{path}[/]", soft_wrap=True)
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("_")):
            console.print(f"  {f.relative_to(path).as_posix():<22} {f}", soft_wrap=True)
        if step == "scaling":
            fits = json.loads((path / "fits" / "fits.json").read_text(encoding="utf-8"))
            for w in fits.get("chinchilla", {}).get("warnings", []):
                console.print(f"  [yellow]fit warning:[/] {w}", soft_wrap=True)
    if summary.get("mixture"):
        path = Path(summary["mixture"]["path"])
        mix = Mixture.read_json(path)
        d = mix.to_dict()
        table = Table(
            title=f"mixture weights ({mix.provenance.get('method', '?')})", title_justify="left"
        )
        for col in ("domain", "weight", *(s.name for s in mix.schedule), "tokens", "epochs"):
            table.add_column(col, justify="left" if col == "domain" else "right")
        for dom, w in sorted(mix.weights.items(), key=lambda kv: -kv[1]):
            table.add_row(
                dom,
                f"{w:.4f}",
                *(f"{s.weights[dom]:.4f}" for s in mix.schedule),
                f"{d['tokens_per_domain'][dom]:.4g}" if "tokens_per_domain" in d else "",
                f"{d['epochs'][dom]:.2f}" if "epochs" in d else "",
            )
        console.print(table)
        rec = mix.provenance.get("recommendation")
        if rec:
            console.print(
                f"recommended for C = {rec['compute']:.3g} FLOPs: N = {rec['n_params']:.4g} "
                f"parameters, D = {rec['n_tokens']:.4g} tokens ({rec['size_source']})",
                soft_wrap=True,
            )
        console.print(f"run mixture: [cyan]{path}[/]", soft_wrap=True)
    for f in summary.get("exports", []):
        console.print(f"  export     [cyan]{f}[/]", soft_wrap=True)
    plots = [p for s in steps.values() for p in step_plots(s["path"])]
    for p in plots:
        console.print(f"  plot       [cyan]{p}[/]", soft_wrap=True)
    if summary.get("artifacts"):
        console.print(
            "Prefect artifacts (UI: Artifacts tab; or `prefect artifact ls`): "
            + ", ".join(dict.fromkeys(summary["artifacts"])),
            soft_wrap=True,
        )


@app.command("serve")
def serve_cmd(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML file.")],
    cron: Annotated[
        str | None, typer.Option(help='Cron schedule, e.g. "0 3 * * *" (03:00 every day).')
    ] = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "curamix-curate",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: section.field=value.")
    ] = None,
) -> None:
    """Serve curate_flow on CONFIG as a Prefect deployment with a cron schedule (blocks).

    Needs a Prefect server (its scheduler creates the runs): start one with
    `prefect server start --host 127.0.0.1` and set PREFECT_API_URL (see docs/flows.md)."""
    _prefect_env()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            err_console.print(
                "[bold red]error:[/] no Prefect server: scheduled runs need one. Start it with\n"
                "  PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 prefect server start "
                "--host 127.0.0.1 --port 4200\nand run this again with "
                "PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
            raise typer.Exit(2)
    from curamix.flows.serve import serve_pipeline

    with _friendly_errors():
        try:
            serve_pipeline(config, name=name, cron=cron, overrides=set_ or [], timezone=timezone)
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            err_console.print(f"[bold red]error:[/] {err}")
            raise typer.Exit(2) from None


def _fit_errors() -> tuple[type[BaseException], ...]:
    from curamix.mixture import MixtureError
    from curamix.scaling_laws import NotFittedError, ScalingLawFitError

    return (ScalingLawFitError, NotFittedError, MixtureError, ValueError, FileNotFoundError)


@app.command()
def sweep(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest/dedup.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Model preset (repeatable).")
    ] = None,
    tokens: Annotated[
        list[int] | None, typer.Option("--tokens", "-t", help="Token budget (repeatable).")
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary.")] = 4096,
    seq_len: Annotated[int, typer.Option(help="Context length.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed of every cell.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fit: Annotated[bool, typer.Option("--fit/--no-fit", help="Fit the laws afterwards.")] = True,
    keep: Annotated[
        list[float] | None,
        typer.Option(help="Keep fraction of the scored pool (repeatable): a keep-fraction sweep."),
    ] = None,
    score_stage: Annotated[str, typer.Option(help="Stage whose scores rank the pool.")] = "dsir",
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="Target texts (file/folder/glob) for target_loss."),
    ] = None,
) -> None:
    """Train a grid of proxy models (sizes x token budgets, optionally x keep fractions of a
    DSIR/BETR-ranked pool) and fit the scaling laws."""
    from curamix.scaling_laws.sweep import SweepConfig, run_sweep

    try:
        cfg = SweepConfig(
            **({"models": model} if model else {}),
            **({"token_budgets": tokens} if tokens else {}),
            vocab_size=vocab_size, seq_len=seq_len, batch_size=batch_size, lr=lr, seed=seed,
            device=device,
        )  # fmt: skip
        with _steps() as say:
            if keep:
                _keep_fraction_sweep(run_dir, cfg, keep, score_stage, target, fit, say)
                return
            target_tokens = None
            if target:
                from curamix.proxy.data import prepare_run_tokens
                from curamix.proxy.tokenizer import encode_stream
                from curamix.scaling_laws.data import read_texts

                tok, _, _ = prepare_run_tokens(run_dir, cfg.vocab_size, random_state=seed)
                target_tokens = encode_stream(tok, read_texts(target))
            df = run_sweep(run_dir, cfg, target_tokens=target_tokens, log=say)
            if fit:
                from curamix.scaling_laws.fit import fit_table

                fits = fit_table(df, run_dir / "scaling" / "fits", random_state=seed)
                for w in fits["chinchilla"].get("warnings", []):
                    say(f"[yellow]warning:[/] {w}")
                for h in fits["chinchilla"].get("heldout", []):
                    say(
                        f"held-out N={h['n_params']:.3g} D={h['tokens']:.3g}: loss "
                        f"{h['loss']:.4f} predicted {h['predicted']:.4f} ({h['rel_error']:+.2%})"
                    )
    except (*_fit_errors(), ConfigError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"results: [cyan]{run_dir / 'scaling' / 'results.parquet'}[/]")
    if fit:
        console.print(f"fits:    [cyan]{run_dir / 'scaling' / 'fits' / 'report.md'}[/]")


def _keep_fraction_sweep(run_dir: Path, cfg, keep, score_stage, target, fit, say) -> None:  # type: ignore[no-untyped-def]
    from curamix.proxy.tokenizer import encode_stream, load_or_train_tokenizer, tokenizer_path
    from curamix.scaling_laws.data import read_texts
    from curamix.scaling_laws.fit import fit_table
    from curamix.scaling_laws.sweep import load_scored_pool, run_keep_fraction_sweep

    scored = load_scored_pool(run_dir, score_stage)
    say(f"{len(scored):,} scored documents from the latest '{score_stage}' stage")
    by_domain = {d: g["text"].tolist() for d, g in scored.groupby("domain", sort=True)}
    tok = load_or_train_tokenizer(
        tokenizer_path(run_dir, cfg.vocab_size), by_domain, cfg.vocab_size, random_state=cfg.seed
    )
    target_tokens = encode_stream(tok, read_texts(target)) if target else None
    df = run_keep_fraction_sweep(run_dir, cfg, scored, keep, target_tokens, tok, log=say)
    out = run_dir / "scaling" / "filter"
    if fit:
        fits = fit_table(
            df, out / "fits", laws=("filtering",), random_state=cfg.seed,
            filtering_metric="target_loss" if target else "loss",
        )  # fmt: skip
        for k, p in fits["filtering"]["pools"].items():
            say(
                f"keep {float(k):g}: a={p['a']:.4g} b={p['b']:.4g} d={p['d']:.4g} tau={p['tau']:.3g}"
            )
        console.print(f"fits:    [cyan]{out / 'fits' / 'report.md'}[/]")
    console.print(f"results: [cyan]{out / 'results.parquet'}[/]")


@app.command("fit")
def fit_cmd(
    points: Annotated[
        Path,
        typer.Argument(
            help="Results table (CSV/Parquet; columns n_params, tokens, loss, optional "
            "unique_tokens and w:<domain>) or a run folder holding scaling/results.parquet."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: beside points).")
    ] = None,
    law: Annotated[
        list[str] | None,
        typer.Option("--law", help="chinchilla, data_constrained, mixing, filtering (repeatable)."),
    ] = None,
    holdout: Annotated[
        str, typer.Option(help="largest: hold out the largest run and report its error; none.")
    ] = "largest",
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Fit scaling laws on proxy results; write fits.json, plots and report.md."""
    from curamix.scaling_laws.data import read_table
    from curamix.scaling_laws.fit import fit_table

    try:
        table = points / "scaling" / "results.parquet" if points.is_dir() else points
        out_dir = out or (table.parent / "fits")
        with _steps() as say:
            df = read_table(table)
            say(f"read {len(df)} runs from {table}")
            fits = fit_table(
                df, out_dir, laws=tuple(law or ["chinchilla"]),
                holdout=None if holdout == "none" else holdout, n_boot=n_boot,
                random_state=seed,
            )  # fmt: skip
            for name in ("chinchilla", "data_constrained", "mixing"):
                if name in fits and "params" in fits[name]:
                    say(f"{name}: {json.dumps(fits[name]['params'])[:300]}")
            for w in fits.get("chinchilla", {}).get("warnings", []):
                say(f"[yellow]warning:[/] {w}")
            for h in fits.get("chinchilla", {}).get("heldout", []):
                say(
                    f"held-out N={h['n_params']:.3g} D={h['tokens']:.3g}: loss {h['loss']:.4f}"
                    f" predicted {h['predicted']:.4f} ({h['rel_error']:+.2%})"
                )
    except _fit_errors() as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(
        f"fits: [cyan]{out_dir / 'fits.json'}[/]  report: [cyan]{out_dir / 'report.md'}[/]"
    )


@app.command()
def recommend(
    compute: Annotated[float, typer.Option("--compute", "-c", help="Training FLOPs, e.g. 1e21.")],
    fits: Annotated[
        Path | None, typer.Option(help="fits.json (or its folder) from `curamix fit`.")
    ] = None,
    domain_tokens: Annotated[
        Path | None,
        typer.Option(help="JSON {domain: unique tokens}; caps each domain at max-epochs."),
    ] = None,
    max_epochs: Annotated[float, typer.Option(help="Repetition cap per domain.")] = 4.0,
    upsample: Annotated[
        list[str] | None, typer.Option(help="Domain to upweight at the end (repeatable).")
    ] = None,
    upsample_factor: Annotated[float, typer.Option(help="Upweighting factor.")] = 2.0,
    upsample_last: Annotated[float, typer.Option(help="Last fraction of training.")] = 0.15,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write recommendation + mixture JSON here.")
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="Also make the mixture the run's current one (RUN/mixture.json)."),
    ] = None,
) -> None:
    """Model size, tokens, keep fraction and mixture weights for a compute budget."""
    from curamix.scaling_laws.decide import recommend as _recommend
    from curamix.scaling_laws.fit import load_fits

    try:
        laws = load_fits(fits) if fits else {}
        dtok = json.loads(domain_tokens.read_text()) if domain_tokens else None
        rec = _recommend(
            compute, chinchilla=laws.get("chinchilla"), mixing=laws.get("mixing"),
            filtering_pools=laws.get("filtering_pools"),
            domain_tokens=dtok, max_epochs=max_epochs, upsample=tuple(upsample or ()),
            upsample_factor=upsample_factor, upsample_last=upsample_last,
            provenance={"fits": str(fits) if fits else None, "curamix": __version__},
        )  # fmt: skip
    except _fit_errors() as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"compute C = {rec.compute:.3g} FLOPs (C = 6 N D)")
    console.print(f"  model      N = {rec.n_params:.4g} parameters   [dim]{rec.size_source}[/]")
    console.print(
        f"  data       D = {rec.n_tokens:.4g} tokens   predicted loss {rec.predicted_loss:.4f}"
    )
    console.print(
        f"  keep       {rec.keep_fraction:.2%} of the ranked pool   [dim]{rec.keep_fraction_source}[/]"
    )
    if rec.mixture is not None:
        table = Table(title=f"mixture ({rec.mixture_source})", title_justify="left")
        for col in ("domain", "weight", *(s.name for s in rec.mixture.schedule)):
            table.add_column(col)
        for d, w in sorted(rec.mixture.weights.items(), key=lambda kv: -kv[1]):
            table.add_row(d, f"{w:.4f}", *(f"{s.weights[d]:.4f}" for s in rec.mixture.schedule))
        console.print(table)
    for n in rec.notes:
        console.print(f"  [yellow]note:[/] {n}")
    if out:
        from curamix.io.store import write_json_atomic

        write_json_atomic(out, rec.to_dict())
        console.print(f"written: [cyan]{out}[/]")
    if run_dir is not None:
        if rec.mixture is None:
            err_console.print(
                "[bold red]error:[/] no mixture to write: give fits with a mixing law"
            )
            raise typer.Exit(2)
        path = rec.mixture.write_json(run_dir / "mixture.json")
        console.print(f"run mixture: [cyan]{path}[/]  (curamix export --format ... {run_dir})")


@app.command("export")
def export_cmd(
    source: Annotated[
        Path, typer.Argument(help="Mixture JSON, recommendation JSON, or a run (RUN/mixture.json).")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="json, yaml, csv, megatron, olmo-core, nanotron, llm-foundry, hf, levanter.",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder to write (default: beside source).")
    ] = None,
    prefix_template: Annotated[
        str | None,
        typer.Option(help="Data location per domain, e.g. /data/{domain}_text_document."),
    ] = None,
    paths: Annotated[
        str | None, typer.Option(help="JSON file or inline object {domain: path or [paths]}.")
    ] = None,
    stage: Annotated[str | None, typer.Option(help="Export one schedule stage only.")] = None,
    total_steps: Annotated[
        int | None, typer.Option(help="Training steps (stage boundaries for nanotron/levanter).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed written into formats that take one.")
    ] = None,
) -> None:
    """Render a mixture for a trainer (validated first; nothing written on error)."""
    from curamix.export import export_command
    from curamix.mixture import MixtureError

    out_dir = out or (source if source.is_dir() else source.parent) / "export"
    try:
        written = export_command(
            source, fmt, out_dir, prefix_template=prefix_template, paths_json=paths, stage=stage,
            total_steps=total_steps, seed=seed,
        )  # fmt: skip
    except (MixtureError, ValueError, FileNotFoundError, KeyError) as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    for p in written:
        console.print(f"written: [cyan]{p}[/]")


@app.command()
def version() -> None:
    """Print the curamix version."""
    console.print(__version__)


def main() -> None:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    app()


if __name__ == "__main__":
    main()
