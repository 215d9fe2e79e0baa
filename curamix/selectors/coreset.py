"""Coreset selection: CCS, SSL prototypes, k-center greedy and random, as plain functions.

Every selector returns the selected positions (int64, sorted ascending) into the arrays it
was given, is deterministic for a given ``random_state``, and checks the requested size
before any work: asking for more documents than the pool holds is a ``ValueError`` naming
both numbers.

References
----------
Zheng, Liu, Li, Prakash. "Coverage-centric Coreset Selection for High Pruning Rates."
ICLR 2023. arXiv:2210.15809. Reference code: github.com/haizhongzheng/Coverage-centric-coreset-selection
(``core/data/Coreset.py``: ``mislabel_mask``, ``stratified_sampling``).
Sorscher, Geirhos, Shekhar, Ganguli, Morcos. "Beyond neural scaling laws: beating power law
scaling via data pruning." NeurIPS 2022. arXiv:2206.14486.
Sener, Savarese. "Active Learning for Convolutional Neural Networks: A Core-Set Approach."
ICLR 2018. arXiv:1708.00489 (k-center greedy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Method = Literal["ccs", "prototypes", "kcenter", "random"]
METHODS: tuple[str, ...] = ("ccs", "prototypes", "kcenter", "random")
RandomState = int | np.random.Generator | None


def check_k(k: int, n: int, what: str = "the pool") -> None:
    """Raise ValueError unless ``0 < k <= n``, naming both numbers."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"k={k} is larger than {what} ({n} documents)")


def random_select(n: int, k: int, random_state: RandomState = None) -> np.ndarray:
    """``k`` of ``n`` positions uniformly without replacement (seeded), sorted."""
    check_k(k, n)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def ccs_allocate(strata_sizes: Sequence[int], budget: int) -> list[int]:
    """CCS budget allocation: strata in increasing size (ties by index) each get
    ``min(size, remaining // strata_left)``; returned in the strata's order.

    Empty strata take nothing and leave their share to later ones, so the whole budget is
    spent whenever it does not exceed the strata's total (e.g. sizes ``[1, 100, 100]``,
    budget 30 -> ``[1, 14, 15]``, as the reference's ``bin_allocate``).
    """
    sizes = [int(s) for s in strata_sizes]
    if any(s < 0 for s in sizes):
        raise ValueError(f"strata sizes must not be negative, got {sizes}")
    if budget < 0:
        raise ValueError(f"budget must not be negative, got {budget}")
    if budget > sum(sizes):
        raise ValueError(f"budget={budget} is larger than the strata's {sum(sizes)} documents")
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    out = [0] * len(sizes)
    remaining = budget
    for rank, i in enumerate(order):
        take = min(sizes[i], remaining // (len(sizes) - rank))
        out[i] = take
        remaining -= take
    return out


def ccs_strata(scores: np.ndarray, strata: int = 50) -> np.ndarray:
    """Stratum of each score: ``strata`` equal-width bins over [min, max] (the maximum goes
    to the last bin; all scores equal: one bin)."""
    if strata < 1:
        raise ValueError(f"strata must be at least 1, got {strata}")
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = float(s.min()), float(s.max())
    if hi == lo:
        return np.zeros(len(s), dtype=np.int64)
    step = (hi - lo) / strata
    return np.clip(np.floor((s - lo) / step), 0, strata - 1).astype(np.int64)


def ccs_select(
    scores: np.ndarray,
    k: int,
    beta: float = 0.3,
    strata: int = 50,
    random_state: RandomState = None,
) -> np.ndarray:
    """Coverage-centric coreset selection (Zheng et al. 2023).

    1. drop the hardest ``int(beta * n)`` documents (highest score; among equal scores the
       smaller position is dropped first) -- the reference's ``mislabel_mask``;
    2. split the rest into ``strata`` equal-width strata of the score;
    3. allocate ``k`` with :func:`ccs_allocate` (smallest strata first);
    4. sample uniformly without replacement inside each stratum (``random_state``).

    Higher score = harder (forgetting count, distance to a prototype). For a score where
    lower is harder (AUM), pass its negation. NaN scores are rejected.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    check_k(k, n)
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    if np.isnan(s).any():
        raise ValueError(f"scores hold {int(np.isnan(s).sum())} NaN values")
    n_drop = int(beta * n)
    if k > n - n_drop:
        raise ValueError(
            f"k={k} is larger than the {n - n_drop} documents left after CCS drops the hardest "
            f"beta={beta} share ({n_drop} of {n}); lower beta or k"
        )
    hardest_first = np.lexsort((np.arange(n), -s))
    rest = np.sort(hardest_first[n_drop:])
    bins = ccs_strata(s[rest], strata)
    sizes = np.bincount(bins, minlength=strata)
    budgets = ccs_allocate(sizes.tolist(), k)
    rng = np.random.default_rng(random_state)
    picked = []
    for b, want in enumerate(budgets):
        if want:
            members = rest[bins == b]
            picked.append(rng.choice(members, size=want, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


def prototype_scores(
    vectors: np.ndarray, n_clusters: int, seed: int = 0, niter: int = 20
) -> np.ndarray:
    """SSL-prototype difficulty (Sorscher et al. 2022): cosine distance of each L2-normalized
    vector to its nearest spherical k-means centroid (higher = harder, less prototypical)."""
    from curamix.selectors.index import spherical_kmeans

    x = np.asarray(vectors, dtype=np.float32)
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters={n_clusters} must be in 1..{len(x)} (the number of vectors)")
    _, _, cos = spherical_kmeans(x, n_clusters, niter=niter, seed=seed)
    return 1.0 - np.asarray(cos, dtype=np.float64)


def prototype_select(scores: np.ndarray, k: int, keep_hard: bool = True) -> np.ndarray:
    """The ``k`` hardest (``keep_hard``: data plentiful) or easiest (data scarce) documents by
    prototype score; ties go to the smaller position. Deterministic."""
    s = np.asarray(scores, dtype=np.float64)
    check_k(k, len(s))
    order = np.lexsort((np.arange(len(s)), -s if keep_hard else s))
    return np.sort(order[:k]).astype(np.int64)


def kcenter_select(vectors: np.ndarray, k: int, random_state: int = 0) -> np.ndarray:
    """k-center greedy (Sener & Savarese 2018) over the vectors: repeatedly add the point
    farthest from the chosen set (start point from ``random_state``)."""
    from curamix.selectors.index import kcenter_greedy

    x = np.asarray(vectors, dtype=np.float32)
    check_k(k, len(x))
    return np.sort(np.asarray(kcenter_greedy(x, k, seed=int(random_state)), dtype=np.int64))


def select_coreset(
    method: Method,
    k: int,
    *,
    vectors: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    n: int | None = None,
    random_state: int = 0,
    beta: float = 0.3,
    strata: int = 50,
    keep_hard: bool = True,
) -> np.ndarray:
    """One entry point for the pipeline and the probe: ``ccs`` and ``prototypes`` need
    ``scores``, ``kcenter`` needs ``vectors``, ``random`` needs only the pool size."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    size = n if n is not None else len(scores) if scores is not None else len(vectors)  # type: ignore[arg-type]
    check_k(k, size)
    if method in ("ccs", "prototypes") and scores is None:
        raise ValueError(f"method {method!r} needs scores")
    if method == "kcenter" and vectors is None:
        raise ValueError("method 'kcenter' needs vectors")
    if method == "ccs":
        return ccs_select(scores, k, beta=beta, strata=strata, random_state=random_state)
    if method == "prototypes":
        return prototype_select(scores, k, keep_hard=keep_hard)
    if method == "kcenter":
        return kcenter_select(vectors, k, random_state=random_state)
    return random_select(size, k, random_state=random_state)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    C: float = 1.0,
) -> dict[str, float]:
    """Quality of a coreset as training data: a multinomial logistic regression (lbfgs) fit
    on ``train_x`` -> ``train_y`` and scored on held-out ``test_x``. Returns ``accuracy`` and
    ``balanced_accuracy`` (mean per-class recall: the rare classes count as much as the
    common ones, so it measures coverage)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    if len(np.unique(train_y)) < 2:
        raise ValueError("the probe needs at least two classes in the training set")
    clf = LogisticRegression(C=C, max_iter=2000).fit(train_x, train_y)
    pred = clf.predict(test_x)
    return {
        "accuracy": float(accuracy_score(test_y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(test_y, pred)),
    }
