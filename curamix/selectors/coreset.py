"""Coreset selection: CCS, SSL prototypes, k-center greedy, facility location, density-based
pruning (DBP) and random, as plain functions.

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
Mirzasoleiman, Badanidiyuru, Karbasi, Vondrak, Krause. "Lazier Than Lazy Greedy." AAAI 2015.
arXiv:1409.7938 (stochastic greedy); Mirzasoleiman, Bilmes, Leskovec. "Coresets for
Data-efficient Training of Machine Learning Models." ICML 2020. arXiv:1906.01827 (CRAIG:
facility location as a coreset objective).
Abbas, Rusak, Tirumala, Brendel, Chaudhuri, Morcos. "Effective pruning of web-scale datasets
based on complexity of concept clusters." ICLR 2024. arXiv:2401.04578. Reference code:
github.com/amro-kamal/effective_pruning (``prune.py``: ``pruning_qp``;
``compute_centroid_distances.py``; ``compute_avg_dist_to_cluster_centroid.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Method = Literal["ccs", "prototypes", "kcenter", "facility_location", "dbp", "random"]
METHODS: tuple[str, ...] = ("ccs", "prototypes", "kcenter", "facility_location", "dbp", "random")
Within = Literal["random", "easy", "hard"]
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
    from curamix.embeddings.index import spherical_kmeans

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
    from curamix.embeddings.index import kcenter_greedy

    x = np.asarray(vectors, dtype=np.float32)
    check_k(k, len(x))
    return np.sort(np.asarray(kcenter_greedy(x, k, seed=int(random_state)), dtype=np.int64))


def facility_location_select(
    vectors: np.ndarray, k: int, epsilon: float = 0.01, random_state: RandomState = 0
) -> np.ndarray:
    """Facility-location coreset by stochastic greedy (Mirzasoleiman et al. 2015, 2020).

    Maximizes ``F(S) = sum_i max_{j in S} max(0, cos(x_i, x_j))``: every pool document
    should have a close selected one, so the selection follows the pool's density (dense
    regions get more representatives, like k-medoids) while no dense region is left out.
    Each of the ``k`` steps draws ``ceil(n / k * ln(1 / epsilon))`` not-yet-chosen candidates
    (seeded) and adds the one with the largest marginal gain, a ``1 - 1/e - epsilon``
    approximation in expectation. Ties go to the first drawn candidate.

    Cost: ``O(n^2 d log(1 / epsilon))`` flops without an ``n x n`` matrix (similarities to
    the candidates are computed on the fly): ~10 s for 4,500 x 384 on 2 cores, quadratic in
    the pool size, so pools of millions need ``kcenter`` or ``dbp`` instead.

    References
    ----------
    Mirzasoleiman et al., "Lazier Than Lazy Greedy", AAAI 2015, arXiv:1409.7938;
    Mirzasoleiman et al., "Coresets for Data-efficient Training of Machine Learning Models"
    (CRAIG), ICML 2020, arXiv:1906.01827.
    """
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    check_k(k, n)
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(random_state)
    n_cand = min(n, math.ceil(n / k * math.log(1.0 / epsilon)))
    best = np.zeros(n, dtype=np.float32)  # max similarity of each document to the chosen set
    free = np.ones(n, dtype=bool)
    chosen = np.empty(k, dtype=np.int64)
    for step in range(k):
        pool = np.flatnonzero(free)
        cand = pool if len(pool) <= n_cand else rng.choice(pool, size=n_cand, replace=False)
        sim = np.maximum(x @ x[cand].T, 0.0)
        gain = np.maximum(sim - best[:, None], 0.0).sum(axis=0)
        j = int(cand[int(np.argmax(gain))])
        chosen[step] = j
        free[j] = False
        np.maximum(best, np.maximum(x @ x[j], 0.0), out=best)
    return np.sort(chosen)


def dbp_complexity(
    vectors: np.ndarray, centroids: np.ndarray, assign: np.ndarray, n_neighbors: int = 20
) -> np.ndarray:
    """DBP cluster complexity ``C_j = d_intra_j * d_inter_j`` (Abbas et al. 2024).

    ``d_intra_j``: mean cosine distance of cluster ``j``'s members to its centroid;
    ``d_inter_j``: mean cosine distance of centroid ``j`` to its ``n_neighbors`` nearest other
    centroids (fewer when there are fewer clusters; one cluster: 1). An empty cluster gets the
    mean complexity of the others, as the reference replaces NaNs.

    References
    ----------
    Abbas et al. 2024, arXiv:2401.04578, Section 3 and Table 5.
    """
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    c = np.asarray(centroids, dtype=np.float64)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    a = np.asarray(assign, dtype=np.int64)
    n_clusters = len(c)
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}")
    sizes = np.bincount(a, minlength=n_clusters)
    dist = 1.0 - np.einsum("ij,ij->i", x, c[a])
    with np.errstate(invalid="ignore", divide="ignore"):
        d_intra = np.bincount(a, weights=dist, minlength=n_clusters) / sizes
    nn = min(n_neighbors, n_clusters - 1)
    if nn < 1:
        d_inter = np.ones(n_clusters)
    else:
        d_inter = np.empty(n_clusters)
        for lo in range(0, n_clusters, 1024):  # blocks: no k x k matrix for many clusters
            sim = c[lo : lo + 1024] @ c.T
            sim[np.arange(len(sim)), np.arange(lo, lo + len(sim))] = -np.inf
            top = -np.partition(-sim, nn - 1, axis=1)[:, :nn]
            d_inter[lo : lo + len(sim)] = (1.0 - top).mean(axis=1)
    out = d_intra * d_inter
    bad = np.isnan(out)
    if bad.any():
        out[bad] = np.nanmean(out) if (~bad).any() else 0.0
    return out


def _project_box_sum(c: np.ndarray, lb: np.ndarray, ub: np.ndarray, total: float) -> np.ndarray:
    """argmin ``||x - c||^2`` over ``lb <= x <= ub``, ``sum(x) = total``: ``clip(c + lam)``
    with the shift ``lam`` found by bisection, then solved exactly on the free set."""
    lo, hi = float((lb - c).min()), float((ub - c).max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.clip(c + mid, lb, ub).sum() < total:
            lo = mid
        else:
            hi = mid
    x = np.clip(c + hi, lb, ub)
    free = (c + hi > lb) & (c + hi < ub)
    if free.any():
        lam = (total - x[~free].sum() - c[free].sum()) / free.sum()
        x[free] = np.clip(c[free] + lam, lb[free], ub[free])
    return x


def dbp_allocate(
    complexity: Sequence[float] | np.ndarray,
    sizes: Sequence[int] | np.ndarray,
    k: int,
    temperature: float = 0.5,
    balance: float = 0.5,
) -> np.ndarray:
    """DBP budget per cluster (Abbas et al. 2024; the reference's ``pruning_qp``).

    ``P_j = softmax(C_j / temperature)``; the counts ``N_j`` solve the quadratic program
    ``min ||N - k P||^2`` s.t. ``sum N = k``, ``lb_j <= N_j <= size_j`` with
    ``lb_j = min(m, size_j - 1)``, ``m = int(k / n_clusters * balance)`` (``balance = 0``:
    ``m = 1``). So a full cluster's excess is spread over the others by one common shift.
    The real solution is rounded to integers by largest remainder (ties: lower index), so the
    counts sum to ``k`` exactly (the reference rounds each count, which may miss ``k``).

    Check (temperature 1): complexities ``[0, 0, ln 2]`` (P = [1/4, 1/4, 1/2]), sizes
    ``[100, 100, 5]``, k = 40, balance 0 -> ``[18, 17, 5]`` (the capped cluster's 15 are split
    7.5 / 7.5).
    """
    comp = np.asarray(complexity, dtype=np.float64)
    sz = np.asarray(sizes, dtype=np.int64)
    if comp.shape != sz.shape or comp.ndim != 1 or len(sz) == 0:
        raise ValueError(
            f"complexity and sizes must be non-empty 1-d arrays of one length, got "
            f"{comp.shape} and {sz.shape}"
        )
    if (sz < 0).any() or np.isnan(comp).any():
        raise ValueError("sizes must not be negative and complexities not NaN")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not 0 <= balance <= 1:
        raise ValueError(f"balance must be in [0, 1], got {balance}")
    check_k(k, int(sz.sum()), "the clusters")
    z = comp / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    m = int(k / len(sz) * balance) if balance > 0 else 1
    lb = np.maximum(0, np.minimum(m, sz - 1))
    if lb.sum() > k:
        raise ValueError(
            f"k={k} is smaller than DBP's {int(lb.sum())} minimum documents (one per cluster); "
            "use fewer clusters or balance > 0"
        )
    x = _project_box_sum(p * k, lb.astype(np.float64), sz.astype(np.float64), float(k))
    out = np.clip(np.floor(x + 1e-9), lb, sz).astype(np.int64)
    rest = k - int(out.sum())
    idx = np.arange(len(sz))
    if rest > 0:
        order = np.lexsort((idx, -(x - out)))
        order = order[out[order] < sz[order]]
        out[order[:rest]] += 1
    elif rest < 0:  # only from floating-point error
        order = np.lexsort((idx, x - out))
        order = order[out[order] > lb[order]]
        out[order[:-rest]] -= 1
    return out


def dbp_select(
    vectors: np.ndarray,
    k: int,
    n_clusters: int,
    temperature: float = 0.5,
    n_neighbors: int = 20,
    balance: float = 0.5,
    within: Within = "random",
    random_state: int = 0,
    niter: int = 20,
) -> np.ndarray:
    """Density-based pruning (Abbas et al. 2024): spherical k-means (seed ``random_state``),
    per-cluster budgets by :func:`dbp_allocate` over :func:`dbp_complexity`, then inside each
    cluster ``within``: ``random`` (seeded uniform), ``easy`` (closest to the centroid) or
    ``hard`` (farthest; ties to the smaller position).

    Defaults are the reference code's (``--temperature 0.5``, ``--cls-bal-ratio 0.5``,
    ``--num_NNs 20``).
    """
    from curamix.embeddings.index import spherical_kmeans

    x = np.asarray(vectors, dtype=np.float32)
    check_k(k, len(x))
    if within not in ("random", "easy", "hard"):
        raise ValueError(f"within must be 'random', 'easy' or 'hard', got {within!r}")
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters={n_clusters} must be in 1..{len(x)} (the number of vectors)")
    cent, assign, cos = spherical_kmeans(x, n_clusters, niter=niter, seed=int(random_state))
    sizes = np.bincount(assign, minlength=len(cent))
    budget = dbp_allocate(
        dbp_complexity(x, cent, assign, n_neighbors), sizes, k, temperature, balance
    )
    rng = np.random.default_rng(random_state)
    picked = []
    for j, want in enumerate(budget.tolist()):
        if not want:
            continue
        members = np.flatnonzero(assign == j)
        if within == "random":
            picked.append(rng.choice(members, size=want, replace=False))
        else:
            d = 1.0 - cos[members].astype(np.float64)
            order = np.lexsort((members, -d if within == "hard" else d))
            picked.append(members[order[:want]])
    return np.sort(np.concatenate(picked)).astype(np.int64)


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
    epsilon: float = 0.01,
    n_clusters: int | None = None,
    temperature: float = 0.5,
    n_neighbors: int = 20,
    balance: float = 0.5,
    within: Within = "random",
) -> np.ndarray:
    """One entry point for the pipeline and the probe: ``ccs`` and ``prototypes`` need
    ``scores``; ``kcenter``, ``facility_location`` and ``dbp`` need ``vectors`` (``dbp`` also
    ``n_clusters``); ``random`` needs only the pool size."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    size = n if n is not None else len(scores) if scores is not None else len(vectors)  # type: ignore[arg-type]
    check_k(k, size)
    if method in ("ccs", "prototypes") and scores is None:
        raise ValueError(f"method {method!r} needs scores")
    if method in ("kcenter", "facility_location", "dbp") and vectors is None:
        raise ValueError(f"method {method!r} needs vectors")
    if method == "dbp" and n_clusters is None:
        raise ValueError("method 'dbp' needs n_clusters")
    if method == "ccs":
        return ccs_select(scores, k, beta=beta, strata=strata, random_state=random_state)
    if method == "prototypes":
        return prototype_select(scores, k, keep_hard=keep_hard)
    if method == "kcenter":
        return kcenter_select(vectors, k, random_state=random_state)
    if method == "facility_location":
        return facility_location_select(vectors, k, epsilon=epsilon, random_state=random_state)
    if method == "dbp":
        return dbp_select(
            vectors,
            k,
            n_clusters,  # type: ignore[arg-type]
            temperature=temperature,
            n_neighbors=n_neighbors,
            balance=balance,
            within=within,
            random_state=random_state,
        )
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
