"""Proxy training data: a run's documents by domain, cached token streams, mixture sampling.

- :func:`load_run_domains` reads the latest pool stage (dedup, else ingest) of a run folder.
- :func:`split_documents` holds out a deterministic fraction of each domain's *documents*.
- :func:`tokenize_domains` encodes each domain once into one stream (documents separated by
  EOS) and caches it as ``.npy`` under a key of tokenizer hash + content hash + split.
- :func:`sample_token_streams` does the same for a seeded, token-budgeted sample of a pool
  without reading the pool into one process: one task per Parquet part (in this process or
  on Spark, through a :data:`PartRunner`) tokenizes its candidates into a token shard, cached
  by key; only the sample's tokens come back (the mixture search's data).
- :class:`MixtureSampler` draws training batches from the streams by mixture weights.

numpy and pyarrow only (no torch), so a notebook can inspect streams without loading torch.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from tokenizers import Tokenizer

WEIGHT_TOL = 1e-6
"""How far from 1 the sum of mixture weights may be."""


# ---------------------------------------------------------------------------------------------
# Reading a run


def _pool_stage(run_dir: Path) -> str:
    """The stage the run's scoring reads (:func:`curamix.config.pool_stage`), from pipeline.yaml when it
    loads, else dedup when the run has a dedup output, else ingest."""
    from curamix.io.store import read_stages_index

    cfg_path = run_dir / "pipeline.yaml"
    if cfg_path.is_file():
        from curamix.config import ConfigError, load_config, pool_stage

        try:
            return pool_stage(load_config(cfg_path, use_env=False))
        except ConfigError as err:  # an older or hand-edited config: the stages index decides
            warnings.warn(
                f"{cfg_path} does not load ({str(err).splitlines()[0]}); reading the pool stage "
                "from stages.json",
                stacklevel=2,
            )
    return "dedup" if "dedup" in read_stages_index(run_dir) else "ingest"


def load_run_domains(
    run_dir: str | Path, stage: str | None = None, domains: list[str] | None = None
) -> dict[str, list[str]]:
    """The documents of a run's latest ``stage`` output as ``{domain: [text, ...]}``.

    Parameters
    ----------
    run_dir : path
        A run folder (see :mod:`curamix.io.store`).
    stage : str, optional
        The stage to read; default the pool stage (dedup when the run dedups, else ingest).
    domains : list of str, optional
        Keep only these domains (each must be present).

    Returns
    -------
    dict
        Domains in sorted order; each domain's texts sorted by document ``id``, so the result
        does not depend on how the stage partitioned its Parquet files.
    """
    from curamix.io.store import latest_result

    run_dir = Path(run_dir)
    stage = stage or _pool_stage(run_dir)
    res = latest_result(run_dir, stage)
    if res is None:
        raise FileNotFoundError(f"no completed '{stage}' output in {run_dir}: run that stage first")
    return read_domain_texts(res.data_path, domains)


def read_domain_texts(
    data_path: str | Path, domains: list[str] | None = None
) -> dict[str, list[str]]:
    """A stage's documents (its ``data/`` folder) as ``{domain: [text, ...]}``: domains sorted,
    texts by ``id``, so the result does not depend on how the stage split its Parquet files.
    ``domains``: keep only these (each must be present)."""
    from curamix.io.store import part_files

    tables = [pq.read_table(p, columns=["id", "domain", "text"]) for p in part_files(data_path)]
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    if domains is not None:
        present = set(pc.unique(table.column("domain")).to_pylist())
        missing = sorted(set(domains) - present)
        if missing:
            raise ValueError(f"domains {missing} are not in {data_path} (it has {sorted(present)})")
        table = table.filter(pc.is_in(table.column("domain"), pa.array(list(domains))))
    table = table.sort_by([("domain", "ascending"), ("id", "ascending")])
    out: dict[str, list[str]] = {}
    for d, t in zip(
        table.column("domain").to_pylist(), table.column("text").to_pylist(), strict=True
    ):
        out.setdefault(d, []).append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Train / validation split and token caches


def _text_digest(text: str, random_state: int) -> bytes:
    return hashlib.blake2b(
        text.encode("utf-8"), digest_size=8, key=str(random_state).encode()
    ).digest()


def held_out(digests: list[bytes], val_fraction: float) -> set[int]:
    """Positions of the validation documents among documents with these text digests: the
    ``round(val_fraction * n)`` smallest ``(digest, position)`` (at least one when there are
    two or more documents and ``val_fraction > 0``, never all of them)."""
    k = n_held_out(len(digests), val_fraction)
    if k == 0:
        return set()
    return {i for _, i in sorted(zip(digests, range(len(digests)), strict=True))[:k]}


def n_held_out(n: int, val_fraction: float) -> int:
    """How many of ``n`` documents :func:`held_out` holds out."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    k = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    return k


def split_documents(
    texts: list[str], val_fraction: float = 0.05, random_state: int = 0
) -> tuple[list[str], list[str]]:
    """Hold out ``val_fraction`` of the documents for validation, deterministically.

    The held-out documents are the ``round(val_fraction * n)`` ones (at least one when there
    are two or more documents and ``val_fraction > 0``) with the smallest keyed hash of their
    text (:func:`held_out`), so the split depends neither on document order nor on the other
    documents' presence beyond the count. Identical texts share a hash and land on the same
    side. A domain with a single document keeps it for training. Both lists keep the input
    order.
    """
    held = held_out([_text_digest(t, random_state) for t in texts], val_fraction)
    if not held:
        return list(texts), []
    train = [t for i, t in enumerate(texts) if i not in held]
    val = [t for i, t in enumerate(texts) if i in held]
    return train, val


def content_hash(texts: list[str]) -> str:
    """SHA-256 of a list of texts (length-prefixed, order-sensitive)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    os.replace(tmp, path)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "_"


def tokenize_domains(
    tok: Tokenizer,
    domains: Mapping[str, list[str]],
    cache_dir: str | Path | None = None,
    val_fraction: float = 0.05,
    random_state: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train and validation token streams per domain, from the cache when present.

    Each domain's documents are split with :func:`split_documents`, then each side is encoded
    into one stream (:func:`curamix.proxy.tokenizer.encode_stream`: documents followed by EOS).
    With ``cache_dir`` the streams are saved as ``<domain>-<key>.{train,val}.npy`` where the
    key hashes the tokenizer JSON, the domain's texts, ``val_fraction`` and ``random_state``;
    a later call with the same inputs loads them (memory-mapped) instead of encoding again.

    Returns
    -------
    (train, val) : dict, dict
        ``{domain: uint16/uint32 array}``; a domain with no validation documents (a single
        document, or ``val_fraction=0``) is left out of ``val``.
    """
    from curamix.proxy.tokenizer import encode_stream, tokenizer_hash

    tok_hash = tokenizer_hash(tok)
    train: dict[str, np.ndarray] = {}
    val: dict[str, np.ndarray] = {}
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    for d in sorted(domains):
        texts = list(domains[d])
        paths = None
        if cache is not None:
            key = hashlib.sha256(
                f"{tok_hash}|{d}|{content_hash(texts)}|{val_fraction!r}|{random_state}".encode()
            ).hexdigest()[:16]
            paths = (cache / f"{_slug(d)}-{key}.train.npy", cache / f"{_slug(d)}-{key}.val.npy")
            if paths[0].is_file() and paths[1].is_file():
                train[d] = np.load(paths[0], mmap_mode="r")
                val[d] = np.load(paths[1], mmap_mode="r")
                continue
        tr, va = split_documents(texts, val_fraction, random_state)
        train[d], val[d] = encode_stream(tok, tr), encode_stream(tok, va)
        if paths is not None:
            _save_npy_atomic(paths[1], val[d])
            _save_npy_atomic(paths[0], train[d])
    return train, {d: v for d, v in val.items() if len(v)}


def prepare_run_tokens(
    run_dir: str | Path,
    vocab_size: int = 8000,
    val_fraction: float = 0.05,
    stage: str | None = None,
    domains: list[str] | None = None,
    tokenizer_chars: int = 20_000_000,
    random_state: int = 0,
) -> tuple[Tokenizer, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A run's tokenizer and its train / validation streams, reusing what ``RUN/proxy/`` holds.

    Reads the documents (:func:`load_run_domains`), loads or trains the tokenizer at
    ``RUN/proxy/tokenizer-v<vocab_size>.json`` and tokenizes into ``RUN/proxy/tokens/``.
    """
    from curamix.proxy.tokenizer import load_or_train_tokenizer, tokenizer_path

    texts = load_run_domains(run_dir, stage=stage, domains=domains)
    tok = load_or_train_tokenizer(
        tokenizer_path(run_dir, vocab_size), texts, vocab_size, tokenizer_chars, random_state
    )
    train, val = tokenize_domains(
        tok, texts, Path(run_dir) / "proxy" / "tokens", val_fraction, random_state
    )
    return tok, train, val


# ---------------------------------------------------------------------------------------------
# A seeded, token-budgeted sample of a pool, tokenized part by part (the mixture search's data)

HASH_END = 1 << 63
"""Every :func:`doc_hash` is below this; a hash limit of ``HASH_END`` takes every document."""
TOKENIZER_CHARS = 20_000_000
"""Characters the sample's tokenizer is trained on at most (split over the domains)."""
CHARS_PER_TOKEN = 4.0
"""A low guess of characters per token (the candidates of the first round take more than the
budget needs, so a second round is rare; it never changes the sample, only the work)."""
CANDIDATE_MARGIN = 1.25
"""The first round's candidates: this many times the hash share the estimate asks for."""
CANDIDATE_MIN_DOCS = 64
"""... and at least this many documents by expectation (a small count varies a lot)."""
SAMPLE_VERSION = 1
"""Part of the token cache's key: bump when the rule of the sample changes."""
STATS_SCHEMA = pa.schema([("domain", pa.string()), ("docs", pa.int64()), ("chars", pa.int64())])
TEXTS_SCHEMA = pa.schema(
    [("domain", pa.string()), ("h", pa.int64()), ("id", pa.string()), ("text", pa.string())]
)
COUNTS_SCHEMA = pa.schema(
    [("domain", pa.string()), ("docs", pa.int64()), ("chars", pa.int64()), ("tokens", pa.int64())]
)
KEYS_SCHEMA = pa.schema(
    [("domain", pa.string()), ("h", pa.int64()), ("id", pa.string()), ("n", pa.int64())]
)

PartFn = Callable[[int, str], pa.Table]
"""(part index, part path) -> a small result table (what one Spark task returns)."""
PartRunner = Callable[[list[str], PartFn, pa.Schema], pa.Table]
"""Runs a :data:`PartFn` on every part and concatenates the results: :func:`run_parts_here`
in this process, or ``functools.partial(curamix.pipelines.parts.map_parts, spark)`` as one
Spark task per part (the same tables either way)."""
Key = tuple[int, str]
"""``(doc_hash(seed, id), id)``: a sample takes each domain's documents in this order."""


def run_parts_here(paths: list[str], fn: PartFn, schema: pa.Schema) -> pa.Table:
    """The :data:`PartRunner` without Spark: ``fn`` on every part in this process."""
    return pa.concat_tables(
        [schema.empty_table(), *(fn(i, p).cast(schema) for i, p in enumerate(paths))]
    )


def doc_hash(seed: int, doc_id: str) -> int:
    """A 63-bit hash of ``(seed, id)``: :func:`curamix.pipelines.parts.sample_hash`, so the
    mixture search's sample and the embed stage's take documents in the same order."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def token_need(
    total_tokens: int, eval_tokens: int, val_fraction: float, margin: float | None
) -> int | None:
    """Tokens of a domain's sample: ``margin`` times what one proxy run can read from it.

    A mixer may give one domain all the weight (online methods, RegMix's sampled mixtures), so
    a run can read ``total_tokens`` training tokens from it; the documents held out for
    validation are ``val_fraction`` of the sample and should cover ``eval_tokens``. The need
    is ``ceil(margin * max(total_tokens / (1 - val_fraction), eval_tokens / val_fraction))``
    stream tokens (EOS included). ``margin=None``: no limit (the whole pool)."""
    if margin is None:
        return None
    if margin < 1:
        raise ValueError(f"the sample margin must be at least 1, got {margin!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    return math.ceil(margin * max(total_tokens / (1 - val_fraction), eval_tokens / val_fraction))


def _limit(fraction: float) -> int:
    """The hash limit that takes about ``fraction`` of a domain (all of it from 1 on)."""
    return HASH_END if fraction >= 1 else max(1, math.ceil(fraction * HASH_END))


def _candidates(path: str, seed: int, limits: Mapping[str, int], columns: list[str]) -> pa.Table:
    """A part's documents whose hash is below their domain's limit, with ``h``, sorted by
    (domain, h, id); domains without a limit are left out."""
    t = pq.read_table(path, columns=["id", "domain", *columns])
    ids = t["id"].to_pylist()
    h = np.fromiter((doc_hash(seed, i) for i in ids), np.int64, len(ids))
    lim = np.fromiter((limits.get(d, 0) for d in t["domain"].to_pylist()), np.uint64, len(ids))
    t = t.append_column("h", pa.array(h)).filter(pa.array(h.astype(np.uint64) < lim))
    return t.sort_by([("domain", "ascending"), ("h", "ascending"), ("id", "ascending")])


def part_stats(path: str) -> pa.Table:
    """Documents and characters per domain of one part (:data:`STATS_SCHEMA`)."""
    t = pq.read_table(path, columns=["domain", "text"])
    chars = pc.utf8_length(pc.fill_null(t["text"], "")).cast(pa.int64())
    t = pa.table({"domain": t["domain"], "chars": chars})
    agg = t.group_by("domain").aggregate([("chars", "count"), ("chars", "sum")])
    return pa.table(
        {"domain": agg["domain"], "docs": agg["chars_count"], "chars": agg["chars_sum"]},
        schema=STATS_SCHEMA,
    )


def part_texts(path: str, seed: int, limits: Mapping[str, int]) -> pa.Table:
    """A part's candidate texts (:data:`TEXTS_SCHEMA`): hash below the domain's limit."""
    t = _candidates(path, seed, limits, ["text"])
    return t.select(TEXTS_SCHEMA.names).cast(TEXTS_SCHEMA)


def shard_schema(dtype: np.dtype) -> pa.Schema:
    """A token shard: one row per candidate document, its ids without EOS in ``tokens``."""
    return pa.schema(
        [
            ("domain", pa.string()),
            ("h", pa.int64()),
            ("id", pa.string()),
            ("digest", pa.binary(8)),
            ("chars", pa.int64()),
            ("n", pa.int64()),
            ("tokens", pa.list_(pa.from_numpy_dtype(dtype))),
        ]
    )


def part_token_shard(
    path: str,
    index: int,
    out_dir: str,
    tokenizer_json: str,
    seed: int,
    limits: Mapping[str, int],
    batch_size: int = 1024,
) -> pa.Table:
    """Tokenize a part's candidates (hash below their domain's limit) into the shard
    ``out_dir/part-<index>.parquet`` (atomic); return their documents, characters and stream
    tokens (ids + EOS) per domain (:data:`COUNTS_SCHEMA`)."""
    from tokenizers import Tokenizer

    from curamix.proxy.tokenizer import token_dtype

    tok = Tokenizer.from_str(tokenizer_json)
    dtype = token_dtype(tok.get_vocab_size())
    t = _candidates(path, seed, limits, ["text"])
    texts = [x or "" for x in t["text"].to_pylist()]
    lists: list[np.ndarray] = []
    for i in range(0, len(texts), batch_size):
        for enc in tok.encode_batch(texts[i : i + batch_size], add_special_tokens=False):
            lists.append(np.asarray(enc.ids, dtype=dtype))
    lens = np.array([len(x) for x in lists], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    values = np.concatenate(lists) if lists else np.zeros(0, dtype)
    schema = shard_schema(dtype)
    shard = pa.table(
        {
            "domain": t["domain"],
            "h": t["h"],
            "id": t["id"],
            "digest": pa.array([_text_digest(x, seed) for x in texts], pa.binary(8)),
            "chars": pa.array([len(x) for x in texts], pa.int64()),
            "n": pa.array(lens + 1),
            "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        },
        schema=schema,
    )
    final = Path(out_dir) / f"part-{index:05d}.parquet"
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(shard, tmp, compression="zstd")
    os.replace(tmp, final)
    agg = shard.group_by("domain").aggregate([("n", "count"), ("chars", "sum"), ("n", "sum")])
    return pa.table(
        {
            "domain": agg["domain"],
            "docs": agg["n_count"],
            "chars": agg["chars_sum"],
            "tokens": agg["n_sum"],
        },
        schema=COUNTS_SCHEMA,
    )


def prefix_cutoffs(keys: pa.Table, budget: Mapping[str, float]) -> dict[str, Key]:
    """Per domain, the last key ``(h, id)`` of the shortest key-ordered prefix of its rows
    whose ``n`` adds up to ``budget[domain]`` (every row when they add up to less): the rows
    kept are those with less than the budget before them. ``keys``: :data:`KEYS_SCHEMA`
    columns; domains without rows are absent."""
    t = keys.sort_by([("domain", "ascending"), ("h", "ascending"), ("id", "ascending")])
    dom = np.asarray(t["domain"].to_pylist(), dtype=object)
    n = t["n"].to_numpy().astype(np.int64)
    h, ids = t["h"].to_numpy(), t["id"].to_pylist()
    out: dict[str, Key] = {}
    bounds = np.flatnonzero(np.r_[True, dom[1:] != dom[:-1], True]) if len(dom) else []
    for s, e in itertools.pairwise(bounds.tolist() if len(dom) else []):
        d = str(dom[s])
        before = np.cumsum(n[s:e]) - n[s:e]
        k = int(np.count_nonzero(before < budget[d]))
        if k:
            out[d] = (int(h[s + k - 1]), ids[s + k - 1])
    return out


def _in_sample(t: pa.Table, cutoffs: Mapping[str, Key]) -> pa.Array:
    """Rows of ``t`` (``domain``, ``h``, ``id``) with a key at most their domain's cutoff."""
    keys = zip(t["domain"].to_pylist(), t["h"].to_pylist(), t["id"].to_pylist(), strict=True)
    return pa.array([d in cutoffs and (h, i) <= cutoffs[d] for d, h, i in keys], pa.bool_())


def pool_stats(parts: list[str], run: PartRunner = run_parts_here) -> dict[str, dict[str, int]]:
    """``{domain: {"docs", "chars"}}`` of the whole pool (one task per part; only these
    per-part sums reach the caller)."""
    t = run(parts, lambda _i, p: part_stats(p), STATS_SCHEMA)
    agg = t.group_by("domain").aggregate([("docs", "sum"), ("chars", "sum")])
    return {
        d: {"docs": int(n), "chars": int(c)}
        for d, n, c in sorted(
            zip(
                agg["domain"].to_pylist(),
                agg["docs_sum"].to_pylist(),
                agg["chars_sum"].to_pylist(),
                strict=True,
            )
        )
    }


def tokenizer_shares(chars: Mapping[str, int], max_chars: int) -> dict[str, int]:
    """Characters of each domain in the tokenizer's sample: ``max_chars`` split evenly, a
    small domain's unused share going to the others (water-filling; smallest first)."""
    left, out = int(max_chars), {}
    names = sorted(chars, key=lambda d: (chars[d], d))
    for k, d in enumerate(names):
        out[d] = min(int(chars[d]), left // (len(names) - k))
        left -= out[d]
    return dict(sorted(out.items()))


def _rounds(
    stats: Mapping[str, Mapping[str, int]],
    budget: Mapping[str, float],
    estimate: Mapping[str, float],
    attempt: Callable[[dict[str, int]], dict[str, float]],
    say: Callable[[str], None],
    what: str,
) -> dict[str, int]:
    """Candidate rounds: each domain's hash limit starts at ``CANDIDATE_MARGIN`` times the
    share ``budget / estimate`` (at least ``CANDIDATE_MIN_DOCS`` documents) and doubles while
    ``attempt(limits)`` (the candidates' sum per domain) falls short of the budget and the
    limit does not take the whole domain yet.
    Returns the last limits. The candidates always form a prefix of each domain's key
    order, so the budgeted prefix found in them does not depend on the rounds."""
    share = {
        d: max(
            CANDIDATE_MARGIN * budget[d] / estimate[d] if estimate[d] > 0 else 1.0,
            CANDIDATE_MIN_DOCS / max(stats[d]["docs"], 1),
        )
        for d in stats
    }
    while True:
        limits = {d: _limit(f) for d, f in share.items()}
        got = attempt(limits)
        short = [d for d in stats if got.get(d, 0) < budget[d] and limits[d] < HASH_END]
        if not short:
            return limits
        say(f"mixture: the {what} sample of {short} fell short of the budget; drawing again")
        share.update({d: share[d] * 2 for d in short})


def sample_tokenizer_texts(
    parts: list[str],
    stats: Mapping[str, Mapping[str, int]],
    seed: int,
    max_chars: int = TOKENIZER_CHARS,
    run: PartRunner = run_parts_here,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, list[str]]:
    """The texts a sample's tokenizer is trained on: per domain, the documents in key order
    (:func:`doc_hash`) up to its :func:`tokenizer_shares` of ``max_chars`` characters (the
    document crossing the share included). Only candidates reach the caller."""
    shares = tokenizer_shares({d: s["chars"] for d, s in stats.items()}, max_chars)
    found: list[pa.Table] = []

    def attempt(limits: dict[str, int]) -> dict[str, float]:
        t = run(parts, lambda _i, p: part_texts(p, seed, limits), TEXTS_SCHEMA)
        found[:] = [t]
        chars = pc.utf8_length(t["text"]).cast(pa.int64())
        agg = (
            pa.table({"domain": t["domain"], "c": chars})
            .group_by("domain")
            .aggregate([("c", "sum")])
        )
        return dict(zip(agg["domain"].to_pylist(), agg["c_sum"].to_pylist(), strict=True))

    estimate = {d: float(s["chars"]) for d, s in stats.items()}
    _rounds(stats, {d: float(v) for d, v in shares.items()}, estimate, attempt, say, "tokenizer")
    t = found[0]
    keys = pa.table(
        {
            "domain": t["domain"],
            "h": t["h"],
            "id": t["id"],
            "n": pc.utf8_length(t["text"]).cast(pa.int64()),
        },
        schema=KEYS_SCHEMA,
    )
    cut = prefix_cutoffs(keys, {d: float(v) for d, v in shares.items()})
    t = t.sort_by([("domain", "ascending"), ("h", "ascending"), ("id", "ascending")])
    keep = _in_sample(t, cut)
    out: dict[str, list[str]] = {}
    for d, x in zip(
        t["domain"].filter(keep).to_pylist(), t["text"].filter(keep).to_pylist(), strict=True
    ):
        out.setdefault(d, []).append(x)
    return out


@dataclass
class TokenSample:
    """A pool's token-budgeted sample as train / validation streams, and what it covers."""

    train: dict[str, np.ndarray]
    """Per domain: the training documents' ids, each followed by EOS, in key order."""
    val: dict[str, np.ndarray]
    """The same for the held-out documents (domains with none are absent)."""
    domains: dict[str, dict[str, Any]]
    """Per domain: ``docs`` and ``chars`` of the pool, ``sample_docs``, ``sample_chars``,
    ``train_tokens``, ``val_tokens``, ``covered`` (the sample is the whole domain) and
    ``pool_train_tokens`` (the training tokens of the whole domain: exact when covered, else
    the sample's tokens per character times the domain's characters, less the validation
    share the split would hold out of the whole domain)."""
    need: int | None
    """The token budget of each domain (None: the whole pool)."""
    digest: str
    """SHA-256 of the sampled documents' (domain, id, text digest) in key order."""
    folder: Path
    """The token cache folder (shards and ``sample.json``)."""


def _streams(
    table: pa.Table, eos: int, dtype: np.dtype, val_fraction: float
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One domain's sampled rows (key order) -> train and val streams, and their documents."""
    held = held_out(table["digest"].to_pylist(), val_fraction)
    is_val = np.zeros(table.num_rows, dtype=bool)
    is_val[list(held)] = True

    def stream(mask: np.ndarray) -> np.ndarray:
        rows = table["tokens"].take(pa.array(np.flatnonzero(mask))).combine_chunks()
        if len(rows) == 0:
            return np.zeros(0, dtype)
        values = rows.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        lens = np.diff(rows.offsets.to_numpy())
        out = np.full(len(values) + len(rows), eos, dtype=dtype)
        ends = np.cumsum(lens + 1) - 1
        keep = np.ones(len(out), dtype=bool)
        keep[ends] = False
        out[keep] = values
        return out

    return stream(~is_val), stream(is_val), int((~is_val).sum()), int(is_val.sum())


def sample_token_streams(
    parts: list[str],
    tok: Tokenizer,
    seed: int,
    need: int | None,
    cache_dir: str | Path,
    pool_key: str,
    val_fraction: float = 0.05,
    run: PartRunner = run_parts_here,
    stats: Mapping[str, Mapping[str, int]] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> TokenSample:
    """A seeded, token-budgeted sample of a pool as train / validation token streams.

    Each domain's documents are taken in the order of :func:`doc_hash` of (``seed``, id) up
    to ``need`` stream tokens (the document crossing it included; the whole domain when it
    has fewer), so the sample depends on the seed, the ids and the texts, never on how the
    pool is split into parts or on the number of workers. The tokenization runs one task
    per part (``run``): each tokenizes its candidates (documents whose hash is below their
    domain's limit, a prefix of the key order sized from the character counts) into a token
    shard; the caller then reads only the candidates' keys and the sample's tokens. The sample
    is split into train / validation like :func:`split_documents` (keyed text digests).

    The shards and ``sample.json`` live in ``cache_dir/sample-<key>/``, the key hashing the
    tokenizer, ``pool_key`` (the pool's identity), the seed and ``need``: a later call with
    the same inputs reads them instead of tokenizing again.

    Parameters
    ----------
    parts : the pool's Parquet parts (``id``, ``domain``, ``text``).
    tok : the tokenizer.
    seed : orders the documents (and keys the text digests of the split).
    need : stream tokens per domain (:func:`token_need`); None: every document.
    cache_dir, pool_key : where the shards go, and what identifies the pool in their key.
    val_fraction : share of each domain's sampled documents held out.
    run : a :data:`PartRunner` (:func:`run_parts_here`, or Spark's ``map_parts``).
    stats : the pool's :func:`pool_stats` when already known.
    """
    import json

    from curamix.io.store import write_json_atomic
    from curamix.proxy.tokenizer import eos_id, token_dtype, tokenizer_hash

    spec = f"v{SAMPLE_VERSION}|{tokenizer_hash(tok)}|{pool_key}|{seed}|{need}"
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"sample-{key}"
    meta_path = folder / "sample.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        say(f"mixture: token sample from the cache {folder}")
    else:
        stats = dict(stats) if stats is not None else pool_stats(parts, run)
        if not stats:
            raise ValueError("the pool has no documents to sample")
        folder.mkdir(parents=True, exist_ok=True)
        budget = {d: float(need) if need is not None else math.inf for d in stats}
        estimate = {d: s["chars"] / CHARS_PER_TOKEN + s["docs"] for d, s in stats.items()}
        tok_json, out_dir = tok.to_str(), str(folder)

        def attempt(limits: dict[str, int]) -> dict[str, float]:
            t = run(
                parts,
                lambda i, p: part_token_shard(p, i, out_dir, tok_json, seed, limits),
                COUNTS_SCHEMA,
            )
            agg = t.group_by("domain").aggregate([("tokens", "sum")])
            return dict(zip(agg["domain"].to_pylist(), agg["tokens_sum"].to_pylist(), strict=True))

        say(
            f"mixture: tokenizing a seeded sample of {len(stats)} domains "
            f"({'all documents' if need is None else f'{need:,} tokens each'}; "
            f"{len(parts)} parts)"
        )
        _rounds(stats, budget, estimate, attempt, say, "token")
        names = [f"part-{i:05d}.parquet" for i in range(len(parts))]
        keys = pa.concat_tables(
            [KEYS_SCHEMA.empty_table()]
            + [
                pq.read_table(folder / f, columns=KEYS_SCHEMA.names).cast(KEYS_SCHEMA)
                for f in names
            ]
        )
        cut = prefix_cutoffs(keys, budget)
        meta = {
            "version": SAMPLE_VERSION,
            "seed": seed,
            "need": need,
            "pool_key": pool_key,
            "parts": names,
            "stats": stats,
            "cutoffs": {d: [h, i] for d, (h, i) in cut.items()},
        }
        write_json_atomic(meta_path, meta)
    cut = {d: (int(h), str(i)) for d, (h, i) in meta["cutoffs"].items()}
    dtype, eos = token_dtype(tok.get_vocab_size()), eos_id(tok)
    chosen = [shard_schema(dtype).empty_table()]
    for name in meta["parts"]:
        t = pq.read_table(folder / name)
        chosen.append(t.filter(_in_sample(t, cut)).cast(shard_schema(dtype)))
    sample = pa.concat_tables(chosen).sort_by(
        [("domain", "ascending"), ("h", "ascending"), ("id", "ascending")]
    )
    digest = hashlib.sha256()
    train: dict[str, np.ndarray] = {}
    val: dict[str, np.ndarray] = {}
    domains: dict[str, dict[str, Any]] = {}
    for d, s in sorted(meta["stats"].items()):
        rows = sample.filter(pc.equal(sample["domain"], d))
        for i, g in zip(rows["id"].to_pylist(), rows["digest"].to_pylist(), strict=True):
            digest.update(f"{d}\x00{i}\x00{g.hex()}\n".encode())
        tr, va, n_tr, n_va = _streams(rows, eos, dtype, val_fraction)
        train[d] = tr
        if len(va):
            val[d] = va
        sample_chars = int(pc.sum(rows["chars"]).as_py() or 0)
        covered = rows.num_rows == s["docs"]
        pool_train = float(len(tr))
        if not covered and sample_chars:  # the sample's tokens per character, scaled
            n_val = n_held_out(int(s["docs"]), val_fraction)
            per_char = (len(tr) + len(va)) / sample_chars
            pool_train = per_char * s["chars"] * (s["docs"] - n_val) / s["docs"]
        domains[d] = {
            "docs": int(s["docs"]),
            "chars": int(s["chars"]),
            "sample_docs": rows.num_rows,
            "sample_chars": sample_chars,
            "train_docs": n_tr,
            "val_docs": n_va,
            "train_tokens": len(tr),
            "val_tokens": len(va),
            "covered": covered,
            "pool_train_tokens": round(pool_train),
        }
    return TokenSample(train, val, domains, need, digest.hexdigest(), folder)


# ---------------------------------------------------------------------------------------------
# Windows


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> np.ndarray:
    """Non-overlapping evaluation rows of ``seq_len + 1`` tokens from the start of a stream.

    Rows cover the first ``min(max_tokens, len - 1)`` predicted tokens (rounded down to whole
    rows). A stream with fewer than ``seq_len + 1`` tokens gives one shorter row; one with
    fewer than two tokens gives no rows. Returns an ``int64`` array ``(n_rows, row_len)``.
    """
    n = len(tokens)
    if n < 2:
        return np.zeros((0, seq_len + 1), dtype=np.int64)
    if n < seq_len + 1:
        return np.asarray(tokens[:], dtype=np.int64)[None, :]
    n_rows = max(1, min(int(max_tokens), n - 1) // seq_len)
    idx = np.arange(n_rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens[idx].astype(np.int64)


def random_windows(
    tokens: np.ndarray, n_rows: int, seq_len: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_rows`` windows of ``seq_len + 1`` tokens at uniform random offsets (wrapping around
    the stream's end), as ``int64``. Used for the mixer hook's per-domain micro-batches."""
    n = len(tokens)
    if n == 0:
        raise ValueError("cannot draw windows from an empty token stream")
    starts = rng.integers(0, n, size=n_rows)
    idx = (starts[:, None] + np.arange(seq_len + 1)[None, :]) % n
    return tokens[idx].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Mixture sampling


class EpochLimitError(RuntimeError):
    """A domain would be read past ``max_epochs`` (``on_exhausted="raise"``)."""


def check_weights(
    weights: Mapping[str, float], known: list[str] | tuple[str, ...]
) -> dict[str, float]:
    """Validated mixture weights over ``known`` domains (missing ones are 0), as floats.

    Raises ValueError naming the problem: an unknown domain, a negative or non-finite weight,
    or a sum more than :data:`WEIGHT_TOL` away from 1.
    """
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"weights name unknown domains {unknown}; known: {sorted(known)}")
    out = {d: float(weights.get(d, 0.0)) for d in known}
    bad = {d: w for d, w in out.items() if not np.isfinite(w) or w < 0}
    if bad:
        raise ValueError(f"weights must be finite and non-negative, got {bad}")
    total = sum(out.values())
    if abs(total - 1.0) > WEIGHT_TOL:
        raise ValueError(f"weights must sum to 1 (within {WEIGHT_TOL}), got {total!r}: {out}")
    return out


class MixtureSampler:
    """Training batches drawn from per-domain token streams by mixture weights.

    Each row of a batch picks its domain from the current weights (a seeded numpy Generator),
    then takes the next window of ``seq_len + 1`` tokens from that domain's stream: reading is
    sequential per domain from a random start offset, wrapping at the end, and consecutive
    windows overlap by one token, so every token is a prediction target once per epoch.
    Per domain it counts rows, tokens (``seq_len`` targets per row) and epochs
    (tokens / stream length).

    Parameters
    ----------
    train_tokens : dict of str to ndarray
        One non-empty stream per domain.
    weights : dict of str to float
        Mixture weights (see :func:`check_weights`; a missing domain has weight 0).
    seq_len, batch_size : int
    max_epochs : float, optional
        A domain may not be read past this many epochs. ``None``: no limit.
    on_exhausted : {"raise", "drop"}
        What happens when a drawn row would pass ``max_epochs``: raise :class:`EpochLimitError`
        naming the domain, or drop the domain (weight 0, the others renormalized, a warning)
        and draw that row again. When every weighted domain is exhausted it raises either way.
    random_state : int

    Notes
    -----
    Per-row domain draws (rather than fixed per-batch quotas) are what online mixers such as
    DoGE and DoReMi assume. RegMix proxies cap repetition (15 epochs) the same way.
    """

    def __init__(
        self,
        train_tokens: Mapping[str, np.ndarray],
        weights: Mapping[str, float],
        seq_len: int,
        batch_size: int,
        max_epochs: float | None = None,
        on_exhausted: Literal["raise", "drop"] = "raise",
        random_state: int = 0,
    ):
        self.domains = tuple(sorted(train_tokens))
        if not self.domains:
            raise ValueError("train_tokens is empty: need at least one domain")
        empty = [d for d in self.domains if len(train_tokens[d]) == 0]
        if empty:
            raise ValueError(f"domain(s) {empty} have no training tokens")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(
                f"seq_len and batch_size must be >= 1, got {seq_len!r}, {batch_size!r}"
            )
        if max_epochs is not None and not max_epochs > 0:
            raise ValueError(f"max_epochs must be positive or None, got {max_epochs!r}")
        if on_exhausted not in ("raise", "drop"):
            raise ValueError(f"on_exhausted must be 'raise' or 'drop', got {on_exhausted!r}")
        self.tokens = {d: train_tokens[d] for d in self.domains}
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.max_epochs, self.on_exhausted = max_epochs, on_exhausted
        self.random_state = random_state
        self.weights = check_weights(weights, self.domains)
        self.rng = np.random.default_rng(random_state)
        self.positions = {d: int(self.rng.integers(len(self.tokens[d]))) for d in self.domains}
        self.rows_seen = dict.fromkeys(self.domains, 0)
        self.dropped: list[str] = []

    # -- state -------------------------------------------------------------------------------
    @property
    def n_tokens(self) -> dict[str, int]:
        """Length of each domain's stream."""
        return {d: len(t) for d, t in self.tokens.items()}

    @property
    def tokens_seen(self) -> dict[str, int]:
        """Target tokens read per domain so far."""
        return {d: r * self.seq_len for d, r in self.rows_seen.items()}

    @property
    def epochs(self) -> dict[str, float]:
        """Epochs read per domain so far (tokens seen / stream length)."""
        return {d: r * self.seq_len / len(self.tokens[d]) for d, r in self.rows_seen.items()}

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Use new weights from the next row on (validated by :func:`check_weights`).

        A domain already dropped for reaching ``max_epochs`` stays at weight 0: weight given to
        it is spread over the others in proportion (with a warning)."""
        new = check_weights(weights, self.domains)
        revived = [d for d in self.dropped if new[d] > 0]
        if revived:
            total = sum(w for d, w in new.items() if d not in self.dropped)
            if total <= 0:
                raise EpochLimitError(
                    f"new weights only give weight to domains {revived}, which reached "
                    f"max_epochs={self.max_epochs} and were dropped"
                )
            new = {d: 0.0 if d in self.dropped else w / total for d, w in new.items()}
            warnings.warn(
                f"domain(s) {revived} were dropped at max_epochs={self.max_epochs}; their new "
                "weight was spread over the other domains",
                stacklevel=2,
            )
        self.weights = new

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this sampler is (JSON-able)."""
        return {
            "domains": list(self.domains),
            "weights": dict(self.weights),
            "positions": dict(self.positions),
            "rows_seen": dict(self.rows_seen),
            "dropped": list(self.dropped),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a sampler over the same domains."""
        if list(state["domains"]) != list(self.domains):
            raise ValueError(
                f"sampler state is for domains {state['domains']}, this sampler has {list(self.domains)}"
            )
        self.weights = {d: float(state["weights"][d]) for d in self.domains}
        self.positions = {d: int(state["positions"][d]) for d in self.domains}
        self.rows_seen = {d: int(state["rows_seen"][d]) for d in self.domains}
        self.dropped = list(state["dropped"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]

    # -- drawing -----------------------------------------------------------------------------
    def _exhausted(self, d: str) -> bool:
        if self.max_epochs is None:
            return False
        after = (self.rows_seen[d] + 1) * self.seq_len / len(self.tokens[d])
        return after > self.max_epochs + 1e-12

    def _drop(self, d: str) -> None:
        rest = {k: w for k, w in self.weights.items() if k != d and w > 0}
        total = sum(rest.values())
        if total <= 0:
            raise EpochLimitError(
                f"domain {d!r} reached max_epochs={self.max_epochs} and no other domain has "
                "weight left to renormalize onto"
            )
        self.weights = {k: rest.get(k, 0.0) / total for k in self.domains}
        self.dropped.append(d)
        warnings.warn(
            f"domain {d!r} reached max_epochs={self.max_epochs} ({self.epochs[d]:.3f} epochs "
            f"of {len(self.tokens[d])} tokens); dropped, the other weights renormalized to "
            f"{ {k: round(w, 4) for k, w in self.weights.items() if w > 0} }",
            stacklevel=3,
        )

    def _draw_domain(self) -> str:
        p = np.array([self.weights[d] for d in self.domains], dtype=np.float64)
        return self.domains[int(self.rng.choice(len(self.domains), p=p / p.sum()))]

    def _take(self, d: str) -> np.ndarray:
        stream, n, pos = self.tokens[d], len(self.tokens[d]), self.positions[d]
        end = pos + self.seq_len + 1
        if end <= n:
            row = np.asarray(stream[pos:end], dtype=np.int64)
        else:
            row = stream[np.arange(pos, end) % n].astype(np.int64)
        self.positions[d] = (pos + self.seq_len) % n
        self.rows_seen[d] += 1
        return row

    def next_batch(self) -> tuple[np.ndarray, list[str]]:
        """The next batch: ``int64`` tokens ``(batch_size, seq_len + 1)`` and each row's domain.

        Inputs are ``batch[:, :-1]``, targets ``batch[:, 1:]``."""
        rows, names = [], []
        for _ in range(self.batch_size):
            d = self._draw_domain()
            while self._exhausted(d):
                if self.on_exhausted == "raise":
                    raise EpochLimitError(
                        f"domain {d!r} would pass max_epochs={self.max_epochs} "
                        f"({self.rows_seen[d] * self.seq_len} of {len(self.tokens[d])} tokens "
                        f"read, {self.epochs[d]:.3f} epochs); lower its weight, raise "
                        "max_epochs or use on_exhausted='drop'"
                    )
                self._drop(d)
                d = self._draw_domain()
            rows.append(self._take(d))
            names.append(d)
        return np.stack(rows), names
