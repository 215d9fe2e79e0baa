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
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curamix.io.store import write_json_atomic
from curamix.scaling_laws._base import Identification, ScalingLawFitError
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


def check_table(df: pl.DataFrame, columns: tuple[str, ...]) -> None:
    """Refuse a results table whose ``columns`` hold a missing, NaN, infinite or non-positive
    value, naming the row, the column and the value (a NaN loss is a diverged run, not a
    point to fit)."""
    for c in columns:
        if c not in df.columns:
            raise ValueError(f"the results table needs a {c!r} column; has {list(df.columns)}")
        vals = df.get_column(c).cast(pl.Float64, strict=False).to_numpy()
        bad = ~np.isfinite(vals) | (vals <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            row = {k: df[i, k] for k in ("model", "n_params", "tokens") if k in df.columns}
            val = df[i, c]
            shown = "NaN/missing" if val is None else repr(val)
            raise ValueError(
                f"results table row {i} ({row}): {c} = {shown} is not a finite number > 0 "
                f"({int(bad.sum())} such rows); drop or rerun those runs"
            )


def fit_chinchilla(
    df: Any,
    holdout: np.ndarray | None = None,
    n_boot: int = 200,
    random_state: int = 0,
    ci_level: float = 0.9,
) -> tuple[ChinchillaLaw, dict[str, Any]]:
    """Fit on the rows not held out, bootstrap the runs (``n_boot`` resamples, seeded) for
    intervals at ``ci_level``, decide identifiability; report the relative error on the
    held-out rows."""
    df = as_polars(df)
    check_table(df, ("n_params", "tokens", "loss"))
    held = None if holdout is None else np.asarray(holdout, dtype=bool)
    train = df if held is None else df.filter(pl.Series(~held))
    law = ChinchillaLaw().fit(_col(train, "n_params"), _col(train, "tokens"), _col(train, "loss"))
    boot_error = None
    if n_boot > 0:
        try:
            law.bootstrap(n_boot=n_boot, random_state=random_state, level=ci_level)
        except ScalingLawFitError as e:
            boot_error = str(e)
    ident = law.identify()
    info: dict[str, Any] = law.to_dict()
    if boot_error:
        info["bootstrap_error"] = boot_error
    info["warnings"] = list(ident.reasons) + ([boot_error] if boot_error else [])
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
    """Loss vs tokens per model size: points, fitted curves with their bootstrap bands (the
    law's ``ci_level_``), the extrapolation, the parameters with intervals and the verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = as_polars(df)
    n, t, y = _col(df, "n_params"), _col(df, "tokens"), _col(df, "loss")
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    sizes = np.unique(n)
    if len(sizes) > 6:  # many sizes (e.g. published points): curves for 6 quantiles only
        sizes = np.unique(np.quantile(sizes, np.linspace(0, 1, 6), method="nearest"))
    norm = matplotlib.colors.LogNorm(n.min(), n.max() if n.max() > n.min() else n.min() * 1.01)
    cmap = plt.get_cmap("viridis")
    held = np.zeros(len(n), bool) if holdout is None else np.asarray(holdout, dtype=bool)
    sc = ax.scatter(t[~held], y[~held], c=n[~held], cmap=cmap, norm=norm, s=22,
                    label="fitted runs", zorder=3)  # fmt: skip
    if held.any():
        ax.scatter(t[held], y[held], c=n[held], cmap=cmap, norm=norm, s=140, marker="*",
                   edgecolor="red", label="held out", zorder=3)  # fmt: skip
    t_hi = t.max()
    grid = np.geomspace(t.min() / 2, t_hi * 8, 100)
    draws = getattr(law, "params_boot_", None)
    level = getattr(law, "ci_level_", None)
    for i, size in enumerate(sizes):
        color = cmap(norm(size))
        ax.plot(grid, law.predict(np.full_like(grid, size), grid), color=color, lw=1.2)
        if draws is not None and len(draws):
            E, A, B, al, be = (draws[:, j, None] for j in range(5))
            with np.errstate(all="ignore"):
                curves = E + A / size**al + B / grid[None, :] ** be
            q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
            lo, hi = np.nanpercentile(curves, q, axis=0)
            label = f"{level:.0%} bootstrap band" if i == 0 else None
            ax.fill_between(grid, lo, hi, color=color, alpha=0.15, lw=0, label=label)
    ax.set_ylim(min(y.min(), law.predict(n.max(), grid[-1])) * 0.9, y.max() * 1.1)
    ax.axvspan(t_hi, grid[-1], color="0.93", zorder=0, label="extrapolation")
    fig.colorbar(sc, ax=ax, label="parameters N")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("loss")
    p = law.params_
    ci = getattr(law, "params_ci_", {})

    def show(k: str) -> str:
        v = f"{k}={p[k]:.3g}"
        return v + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else "")

    title = (
        "  ".join(show(k) for k in ("E", "A", "B"))
        + "\n"
        + "  ".join(show(k) for k in ("alpha", "beta"))
    )
    if ci:
        title += f"   ({level:.0%} intervals, {getattr(law, 'n_boot_', 0)} bootstrap refits)"
    ax.set_title(title, fontsize=8)
    ident = getattr(law, "identification_", None)
    if ident is not None:
        text = (
            "identified"
            if ident.identified
            else "NOT identified:\n" + "\n".join(textwrap.shorten(r, 70) for r in ident.reasons[:4])
        )
        ax.text(0.99, 0.98, text, transform=ax.transAxes, ha="right", va="top", fontsize=7,
                color="darkgreen" if ident.identified else "darkred",
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})  # fmt: skip
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mixture_columns(df: Any) -> list[str]:
    return [c for c in df.columns if c.startswith("w:")]


def _mixtures(df: pl.DataFrame) -> np.ndarray:
    return df.select(mixture_columns(df)).cast(pl.Float64).to_numpy()


def fit_mixing(
    df: Any, target: str = "loss", random_state: int = 0, n_boot: int = 200,
    ci_level: float = 0.9,
) -> tuple[MixingLaw, dict[str, Any]]:  # fmt: skip
    """The data-mixing law of ``target`` over the ``w:<domain>`` columns, bootstrapped and
    judged for identifiability."""
    df = as_polars(df)
    cols = mixture_columns(df)
    if not cols:
        raise ValueError("the mixing law needs mixture columns named 'w:<domain>'")
    check_table(df, (target,))
    y = _col(df, target)
    law = MixingLaw(random_state=random_state).fit(
        _mixtures(df), y, domains=[c[2:] for c in cols], targets=[target],
    )  # fmt: skip
    info: dict[str, Any] = {"law": "MixingLaw", "params": law.params_, "n_points": df.height}
    if n_boot > 0:
        try:
            ci = law.bootstrap(n_boot=n_boot, random_state=random_state, level=ci_level)
            info["ci_level"] = ci_level
            info["params_ci"] = ci
        except ScalingLawFitError as e:
            info["bootstrap_error"] = str(e)
    ident = law.identify()
    info["identification"] = ident.to_dict()
    info["warnings"] = list(ident.reasons)
    pred = law.predict(_mixtures(df))
    info["train_mean_abs_rel_error"] = _mean_abs_rel_error(y, pred)
    return law, info


def fit_filtering(
    df: Any, metric: str = "target_loss", model: str | None = None, n_boot: int = 200,
    random_state: int = 0, ci_level: float = 0.9,
) -> tuple[dict[float, Pool], dict[str, Any]]:  # fmt: skip
    """One data-filtering law per keep fraction, on one model size's runs, each bootstrapped
    (``n_boot`` resamples) and judged for identifiability.

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
        check_table(g, ("tokens", "unique_tokens", metric))
        law = DataFilteringLaw().fit(_col(g, "tokens"), _col(g, "unique_tokens"), _col(g, metric))
        size = float(g.get_column("unique_tokens")[0])
        pools[float(frac)] = law.pool(size)
        entry = {"size": size, **law.params_, "n_points": g.height}
        if n_boot > 0:
            try:
                law.bootstrap(n_boot=n_boot, random_state=random_state, level=ci_level)
                entry["ci_level"] = ci_level
                entry["params_ci"] = {k: list(v) for k, v in law.params_ci_.items()}
            except ScalingLawFitError as e:
                entry["bootstrap_error"] = str(e)
        entry["identification"] = law.identify().to_dict()
        info["pools"][str(float(frac))] = entry
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


def _verdict_lines(ident: dict[str, Any]) -> list[str]:
    if ident["identified"]:
        return [f"**Identified** ({ident['n_boot']} bootstrap refits; distinct inputs "
                f"{ident['distinct']})."]  # fmt: skip
    return ["**Not identified** (decisions will not use this fit):", "",
            *[f"- {r}" for r in ident["reasons"]]]  # fmt: skip


def _ci_cell(ci: Any) -> str:
    return f"{ci[0]:.4g} – {ci[1]:.4g}" if ci else "-"


def fit_table(
    df: Any,
    out_dir: str | Path,
    laws: tuple[str, ...] = ("chinchilla",),
    holdout: str | None = "largest",
    n_boot: int = 200,
    random_state: int = 0,
    mixing_target: str = "loss",
    filtering_metric: str = "target_loss",
    ci_level: float = 0.9,
) -> dict[str, Any]:
    """Fit ``laws`` on ``df`` (a polars or pandas frame); write fits.json, PNGs and report.md
    to ``out_dir``.

    Every law is bootstrapped over the runs (``n_boot`` resamples seeded by
    ``random_state``; intervals at ``ci_level``) and judged for identifiability; fits.json
    holds per law ``params``, ``params_ci``, ``bootstrap`` (with the draws for Chinchilla),
    ``identification`` (``identified``, ``reasons``, distinct inputs, relative widths,
    parameters at bounds) and ``warnings`` (the reasons). Bad input (a NaN or non-positive
    value, one distinct N, fewer runs than parameters) raises, naming the value.
    """
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level!r}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    known = {"chinchilla", "data_constrained", "mixing", "filtering"}
    unknown = set(laws) - known
    if unknown:
        raise ValueError(f"unknown laws {sorted(unknown)}; choose from {sorted(known)}")
    df = as_polars(df)
    fits: dict[str, Any] = {"n_rows": df.height}
    lines = ["# Scaling-law fits", "", f"{df.height} runs.", ""]
    pct = f"{ci_level:.0%}"
    if "chinchilla" in laws:
        mask = holdout_largest(df) if holdout == "largest" else None
        if mask is not None and (df.height - int(mask.sum())) <= 5:
            mask = None
        law, info = fit_chinchilla(
            df, mask, n_boot=n_boot, random_state=random_state, ci_level=ci_level
        )
        plot_chinchilla(law, df, out / "chinchilla.png", mask)
        fits["chinchilla"] = info
        lines += ["## Chinchilla (approach 3)", "",
                  f"| param | value | {pct} interval | relative width |", "|---|---|---|---|"]  # fmt: skip
        rel = info["identification"]["rel_width"]
        for k, v in law.params_.items():
            ci = info.get("params_ci", {}).get(k)
            w = f"{rel[k]:.3g}" if k in rel else "-"
            lines.append(f"| {k} | {v:.4g} | {_ci_cell(ci)} | {w} |")
        lines += ["", f"Mean |relative error| on the fitted runs: "
                  f"{info['train_mean_abs_rel_error']:.2%}."]  # fmt: skip
        for h in info.get("heldout", []):
            lines.append(
                f"Held out N={h['n_params']:.3g}, D={h['tokens']:.3g}: loss {h['loss']:.4f}, "
                f"predicted {h['predicted']:.4f} (relative error {h['rel_error']:+.2%})."
            )
        lines += ["", *_verdict_lines(info["identification"])]
        if info.get("bootstrap_error"):
            lines.append(f"**Bootstrap failed:** {info['bootstrap_error']}.")
        lines += ["", "![fit](chinchilla.png)", ""]
    if "data_constrained" in laws:
        check_table(df, ("n_params", "tokens", "unique_tokens", "loss"))
        base = fits.get("chinchilla", {}).get("params")
        dc = DataConstrainedLaw(base=base).fit(
            _col(df, "n_params"), _col(df, "tokens"), _col(df, "unique_tokens"), _col(df, "loss")
        )
        if n_boot > 0:
            try:
                dc.bootstrap(n_boot=n_boot, random_state=random_state, level=ci_level)
            except ScalingLawFitError as e:
                fits["data_constrained_bootstrap_error"] = str(e)
        ident = dc.identify().to_dict()
        fits["data_constrained"] = {**dc.to_dict(draws=False), "warnings": ident["reasons"]}
        lines += ["## Data-constrained", "", f"| param | value | {pct} interval |",
                  "|---|---|---|"]  # fmt: skip
        for k, v in dc.params_.items():
            lines.append(f"| {k} | {v:.4g} | {_ci_cell(getattr(dc, 'params_ci_', {}).get(k))} |")
        lines += ["", *_verdict_lines(ident), ""]
    if "mixing" in laws:
        mlaw, info = fit_mixing(
            df, target=mixing_target, random_state=random_state, n_boot=n_boot,
            ci_level=ci_level,
        )  # fmt: skip
        plot_mixing(mlaw, df, mixing_target, out / "mixing.png")
        fits["mixing"] = info
        lines += ["## Data-mixing law", "",
                  f"Mean |relative error| on the runs: {info['train_mean_abs_rel_error']:.2%}.",
                  "", *_verdict_lines(info["identification"]), "",
                  "![mixing](mixing.png)", ""]  # fmt: skip
    if "filtering" in laws:
        _pools, info = fit_filtering(
            df, metric=filtering_metric, n_boot=n_boot, random_state=random_state,
            ci_level=ci_level,
        )  # fmt: skip
        fits["filtering"] = info
        lines += [
            "## Data filtering (per keep fraction)",
            "",
            "| keep | pool tokens | a | b | d | tau | identified |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, p in info["pools"].items():
            ok = (
                "yes"
                if p["identification"]["identified"]
                else "no: " + "; ".join(p["identification"]["reasons"])
            )
            lines.append(f"| {float(k):g} | {p['size']:.3g} | {p['a']:.4g} | {p['b']:.4g} | "
                         f"{p['d']:.4g} | {p['tau']:.3g} | {ok} |")  # fmt: skip
        lines.append("")
    write_json_atomic(out / "fits.json", fits)
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return fits


def load_fits(path: str | Path) -> dict[str, Any]:
    """Law objects from a ``fits.json``: ``chinchilla`` (with its intervals, bootstrap draws,
    identification and runs' range), ``mixing`` (with its identification),
    ``filtering_pools``."""
    path = Path(path)
    if path.is_dir():
        path = path / "fits.json"
    if not path.is_file():
        raise FileNotFoundError(f"no fits.json at {path}; run `curamix fit` first")
    raw = json.loads(path.read_text())
    out: dict[str, Any] = {}
    missing = Identification(
        False, (f"{path} has no identification record (refit with this curamix version)",), 0, 0
    )
    if "chinchilla" in raw:
        law = ChinchillaLaw.from_dict(raw["chinchilla"])
        if not hasattr(law, "identification_"):
            law.identification_ = missing
        out["chinchilla"] = law
    if "mixing" in raw:
        mlaw = mixing_from_params(raw["mixing"]["params"])
        ident = raw["mixing"].get("identification")
        mlaw.identification_ = Identification.from_dict(ident) if ident else missing
        out["mixing"] = mlaw
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
