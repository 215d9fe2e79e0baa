"""A run whose inputs and run folder are on a real S3 server (tests/s3.py): the same bytes
as on local disk, reruns skip, and what a user sees when the store says no."""

from __future__ import annotations

import uuid

import pytest

from curamix.config import build_config
from curamix.io import fs as cfs
from curamix.io.store import MARKER, latest_result, part_files
from curamix.runner import run_pipeline, run_status
from tests.conftest import MAX_DOC_BYTES

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _cfg(run_dir: str, inputs: str, engine: str = "spark"):
    return build_config(
        {
            "run_dir": run_dir,
            "stages": ["ingest"],
            "ingest": {
                "inputs": [{"path": inputs}],
                "max_doc_bytes": MAX_DOC_BYTES,
                "engine": engine,
            },
        },
        use_env=False,
    )


def _bytes(files: list[str]) -> dict[str, bytes]:
    return {f.rsplit("/", 1)[-1]: cfs.as_path(f).read_bytes() for f in files}


def _same_but_source(local: str, remote: str, folder: str, inputs: str) -> None:
    """Equal tables once the input location (in ``source``, and in the quarantine's ids and
    details) is mapped from the local folder to the bucket."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    a, b = pq.read_table(local), pq.read_table(remote)
    schema = a.schema
    for i, field in enumerate(schema):
        if field.type == "string":  # source, quarantine ids and details name the input
            col = pc.replace_substring(a[field.name], str(folder), inputs)
            a = a.set_column(i, field.name, col)
    assert a.cast(schema).equals(b), remote


@pytest.mark.parametrize(("engine", "inputs_on"), [("local", "s3"), ("local", "disk")])
def test_ingest_into_s3_equals_local_disk(spark, s3, bad_inputs, tmp_path, engine, inputs_on):
    """Inputs on local disk, run folder on S3: the same bytes in every part file. Inputs on
    S3 too: the same rows, except that ``source`` names the object instead of the file."""
    folder, expected = bad_inputs
    tag = uuid.uuid4().hex[:8]
    inputs = str(folder)
    if inputs_on == "s3":
        inputs = s3.upload(folder, f"{s3.bucket('pools')}/bad-{tag}")
    run_uri = f"{s3.bucket('runs')}/ingest-{tag}"
    local = run_pipeline(_cfg(str(tmp_path / "local"), str(folder), engine), spark)["ingest"]
    remote = run_pipeline(_cfg(run_uri, inputs, engine), spark)["ingest"]
    assert isinstance(remote.path, cfs.StorePath) and remote.path.name.startswith("attempt-")
    assert remote.counts["quarantine_reasons"] == local.counts["quarantine_reasons"]
    assert remote.counts["kept"] == local.counts["kept"] == expected["ingested"]
    assert remote.counts["quarantined"] == local.counts["quarantined"]
    for sub in ("data", "quarantine", "ledger"):
        want, got = part_files(local.path / sub), part_files(remote.path / sub)
        assert [f.rsplit("/", 1)[-1] for f in got] == [f.rsplit("/", 1)[-1] for f in want]
        if inputs_on == "disk":
            assert _bytes(got) == _bytes(want), sub
        else:
            for a, b in zip(want, got, strict=True):
                _same_but_source(a, b, str(folder), inputs)
    # nothing but the published attempt, its marker, the index and the run's own files
    assert (s3.local(f"{run_uri}/{remote.folder}") / MARKER).is_file()
    assert not [f for f in s3.local(f"{run_uri}/_scratch").rglob("*") if f.name != ".keep"]
    # a rerun skips; status reads the object store
    again = run_pipeline(_cfg(run_uri, inputs, engine), spark)["ingest"]
    assert again.skipped and again.path == remote.path
    assert [(s.stage, s.state) for s in run_status(run_uri)] == [("ingest", "done")]
    assert latest_result(run_uri, "ingest").folder == remote.folder


def test_store_errors_name_the_uri_and_the_cause(spark, s3, tmp_path):
    from curamix.config import ConfigError

    cfg = _cfg(f"{s3.bucket('runs')}/later", str(tmp_path)).model_copy(
        update={"stages": ["ingest", "mixture"]}
    )
    with pytest.raises(
        ConfigError, match=r"only ingest, dedup, .* can run in this release; mixture cannot yet"
    ):
        run_pipeline(cfg, spark)
    s3.bucket("pools")
    with pytest.raises(
        cfs.StorageError,
        match=r"s3://missing-bucket/r1: the bucket 'missing-bucket' does not exist",
    ):
        run_pipeline(_cfg("s3://missing-bucket/r1", str(tmp_path)), spark)
    from curamix.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"ingest.inputs.0.path: nothing exists at 's3://pools/nothing-here'"
    ):
        run_pipeline(
            _cfg(f"{s3.bucket('runs')}/e-{uuid.uuid4().hex[:6]}", "s3://pools/nothing-here"), spark
        )


def test_an_attempt_killed_before_publishing_is_ignored_then_collected(
    spark, s3, bad_inputs, tmp_path, monkeypatch
):
    """The driver dies after the tasks wrote every part but before the manifest and
    ``_COMPLETE``: the rerun starts a new attempt and ends with the same bytes as an
    uninterrupted run; ``curamix status`` and ``curamix gc`` work on the URI."""
    from typer.testing import CliRunner

    from curamix.cli import app
    from curamix.io.store import StageWriter

    folder, _ = bad_inputs
    run_uri = f"{s3.bucket('runs')}/killed-{uuid.uuid4().hex[:8]}"
    clean = run_pipeline(_cfg(str(tmp_path / "clean"), str(folder), "local"), spark)["ingest"]

    def die(self, manifest):
        raise KeyboardInterrupt("driver killed before publishing")

    with monkeypatch.context() as m:
        m.setattr(StageWriter, "_commit_remote", die)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(_cfg(run_uri, str(folder), "local"), spark)
    left = sorted(s3.local(run_uri).glob("ingest-*/attempt-*/data/part-*.parquet"))
    assert left and not list(s3.local(run_uri).glob("ingest-*/_COMPLETE"))
    cli = CliRunner()
    out = cli.invoke(app, ["status", run_uri])
    assert out.exit_code == 0 and "pending" in out.output, out.output
    rerun = run_pipeline(_cfg(run_uri, str(folder), "local"), spark)["ingest"]
    assert not rerun.skipped and rerun.path.name not in {p.parts[-3] for p in left}
    for sub in ("data", "quarantine", "ledger"):
        assert _bytes(part_files(rerun.path / sub)) == _bytes(part_files(clean.path / sub))
    out = cli.invoke(app, ["gc", run_uri, "--dry-run"])
    assert out.exit_code == 0 and "would remove 2 leftover(s)" in out.output, out.output
    out = cli.invoke(app, ["gc", run_uri])
    assert out.exit_code == 0 and "removed 2 leftover(s)" in out.output, out.output
    assert not [f for f in s3.local(run_uri).rglob("*.parquet") if f.parts[-3] != rerun.path.name]
    assert run_pipeline(_cfg(run_uri, str(folder), "local"), spark)["ingest"].skipped
    out = cli.invoke(app, ["status", "s3://no-such-bucket/r"])
    assert out.exit_code == 2 and "does not exist" in out.output, out.output


PIPELINE = ("ingest", "dedup", "decontam", "embed", "dsir", "select")


def _pipeline_cfg(corpus, run_dir: str, raw: str):
    bench = str(corpus / "targets" / "demobench_train.jsonl")
    return build_config(
        {
            "run_dir": run_dir,
            "seed": 0,
            "stages": list(PIPELINE),
            "ingest": {
                "inputs": [{"path": raw, "domain_map": {"news*": "news"}}],
                "max_doc_bytes": 100_000,
                "engine": "spark",
            },
            "dedup": {"threshold": 0.8, "engine": "spark"},
            "decontam": {"test_inputs": [{"path": bench}], "ngram": 8},
            "embed": {"sample": 60, "max_seq_length": 64},
            "dsir": {"target_inputs": [{"path": bench}], "min_example_length": 20},
            "select": {"fraction": 0.3},
        },
        use_env=False,
    )


def test_a_pipeline_on_s3_writes_the_bytes_of_a_local_run(spark, s3, tmp_path_factory):
    """ingest -> dedup (Spark engine) -> decontam -> embed -> DSIR -> select with the inputs and the
    run folder on S3, the Spark workers reading and writing the bucket: every Parquet part
    equals a local-disk run's (``source`` naming the object instead of the file), DSIR's
    model byte for byte; a rerun skips every stage."""
    from curamix.demo import make_demo_corpus

    corpus = tmp_path_factory.mktemp("s3-pipeline")
    make_demo_corpus(corpus, n_docs=200, seed=0)
    raw = str(corpus / "raw")
    local = run_pipeline(_pipeline_cfg(corpus, str(corpus / "run-local"), raw), spark)
    tag = uuid.uuid4().hex[:8]
    raw_uri = s3.upload(corpus / "raw", f"{s3.bucket('pools')}/demo-{tag}")
    run_uri = f"{s3.bucket('runs')}/pipe-{tag}"
    remote = run_pipeline(_pipeline_cfg(corpus, run_uri, raw_uri), spark)
    assert local["dedup"].counts["removed"] > 0 and remote["select"].counts["kept"] > 0
    for stage in PIPELINE:
        a, b = local[stage], remote[stage]
        subs = [
            o
            for o in a.manifest["outputs"].values()
            if o and "." not in o and list((a.path / o).glob("part-*.parquet"))
        ]
        for sub in subs:
            want, got = part_files(a.path / sub), part_files(b.path / sub)
            assert [f.rsplit("/", 1)[-1] for f in got] == [f.rsplit("/", 1)[-1] for f in want]
            for x, y in zip(want, got, strict=True):
                _same_but_source(x, y, raw, raw_uri)
        listed = {f["path"] for f in b.manifest["files"]}
        for name in ("report.md", "model.npz"):
            if (a.path / name).is_file():
                assert name in listed, (stage, name)
        if stage == "dsir":
            assert cfs.read_bytes(b.path / "model.npz") == (a.path / "model.npz").read_bytes()
        if stage == "embed":  # the FAISS index, written object by object, loads back
            from curamix.pipelines.embed import load_index

            for name in ("index.faiss", "ids.parquet", "meta.json"):
                got = cfs.read_bytes(b.path / "index" / name)
                assert got == (a.path / "index" / name).read_bytes(), name
            assert load_index(b).ntotal == load_index(a).ntotal == 60
    assert not [f for f in s3.local(f"{run_uri}/_scratch").rglob("*") if f.name != ".keep"]
    again = run_pipeline(_pipeline_cfg(corpus, run_uri, raw_uri), spark)
    assert all(r.skipped for r in again.values())
