"""Coresets at 90% pruning vs random selection, on a linear probe (issue 5).

On ../shared/data: a seeded uniform slice of the 11-domain corpus (natural domain imbalance:
code and science are ~2% of the documents, commonsense ~21%) is embedded with the bundled
all-MiniLM-L6-v2 (first ``--max-seq-length`` tokens; vectors cached as .npy under
``--cache``) and split once into a pool and held-out documents. From the pool, each method
keeps 10% (``--keep``):

- ccs: Coverage-centric coreset selection (Zheng et al. 2023) on the SSL-prototype score,
  beta 0.3, 50 strata;
- prototypes: the hardest by SSL-prototype score (Sorscher et al. 2022; ``prototypes_easy``
  keeps the easiest);
- kcenter: k-center greedy over the embeddings;
- facility_location: facility location (max(0, cosine) similarity) by stochastic greedy,
  epsilon 0.01 (Mirzasoleiman et al. 2015 / CRAIG 2020);
- dbp: density-based pruning (Abbas et al. 2024) with the reference code's defaults
  (temperature 0.5, 20 nearest centroids, cluster balance 0.5, random within clusters) on the
  same number of k-means clusters;
- random: uniform.

The probe: a logistic-regression domain classifier (C chosen once by 5-fold CV on the whole
pool) trained on the coreset's embeddings and tested on the held-out documents: accuracy and balanced accuracy (mean per-domain recall, so
the small domains count as much as the large ones). 3 seeds (the selection's seed: k-means,
k-center start, CCS and random sampling; the pool/held-out split is fixed). Same kernels as
the ``coreset`` stage (:mod:`curamix.selectors.coreset`).

    .venv/bin/python bench/coreset_probe.py                 # ~6000 docs, embeds once (~5 min)
    .venv/bin/python bench/coreset_probe.py --n-docs 2000   # quicker
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

SHARED = Path(
    os.environ.get("CURAMIX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ccs", "prototypes", "prototypes_easy", "kcenter", "facility_location", "dbp", "random")
"""Main rows; ``--extra-betas`` adds ``ccs@<beta>`` rows (sensitivity to CCS's drop share)."""


def load_slice(data: Path, n_docs: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """A seeded uniform sample of ``n_docs`` corpus documents: (ids, domains, texts), by id."""
    rows: list[tuple[str, str, str]] = []
    for path in sorted((data / "corpus").glob("*.jsonl.gz")):
        domain = path.name.split(".")[0]
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                rows.append((r["id"], domain, r["text"]))
    rows.sort()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=min(n_docs, len(rows)), replace=False))
    ids, domains, texts = zip(*(rows[i] for i in pick), strict=True)
    return list(ids), list(domains), list(texts)


def embeddings(args: argparse.Namespace, ids: list[str], texts: list[str]) -> np.ndarray:
    """The slice's vectors, from the cache when it holds this exact slice."""
    from curamix.embeddings.embed import embed_texts

    tag = f"n{args.n_docs}-s{args.slice_seed}-len{args.max_seq_length}"
    cache = Path(args.cache)
    vec_path, ids_path = cache / f"vectors-{tag}.npy", cache / f"ids-{tag}.json"
    if vec_path.is_file() and ids_path.is_file() and json.loads(ids_path.read_text()) == ids:
        print(f"embeddings: cached {vec_path}")
        return np.load(vec_path)
    t = time.perf_counter()
    vec = embed_texts(texts, device="cpu", max_seq_length=args.max_seq_length, batch_size=64)
    dt = time.perf_counter() - t
    print(f"embeddings: {len(texts)} docs in {dt:.0f} s ({len(texts) / dt:.1f} docs/s)")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(vec_path, vec)
    ids_path.write_text(json.dumps(ids))
    return vec


def select(method: str, x: np.ndarray, k: int, seed: int, n_clusters: int, beta: float):
    from curamix.selectors.coreset import prototype_scores, select_coreset

    if "@" in method:  # ccs@0.1: CCS with another beta
        method, beta = method.split("@")[0], float(method.split("@")[1])
    base = method.removesuffix("_easy")
    scores = prototype_scores(x, n_clusters, seed=seed) if base in ("ccs", "prototypes") else None
    return select_coreset(
        base,  # type: ignore[arg-type]
        k,
        vectors=x,
        scores=scores,
        random_state=seed,
        beta=beta,
        keep_hard=not method.endswith("_easy"),
        n_clusters=n_clusters,
    )


def choose_c(x: np.ndarray, y: np.ndarray, grid=(0.1, 1.0, 10.0, 100.0)) -> float:
    """The probe's C: best 5-fold CV accuracy on the whole pool (never the held-out docs),
    chosen once and used for every method."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    cv = {
        c: cross_val_score(LogisticRegression(C=c, max_iter=2000), x, y, cv=5).mean() for c in grid
    }
    print(
        "probe C by 5-fold CV on the pool: " + ", ".join(f"{c:g}: {a:.3f}" for c, a in cv.items())
    )
    return max(cv, key=lambda c: (cv[c], -c))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--n-docs", type=int, default=6000)
    ap.add_argument("--slice-seed", type=int, default=0)
    ap.add_argument("--heldout", type=float, default=0.25)
    ap.add_argument("--keep", type=float, default=0.1, help="kept share (0.1 = 90%% pruning)")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--beta", type=float, default=0.3)
    ap.add_argument("--extra-betas", type=float, nargs="*", default=[0.0, 0.1])
    ap.add_argument("--n-clusters", type=int, default=None, help="default ~sqrt(n/2)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--C", type=float, default=None, help="probe regularization; default: 5-fold CV on the pool"
    )
    ap.add_argument("--cache", default=str(ROOT / "runs" / "bench" / "coreset_probe"))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    from curamix.pipelines.semdedup import default_clusters
    from curamix.selectors.coreset import linear_probe

    t0 = time.perf_counter()
    ids, domains, texts = load_slice(Path(args.data), args.n_docs, args.slice_seed)
    vec = embeddings(args, ids, texts)
    y = np.asarray(domains)
    rng = np.random.default_rng(12345)
    test = rng.random(len(ids)) < args.heldout
    px, py, tx, ty = vec[~test], y[~test], vec[test], y[test]
    k = int(args.keep * len(px))
    n_clusters = args.n_clusters or default_clusters(len(px))
    names, counts = np.unique(py, return_counts=True)
    print(
        f"pool {len(px)} docs, held-out {len(tx)}, keep k={k} ({1 - args.keep:.0%} pruning), "
        f"{n_clusters} k-means clusters; pool domains: "
        + ", ".join(f"{d} {c}" for d, c in zip(names, counts, strict=True))
    )
    C = args.C if args.C is not None else choose_c(px, py)
    print(f"probe: logistic regression, C={C:g}")
    full = linear_probe(px, py, tx, ty, C=C)
    methods = list(METHODS) + [f"ccs@{b:g}" for b in args.extra_betas]
    res: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in args.seeds:
        for m in methods:
            t = time.perf_counter()
            sel = select(m, px, k, seed, n_clusters, args.beta)
            r = linear_probe(px[sel], py[sel], tx, ty, C=C)
            dom = np.unique(py[sel], return_counts=True)
            r["domains_covered"] = len(dom[0])
            r["smallest_domain"] = int(dom[1].min()) if len(dom[1]) == len(names) else 0
            r["seconds"] = time.perf_counter() - t
            res[m].append(r)

    def ms(m: str, key: str) -> str:
        v = np.array([r[key] for r in res[m]])
        return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"

    print()
    print(f"| method (keep {k} of {len(px)}) | accuracy | balanced accuracy | "
          "docs of the rarest domain |")  # fmt: skip
    print("|---|---|---|---|")
    for m in methods:
        rare = np.mean([r["smallest_domain"] for r in res[m]])
        print(f"| {m} | {ms(m, 'accuracy')} | {ms(m, 'balanced_accuracy')} | {rare:.1f} |")
    print(
        f"| full pool ({len(px)}) | {full['accuracy']:.3f} | {full['balanced_accuracy']:.3f} | "
        f"{int(counts.min())} |"
    )
    print(
        f"\n{len(args.seeds)} seeds, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {time.perf_counter() - t0:.0f} s"
    )
    if args.out:
        out = {"args": vars(args), "C": C, "full": full, "results": res}
        Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
