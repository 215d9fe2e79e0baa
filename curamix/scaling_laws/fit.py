"""Fit the laws on a results table (a proxy sweep's, or any CSV/Parquet), plot, report.

The table's columns (a sweep writes them; other tables can be mapped with ``columns``):

- ``n_params``, ``tokens``, ``loss``: Chinchilla (one row per run);
- ``unique_tokens``: adds the data-constrained law;
- ``w:<domain>`` weights plus ``loss`` (or ``val:<domain>`` losses): the data-mixing law.

``fit_table`` writes ``fits.json`` (parameters, intervals, diagnostics, held-out errors),
one PNG per law and ``report.md`` into ``out_dir``; ``load_fits`` reads ``fits.json`` back
into law objects for ``recommend``.

Tables are polars frames inside; ``fit_table`` also takes a pandas frame (what ``run_sweep``
returns) and converts it once. Fit errors on the runs are ``sklearn.metrics``'s mean absolute
percentage error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curamix.io.store import write_json_atomic
from curamix.scaling_laws._base import ScalingLawFitError
from curamix.scaling_laws.chinchilla import ChinchillaLaw
from curamix.scaling_laws.data_constrained import DataConstrainedLaw
from curamix.scaling_laws.data_filtering import DataFilteringLaw, Pool
from curamix.scaling_laws.mixing import MixingLaw


def as_polars(df: Any) -> pl.DataFrame:
    """A polars frame from a polars or pandas one (pandas: converted once, index dropped)."""
    if isinstance(df, pl.DataFrame):
        return df
    return pl.from_pandas(df.reset_index(drop=True))


def _col(df: pl.DataFrame, name: str) -> np.ndarray:
    return df.get_column(name).to_numpy()


def holdout_largest(df: Any) -> np.ndarray:
    """Boolean mask of the run(s) to hold out: the largest model at its largest token budget
    (``df`` polars or pandas; the mask indexes either)."""
    df = as_polars(df)
    n, t = _col(df, "n_params"), _col(df, "tokens")
    big = n == n.max()
    return big & (t == t[big].max())


def _mean_abs_rel_error(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of ``|pred / y - 1|``: sklearn's mean absolute percentage error (as a fraction)."""
    from sklearn.metrics import mean_absolute_percentage_error

    return float(mean_absolute_percentage_error(y, pred))


def identification_warnings(
    law: ChinchillaLaw, N: np.ndarray | None = None, D: np.ndarray | None = None
) -> list[str]:
    """Flags for parameters the runs do not pin down (a fit can match its points and still
    say little about the law): fewer than 3 distinct sizes or budgets, exponents outside
    published ranges, bootstrap intervals over a decade."""
    out = []
    for name, vals, term in (("N", N, "alpha and A"), ("D", D, "beta and B")):
        if vals is not None and len(np.unique(vals)) < 3:
            out.append(
                f"only {len(np.unique(vals))} distinct {name} value(s): {term} are not identified"
            )
    p = law.params_
    for k in ("alpha", "beta"):
        if not 0.05 <= p[k] <= 1.5:
            out.append(
                f"{k} = {p[k]:.3g} is outside 0.05-1.5 (published fits: 0.2-0.6); the runs "
                f"probably do not span enough {'model sizes' if k == 'alpha' else 'token budgets'}"
                " for this term"
            )
    for k, (lo, hi) in getattr(law, "params_ci_", {}).items():
        if k in ("E", "A", "B") and lo > 0 and hi / lo > 10:
            out.append(f"{k} is poorly identified: 95% interval {lo:.3g} - {hi:.3g}")
        if k in ("alpha", "beta") and hi - lo > 1.0:
            out.append(f"{k} is poorly identified: 95% interval {lo:.3g} - {hi:.3g}")
    return out


def fit_chinchilla(
    df: Any, holdout: np.ndarray | None = None, n_boot: int = 200, random_state: int = 0
) -> tuple[ChinchillaLaw, dict[str, Any]]:
    """Fit on the rows not held out; report the relative error on the held-out ones."""
    df = as_polars(df)
    for c in ("n_params", "tokens", "loss"):
        if c not in df.columns:
            raise ValueError(f"the results table needs a {c!r} column; has {list(df.columns)}")
    held = None if holdout is None else np.asarray(holdout, dtype=bool)
    train = df if held is None else df.filter(pl.Series(~held))
    law = ChinchillaLaw().fit(_col(train, "n_params"), _col(train, "tokens"), _col(train, "loss"))
    info: dict[str, Any] = law.to_dict()
    if n_boot > 0:
        try:
            law.bootstrap(n_boot=n_boot, random_state=random_state)
            info["params_ci95"] = {k: list(v) for k, v in law.params_ci_.items()}
        except ScalingLawFitError as e:
            info["bootstrap_error"] = str(e)
    info["warnings"] = identification_warnings(law, _col(train, "n_params"), _col(train, "tokens"))
    pred = law.predict(_col(train, "n_params"), _col(train, "tokens"))
    info["train_mean_abs_rel_error"] = _mean_abs_rel_error(_col(train, "loss"), pred)
    if held is not None and held.any():
        test = df.filter(pl.Series(held))
        tn, tt, ty = _col(test, "n_params"), _col(test, "tokens"), _col(test, "loss")
        tp = law.predict(tn, tt)
        info["heldout"] = [
            {"n_params": float(n), "tokens": float(t), "loss": float(y), "predicted": float(p),
             "rel_error": float(p / y - 1)}
            for n, t, y, p in zip(tn, tt, ty, tp, strict=True)
        ]  # fmt: skip
    return law, info


def plot_chinchilla(
    law: ChinchillaLaw, df: Any, path: Path, holdout: np.ndarray | None = None
) -> Path:
    """Loss vs tokens per model size: points, fitted curves, and the extrapolation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = as_polars(df)
    n, t, y = _col(df, "n_params"), _col(df, "tokens"), _col(df, "loss")
    fig, ax = plt.subplots(figsize=(7, 4.8))
    sizes = np.unique(n)
    if len(sizes) > 6:  # many sizes (e.g. published points): curves for 6 quantiles only
        sizes = np.unique(np.quantile(sizes, np.linspace(0, 1, 6), method="nearest"))
    norm = matplotlib.colors.LogNorm(n.min(), n.max())
    cmap = plt.get_cmap("viridis")
    held = np.zeros(len(n), bool) if holdout is None else np.asarray(holdout, dtype=bool)
    sc = ax.scatter(t[~held], y[~held], c=n[~held], cmap=cmap, norm=norm, s=22,
                    label="fitted runs")  # fmt: skip
    if held.any():
        ax.scatter(t[held], y[held], c=n[held], cmap=cmap, norm=norm, s=140, marker="*",
                   edgecolor="red", label="held out")  # fmt: skip
    t_hi = t.max()
    grid = np.geomspace(t.min() / 2, t_hi * 8, 100)
    for n in sizes:
        ax.plot(grid, law.predict(np.full_like(grid, n), grid), color=cmap(norm(n)), lw=1.2)
    ax.axvspan(t_hi, grid[-1], color="0.93", zorder=0, label="extrapolation")
    fig.colorbar(sc, ax=ax, label="parameters N")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("loss")
    p = law.params_
    ax.set_title(
        f"E={p['E']:.3g} A={p['A']:.3g} B={p['B']:.3g} α={p['alpha']:.3g} β={p['beta']:.3g}",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mixture_columns(df: Any) -> list[str]:
    return [c for c in df.columns if c.startswith("w:")]


def _mixtures(df: pl.DataFrame) -> np.ndarray:
    return df.select(mixture_columns(df)).cast(pl.Float64).to_numpy()


def fit_mixing(df: Any, target: str = "loss", random_state: int = 0
               ) -> tuple[MixingLaw, dict[str, Any]]:  # fmt: skip
    df = as_polars(df)
    cols = mixture_columns(df)
    if not cols:
        raise ValueError("the mixing law needs mixture columns named 'w:<domain>'")
    y = _col(df, target)
    law = MixingLaw(random_state=random_state).fit(
        _mixtures(df), y, domains=[c[2:] for c in cols], targets=[target],
    )  # fmt: skip
    pred = law.predict(_mixtures(df))
    info = {"law": "MixingLaw", "params": law.params_, "n_points": df.height,
            "train_mean_abs_rel_error": _mean_abs_rel_error(y, pred)}  # fmt: skip
    return law, info


def fit_filtering(
    df: Any, metric: str = "target_loss", model: str | None = None
) -> tuple[dict[float, Pool], dict[str, Any]]:
    """One data-filtering law per keep fraction, on one model size's runs.

    ``df`` is a keep-fraction sweep's table (``keep_fraction``, ``unique_tokens``, ``tokens``,
    ``metric``); ``model`` defaults to the largest model in it. Returns the fitted pools (size
    = the subset's unique tokens) and a JSON-ready summary.
    """
    df = as_polars(df)
    for c in ("keep_fraction", "unique_tokens", "tokens", metric):
        if c not in df.columns or _missing(df.get_column(c)).all():
            raise ValueError(f"the data-filtering fit needs a {c!r} column with values")
    if "model" in df.columns:
        if model is None and "n_params" in df.columns:
            model = df.get_column("model")[df.get_column("n_params").arg_max()]
        if model is not None:
            df = df.filter(pl.col("model") == model)
    pools: dict[float, Pool] = {}
    info: dict[str, Any] = {"law": "DataFilteringLaw", "metric": metric, "model": model,
                            "pools": {}}  # fmt: skip
    groups = df.filter(~_missing(df.get_column("keep_fraction"))).partition_by(
        "keep_fraction", as_dict=True, maintain_order=True
    )
    for (frac,), g in sorted(groups.items()):
        law = DataFilteringLaw().fit(_col(g, "tokens"), _col(g, "unique_tokens"), _col(g, metric))
        size = float(g.get_column("unique_tokens")[0])
        pools[float(frac)] = law.pool(size)
        info["pools"][str(float(frac))] = {"size": size, **law.params_, "n_points": g.height}
    return pools, info


def _missing(s: pl.Series) -> pl.Series:
    """Null, or NaN in a float column (pandas' ``isna``)."""
    return s.is_null() | s.is_nan() if s.dtype.is_float() else s.is_null()


def plot_mixing(law: MixingLaw, df: Any, target: str, path: Path) -> Path:
    """Predicted vs measured target loss over the runs' mixtures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = as_polars(df)
    pred = law.predict(_mixtures(df))
    y = _col(df, target)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.scatter(y, pred, s=14)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
    ax.set_xlabel(f"measured {target}")
    ax.set_ylabel("mixing law prediction")
    ax.set_title(f"{len(y)} runs, {len(law.domains_)} domains", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fit_table(
    df: Any,
    out_dir: str | Path,
    laws: tuple[str, ...] = ("chinchilla",),
    holdout: str | None = "largest",
    n_boot: int = 200,
    random_state: int = 0,
    mixing_target: str = "loss",
    filtering_metric: str = "target_loss",
) -> dict[str, Any]:
    """Fit ``laws`` on ``df`` (a polars or pandas frame); write fits.json, PNGs and report.md
    to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    known = {"chinchilla", "data_constrained", "mixing", "filtering"}
    unknown = set(laws) - known
    if unknown:
        raise ValueError(f"unknown laws {sorted(unknown)}; choose from {sorted(known)}")
    df = as_polars(df)
    fits: dict[str, Any] = {"n_rows": df.height}
    lines = ["# Scaling-law fits", "", f"{df.height} runs.", ""]
    if "chinchilla" in laws:
        mask = holdout_largest(df) if holdout == "largest" else None
        if mask is not None and (df.height - int(mask.sum())) <= 5:
            mask = None
        law, info = fit_chinchilla(df, mask, n_boot=n_boot, random_state=random_state)
        plot_chinchilla(law, df, out / "chinchilla.png", mask)
        fits["chinchilla"] = info
        lines += ["## Chinchilla (approach 3)", "", "| param | value | 95% interval |",
                  "|---|---|---|"]  # fmt: skip
        for k, v in law.params_.items():
            ci = info.get("params_ci95", {}).get(k)
            lines.append(f"| {k} | {v:.4g} | {f'{ci[0]:.4g} – {ci[1]:.4g}' if ci else '-'} |")
        lines += ["", f"Mean |relative error| on the fitted runs: "
                  f"{info['train_mean_abs_rel_error']:.2%}."]  # fmt: skip
        for h in info.get("heldout", []):
            lines.append(
                f"Held out N={h['n_params']:.3g}, D={h['tokens']:.3g}: loss {h['loss']:.4f}, "
                f"predicted {h['predicted']:.4f} (relative error {h['rel_error']:+.2%})."
            )
        for w in info["warnings"]:
            lines.append(f"**Warning:** {w}.")
        lines += ["", "![fit](chinchilla.png)", ""]
    if "data_constrained" in laws:
        if "unique_tokens" not in df.columns:
            raise ValueError("the data-constrained law needs a 'unique_tokens' column")
        base = fits.get("chinchilla", {}).get("params")
        dc = DataConstrainedLaw(base=base).fit(
            _col(df, "n_params"), _col(df, "tokens"), _col(df, "unique_tokens"), _col(df, "loss")
        )
        fits["data_constrained"] = dc.to_dict()
        lines += ["## Data-constrained", "", json.dumps(dc.params_, indent=1), ""]
    if "mixing" in laws:
        mlaw, info = fit_mixing(df, target=mixing_target, random_state=random_state)
        plot_mixing(mlaw, df, mixing_target, out / "mixing.png")
        fits["mixing"] = info
        lines += ["## Data-mixing law", "",
                  f"Mean |relative error| on the runs: {info['train_mean_abs_rel_error']:.2%}.",
                  "", "![mixing](mixing.png)", ""]  # fmt: skip
    if "filtering" in laws:
        _pools, info = fit_filtering(df, metric=filtering_metric)
        fits["filtering"] = info
        lines += [
            "## Data filtering (per keep fraction)",
            "",
            "| keep | pool tokens | a | b | d | tau |",
            "|---|---|---|---|---|---|",
        ]
        for k, p in info["pools"].items():
            lines.append(f"| {float(k):g} | {p['size']:.3g} | {p['a']:.4g} | {p['b']:.4g} | "
                         f"{p['d']:.4g} | {p['tau']:.3g} |")  # fmt: skip
        lines.append("")
    write_json_atomic(out / "fits.json", fits)
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return fits


def load_fits(path: str | Path) -> dict[str, Any]:
    """Law objects from a ``fits.json``: ``chinchilla``, ``mixing``, ``filtering_pools``."""
    path = Path(path)
    if path.is_dir():
        path = path / "fits.json"
    if not path.is_file():
        raise FileNotFoundError(f"no fits.json at {path}; run `curamix fit` first")
    raw = json.loads(path.read_text())
    out: dict[str, Any] = {}
    if "chinchilla" in raw:
        out["chinchilla"] = ChinchillaLaw.from_params(raw["chinchilla"]["params"])
    if "mixing" in raw:
        out["mixing"] = mixing_from_params(raw["mixing"]["params"])
    if "filtering" in raw:
        out["filtering_pools"] = {
            float(k): Pool(size=p["size"], a=p["a"], b=p["b"], d=p["d"], tau=p["tau"])
            for k, p in raw["filtering"]["pools"].items()
        }
    return out


def mixing_from_params(params: Mapping[str, Mapping[str, Any]]) -> MixingLaw:
    law = MixingLaw()
    targets = list(params)
    law.targets_ = targets
    law.domains_ = list(params[targets[0]]["t"])
    law.c_ = np.array([params[t]["c"] for t in targets])
    law.k_ = np.array([params[t]["k"] for t in targets])
    law.t_ = np.array([[params[t]["t"][d] for d in law.domains_] for t in targets])
    return law
