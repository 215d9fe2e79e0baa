"""Skill-it: online data mixing over skills by multiplicative weights on a skills graph.

The skills are the mixture's domains (k-means clusters of the embed stage are skills only
when the pool's domain column holds them). Every round (every ``update_every`` proxy steps, when
the hook calls :meth:`SkillItMixer.partial_fit`) the mixer reads each skill's held-out
validation loss and sets the sampling weights of the next round:

    L_win = sum of the last T rounds' losses L_tau          (the mean, with a target mask)
    L_win = L_win / L_0                                     (normalize_loss: L_0 = first round's)
    p_i   = p_init_i * exp(eta * sum_j A_ij L_win_j)  / Z

``A`` is the skills graph: ``A[i, j]`` is how much training on skill ``i`` lowers the loss
of skill ``j`` (rows: the skills trained on; columns: the skills evaluated). A skill gets
weight when the skills it helps still have a high loss. Before the first evaluation the
weights are ``p_init * exp(eta * A @ 1)`` (the reference's ``loss_init`` of ones). With
``A = I`` the update is loss-proportional exponentiation, ``p_i ∝ p_init_i exp(eta L_win_i)``.

The target. In curamix the target (e.g. GSM8K + MMLU train texts) is a text set, not a
domain, so the graph may have one extra column, ``"target"``, whose loss is the target set's
held-out loss: ``A[i, "target"]`` is how much training on domain ``i`` lowers the target
loss. ``target_mask`` (the reference's targeted mode) keeps only the named columns: the
weights then follow the target's loss alone, e.g. ``target_mask=["target"]``.

Where the graph comes from (``graph``): a file (``.json`` with skill names, or ``.npy`` in
domain order, as the reference's ``--graph_path``), a mapping ``{skill: {skill: weight}}``,
an array, a :class:`SkillsGraph`, or :func:`estimate_skills_graph`, which runs the
reference's edge test on short proxy trainings (``"pairwise"``: train on {i, j} and on {j}
alone, the edge is how much lower j's loss ends with i; ``"single"``, the cheaper estimate:
train on i alone and measure every skill's loss decrease). A nearly empty or nearly complete
graph warns: the authors report no gain over the baselines then.

Reference: ``HazyResearch/skill-it``, ``trainer/mw_trainer.py`` (``--mw``, ``--mw_window``,
``--eta``, ``--normalize_loss``, ``--initialize_loss``, ``--target_mask``, ``--graph_path``).
Departures (docs/mixers.md, "Skill-it"): one evaluation per round (the reference evaluates
every ``ckpt_steps`` and its window counts evaluations, which equals rounds when they
coincide, as in the paper's Algorithm 1); ``L_0`` is the first round's evaluation; negative
graph entries are refused (the estimate clips them to 0, "no edge"); an estimated graph is
scaled so its largest edge is 1, the weight of the reference's synthetic graphs' diagonal;
``ignore_lone_nodes``, ``dynamic_lambda``, ``eta_schedule`` and ``mw_init`` are not
implemented.

References
----------
Chen, Roberts, Bhatia, Wang, Zhang, Sala, Ré 2023, "Skill-it! A Data-Driven Skills Framework
for Understanding and Training Language Models", arXiv:2307.14430.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from curamix.mixers.base import (
    DomainStats,
    OnlineMixer,
    check_finite,
    finalize_weights,
    init_weights,
)

if TYPE_CHECKING:
    from curamix.proxy.train import ProxyTrainConfig, StepMetrics

__all__ = [
    "TARGET",
    "SkillItMixer",
    "SkillsGraph",
    "estimate_skills_graph",
    "graph_density",
    "plot_skills_graph",
    "resolve_skills_graph",
    "skillit_weights",
]

TARGET = "target"
"""Name of the graph column whose loss is the target set's (not a pool domain)."""
EDGE_THRESHOLD = 0.1
"""An entry counts as an edge when it is above this fraction of the graph's largest entry."""
SPARSE, DENSE = 0.1, 0.9
"""Off-diagonal edge densities at or below / at or above which the graph warns."""


# ---------------------------------------------------------------------------------------------
# The update


def skillit_weights(
    prior: np.ndarray,
    graph: np.ndarray,
    losses: Sequence[np.ndarray] | np.ndarray,
    eta: float,
    window: int = 3,
    reduce: Literal["sum", "mean"] = "sum",
    loss0: np.ndarray | None = None,
) -> np.ndarray:
    """One Skill-it update: ``p ∝ prior * exp(eta * graph @ L_win)``.

    Parameters
    ----------
    prior : ndarray (k,)
        ``p_init``, non-negative (a zero stays zero).
    graph : ndarray (k, m)
        ``A[i, j]``: how much training on skill i lowers the loss of evaluated skill j.
    losses : sequence of ndarray (m,)
        Every round's evaluation losses so far, oldest first; the last ``window`` count.
    eta : float
    window : int
        ``T``, the look-back in rounds (the reference's ``--mw_window``, default 3).
    reduce : {"sum", "mean"}
        How the window is aggregated: the reference sums, and averages in targeted mode.
    loss0 : ndarray (m,), optional
        Divide the aggregated loss by it (the reference's ``--normalize_loss``).

    Returns
    -------
    ndarray (k,) summing to 1 (computed in log space: no overflow).
    """
    hist = np.atleast_2d(np.asarray(losses, dtype=np.float64))
    win = hist[-int(window) :]
    agg = win.sum(axis=0) if reduce == "sum" else win.mean(axis=0)
    if loss0 is not None:
        agg = agg / np.asarray(loss0, dtype=np.float64)
    return _mw(prior, graph, agg, eta)


def _mw(prior: np.ndarray, graph: np.ndarray, loss: np.ndarray, eta: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        z = np.log(np.asarray(prior, dtype=np.float64)) + eta * (np.asarray(graph) @ loss)
    z = z - np.max(z)
    w = np.exp(z)
    return w / w.sum()


# ---------------------------------------------------------------------------------------------
# The skills graph


@dataclass(frozen=True, eq=False)
class SkillsGraph:
    """A skills graph: ``matrix[i, j]`` = how much training on ``skills[i]`` lowers the loss of
    ``columns[j]`` (a domain, or :data:`TARGET`). Entries are finite and non-negative.

    ``how`` says where it came from (``"identity"``, ``"file:<path>"``, ``"mapping"``,
    ``"array"``, ``"single"``, ``"pairwise"``); an estimate keeps its unclipped, unscaled loss
    decreases in ``raw`` (nats) and its settings, base losses and cost in ``info``.
    """

    skills: tuple[str, ...]
    columns: tuple[str, ...]
    matrix: np.ndarray
    how: str = "given"
    raw: np.ndarray | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        skills, columns = tuple(self.skills), tuple(self.columns)
        for what, names in (("skills", skills), ("columns", columns)):
            if not names:
                raise ValueError(f"skills graph: no {what}")
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"skills graph: {what} {dup} appear more than once")
        a = np.array(self.matrix, dtype=np.float64)
        if a.shape != (len(skills), len(columns)):
            raise ValueError(
                f"skills graph has shape {a.shape}; expected ({len(skills)}, {len(columns)}) "
                f"for skills {list(skills)} and columns {list(columns)}"
            )
        bad = ~np.isfinite(a)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(
                f"skills graph entry [{skills[i]!r}, {columns[j]!r}] is {float(a[i, j])!r}; "
                "entries must be finite"
            )
        if (a < 0).any():
            i, j = np.argwhere(a < 0)[0]
            raise ValueError(
                f"skills graph entry [{skills[i]!r}, {columns[j]!r}] is {float(a[i, j])!r}; entries "
                "must be >= 0 (an edge's weight is a loss decrease; use 0 for no edge)"
            )
        object.__setattr__(self, "skills", skills)
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "matrix", a)
        object.__setattr__(self, "info", dict(self.info))

    def __repr__(self) -> str:
        return f"SkillsGraph({self.how!r}, {len(self.skills)} x {len(self.columns)})"

    def column_index(self, names: Sequence[str]) -> list[int]:
        """Positions of ``names`` among the columns (unknown names raise, naming them)."""
        unknown = [n for n in names if n not in self.columns]
        if unknown:
            raise ValueError(
                f"target_mask names {unknown}, not columns of the skills graph {list(self.columns)}"
            )
        return [self.columns.index(n) for n in names]

    def to_dict(self) -> dict[str, Any]:
        from curamix.mixers.base import _jsonable

        return _jsonable(
            {
                "skills": list(self.skills),
                "columns": list(self.columns),
                "matrix": self.matrix,
                "how": self.how,
                "raw": self.raw,
                "info": dict(self.info),
            }
        )

    def write_json(self, path: str | Path) -> Path:
        """The graph as JSON (readable back by :func:`resolve_skills_graph` and the search's
        ``mixture.skills_graph``)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path


def graph_density(
    graph: SkillsGraph, columns: Sequence[str] | None = None, threshold: float = EDGE_THRESHOLD
) -> tuple[int, int]:
    """``(edges, pairs)`` among the off-diagonal entries of ``columns`` (default all): an
    entry ``[i, j]`` with ``j`` another skill than ``i`` is an edge when it exceeds
    ``threshold`` times the graph's largest entry."""
    cols = graph.column_index(columns) if columns is not None else range(len(graph.columns))
    top = float(graph.matrix.max())
    edges = pairs = 0
    for i, s in enumerate(graph.skills):
        for j in cols:
            if graph.columns[j] == s:
                continue
            pairs += 1
            edges += bool(top > 0 and graph.matrix[i, j] > threshold * top)
    return edges, pairs


def _warn_degenerate(graph: SkillsGraph, columns: Sequence[str]) -> str | None:
    edges, pairs = graph_density(graph, columns)
    if pairs == 0:
        return None
    density = edges / pairs
    if density <= SPARSE:
        kind = "nearly empty"
    elif density >= DENSE:
        kind = "nearly complete"
    else:
        return None
    msg = (
        f"the skills graph ({graph.how}) is {kind}: {edges} of {pairs} off-diagonal entries "
        f"of columns {list(columns)} are edges (> {EDGE_THRESHOLD:g} x the largest entry). "
        "Chen et al. 2023 report no gain from Skill-it over the baselines on such graphs"
    )
    warnings.warn(msg, stacklevel=3)
    return msg


def _read_graph_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"skills graph file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"skills graph file {str(path)!r} is not valid JSON: {err}") from None
    raise ValueError(
        f"skills graph file {str(path)!r}: use a .json file (skills, columns, matrix; or "
        "edges) or a .npy matrix in domain order"
    )


def _binary_offdiag(a: np.ndarray, skills: Sequence[str], columns: Sequence[str]) -> np.ndarray:
    """The reference's convention for 0/1 graphs: an off-diagonal 1 weighs 0.5."""
    if not np.isin(a, (0.0, 1.0)).all():
        return a
    a = a.copy()
    for i, s in enumerate(skills):
        for j, c in enumerate(columns):
            if c != s and a[i, j] == 1.0:
                a[i, j] = 0.5
    return a


def resolve_skills_graph(
    graph: Any, domains: Sequence[str], has_target: bool = False
) -> SkillsGraph:
    """The skills graph over ``domains`` (rows in that order) from any accepted form.

    Parameters
    ----------
    graph : None, path, mapping, array or SkillsGraph
        None: the identity (the reference's default, ``np.eye(k)``). A path: ``.json`` with
        ``{"skills": [...], "columns": [...], "matrix": [[...]]}`` (columns default to the
        skills) or ``{"edges": {skill: {skill: weight}}}`` (missing entries 0), or ``.npy`` (a
        ``(k, k)`` matrix, or ``(k, k + 1)`` with the target column last, in domain order). A
        mapping: the ``edges`` form. A 0/1 graph from a file, mapping or array gets the
        reference's 0.5 on its off-diagonal ones.
    domains : names
        The mixture's domains: every one must be a row, and no other.
    has_target : bool
        Whether a target set exists (an array with ``k + 1`` columns needs one).

    Raises
    ------
    ValueError
        A file that does not exist or cannot be read, a wrong shape, negative or non-finite
        entries, skill names that are not domains (or :data:`TARGET`), missing domains.
    """
    domains = list(domains)
    if TARGET in domains:
        raise ValueError(
            f"a domain is named {TARGET!r}, the name of the skills graph's target column; "
            "rename the domain"
        )
    if graph is None:
        return SkillsGraph(tuple(domains), tuple(domains), np.eye(len(domains)), how="identity")
    if isinstance(graph, SkillsGraph):
        return _reorder(graph, domains)
    how = "mapping"
    if isinstance(graph, str | Path):
        path = Path(graph).expanduser()
        how = f"file:{path}"
        graph = _read_graph_file(path)
    if isinstance(graph, Mapping):
        if "matrix" in graph:
            skills = list(graph.get("skills") or [])
            columns = list(graph.get("columns") or skills)
            _check_names(skills, columns, domains, how)
            a = _as_matrix(graph["matrix"], how)
            if graph.get("how") not in ("single", "pairwise"):  # an estimate is not 0/1 by design
                a = _binary_offdiag(a, skills, columns)
            g = SkillsGraph(tuple(skills), tuple(columns), a, how=how,
                            raw=_opt(graph.get("raw")), info=graph.get("info") or {})  # fmt: skip
            return _reorder(g, domains)
        edges = graph.get("edges", graph) if how != "mapping" else graph
        if not isinstance(edges, Mapping):
            raise ValueError(f"skills graph ({how}): 'edges' must map skill -> {{skill: weight}}")
        return _from_edges(edges, domains, how)
    a = _as_matrix(graph, how if how != "mapping" else "array")
    how = how if how != "mapping" else "array"
    k = len(domains)
    if a.shape == (k, k):
        columns = list(domains)
    elif a.shape == (k, k + 1) and has_target:
        columns = [*domains, TARGET]
    else:
        want = f"({k}, {k})" + (f" or ({k}, {k + 1}) with the target column last" if has_target
                                else "")  # fmt: skip
        raise ValueError(
            f"skills graph ({how}) has shape {a.shape}; expected {want} for the {k} domains "
            f"{domains} (in that order)"
        )
    return SkillsGraph(tuple(domains), tuple(columns), _binary_offdiag(a, domains, columns),
                       how=how)  # fmt: skip


def _opt(v: Any) -> np.ndarray | None:
    return None if v is None else np.asarray(v, dtype=np.float64)


def _as_matrix(v: Any, how: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"skills graph ({how}): the matrix is not numeric: {v!r}") from None
    if a.ndim != 2:
        raise ValueError(f"skills graph ({how}) must be a 2-D matrix, got shape {a.shape}")
    return a


def _check_names(
    skills: Sequence[str], columns: Sequence[str], domains: Sequence[str], how: str
) -> None:
    known = set(domains)
    unknown_rows = [s for s in skills if s not in known]
    unknown_cols = [c for c in columns if c not in known and c != TARGET]
    if unknown_rows or unknown_cols:
        raise ValueError(
            f"skills graph ({how}) names unknown skills {unknown_rows + unknown_cols}; the "
            f"skills are the domains {list(domains)} (and {TARGET!r} as a column)"
        )
    missing = [d for d in domains if d not in set(skills)]
    if missing:
        raise ValueError(f"skills graph ({how}) lacks rows for domains {missing}")


def _from_edges(edges: Mapping[str, Any], domains: Sequence[str], how: str) -> SkillsGraph:
    known = set(domains)
    unknown = sorted(
        {s for s in edges if s not in known}
        | {c for row in edges.values() if isinstance(row, Mapping) for c in row
           if c not in known and c != TARGET}
    )  # fmt: skip
    if unknown:
        raise ValueError(
            f"skills graph ({how}) names unknown skills {unknown}; the skills are the domains "
            f"{list(domains)} (and {TARGET!r} as a column)"
        )
    has_t = any(isinstance(r, Mapping) and TARGET in r for r in edges.values())
    columns = [*domains, TARGET] if has_t else list(domains)
    a = np.zeros((len(domains), len(columns)))
    for s, row in edges.items():
        if not isinstance(row, Mapping):
            raise ValueError(f"skills graph ({how}): edges of {s!r} must map skill -> weight")
        for c, w in row.items():
            try:
                a[domains.index(s), columns.index(c)] = float(w)
            except (TypeError, ValueError):
                raise ValueError(
                    f"skills graph ({how}): edge {s!r} -> {c!r} is not a number: {w!r}"
                ) from None
    return SkillsGraph(tuple(domains), tuple(columns), _binary_offdiag(a, domains, columns),
                       how=how)  # fmt: skip


def _reorder(graph: SkillsGraph, domains: Sequence[str]) -> SkillsGraph:
    _check_names(graph.skills, graph.columns, domains, graph.how)
    rows = [graph.skills.index(d) for d in domains]
    raw = graph.raw
    if raw is not None and raw.shape == graph.matrix.shape:
        raw = raw[rows]
    return SkillsGraph(tuple(domains), graph.columns, graph.matrix[rows], how=graph.how,
                       raw=raw, info=graph.info)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Estimating the graph on proxy runs


class _SwitchAfterWarmup:
    """A proxy hook that moves the sampler from the warmup mixture to the edge test's skills
    at ``step`` (and reads the base model's held-out losses there, once)."""

    needs_gradients = False

    def __init__(self, step: int, weights: Mapping[str, float], capture: bool) -> None:
        self.step, self.weights = step, dict(weights)
        self.needs_val_losses = capture
        self.val_eval_tokens: int | None = None
        self.base: dict[str, float] | None = None

    def __call__(self, m: StepMetrics) -> dict[str, float] | None:
        if m.step != self.step:
            return None
        if self.needs_val_losses:
            self.base = dict(m.val_losses or {})
            if m.val_target_loss is not None:
                self.base[TARGET] = float(m.val_target_loss)
            self.needs_val_losses = False
        return self.weights


def _untrained_losses(
    cfg: ProxyTrainConfig, val: Mapping[str, np.ndarray], target: np.ndarray | None
) -> dict[str, float]:
    """Held-out losses of the proxy ``train_proxy`` would start from (same seed, same rows)."""
    import torch

    from curamix.device import resolve_device
    from curamix.proxy.data import eval_windows
    from curamix.proxy.model import ProxyLM
    from curamix.proxy.train import evaluate_loss

    mcfg = cfg.resolve_model()
    device = resolve_device(cfg.device)
    with torch.no_grad():
        model = ProxyLM(mcfg, random_state=cfg.seed).to(device).eval()
        streams = dict(val) if target is None else {**val, TARGET: target}
        return {
            d: evaluate_loss(model, eval_windows(s, mcfg.seq_len, cfg.eval_tokens),
                             cfg.batch_size, device)
            for d, s in streams.items()
        }  # fmt: skip


def estimate_skills_graph(
    cfg: ProxyTrainConfig,
    train: Mapping[str, np.ndarray],
    val: Mapping[str, np.ndarray],
    target: np.ndarray | None = None,
    how: Literal["single", "pairwise"] = "single",
    warmup_tokens: int = 0,
    scale: bool = True,
    on_run: Callable[[str], None] | None = None,
) -> SkillsGraph:
    """The skills graph from short proxy trainings (Skill-it's edge test).

    Every run starts from the same proxy (``cfg.seed``), trains ``warmup_tokens`` on the
    uniform mixture of all domains (identical in every run, so the runs differ only after
    it), then ``cfg.total_tokens`` on the run's skills; losses are held-out evaluation losses
    (``val``, and the target's when given). ``L^base`` is the loss where the runs part.

    - ``"single"`` (the cheaper estimate; k runs): train on i alone;
      ``A[i, j] = L_j^base - L_j^{i}`` for every domain j and the target.
    - ``"pairwise"`` (the reference's test; k + k(k-1)/2 runs, one run on {i, j} serves both
      directions): train on {i, j} (half each) and on {j} alone;
      ``A[i, j] = L_j^{j} - L_j^{i,j}`` (how much lower j's loss ends when i is added at the
      same budget), the diagonal ``A[j, j] = L_j^base - L_j^{j}``. The target is not a domain
      (nothing trains on it), so its column is the single estimate's.

    A negative decrease (training on i raised j's loss) is no edge: clipped to 0. With
    ``scale`` the graph is divided by its largest entry (so the largest edge is 1, the weight
    of the reference's synthetic graphs' diagonal, and ``eta`` keeps the reference's scale);
    ``raw`` keeps the unclipped decreases in nats.

    Cost: each run is ``warmup_tokens + cfg.total_tokens`` tokens of proxy training.

    Raises
    ------
    ValueError
        A domain without validation tokens, an edge-test budget under one batch, an unknown
        ``how``.
    """
    from curamix.proxy.train import train_proxy

    if how not in ("single", "pairwise"):
        raise ValueError(f"how must be 'single' or 'pairwise', got {how!r}")
    domains = list(train)
    if TARGET in domains:
        raise ValueError(f"a domain is named {TARGET!r}, the graph's target column; rename it")
    no_val = [d for d in domains if d not in val or len(val[d]) < 2]
    if no_val:
        raise ValueError(
            f"the skills graph's edge test needs validation tokens in every domain; {no_val} "
            "have none"
        )
    per_step = cfg.batch_size * cfg.resolve_model().seq_len
    edge_steps = cfg.n_steps()
    if edge_steps < 1:
        raise ValueError(
            f"edge-test budget total_tokens={cfg.total_tokens} is under one batch "
            f"({per_step} tokens)"
        )
    if warmup_tokens < 0:
        raise ValueError(f"warmup_tokens must be >= 0, got {warmup_tokens!r}")
    warm_steps = int(warmup_tokens) // per_step
    run_cfg = cfg.model_copy(
        update={
            "total_tokens": (warm_steps + edge_steps) * per_step,
            "update_every": max(1, warm_steps),
            "hook_rows": 1,
            "eval_every": None,
            "checkpoint_every": None,
        }
    )
    val_d = {d: val[d] for d in domains}
    uniform = dict.fromkeys(domains, 1.0 / len(domains))
    columns = [*domains, *([TARGET] if target is not None else [])]
    t0 = time.perf_counter()
    base: dict[str, float] | None = None if warm_steps else _untrained_losses(cfg, val_d, target)
    n_runs = 0

    def run(weights: Mapping[str, float], name: str) -> dict[str, float]:
        nonlocal base, n_runs
        hook = _SwitchAfterWarmup(warm_steps, weights, base is None) if warm_steps else None
        res = train_proxy(run_cfg, train, val_d, uniform if warm_steps else weights,
                          target_tokens=target, hook=hook, progress=False)  # fmt: skip
        if hook is not None and hook.base is not None:
            base = hook.base
        n_runs += 1
        out = dict(res.val_losses)
        if res.target_loss is not None:
            out[TARGET] = float(res.target_loss)
        if on_run is not None:
            on_run(f"skills graph: run {n_runs} on {name}: " + ", ".join(
                f"{c} {out[c]:.3f}" for c in columns))  # fmt: skip
        return out

    single = {d: run({d: 1.0}, d) for d in domains}
    assert base is not None
    raw = np.array([[base[c] - single[s][c] for c in columns] for s in domains])
    if how == "pairwise":
        for a in range(len(domains)):
            for b in range(a + 1, len(domains)):
                i, j = domains[a], domains[b]
                pair = run({i: 0.5, j: 0.5}, f"{{{i}, {j}}}")
                raw[a, b] = single[j][j] - pair[j]  # edge i -> j
                raw[b, a] = single[i][i] - pair[i]  # edge j -> i
    matrix = np.clip(raw, 0.0, None)
    top = float(matrix.max())
    if scale and top > 0:
        matrix = matrix / top
    info = {
        "how": how,
        "warmup_tokens": warm_steps * per_step,
        "tokens_per_run": edge_steps * per_step,
        "runs": n_runs,
        "proxy_tokens": n_runs * (warm_steps + edge_steps) * per_step,
        "model": cfg.model if isinstance(cfg.model, str) else cfg.model.model_dump(mode="json"),
        "seed": cfg.seed,
        "scaled_by": top if scale and top > 0 else 1.0,
        "base_losses": {c: base[c] for c in columns},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return SkillsGraph(tuple(domains), tuple(columns), matrix, how=how, raw=raw, info=info)


def plot_skills_graph(graph: SkillsGraph, path: str | Path, title: str = "") -> Path:
    """The graph as a heatmap (rows: trained on; columns: evaluated), entries written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, m = graph.matrix.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * m, 1.0 + 0.45 * k))
    im = ax.imshow(graph.matrix, cmap="viridis", vmin=0, aspect="auto")
    ax.set_xticks(range(m), graph.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), graph.skills, fontsize=7)
    ax.set_xlabel("loss of (evaluated skill)", fontsize=8)
    ax.set_ylabel("training on (skill)", fontsize=8)
    top = float(graph.matrix.max()) or 1.0
    if k * m <= 400:
        for i in range(k):
            for j in range(m):
                v = graph.matrix[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if v > 0.6 * top else "white")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or f"skills graph ({graph.how})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The mixer


class SkillItMixer(OnlineMixer):
    """Skill-it online sampling (pass the instance as the ``train_proxy`` hook).

    Parameters
    ----------
    graph : None, path, mapping, array or SkillsGraph
        The skills graph (:func:`resolve_skills_graph`); None: the identity.
    eta : float >= 0
        Step size (the reference: 0.5 on LEGO, 0.2 on Natural Instructions).
    window : int >= 1
        ``T``, rounds of losses summed (``--mw_window``, default 3).
    normalize_loss : bool
        Divide the windowed loss by ``L_0``, the first round's losses (``--normalize_loss``).
    target_mask : str or names, optional
        Only these graph columns count (``--target_mask``; e.g. ``"target"`` or
        ``["target"]``); the window is then averaged, as in the reference's targeted mode.
        None: every column.
    initialize_loss : bool
        Start the loss history with a row of the first round's mean loss (``--initialize_loss``,
        a smoother first step).
    prior : "uniform", "natural" or mapping
        ``p_init`` over the domains (``--mw_prior``; the reference's default is uniform).
    eval_tokens : int, optional
        Held-out tokens per domain (and of the target) evaluated each round; None: the proxy's
        ``eval_tokens``.

    Attributes
    ----------
    weights_ : dict of str to float
    graph_ : SkillsGraph
        The resolved graph (rows in domain order).
    columns_ : list of str
        The graph columns the update reads (after ``target_mask``).
    losses_ : list of list of float
        Each round's losses of ``columns_`` (after the ``initialize_loss`` row, when set).
    loss0_ : list of float or None
        ``L_0`` (the first round's losses).
    graph_warning_ : str or None
        The nearly-empty / nearly-complete warning, when the graph gave one.
    n_updates_, history_ : int, list

    References
    ----------
    Chen et al. 2023, arXiv:2307.14430; ``HazyResearch/skill-it`` ``trainer/mw_trainer.py``.
    """

    method = "skillit"
    reference = "Chen et al. 2023, Skill-it!, arXiv:2307.14430"
    needs_gradients = False
    needs_val_losses = True
    _state_attrs = ("losses_", "loss0_")

    def __init__(
        self,
        graph: Any = None,
        eta: float = 0.5,
        window: int = 3,
        normalize_loss: bool = False,
        target_mask: str | Sequence[str] | None = None,
        initialize_loss: bool = False,
        prior: str | Mapping[str, float] = "uniform",
        eval_tokens: int | None = None,
    ) -> None:
        self.graph = graph
        self.eta = eta
        self.window = window
        self.normalize_loss = normalize_loss
        self.target_mask = target_mask
        self.initialize_loss = initialize_loss
        self.prior = prior
        self.eval_tokens = eval_tokens

    @property
    def val_eval_tokens(self) -> int | None:
        """What the training loop evaluates per domain for this hook (``eval_tokens``)."""
        return self.eval_tokens

    def _check_params(self) -> None:
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be finite and >= 0, got {self.eta!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1, got {self.window!r}")
        if self.eval_tokens is not None and not self.eval_tokens >= 1:
            raise ValueError(f"eval_tokens must be >= 1 or None, got {self.eval_tokens!r}")

    def fit(self, domain_stats: DomainStats | Mapping[str, float]) -> SkillItMixer:
        """Resolve the graph over the domains of ``domain_stats`` and set ``p_init * exp(eta *
        A @ 1)`` as the first round's weights."""
        self._check_params()
        stats = self._set_stats(domain_stats)
        self.graph_ = resolve_skills_graph(self.graph, stats.domains, has_target=True)
        mask = self.target_mask
        if mask is None:
            cols = list(self.graph_.columns)
        else:
            cols = [mask] if isinstance(mask, str) else list(mask)
            if not cols:
                raise ValueError("target_mask is empty: name at least one graph column")
        self._cols = self.graph_.column_index(cols)
        self.columns_ = cols
        self._A = self.graph_.matrix[:, self._cols]
        self.prior_ = init_weights(self.prior, stats, "prior")
        self.graph_warning_ = _warn_degenerate(self.graph_, cols)
        self.losses_: list[list[float]] = []
        self.loss0_: list[float] | None = None
        self._p = _mw(self.prior_, self._A, np.ones(len(cols)), self.eta)
        self._start_online()
        self.weights_ = finalize_weights(self._p, self.domains_, "Skill-it weights")
        return self

    def _round_losses(self, m: Any) -> np.ndarray:
        val = getattr(m, "val_losses", None)
        step = getattr(m, "step", None)
        if val is None:
            raise ValueError(
                "SkillItMixer needs held-out validation losses: pass the mixer itself as the "
                "train_proxy hook (it sets needs_val_losses = True) and give validation tokens"
            )
        out = []
        for c in self.columns_:
            if c == TARGET:
                v = getattr(m, "val_target_loss", None)
                if v is None:
                    raise ValueError(
                        f"the skills graph's {TARGET!r} column needs the target's loss: give "
                        "train_proxy target_tokens (or drop the column / mask it out)"
                    )
            elif c not in val:
                raise ValueError(
                    f"step metrics have no validation loss for domain {c!r} at step {step} "
                    f"(have {sorted(val)}); every graph column needs validation data"
                )
            else:
                v = val[c]
            out.append(float(v))
        check_finite(dict(zip(self.columns_, out, strict=True)), "validation loss", step)
        return np.array(out)

    def partial_fit(self, step_metrics: Any) -> dict[str, float]:
        """One round: record the held-out losses, return the next round's weights."""
        self._check_fitted()
        loss = self._round_losses(step_metrics)
        if self.loss0_ is None:
            if self.normalize_loss and (loss <= 0).any():
                raise ValueError(f"normalize_loss needs positive first losses, got {loss.tolist()}")
            self.loss0_ = loss.tolist()
            if self.initialize_loss:
                self.losses_.append([float(loss.mean())] * len(loss))
        self.losses_.append(loss.tolist())
        self._p = skillit_weights(
            self.prior_, self._A, self.losses_, self.eta, self.window,
            reduce="mean" if self.target_mask is not None else "sum",
            loss0=np.array(self.loss0_) if self.normalize_loss else None,
        )  # fmt: skip
        self.weights_ = finalize_weights(self._p, self.domains_, "Skill-it weights")
        self._record(step_metrics, self.weights_)
        return dict(self.weights_)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.losses_ = [list(map(float, r)) for r in state["losses_"]]
        self.loss0_ = None if state["loss0_"] is None else list(map(float, state["loss0_"]))

    def _extra_provenance(self) -> dict[str, Any]:
        out = super()._extra_provenance()
        out["skills_graph"] = self.graph_.to_dict()
        out["columns"] = list(self.columns_)
        out["graph_warning"] = self.graph_warning_
        return out
