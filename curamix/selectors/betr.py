"""BETR: benchmark-targeted ranking of pretraining documents.

Plain kernels that the notebook, the Spark job (:mod:`curamix.pipelines.betr`) and the tests
share:

- :func:`rank_scores`: for every benchmark example, rank a sample of documents by cosine
  similarity (a FAISS search of the example against an index of the documents, ``k`` = all
  documents); a document's score is its best rank-based value over the examples (``max``,
  the paper's choice) or the mean of them (``mean``);
- :func:`label_top` and :func:`balance_classes`: the top share of the sample is positive,
  negatives are downsampled to the number of positives;
- :class:`HashedTextClassifier`: a fastText-like linear classifier over hashed word unigrams
  and bigrams (the tokenizer and vectorized hashing of :mod:`curamix.selectors.dsir`),
  trained with logistic-loss SGD, saved as ``.npy`` + JSON (no pickle);
- :func:`token_share_threshold`: the score threshold under which a requested share of
  TOKENS is kept; :func:`f_opt_percent`: the paper's compute rule for that share.

References
----------
Mizrahi, Bhatt, et al. "Language Models Improve When Pretraining Data Matches Target Tasks"
(BETR). 2025. arXiv:2507.12466.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from curamix.selectors.dsir import batch_grams

Aggregation = Literal["max", "mean"]
MAX_BLOCK_ENTRIES = 4_000_000
"""Search results (examples x documents) held at once by :func:`rank_scores`."""
MODEL_FILE, PARAMS_FILE = "coef.npy", "classifier.json"
FORMAT_VERSION = 1


def f_opt_percent(compute_flops: float) -> float:
    """The paper's optimal kept share of tokens, in PERCENT, for ``compute_flops`` training
    FLOPs: ``F_opt(C) = 4e-5 * C ** 0.25``.

    That is 4.0% at 1e20 and 12.6% at 1e22 (the paper rounds these to "about 3%" and "about
    10%"); larger budgets want less filtering. Raises ``ValueError`` for C <= 0.

    References
    ----------
    Mizrahi et al. 2025 (BETR), arXiv:2507.12466, the scaling of the optimal filtering rate.
    """
    c = float(compute_flops)
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"compute_flops must be a positive number of FLOPs, got {compute_flops!r}")
    return 4e-5 * c**0.25


def keep_fraction(keep_tokens: float | None = None, compute: float | None = None) -> float:
    """The share of tokens to keep: ``keep_tokens``, or ``F_opt(compute) / 100``, or 0.1.

    Raises ``ValueError`` when both are given, when ``keep_tokens`` is outside (0, 1], or when
    the compute rule asks for more than all tokens (C above ~3.9e25 FLOPs)."""
    if keep_tokens is not None and compute is not None:
        raise ValueError(f"set keep_tokens ({keep_tokens}) or compute ({compute}), not both")
    if compute is not None:
        keep = f_opt_percent(compute) / 100
        if keep > 1:
            raise ValueError(
                f"compute={compute:g} FLOPs gives F_opt = {keep:.1%} of the tokens (over 100%): "
                "the rule does not apply at this budget; set keep_tokens instead"
            )
        return keep
    keep = 0.1 if keep_tokens is None else float(keep_tokens)
    if not 0 < keep <= 1:
        raise ValueError(f"keep_tokens must be in (0, 1], got {keep_tokens!r}")
    return keep


def _check_vectors(doc_vectors: np.ndarray, example_vectors: np.ndarray) -> None:
    if doc_vectors.ndim != 2 or example_vectors.ndim != 2:
        raise ValueError(
            f"doc_vectors and example_vectors must be 2-d, got shapes {doc_vectors.shape} "
            f"and {example_vectors.shape}"
        )
    if len(example_vectors) == 0:
        raise ValueError("the benchmark example set is empty: nothing to rank documents against")
    if len(doc_vectors) == 0:
        raise ValueError("doc_vectors is empty: no sampled documents to rank")
    if doc_vectors.shape[1] != example_vectors.shape[1]:
        raise ValueError(
            f"dimension mismatch: documents have {doc_vectors.shape[1]}, examples "
            f"{example_vectors.shape[1]}"
        )


def rank_values(
    doc_vectors: np.ndarray, example_vectors: np.ndarray, index: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(max, mean) over the examples of each document's rank value ``1 - rank / n_docs``.

    ``rank`` is the 0-based position of the document in the example's search result (0 = the
    most similar), so the value is 1 for an example's nearest document and ``1/n`` for its
    farthest. A document the index does not return for an example (an approximate index that
    does not probe every list) gets value 0 for it. Ties in cosine keep the index's order.
    See :func:`rank_scores`.
    """
    docs = np.ascontiguousarray(doc_vectors, dtype=np.float32)
    ex = np.ascontiguousarray(example_vectors, dtype=np.float32)
    _check_vectors(docs, ex)
    n = len(docs)
    if index is None:
        from curamix.config import IndexConfig
        from curamix.embeddings.index import VectorIndex

        index = VectorIndex.build(docs, cfg=IndexConfig(kind="flat", gpu="off"), metric="ip")
    best = np.zeros(n, dtype=np.float64)
    total = np.zeros(n, dtype=np.float64)
    values = 1.0 - np.arange(n, dtype=np.float64) / n
    block = max(1, MAX_BLOCK_ENTRIES // n)
    for start in range(0, len(ex), block):
        _, pos = index.search(ex[start : start + block], n)
        pos = np.asarray(pos, dtype=np.int64)
        v = np.broadcast_to(values, pos.shape)
        ok = pos >= 0
        per = np.zeros((len(pos), n), dtype=np.float64)
        per[np.nonzero(ok)[0], pos[ok]] = v[ok]
        np.maximum(best, per.max(axis=0), out=best)
        total += per.sum(axis=0)
    return best, total / len(ex)


def rank_scores(
    doc_vectors: np.ndarray,
    example_vectors: np.ndarray,
    aggregation: Aggregation = "max",
    index: Any = None,
) -> np.ndarray:
    """BETR score of each sampled document: its rank-based similarity to the benchmark.

    For every benchmark example, the documents are ranked by cosine similarity (inner product
    of unit vectors) through a FAISS index over ``doc_vectors`` (a Flat index unless ``index``
    is given: anything with ``search(queries, k) -> (scores, positions)``), searched with
    k = all documents, in blocks of examples. The rank becomes the value ``1 - rank / n_docs``
    (1 for the nearest document, linear in the rank so that ``mean`` is an average rank);
    the score is its ``max`` over the examples (the document's best rank, the paper's default,
    which beat ``mean`` 62.2 vs 58.2) or its ``mean``.

    Parameters
    ----------
    doc_vectors : (n_docs, dim) unit rows (embedded documents).
    example_vectors : (n_examples, dim) unit rows (embedded benchmark examples).
    aggregation : ``"max"`` or ``"mean"``.
    index : a prebuilt index over ``doc_vectors`` (its positions are rows of ``doc_vectors``).

    Returns
    -------
    (n_docs,) float64 in [0, 1]. With ``max`` many documents share a value (every example's
    nearest document scores 1.0); :func:`label_top` breaks such ties.

    Raises ``ValueError`` for an empty example set or document set and mismatched dimensions.

    References
    ----------
    Mizrahi et al. 2025 (BETR), arXiv:2507.12466, section 2 (scoring by benchmark examples).
    """
    if aggregation not in ("max", "mean"):
        raise ValueError(f"aggregation must be 'max' or 'mean', got {aggregation!r}")
    best, mean = rank_values(doc_vectors, example_vectors, index)
    return best if aggregation == "max" else mean


def top_count(n: int, fraction: float) -> int:
    """Documents in the top ``fraction`` of ``n``: ``round(fraction * n)``, at least 1."""
    if not 0 < fraction < 1:
        raise ValueError(f"positive_fraction must be in (0, 1), got {fraction!r}")
    return max(1, min(n, round(fraction * n)))


def label_top(
    scores: np.ndarray, positive_fraction: float = 0.1, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Boolean labels: True for the top ``positive_fraction`` of ``scores`` (round(f * n),
    at least one). Ties are broken by ``tiebreak`` (higher first) and then by position (lower
    first), so exactly that many documents are positive."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ValueError(f"scores must be a non-empty 1-d array, got shape {s.shape}")
    k = top_count(len(s), positive_fraction)
    tb = np.zeros(len(s)) if tiebreak is None else np.asarray(tiebreak, dtype=np.float64)
    if tb.shape != s.shape:
        raise ValueError(f"tiebreak has shape {tb.shape}, scores {s.shape}")
    order = np.lexsort((np.arange(len(s)), -tb, -s))
    labels = np.zeros(len(s), dtype=bool)
    labels[order[:k]] = True
    return labels


def balance_classes(labels: np.ndarray, random_state: int | None = 0) -> np.ndarray:
    """Sorted indices of a balanced subset: every member of the smaller class and a seeded
    random sample of the same size from the larger one (the paper balances its positives and
    negatives before training). Raises ``ValueError`` when a class is empty."""
    y = np.asarray(labels, dtype=bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(
            f"need both classes to balance, got {len(pos)} positive and {len(neg)} negative"
        )
    rng = np.random.default_rng(random_state)
    if len(neg) > len(pos):
        neg = rng.choice(neg, size=len(pos), replace=False)
    elif len(pos) > len(neg):
        pos = rng.choice(pos, size=len(neg), replace=False)
    return np.sort(np.concatenate([pos, neg]))


def hash_unit(ids: Sequence[str], seed: int, salt: str = "") -> np.ndarray:
    """A uniform number in [0, 1) per id from blake2b of (seed, salt, id): the same for a
    document whatever the order or partitioning it is seen in (seeded sampling and splits)."""
    prefix = f"{int(seed)}\x00{salt}\x00".encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, doc_id in enumerate(ids):
        h = int.from_bytes(
            hashlib.blake2b(prefix + str(doc_id).encode("utf-8"), digest_size=8).digest(), "little"
        )
        out[i] = (h >> 11) * (1.0 / (1 << 53))
    return out


def token_share_threshold(
    scores: np.ndarray, n_tokens: np.ndarray, keep_tokens: float = 0.1
) -> float:
    """The score threshold ``t`` such that documents with ``score >= t`` hold ``keep_tokens``
    of the tokens of (held-out) documents.

    Documents are taken in decreasing score order; the cut is the one whose kept token share
    is nearest ``keep_tokens`` (ties in score are kept or dropped together, so the share can
    only be hit up to the size of the documents at the cut). Token counts are whatever the
    caller counts; the stage uses whitespace words (the ``n_words`` column).

    Returns the score of the last kept document (``-inf`` keeps everything when
    ``keep_tokens`` is 1). Raises ``ValueError`` for empty or mismatched input, negative
    counts, no tokens at all, or ``keep_tokens`` outside (0, 1].
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(n_tokens, dtype=np.float64)
    if not 0 < keep_tokens <= 1:
        raise ValueError(f"keep_tokens must be in (0, 1], got {keep_tokens!r}")
    if s.ndim != 1 or s.shape != t.shape or len(s) == 0:
        raise ValueError(
            f"scores and n_tokens must be non-empty 1-d arrays of one length, got shapes "
            f"{s.shape} and {t.shape}"
        )
    if (t < 0).any() or t.sum() <= 0:
        raise ValueError("n_tokens must be non-negative with a positive total")
    if keep_tokens == 1:
        return float("-inf")
    order = np.argsort(-s, kind="stable")
    ss = s[order]
    share = np.cumsum(t[order]) / t.sum()
    # Cuts can only fall after the last document of a run of equal scores.
    last_of_run = np.append(ss[1:] != ss[:-1], True)
    cand = np.flatnonzero(last_of_run)
    best = cand[np.argmin(np.abs(share[cand] - keep_tokens))]
    return float(ss[best])


class HashedTextClassifier:
    """fastText-like linear text classifier over hashed word n-grams.

    Features: lowercase WordPunct tokens, every unigram and bigram (``ngrams``) hashed into
    ``num_buckets`` with the vectorized 64-bit hash of :func:`curamix.selectors.dsir.batch_grams`
    (``fast`` mode), counts ``log1p``-damped and each row L2-normalized. Model: logistic
    regression trained by plain SGD (scikit-learn ``SGDClassifier``, ``log_loss``, constant
    learning rate ``lr``, ``epochs`` passes, L2 penalty ``alpha``). The paper used fastText
    (word bigrams, dim 128, lr 0.03, 5 epochs); a linear model on the hashed bag is the same
    family without the low-rank embedding, and it scores a batch with one sparse product.

    Learned state: ``coef_`` (num_buckets,) float32, ``intercept_``. ``save``/``load`` write
    ``coef.npy`` and ``classifier.json`` (no pickle).

    References
    ----------
    Joulin et al. "Bag of Tricks for Efficient Text Classification", arXiv:1607.01759;
    Mizrahi et al. 2025 (BETR), arXiv:2507.12466.
    """

    def __init__(
        self,
        num_buckets: int = 1 << 20,
        ngrams: int = 2,
        epochs: int = 5,
        lr: float = 0.03,
        alpha: float = 1e-6,
    ):
        self.num_buckets = num_buckets
        self.ngrams = ngrams
        self.epochs = epochs
        self.lr = lr
        self.alpha = alpha

    def _check_params(self) -> None:
        if not isinstance(self.num_buckets, int) or not 2 <= self.num_buckets < 2**32:
            raise ValueError(f"num_buckets must be an int in 2..2**32-1, got {self.num_buckets!r}")
        if not isinstance(self.ngrams, int) or self.ngrams < 1:
            raise ValueError(f"ngrams must be a positive int, got {self.ngrams!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        """(n, num_buckets) float32 rows: log1p hashed n-gram counts, L2-normalized."""
        g = batch_grams(list(texts), self.num_buckets, self.ngrams, "fast")
        x = g.counts(self.num_buckets).astype(np.float32)
        x.data = np.log1p(x.data)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms).astype(np.float32) @ x)

    def fit(
        self, texts: Sequence[str], labels: Sequence[bool], random_state: int | None = 0
    ) -> HashedTextClassifier:
        """Train on ``texts`` with boolean ``labels`` (True = positive); returns ``self``."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import SGDClassifier

        self._check_params()
        y = np.asarray(labels, dtype=bool)
        if len(texts) != len(y):
            raise ValueError(f"{len(texts)} texts but {len(y)} labels")
        if y.all() or not y.any():
            raise ValueError(
                f"labels must hold both classes, got {int(y.sum())} positive of {len(y)}"
            )
        clf = SGDClassifier(
            loss="log_loss",
            penalty="l2",
            alpha=self.alpha,
            learning_rate="constant",
            eta0=self.lr,
            max_iter=self.epochs,
            tol=None,
            shuffle=True,
            random_state=random_state,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(self.features(texts), y.astype(np.int8))
        self.coef_ = np.asarray(clf.coef_[0], dtype=np.float32)
        self.intercept_ = float(clf.intercept_[0])
        return self

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """Log-odds of the positive class, float64 (n,); 0 is the 50% line."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("HashedTextClassifier is not fitted: call fit() or load() first")
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self.features(texts) @ self.coef_, dtype=np.float64) + self.intercept_

    def score_samples(self, texts: Sequence[str]) -> np.ndarray:
        """Per-document score (the log-odds of :meth:`decision_function`)."""
        return self.decision_function(texts)

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """True where the log-odds are positive."""
        return self.decision_function(texts) > 0

    def params(self) -> dict[str, Any]:
        return {
            "num_buckets": self.num_buckets,
            "ngrams": self.ngrams,
            "epochs": self.epochs,
            "lr": self.lr,
            "alpha": self.alpha,
        }

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``coef.npy`` (float32 weights) and ``classifier.json`` (parameters,
        intercept, format version) into ``folder``."""
        if not hasattr(self, "coef_"):
            raise RuntimeError("HashedTextClassifier is not fitted: nothing to save")
        os.makedirs(folder, exist_ok=True)
        np.save(os.path.join(folder, MODEL_FILE), self.coef_, allow_pickle=False)
        meta = {
            "format": FORMAT_VERSION,
            "kind": "hashed_text_classifier",
            "features": "fast-hash word uni+bigrams, log1p counts, L2 rows",
            "params": self.params(),
            "intercept": self.intercept_,
        }
        with open(os.path.join(folder, PARAMS_FILE), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> HashedTextClassifier:
        """The classifier :meth:`save` wrote into ``folder``."""
        with open(os.path.join(folder, PARAMS_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{folder}: classifier format {meta.get('format')!r}, expected {FORMAT_VERSION}"
            )
        clf = cls(**meta["params"])
        clf.coef_ = np.load(os.path.join(folder, MODEL_FILE), allow_pickle=False)
        clf.intercept_ = float(meta["intercept"])
        if clf.coef_.shape != (clf.num_buckets,):
            raise ValueError(
                f"{folder}: weights of shape {clf.coef_.shape}, expected ({clf.num_buckets},)"
            )
        return clf


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy (log-odds > 0), balanced accuracy and ROC AUC of ``scores`` against boolean
    ``labels``, from :mod:`sklearn.metrics` (AUC counts ties half; NaN for the two class-wise
    metrics when a class is missing, and for all three on empty input)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s > 0
    out = {"accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan")}
    if y.all() or not y.any():  # one class (or none): sklearn warns or raises; report NaN
        out.update(balanced_accuracy=float("nan"), auc=float("nan"))
        return out
    out["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    out["auc"] = float(roc_auc_score(y, s))
    return out
