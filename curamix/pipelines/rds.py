"""RDS+ job: keep a budget of pool documents nearest to several tasks' query examples.

Spark glue over :mod:`curamix.selectors.rds` (Ivison et al. 2025, arXiv:2503.01807):

1. the driver reads the pool's ids, domains and word counts, the query files (one task per
   input domain, by default the file stem) and resolves the budget (``budget`` or
   ``budget_fraction`` of the pool's documents or words; above the pool is an error);
2. the representation: ``proxy`` trains a small proxy LM and its BPE tokenizer on the
   ``proxy.sample`` pool documents with the smallest hash of (seed, id) (the same sample for
   any partitioning) and saves them under ``proxy/``; ``hf:<path>`` loads a Hugging Face
   causal LM offline; ``embed`` reads the embed stage's vectors (only embedded documents can
   be chosen; the others are removed, ``rds:not_embedded``) and embeds the queries with the
   same model;
3. the queries are encoded on the driver; the pool is encoded and scored (each task's max
   cosine to its queries, a FAISS Flat index of the queries searched with ``k = 1``) in this
   process (``engine: local``) or one Spark task per part (``spark``; ``auto``: local up to
   ``local_max_docs`` documents): the same numbers either way;
4. the driver selects: ``round_robin`` (the reference's) or ``max`` (top-k of the best task
   score) until the budget, and hands one decision per document to the pool-stage skeleton,
   which writes ``data/`` (kept documents) and ``ledger/``: ``kept`` with reason
   ``rds:<task>`` (the task whose turn chose it), its recorded score and, in ``ref_id``, the
   id of that task's nearest query example; ``removed`` with ``rds:below_budget``, its best
   score over the tasks and that task's nearest query.

Also written: ``scores.parquet`` (every document's per-task scores, best task, selection
order), ``report.md`` (documents and words each task contributed, composition per domain,
each task's best-scored documents) and the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import ConfigError, PipelineConfig, RDSConfig, config_hash, pool_stage
from curamix.io.inputs import expand_reference, fingerprint, read_items
from curamix.io.store import JobResult, rows_for_ids, stage_writer
from curamix.pipelines.parts import choose_engine, map_parts, sample_cutoff, sample_hash
from curamix.pipelines.pool import PoolStage, composition_table, decisions_table, md_table

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from curamix.selectors.rds import RDSSelector, Selection

STAGE = "rds"
REMOVED_REASON = "rds:below_budget"
NOT_EMBEDDED = "rds:not_embedded"
KEPT_PREFIX = "rds:"
EXECUTION_ONLY = {"engine", "local_max_docs"}
"""Settings that change how the stage runs, never its output: not part of its cache key."""
BATCH = 2048
"""Documents encoded and scored at once inside a part."""
N_TOP = 5
SNIPPET = 160
SAMPLE_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def _section(cfg: PipelineConfig) -> RDSConfig:
    if cfg.rds is None:
        raise ConfigError("the rds stage needs an 'rds:' section")
    return cfg.rds


def rds_upstream(cfg: PipelineConfig) -> dict[str, str]:
    """The pool before rds, and the embed stage for ``representation: embed``."""
    up = {"pool": pool_stage(cfg, before=STAGE)}
    if _section(cfg).representation == "embed":
        up["embed"] = "embed"
    return up


def hf_fingerprint(path: str) -> Any:
    """Name, size and mtime of each file of a model folder (a hub name: the name itself)."""
    p = Path(path)
    if not p.is_dir():
        return path
    return [fingerprint(str(f)) for f in sorted(p.iterdir()) if f.is_file()]


def rds_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """Config (less the engine), the pool's (and embed stage's) manifests, the query files'
    fingerprints, the seed (it draws the proxy's sample) and an ``hf:`` model's files."""
    rc = _section(cfg)
    queries = expand_reference(rc.query_inputs, "rds.query_inputs").fingerprints
    embed = inputs.get("embed")
    rep = rc.representation
    return config_hash(
        STAGE,
        rc.model_dump(mode="json", exclude=EXECUTION_ONLY),
        inputs["pool"].manifest_hash,
        embed.manifest_hash if embed is not None else None,
        queries,
        cfg.seed if rep == "proxy" else None,
        hf_fingerprint(rep[3:]) if rep.startswith("hf:") else None,
    )


def read_queries(rc: RDSConfig) -> tuple[dict[str, list[tuple[str, str]]], list[dict]]:
    """``{task: [(example id, text), ...]}`` in the order of each task's first example, and
    the query files' fingerprints. Raises :class:`~curamix.config.ConfigError` naming the
    file when an input holds no example (an empty task query set)."""
    items, fingerprints, empty = read_items(rc.query_inputs, "rds.query_inputs")
    if not items or empty:
        raise ConfigError(
            "rds.query_inputs: empty task query set: no query example in "
            + ", ".join(empty or [f["path"] for f in fingerprints])
            + " (each record needs a non-empty text)"
        )
    tasks: dict[str, list[tuple[str, str]]] = {}
    for i, text, task in items:
        tasks.setdefault(task, []).append((i, text))
    return tasks, fingerprints


def resolve_budget(rc: RDSConfig, n_docs: int, n_words: int) -> tuple[float, str]:
    """The budget in ``rc.budget_unit`` (documents: a whole number) and where it came from.
    Raises :class:`~curamix.config.ConfigError` naming the value when it exceeds the pool."""
    unit = rc.budget_unit
    size = n_docs if unit == "documents" else n_words
    if rc.budget is not None:
        value, source = float(rc.budget), f"budget={rc.budget}"
        if value > size:
            raise ConfigError(
                f"rds.budget={rc.budget} {unit} is larger than the pool ({size} {unit}"
                + (f" in {n_docs} documents" if unit == "tokens" else "")
                + ")"
            )
    else:
        frac = 0.1 if rc.budget_fraction is None else rc.budget_fraction
        value = frac * size
        value = float(max(1, int(value))) if unit == "documents" else value
        source = f"budget_fraction={frac:g}" + (" (default)" if rc.budget_fraction is None else "")
    if value <= 0:
        raise ConfigError(f"rds: the pool has no {unit} to select from ({size})")
    return value, source


# --- encoders --------------------------------------------------------------------------------


def draw_proxy_sample(
    spark: SparkSession | None, parts: list[str], part_ids: list[list[str]], seed: int, n: int
) -> list[str]:
    """Texts of the ``n`` pool documents with the smallest hash of (seed, id), in key order
    (the embed and betr stages' sample rule): the same for any partitioning."""
    from curamix.pipelines.betr import draw_sample, sample_docs_part

    if spark is not None:
        return draw_sample(spark, parts, seed, n)[1]
    cutoff = sample_cutoff(part_ids, seed, n)
    t = pa.concat_tables([sample_docs_part(p, seed, cutoff) for p in parts])
    rows = sorted(
        zip(t["id"].to_pylist(), t["text"].to_pylist(), strict=True),
        key=lambda r: (sample_hash(seed, r[0]), r[0]),
    )
    return [x for _, x in rows]


def train_proxy_encoder(
    rc: RDSConfig, texts: list[str], seed: int, out: Path, say: Callable[[str], None]
) -> Any:
    """The ``proxy`` representation: :func:`curamix.proxy.perplexity.reference_proxy` on the
    sample, saved as ``out/model.pt`` (state dict), ``config.json`` and ``tokenizer.json``."""
    import json

    import torch

    from curamix.proxy.perplexity import reference_proxy
    from curamix.proxy.tokenizer import save_tokenizer
    from curamix.selectors.rds import ProxyLMEncoder

    p = rc.proxy
    say(
        f"rds: training a {p.model} proxy LM on {len(texts)} pool documents "
        f"({p.total_tokens:,} tokens, vocab {p.vocab_size}, seq_len {p.seq_len})"
    )
    model, tok = reference_proxy(
        texts,
        model=p.model,
        vocab_size=p.vocab_size,
        seq_len=p.seq_len,
        batch_size=p.batch_size,
        total_tokens=p.total_tokens,
        random_state=seed,
        device=p.device,
    )
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, out / "tokenizer.json")
    (out / "config.json").write_text(json.dumps(model.cfg.model_dump(mode="json"), indent=2))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    from curamix.device import resolve_device

    model = model.to(resolve_device(rc.device))
    return ProxyLMEncoder(model, tok, rc.max_tokens, rc.batch_size)


class EncoderFactory:
    """Builds the representation's encoder inside a Spark task (picklable: the proxy's plain
    weights through a broadcast, or an ``hf:`` path)."""

    def __init__(self, rc: RDSConfig, payload: Any = None):
        self.representation = rc.representation
        self.device, self.dtype = rc.device, rc.dtype
        self.max_tokens, self.batch_size = rc.max_tokens, rc.batch_size
        self.payload = payload

    def __call__(self) -> Any:
        from curamix.selectors.rds import HFCausalLMEncoder, ProxyLMEncoder

        if self.representation == "proxy":
            return ProxyLMEncoder.from_payload(self.payload.value, device=self.device)
        return HFCausalLMEncoder.load(
            self.representation[3:], self.device, self.dtype, self.max_tokens, self.batch_size
        )


def score_schema(n_tasks: int) -> pa.Schema:
    return pa.schema(
        [("part", pa.int64()), ("row", pa.int64()), ("id", pa.string())]
        + [(f"score__{t}", pa.float32()) for t in range(n_tasks)]
        + [(f"nearest__{t}", pa.int64()) for t in range(n_tasks)]
    )


def score_part(path: str, index: int, encoder: Any, selector: RDSSelector) -> pa.Table:
    """Encode a pool part's documents and score them against every task (one row per
    document, in the part's order)."""
    n_tasks = len(selector.tasks_)
    out: list[pa.Table] = []
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(BATCH, columns=["id", "text"]):
        ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        scores, nearest = selector.nearest(encoder.encode(texts))
        cols: dict[str, Any] = {
            "part": np.full(len(ids), index, dtype=np.int64),
            "row": np.arange(start, start + len(ids), dtype=np.int64),
            "id": ids,
        }
        cols |= {f"score__{t}": scores[:, t] for t in range(n_tasks)}
        cols |= {f"nearest__{t}": nearest[:, t] for t in range(n_tasks)}
        out.append(pa.table(cols, schema=score_schema(n_tasks)))
        start += len(ids)
    return pa.concat_tables(out) if out else score_schema(n_tasks).empty_table()


# --- the job ---------------------------------------------------------------------------------


def _read_pool(ps: PoolStage) -> tuple[list[list[str]], np.ndarray, np.ndarray, np.ndarray]:
    """Ids per part, and the pool's ids, domains and word counts in part order."""
    part_ids: list[list[str]] = []
    domains: list[str] = []
    words: list[np.ndarray] = []
    for p in ps.parts:
        t = pq.read_table(p, columns=["id", "domain", "n_words"])
        part_ids.append(t["id"].to_pylist())
        domains += t["domain"].to_pylist()
        words.append(t["n_words"].to_numpy().astype(np.int64))
    ids = np.asarray([i for x in part_ids for i in x], dtype=object)
    expected = ps.pool.counts.get("out")
    if expected is not None and len(ids) != expected:
        raise RuntimeError(f"rds read {len(ids)} documents, but {ps.source} wrote {expected}")
    n_words = np.concatenate(words) if words else np.zeros(0, np.int64)
    return part_ids, ids, np.asarray(domains, dtype=object), n_words


def run_rds(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Score the pool toward each task's queries with RDS+ and keep the budget (see the
    module docstring and docs/rds.md)."""
    from curamix.selectors.rds import HFCausalLMEncoder, RDSSelector

    rc = _section(cfg)
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    with ps.timed("read_s"):
        part_ids, pool_ids, pool_domains, n_words = _read_pool(ps)
        tasks, query_fp = read_queries(rc)
    n_pool, words_pool = len(pool_ids), int(n_words.sum())
    budget, budget_source = resolve_budget(rc, n_pool, words_pool)
    names = list(tasks)
    rep = rc.representation
    engine = choose_engine(rc.engine, n_pool, rc.local_max_docs)
    run_spark = None if engine == "local" else spark
    say(
        f"rds: {n_pool} documents of {ps.source}, {len(names)} tasks "
        f"({', '.join(f'{t}: {len(q)}' for t, q in tasks.items())} queries), representation "
        f"{rep}, budget {budget:g} {rc.budget_unit} ({budget_source}), {engine} engine"
    )
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        candidates = np.arange(n_pool)  # positions in the pool that can be chosen
        if rep == "embed":
            from curamix.embeddings.embed import embed_texts
            from curamix.pipelines.embed import load_embeddings
            from curamix.pipelines.pool import positions

            embed = inputs["embed"]
            with ps.timed("read_embed_s"):
                emb = load_embeddings(embed, ids=pool_ids.tolist())
            pos, has = positions(pool_ids, emb.ids)
            candidates = np.flatnonzero(has)
            ec = embed.manifest.get("config", {})
            say(f"rds: embedding the queries with {ec.get('model')} (the embed stage's model)")
            with ps.timed("encode_queries_s"):
                qvec = {
                    t: embed_texts(
                        [x for _, x in q],
                        name=ec.get("model", "all-MiniLM-L6-v2"),
                        device=rc.device,
                        max_seq_length=ec.get("max_seq_length", 256),
                        batch_size=ec.get("batch_size", 64),
                        fp16=ec.get("fp16", True),
                    )
                    for t, q in tasks.items()
                }
            selector = RDSSelector(rc.aggregation).fit(qvec)
            with ps.timed("score_s"):
                s, nn = selector.nearest(emb.vectors[pos[has]])
            scores = np.full((n_pool, len(names)), np.nan, dtype=np.float32)
            nearest = np.full((n_pool, len(names)), -1, dtype=np.int64)
            scores[has], nearest[has] = s, nn
            dim = emb.dim
        else:
            if rep == "proxy":
                with ps.timed("proxy_s"):
                    sample = draw_proxy_sample(
                        run_spark, ps.parts, part_ids, cfg.seed, min(rc.proxy.sample, n_pool)
                    )
                    encoder = train_proxy_encoder(rc, sample, cfg.seed, w.path("proxy"), say)
            else:
                say(f"rds: loading the causal LM {rep[3:]}")
                encoder = HFCausalLMEncoder.load(
                    rep[3:], rc.device, rc.dtype, rc.max_tokens, rc.batch_size
                )
            with ps.timed("encode_queries_s"):
                qvec = {t: encoder.encode([x for _, x in q]) for t, q in tasks.items()}
            selector = RDSSelector(rc.aggregation).fit(qvec)
            dim = next(iter(qvec.values())).shape[1]
            say(f"rds: encoding and scoring {n_pool} documents ({len(ps.parts)} parts, {engine})")
            with ps.timed("score_s"):
                if run_spark is None:
                    table = pa.concat_tables(
                        [score_schema(len(names)).empty_table()]
                        + [score_part(p, i, encoder, selector) for i, p in enumerate(ps.parts)]
                    )
                else:
                    bcast = (
                        spark.sparkContext.broadcast(encoder.to_payload())
                        if rep == "proxy"
                        else None
                    )
                    factory = EncoderFactory(rc, bcast)
                    table = map_parts(
                        spark,
                        ps.parts,
                        lambda i, p: score_part(p, i, factory(), selector),
                        score_schema(len(names)),
                    )
                    if bcast is not None:
                        bcast.unpersist()
            table = table.sort_by([("part", "ascending"), ("row", "ascending")])
            if table["id"].to_pylist() != pool_ids.tolist():
                raise RuntimeError("rds: the scores do not follow the pool's documents")
            scores = np.stack(
                [table[f"score__{t}"].to_numpy() for t in range(len(names))], axis=1
            ).astype(np.float32)
            nearest = np.stack(
                [table[f"nearest__{t}"].to_numpy() for t in range(len(names))], axis=1
            ).astype(np.int64)

        n_cand = len(candidates)
        cand_words = n_words[candidates]
        limit = n_cand if rc.budget_unit == "documents" else int(cand_words.sum())
        if budget > limit:
            raise ConfigError(
                f"rds: a budget of {budget:g} {rc.budget_unit} is larger than the {limit} "
                f"{rc.budget_unit} of the {n_cand} embedded pool documents (of {n_pool}; "
                "embed.sample leaves the others out)"
            )
        with ps.timed("select_s"):
            sel = selector.select(
                scores[candidates],
                budget,
                None if rc.budget_unit == "documents" else cand_words,
            )
        chosen = candidates[sel.positions]
        pool = (pool_ids, pool_domains, n_words)
        manifest = _manifest(rc, tasks, query_fp, scores, nearest, sel, chosen, candidates, pool)
        manifest["rds"] |= {"engine": engine, "dim": int(dim)}
        manifest["rds"]["budget"] = {
            "unit": rc.budget_unit,
            "value": budget,
            "source": budget_source,
        }
        _write_scores(w.path("scores.parquet"), names, pool, scores, sel, chosen)
        say(f"rds: writing {len(chosen)} selected documents and the ledger")
        with ps.timed("write_s"):
            decisions = _decisions(names, tasks, pool_ids, scores, nearest, sel, chosen, candidates)
            sizes = np.asarray([len(x) for x in part_ids], dtype=np.int64)
            written = ps.write_decisions(run_spark, w, decisions, sizes)
        if written.n_kept != len(chosen):
            raise RuntimeError(f"rds: wrote {written.n_kept} documents, chose {len(chosen)}")
        reasons = (REMOVED_REASON, *((NOT_EMBEDDED,) if rep == "embed" else ()))
        tok_in, tok_kept = written.tokens_in, written.tokens_kept
        per_domain = {
            d: {
                "in": e["in"],
                "kept": e["kept"],
                "removed": e["removed"],
                "tokens_in": e["tokens_in"],
                "tokens_kept": e["tokens_kept"],
                "pool_share": e["in"] / max(written.n_in, 1),
                "selected_share": e["kept"] / max(written.n_kept, 1),
                "by_task": {
                    r[len(KEPT_PREFIX) :]: n
                    for r, n in e["reasons"].items()
                    if r not in reasons and r.startswith(KEPT_PREFIX)
                },
            }
            for d, e in written.per_domain.items()
        }
        manifest["counts"] = {
            **ps.counts(written, reasons=reasons),
            "tokens_in": tok_in,
            "tokens_kept": tok_kept,
            "per_domain": per_domain,
        }
        manifest["rds"]["kept_token_share"] = tok_kept / max(tok_in, 1)
        manifest["rds"]["kept_doc_share"] = written.n_kept / max(written.n_in, 1)
        _add_snippets(manifest, ps.parts)
        result = ps.commit(w, written, manifest, _report)
    per = ", ".join(f"{t} {v['contributed']}" for t, v in manifest["rds"]["tasks"].items())
    say(f"rds: kept {len(chosen)} of {n_pool} documents ({per}) -> {result.path}")
    return result


def _decisions(
    names: list[str],
    tasks: dict[str, list[tuple[str, str]]],
    pool_ids: np.ndarray,
    scores: np.ndarray,
    nearest: np.ndarray,
    sel: Selection,
    chosen: np.ndarray,
    candidates: np.ndarray,
) -> pa.Table:
    """One decision per pool document (pool order): kept ``rds:<task>`` with the recorded
    score and that task's nearest query id; removed ``rds:below_budget`` with the best score
    and the best task's nearest query; ``rds:not_embedded`` without a score."""
    n = len(pool_ids)
    qids = [[i for i, _ in tasks[t]] for t in names]
    kept = np.zeros(n, dtype=bool)
    kept[chosen] = True
    is_cand = np.zeros(n, dtype=bool)
    is_cand[candidates] = True
    task = np.zeros(n, dtype=np.int64)
    score = np.full(n, np.nan)
    safe = np.where(np.isnan(scores), -np.inf, scores)
    task[is_cand] = safe[is_cand].argmax(axis=1)
    score[is_cand] = safe[is_cand].max(axis=1)
    task[chosen], score[chosen] = sel.task, sel.score
    reason = np.full(n, None, dtype=object)
    reason[~is_cand] = NOT_EMBEDDED
    reason[is_cand & ~kept] = REMOVED_REASON
    ref = np.full(n, None, dtype=object)
    for t, name in enumerate(names):
        mine = is_cand & (task == t)
        q = nearest[mine, t]
        ref[mine] = np.where(q >= 0, np.asarray(qids[t], dtype=object)[np.maximum(q, 0)], None)
        reason[mine & kept] = f"{KEPT_PREFIX}{name}"
    return decisions_table(pool_ids.tolist(), kept, reason, score, ref)


def _write_scores(
    path: Path,
    names: list[str],
    pool: tuple[np.ndarray, np.ndarray, np.ndarray],
    scores: np.ndarray,
    sel: Selection,
    chosen: np.ndarray,
) -> None:
    """Every document's per-task scores, its best score and task, and (selected ones) the
    order it was chosen in and the task that chose it."""
    pool_ids, domains, n_words = pool
    n = len(pool_ids)
    order = np.full(n, -1, dtype=np.int64)
    order[chosen] = np.arange(len(chosen))
    by = np.full(n, None, dtype=object)
    by[chosen] = [names[t] for t in sel.task]
    safe = np.where(np.isnan(scores), -np.inf, scores)
    none = np.isnan(scores).all(axis=1)
    best = np.where(none, np.nan, safe.max(axis=1))
    cols: dict[str, Any] = {
        "id": pool_ids.tolist(),
        "domain": domains.tolist(),
        "n_words": n_words,
        "score": best,
        "best_task": pa.array(
            [None if x else names[t] for t, x in zip(safe.argmax(axis=1), none, strict=True)],
            pa.string(),
        ),
        "selected_order": order,
        "selected_by": pa.array(by.tolist(), pa.string()),
    }
    cols |= {f"score__{t}": scores[:, j].astype(np.float64) for j, t in enumerate(names)}
    pq.write_table(pa.table(cols), path)


def _manifest(
    rc: RDSConfig,
    tasks: dict[str, list[tuple[str, str]]],
    query_fp: list[dict],
    scores: np.ndarray,
    nearest: np.ndarray,
    sel: Selection,
    chosen: np.ndarray,
    candidates: np.ndarray,
    pool: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """The stage's own manifest fields: per task its queries, the documents and words it
    contributed, its score quantiles and best-scored documents; the selection's totals."""
    names = list(tasks)
    pool_ids, domains, n_words = pool
    per_task = sel.per_task(len(names))
    per: dict[str, Any] = {}
    for j, t in enumerate(names):
        mine = chosen[sel.task == j]
        s = scores[candidates, j]
        top = candidates[np.argsort(-s, kind="stable")[:N_TOP]]
        per[t] = {
            "queries": len(tasks[t]),
            "contributed": int(per_task[j]),
            "contributed_tokens": int(n_words[mine].sum()),
            "score_pool": _quantiles(s),
            "score_selected": _quantiles(scores[mine, j]) if len(mine) else None,
            "top": [
                {
                    "id": str(pool_ids[i]),
                    "domain": str(domains[i]),
                    "score": round(float(scores[i, j]), 4),
                    "nearest_query": tasks[t][int(nearest[i, j])][0],
                }
                for i in top
            ],
        }
    return {
        "inputs": {"query_files": query_fp},
        "rds": {
            "representation": rc.representation,
            "aggregation": rc.aggregation,
            "selected": len(chosen),
            "selected_tokens": int(n_words[chosen].sum()),
            "candidates": len(candidates),
            "pops": sel.pops,
            "duplicate_pops": sel.pops - len(chosen),
            "tasks": per,
        },
        "outputs": {
            "scores": "scores.parquet",
            **({"proxy": "proxy"} if rc.representation == "proxy" else {}),
        },
    }


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(np.asarray(x, dtype=np.float64), [0.0, 0.5, 1.0])
    return dict(zip(("min", "median", "max"), map(float, q), strict=True))


def _add_snippets(manifest: dict[str, Any], parts: list[str]) -> None:
    """The texts' beginnings of each task's best-scored documents (a few reads)."""
    tops = [x for v in manifest["rds"]["tasks"].values() for x in v["top"]]
    t = rows_for_ids(parts, [x["id"] for x in tops], "text")
    text = dict(zip(t["id"].to_pylist(), t["text"].to_pylist(), strict=True))
    for x in tops:
        x["snippet"] = text.get(x["id"], "")[:SNIPPET]


def _one_line(s: str) -> str:
    return " ".join(s.split()).replace("|", "/")


def _report(m: dict[str, Any]) -> str:
    c, r = m["counts"], m["rds"]
    b = r["budget"]
    rule = (
        "round-robin over the tasks (each in turn adds its next best document)"
        if r["aggregation"] == "round_robin"
        else "top-k of each document's best task score"
    )
    lines = [
        "# RDS+ report",
        "",
        f"Representation `{r['representation']}` ({r['dim']} dimensions, position-weighted mean "
        f"of the last hidden layer, L2-normalised); score = max cosine to a task's queries; "
        f"{rule}; {r['engine']} engine.",
        "",
        f"Budget {b['value']:g} {b['unit']} ({b['source']}): kept {c['kept']} of {c['in']} "
        f"documents ({r['kept_doc_share']:.1%}) and {c['tokens_kept']} of {c['tokens_in']} words "
        f"({r['kept_token_share']:.1%})."
        + (
            f" {r['duplicate_pops']} round-robin turns fell on a document another task had "
            "already chosen (the reference spends the turn)."
            if r["aggregation"] == "round_robin"
            else ""
        ),
        "",
        "## Per task",
        "",
        *md_table(
            [
                "task",
                "queries",
                "contributed docs",
                "contributed words",
                "median score (pool)",
                "median score (its picks)",
            ],
            (
                (
                    t,
                    v["queries"],
                    v["contributed"],
                    v["contributed_tokens"],
                    f"{v['score_pool']['median']:.4f}",
                    f"{v['score_selected']['median']:.4f}" if v["score_selected"] else "-",
                )
                for t, v in r["tasks"].items()
            ),
        ),
        "",
        "## Composition",
        "",
        *composition_table(c["per_domain"]),
        "",
        "## Best-scored pool documents per task",
        "",
    ]
    for t, v in r["tasks"].items():
        lines += [f"### {t}", ""]
        for x in v["top"]:
            lines.append(
                f"- `{x['id']}` ({x['domain']}, {x['score']}, nearest query "
                f"`{x['nearest_query']}`): {_one_line(x.get('snippet', ''))}"
            )
        lines.append("")
    return "\n".join(lines)
