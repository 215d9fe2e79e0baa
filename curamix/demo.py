"""A synthetic, seeded multi-domain corpus that exercises every stage of the pipeline.

The demo corpus is SYNTHETIC: template-generated text in eight domains with distinct
vocabularies and styles (news, science, code, recipes, legal, forum, math, sports), short
and long documents, injected exact and near duplicates, a small benchmark ("demobench")
whose test items partly leak into the pool (for decontamination), and a few bad records of
every kind ingest quarantines. It is written in every input format ingest reads (JSONL,
``.jsonl.gz``, ``.jsonl.zst``, Parquet, a folder of ``.txt``). The same seed gives the same
bytes. Ground truth (duplicate pairs, leaked items, bad records) goes to ``truth/``.
The word lists and sentence templates are data, in ``demo_data/templates.json``; this module
holds the document shapes and the writer. Real corpora are given to curamix by path or
dataset name, never generated.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- vocabularies

_TEMPLATES = json.loads(
    resources.files("curamix").joinpath("demo_data", "templates.json").read_text(encoding="utf-8")
)
W: dict[str, list[str]] = _TEMPLATES["words"]
"""Word lists by slot name (``city``, ``news_topic``, ...), from ``demo_data/templates.json``."""
SENTENCES: dict[str, list[str]] = _TEMPLATES["sentences"]
"""Sentence templates by domain (news, science, legal, forum, sports): see :func:`fill`."""
_SLOT = re.compile(r"\{([^{}]+)\}")


def pick(rng: random.Random, key: str) -> str:
    """A word of the list ``W[key]``."""
    return rng.choice(W[key])


def fill(rng: random.Random, template: str) -> str:
    """Fill a sentence template's slots left to right: ``{key}`` with a word of ``W[key]``,
    ``{lo-hi}`` with an integer from ``lo`` to ``hi``, ``{a|b|c}`` with one of the
    alternatives."""

    def slot(m: re.Match[str]) -> str:
        s = m.group(1)
        if "|" in s:
            return rng.choice(s.split("|"))
        lo, dash, hi = s.partition("-")
        if dash and lo.isdigit() and hi.isdigit():
            return str(rng.randint(int(lo), int(hi)))
        return pick(rng, s)

    return _SLOT.sub(slot, template)


def _sentences(rng: random.Random, templates: list[str], n: int) -> list[str]:
    return [fill(rng, rng.choice(templates)) for _ in range(n)]


def _paragraphs(rng: random.Random, templates: list[str], n_sent: int) -> str:
    sents = _sentences(rng, templates, n_sent)
    paras, i = [], 0
    while i < len(sents):
        k = rng.randint(3, 6)
        paras.append(" ".join(sents[i : i + k]))
        i += k
    return "\n\n".join(paras)


def _length(rng: random.Random) -> int:
    """Sentence count: mostly medium, some one-liners, some long documents."""
    r = rng.random()
    if r < 0.2:
        return rng.randint(1, 3)
    if r < 0.9:
        return rng.randint(6, 25)
    return rng.randint(60, 160)


# --------------------------------------------------------------------------- domains


def _news(r: random.Random) -> str:
    head = f"{pick(r, 'org').capitalize()} {pick(r, 'news_verb')} {pick(r, 'news_topic')}".replace(
        "the ", "", 1
    )
    lead = (
        f"{pick(r, 'city').upper()}, {pick(r, 'month')} {r.randint(1, 28)} ({pick(r, 'agency')}) - "
    )
    return f"{head}\n\n{lead}{_paragraphs(r, SENTENCES['news'], _length(r))}"


def _science(r: random.Random) -> str:
    title = f"On {pick(r, 'sci_field')}: evidence from {pick(r, 'sci_method')}"
    n = _length(r)
    return f"{title}\n\nAbstract. {_paragraphs(r, SENTENCES['science'], max(2, n // 2))}\n\nResults. {_paragraphs(r, SENTENCES['science'], max(1, n - n // 2))}"


def _code(r: random.Random) -> str:
    funcs = []
    for _ in range(max(1, _length(r) // 4)):
        verb, noun, typ = pick(r, "code_verb"), pick(r, "code_noun"), pick(r, "code_type")
        arg = pick(r, "code_noun")
        body = ["    result = []", f"    for item in {arg}:"]
        for _ in range(r.randint(1, 4)):
            body.append(f"        if item.{pick(r, 'code_verb')}() > {r.randint(0, 64)}:")
            body.append(
                f"            result.append({pick(r, 'code_verb')}_{pick(r, 'code_noun')}(item))"
            )
        body.append(f"    return {typ}(result) if result else None")
        funcs.append(
            f"def {verb}_{noun}({arg}: list, limit: int = {r.randint(1, 512)}) -> {typ}:\n"
            f'    """{verb.capitalize()} the {noun} from {arg}."""\n' + "\n".join(body)
        )
    imports = "\n".join(
        sorted(
            {
                f"import {m}"
                for m in r.sample(["os", "re", "json", "math", "itertools", "hashlib", "typing"], 2)
            }
        )
    )
    return f"{imports}\n\n\n" + "\n\n\n".join(funcs) + "\n"


def _recipe(r: random.Random) -> str:
    dish = pick(r, "dish")
    ings = r.sample(W["ingredient"], r.randint(3, 9))
    lines = [
        f"{dish.title()}",
        "",
        f"Serves {r.randint(2, 8)}. Ready in {r.randint(15, 120)} minutes.",
        "",
        "Ingredients:",
    ]
    lines += [f"- {r.randint(1, 4)} {pick(r, 'unit')} {i}" for i in ings]
    lines += ["", "Instructions:"]
    for k in range(1, r.randint(3, 3 + _length(r) // 3) + 1):
        lines.append(
            f"{k}. {pick(r, 'cook_verb').capitalize()} the {r.choice(ings)} for {r.randint(1, 40)} minutes, then {pick(r, 'cook_verb')} the {r.choice(ings)}."
        )
    return "\n".join(lines)


def _legal(r: random.Random) -> str:
    n = _length(r)
    sections = []
    for s in range(1, max(1, n // 3) + 1):
        clauses = [
            f"({chr(96 + k)}) {m}"
            for k, m in enumerate(_sentences(r, SENTENCES["legal"], r.randint(1, 4)), start=1)
        ]
        sections.append(f"Section {s}. {pick(r, 'legal_term')}.\n" + "\n".join(clauses))
    return f"AGREEMENT No. {r.randint(1000, 9999)}\n\n" + "\n\n".join(sections)


def _forum(r: random.Random) -> str:
    topic = pick(r, "forum_topic")
    posts = [f"Re: {topic}"]
    for _ in range(max(1, _length(r) // 3)):
        user = pick(r, "forum_user")
        posts.append(
            f"{user} wrote:\n" + " ".join(_sentences(r, SENTENCES["forum"], r.randint(1, 4)))
        )
    return "\n\n".join(posts)


def _sports(r: random.Random) -> str:
    return f"Match report: {pick(r, 'team')} v {pick(r, 'team')}\n\n{_paragraphs(r, SENTENCES['sports'], _length(r))}"


def math_problem(r: random.Random) -> tuple[str, str, int]:
    """(question, worked solution, answer) with correct arithmetic."""
    p, q, item = pick(r, "person"), pick(r, "person"), pick(r, "item")
    a, b, c = r.randint(3, 60), r.randint(2, 30), r.randint(2, 9)
    kind = r.randrange(3)
    if kind == 0:
        ans = a + b - c
        qs = f"{p} has {a} {item}. {q} gives {p} {b} more, and {p} then loses {c}. How many {item} does {p} have now?"
        sol = f"{p} starts with {a} and gets {b}, so {a} + {b} = {a + b}. After losing {c}: {a + b} - {c} = {ans}."
    elif kind == 1:
        ans = a * c
        qs = f"A box holds {a} {item}. {p} buys {c} boxes. How many {item} does {p} buy?"
        sol = f"Each box holds {a}, and there are {c} boxes: {a} * {c} = {ans}."
    else:
        total = a * c
        ans = a
        qs = f"{p} shares {total} {item} equally among {c} friends. How many {item} does each friend get?"
        sol = f"{total} / {c} = {ans}."
    return qs, sol, ans


def _math(r: random.Random) -> str:
    qs, sol, ans = math_problem(r)
    return f"Problem: {qs}\nSolution: {sol} The answer is {ans}."


DOMAINS: dict[str, Callable[[random.Random], str]] = {
    "news": _news,
    "science": _science,
    "code": _code,
    "recipes": _recipe,
    "legal": _legal,
    "forum": _forum,
    "math": _math,
    "sports": _sports,
}
SHARES = {
    "news": 0.18,
    "science": 0.1,
    "code": 0.08,
    "recipes": 0.1,
    "legal": 0.08,
    "forum": 0.16,
    "math": 0.16,
    "sports": 0.14,
}


# --------------------------------------------------------------------------- duplicates


def near_copy(text: str, rate: float, r: random.Random, vocab: list[str]) -> str:
    """Edit each word with probability ``rate`` (substitute, delete or insert; at least one)."""
    words = text.split(" ")
    out: list[str] = []
    edited = False
    for w in words:
        if r.random() < rate:
            edited = True
            op = r.randrange(3)
            if op == 0:
                out.append(r.choice(vocab))
            elif op == 2:
                out += [w, r.choice(vocab)]
            continue
        out.append(w)
    if not edited:
        k = r.randrange(len(out))
        out[k] = r.choice(vocab)
    return " ".join(out)


# --------------------------------------------------------------------------- writer


@dataclass
class DemoCorpus:
    """What :func:`make_demo_corpus` wrote."""

    root: Path
    raw_dir: Path
    targets_dir: Path
    truth_dir: Path
    n_docs: dict[str, int] = field(default_factory=dict)
    n_bad: dict[str, int] = field(default_factory=dict)
    n_exact_dups: int = 0
    n_near_dups: int = 0
    n_leaked: int = 0

    @property
    def total_records(self) -> int:
        return sum(self.n_docs.values()) + sum(self.n_bad.values())


def _write_jsonl(path: Path, rows: list[Any]) -> None:
    """JSON Lines; rows that are ``bytes`` are written verbatim (for bad records)."""
    data = b"".join(
        (r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode()) + b"\n"
        for r in rows
    )
    if path.name.endswith(".gz"):
        with (
            open(path, "wb") as fh,
            gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz,
        ):
            gz.write(data)
    elif path.name.endswith(".zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
    else:
        path.write_bytes(data)


def make_demo_corpus(out: str | Path, n_docs: int = 4000, seed: int = 0) -> DemoCorpus:
    """Write the demo corpus under ``out`` (``raw/``, ``targets/``, ``truth/``); deterministic in
    ``seed``. ``n_docs`` counts clean pool documents before duplicates and bad records."""
    if n_docs < 100:
        raise ValueError(f"n_docs must be at least 100, got {n_docs}")
    out = Path(out)
    raw, targets, truth = out / "raw", out / "targets", out / "truth"
    for d in (raw, targets, truth):
        d.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    corpus = DemoCorpus(root=out, raw_dir=raw, targets_dir=targets, truth_dir=truth)
    vocab = sorted({w for ws in W.values() for s in ws for w in s.split()})

    docs: dict[str, list[dict[str, Any]]] = {}
    for domain, make in DOMAINS.items():
        n = max(10, round(n_docs * SHARES[domain]))
        docs[domain] = [{"id": f"{domain}-{i:06d}", "text": make(r)} for i in range(n)]

    # Benchmark (GSM8K-like) with train and test splits; a few test items leak into the pool.
    bench = []
    for i in range(300):
        qs, sol, ans = math_problem(r)
        bench.append(
            {
                "id": f"demobench-{i:04d}",
                "question": qs,
                "answer": f"{sol}\n#### {ans}",
                "text": f"Question: {qs}\nAnswer: {sol} #### {ans}",
            }
        )
    train, test = bench[:200], bench[200:]
    _write_jsonl(targets / "demobench_train.jsonl", train)
    _write_jsonl(targets / "demobench_test.jsonl", test)
    leaked = r.sample(test, 8)
    for k, item in enumerate(leaked):
        docs["math"].append(
            {
                "id": f"math-leak-{k:03d}",
                "text": f"Problem: {item['question']}\nSolution: {item['answer'].split(chr(10))[0]}",
            }
        )
    corpus.n_leaked = len(leaked)

    # Exact and near duplicates within and across domains.
    dup_rows: list[dict[str, Any]] = []
    originals = [(d, doc) for d in DOMAINS for doc in docs[d] if len(doc["text"].split()) >= 25]
    for k in range(max(10, n_docs // 25)):
        d, doc = r.choice(originals)
        target_domain = d if r.random() < 0.85 else r.choice(list(DOMAINS))
        kind = r.choice(["exact", "exact", "near@0.02", "near@0.05", "near@0.1"])
        text = (
            doc["text"]
            if kind == "exact"
            else near_copy(doc["text"], float(kind.split("@")[1]), r, vocab)
        )
        new = {"id": f"{target_domain}-dup-{k:05d}", "text": text}
        docs[target_domain].append(new)
        dup_rows.append(
            {
                "id": new["id"],
                "original_id": doc["id"],
                "kind": kind,
                "domain": target_domain,
                "original_domain": d,
            }
        )
        if kind == "exact":
            corpus.n_exact_dups += 1
        else:
            corpus.n_near_dups += 1
    for domain in docs:
        r.shuffle(docs[domain])

    # Extra fields, kept by ingest in the meta column.
    for i, doc in enumerate(docs["forum"]):
        doc["author"] = W["forum_user"][i % len(W["forum_user"])]
        doc["thread"] = {"board": "help", "n": i}
    for doc in docs["recipes"]:
        doc["cuisine"] = r.choice(W["cuisine"])

    # Bad records of every kind ingest quarantines (see truth/bad_records.jsonl).
    bad: list[dict[str, Any]] = []

    def add_bad(domain: str, row: Any, reason: str) -> None:
        docs[domain].insert(r.randrange(len(docs[domain]) + 1), row)
        bad.append({"domain": domain, "reason": reason})

    add_bad("news", b'{"id": "news-broken", "text": "Unterminated', "invalid_json")
    add_bad("news", b'{"id": "news-latin1", "text": "Caf\xe9 au lait in Lyon"}', "invalid_utf8")
    add_bad(
        "forum",
        {"id": "forum-notext", "body": "the text went into the wrong field"},
        "missing_text",
    )
    add_bad("forum", {"id": "forum-number", "text": 42}, "non_string_text")
    add_bad("sports", {"id": "sports-blank", "text": "   \n\t "}, "empty_text")
    add_bad(
        "legal",
        {"id": docs["legal"][0]["id"], "text": "A second record reusing an existing id."},
        "duplicate_id",
    )
    add_bad(
        "science",
        {"id": "science-huge", "text": "Raw instrument log. " + "0.1234 " * 20_000},
        "too_large",
    )

    # Write each domain in a different format.
    _write_jsonl(raw / "news.jsonl.gz", docs["news"])
    _write_jsonl(raw / "science.jsonl.zst", docs["science"])
    _write_jsonl(raw / "legal.jsonl", docs["legal"])
    _write_jsonl(raw / "forum.jsonl.gz", docs["forum"])
    _write_jsonl(raw / "math.jsonl.gz", docs["math"])
    _write_jsonl(raw / "sports.jsonl.gz", docs["sports"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(docs["recipes"]), raw / "recipes.parquet")
    code_dir = raw / "code"
    code_dir.mkdir(exist_ok=True)
    for doc in docs["code"]:
        (code_dir / f"{doc['id']}.txt").write_text(doc["text"], encoding="utf-8")

    # A news shard cut short in transfer: its first records are readable, the rest is lost.
    shard = [{"id": f"news-shard2-{i:04d}", "text": _news(r)} for i in range(40)]
    _write_jsonl(raw / "news-shard2.jsonl.gz", shard)
    blob = (raw / "news-shard2.jsonl.gz").read_bytes()
    (raw / "news-shard2.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    bad.append({"domain": "news", "reason": "truncated_file"})

    for domain, rows in docs.items():
        n_bad = sum(1 for b in bad if b["domain"] == domain and b["reason"] != "truncated_file")
        corpus.n_docs[domain] = len(rows) - n_bad
        corpus.n_bad[domain] = n_bad
    # The shard's complete lines are readable; its cut tail is one quarantined record.
    readable = zlib.decompressobj(wbits=31).decompress(blob[: len(blob) // 2]).count(b"\n")
    corpus.n_docs["news"] += readable
    corpus.n_bad["news"] += 1
    _write_jsonl(truth / "duplicates.jsonl", dup_rows)
    _write_jsonl(truth / "leaked_test_items.jsonl", [{"id": x["id"]} for x in leaked])
    _write_jsonl(truth / "bad_records.jsonl", bad)
    (out / "README.md").write_text(
        "# curamix demo corpus (SYNTHETIC)\n\n"
        f"Generated by `curamix demo` with seed {seed}: template text in {len(DOMAINS)} domains, "
        "not real data. `raw/` is the pool (one domain per file or folder, in every input format "
        "curamix reads, with a few bad records and a truncated shard), `targets/` a small "
        "GSM8K-like benchmark, `truth/` the injected duplicates, leaked test items and bad records.\n",
        encoding="utf-8",
    )
    return corpus


DEMO_PIPELINE = """\
# curamix demo pipeline: generated by `curamix demo`, which runs it as the Prefect flow
# curate_flow. `curamix run pipeline.yaml` runs the stages only (ingest .. select).
run_dir: run
seed: {seed}
stages: [ingest, dedup, embed, semdedup, quality, decontam, dsir, betr, select]
spark:
  master: "local[*]"
  driver_memory: 2g
ingest:
  max_doc_bytes: 100000
  oversize: quarantine
  inputs:
    - path: raw
      # news-shard2.jsonl.gz is a second news shard: map it to the news domain.
      domain_map: {{"news*": news}}
dedup:
  # Exact + MinHash-LSH near duplicates (Jaccard >= 0.8 of word 5-grams), across domains.
  threshold: 0.8
  scope: global
embed:
  # all-MiniLM-L6-v2 (bundled, offline) on the first 128 tokens of every deduplicated document.
  max_seq_length: 128
semdedup:
  # SemDeDup (Abbas et al. 2023): within k-means clusters of the embeddings, drop documents
  # whose cosine to an earlier one exceeds 1 - eps. The demo's templated documents sit close
  # together: at eps 0.05 half the forum domain would go and the removal-rate gate stops the
  # run (the report's removal-vs-eps table shows the curve).
  eps: 0.02
quality:
  # Quality filtering (docs/quality.md): text-likeness, language ID (fastText lid.176: English
  # at score >= 0.65), the C4 and FineWeb heuristic rules, and a small DCLM-style fastText
  # classifier trained on the benchmark's train split vs 1,000 pool documents, whose scores
  # become 20 Nemotron-CC quality buckets (the report's histogram). The demo's documents are
  # templated, so Gopher's repetition and word rules would remove most of them (they repeat
  # 5-grams by construction): those two are off here. Code and math are exempt from the
  # prose rules. The classifier keeps everything (no keep_top): it annotates.
  exempt_domains: [code, math]
  heuristics:
    gopher_repetition: false
    gopher_quality: false
    c4_quality: true
    fineweb_quality: true
  classifiers:
    - name: bench
      positive_inputs:
        - path: targets/demobench_train.jsonl
      negative_sample: 1000
      bucket: 20000       # 20k hash buckets: an 8 MB model (DCLM's 2M: 800 MB)
      lr: 0.5             # DCLM's lr 0.1 x 5 epochs is for ~400k examples; these are ~1,200
      epoch: 25
  buckets:
    groups: [0, 10, 15, 18]
decontam:
  # Documents sharing a 13-gram with the benchmark's TEST split are removed.
  test_inputs:
    - path: targets/demobench_test.jsonl
dsir:
  # Importance weights toward the demo benchmark's train split (Xie et al. 2023).
  target_inputs:
    - path: targets/demobench_train.jsonl
  min_example_length: 20
betr:
  # BETR (Mizrahi et al. 2025): rank a 1,000-document sample against the benchmark's train
  # examples, train a hashed-ngram classifier on it and keep the best-scored 30% of words.
  benchmark_inputs:
    - path: targets/demobench_train.jsonl
  sample: 1000
  keep_tokens: 0.3
  embed:
    max_seq_length: 128
select:
  fraction: 0.3
# The flow steps after the stages (curate_flow; not stages of `curamix run`).
mixture:
  # DGA (Fan et al. 2024) on a nano proxy trained on the selection; the target is the dsir
  # target (the benchmark's train split).
  method: dga
  model: nano
  vocab_size: 1024
  total_tokens: {mixture_tokens}
  update_every: 15
scaling:
  # A small sweep (3 sizes x 3 budgets) on the searched mixture, a Chinchilla fit with 200
  # bootstrap refits (90% intervals) and its identifiability verdict, and the recommendation
  # for a compute budget in the proxies' range. A fit that is not identified is not used: the
  # sizes then come from the published constants (allow_fallback), and the notes say why. N
  # never goes below the smallest proxy, and no domain is read more than max_epochs times.
  models: [nano, tiny, xs]
  token_budgets: [16384, 32768, 65536]
  n_boot: 200
  ci_level: 0.9
  allow_fallback: true
  compute: 1.0e+11
  max_epochs: 4
export:
  formats: [json, csv, megatron, olmo-core, hf]
  prefix_template: "data/{{domain}}_text_document"
flow:
  retries: 1
"""


def dedup_recall(dedup_path: str | Path, truth_dir: str | Path) -> dict[str, tuple[int, int]]:
    """Per injected kind: (copies found in their original's cluster, copies injected)."""
    import pyarrow.parquet as pq

    led = pq.read_table(Path(dedup_path) / "ledger", columns=["id", "decision", "ref_id"])
    cluster: dict[str, str] = {}
    for r in led.to_pylist():
        c = r["ref_id"] if r["decision"] == "removed" else r["id"]
        cluster[r["id"]] = c
        if r["id"].endswith(".txt"):  # the code domain is a folder of .txt files: id = path
            cluster[Path(r["id"]).stem] = c
    out: dict[str, tuple[int, int]] = {}
    with open(Path(truth_dir) / "duplicates.jsonl", encoding="utf-8") as fh:
        for row in map(json.loads, fh):
            found, total = out.get(row["kind"], (0, 0))
            same = row["id"] in cluster and cluster[row["id"]] == cluster.get(row["original_id"])
            out[row["kind"]] = (found + int(same), total + 1)
    return dict(sorted(out.items()))


DEMO_FILES = ".demo-files.json"
"""The files :func:`write_demo_corpus` wrote (a rerun removes only those that are stale)."""


def write_demo_corpus(out: str | Path, n_docs: int = 4000, seed: int = 0) -> DemoCorpus:
    """:func:`make_demo_corpus` into ``out``, leaving files that already hold the same bytes
    untouched (so their modification times, hence ingest's input fingerprints, stay the same
    and a rerun of the demo skips every finished step); stale files are removed."""
    import os
    import shutil
    import uuid

    from curamix.io.store import inside, write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    listing = out / DEMO_FILES
    tmp = out / f".demo-{uuid.uuid4().hex[:8]}"
    try:
        corpus = make_demo_corpus(tmp, n_docs=n_docs, seed=seed)
        new = {p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file()}
        old = json.loads(listing.read_text(encoding="utf-8")) if listing.is_file() else []
        for name in sorted(set(old) - {str(p) for p in new}):  # only files it wrote itself
            inside(out, name).unlink(missing_ok=True)
        write_json_atomic(listing, sorted(str(p) for p in new))
        for rel in sorted(new):
            src, dst = tmp / rel, out / rel
            if dst.is_file() and dst.read_bytes() == src.read_bytes():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    corpus.root, corpus.raw_dir = out, out / "raw"
    corpus.targets_dir, corpus.truth_dir = out / "targets", out / "truth"
    return corpus


def write_demo_pipeline(out: str | Path, seed: int = 0, mixture_tokens: int = 307_200) -> Path:
    """Write ``out/pipeline.yaml``: every stage the demo corpus exercises, then the flow steps
    (mixture search, scaling laws, export). ``mixture_tokens``: the proxy's training budget."""
    path = Path(out) / "pipeline.yaml"
    path.write_text(
        DEMO_PIPELINE.format(seed=seed, mixture_tokens=mixture_tokens), encoding="utf-8"
    )
    return path
