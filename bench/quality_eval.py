"""Quality signals against real human labels: ROC-AUC of each heuristic filter, language ID,
each classifier and the Nemotron-CC ensemble on the 496 DCLM-labelled web documents of
../shared/data (``meta.dclm_majority_label``, 1 = keep; 278 also carry
``dclm_agreement_label``).

    .venv/bin/python bench/quality_eval.py [--data ../shared/data] [--folds 5] [--seed 0]

Classifiers:

- ``fasttext (targets vs web)``: DCLM's recipe with our positives: GSM8K + MMLU train
  (instruction-like QA, capped to the negatives' count) vs the 1,019 unlabelled web documents;
  trained without the labels.
- ``fasttext (curated vs web)``: positives = wiki + books + science documents of the corpus
  (seeded sample of the same size) vs the same web negatives; trained without the labels.
- ``fasttext (labels, CV)`` and ``embedding head (labels, CV)``: trained on the labels
  themselves, scored out of fold (stratified ``--folds``-fold cross-validation).
- ``ensemble``: Nemotron-CC's max over the two label-free fastText classifiers' 20
  token-weighted bins (no labels used), and over all four (CV scores inside).

Nothing is tuned to the labels beyond the cross-validation. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from pathlib import Path

import numpy as np


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(x) for x in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    from curamix.config import HEURISTIC_FILTERS
    from curamix.embeddings.embed import embed_texts
    from curamix.filters.heuristics import HeuristicFilters
    from curamix.filters.langid import identify
    from curamix.filters.quality import (
        EmbeddingQualityHead,
        FastTextQualityClassifier,
        assign_bins,
        ensemble_buckets,
        percentile_bins,
    )

    t0 = time.perf_counter()
    data = Path(args.data)
    web = _read(data / "corpus" / "web.jsonl.gz")
    labelled = [r for r in web if "dclm_majority_label" in (r.get("meta") or {})]
    unlabelled = [r["text"] for r in web if "dclm_majority_label" not in (r.get("meta") or {})]
    texts = [r["text"] for r in labelled]
    y = np.array([int(r["meta"]["dclm_majority_label"]) for r in labelled])
    agree_idx = np.array(
        [i for i, r in enumerate(labelled) if "dclm_agreement_label" in r["meta"]], dtype=int
    )
    y_agree = np.array([int(labelled[i]["meta"]["dclm_agreement_label"]) for i in agree_idx])
    words = np.array([len(t.split()) for t in texts], dtype=float)
    rng = np.random.default_rng(args.seed)
    print(
        f"{len(texts)} labelled docs ({y.sum()} keep), {len(agree_idx)} with agreement labels; "
        f"{len(unlabelled)} unlabelled web docs"
    )

    scores: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    # heuristic filters: keep = 1 (binary decisions), and all four together
    hf = HeuristicFilters({n: True for n in HEURISTIC_FILTERS})
    dec = hf.decisions(texts)
    for name, reasons in dec.items():
        scores[f"heuristic: {name} (keep)"] = np.array([r is None for r in reasons], float)
    scores["heuristics: all four (keep)"] = np.array(
        [all(dec[n][i] is None for n in dec) for i in range(len(texts))], float
    )
    # language ID: P(top language) when it is English, else 0
    langs, lscore = identify(texts)
    scores["langid: English score"] = np.where(np.array(langs) == "en", lscore, 0.0)

    def fasttext_scores(pos: list[str], neg: list[str]) -> np.ndarray:
        clf = FastTextQualityClassifier(bucket=200_000, random_state=args.seed)
        return clf.fit(pos, neg).score_samples(texts)

    targets = [
        r["text"]
        for b in ("gsm8k_train", "mmlu_train")
        for r in _read(data / "targets" / f"{b}.jsonl.gz")
    ]
    pos = [targets[i] for i in rng.permutation(len(targets))[: len(unlabelled)]]
    scores["fasttext (targets vs web)"] = fasttext_scores(pos, unlabelled)
    notes["fasttext (targets vs web)"] = (
        f"{len(pos)} GSM8K+MMLU train vs {len(unlabelled)} unlabelled web; no labels"
    )
    curated = [
        r["text"]
        for d in ("wiki", "books", "science")
        for r in _read(data / "corpus" / f"{d}.jsonl.gz")
    ]
    pos = [curated[i] for i in rng.permutation(len(curated))[: len(unlabelled)]]
    scores["fasttext (curated vs web)"] = fasttext_scores(pos, unlabelled)
    notes["fasttext (curated vs web)"] = (
        f"{len(pos)} wiki+books+science vs {len(unlabelled)} unlabelled web; no labels"
    )

    # trained on the labels: out-of-fold scores
    skf = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    oof_ft = np.zeros(len(texts))
    oof_head = np.zeros(len(texts))
    vectors = embed_texts(texts, max_seq_length=256)
    for train, test in skf.split(texts, y):
        pos = [texts[i] for i in train if y[i] == 1]
        neg = [texts[i] for i in train if y[i] == 0]
        clf = FastTextQualityClassifier(bucket=200_000, random_state=args.seed).fit(pos, neg)
        oof_ft[test] = clf.score_samples([texts[i] for i in test])
        head = EmbeddingQualityHead(alpha=1.0, score_range=(0.0, 1.0)).fit(vectors[train], y[train])
        oof_head[test] = head.score_samples([], vectors[test])
    scores["fasttext (labels, CV)"] = oof_ft
    scores["embedding head (labels, CV)"] = oof_head
    notes["fasttext (labels, CV)"] = f"{args.folds}-fold CV on the 496 labels"
    notes["embedding head (labels, CV)"] = f"all-MiniLM-L6-v2 + ridge, {args.folds}-fold CV"

    def ensemble(names: list[str]) -> np.ndarray:
        bins = [assign_bins(scores[n], percentile_bins(scores[n], words, 20)) for n in names]
        return ensemble_buckets(bins).astype(float)

    free = ["fasttext (targets vs web)", "fasttext (curated vs web)"]
    scores["ensemble: max bin of the 2 label-free"] = ensemble(free)
    scores["ensemble: max bin of all 4"] = ensemble(
        [*free, "fasttext (labels, CV)", "embedding head (labels, CV)"]
    )

    rows = []
    for name, s in scores.items():
        auc = roc_auc_score(y, s)
        auc_a = roc_auc_score(y_agree, s[agree_idx])
        rows.append((name, auc, auc_a, notes.get(name, "")))
    print(
        f"\n{platform.machine()} {platform.python_version()}, {time.strftime('%Y-%m-%d')}, "
        f"{time.perf_counter() - t0:.0f} s\n"
    )
    print("| signal | ROC-AUC (496 majority) | ROC-AUC (278 agreement) | trained on |")
    print("|---|---:|---:|---|")
    for name, auc, auc_a, note in rows:
        print(f"| {name} | {auc:.3f} | {auc_a:.3f} | {note} |")


if __name__ == "__main__":
    main()
