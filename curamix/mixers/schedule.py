"""Schedules: a mixer's weight trajectory as K stages, their replay, end-of-training upsampling.

**Compression.** An online mixer (DGA, TiKMiX, DoReMi) changes its weights every
``update_every`` proxy steps; ``history_`` keeps ``(step, tokens, weights)`` after each update
and the search writes it to ``trajectory.parquet``. :func:`compress_trajectory` turns that
piecewise-constant trajectory into K stages (boundaries as fractions of the training tokens,
so they carry over to any budget), each stage's weights the **token-weighted mean** of the
trajectory weights it covers, so every domain's tokens within a stage, and so over the whole
run, are exactly the continuous trajectory's. K is given (``n_stages``: the K stages that
minimise the token-weighted squared error, by dynamic programming) or follows from a
tolerance (``epsilon``: consecutive updates are merged while every update in the stage stays
within ``epsilon`` in L1 of the stage's weights; greedy, left to right). The result records
K, epsilon, and the largest and the token-weighted mean L1 distance between the staged and
the continuous weights. :func:`staged_mixture` makes it a :class:`~curamix.mixture.Mixture`;
:class:`ScheduleReplay` is the :func:`curamix.proxy.train.train_proxy` hook that trains on it.

**Upsampling.** For the last ``last_fraction`` of training (default 15%), multiply the weights
of ``domains`` (small, high-value sets: math, QA, code...) by ``factor`` and renormalise; the
stage is :func:`curamix.mixture.upsampling_stage`. On a staged mixture it composes after the
stages: every weight in force in the last ``last_fraction`` is upsampled. The
renormalisation is the method, not a repair of bad input, so it does not warn.

References
----------
Fan, Grangier, Ablin 2024, "Dynamic Gradient Alignment for Online Data Mixing",
arXiv:2410.02498 (the trajectories compressed here). Bellman 1961, "On the approximation of
curves by line segments using dynamic programming" (optimal K-segmentation). Blakeney et al.
2024, "Does your data spark joy? Performance gains from domain upsampling at the end of
training", arXiv:2406.03476.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from curamix.mixers.base import BaseMixer
from curamix.mixture import Mixture, MixtureError, Stage, check_weights, upsampling_stage

if TYPE_CHECKING:
    from curamix.proxy.train import StepMetrics

DEFAULT_EPSILON = 0.05
"""L1 tolerance of :func:`compress_trajectory` when no K is given: a stage's weights are within
0.05 in L1 (2.5 points of probability moved) of every update it covers."""

_SUM_SLACK = 1e-12

Row = tuple[int, int, Mapping[str, float]]


# ---------------------------------------------------------------------------------------------
# The trajectory as segments


@dataclass(frozen=True)
class Segments:
    """A trajectory as piecewise-constant segments of positive length.

    ``starts`` / ``lengths`` are in tokens, ``weights`` is ``(n, k)`` in ``domains`` order,
    ``n_points`` counts the trajectory's rows (zero-length ones included).
    """

    domains: list[str]
    starts: np.ndarray
    lengths: np.ndarray
    weights: np.ndarray
    total_tokens: float
    n_points: int


def _rows(trajectory: Any) -> list[Row]:
    """``(step, tokens, weights)`` rows from a row list or a frame with ``tokens`` and
    ``w:<domain>`` columns (``trajectory.parquet``; polars or pandas)."""
    if hasattr(trajectory, "columns") and "tokens" in list(trajectory.columns):
        cols = [c for c in trajectory.columns if str(c).startswith("w:")]
        if not cols:
            raise MixtureError("trajectory frame has no 'w:<domain>' weight columns")
        steps = list(trajectory["step"]) if "step" in trajectory.columns else None
        tokens = list(trajectory["tokens"])
        ws = {c: list(trajectory[c]) for c in cols}
        return [
            (
                int(steps[i]) if steps is not None else i,
                int(tokens[i]),
                {c[2:]: float(ws[c][i]) for c in cols},
            )
            for i in range(len(tokens))
        ]
    if isinstance(trajectory, BaseMixer):
        raise MixtureError(
            "pass the mixer's trajectory, not the mixer: [(0, 0, start_weights), "
            "*mixer.history_] (history_ starts after the first update)"
        )
    rows = []
    for i, r in enumerate(trajectory):
        try:
            step, tokens, w = r
        except (TypeError, ValueError):
            raise MixtureError(
                f"trajectory row {i} must be (step, tokens, weights), got {r!r}"
            ) from None
        if not isinstance(w, Mapping):
            raise MixtureError(f"trajectory row {i}: weights must be a mapping, got {w!r}")
        rows.append((int(step), int(tokens), w))
    return rows


def trajectory_segments(trajectory: Any, total_tokens: float) -> Segments:
    """The trajectory's weights as segments: row ``i``'s weights are in force from its tokens
    to the next row's (the last row's to ``total_tokens``); rows at the same tokens leave
    only the later one in force.

    Parameters
    ----------
    trajectory : rows or frame
        ``[(step, tokens, weights), ...]`` starting at tokens 0 (a mixer's
        ``[(0, 0, start), *history_]``), or ``trajectory.parquet`` as a frame.
    total_tokens : float
        Tokens of the run the trajectory comes from (``ProxyResult.tokens_trained``).

    Raises
    ------
    MixtureError
        Fewer than 2 rows, a first row not at 0 tokens, tokens that go back or pass
        ``total_tokens``, weights that are not a distribution (naming the row and its sum),
        a row naming a domain the first row lacks.
    """
    rows = _rows(trajectory)
    if len(rows) < 2:
        raise MixtureError(
            f"a trajectory needs at least 2 points (the start and one update), got "
            f"{len(rows)}: a static mixture has no schedule to compress"
        )
    if not (math.isfinite(float(total_tokens)) and total_tokens > 0):
        raise MixtureError(f"total_tokens must be > 0, got {total_tokens!r}")
    if rows[0][1] != 0:
        raise MixtureError(
            f"the trajectory starts at {rows[0][1]} tokens, not 0: prepend the starting weights "
            "as (0, 0, weights) (a mixer's history_ begins after its first update)"
        )
    domains = list(rows[0][2])
    W = np.zeros((len(rows), len(domains)))
    prev = 0
    for i, (step, tokens, w) in enumerate(rows):
        where = f"trajectory row {i} (step {step}, tokens {tokens})"
        if tokens < prev:
            raise MixtureError(f"{where}: tokens go back (the row before is at {prev})")
        if tokens > total_tokens:
            raise MixtureError(f"{where}: past total_tokens = {total_tokens:g}")
        unknown = [d for d in w if d not in domains]
        if unknown:
            raise MixtureError(f"{where}: unknown domains {unknown}; known {domains}")
        check_weights({d: w.get(d, 0.0) for d in domains}, where)
        W[i] = [float(w.get(d, 0.0)) for d in domains]
        prev = tokens
    starts = np.array([r[1] for r in rows], dtype=np.float64)
    ends = np.append(starts[1:], float(total_tokens))
    keep = ends > starts
    lengths = (ends - starts)[keep]
    return Segments(domains, starts[keep], lengths, W[keep], float(total_tokens), len(rows))


def time_averaged_weights(trajectory: Any, total_tokens: float) -> dict[str, float]:
    """The token-weighted mean of the trajectory's weights: the static mixture that draws
    the same tokens per domain as the whole trajectory (one stage)."""
    seg = trajectory_segments(trajectory, total_tokens)
    w = seg.lengths @ seg.weights / seg.lengths.sum()
    w = w / w.sum()
    return {d: float(x) for d, x in zip(seg.domains, w, strict=True)}


# ---------------------------------------------------------------------------------------------
# Compression


@dataclass(frozen=True)
class StagedSchedule:
    """A trajectory compressed to stages (:func:`compress_trajectory`).

    ``starts`` are fractions of the run (the first is 0), ``weights`` one distribution per
    stage; ``max_l1`` is the largest L1 distance between a stage's weights and a trajectory
    update it covers, ``mean_l1`` the same averaged over the run's tokens.
    """

    domains: list[str]
    starts: list[float]
    weights: list[dict[str, float]]
    max_l1: float
    mean_l1: float
    n_points: int
    n_segments: int
    total_tokens: float
    n_stages_requested: int | None = None
    epsilon: float | None = None
    stage_segments: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def n_stages(self) -> int:
        return len(self.starts)

    def stages(self) -> list[Stage]:
        """The stages as :class:`~curamix.mixture.Stage` (``main``, ``stage1``, ``stage2``, ...)."""
        pairs = zip(self.starts, self.weights, strict=True)
        return [Stage(s, w, f"stage{i}" if i else "main") for i, (s, w) in enumerate(pairs)]

    def provenance(self) -> dict[str, Any]:
        """What provenance records about the compression (JSON-serialisable)."""
        how = (
            f"K = {self.n_stages_requested} stages minimising the token-weighted squared error"
            if self.n_stages_requested is not None
            else f"consecutive updates merged while within epsilon = {self.epsilon:g} in L1"
        )
        return {
            "source": "trajectory",
            "how": how,
            "n_stages": self.n_stages,
            "n_stages_requested": self.n_stages_requested,
            "epsilon": self.epsilon,
            "max_l1": self.max_l1,
            "mean_l1": self.mean_l1,
            "n_points": self.n_points,
            "n_segments": self.n_segments,
            "trajectory_tokens": self.total_tokens,
            "stages": [
                {"start": s, "weights": dict(w)}
                for s, w in zip(self.starts, self.weights, strict=True)
            ],
        }


def _check_n_stages(n_stages: Any) -> int:
    if isinstance(n_stages, bool) or not isinstance(n_stages, (int, np.integer)):
        raise MixtureError(f"n_stages must be an integer >= 1, got {n_stages!r}")
    if n_stages < 1:
        raise MixtureError(f"n_stages must be >= 1, got {n_stages!r}")
    return int(n_stages)


def _optimal_cuts(lengths: np.ndarray, W: np.ndarray, k: int) -> list[int]:
    """Start indices of the ``k`` groups of consecutive segments that minimise the
    token-weighted squared error to each group's mean (exact dynamic programming)."""
    n = len(lengths)
    L = np.concatenate([[0.0], np.cumsum(lengths)])
    S = np.vstack([np.zeros(W.shape[1]), np.cumsum(lengths[:, None] * W, axis=0)])
    Q = np.concatenate([[0.0], np.cumsum(lengths * (W**2).sum(1))])

    def cost(i: np.ndarray, j: int) -> np.ndarray:  # groups i..j-1 for every i in the array
        s = S[j] - S[i]
        return np.maximum(Q[j] - Q[i] - (s**2).sum(-1) / (L[j] - L[i]), 0.0)

    best = np.full((k + 1, n + 1), np.inf)
    arg = np.zeros((k + 1, n + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            i = np.arange(g - 1, j)
            c = best[g - 1, i] + cost(i, j)
            m = int(np.argmin(c))
            best[g, j], arg[g, j] = c[m], i[m]
    cuts, j = [], n
    for g in range(k, 0, -1):
        j = int(arg[g, j])
        cuts.append(j)
    return cuts[::-1]


def _greedy_cuts(lengths: np.ndarray, W: np.ndarray, epsilon: float) -> list[int]:
    """Start indices of stages grown left to right while every member stays within
    ``epsilon`` (L1) of the stage's token-weighted mean."""
    cuts, a = [0], 0
    for j in range(1, len(lengths)):
        mean = lengths[a : j + 1] @ W[a : j + 1] / lengths[a : j + 1].sum()
        if np.abs(W[a : j + 1] - mean).sum(1).max() > epsilon + _SUM_SLACK:
            cuts.append(j)
            a = j
    return cuts


def compress_trajectory(
    trajectory: Any,
    total_tokens: float,
    n_stages: int | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> StagedSchedule:
    """A mixer's weight trajectory as K stages.

    Parameters
    ----------
    trajectory : rows or frame
        ``[(step, tokens, weights), ...]`` from tokens 0 (``[(0, 0, start),
        *mixer.history_]``) or ``trajectory.parquet``; see :func:`trajectory_segments`.
    total_tokens : float
        Tokens of the run the trajectory comes from (the last update's weights are in force
        until then).
    n_stages : int, optional
        K. The stages are the K runs of consecutive updates minimising the token-weighted
        squared distance to their means (exact, ``O(K n^2)`` for ``n`` updates); K above the
        number of distinct segments gives one stage per segment. ``None``: use ``epsilon``.
    epsilon : float
        Without ``n_stages``: merge consecutive updates while every update of the stage is
        within ``epsilon`` (L1) of the stage's weights, so ``max_l1 <= epsilon``; 0 keeps
        every change. Greedy from the start, so K is small but not always the smallest.

    Returns
    -------
    StagedSchedule
        Stage starts as fractions of ``total_tokens``, each stage's weights the token-weighted
        mean of the updates it covers (the tokens drawn per domain are the trajectory's, in
        every stage), and the L1 errors.

    Raises
    ------
    MixtureError
        ``n_stages`` < 1 or not an integer, ``epsilon`` < 0 or not finite, and every bad
        trajectory :func:`trajectory_segments` refuses; each message names the value.

    Notes
    -----
    Updates in force for no tokens (an update at the very end of the run, or two at the same
    step) carry no weight and are left out. Ties in the K-stage search go to the earliest cut.
    """
    if n_stages is not None:
        k_req = _check_n_stages(n_stages)
        eps = None
    else:
        k_req = None
        try:
            eps = float(epsilon)
        except (TypeError, ValueError):
            raise MixtureError(f"epsilon must be a number >= 0, got {epsilon!r}") from None
        if not (math.isfinite(eps) and eps >= 0):
            raise MixtureError(f"epsilon must be >= 0, got {epsilon!r}")
    seg = trajectory_segments(trajectory, total_tokens)
    n = len(seg.lengths)
    if k_req is not None:
        cuts = _optimal_cuts(seg.lengths, seg.weights, min(k_req, n))
    else:
        assert eps is not None
        cuts = _greedy_cuts(seg.lengths, seg.weights, eps)
    bounds = [*cuts, n]
    starts, weights, members = [], [], []
    max_l1, sum_l1 = 0.0, 0.0
    for a, b in pairwise(bounds):
        lens, W = seg.lengths[a:b], seg.weights[a:b]
        if (W[0] == W).all():  # one update (or equal ones): its weights, exactly
            mean = W[0]
        else:
            mean = lens @ W / lens.sum()
            mean = mean / mean.sum()
        err = np.abs(W - mean).sum(1)
        max_l1 = max(max_l1, float(err.max()))
        sum_l1 += float(lens @ err)
        starts.append(float(seg.starts[a] / seg.total_tokens))
        weights.append({d: float(x) for d, x in zip(seg.domains, mean, strict=True)})
        members.append(list(range(a, b)))
    return StagedSchedule(
        domains=seg.domains, starts=starts, weights=weights, max_l1=max_l1,
        mean_l1=sum_l1 / float(seg.lengths.sum()), n_points=seg.n_points, n_segments=n,
        total_tokens=seg.total_tokens, n_stages_requested=k_req, epsilon=eps,
        stage_segments=members,
    )  # fmt: skip


def staged_mixture(
    schedule: StagedSchedule,
    base: Mixture | None = None,
    export: str = "staged",
) -> Mixture:
    """A :class:`~curamix.mixture.Mixture` holding ``schedule`` (``export="staged"``) or
    ``base``'s final weights with the schedule only in provenance (``export="final"``).

    ``base`` (typically ``mixer.mixture()``) gives the domain order, ``total_tokens``,
    ``domain_tokens`` and provenance; its weights are the final ones. Provenance
    ``schedule`` records the compression (:meth:`StagedSchedule.provenance`), ``export`` and
    ``final_weights``, so both choices stay readable from either mixture. An upsampling stage
    (:func:`with_upsampling`) composes after this; ``base`` must not have a schedule yet.
    """
    if export not in ("staged", "final"):
        raise MixtureError(f"export must be 'staged' or 'final', got {export!r}")
    if base is None:
        base = Mixture(schedule.weights[-1], provenance={"method": "trajectory"})
    if base.schedule:
        raise MixtureError(
            "compress first, then add stages: the base mixture already has a schedule "
            f"({[s.name or s.start for s in base.schedule]}); with_upsampling composes after"
        )
    if set(base.domains) != set(schedule.domains):
        raise MixtureError(
            f"the trajectory's domains {schedule.domains} are not the mixture's {base.domains}"
        )
    order = base.domains
    ws = [{d: w[d] for d in order} for w in schedule.weights]
    prov = dict(base.provenance)
    prov["schedule"] = {
        **schedule.provenance(),
        "export": export,
        "final_weights": dict(base.weights),
    }
    if export == "final":
        return Mixture(base.weights, (), base.total_tokens, base.domain_tokens, prov, base.notes)
    pairs = list(zip(schedule.starts, ws, strict=True))
    later = [Stage(s, w, f"stage{i}") for i, (s, w) in enumerate(pairs) if i]
    return Mixture(ws[0], later, base.total_tokens, base.domain_tokens, prov, base.notes)


def schedule_stages(mixture: Mixture) -> list[tuple[float, dict[str, float]]] | None:
    """The staged schedule a mixture carries: its stages when it holds one, else the one its
    provenance recorded (``export="final"``), else ``None``."""
    rec = mixture.provenance.get("schedule")
    if not isinstance(rec, Mapping) or not rec.get("stages"):
        return None
    if rec.get("export") == "staged":
        return [(float(s.start), dict(s.weights)) for s in mixture.stages()]
    return [(float(s["start"]), dict(s["weights"])) for s in rec["stages"]]


# ---------------------------------------------------------------------------------------------
# Replay


class ScheduleReplay:
    """A :func:`~curamix.proxy.train.train_proxy` hook that trains on a staged mixture.

    Called every ``update_every`` steps, it returns the weights of the stage in force after
    ``step_metrics.tokens`` of ``total_tokens`` (a stage starting exactly there included), so
    the sampler switches at the boundary. Boundaries from :func:`compress_trajectory` fall on
    the proxy's update steps, where the switch is exact; elsewhere it happens at the first
    hook call after the boundary (up to ``update_every`` steps late). Needs no gradients.

    >>> replay = ScheduleReplay(mixture, cfg.total_tokens)
    >>> train_proxy(cfg, train, val, replay.weights_at(0), hook=replay)
    """

    needs_gradients = False

    def __init__(self, mixture: Mixture, total_tokens: float):
        if not (math.isfinite(float(total_tokens)) and total_tokens > 0):
            raise MixtureError(f"total_tokens must be > 0, got {total_tokens!r}")
        self.mixture = mixture
        self.total_tokens = float(total_tokens)
        self._starts = [s.start * self.total_tokens for s in mixture.stages()]
        self._weights = [
            {d: float(s.weights.get(d, 0.0)) for d in mixture.domains} for s in mixture.stages()
        ]
        self.switches_: list[tuple[int, int]] = []
        """``(step, stage index)`` at every hook call that changed the stage (from stage 0)."""

    def stage_at(self, tokens: float) -> int:
        """Index of the stage in force once ``tokens`` have been trained."""
        i = 0
        for j, s in enumerate(self._starts):
            if tokens >= s * (1 - 1e-12):
                i = j
        return i

    def weights_at(self, tokens: float) -> dict[str, float]:
        """The weights in force once ``tokens`` have been trained."""
        return dict(self._weights[self.stage_at(tokens)])

    def __call__(self, step_metrics: StepMetrics) -> dict[str, float]:
        i = self.stage_at(step_metrics.tokens)
        if i != (self.switches_[-1][1] if self.switches_ else 0):
            self.switches_.append((int(step_metrics.step), i))
        return dict(self._weights[i])


# ---------------------------------------------------------------------------------------------
# Upsampling


def _upsampled(weights: Mapping[str, float], domains: Sequence[str], factor: float) -> dict:
    up = {d: v * (factor if d in domains else 1.0) for d, v in weights.items()}
    total = sum(up.values())
    return {d: v / total for d, v in up.items()}


def with_upsampling(
    source: BaseMixer | Mixture | Mapping[str, float],
    domains: Sequence[str],
    factor: float = 2.0,
    last_fraction: float = 0.15,
    total_tokens: float | None = None,
) -> Mixture:
    """A mixture that switches to upsampled weights for the last ``last_fraction``.

    Parameters
    ----------
    source : fitted mixer, Mixture, or mapping domain -> weight
        The weights before the switch (a mixer's :meth:`~BaseMixer.mixture`; a plain mapping
        must be valid: non-negative, summing to 1).
    domains : sequence of str
        Domains to upweight (each must be in the mixture).
    factor : float
        Multiplier before renormalisation (> 0).
    last_fraction : float in (0, 1)
        Share of the training tokens the last stage covers.
    total_tokens : float, optional
        Training budget carried by the mixture (a mixer's ``domain_stats.total_tokens`` by
        default).

    Returns
    -------
    Mixture
        The source's weights and schedule with the weights in force at ``1 - last_fraction``
        upsampled from there on (an ``"upsample"`` stage); a staged source's later stages are
        upsampled too (named ``<stage>+upsample``). Provenance records the upsampling.

    Raises
    ------
    ValueError
        No domains, unknown domains, a bad factor or fraction, or a source that is already
        upsampled (provenance ``upsampling``).
    """
    if isinstance(domains, str):
        raise ValueError(f"domains must be a sequence of domain names, got the string {domains!r}")
    if not domains:
        raise ValueError("with_upsampling needs at least one domain to upsample")
    if isinstance(source, BaseMixer):
        base = source.mixture(total_tokens)
    elif isinstance(source, Mixture):
        base = source
    elif isinstance(source, Mapping):
        try:
            base = Mixture(
                weights=source, total_tokens=total_tokens, provenance={"method": "given"}
            )
        except MixtureError as e:
            raise ValueError(str(e)) from None
    else:
        raise TypeError(
            f"source must be a mixer, a Mixture or a mapping, got {type(source).__name__}"
        )
    if "upsampling" in base.provenance:
        raise ValueError(
            f"the mixture is already upsampled (provenance upsampling: "
            f"{dict(base.provenance['upsampling'])})"
        )
    start = 1.0 - last_fraction
    stages = base.stages()
    current = [s for s in stages if s.start <= start][-1]
    try:
        stage = upsampling_stage(current.weights, domains, factor, last_fraction)
    except MixtureError as e:
        raise ValueError(str(e)) from None
    labels = [s.name or f"stage{i}" for i, s in enumerate(stages)]
    later = [
        Stage(s.start, _upsampled(s.weights, domains, factor), f"{label}+upsample")
        for s, label in zip(stages[1:], labels[1:], strict=True)
        if s.start > start
    ]
    prov: dict[str, Any] = dict(base.provenance)
    prov["upsampling"] = {
        "domains": list(domains),
        "factor": factor,
        "last_fraction": last_fraction,
        "reference": "Blakeney et al. 2024, arXiv:2406.03476",
    }
    return Mixture(
        weights=base.weights,
        schedule=[*(s for s in base.schedule if s.start < start), stage, *later],
        total_tokens=base.total_tokens if total_tokens is None else total_tokens,
        domain_tokens=base.domain_tokens,
        provenance=prov,
        notes=base.notes,
    )
