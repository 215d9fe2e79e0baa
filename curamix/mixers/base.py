"""What every mixer shares: domain statistics, the estimator base, input checks, provenance.

A mixer is a small estimator. ``fit(domain_stats)`` learns the starting weights from what is
known before training (token counts, reference losses); an online mixer then changes them
with ``partial_fit(step_metrics)`` (a :class:`curamix.proxy.train.StepMetrics`), which
returns the new weights, so the mixer itself is the proxy hook (``__call__`` is
``partial_fit``). The current weights are ``weights_``; :meth:`BaseMixer.mixture` renders
them as a validated :class:`curamix.mixture.Mixture` with provenance (method, parameters,
seed, code version, inputs).

Checks happen here, once: a domain without tokens, weights that do not sum to 1, unknown or
missing domains and NaN metrics are ``ValueError`` naming the domain and the value. Nothing is
renormalised without a warning (only float round-off below 1e-9 is absorbed silently).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from curamix.mixture import Mixture, MixtureError, check_weights
from curamix.scaling_laws._base import NotFittedError

if TYPE_CHECKING:
    from curamix.proxy.train import StepMetrics

__all__ = [
    "BaseMixer",
    "DomainStats",
    "NotFittedError",
    "OnlineMixer",
    "as_domain_stats",
]

_ROUNDOFF = 1e-9
"""Sums this close to 1 are float round-off: renormalised without a warning."""


# ---------------------------------------------------------------------------------------------
# Domain statistics


@dataclass(frozen=True)
class DomainStats:
    """What a mixer knows about the domains before training.

    Parameters
    ----------
    tokens : mapping of str to float
        Unique tokens available per domain; every domain needs some (> 0). The order of the
        mapping is the domain order of every array a mixer takes or returns.
    reference_losses : mapping of str to float, optional
        Per-domain loss of a reference model (DoReMi's excess loss is measured against it).
        Must name exactly the domains of ``tokens``.
    total_tokens : float, optional
        The training budget in tokens: RegMix's epoch cap uses it, and the mixture carries it.
    inputs : mapping, optional
        Where the statistics come from (paths, manifest hashes), copied into provenance.
    """

    tokens: Mapping[str, float]
    reference_losses: Mapping[str, float] | None = None
    total_tokens: float | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("domain_stats.tokens is empty: need at least one domain")
        tok: dict[str, float] = {}
        for d, v in self.tokens.items():
            if not isinstance(d, str) or not d:
                raise ValueError(f"domain names must be non-empty strings, got {d!r}")
            x = _as_float(v, f"token count of domain {d!r}")
            if not (math.isfinite(x) and x > 0):
                raise ValueError(
                    f"domain {d!r} has {v!r} tokens; every domain needs tokens "
                    "(drop it from the mixture or give it data)"
                )
            tok[d] = x
        object.__setattr__(self, "tokens", tok)
        if self.reference_losses is not None:
            ref = check_keys(self.reference_losses, list(tok), "reference_losses")
            for d, v in ref.items():
                if not (math.isfinite(v) and v >= 0):
                    raise ValueError(f"reference loss of domain {d!r} must be finite, got {v!r}")
            object.__setattr__(self, "reference_losses", ref)
        if self.total_tokens is not None:
            t = _as_float(self.total_tokens, "total_tokens")
            if not (math.isfinite(t) and t > 0):
                raise ValueError(f"total_tokens must be > 0, got {self.total_tokens!r}")
            object.__setattr__(self, "total_tokens", t)
        object.__setattr__(self, "inputs", dict(self.inputs))

    @classmethod
    def from_streams(cls, streams: Mapping[str, Sequence[int]], **kwargs: Any) -> DomainStats:
        """Token counts from per-domain token streams (e.g. :func:`tokenize_domains` output)."""
        return cls(tokens={d: float(len(s)) for d, s in streams.items()}, **kwargs)

    @property
    def domains(self) -> list[str]:
        return list(self.tokens)

    def shares(self) -> np.ndarray:
        """Token share of each domain, in :attr:`domains` order."""
        t = np.array(list(self.tokens.values()), dtype=np.float64)
        return t / t.sum()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": dict(self.tokens),
            "reference_losses": (
                dict(self.reference_losses) if self.reference_losses is not None else None
            ),
            "total_tokens": self.total_tokens,
        }

    def digest(self) -> str:
        """SHA-256 of the statistics (not of ``inputs``), for provenance."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=float).encode()
        return hashlib.sha256(blob).hexdigest()


def as_domain_stats(domain_stats: DomainStats | Mapping[str, float]) -> DomainStats:
    """A :class:`DomainStats`, or a plain ``{domain: tokens}`` mapping turned into one."""
    if isinstance(domain_stats, DomainStats):
        return domain_stats
    if isinstance(domain_stats, Mapping):
        return DomainStats(tokens=domain_stats)
    raise TypeError(
        f"domain_stats must be a DomainStats or a mapping domain -> tokens, "
        f"got {type(domain_stats).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# Small checks


def _as_float(v: Any, what: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a number: {v!r}") from None


def check_keys(values: Mapping[str, Any], domains: Sequence[str], what: str) -> dict[str, float]:
    """``values`` as floats in ``domains`` order; unknown or missing domains raise."""
    unknown = [d for d in values if d not in set(domains)]
    if unknown:
        raise ValueError(f"{what} names unknown domains {unknown}; known: {list(domains)}")
    missing = [d for d in domains if d not in values]
    if missing:
        raise ValueError(f"{what} lacks domains {missing}")
    return {d: _as_float(values[d], f"{what}[{d!r}]") for d in domains}


def check_finite(values: Mapping[str, float], what: str, step: int | None = None) -> None:
    """Raise naming the first domain whose value is NaN or infinite."""
    for d, v in values.items():
        if not math.isfinite(float(v)):
            at = f" at step {step}" if step is not None else ""
            raise ValueError(
                f"{what} of domain {d!r} is {float(v)!r}{at}; refusing to update weights"
            )


def check_domain_weights(
    weights: Mapping[str, float], domains: Sequence[str], what: str = "weights"
) -> np.ndarray:
    """Validated weights over exactly ``domains`` (missing ones are 0) as an array.

    Unknown domains, negative or non-finite weights and sums away from 1 raise ``ValueError``
    (:func:`curamix.mixture.check_weights`); nothing is renormalised.
    """
    unknown = [d for d in weights if d not in set(domains)]
    if unknown:
        raise ValueError(f"{what} names unknown domains {unknown}; known: {list(domains)}")
    full = {d: weights.get(d, 0.0) for d in domains}
    try:
        w = check_weights(full, what)
    except MixtureError as e:
        raise ValueError(str(e)) from None
    return np.array([w[d] for d in domains], dtype=np.float64)


def finalize_weights(w: np.ndarray, domains: Sequence[str], where: str) -> dict[str, float]:
    """Turn a computed weight vector into a valid ``{domain: weight}``.

    Round-off (negatives above -1e-9, a sum within 1e-9 of 1) is absorbed silently; anything
    larger is clipped and renormalised with a warning naming ``where``; NaN raises.
    """
    w = np.asarray(w, dtype=np.float64)
    if not np.isfinite(w).all():
        bad = {d: float(x) for d, x in zip(domains, w, strict=True) if not math.isfinite(x)}
        raise ValueError(f"{where}: non-finite weights {bad}")
    total_before = float(w.sum())
    neg = float(w.min())
    w = np.clip(w, 0.0, None)
    total = float(w.sum())
    if total <= 0:
        raise ValueError(f"{where}: all weights are zero")
    if neg < -_ROUNDOFF or abs(total_before - 1.0) > _ROUNDOFF:
        warnings.warn(
            f"{where}: weights summed to {total_before:.9g} (smallest {neg:.3g}); "
            "clipped at 0 and renormalised",
            stacklevel=3,
        )
    w = w / total
    return {d: float(x) for d, x in zip(domains, w, strict=True)}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if callable(v):
        return getattr(v, "__qualname__", repr(v))
    return repr(v)


# ---------------------------------------------------------------------------------------------
# Estimators


class BaseMixer:
    """The estimator shape every mixer shares (scikit-learn conventions).

    ``__init__`` only stores parameters; :meth:`fit` resolves ``random_state`` and returns
    ``self``; learned state ends in ``_``: ``domains_``, ``domain_stats_``, ``weights_``.
    """

    method: ClassVar[str] = "base"
    reference: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False

    # -- parameters --------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters and their values."""
        return {p: getattr(self, p) for p in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitting -----------------------------------------------------------------------------
    def _set_stats(self, domain_stats: DomainStats | Mapping[str, float]) -> DomainStats:
        stats = as_domain_stats(domain_stats)
        self.domain_stats_ = stats
        self.domains_ = stats.domains
        return stats

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def weights_array(self) -> np.ndarray:
        """``weights_`` as an array in ``domains_`` order."""
        self._check_fitted()
        return np.array([self.weights_[d] for d in self.domains_])

    # -- the artifact --------------------------------------------------------------------------
    def _extra_provenance(self) -> dict[str, Any]:
        return {}

    def provenance(self) -> dict[str, Any]:
        """Method, reference, parameters, seed, code version, inputs (JSON-serialisable)."""
        import curamix

        self._check_fitted()
        stats = self.domain_stats_
        params = self.get_params()
        return _jsonable(
            {
                "method": self.method,
                "reference": self.reference,
                "parameters": params,
                "seed": params.get("random_state"),
                "curamix": curamix.__version__,
                "inputs": {
                    "domain_tokens": stats.tokens,
                    "domain_stats_sha256": stats.digest(),
                    **stats.inputs,
                },
                **self._extra_provenance(),
            }
        )

    def mixture(self, total_tokens: float | None = None) -> Mixture:
        """``weights_`` as a validated :class:`~curamix.mixture.Mixture` with provenance.

        ``total_tokens`` (default ``domain_stats.total_tokens``) lets the mixture report the
        tokens and epochs each domain implies.
        """
        self._check_fitted()
        stats = self.domain_stats_
        return Mixture(
            weights=dict(self.weights_),
            total_tokens=total_tokens if total_tokens is not None else stats.total_tokens,
            domain_tokens=stats.tokens,
            provenance=self.provenance(),
        )


class OnlineMixer(BaseMixer):
    """A mixer that changes its weights during training, every ``update_every`` steps.

    :meth:`partial_fit` takes a :class:`curamix.proxy.train.StepMetrics` and returns the
    weights the sampler should use next; the instance is the proxy hook
    (``train_proxy(..., weights=mixer.weights_, hook=mixer)``). ``history_`` keeps
    ``(step, tokens, weights)`` after each update; ``state_dict`` / ``load_state_dict`` let a
    resumed proxy run continue the mixer exactly.
    """

    _state_attrs: ClassVar[tuple[str, ...]] = ()

    def partial_fit(self, step_metrics: StepMetrics) -> dict[str, float]:
        raise NotImplementedError

    def __call__(self, step_metrics: StepMetrics) -> dict[str, float]:
        return self.partial_fit(step_metrics)

    def _start_online(self) -> None:
        self.n_updates_ = 0
        self.history_: list[tuple[int, int, dict[str, float]]] = []

    def _record(self, step_metrics: Any, weights: Mapping[str, float]) -> None:
        self.n_updates_ += 1
        self.history_.append(
            (int(getattr(step_metrics, "step", -1)), int(getattr(step_metrics, "tokens", -1)),
             dict(weights))
        )  # fmt: skip

    def _check_step_domains(self, values: Mapping[str, Any], what: str) -> None:
        unknown = [d for d in values if d not in set(self.domains_)]
        if unknown:
            raise ValueError(
                f"step metrics {what} name domains {unknown} this mixer was not fitted on; "
                f"known: {self.domains_}"
            )
        missing = [d for d in self.domains_ if d not in values]
        if missing:
            raise ValueError(f"step metrics {what} lack domains {missing}")

    def _extra_provenance(self) -> dict[str, Any]:
        return {
            "n_updates": getattr(self, "n_updates_", 0),
            "history": [
                {"step": s, "tokens": t, "weights": w} for s, t, w in getattr(self, "history_", [])
            ],
        }

    # -- checkpointing (plain types and tensors only: torch.load(weights_only=True)) ---------
    def state_dict(self) -> dict[str, Any]:
        self._check_fitted()
        out: dict[str, Any] = {
            "weights_": dict(self.weights_),
            "n_updates_": self.n_updates_,
            "history_": [[s, t, dict(w)] for s, t, w in self.history_],
        }
        for a in self._state_attrs:
            v = getattr(self, a)
            out[a] = v.tolist() if isinstance(v, np.ndarray) else v
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_fitted()
        if list(state["weights_"]) != list(self.domains_):
            raise ValueError(
                f"mixer state is for domains {list(state['weights_'])}, this mixer has "
                f"{self.domains_}"
            )
        self.weights_ = {d: float(v) for d, v in state["weights_"].items()}
        self.n_updates_ = int(state["n_updates_"])
        self.history_ = [(int(s), int(t), dict(w)) for s, t, w in state["history_"]]
        for a in self._state_attrs:
            v = state[a]
            cur = getattr(self, a)
            setattr(self, a, np.asarray(v, dtype=np.float64) if isinstance(cur, np.ndarray) else v)


# ---------------------------------------------------------------------------------------------
# Gradients from the proxy hook


def stack_gradients(step_metrics: Any, domains: Sequence[str], who: str) -> tuple[Any, Any]:
    """The per-domain gradients as one ``(k, P)`` float64 tensor (``domains`` order) and the
    target gradient ``(P,)``, checked: present, same length, finite (else ``ValueError``
    naming the domain and the step)."""
    import torch

    grads = getattr(step_metrics, "domain_grads", None)
    target = getattr(step_metrics, "target_grad", None)
    step = getattr(step_metrics, "step", None)
    if grads is None or target is None:
        raise ValueError(
            f"{who} needs per-domain and target gradients: pass the mixer itself as the hook "
            "(it sets needs_gradients = True) and give train_proxy target_tokens"
        )
    unknown = [d for d in grads if d not in set(domains)]
    missing = [d for d in domains if d not in grads]
    if unknown or missing:
        raise ValueError(
            f"step metrics gradients: unknown domains {unknown}, missing domains {missing}; "
            f"this mixer was fitted on {list(domains)}"
        )
    g_t = torch.as_tensor(target).detach().reshape(-1).to(torch.float64)
    rows = []
    for d in domains:
        g = torch.as_tensor(grads[d]).detach().reshape(-1).to(torch.float64)
        if g.shape != g_t.shape:
            raise ValueError(
                f"gradient of domain {d!r} has {g.numel()} entries, the target's {g_t.numel()}"
            )
        if not bool(torch.isfinite(g).all()):
            raise ValueError(f"gradient of domain {d!r} has NaN or infinite entries at step {step}")
        rows.append(g)
    if not bool(torch.isfinite(g_t).all()):
        raise ValueError(f"the target gradient has NaN or infinite entries at step {step}")
    return torch.stack(rows), g_t


def init_weights(
    init: str | Mapping[str, float], stats: DomainStats, what: str = "init"
) -> np.ndarray:
    """Starting weights: ``"uniform"``, ``"natural"`` (token share) or a mapping (validated,
    not renormalised)."""
    k = len(stats.domains)
    if isinstance(init, str):
        if init == "uniform":
            return np.full(k, 1.0 / k)
        if init == "natural":
            return stats.shares()
        raise ValueError(f"{what} must be 'uniform', 'natural' or a mapping, got {init!r}")
    return check_domain_weights(init, stats.domains, what)
