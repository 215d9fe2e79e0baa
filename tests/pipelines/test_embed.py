"""The embed job on Spark: vectors equal the in-process kernel's on the same device (and the
CPU's within the fp16 tolerance on CUDA), ledger and accounting, the saved index, the seeded
sample (independent of partitioning), rerun skip, the memory gate; device settings resolved
into the stage keys."""

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from curamix.config import build_config
from curamix.device import device_name
from curamix.embeddings import index as ix
from curamix.embeddings.embed import embed_texts
from curamix.embeddings.index import IndexTooLargeError, faiss_gpus
from curamix.io.store import load_completed
from curamix.pipelines.embed import STAGE, load_embeddings, load_index
from curamix.pipelines.parts import in_sample, sample_cutoff, sample_hash
from curamix.pipelines.registry import get_stage
from curamix.runner import run_pipeline
from tests.conftest import CPU_BATCH_ATOL, assert_embeddings_close, write_jsonl

embed_key = get_stage(STAGE).key
"""The stage key the runner uses (devices resolved), not the bare ``pipelines.embed`` one."""

TOPICS = {
    "cooking": [
        "Whisk the eggs with sugar until pale, then fold in the flour gently.",
        "Roast the vegetables in a hot oven with olive oil and a pinch of salt.",
        "Simmer the tomato sauce for an hour so the flavours deepen.",
        "Knead the bread dough for ten minutes and let it rise overnight.",
        "Season the soup with pepper, thyme and a splash of lemon juice.",
        "Fry the onions slowly until they turn golden and sweet.",
    ],
    "sports": [
        "The striker scored twice in the second half to win the match.",
        "The marathon runner set a new course record despite the heat.",
        "Our team lost the final after a penalty shootout.",
        "The tennis player served fifteen aces in the opening set.",
        "The coach praised the defence after a clean sheet on Saturday.",
        "The cyclist attacked on the last climb and won the stage alone.",
    ],
}


def _cfg(root: Path, raw: Path, **embed) -> object:
    return build_config(
        {
            "run_dir": str(root / "run"),
            "seed": embed.pop("seed", 0),
            "stages": ["ingest", "embed"],
            "ingest": {"inputs": [{"path": str(raw)}]},
            "embed": embed,
        },
        use_env=False,
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embed_raw")
    for domain, texts in TOPICS.items():
        write_jsonl(
            root / f"{domain}.jsonl",
            [{"id": f"{domain}-{k:02d}", "text": t} for k, t in enumerate(texts)],
        )
    return root


@pytest.fixture(scope="module")
def run(spark, raw, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_run")
    cfg = _cfg(root, raw, batch_size=4, index={"kind": "flat"})
    return cfg, run_pipeline(cfg, spark=spark)


@pytest.mark.spark
def test_vectors_equal_the_in_process_kernel(run):
    _, res = run
    emb = load_embeddings(res["embed"])
    texts = {f"{d}-{k:02d}": t for d, ts in TOPICS.items() for k, t in enumerate(ts)}
    assert emb.ids.tolist() == sorted(texts)  # every document, sorted by id
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    # The in-process kernel on the device the job used (auto: CUDA, fp16, where there is one);
    # the job encodes in batches of 4, the kernel here in one batch.
    m = res["embed"].manifest
    fp16 = m["precision"] == "fp16"
    assert fp16 == (m["device"].split(":")[0] == "cuda")  # the default fp16: true
    sorted_texts = [texts[i] for i in emb.ids]
    expected = embed_texts(sorted_texts, device="auto", batch_size=64)
    assert_embeddings_close(emb.vectors, expected, fp16, CPU_BATCH_ATOL)
    cpu = embed_texts(sorted_texts, device="cpu", batch_size=64)  # fp32 CPU reference
    assert_embeddings_close(emb.vectors, cpu, fp16, CPU_BATCH_ATOL)
    assert emb.domains.tolist() == [i.split("-")[0] for i in emb.ids]
    assert emb.n_words.tolist() == [len(texts[i].split()) for i in emb.ids]
    # Documents of one topic are closer to each other than to the other topic's.
    sim = emb.vectors @ emb.vectors.T
    same = emb.domains[:, None] == emb.domains[None, :]
    off = ~np.eye(len(emb), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.05
    sub = load_embeddings(res["embed"], ids={"sports-03", "cooking-01", "nope"})
    assert sub.ids.tolist() == ["cooking-01", "sports-03"]
    np.testing.assert_array_equal(sub.vectors[1], emb.vectors[emb.ids.tolist().index("sports-03")])


@pytest.mark.spark
def test_ledger_manifest_report_and_index(run):
    _, res = run
    r = res["embed"]
    led = pq.read_table(r.ledger_path).to_pylist()
    assert len(led) == 12 and {x["stage"] for x in led} == {STAGE}
    assert all(x["decision"] == "kept" and x["reason"] is None for x in led)
    m = r.manifest
    assert m["dim"] == 384 and m["model"] == "all-MiniLM-L6-v2"
    # embed.device and index.gpu are auto: the device of this machine, named in the manifest
    assert m["device"].split(":")[0] == device_name("auto")
    assert m["index"]["on_gpu"] == (faiss_gpus() > 0)
    assert Path(m["model_path"]).is_dir()
    assert m["counts"]["embedded"] == 12 and m["counts"]["not_sampled"] == 0
    assert m["counts"]["per_domain"] == {
        "cooking": {"in": 6, "embedded": 6},
        "sports": {"in": 6, "embedded": 6},
    }
    assert m["docs_per_s"] > 0 and m["index"]["kind"] == "flat" and m["index"]["ntotal"] == 12
    report = (r.path / "report.md").read_text()
    assert "12 of 12 documents embedded" in report and "Index: flat (ip) over 12 vectors" in report
    assert f"device {m['device']}, {m['precision']})" in report
    assert "| cooking | 6 | 6 |" in report
    vi = load_index(r)
    emb = load_embeddings(r)
    assert vi.ids.tolist() == emb.ids.tolist()
    scores, pos = vi.search(emb.vectors, 2)
    assert pos[:, 0].tolist() == list(range(12))  # each vector finds itself first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.spark
def test_rerun_is_skipped(spark, run):
    cfg, res = run
    again = run_pipeline(cfg, spark=spark)
    assert again["embed"].skipped and again["embed"].path == res["embed"].path


@pytest.mark.spark
def test_seeded_sample_and_memory_gate(spark, raw, tmp_path):
    cfg = _cfg(tmp_path, raw, sample=5, seed=7)
    r = run_pipeline(cfg, spark=spark)["embed"]
    led = {x["id"]: x for x in pq.read_table(r.ledger_path).to_pylist()}
    assert len(led) == 12 and all(x["decision"] == "kept" for x in led.values())
    embedded = sorted(i for i, x in led.items() if x["reason"] is None)
    assert sorted(i for i, x in led.items() if x["reason"] == "not_sampled") == sorted(
        set(led) - set(embedded)
    )
    # The same 5 documents the in-process sample function picks, whatever the split.
    ids = sorted(led)
    cutoff = sample_cutoff([ids], 7, 5)
    assert embedded == [i for i, m in zip(ids, in_sample(ids, 7, cutoff), strict=True) if m]
    assert load_embeddings(r).ids.tolist() == embedded
    c = r.manifest["counts"]
    assert (c["in"], c["embedded"], c["not_sampled"]) == (12, 5, 7)
    # The seed is part of the key only when sampling.
    pool = {"pool": run_pipeline(cfg, spark=spark, only=["ingest"])["ingest"]}
    other_seed = cfg.model_copy(update={"seed": 8})
    assert embed_key(cfg, pool) != embed_key(other_seed, pool)
    full = _cfg(tmp_path, raw)
    assert embed_key(full, pool) == embed_key(full.model_copy(update={"seed": 8}), pool)
    # An index over the memory ceiling is refused with a clear message; nothing is published.
    tiny = _cfg(tmp_path / "tiny", raw, sample=3, index={"max_memory_gb": 1e-6})
    with pytest.raises(IndexTooLargeError, match=r"needs about .* over the limit .*max_memory_gb"):
        run_pipeline(tiny, spark=spark)
    assert load_completed(tiny.run_dir, STAGE, embed_key(tiny, pool)) is None


def _pool(tag: str) -> dict:
    return {"pool": SimpleNamespace(manifest_hash=tag, stage="ingest")}


def test_auto_devices_are_resolved_into_the_stage_key(tmp_path, monkeypatch):
    """auto equals the device it resolves to: on a CPU machine the key of device: cpu and
    index.gpu: off; where torch sees CUDA (or FAISS a GPU) the key of cuda (or gpu: on)."""
    raw = tmp_path / "raw"
    pool = _pool("pool-manifest")

    def key(**embed) -> str:
        return embed_key(_cfg(tmp_path, raw, **embed), pool)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ix, "faiss_gpus", lambda: 0)
    auto = key()
    assert auto == key(device="cpu", index={"gpu": "off"})
    assert auto == key(device="cpu", fp16=False, index={"gpu": "off"})  # fp16: CUDA only
    assert key(device="cuda") != auto  # explicit settings stay as written
    assert key(index={"gpu": "on"}) != auto
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = key()
    assert cuda != auto and cuda == key(device="cuda", index={"gpu": "off"})
    assert key(device="cuda", fp16=False) != cuda  # on CUDA, fp16 changes the vectors
    monkeypatch.setattr(ix, "faiss_gpus", lambda: 1)
    both = key()
    assert both not in (auto, cuda) and both == key(device="cuda", index={"gpu": "on"})
    assert key(index={"kind": "hnsw"}) == key(index={"kind": "hnsw", "gpu": "off"})  # no GPU HNSW


def test_device_stages_downstream_of_embed_resolve_their_devices(tmp_path, monkeypatch):
    """The coreset's k-means runs with gpu='auto' (no config names it) and its proxy on
    coreset.proxy.device: both are in its key. Stages without device settings keep theirs."""
    write_jsonl(tmp_path / "raw" / "a.jsonl", [{"id": "a", "text": "x"}])

    def cfg(**proxy):
        return build_config(
            {
                "run_dir": str(tmp_path / "run"),
                "stages": ["ingest", "embed", "coreset"],
                "ingest": {"inputs": [{"path": str(tmp_path / "raw")}]},
                "embed": {},
                "coreset": {"k": 10, "score": "proxy_loss", "proxy": proxy},
            },
            use_env=False,
        )

    inputs = {**_pool("pool"), "embed": SimpleNamespace(manifest_hash="embed")}
    coreset = get_stage("coreset").key
    auto, explicit = cfg(), cfg(device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ix, "faiss_gpus", lambda: 0)
    cpu = coreset(auto, inputs)
    assert cpu == coreset(explicit, inputs)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = coreset(auto, inputs)
    assert cuda != cpu and coreset(explicit, inputs) == cpu
    monkeypatch.setattr(ix, "faiss_gpus", lambda: 1)
    assert coreset(auto, inputs) not in (cpu, cuda)
    assert coreset(explicit, inputs) != cpu  # the k-means device, though no setting names it
    # ingest has no device setting: its key is the module's own, on any machine
    from curamix.pipelines.ingest import ingest_key

    assert get_stage("ingest").key(auto, {}) == ingest_key(auto, {})


def test_sample_does_not_depend_on_the_partitioning():
    rng = random.Random(0)
    ids = [f"doc-{k}" for k in range(600)]
    one = sample_cutoff([ids], seed=3, sample=50)
    shuffled = ids[:]
    rng.shuffle(shuffled)
    for n_parts in (2, 7, 600):
        parts = [shuffled[p::n_parts] for p in range(n_parts)]
        assert sample_cutoff(parts, seed=3, sample=50) == one
    mask = in_sample(ids, 3, one)
    assert mask.sum() == 50
    chosen = sorted((sample_hash(3, i), i) for i in ids)[:50]
    assert {i for _, i in chosen} == {i for i, m in zip(ids, mask, strict=True) if m}
    assert sample_cutoff([ids[:300], ids[300:]], seed=4, sample=50) != one  # the seed matters
    assert sample_cutoff([ids], seed=3, sample=600) is None  # covers everything
    assert in_sample(ids, 3, None).all()
