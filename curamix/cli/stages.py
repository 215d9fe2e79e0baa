"""The pipeline stage commands: ``ingest``, ``run``, ``dedup``, ``quality``, ``decontam``, ``embed``,
``semdedup``, ``coreset``, ``select``, ``rds``, ``adapt``, ``score dsir`` / ``score betr``, and
``status``.

Each stage command adds its section to the run's config
(:func:`curamix.runner.extend_run_config`) and runs that one stage on Spark; ``status``
reads back what every stage of a run has done (:func:`curamix.runner.run_status`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from curamix.cli._common import _friendly_errors, _run, console, err_console
from curamix.config import build_config, load_config


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


def quality_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest (or dedup).")],
    language: Annotated[
        list[str], typer.Option("--language", help="Keep these languages (lid.176); repeatable.")
    ] = ["en"],  # noqa: B006 - typer reads the default
    min_lang_score: Annotated[float, typer.Option(help="Minimum language-ID score.")] = 0.65,
    no_heuristics: Annotated[
        bool, typer.Option("--no-heuristics", help="Switch the heuristic filters off.")
    ] = False,
    positives: Annotated[
        list[str],
        typer.Option(
            "--positives", help="Positive texts (JSONL) for a DCLM fastText classifier; repeatable."
        ),
    ] = [],  # noqa: B006
    model: Annotated[
        str | None, typer.Option(help="A trained fastText .bin (e.g. DCLM's) instead of training.")
    ] = None,
    keep_top: Annotated[
        float | None, typer.Option(help="Keep the top share of tokens by classifier score.")
    ] = None,
) -> None:
    """Quality filtering: heuristic filters, language ID and a fastText quality classifier."""
    from curamix.config import HEURISTIC_FILTERS
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section: dict = {
            "langid": {"languages": language, "min_score": min_lang_score},
            "heuristics": {f: not no_heuristics for f in HEURISTIC_FILTERS},
        }
        if positives or model:
            section["classifiers"] = [
                {
                    "name": "dclm",
                    **({"model": str(Path(model).resolve())} if model else {}),
                    "positive_inputs": [{"path": str(Path(p).resolve())} for p in positives],
                    "keep_top": keep_top,
                }
            ]
        results = _run(extend_run_config(run_dir, "quality", section), only=["quality"])
        c = results["quality"].counts
        console.print(f"quality: kept {c['kept']} of {c['in']} documents, removed {c['removed']}")
        for reason, n in sorted(c["removed_reasons"].items(), key=lambda kv: -kv[1])[:10]:
            console.print(f"  {n:>8}  {reason}")
        console.print(f"report: [cyan]{results['quality'].path / 'report.md'}[/]")


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
    from curamix.embeddings.embed import EmbeddingModelError
    from curamix.embeddings.index import GPUUnavailableError, IndexTooLargeError
    from curamix.runner import extend_run_config

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


def rds_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest.")],
    query: Annotated[
        list[str],
        typer.Option(
            "--query", "-q", help="A task's query examples: file, folder or glob (repeatable)."
        ),
    ],
    representation: Annotated[
        str,
        typer.Option(help="proxy (a proxy LM trained on a pool sample), hf:<path> or embed."),
    ] = "proxy",
    aggregation: Annotated[str, typer.Option(help="round_robin or max.")] = "round_robin",
    budget_fraction: Annotated[
        float | None, typer.Option(help="Share of the pool to keep (default 0.1).")
    ] = None,
    budget: Annotated[int | None, typer.Option(help="Absolute budget in --budget-unit.")] = None,
    budget_unit: Annotated[str, typer.Option(help="documents or tokens (words).")] = "documents",
    engine: Annotated[str, typer.Option(help="auto, local or spark.")] = "auto",
) -> None:
    """Keep the pool documents nearest to several tasks' query examples, round-robin over the
    tasks (RDS+, Ivison et al. 2025)."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "query_inputs": [{"path": str(Path(p).resolve())} for p in query],
            "representation": representation,
            "aggregation": aggregation,
            "budget_fraction": budget_fraction,
            "budget": budget,
            "budget_unit": budget_unit,
            "engine": engine,
        }
        results = _run(extend_run_config(run_dir, "rds", section), only=["rds"])
        r = results["rds"].manifest.get("rds", {})
        if r:
            per = ", ".join(f"{t} {v['contributed']}" for t, v in r["tasks"].items())
            console.print(f"kept {r['selected']} documents ({per})")
        console.print(f"report: [cyan]{results['rds'].path / 'report.md'}[/]")


def adapt_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with a completed ingest.")],
    budget_fraction: Annotated[
        float | None, typer.Option(help="Share of the pool to select (default 0.1).")
    ] = None,
    budget: Annotated[int | None, typer.Option(help="Documents to select.")] = None,
    prune_fraction: Annotated[
        float | None,
        typer.Option(help="Prune the pool first to this share, least redundant per cluster."),
    ] = None,
    prune_budget: Annotated[
        int | None, typer.Option(help="Prune the pool first to this many documents.")
    ] = None,
    n_clusters: Annotated[int, typer.Option(help="Pseudo-skill clusters.")] = 10,
    scorer: Annotated[
        list[str] | None,
        typer.Option("--scorer", help="log_ppl, el2n or grand (repeatable; default all three)."),
    ] = None,
    proj_dim: Annotated[int, typer.Option(help="Projected gradient dimension.")] = 256,
    entropy_window: Annotated[
        str, typer.Option(help="reference (the authors' code) or zscore.")
    ] = "reference",
    engine: Annotated[str, typer.Option(help="auto, local or spark.")] = "auto",
) -> None:
    """Select the pool by Adapt-infty: gradient clusters, a scorer per cluster, coverage-centric
    sampling, optional permanent pruning (Maharana et al. 2025)."""
    from curamix.runner import extend_run_config

    with _friendly_errors():
        section = {
            "budget_fraction": budget_fraction,
            "budget": budget,
            "prune_fraction": prune_fraction,
            "prune_budget": prune_budget,
            "n_clusters": n_clusters,
            "proj_dim": proj_dim,
            "entropy_window": entropy_window,
            "engine": engine,
            **({"scorers": scorer} if scorer else {}),
        }
        results = _run(extend_run_config(run_dir, "adapt", section), only=["adapt"])
        a = results["adapt"].manifest.get("adapt", {})
        if a:
            used = ", ".join(f"{s} {n}" for s, n in sorted(a["scorer_counts"].items()))
            console.print(
                f"kept {a['selected']} documents from {len(a['clusters'])} clusters "
                f"(scorers: {used}; pruned {a['pruned']})"
            )
        console.print(f"report: [cyan]{results['adapt'].path / 'report.md'}[/]")


_COUNTS = ("in", "kept", "removed", "quarantined", "out")
"""The counts ``status`` shows per stage (blank where a stage has none)."""


def gc(
    run_dir: Annotated[str, typer.Argument(help="Run folder or URI (s3://bucket/runs/r1).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
) -> None:
    """Remove what killed or failed attempts left in a run folder (never a completed output).

    On an object store: every attempt-* prefix that no _COMPLETE names, and the scratch of
    stages that are not running; on local disk: .tmp/ and unfinished stage folders. Takes
    the run lock, so it refuses a folder a run is using."""
    from curamix.io.store import collect_garbage

    with _friendly_errors():
        removed = collect_garbage(run_dir, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for r in removed:
        console.print(f"  {verb} {r}", markup=False)
    console.print(f"{verb} {len(removed)} leftover(s) in {run_dir}", markup=False)


def status(
    run_dir: Annotated[str, typer.Argument(help="Run folder or URI (s3://bucket/runs/r1).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a run's stages, their counts and what remains to run."""
    import polars as pl

    from curamix.runner import run_status

    with _friendly_errors():
        rows = run_status(run_dir)
    if as_json:
        print(json.dumps([r.__dict__ for r in rows], indent=2, default=str))
        return
    schema = {"stage": pl.String, "state": pl.String, **dict.fromkeys(_COUNTS, pl.Int64)}
    table = pl.DataFrame(
        [{**r.counts, "stage": r.stage, "state": r.state, "folder": r.folder} for r in rows],
        schema={**schema, "folder": pl.String},
        strict=False,
    )
    shown = table.with_columns(pl.col(*_COUNTS, "folder").cast(pl.String).fill_null(""))
    console.print(f"run {run_dir}", markup=False)
    with pl.Config(
        tbl_rows=-1, tbl_cols=-1, tbl_width_chars=1000, fmt_str_lengths=1000,
        tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
    ):  # fmt: skip
        console.print(str(shown), markup=False, emoji=False, soft_wrap=True)
    for r in rows:
        if r.detail:
            console.print(f"  {r.stage}: {r.detail}")
    remaining = [r.stage for r in rows if r.state != "done"]
    console.print(
        "remaining: " + (", ".join(remaining) if remaining else "nothing, every stage is done")
    )
