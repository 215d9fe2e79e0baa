import gzip
import hashlib
import json
from pathlib import Path

import pytest

from curamix.demo import DOMAINS, make_demo_corpus, math_problem


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_corpus(tmp_path):
    a = make_demo_corpus(tmp_path / "a", n_docs=300, seed=1)
    b = make_demo_corpus(tmp_path / "b", n_docs=300, seed=1)
    c = make_demo_corpus(tmp_path / "c", n_docs=300, seed=2)
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)


def test_corpus_has_what_every_stage_needs(tmp_path):
    c = make_demo_corpus(tmp_path, n_docs=800, seed=0)
    assert len(c.n_docs) >= 6 and set(c.n_docs) == set(DOMAINS)
    formats = {p.name.split(".", 1)[1] if "." in p.name else "dir" for p in c.raw_dir.iterdir()}
    assert {"jsonl", "jsonl.gz", "jsonl.zst", "parquet", "dir"} <= formats
    dups = [json.loads(x) for x in (c.truth_dir / "duplicates.jsonl").read_text().splitlines()]
    assert {d["kind"] for d in dups} >= {"exact", "near@0.02", "near@0.1"}
    assert c.n_exact_dups > 0 and c.n_near_dups > 0
    bad = [json.loads(x) for x in (c.truth_dir / "bad_records.jsonl").read_text().splitlines()]
    assert {b["reason"] for b in bad} == {
        "invalid_json",
        "invalid_utf8",
        "missing_text",
        "non_string_text",
        "empty_text",
        "duplicate_id",
        "too_large",
        "truncated_file",
    }
    test_items = [
        json.loads(x) for x in (c.targets_dir / "demobench_test.jsonl").read_text().splitlines()
    ]
    leaked = {
        json.loads(x)["id"]
        for x in (c.truth_dir / "leaked_test_items.jsonl").read_text().splitlines()
    }
    math_text = gzip.decompress((c.raw_dir / "math.jsonl.gz").read_bytes()).decode()
    for item in test_items:
        assert (item["question"] in math_text) == (item["id"] in leaked)
    # Long and short documents.
    lengths = [
        len(json.loads(x)["text"])
        for x in gzip.decompress((c.raw_dir / "news.jsonl.gz").read_bytes()).splitlines()
        if x.startswith(b'{"id": "news-0')
    ]
    assert min(lengths) < 400 and max(lengths) > 5000


def test_domains_have_distinct_vocabularies(tmp_path):
    import random

    r = random.Random(0)
    vocab = {
        d: set(" ".join(make(r) for _ in range(40)).lower().split()) for d, make in DOMAINS.items()
    }
    for d1 in vocab:
        for d2 in vocab:
            if d1 < d2:
                jac = len(vocab[d1] & vocab[d2]) / len(vocab[d1] | vocab[d2])
                assert jac < 0.25, (d1, d2, jac)


def test_math_answers_are_correct():
    import random

    r = random.Random(3)
    for _ in range(200):
        _q, sol, ans = math_problem(r)
        assert sol.rstrip(".").endswith(str(ans))


def test_too_small_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n_docs must be at least 100, got 5"):
        make_demo_corpus(tmp_path, n_docs=5)


@pytest.mark.spark
def test_demo_ingest_matches_the_generator(spark, tmp_path):
    from curamix.config import load_config
    from curamix.demo import write_demo_pipeline
    from curamix.runner import run_pipeline

    c = make_demo_corpus(tmp_path, n_docs=400, seed=0)
    cfg = load_config(write_demo_pipeline(tmp_path), use_env=False)
    res = run_pipeline(cfg, spark=spark, only=["ingest"])["ingest"]
    per_domain = res.counts["per_domain"]
    assert {d: v["kept"] for d, v in per_domain.items()} == c.n_docs
    assert {d: v["quarantined"] for d, v in per_domain.items()} == c.n_bad
    assert res.counts["quarantine_reasons"] == {
        "duplicate_id": 1,
        "empty_text": 1,
        "invalid_json": 1,
        "invalid_utf8": 1,
        "missing_text": 1,
        "non_string_text": 1,
        "too_large": 1,
        "truncated_file": 1,
    }


def test_demo_rewrite_removes_only_its_own_files(tmp_path):
    from curamix.demo import DEMO_FILES, write_demo_corpus

    write_demo_corpus(tmp_path, n_docs=300, seed=1)
    mine = json.loads((tmp_path / DEMO_FILES).read_text())
    assert mine and all((tmp_path / f).is_file() for f in mine)
    user = tmp_path / "raw" / "my_notes.jsonl"
    user.write_text('{"text": "the user put this here"}\n')
    stale = tmp_path / mine[0]
    listing = json.loads((tmp_path / DEMO_FILES).read_text())
    (tmp_path / DEMO_FILES).write_text(json.dumps([*listing, "raw/old_demo_part.jsonl"]))
    (tmp_path / "raw" / "old_demo_part.jsonl").write_text("{}\n")
    write_demo_corpus(tmp_path, n_docs=300, seed=1)
    assert user.is_file() and stale.is_file()  # the user's file and current files stay
    assert not (tmp_path / "raw" / "old_demo_part.jsonl").exists()  # its own stale file goes


# The demo's proxy sweep (3 sizes x 3 budgets on the searched mixture; n_params, tokens, mean
# validation loss) and the DGA search's weights and unique tokens per domain, as measured by
# `curamix demo` on the 2-core sandbox on 2026-12-03.
DEMO_SWEEP = [
    ("nano", 49344, 16384, 6.420126), ("nano", 49344, 32768, 5.979998),
    ("nano", 49344, 65536, 5.361558), ("tiny", 98624, 16384, 6.419425),
    ("tiny", 98624, 32768, 5.998785), ("tiny", 98624, 65536, 5.371705),
    ("xs", 984448, 16384, 6.223625), ("xs", 984448, 32768, 5.824135),
    ("xs", 984448, 65536, 5.019743),
]  # fmt: skip
DEMO_SEARCH = {
    "weights": {"code": 0.0720222, "forum": 0.0282065, "legal": 0.1041539, "math": 0.4950158,
                "news": 0.1170172, "recipes": 0.0434386, "science": 0.0512024,
                "sports": 0.0889434},
    "domain_tokens": {"code": 2663.0, "forum": 9835.0, "legal": 3319.0, "math": 28592.0,
                      "news": 9274.0, "recipes": 8069.0, "science": 8180.0, "sports": 5074.0},
    "provenance": {"method": "dga", "seed": None},
}  # fmt: skip


@pytest.mark.slow
def test_demo_decisions_are_sane(tmp_path, capsys):
    """The flow's decision path on the demo's own sweep, with the demo's config: fit (200
    bootstrap refits), identify, recommend, write RUN/mixture.json, export, print. Nothing
    exported is absurd: N is not below the smallest proxy, no domain is read more often than
    max_epochs, and a fit that is not identified is not used, with the reason printed and in
    every export."""
    import polars as pl

    from curamix.cli.demo import _flow_report
    from curamix.config import load_config
    from curamix.demo import write_demo_pipeline
    from curamix.flows.steps import RECOMMENDATION, finalize_mixture, run_export_step
    from curamix.io.store import JobResult, write_json_atomic
    from curamix.mixture import Mixture
    from curamix.scaling_laws.chinchilla import ChinchillaLaw
    from curamix.scaling_laws.decide import CHINCHILLA_PUBLISHED, fit_and_recommend

    cfg = load_config(write_demo_pipeline(tmp_path), use_env=False)
    sc = cfg.scaling
    assert len(sc.models) >= 3 and len(sc.token_budgets) >= 3 and sc.n_boot >= 200
    rows = [r for r in DEMO_SWEEP if r[0] in sc.models and r[2] <= max(sc.token_budgets)]
    df = pl.DataFrame(rows, schema=["model", "n_params", "tokens", "loss"], orient="row")
    search_dir, scaling_dir, run = tmp_path / "search", tmp_path / "scaling", tmp_path / "run"
    search = Mixture.from_dict(DEMO_SEARCH)
    search.write_json(search_dir / "mixture.json")
    fits, rec = fit_and_recommend(df, scaling_dir / "fits", sc, search, seed=0)
    write_json_atomic(scaling_dir / RECOMMENDATION, rec.to_dict())

    ident = fits["chinchilla"]["identification"]
    assert ident["distinct"] == {"N": 3, "D": 3} and len(fits["chinchilla"]["params_ci"]) == 5
    smallest = min(r[1] for r in rows)
    assert rec.n_params >= smallest and rec.min_params == smallest
    if ident["identified"]:
        assert rec.size_source.startswith("fitted ChinchillaLaw") and rec.intervals
    else:  # the fallback, named, with the reasons
        published = ChinchillaLaw.from_params(CHINCHILLA_PUBLISHED).compute_optimal(sc.compute)
        assert rec.n_params == pytest.approx(max(published[0], smallest))
        assert rec.size_source.startswith("published Chinchilla constants")
        assert rec.fallback_reason.endswith("; ".join(ident["reasons"]))
    assert 6 * rec.n_params * rec.n_tokens <= sc.compute * (1 + 1e-9)

    mix, path, _ = finalize_mixture(
        run, JobResult("mixture", search_dir, {}), JobResult("scaling", scaling_dir, {})
    )
    epochs = mix.epochs()
    assert max(epochs.values()) <= sc.max_epochs + 1e-9, epochs
    assert mix.total_tokens == pytest.approx(rec.n_tokens)
    assert mix.provenance["method"] == "dga" and mix.provenance["recommendation"]["notes"]
    files, _ = run_export_step(run, cfg.export, path)
    for f in files:
        text = f.read_text()
        if f.suffix in (".txt", ".csv"):
            continue  # no comments possible: their Markdown sidecar is checked
        if f.suffix == ".json":
            assert json.loads(text)["provenance"]["recommendation"]["size_source"]
        else:
            assert f"size source: {rec.size_source}" in text, f.name
            assert f"N = {rec.n_params:.4g} parameters" in text, f.name
    assert {f.suffix for f in files} >= {".md", ".csv", ".txt", ".json"}

    summary = {"steps": {}, "mixture": {"path": str(path)}, "exports": [str(f) for f in files]}
    _flow_report(summary)
    out = " ".join(capsys.readouterr().out.split())
    assert f"recommended for C = {sc.compute:.3g} FLOPs: N = {rec.n_params:.4g} parameters" in out
    assert f"size source: {rec.size_source}" in out
    if not ident["identified"]:
        assert "fit NOT identified: " + ident["reasons"][0] in out
