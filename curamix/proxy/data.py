"""Proxy training data: a run's documents by domain, cached token streams, mixture sampling.

- :func:`load_run_domains` reads the latest pool stage (dedup, else ingest) of a run folder.
- :func:`split_documents` holds out a deterministic fraction of each domain's *documents*.
- :func:`tokenize_domains` encodes each domain once into one stream (documents separated by
  EOS) and caches it as ``.npy`` under a key of tokenizer hash + content hash + split.
- :class:`MixtureSampler` draws training batches from the streams by mixture weights.

numpy only (no torch), so a notebook can inspect streams without loading torch.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

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
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

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


def split_documents(
    texts: list[str], val_fraction: float = 0.05, random_state: int = 0
) -> tuple[list[str], list[str]]:
    """Hold out ``val_fraction`` of the documents for validation, deterministically.

    The held-out documents are the ``round(val_fraction * n)`` ones (at least one when there
    are two or more documents and ``val_fraction > 0``) with the smallest keyed hash of their
    text, so the split depends neither on document order nor on the other documents' presence
    beyond the count. Identical texts share a hash and land on the same side. A domain with a
    single document keeps it for training. Both lists keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(texts)
    k = round(val_fraction * n)
    if val_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    if k == 0:
        return list(texts), []
    keys = [(_text_digest(t, random_state), i) for i, t in enumerate(texts)]
    held = {i for _, i in sorted(keys)[:k]}
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
