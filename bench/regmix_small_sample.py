"""RegMix at the run counts people can afford: 8 to 512 proxy runs, on RegMix's real runs.

Data: ``../shared/data/scaling/regmix`` (sail-sg/regmix ``data/``): 512 training mixtures with
their 1M-parameter losses, held-out mixtures with 1M and 60M losses (the same 256 mixtures)
and 1B losses (64 mixtures); the target is the Pile-CC validation loss, as in the paper.

For each run count n in --counts, --subsets random subsets of the 512 training runs (one at
512): fit :class:`curamix.mixers.RegMixMixer` (regressor chosen by run count, cross-validated,
with its visible fallback) and, for contrast, the old default (the reference's
gradient-boosted trees with scikit-learn's ``min_samples_leaf=20``, which cannot split below
40 runs). Printed, as markdown tables:

1. ranking: the mixer's regressor, its cross-validated Spearman, how many subsets fell back,
   and the Spearman of its predictions against the held-out 1M, 60M and 1B losses (the old
   regressor's next to it);
2. search: the target loss of the held-out run nearest (L1 over the weights) to each mixture:
   the mixer's (after any fallback), its regressor's top-k proposal, the old regressor's
   top-k, the sampler's prior mean (the mean of the candidates), and the best training run of
   the subset (its own 1M loss in brackets); at 1M and 60M the nearest of the 256 held-out
   mixtures, at 1B of the 64. Lower is better;
3. with --by-kind, the evidence for the rule: held-out Spearman of each regressor kind at
   each count (no cross-validation, no search).

Candidates and top-k follow the pipeline's RegMix defaults (``mixers/search.py``: 20k, 32).
Usage: ``python bench/regmix_small_sample.py [--by-kind]`` (about 1 minute on 2 cores; 2 with
--by-kind). Results: docs/mixers.md, "RegMix and TiKMiX-M at small run counts".
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

TARGET = "metric/the_pile_pile_cc_val_loss"
SCALES = ("1m", "60m", "1B")


def load(data: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    from curamix.scaling_laws.data import read_regmix

    R, y, cols = read_regmix(data / "train_mixture_1m.csv", data / "train_pile_loss_1m.csv", TARGET)
    tests = {}
    for s in SCALES:
        Rt, yt, _ = read_regmix(
            data / f"test_mixture_{s}.csv", data / f"test_pile_loss_{s}.csv", TARGET, cols
        )
        tests[s] = (Rt / Rt.sum(1, keepdims=True), yt)
    # the files' weights are rounded (rows sum to 1 within 0.004): renormalise once, quietly
    return R / R.sum(1, keepdims=True), y, cols, tests


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) <= 1e-12 * max(1.0, float(np.abs(a).max())):
        return 0.0  # constant predictions rank nothing
    return float(spearmanr(a, b)[0])


def nearest_losses(w: np.ndarray, tests: dict) -> tuple[list[float], float]:
    """Target loss of the held-out run nearest to ``w`` (L1) at each scale, and the L1
    distance to the nearest 1M/60M mixture."""
    out = []
    for s in SCALES:
        Rt, yt = tests[s]
        out.append(float(yt[np.argmin(np.abs(Rt - w).sum(1))]))
    return out, float(np.abs(tests["1m"][0] - w).sum(1).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    repo = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", type=Path, default=repo.parent / "shared/data/scaling/regmix")
    ap.add_argument("--counts", default="8,16,32,64,128,512")
    ap.add_argument("--subsets", type=int, default=10)
    ap.add_argument("--n-candidates", type=int, default=20_000)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--by-kind", action="store_true", help="also the rule's evidence table")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from curamix.mixers import (
        DomainStats,
        RegMixMixer,
        RegressorFallbackWarning,
        dirichlet_mixtures,
        epoch_caps,
        make_regressor,
        mixture_regressor,
    )
    from curamix.mixers.regressor import fit_estimator
    from curamix.scaling_laws.data import REGMIX_PILE_PRIOR

    t0 = time.time()
    R, y, cols, tests = load(args.data)
    stats = DomainStats({c: REGMIX_PILE_PRIOR[c] for c in cols})
    counts = [int(c) for c in args.counts.split(",")]
    rng = np.random.default_rng(args.seed)
    subsets = {
        n: [rng.choice(len(R), n, replace=False) for _ in range(args.subsets if n < len(R) else 1)]
        for n in counts
    }
    rank_rows, search_rows = [], []
    for n in counts:
        rec: dict[str, list] = {k: [] for k in (
            "kind", "cv", "fb", "rho", "rho_old", "old_const", "mix", "prop", "old", "prior",
            "best", "best_own", "dist",
        )}  # fmt: skip
        for j, idx in enumerate(subsets[n]):
            Rs, ys = R[idx], y[idx]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RegressorFallbackWarning)
                m = RegMixMixer(
                    n_candidates=args.n_candidates, top_k=args.top_k, random_state=j
                ).fit(stats, Rs, ys, target=TARGET)
            fell = any(issubclass(c.category, RegressorFallbackWarning) for c in caught)
            assert fell == (m.fallback_ is not None)
            rec["kind"].append(m.regressor_fit_.kind)
            rec["cv"].append(m.cv_spearman_)
            rec["fb"].append(fell)
            rec["rho"].append([spearman(m.predict(tests[s][0]), tests[s][1]) for s in SCALES])
            # the old default, on the mixer's own candidates (same sampler, same seed stream)
            with threadpool_limits(limits=1):
                old = mixture_regressor(random_state=j).fit(Rs, ys)
                cand = dirichlet_mixtures(
                    stats.shares(), args.n_candidates, np.random.default_rng([j, 2]),
                    temperature=m.temperature, caps=epoch_caps(stats, m.max_epochs),
                )  # fmt: skip
                po = old.predict(cand)
                rec["rho_old"].append([spearman(old.predict(tests[s][0]), tests[s][1])
                                       for s in SCALES])  # fmt: skip
            rec["old_const"].append(bool(np.ptp(po) == 0))
            old_w = cand[np.argsort(po, kind="stable")[: args.top_k]].mean(0)
            nl, dist = nearest_losses(m.weights_array(), tests)
            rec["mix"].append(nl)
            rec["dist"].append(dist)
            rec["prop"].append(nearest_losses(np.array(list(m.proposal_.values())), tests)[0])
            rec["old"].append(nearest_losses(old_w, tests)[0])
            rec["prior"].append(nearest_losses(cand.mean(0), tests)[0])
            b = int(np.argmin(ys))
            rec["best"].append(nearest_losses(Rs[b], tests)[0])
            rec["best_own"].append(float(ys[b]))
        a = {k: np.array(v) for k, v in rec.items()}
        k = len(subsets[n])
        kinds = "/".join(sorted(set(rec["kind"])))
        old_rho = (
            "constant" if a["old_const"].all()
            else " / ".join(f"{x:.3f}" for x in a["rho_old"].mean(0))
        )  # fmt: skip
        rank_rows.append(
            f"| {n} | {kinds} | {a['cv'].mean():.3f} ({a['cv'].min():.2f}) | {a['fb'].sum()}/{k} | "
            + " / ".join(f"{x:.3f}" for x in a["rho"].mean(0))
            + f" ({a['rho'][:, 0].min():.2f}) | {old_rho} |"
        )

        def cell(key: str, a: dict[str, np.ndarray] = a) -> str:
            return " / ".join(f"{x:.3f}" for x in a[key].mean(0))

        beat_prior = int((a["mix"][:, 0] < a["prior"][:, 0]).sum())
        beat_best = int((a["mix"][:, 0] <= a["best"][:, 0]).sum())
        search_rows.append(
            f"| {n} | {cell('mix')} | {cell('prop')} | {cell('old')} | {cell('prior')} | "
            f"{cell('best')} ({a['best_own'].mean():.3f}) | {a['dist'].mean():.2f} | "
            f"{beat_prior}/{k}, {beat_best}/{k} |"
        )
        print(f"  n={n}: {time.time() - t0:.0f} s", flush=True)

    print("\nRanking: mean over subsets (min in brackets); Spearman vs held-out 1M / 60M / 1B")
    print("| runs | regressor | CV Spearman | fallbacks | held-out Spearman | old regressor |")
    print("|---:|---|---|---|---|---|")
    print("\n".join(rank_rows))
    print("\nSearch: target loss of the nearest held-out run, 1M / 60M / 1B (mean over subsets)")
    print(
        "| runs | mixer (after fallback) | regressor's proposal | old regressor | prior mean | "
        "best run seen (own 1M) | L1 to nearest | mixer < prior, <= best seen (1M) |"
    )
    print("|---:|---|---|---|---|---|---:|---|")
    print("\n".join(search_rows))

    if args.by_kind:
        print("\nRule evidence: held-out Spearman 1M / 60M / 1B by regressor kind (mean)")
        print("| runs | ridge on sqrt(w) | GP on sqrt(w) | trees, leaf min(20, n//10) | "
              "trees, leaf 20 (old) |")  # fmt: skip
        print("|---:|---|---|---|---|")
        for n in counts:
            cells = []
            for kind in ("ridge", "gp", "hgb", "old"):
                rhos = []
                for j, idx in enumerate(subsets[n]):
                    est = (
                        mixture_regressor(random_state=j) if kind == "old"
                        else make_regressor(kind, n, random_state=j)
                    )  # fmt: skip
                    fit_estimator(est, R[idx], y[idx])
                    with threadpool_limits(limits=1):
                        rhos.append([spearman(est.predict(tests[s][0]), tests[s][1])
                                     for s in SCALES])  # fmt: skip
                r = np.array(rhos)
                cells.append(" / ".join(f"{x:.3f}" for x in r.mean(0)) + f" ({r[:, 0].min():.2f})")
            print(f"| {n} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
