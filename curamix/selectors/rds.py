"""RDS+: representation-based data selection toward several tasks.

Plain kernels that the notebook, the Spark job (:mod:`curamix.pipelines.rds`), the effect
bench and the tests share:

- :func:`position_weights` and :func:`weighted_mean_pool`: the position-weighted mean of a
  causal LM's last hidden layer, weights ``i / sum_j j`` over the real tokens ``i = 1..n``
  (padding masked; later tokens, which have seen more of the text, count more), then
  L2-normalised (:func:`l2_normalize`);
- :class:`ProxyLMEncoder` (a curamix :class:`~curamix.proxy.model.ProxyLM` and its BPE
  tokenizer) and :class:`HFCausalLMEncoder` (any Hugging Face causal LM folder, offline):
  texts -> unit vectors, both through the same pooling;
- :func:`task_scores` and :class:`RDSSelector`: a document's score for a task is its largest
  cosine similarity to any of the task's query examples (a FAISS Flat inner-product index of
  the queries, searched with each document, ``k = 1``);
- :func:`round_robin`: the reference's multi-task budget (each task in turn pops the next
  document of its own ranking until the budget is met) and :func:`top_max`: plain top-k of
  the best score over the tasks.

References
----------
Ivison, Zhang, Wang, Groeneveld, Smith, Hajishirzi, Dasigi. "Large-Scale Data Selection for
Instruction Tuning". 2025. arXiv:2503.01807. Reference code: ``hamishivi/automated-instruction-
selection`` (``minimal_multitask/compute_influence_cosinesim.py``, ``--pooling weighted_mean``;
``minimal_multitask/get_top_aggregated_influences.py``, ``--aggregation_method round_robin
--selection_method max``). Muennighoff, "SGPT: GPT Sentence Embeddings for Semantic Search",
arXiv:2202.08904 (the position-weighted mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from curamix.proxy.model import ProxyLM

Aggregation = Literal["round_robin", "max"]
HF_MAX_TOKENS = 2048
"""Default truncation of ``hf:`` models: the reference's ``max_seq_length`` for Tulu data."""


# --- pooling ---------------------------------------------------------------------------------


def position_weights(mask: torch.Tensor) -> torch.Tensor:
    """Weights ``(B, T)``: ``i / sum_{j=1..n} j`` at the ``i``-th real token of each row
    (``mask`` 1 at real tokens, 0 at padding, on either side), 0 at padding. A row without
    real tokens gets all zeros."""
    import torch

    m = mask.to(torch.float64)
    pos = torch.cumsum(m, dim=1) * m
    total = pos.sum(dim=1, keepdim=True)
    return pos / torch.where(total > 0, total, torch.ones_like(total))


def weighted_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean ``(B, d)`` (float32) of ``hidden`` ``(B, T, d)`` over the real
    tokens of ``mask`` ``(B, T)`` (:func:`position_weights`); not normalised.

    The reference computes ``arange(T) + 1`` normalised over every position of its
    batch-size-1 inputs (so no padding); masking the padding makes a padded batch give the
    same vectors as one text at a time."""
    import torch

    w = position_weights(mask).to(hidden.device)
    return (hidden.to(torch.float64) * w.unsqueeze(-1)).sum(dim=1).float()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (float32); an all-zero row stays zero."""
    a = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return (a / np.where(n > 0, n, 1.0)).astype(np.float32)


# --- encoders --------------------------------------------------------------------------------


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Positions in batches of similar length (less padding; the result does not depend on
    the batching because padding is masked and the models are causal)."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class ProxyLMEncoder:
    """Texts -> unit vectors from a curamix :class:`~curamix.proxy.model.ProxyLM`.

    Each text is encoded with the proxy's byte-level BPE tokenizer, ``EOS`` (id 0, what the
    proxy saw before every training document) first, as the reference's Llama tokenizer puts
    ``<s>`` first, and cut to ``max_tokens`` (default and at most the model's ``seq_len``).
    The vector is :func:`weighted_mean_pool` of :meth:`ProxyLM.last_hidden` (after the final
    RMSNorm, the point Hugging Face's ``hidden_states[-1]`` gives), L2-normalised.
    """

    def __init__(
        self,
        model: ProxyLM,
        tokenizer: Tokenizer,
        max_tokens: int | None = None,
        batch_size: int = 16,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids each text is encoded from (EOS first, cut to ``max_tokens``)."""
        from curamix.proxy.tokenizer import eos_id

        limit = self.model.cfg.seq_len
        n = limit if self.max_tokens is None else min(int(self.max_tokens), limit)
        if n < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens!r}")
        bos = eos_id(self.tokenizer)
        enc = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[bos, *e.ids][:n] for e in enc]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``(len(texts), d_model)`` unit rows."""
        import torch

        ids = self.token_ids(texts)
        device = next(self.model.parameters()).device
        out = np.zeros((len(ids), self.model.cfg.d_model), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            for rows in _length_batches([len(x) for x in ids], self.batch_size):
                width = max(len(ids[r]) for r in rows)
                batch = torch.zeros((len(rows), width), dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, r in enumerate(rows):
                    batch[j, : len(ids[r])] = torch.tensor(ids[r], dtype=torch.long)
                    mask[j, : len(ids[r])] = 1
                with torch.no_grad():
                    h = self.model.last_hidden(batch.to(device))
                    out[rows] = weighted_mean_pool(h, mask.to(device)).cpu().numpy()
        finally:
            self.model.train(was_training)
        return l2_normalize(out)

    def to_payload(self) -> dict[str, Any]:
        """Plain data (config, float32 weights as numpy, tokenizer JSON) that
        :meth:`from_payload` rebuilds the encoder from, e.g. inside a Spark task."""
        state = {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}
        return {
            "config": self.model.cfg.model_dump(mode="json"),
            "state": state,
            "tokenizer": self.tokenizer.to_str(),
            "max_tokens": self.max_tokens,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], device: str = "cpu") -> ProxyLMEncoder:
        import torch
        from tokenizers import Tokenizer

        from curamix.device import resolve_device
        from curamix.proxy.model import ProxyLM, ProxyModelConfig

        model = ProxyLM(ProxyModelConfig(**payload["config"]))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in payload["state"].items()})
        model = model.to(resolve_device(device)).eval()
        tok = Tokenizer.from_str(payload["tokenizer"])
        return cls(model, tok, payload["max_tokens"], payload["batch_size"])


class HFCausalLMEncoder:
    """Texts -> unit vectors from a Hugging Face causal LM, as the reference computes them.

    ``AutoModelForCausalLM(...)(input_ids, attention_mask, output_hidden_states=True)``, the
    last entry of ``hidden_states`` (after the final norm), :func:`weighted_mean_pool` over
    the real tokens (right padding, masked), L2-normalised. Texts are tokenized with the
    model's tokenizer (its special tokens, e.g. Llama's ``<s>``), cut to ``max_tokens``.
    Build with :meth:`load` (offline: ``local_files_only=True``).
    """

    def __init__(
        self, model: Any, tokenizer: Any, max_tokens: int = HF_MAX_TOKENS, batch_size: int = 16
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        path: str,
        device: str = "auto",
        dtype: str = "auto",
        max_tokens: int | None = None,
        batch_size: int = 16,
    ) -> HFCausalLMEncoder:
        """The model and tokenizer at ``path`` (a folder or a name in the local Hugging Face
        cache; nothing is downloaded). ``dtype`` ``auto``: bfloat16 on CUDA (the
        reference's), float32 on CPU. Raises ``ValueError`` naming ``path`` when it cannot be
        loaded."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from curamix.device import resolve_device

        dev = resolve_device(device)
        if dtype == "auto":
            dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
        else:
            dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
                dtype
            ]
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dt)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"representation 'hf:{path}': cannot load a causal LM and its tokenizer from "
                f"{path!r} offline ({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from None
        tok.padding_side = "right"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        return cls(model.to(dev).eval(), tok, max_tokens or HF_MAX_TOKENS, batch_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``(len(texts), hidden_size)`` unit rows."""
        import torch

        texts = list(texts)
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        device = next(self.model.parameters()).device
        dim = int(self.model.config.get_text_config().hidden_size)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        pad = int(self.tokenizer.pad_token_id)
        for rows in _length_batches([len(x) for x in ids], self.batch_size):
            width = max(1, max(len(ids[r]) for r in rows))
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, r in enumerate(rows):
                batch[j, : len(ids[r])] = torch.tensor(ids[r], dtype=torch.long)
                mask[j, : len(ids[r])] = 1
            with torch.no_grad():
                o = self.model(
                    input_ids=batch.to(device),
                    attention_mask=mask.to(device),
                    output_hidden_states=True,
                )
                out[rows] = weighted_mean_pool(o.hidden_states[-1], mask.to(device)).cpu().numpy()
        return l2_normalize(out)


# --- scores ----------------------------------------------------------------------------------


def task_scores(
    doc_vectors: np.ndarray, query_vectors: np.ndarray, gpu: str = "off"
) -> tuple[np.ndarray, np.ndarray]:
    """Each document's largest cosine similarity to a query, and which query (position).

    A FAISS Flat inner-product index over the (unit) ``query_vectors``, searched with every
    document, ``k = 1`` (exact). Ties between queries go to FAISS's choice (the lower
    position for a Flat index). Raises ``ValueError`` for an empty query set or mismatched
    dimensions.

    Returns
    -------
    (scores float32 (n_docs,), nearest int64 (n_docs,))
    """
    from curamix.config import IndexConfig
    from curamix.embeddings.index import VectorIndex

    q = np.ascontiguousarray(query_vectors, dtype=np.float32)
    d = np.ascontiguousarray(doc_vectors, dtype=np.float32)
    if q.ndim != 2 or len(q) == 0:
        raise ValueError(f"the query set is empty (shape {q.shape}): nothing to score against")
    if d.ndim != 2 or d.shape[1] != q.shape[1]:
        raise ValueError(f"dimension mismatch: documents have shape {d.shape}, queries {q.shape}")
    if len(d) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    index = VectorIndex.build(q, cfg=IndexConfig(kind="flat", gpu=gpu), metric="ip")
    s, pos = index.search(d, 1)
    return s[:, 0], pos[:, 0]


@dataclass(frozen=True)
class Selection:
    """A budgeted selection: ``positions`` (int64, in the order chosen), ``task`` (int64: the
    task whose turn chose each one; for ``max``, the task of its best score) and ``score``
    (float64: the reference's recorded value, see :func:`round_robin`); ``pops``: documents
    taken from the rankings (round-robin turns used; more than ``len(positions)`` when a task's
    turn fell on a document another task had chosen)."""

    positions: np.ndarray
    task: np.ndarray
    score: np.ndarray
    pops: int

    def per_task(self, n_tasks: int) -> np.ndarray:
        """Documents each task contributed."""
        return np.bincount(self.task, minlength=n_tasks)


def _check_budget(scores: np.ndarray, budget: float, sizes: np.ndarray | None) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be (n_docs, n_tasks) with a task, got shape {s.shape}")
    n = s.shape[0]
    if sizes is None:
        if not 1 <= budget <= n or budget != int(budget):
            raise ValueError(
                f"budget must be a whole number of documents in 1..{n}, got {budget!r}"
            )
        return np.ones(n, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any():
        raise ValueError(f"sizes must be {n} non-negative numbers, got shape {w.shape}")
    if not 0 < budget <= w.sum():
        raise ValueError(
            f"budget must be in (0, {w.sum():g}] (the pool's total size), got {budget!r}"
        )
    return w


def _stop(sizes: np.ndarray, budget: float) -> int:
    """Documents taken from a ranking (sizes in order) until their sum reaches ``budget``."""
    return int(np.searchsorted(np.cumsum(sizes), budget - 1e-9)) + 1


def round_robin(scores: np.ndarray, budget: float, sizes: np.ndarray | None = None) -> Selection:
    """The reference's round-robin over tasks (``get_top_aggregated_influences.py``).

    Each task's ranking is its column of ``scores`` sorted from the highest score down; ties
    keep the document order (Python's stable ``sorted(..., reverse=True)`` over documents in
    index order). Then, round after round, each task in column order pops the head of its
    ranking: a document not chosen yet is added; one another task already chose is NOT
    skipped over: the pop uses up this task's turn (nothing is added), and the document's
    recorded score becomes the smaller of the two.
    This stops the moment the budget is met, even inside a round. The recorded score of a
    chosen document is the minimum of the scores of all its pops up to then.

    Parameters
    ----------
    scores : (n_docs, n_tasks) per-task scores (higher = better).
    budget : documents (``sizes=None``) or a total of ``sizes`` (e.g. tokens): documents are
        added until their sizes reach it (the last one may pass it).
    sizes : (n_docs,) non-negative sizes, or None.

    Returns
    -------
    :class:`Selection` in the order chosen. Raises ``ValueError`` for a budget outside
    1..n_docs documents (or (0, total size]) and malformed input.
    """
    s = np.asarray(scores, dtype=np.float64)
    w = _check_budget(s, budget, sizes)
    n, n_tasks = s.shape
    ranks = np.stack([np.argsort(-s[:, t], kind="stable") for t in range(n_tasks)], axis=1)
    seen = np.zeros(n, dtype=bool)
    chosen: list[np.ndarray] = []
    by: list[np.ndarray] = []
    # Rounds are read in growing blocks; the first block holds about the budget's documents.
    k_guess = budget if sizes is None else budget / max(float(w.mean()), 1e-12)
    total, r0, block = 0.0, 0, max(1, int(min(n, k_guess)) // n_tasks + 1)
    stop_at = None  # (round, task) of the pop that met the budget
    while r0 < n:
        r1 = min(n, r0 + block)
        seq = ranks[r0:r1].ravel()  # round-major: round r, then tasks in order
        new = ~seen[seq]
        cand = np.flatnonzero(new)
        # first occurrence inside the block of each not-yet-chosen document
        _, first = np.unique(seq[cand], return_index=True)
        at = np.sort(cand[first])
        docs = seq[at]
        csum = total + np.cumsum(w[docs])
        hit = np.flatnonzero(csum >= budget - 1e-9)
        if len(hit):
            at, docs = at[: hit[0] + 1], docs[: hit[0] + 1]
            stop_at = r0 * n_tasks + int(at[-1])
        chosen.append(docs)
        by.append(at % n_tasks)
        seen[docs] = True
        total = float(csum[len(docs) - 1]) if len(docs) else total
        if stop_at is not None:
            break
        r0, block = r1, block * 2
    if stop_at is None:  # unreachable after _check_budget: every ranking holds every document
        raise RuntimeError("round_robin ran out of documents before meeting the budget")
    positions = np.concatenate(chosen)
    pops = ranks.ravel()[: stop_at + 1]
    pop_task = np.arange(stop_at + 1) % n_tasks
    rec = np.full(n, np.inf)
    np.minimum.at(rec, pops, s[pops, pop_task])
    return Selection(
        positions.astype(np.int64),
        np.concatenate(by).astype(np.int64),
        rec[positions],
        stop_at + 1,
    )


def top_max(scores: np.ndarray, budget: float, sizes: np.ndarray | None = None) -> Selection:
    """Plain top-k of each document's best score over the tasks (ties: lower position first),
    until the budget is met (as in :func:`round_robin`). ``task`` = the best task (the first
    on ties), ``score`` = the best score."""
    s = np.asarray(scores, dtype=np.float64)
    w = _check_budget(s, budget, sizes)
    best = s.max(axis=1)
    order = np.argsort(-best, kind="stable")
    k = _stop(w[order], budget)
    pos = order[:k]
    return Selection(
        pos.astype(np.int64), s[pos].argmax(axis=1).astype(np.int64), best[pos], int(k)
    )


class RDSSelector:
    """RDS+ over precomputed unit vectors.

    ``RDSSelector(aggregation="round_robin").fit({"gsm8k": q1, "mmlu": q2})`` keeps one FAISS
    index of query vectors per task (``tasks_``, in the mapping's order: the round-robin
    order); ``score_samples(doc_vectors)`` gives the ``(n_docs, n_tasks)`` scores (max cosine
    to the task's queries), ``nearest(doc_vectors)`` adds which query of each task;
    ``select(scores, budget, sizes)`` applies :func:`round_robin` or :func:`top_max`.

    Raises ``ValueError`` on ``fit`` naming a task with no query vector, and for an unknown
    aggregation.

    References
    ----------
    Ivison et al. 2025, arXiv:2503.01807 (RDS+); ``hamishivi/automated-instruction-selection``.
    """

    def __init__(self, aggregation: Aggregation = "round_robin", gpu: str = "off"):
        self.aggregation = aggregation
        self.gpu = gpu

    def fit(self, queries: Mapping[str, np.ndarray]) -> RDSSelector:
        if self.aggregation not in ("round_robin", "max"):
            raise ValueError(
                f"aggregation must be 'round_robin' or 'max', got {self.aggregation!r}"
            )
        if not queries:
            raise ValueError("no task: give at least one task's query vectors")
        dims = set()
        for name, q in queries.items():
            a = np.asarray(q)
            if a.ndim != 2 or len(a) == 0:
                raise ValueError(f"task {name!r} has an empty query set (shape {a.shape})")
            dims.add(a.shape[1])
        if len(dims) > 1:
            raise ValueError(f"the tasks' query vectors differ in dimension: {sorted(dims)}")
        self.tasks_ = list(queries)
        self.queries_ = {t: np.ascontiguousarray(queries[t], dtype=np.float32) for t in self.tasks_}
        return self

    def nearest(self, doc_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32 (n_docs, n_tasks), nearest query int64 (n_docs, n_tasks))``."""
        if not hasattr(self, "tasks_"):
            raise RuntimeError("RDSSelector is not fitted: call fit() first")
        cols = [task_scores(doc_vectors, self.queries_[t], self.gpu) for t in self.tasks_]
        return np.stack([c[0] for c in cols], axis=1), np.stack([c[1] for c in cols], axis=1)

    def score_samples(self, doc_vectors: np.ndarray) -> np.ndarray:
        """float32 ``(n_docs, n_tasks)``: each document's max cosine to each task's queries."""
        return self.nearest(doc_vectors)[0]

    def select(
        self, scores: np.ndarray, budget: float, sizes: np.ndarray | None = None
    ) -> Selection:
        rule = round_robin if self.aggregation == "round_robin" else top_max
        return rule(scores, budget, sizes)


__all__ = [
    "HFCausalLMEncoder",
    "ProxyLMEncoder",
    "RDSSelector",
    "Selection",
    "l2_normalize",
    "position_weights",
    "round_robin",
    "task_scores",
    "top_max",
    "weighted_mean_pool",
]
