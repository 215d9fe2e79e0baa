"""MinHash near-dup dedup: curamix vs datatrove vs datasketch, same corpus, same 2 cores, one run.

    .venv/bin/python bench/dedup.py [--data ../shared/data] [--scale 10] [--only curamix,...]

Corpus: ``corpus_with_dups/mixed_20k.jsonl.gz`` with its labels (``--scale 1``), or a corpus
``--scale`` times larger made by the scorer's generator (``build_near_dups.py build``) from a
pool of the real corpus plus word-shuffled copies of it (a shuffled copy shares no 5-gram with
its source, so the pool has no duplicates the generator did not inject).

Each method runs in its own process; the parent samples the resident memory of that process
tree (JVM and Python workers included) for the peak. Timed: from reading the input to having
every document's duplicate cluster.

- curamix: ingest (timed separately, and shown) then the dedup stage with its defaults
  (threshold 0.8, 128 permutations, verified edges, ``engine: auto``: in the driver process up
  to 100k documents, Spark local[2] above); ``curamix-spark`` / ``curamix-local``: the stage
  with its engine forced; ``curamix-matched``: auto at datatrove's effective threshold (where
  its 14 x 8 S-curve crosses 1/2: 0.72), to compare F1 at one operating point;
  ``curamix-1core``: the bare kernels (``minhash_dedup``, no exact pass, no output) on 1 core.
- datatrove: its MinHash pipeline (signature, buckets, cluster, filter) with
  LocalPipelineExecutor, 2 workers, default MinhashConfig (5-grams, 14 bands x 8 hashes).
- datasketch: MinHashLSH(threshold=0.8, num_perm=128), word 5-gram shingles of the
  lower-cased text, one process (it has no parallel mode); clusters by union-find over
  query results.

Every method's clusters are scored with the labels' scorer: pairwise precision/recall/F1.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

METHODS = (
    "curamix",
    "curamix-spark",
    "curamix-local",
    "curamix-matched",
    "curamix-1core",
    "datatrove",
    "datasketch",
)
DATATROVE_MIDPOINT = round((1 / 14) ** (1 / 8), 2)
"""Where datatrove's default 14 x 8 LSH S-curve crosses 1/2: its effective threshold (0.72)."""


# ----------------------------------------------------------------------------- memory
def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc)."""
    parent: dict[int, int] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as fh:
                    parent[int(p)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = {root}, [root]
    while frontier:
        cur = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == cur and c not in tree]
        tree.update(kids)
        frontier += kids
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_child(method: str, args: argparse.Namespace, work: Path) -> dict:
    """Run one method in a subprocess; return its result dict plus peak memory."""
    out = work / f"{method}.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--work",
        str(work),
        "--corpus",
        args.corpus,
    ]
    proc = subprocess.Popen(cmd)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join()
    if rc != 0:
        raise SystemExit(f"{method} failed with exit code {rc}")
    res = json.loads(out.read_text())
    res["peak_rss_gib"] = round(peak / 2**30, 2)
    return res


# ----------------------------------------------------------------------------- corpus
def read_jsonl(path: str | Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(x) for x in fh]


def make_corpus(data: Path, scale: int, work: Path) -> tuple[Path, Path]:
    """(corpus, labels): the shared 20k set, or a ``scale`` x larger one from the generator."""
    if scale == 1:
        folder = data / "corpus_with_dups"
        return folder / "mixed_20k.jsonl.gz", folder / "labels.jsonl.gz"
    out = work / f"dups_x{scale}"
    if (out / "labels.jsonl.gz").exists():
        return out / f"mixed_{20 * scale}k.jsonl.gz", out / "labels.jsonl.gz"
    pool = work / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    copies = max(1, -(-16_000 * scale // 40_000))  # pool large enough for the originals
    for f in sorted((data / "corpus").glob("*.jsonl.gz")):
        rows = read_jsonl(f)
        with gzip.open(pool / f.name, "wt", encoding="utf-8") as fh:
            for c in range(copies):
                for r in rows:
                    words = r["text"].split()
                    if c:
                        rng.shuffle(words)
                    text = r["text"] if c == 0 else " ".join(words)
                    fh.write(
                        json.dumps({"id": f"{r['id']}~{c}", "text": text, "source": f.name}) + "\n"
                    )
    subprocess.run(
        [
            sys.executable,
            str(data / "build_near_dups.py"),
            "build",
            *sorted(str(p) for p in pool.glob("*.jsonl.gz")),
            "--out",
            str(out),
            "--name",
            f"mixed_{20 * scale}k",
            "--n-originals",
            str(16_000 * scale),
            "--n-dups",
            str(4_000 * scale),
            "--max-chars",
            "6000",
            "--seed",
            "0",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(pool)
    return out / f"mixed_{20 * scale}k.jsonl.gz", out / "labels.jsonl.gz"


# ----------------------------------------------------------------------------- methods
def bench_curamix(corpus: str, work: Path, threshold: float = 0.8, engine: str = "auto") -> dict:
    import pyarrow.parquet as pq

    from curamix.config import build_config
    from curamix.pipelines.ingest import run_ingest
    from curamix.pipelines.session import get_spark
    from curamix.runner import run_stage

    run = work / "curamix-run"
    shutil.rmtree(run, ignore_errors=True)
    cfg = build_config(
        {
            "run_dir": str(run),
            "spark": {"master": "local[2]", "driver_memory": "8g"},
            "stages": ["ingest", "dedup"],
            "ingest": {"inputs": [{"path": corpus, "domain_field": "source"}]},
            "dedup": {"max_removal_rate": 1.0, "threshold": threshold, "engine": engine},
        },
        use_env=False,
    )
    t = time.perf_counter()
    spark = get_spark(cfg.spark)
    start = time.perf_counter() - t
    t = time.perf_counter()
    ingest = run_ingest(spark, cfg)
    t_ingest = time.perf_counter() - t
    t = time.perf_counter()
    res = run_stage(spark, cfg, "dedup", upstream={"ingest": ingest})
    t_dedup = time.perf_counter() - t
    led = pq.read_table(res.path / "ledger", columns=["id", "decision", "ref_id"]).to_pylist()
    clusters = {r["id"]: r["ref_id"] if r["decision"] == "removed" else r["id"] for r in led}
    return {
        "seconds": t_dedup,
        "ingest_seconds": t_ingest,
        "spark_start_seconds": start,
        "stage_timings": res.manifest["timings"],
        "engine": res.manifest["engine"],
        "lsh": res.manifest["lsh"],
        "clusters": clusters,
    }


def bench_curamix_1core(corpus: str, work: Path) -> dict:
    from curamix.filters.dedup import minhash_dedup

    t = time.perf_counter()
    rows = read_jsonl(corpus)
    ids = [r["id"] for r in rows]
    rep, _ = minhash_dedup(ids, [r["text"] for r in rows])
    dt = time.perf_counter() - t
    return {"seconds": dt, "clusters": {i: ids[k] for i, k in zip(ids, rep.tolist(), strict=True)}}


def bench_datatrove(corpus: str, work: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    base = work / "datatrove"
    shutil.rmtree(base, ignore_errors=True)
    # Two input shards, so the two workers share the reading and signing.
    shards = base / "input"
    shards.mkdir(parents=True)
    rows = read_jsonl(corpus)
    for k in range(2):
        with open(shards / f"shard{k}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows[k::2])
    del rows
    cfg = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes
    logs = str(base / "logs")
    t = time.perf_counter()
    LocalPipelineExecutor(
        [JsonlReader(str(shards)), MinhashDedupSignature(str(base / "sigs"), config=cfg)],
        tasks=2,
        workers=2,
        logging_dir=logs + "/1",
    ).run()
    LocalPipelineExecutor(
        [MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=cfg)],
        tasks=cfg.num_buckets,
        workers=2,
        logging_dir=logs + "/2",
    ).run()
    LocalPipelineExecutor(
        [
            MinhashDedupCluster(
                str(base / "buckets"), str(base / "remove"), config=cfg, save_cluster_id=True
            )
        ],
        tasks=1,
        logging_dir=logs + "/3",
    ).run()
    LocalPipelineExecutor(
        [
            JsonlReader(str(shards)),
            MinhashDedupFilter(
                str(base / "remove"),
                load_cluster_ids=True,
                exclusion_writer=JsonlWriter(str(base / "removed"), compression=None),
            ),
            JsonlWriter(str(base / "kept"), compression=None),
        ],
        tasks=2,
        workers=2,
        logging_dir=logs + "/4",
    ).run()
    dt = time.perf_counter() - t
    clusters = {}
    for folder in ("kept", "removed"):
        for f in sorted((base / folder).glob("*.jsonl")):
            for r in read_jsonl(f):
                cid = r.get("metadata", {}).get("minhash_cluster_id", -1)
                clusters[r["id"]] = f"c{cid}" if cid != -1 else r["id"]
    return {"seconds": dt, "clusters": clusters}


_WORD = re.compile(r"\w+")


def bench_datasketch(corpus: str, work: Path) -> dict:
    from datasketch import MinHash, MinHashLSH

    t = time.perf_counter()
    rows = read_jsonl(corpus)
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, r in enumerate(rows):
        words = _WORD.findall(r["text"].lower())
        sh = {" ".join(words[j : j + 5]) for j in range(max(1, len(words) - 4))}
        m = MinHash(num_perm=128)
        m.update_batch([s.encode("utf-8") for s in sh])
        for j in lsh.query(m):
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
        lsh.insert(i, m)
    dt = time.perf_counter() - t
    return {"seconds": dt, "clusters": {r["id"]: rows[find(i)]["id"] for i, r in enumerate(rows)}}


def score(data: Path, labels: Path, clusters: dict, work: Path) -> dict:
    pred = work / "pred.jsonl"
    pred.write_text(
        "".join(json.dumps({"id": i, "cluster": c}) + "\n" for i, c in clusters.items())
    )
    out = subprocess.run(
        [
            sys.executable,
            str(data / "build_near_dups.py"),
            "score",
            "--labels",
            str(labels),
            "--pred",
            str(pred),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def child(method: str, corpus: str, work: Path) -> None:
    fn = {
        "curamix": bench_curamix,
        "curamix-spark": lambda c, w: bench_curamix(c, w, engine="spark"),
        "curamix-local": lambda c, w: bench_curamix(c, w, engine="local"),
        "curamix-matched": lambda c, w: bench_curamix(c, w, DATATROVE_MIDPOINT),
        "curamix-1core": bench_curamix_1core,
        "datatrove": bench_datatrove,
        "datasketch": bench_datasketch,
    }[method]
    res = fn(corpus, work)
    (work / f"{method}.json").write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    ap.add_argument("--scale", type=int, default=1, help="corpus size in multiples of 20k docs")
    ap.add_argument("--only", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.corpus, Path(args.work))
        return
    data = Path(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="curamix-bench-dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, labels = make_corpus(data, args.scale, work)
    args.corpus = str(corpus)
    with gzip.open(corpus) as fh:
        n_docs = sum(1 for _ in fh)
    print(f"machine: {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"corpus: {corpus} ({n_docs} docs)")
    rows = {}
    for method in args.only.split(","):
        res = run_child(method, args, work)
        s = score(data, labels, res.pop("clusters"), work)
        res.update(
            {k: s[k] for k in ("precision", "recall", "f1")},
            recall_by_kind=s["pair_recall_by_kind"],
        )
        res["docs_per_s"] = n_docs / res["seconds"]
        rows[method] = res
        extra = ""
        if method.startswith("curamix") and "ingest_seconds" in res:
            extra = (
                f" (engine {res['engine']}; ingest {res['ingest_seconds']:.1f} s and Spark start"
                f" {res['spark_start_seconds']:.1f} s not included)"
            )
        print(
            f"{method:14s} {res['seconds']:8.1f} s {res['docs_per_s']:9.0f} docs/s  P {res['precision']:.4f}"
            f" R {res['recall']:.4f} F1 {res['f1']:.4f}  peak RSS {res['peak_rss_gib']:.2f} GiB{extra}",
            flush=True,
        )
    for ours in (m for m in rows if m.startswith("curamix")):
        for peer in ("datatrove", "datasketch"):
            if peer in rows:
                r = rows[ours]
                line = f"{ours} / {peer}: {r['docs_per_s'] / rows[peer]['docs_per_s']:.2f}x docs/s"
                if "ingest_seconds" in r:
                    end = r["seconds"] + r["ingest_seconds"]
                    line += f" ({rows[peer]['seconds'] / end:.2f}x with ingest)"
                print(line)
    kinds = sorted({k for r in rows.values() for k in r["recall_by_kind"]})
    print("\npair recall by kind: " + " ".join(f"{m:>13s}" for m in rows))
    for k in kinds:
        print(
            f"  {k:18s} " + " ".join(f"{rows[m]['recall_by_kind'].get(k, 0):13.4f}" for m in rows)
        )
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\nresults: {work / 'results.json'}")


if __name__ == "__main__":
    main()
