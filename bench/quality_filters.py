"""curamix's heuristic quality filters vs datatrove 0.10.1's, on the real corpus: per-document
agreement of each filter's keep/remove decision (and of the removal reason), and speed.

    .venv/bin/python bench/quality_filters.py [--limit N] [--data ../shared/data] [--out FILE]
        [--datatrove-json FILE]

Reads every ``corpus/*.jsonl.gz`` of the data folder (``--limit N``: the first N documents of
each file). Both sides run on 2 worker processes (a ``multiprocessing`` Pool of 2, each on every
other document), with the published defaults:

- datatrove: ``GopherRepetitionFilter``, ``GopherQualityFilter``, ``C4QualityFilter``,
  ``FineWebQualityFilter`` called directly (``f.filter(Document(...))``). Each filter alone on
  every document (its words cache, ``split_into_parts``' lru_cache, cleared before each call,
  as when the filter runs alone), then the four chained in FineWeb's order as a datatrove
  pipeline runs them (a document stops at the first filter that removes it; the cache is
  shared down the chain).
- curamix: ``HeuristicFilters({name: True}).decisions`` per filter and
  ``HeuristicFilters(all four).reasons`` for the chain, each timed from a cold word cache
  (the numba kernels loaded or compiled and the tokenizer built beforehand, once per process).

docs/s per core = documents / (the two workers' CPU seconds, ``time.process_time``, summed; CPU
time rather than wall time, as the machine is shared). Prints Markdown tables
(agreement per filter, speed per filter and for the four together) and, for every document on
which a decision differs, its id and both reasons (``--out`` writes them as JSON).
``--datatrove-json FILE`` keeps datatrove's decisions and CPU seconds: read when the file exists
(for the same documents), else computed and written (the reference takes about 17 CPU minutes
on the whole corpus).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import platform
import time
from pathlib import Path

NAMES = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")

# curamix rule (and comparison) -> datatrove's reason for the same rule
DATATROVE_REASON = {
    ("gopher_quality", "n_words", "<"): "gopher_short_doc",
    ("gopher_quality", "n_words", ">"): "gopher_long_doc",
    ("gopher_quality", "mean_word_length", "<"): "gopher_below_avg_threshold",
    ("gopher_quality", "mean_word_length", ">"): "gopher_above_avg_threshold",
    ("gopher_quality", "hash_ratio", ">"): "gopher_too_many_hashes",
    ("gopher_quality", "ellipsis_ratio", ">"): "gopher_too_many_ellipsis",
    ("gopher_quality", "bullet_lines_ratio", ">"): "gopher_too_many_bullets",
    ("gopher_quality", "ellipsis_lines_ratio", ">"): "gopher_too_many_end_ellipsis",
    ("gopher_quality", "alpha_words_ratio", "<"): "gopher_below_alpha_threshold",
    ("gopher_quality", "stop_words", "<"): "gopher_enough_stop_words",
    ("c4_quality", "n_sentences", "<"): "too_few_sentences",
    ("fineweb_quality", "char_dup_ratio", ">"): "char_dup_ratio",
    ("fineweb_quality", "list_ratio", ">"): "list_ratio",
}


def datatrove_reason(reason: str | None) -> str | None:
    """A curamix reason (``filter:rule=value<op>limit``) as datatrove words it."""
    if reason is None:
        return None
    name, _, rest = reason.partition(":")
    rule = rest.split("=")[0]
    op = ">" if ">" in rest else "<" if "<" in rest else ""
    if (name, rule, op) in DATATROVE_REASON:
        return DATATROVE_REASON[(name, rule, op)]
    if rule.startswith("dup_") and rule.endswith("_gram"):
        return f"duplicated_{rule[4:-5]}_n_grams"
    return rule  # empty, dup_*_frac, top_n_gram, lorem_ipsum, curly_bracket, line_punct_ratio, ...


def load(data: Path, limit: int | None) -> list[tuple[str, str, str]]:
    """(domain, id, text) of every document, file by file."""
    docs = []
    for path in sorted((data / "corpus").glob("*.jsonl.gz")):
        domain = path.name.split(".")[0]
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for k, line in enumerate(f):
                if limit is not None and k >= limit:
                    break
                row = json.loads(line)
                docs.append((domain, str(row["id"]), row["text"]))
    return docs


def _datatrove_worker(docs: list[tuple[str, str, str]]) -> dict:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.filters.base_filter import get_filter_result
    from datatrove.utils.text import split_into_parts, split_into_words

    filters = {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4_quality": C4QualityFilter(),
        "fineweb_quality": FineWebQualityFilter(),
    }
    split_into_words("warm up the spaCy tokenizer.")
    seconds = dict.fromkeys((*NAMES, "all"), 0.0)
    out: dict[str, list] = {n: [] for n in (*NAMES, "all")}
    for _, doc_id, text in docs:
        for name, f in filters.items():
            split_into_parts.cache_clear()
            t = time.process_time()
            keep, reason = get_filter_result(f.filter(Document(text=text, id=doc_id)))
            seconds[name] += time.process_time() - t
            out[name].append(None if keep else f"{name}:{reason}")
        split_into_parts.cache_clear()
        doc = Document(text=text, id=doc_id)
        first = None
        t = time.process_time()
        for name, f in filters.items():
            keep, reason = get_filter_result(f.filter(doc))
            if not keep:
                first = f"{name}:{reason}"
                break
        seconds["all"] += time.process_time() - t
        out["all"].append(first)
    return {"decisions": out, "seconds": seconds}


def _curamix_worker(docs: list[tuple[str, str, str]]) -> dict:
    from curamix.filters import heuristics as h

    texts = [t for _, _, t in docs]
    h.HeuristicFilters({n: True for n in NAMES}).reasons(["Warm up the kernel. " * 20])
    seconds: dict[str, float] = {}
    out: dict[str, list] = {}
    for name in (*NAMES, "all"):
        h._tokenizer()._cache.clear()
        h._tokenizer()._sent_cache.clear()
        t = time.process_time()
        if name == "all":
            out[name] = h.HeuristicFilters({n: True for n in NAMES}).reasons(texts)
        else:
            out[name] = h.HeuristicFilters({name: True}).decisions(texts)[name]
        seconds[name] = time.process_time() - t
    return {"decisions": out, "seconds": seconds}


def run_side(worker, docs: list[tuple[str, str, str]], processes: int = 2) -> dict:
    """The worker on every other document in each of ``processes`` processes; decisions put
    back in document order, busy seconds summed."""
    shards = [docs[k::processes] for k in range(processes)]
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(worker, shards)
    wall = time.perf_counter() - t
    decisions: dict[str, list] = {}
    for name in parts[0]["decisions"]:
        merged: list = [None] * len(docs)
        for k, part in enumerate(parts):
            merged[k::processes] = part["decisions"][name]
        decisions[name] = merged
    seconds = {n: sum(p["seconds"][n] for p in parts) for n in parts[0]["seconds"]}
    return {"decisions": decisions, "seconds": seconds, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=None, help="first N documents of each file")
    ap.add_argument("--out", default=None, help="write the differing documents here (JSON)")
    ap.add_argument("--datatrove-json", default=None, help="cache of datatrove's results")
    args = ap.parse_args()

    from importlib.metadata import version

    docs = load(Path(args.data), args.limit)
    n = len(docs)
    print(f"{n:,} documents from {args.data}/corpus; {platform.machine()}, "
          f"Python {platform.python_version()}, datatrove {version('datatrove')}")  # fmt: skip
    cur = run_side(_curamix_worker, docs)
    print(f"curamix done in {cur['wall']:.1f} s")
    cache = Path(args.datatrove_json) if args.datatrove_json else None
    ids = [d[1] for d in docs]
    if cache is not None and cache.exists() and json.loads(cache.read_text())["ids"] == ids:
        ref = json.loads(cache.read_text())
        print(f"datatrove's results read from {cache} (computed in {ref['wall']:.1f} s)")
    else:
        ref = run_side(_datatrove_worker, docs)
        print(f"datatrove done in {ref['wall']:.1f} s")
        if cache is not None:
            cache.write_text(json.dumps({"ids": ids, **ref}))

    diffs = []
    # the four as curamix chains them: each filter's own datatrove decision, first failing one
    ref_dec = ref["decisions"]
    ref_dec["first"] = [
        next((ref_dec[f][i] for f in NAMES if ref_dec[f][i]), None) for i in range(n)
    ]
    cur["decisions"]["first"] = cur["decisions"]["all"]
    rows = {
        **{f: f for f in NAMES},
        "first": "all four: first failing filter (datatrove's filters run alone)",
        "all": "all four: datatrove pipeline (C4 rewrites the text)",
    }
    print("\n| filter | docs | removed (datatrove) | agree | differ | same reason |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in rows.items():
        a, b = cur["decisions"][name], ref_dec[name]
        differ = [i for i in range(n) if (a[i] is None) != (b[i] is None)]
        removed = sum(r is not None for r in b)
        both = [i for i in range(n) if a[i] is not None and b[i] is not None]
        same = 0
        for i in both:
            fb, rb = b[i].split(":", 1)
            same += a[i].split(":")[0] == fb and datatrove_reason(a[i]) == rb
        print(f"| {label} | {n:,} | {removed:,} | {n - len(differ):,} | {len(differ):,} | "
              f"{same:,} / {len(both):,} |")  # fmt: skip
        for i in differ:
            diffs.append({"filter": name, "domain": docs[i][0], "id": docs[i][1],
                          "curamix": a[i], "datatrove": b[i]})  # fmt: skip
    # the pipeline's differences: documents whose datatrove chain decision differs from its
    # filters' own decisions (a filter after C4 saw C4's remaining lines, not the document)
    rewrite = [i for i in range(n) if ref_dec["all"][i] != ref_dec["first"][i]]
    after_c4 = sum(
        (ref_dec["all"][i] or "fineweb_quality").startswith("fineweb_quality")
        and (ref_dec["first"][i] or "fineweb_quality").startswith("fineweb_quality")
        for i in rewrite
    )
    print(f"\ndatatrove's pipeline vs its filters run alone: {len(rewrite):,} documents differ, "
          f"{after_c4:,} of them in FineWeb's decision (run on C4's remaining lines)")  # fmt: skip
    print("\n| filter | datatrove docs/s per core | curamix docs/s per core | ratio |")
    print("|---|---:|---:|---:|")
    for name in (*NAMES, "all"):
        r, c = n / ref["seconds"][name], n / cur["seconds"][name]
        label = "all four (chained)" if name == "all" else name
        print(f"| {label} | {r:,.0f} | {c:,.0f} | {c / r:.1f}x |")
    print(f"\nwall clock, Pool(2): datatrove {ref['wall']:.1f} s (both passes), "
          f"curamix {cur['wall']:.1f} s (all five runs)")  # fmt: skip
    for d in diffs:
        if d["filter"] != "all":  # the pipeline's differences are counted above
            print(f"differs: {d['filter']} {d['domain']} {d['id']}: curamix {d['curamix']!r}, "
                  f"datatrove {d['datatrove']!r}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(diffs, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
