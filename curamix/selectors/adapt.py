"""Adapt-infty: pseudo-skill clusters of gradient vectors, a scorer per cluster chosen by
histogram entropy, coverage-centric sampling, and cluster-wise permanent pruning.

Plain kernels that the notebook, the Spark job (:mod:`curamix.pipelines.adapt`), the effect
bench and the tests share:

- :func:`gradient_features`: per-document loss gradients of a proxy LM over one transformer
  block, projected by a seeded Rademacher matrix (:class:`RademacherProjection`, LESS/TRAK
  style), with the three scores of the same pass: log-perplexity (mean token loss), EL2N
  (mean over tokens of ``||softmax - onehot||_2``) and GraNd (the unprojected gradient's
  norm);
- :func:`cluster_budgets`: the reference's equal split of a budget over clusters (smallest
  first; a cluster smaller than its share gives all it has, its shortfall is spread over the
  larger ones);
- :func:`histogram_entropy` and :func:`choose_scorer`: the entropy of a 50-bin histogram of a
  scorer's z-scored values; a cluster uses the scorer with the highest one;
- :func:`ccs_sample`: the reference's coverage-centric sampling, 50 equal-width bins between
  the 5th and 95th percentiles, an equal quota per bin, short bins give all;
- :func:`redundancy` and :meth:`AdaptSelector.prune`: each document's largest cosine to an
  EARLIER document of its cluster (the SemDeDup kernel of
  :func:`curamix.filters.semdedup.max_cos_to_earlier`), and the least redundant kept up to the
  cluster's budget;
- :class:`AdaptSelector`: ``fit`` (MiniBatchKMeans on the L2-normalised vectors), ``prune``,
  ``select``.

The selection functions follow ``data_selection/adapt-inf.py`` of the reference code line by
line (``assign_budget_to_cluster``, ``get_dist_entropy``, ``get_mwp_score``,
``get_ccs_samples``, ``semdedup``, ``main``); the departures (seeded randomness, stable sorts,
no crash on the reference's edge cases, the optional trim of the CCS overshoot) are listed in
docs/adapt.md and in each function.

References
----------
Maharana, Yoon, Chen, Bansal. "Adapt-infty: Scalable Continual Multimodal Instruction Tuning
via Dynamic Data Selection". ICLR 2025. arXiv:2410.10636. Reference code:
``adymaharana/adapt-inf`` (``data_selection/adapt-inf.py``; ``llava/grad_utils.py`` for the
gradients and scores). Zheng et al., "Coverage-centric Coreset Selection for High Pruning
Rates", ICLR 2023, arXiv:2210.15809 (CCS). Paul, Ganguli, Dziugaite, "Deep Learning on a Data
Diet", NeurIPS 2021, arXiv:2107.07075 (EL2N, GraNd). Xia et al., "LESS", arXiv:2402.04333 and
Park et al., "TRAK", arXiv:2303.14186 (projected gradients).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from curamix.selectors.rds import l2_normalize

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from curamix.proxy.model import ProxyLM

SCORERS: tuple[str, ...] = ("log_ppl", "el2n", "grand")
"""The selector experts computed from the proxy: log-perplexity, EL2N, GraNd."""
EntropyWindow = Literal["reference", "zscore"]
KMEANS_BATCH = 10_240
"""The reference's ``MiniBatchKMeans(batch_size=10240)``."""
OUTLIERS = (0.05, 0.95)
"""CCS bins span these order statistics of a cluster's scores (``int(n * q)``-th smallest)."""


# --- budgets ---------------------------------------------------------------------------------


def cluster_budgets(sizes: Sequence[int] | np.ndarray, total: int) -> list[int]:
    """The reference's ``assign_budget_to_cluster`` (equal split, not score-weighted).

    If the smallest cluster times the number of clusters reaches ``total``, every cluster
    gets ``ceil(total / n)``. Otherwise the clusters are visited from the smallest up
    (``np.argsort``, ties by position) with a share ``b = ceil(total / n)``: a cluster smaller
    than ``b`` gives all it has and ``b`` grows by ``ceil((b - size) / clusters left)``; the
    others get ``b``. Returned in the clusters' order.

    The ceilings make the sum reach ``total`` or exceed it a little: by at most ``n - 1`` for
    the first share and ``n - 2`` more for each cluster that gives all it has (e.g. sizes
    ``[5, 100, 100]``, total 60 -> ``[5, 28, 28]``). Departure: when the LAST (largest)
    cluster is short too the reference divides by zero; here it gives all it has.
    """
    s = [int(x) for x in sizes]
    n = len(s)
    if n == 0:
        raise ValueError("no cluster to split the budget over")
    if any(x < 0 for x in s):
        raise ValueError(f"cluster sizes must not be negative, got {s}")
    if int(total) != total or total < 0:
        raise ValueError(f"the budget must be a whole number >= 0, got {total!r}")
    if min(s) * n >= total:
        return [math.ceil(total / n)] * n
    order = np.argsort(s)
    out: list[int] = []
    share = math.ceil(total / n)
    for i in range(n):
        size = s[order[i]]
        if size < share:
            out.append(size)
            if i < n - 1:
                share = share + math.ceil((share - size) / (n - i - 1))
        else:
            out.append(share)
    return [out[j] for j in np.argsort(order)]


# --- the scorer of a cluster -----------------------------------------------------------------


def histogram_entropy(
    x: Sequence[float] | np.ndarray, n_bins: int = 50, window: EntropyWindow = "reference"
) -> float:
    """Shannon entropy (bits) of the histogram of the z-scored values (``get_dist_entropy``).

    ``z = (x - mean) / std`` (NaN -> 0 first); edges ``linspace(-w, w, n_bins)``; bin ``i``
    (``1 <= i < n_bins``) counts ``edges[i-1] < z <= edges[i]`` (bin 0 stays empty, values
    outside the edges are not counted); ``p = counts / sum``, empty bins get machine epsilon;
    ``H = -sum p log2 p``.

    ``window``: ``reference`` uses ``w = 4 * std(x)``, the std of the RAW values, as the
    reference does (so the window, in z units, shrinks or grows with the scorer's scale);
    ``zscore`` uses ``w = 4``, four standard deviations of the z-scores.
    Departure: a constant or empty ``x`` (no histogram) gives 0.0; the reference gives NaN,
    which its ``np.argmax`` would then pick.
    """
    if window not in ("reference", "zscore"):
        raise ValueError(f"window must be 'reference' or 'zscore', got {window!r}")
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    v = np.nan_to_num(np.asarray(x, dtype=np.float64))
    std = float(np.std(v)) if v.size else 0.0
    if v.size == 0 or std == 0.0:
        return 0.0
    z = (v - np.mean(v)) / std
    half = 4 * std if window == "reference" else 4.0
    edges = np.linspace(-half, half, n_bins)
    b = np.searchsorted(edges, z, side="left")  # edges[b-1] < z <= edges[b]
    inside = (b >= 1) & (b < n_bins)
    counts = np.bincount(b[inside], minlength=n_bins).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts / total
    p = np.where(p == 0, np.finfo(float).eps, p)
    return float(-np.sum(p * np.log2(p)))


def choose_scorer(
    scores: Mapping[str, np.ndarray], n_bins: int = 50, window: EntropyWindow = "reference"
) -> tuple[str, dict[str, float]]:
    """The scorer whose values have the highest :func:`histogram_entropy` (``get_mwp_score``;
    ties: the first in the mapping's order) and every scorer's entropy."""
    if not scores:
        raise ValueError("no scorer to choose from")
    ent = {k: histogram_entropy(v, n_bins, window) for k, v in scores.items()}
    names = list(ent)
    return names[int(np.argmax([ent[k] for k in names]))], ent


# --- coverage-centric sampling ---------------------------------------------------------------


def ccs_sample(
    scores: Sequence[float] | np.ndarray,
    budget: int,
    n_bins: int = 50,
    rng: random.Random | None = None,
) -> np.ndarray:
    """The reference's ``get_ccs_samples``: positions of ``scores`` drawn bin by bin.

    ``low``, ``high`` = the sorted scores at ``int(n * 0.05)`` and ``int(n * 0.95)``; bins of
    width ``(high - low) / n_bins`` from ``high`` down; bin ``i`` holds the scores in
    ``(left, right]``, so scores at or below ``low`` and above ``high`` are never drawn.
    Each bin's quota starts at ``q = ceil(budget / n_bins)``: a bin with fewer candidates
    gives all of them and the quota of the later bins becomes ``ceil(remaining / bins
    left)``; a full bin gives ``q`` drawn uniformly without replacement by
    ``rng.sample(candidates, q)`` (``random.Random``: the reference's ``random.sample``).

    As in the reference, the quota is recomputed only after a short bin, so the draw can
    exceed ``budget`` by up to ``n_bins - 1`` (a budget below ``n_bins`` still gives one per
    bin), and fall short of it when the bins hold too few documents. Departures: a negative
    quota (the reference's ``random.sample`` error after an overshoot) draws nothing; empty
    input draws nothing.

    Returns int64 positions in the order drawn (bins from the highest score down).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a whole number >= 0, got {budget!r}")
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if n == 0 or budget == 0:
        return np.zeros(0, dtype=np.int64)
    rng = rng if rng is not None else random.Random()
    srt = np.sort(s)
    low, high = float(srt[int(n * OUTLIERS[0])]), float(srt[int(n * OUTLIERS[1])])
    right = high
    remaining = int(budget)
    quota = math.ceil(budget / n_bins)
    chosen: list[int] = []
    for i in range(n_bins):
        left = right - ((high - low) / n_bins)
        candidates = np.flatnonzero((s > left) & (s <= right)).tolist()
        if len(candidates) < quota:
            chosen.extend(candidates)
            if (i + 1) < n_bins:
                quota = math.ceil((remaining - len(candidates)) / (n_bins - (i + 1)))
                remaining -= len(candidates)
        else:
            k = max(quota, 0)
            chosen.extend(rng.sample(candidates, k=k))
            remaining -= k
        right = left
    return np.asarray(chosen, dtype=np.int64)


# --- permanent pruning -----------------------------------------------------------------------


def redundancy(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each document's largest cosine to an EARLIER document (smaller position) of its
    cluster, and that document's position (the reference ``semdedup``'s ``M``: the column
    maxima of ``triu(X X^T, diagonal=1)``).

    The upper triangle is zero below the diagonal, so ``M`` is at least 0: the first document
    of a cluster, and one whose cosines to all earlier ones are negative, get 0. Computed by
    the SemDeDup kernel :func:`curamix.filters.semdedup.max_cos_to_earlier` (blocked, at most
    ``2048 x 2048`` similarities at once) in position order; ``nearest`` is -1 for the first
    document of a cluster.
    """
    from curamix.filters.semdedup import max_cos_to_earlier

    x = l2_normalize(np.nan_to_num(np.asarray(vectors, dtype=np.float32)))
    lab = np.asarray(labels, dtype=np.int64)
    sim, nearest = max_cos_to_earlier(x, lab, np.zeros(len(lab), dtype=np.float32))
    return np.maximum(sim, 0.0).astype(np.float32), nearest


# --- gradients -------------------------------------------------------------------------------


class RademacherProjection:
    """``g -> g R`` with ``R`` (``dim_in x dim_out``) of independent ``+-1 / sqrt(dim_out)``
    entries (TRAK's ``ProjectionType.rademacher``, which the reference uses).

    ``R`` is made in blocks of ``block_rows`` rows, block ``b`` from
    ``np.random.default_rng([seed, b])``, so the same ``seed`` gives the same matrix on any
    machine and in any Spark task; blocks are kept in memory up to ``cache_bytes``, and made
    again for each batch beyond that (a large parameter block never needs the whole matrix
    at once).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        seed: int = 0,
        block_rows: int = 16_384,
        cache_bytes: int = 256 << 20,
    ):
        if dim_out < 1:
            raise ValueError(f"proj_dim must be >= 1, got {dim_out!r}")
        if dim_in < 1 or block_rows < 1:
            raise ValueError(f"dim_in and block_rows must be >= 1, got {dim_in}, {block_rows}")
        self.dim_in, self.dim_out, self.seed = int(dim_in), int(dim_out), int(seed)
        self.block_rows = int(block_rows)
        self.cache = dim_in * dim_out * 4 <= cache_bytes
        self._blocks: dict[tuple[int, str], torch.Tensor] = {}

    def block(self, b: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows ``b * block_rows ..`` of ``R`` (float32, on ``device``)."""
        import torch

        key = (b, str(device))
        if key in self._blocks:
            return self._blocks[key]
        rows = min(self.block_rows, self.dim_in - b * self.block_rows)
        bits = np.random.default_rng([self.seed, b]).integers(0, 2, (rows, self.dim_out), np.int8)
        signs = torch.from_numpy(bits.astype(np.float32) * 2.0 - 1.0) / math.sqrt(self.dim_out)
        out = signs.to(device)
        if self.cache:
            self._blocks[key] = out
        return out

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """``(n, dim_in) -> (n, dim_out)`` float32."""
        import torch

        if g.shape[-1] != self.dim_in:
            raise ValueError(f"expected {self.dim_in} gradient entries, got {g.shape[-1]}")
        out = torch.zeros((g.shape[0], self.dim_out), dtype=torch.float32, device=g.device)
        for b in range(math.ceil(self.dim_in / self.block_rows)):
            lo = b * self.block_rows
            out += g[:, lo : lo + self.block_rows].float() @ self.block(b, g.device)
        return out


class GradientFeatures(NamedTuple):
    """What :func:`gradient_features` returns (arrays of one length, the texts' order)."""

    vectors: np.ndarray
    """float32 ``(n, proj_dim)``: the projected gradients (zero rows for unscored texts)."""
    log_ppl: np.ndarray
    """float64: mean next-token loss (nats), the log of the perplexity."""
    el2n: np.ndarray
    """float64: mean over predicted tokens of ``||softmax(logits) - onehot(target)||_2``."""
    grand: np.ndarray
    """float64: the L2 norm of the unprojected gradient."""
    n_tokens: np.ndarray
    """int64: tokens of the scored window (``< 2``: nothing to predict, NaN scores)."""

    def scores(self) -> dict[str, np.ndarray]:
        """``{"log_ppl": ..., "el2n": ..., "grand": ...}`` (:data:`SCORERS`)."""
        return {"log_ppl": self.log_ppl, "el2n": self.el2n, "grand": self.grand}


def block_parameters(model: ProxyLM, layer: int = -1) -> list[str]:
    """Names of the parameters of transformer block ``layer`` (negative: from the last), in
    the model's order: the gradient's coordinates."""
    n = model.cfg.n_layers
    if not -n <= layer < n:
        raise ValueError(f"layer={layer} is not a block of a {n}-layer proxy (use {-n}..{n - 1})")
    prefix = f"blocks.{layer % n}."
    return [name for name, _ in model.named_parameters() if name.startswith(prefix)]


def gradient_features(
    model: ProxyLM,
    tok: Tokenizer,
    texts: Sequence[str],
    *,
    layer: int = -1,
    proj_dim: int = 256,
    max_tokens: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    projection: RademacherProjection | None = None,
) -> GradientFeatures:
    """Per-document gradients and scores of a proxy LM (the reference's ``collect_grads``
    with ``metrics=[ppl, el2n, grand]``, one document per example).

    Each text is encoded without special tokens and cut to its first ``max_tokens + 1``
    tokens (default the model's ``seq_len + 1``, as :func:`curamix.proxy.perplexity.doc_losses`
    scores it). Its loss is the mean next-token cross-entropy over that window; the gradient
    is taken with respect to the parameters of transformer block ``layer``
    (:func:`block_parameters`; the reference takes one layer's LoRA weights), one document at
    a time (``torch.func.vmap`` of ``grad``; padding is masked out of the loss and, the model
    being causal, changes nothing before it). ``vectors`` = the flattened gradient times a
    :class:`RademacherProjection` (``proj_dim``, ``seed``); ``grand`` = the flattened
    gradient's norm; ``el2n`` and ``log_ppl`` from the same forward pass.

    A text with fewer than 2 tokens gets NaN scores and a zero vector (``n_tokens`` says
    which).
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad_and_value, vmap

    seq_len = model.cfg.seq_len
    n_pred = seq_len if max_tokens is None else int(max_tokens)
    if not 1 <= n_pred <= seq_len:
        raise ValueError(f"max_tokens must be in [1, seq_len={seq_len}], got {max_tokens!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = block_parameters(model, layer)
    params = dict(model.named_parameters())
    dim_in = sum(params[k].numel() for k in names)
    proj = projection if projection is not None else RademacherProjection(dim_in, proj_dim, seed)
    if proj.dim_in != dim_in:
        raise ValueError(f"the projection takes {proj.dim_in} entries, layer {layer} has {dim_in}")
    device = next(model.parameters()).device
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    fixed |= {k: v for k, v in model.named_buffers()}
    trainable = {k: params[k].detach() for k in names}

    def loss_fn(
        p: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = functional_call(model, {**fixed, **p}, (ids[None, :-1],))[0].float()
        nll = F.cross_entropy(logits, ids[1:], reduction="none")
        return (nll * mask).sum() / mask.sum(), logits

    per_doc = vmap(grad_and_value(loss_fn, has_aux=True), in_dims=(None, 0, 0))
    n = len(texts)
    out = GradientFeatures(
        np.zeros((n, proj.dim_out), dtype=np.float32),
        np.full(n, np.nan),
        np.full(n, np.nan),
        np.full(n, np.nan),
        np.zeros(n, dtype=np.int64),
    )
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # vmap of scaled_dot_product_attention runs a slower fallback on the CPU.
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            for start in range(0, n, batch_size):
                chunk = list(texts[start : start + batch_size])
                enc = tok.encode_batch(chunk, add_special_tokens=False)
                ids = [e.ids[: n_pred + 1] for e in enc]
                out.n_tokens[start : start + len(ids)] = [len(x) for x in ids]
                rows = [(i, x) for i, x in enumerate(ids) if len(x) >= 2]
                if not rows:
                    continue
                width = max(len(x) for _, x in rows)
                batch = torch.zeros((len(rows), width), dtype=torch.long)
                mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
                for r, (_, x) in enumerate(rows):
                    batch[r, : len(x)] = torch.tensor(x, dtype=torch.long)
                    mask[r, : len(x) - 1] = 1.0
                batch, mask = batch.to(device), mask.to(device)
                grads, (loss, logits) = per_doc(trainable, batch, mask)
                flat = torch.cat([grads[k].reshape(len(rows), -1) for k in names], dim=1)
                with torch.no_grad():
                    probs = torch.softmax(logits, dim=-1)
                    target = torch.gather(probs, -1, batch[:, 1:, None])[..., 0]
                    sq = (probs * probs).sum(-1) - 2.0 * target + 1.0
                    el2n = (sq.clamp_min(0).sqrt() * mask).sum(1) / mask.sum(1)
                    grand = flat.double().norm(dim=1)
                    vec = proj(flat.detach())
                at = np.asarray([start + i for i, _ in rows])
                out.vectors[at] = vec.cpu().numpy()
                out.log_ppl[at] = loss.detach().double().cpu().numpy()
                out.el2n[at] = el2n.double().cpu().numpy()
                out.grand[at] = grand.cpu().numpy()
    finally:
        model.train(was_training)
    return out


# --- the selector ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    """Cluster-wise permanent pruning (:meth:`AdaptSelector.prune`)."""

    positions: np.ndarray
    """int64 kept positions in the reference's order: cluster by cluster, least redundant
    first (the order :meth:`AdaptSelector.select` then reads them in)."""
    max_sim: np.ndarray
    """float32 ``(n,)``: largest cosine to an earlier document of the cluster (>= 0)."""
    nearest: np.ndarray
    """int64 ``(n,)``: the earlier document reaching it, -1 for none."""
    cluster_budget: np.ndarray
    """int64 ``(n_clusters,)``: documents each cluster keeps (:func:`cluster_budgets`)."""


@dataclass(frozen=True)
class AdaptSelection:
    """The documents :meth:`AdaptSelector.select` chose, and why."""

    positions: np.ndarray
    """int64, in the order chosen (cluster by cluster, each from its highest bin down)."""
    cluster_budget: np.ndarray
    """int64 ``(n_clusters,)``: each cluster's share of the budget."""
    sampled: np.ndarray
    """int64 ``(n_clusters,)``: what the reference's CCS drew (before any trim)."""
    scorer: list[str]
    """Each cluster's scorer (``""`` for a cluster without documents)."""
    entropy: np.ndarray
    """float64 ``(n_clusters, n_scorers)``: each scorer's histogram entropy in each cluster."""

    def per_cluster(self, labels: np.ndarray) -> np.ndarray:
        """Documents chosen from each cluster."""
        return np.bincount(labels[self.positions], minlength=len(self.cluster_budget))


class AdaptSelector:
    """Adapt-infty's multi-way selection over per-document gradient vectors and scores.

    ``AdaptSelector(n_clusters=10).fit(vectors)`` groups the L2-normalised vectors into
    pseudo-skill clusters (``MiniBatchKMeans(n_clusters, batch_size=10240)``, ``labels_``,
    ``cluster_centers_``); ``prune(keep)`` keeps the ``keep`` least redundant documents,
    split over the clusters (:class:`PruneResult`); ``select(scores, budget, order)`` splits
    ``budget`` over the clusters, picks each cluster's scorer by histogram entropy and draws
    its share by CCS (:class:`AdaptSelection`).

    Parameters
    ----------
    n_clusters : pseudo-skill clusters (the reference's default 10).
    batch_size : MiniBatchKMeans batch (the reference's 10,240).
    scorers : the selector experts, in tie-break order (keys of ``select``'s ``scores``).
    n_bins : CCS bins (the reference's 50).
    entropy_bins : histogram bins of the scorer choice (the reference's 50).
    entropy_window : ``reference`` (the reference's window, 4 raw standard deviations) or
        ``zscore`` (4 standard deviations of the z-scores), see :func:`histogram_entropy`.
    trim : keep a cluster's CCS draw at its budget: where the reference's ceilings draw more,
        a seeded uniform subset of the draw is kept (False: the reference's draw as is).
    random_state : seeds the k-means, the CCS draws (``random.Random``) and the trim.

    References
    ----------
    Maharana et al. 2025, arXiv:2410.10636; ``adymaharana/adapt-inf``.
    """

    def __init__(
        self,
        n_clusters: int = 10,
        batch_size: int = KMEANS_BATCH,
        scorers: Sequence[str] = SCORERS,
        n_bins: int = 50,
        entropy_bins: int = 50,
        entropy_window: EntropyWindow = "reference",
        trim: bool = True,
        random_state: int | None = None,
    ):
        self.n_clusters = n_clusters
        self.batch_size = batch_size
        self.scorers = scorers
        self.n_bins = n_bins
        self.entropy_bins = entropy_bins
        self.entropy_window = entropy_window
        self.trim = trim
        self.random_state = random_state

    def _check(self, n: int) -> None:
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown or not self.scorers:
            raise ValueError(f"unknown scorer(s) {unknown or '[]'}; known: {list(SCORERS)}")
        if int(self.n_clusters) != self.n_clusters or not 1 <= self.n_clusters <= n:
            raise ValueError(
                f"n_clusters={self.n_clusters!r} must be in 1..{n} (the number of documents)"
            )
        if self.batch_size < 1 or self.n_bins < 1 or self.entropy_bins < 2:
            raise ValueError(
                f"batch_size ({self.batch_size}) and n_bins ({self.n_bins}) must be >= 1, "
                f"entropy_bins ({self.entropy_bins}) >= 2"
            )
        if self.entropy_window not in ("reference", "zscore"):
            raise ValueError(
                f"entropy_window must be 'reference' or 'zscore', got {self.entropy_window!r}"
            )

    def fit(self, vectors: np.ndarray) -> AdaptSelector:
        """Pseudo-skill clusters of the L2-normalised ``vectors`` (NaN -> 0)."""
        from sklearn.cluster import MiniBatchKMeans

        x = np.asarray(vectors)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"vectors must be a non-empty (n, dim) array, got shape {x.shape}")
        self._check(len(x))
        x = l2_normalize(np.nan_to_num(x.astype(np.float32)))
        km = MiniBatchKMeans(
            n_clusters=self.n_clusters, batch_size=self.batch_size, random_state=self.random_state
        ).fit(x)
        self.labels_ = km.labels_.astype(np.int64)
        self.cluster_centers_ = km.cluster_centers_
        self.vectors_ = x
        return self

    def _fitted(self) -> np.ndarray:
        if not hasattr(self, "labels_"):
            raise RuntimeError("AdaptSelector is not fitted: call fit() first")
        return self.labels_

    def prune(self, keep: int) -> PruneResult:
        """The reference's ``semdedup`` with ``keep_samples=keep``: :func:`cluster_budgets`
        over the cluster sizes, then in each cluster the documents with the smallest
        :func:`redundancy` (max cosine to an earlier one; ties by position: a stable sort,
        where the reference's ``torch.argsort`` is unstable)."""
        labels = self._fitted()
        n = len(labels)
        if int(keep) != keep or not 1 <= keep <= n:
            raise ValueError(f"keep={keep!r} must be a whole number in 1..{n} (the documents)")
        sim, nearest = redundancy(self.vectors_, labels)
        sizes = np.bincount(labels, minlength=self.n_clusters)
        quota = cluster_budgets(sizes, int(keep))
        kept = []
        for i in range(self.n_clusters):
            members = np.flatnonzero(labels == i)
            order = np.argsort(sim[members], kind="stable")
            kept.append(members[order[: quota[i]]])
        return PruneResult(
            np.concatenate(kept).astype(np.int64), sim, nearest, np.asarray(quota, np.int64)
        )

    def select(
        self,
        scores: Mapping[str, np.ndarray],
        budget: int,
        order: np.ndarray | None = None,
    ) -> AdaptSelection:
        """Split ``budget`` over the clusters (:func:`cluster_budgets`), choose each cluster's
        scorer (:func:`choose_scorer`) and draw its share (:func:`ccs_sample`).

        ``order``: the positions to choose from, in the reference's data order (after
        :meth:`prune`: ``PruneResult.positions``); default every document in position
        order. Clusters are visited in index order with one ``random.Random(random_state)``
        stream, as the reference's loop over ``range(n_clusters)``.
        """
        labels = self._fitted()
        n = len(labels)
        self._check(n)
        missing = [s for s in self.scorers if s not in scores]
        if missing:
            raise ValueError(f"scores lack the scorer(s) {missing}; given {list(scores)}")
        cols = {s: np.asarray(scores[s], dtype=np.float64) for s in self.scorers}
        bad = {s: v.shape for s, v in cols.items() if v.shape != (n,)}
        if bad:
            raise ValueError(f"scores must have shape ({n},) like the vectors, got {bad}")
        pos = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
        if int(budget) != budget or not 1 <= budget <= len(pos):
            raise ValueError(
                f"budget={budget!r} must be a whole number in 1..{len(pos)} (the documents "
                "to choose from)"
            )
        lab = labels[pos]
        sizes = np.bincount(lab, minlength=self.n_clusters)
        quota = cluster_budgets(sizes, int(budget))
        rng = random.Random(self.random_state)
        trim_rng = np.random.default_rng(
            None if self.random_state is None else [int(self.random_state), 1]
        )
        picked: list[np.ndarray] = []
        sampled = np.zeros(self.n_clusters, dtype=np.int64)
        entropy = np.zeros((self.n_clusters, len(self.scorers)))
        chosen_scorer: list[str] = []
        for i in range(self.n_clusters):
            members = pos[lab == i]
            if len(members) == 0:
                chosen_scorer.append("")
                continue
            name, ent = choose_scorer(
                {s: cols[s][members] for s in self.scorers},
                self.entropy_bins,
                self.entropy_window,
            )
            chosen_scorer.append(name)
            entropy[i] = [ent[s] for s in self.scorers]
            got = members[ccs_sample(cols[name][members], quota[i], self.n_bins, rng)]
            sampled[i] = len(got)
            if self.trim and len(got) > quota[i]:
                got = got[np.sort(trim_rng.choice(len(got), size=quota[i], replace=False))]
            picked.append(got)
        positions = np.concatenate(picked) if picked else np.zeros(0, np.int64)
        return AdaptSelection(
            positions.astype(np.int64),
            np.asarray(quota, dtype=np.int64),
            sampled,
            chosen_scorer,
            entropy,
        )


__all__ = [
    "SCORERS",
    "AdaptSelection",
    "AdaptSelector",
    "GradientFeatures",
    "PruneResult",
    "RademacherProjection",
    "block_parameters",
    "ccs_sample",
    "choose_scorer",
    "cluster_budgets",
    "gradient_features",
    "histogram_entropy",
    "redundancy",
]
