"""curate_flow end to end on a small demo corpus: outputs, artifacts, skips, kill and resume,
a real Prefect server, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.conftest import tiny_overrides

pytestmark = [pytest.mark.spark, pytest.mark.slow]

STAGES = ["ingest", "dedup", "embed", "semdedup", "quality", "decontam", "dsir", "betr", "select"]
STEPS = [*STAGES, "mixture", "scaling", "recommend", "export"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from curamix.demo import make_demo_corpus, write_demo_pipeline

    root = tmp_path_factory.mktemp("flowdemo")
    make_demo_corpus(root, n_docs=150, seed=0)
    return root, write_demo_pipeline(root)


@pytest.fixture(scope="module")
def first_run(corpus, spark, prefect_harness):
    """One uninterrupted flow run into ``run_a``: (summary, flow run id, seconds)."""
    from curamix.flows.curate import curate_flow

    root, pipeline = corpus
    t0 = time.perf_counter()
    state = curate_flow(str(pipeline), tiny_overrides(root / "run_a"), return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state.state_details.flow_run_id, time.perf_counter() - t0


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digest(folder: Path, parts=("data", "ledger", "quarantine", "scores")) -> dict[str, str]:
    """sha256 of every data file under ``parts`` (Spark's random file-name UUIDs removed)."""
    out = {}
    for part in parts:
        for f in sorted((folder / part).rglob("*.parquet")) if (folder / part).is_dir() else []:
            name = re.sub(
                r"-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "", str(f.relative_to(folder))
            )
            out[name] = _sha(f)
    return out


def test_flow_runs_every_step_and_writes_a_valid_mixture(first_run):
    import pyarrow.parquet as pq

    from curamix.mixture import Mixture, cap_epochs

    summary, _, seconds = first_run
    print(f"first flow run: {seconds:.1f}s")
    assert list(summary["steps"]) == STEPS
    assert not any(s["skipped"] for s in summary["steps"].values())
    run = Path(summary["run_dir"])
    mix = Mixture.read_json(run / "mixture.json")  # validated on read
    assert abs(sum(mix.weights.values()) - 1) < 1e-6 and min(mix.weights.values()) >= 0
    select = Path(summary["steps"]["select"]["path"])
    domains = set(pq.read_table(select / "data", columns=["domain"]).column("domain").to_pylist())
    assert set(mix.weights) == domains
    assert mix.provenance["method"] == "dga" and mix.provenance["seed"] is None
    rec = mix.provenance["recommendation"]
    assert mix.total_tokens == pytest.approx(rec["n_tokens"])
    assert summary["mixture"]["weights"] == pytest.approx(dict(mix.weights))
    # the weight trajectory: the start and one row per DGA update (30 steps, every 10)
    search = Path(summary["steps"]["mixture"]["path"])
    traj = (search / "trajectory.csv").read_text().splitlines()
    assert len(traj) == 1 + 4 and traj[0].startswith("step,tokens,w:")
    for line in traj[1:]:
        assert sum(map(float, line.split(",")[2:])) == pytest.approx(1.0, abs=1e-6)
    assert [int(x.split(",")[0]) for x in traj[1:]] == [0, 10, 20, 30]
    assert (search / "weights.png").stat().st_size > 1000
    # the search's weights, capped at max_epochs per domain over the recommended budget
    found = Mixture.read_json(search / "mixture.json")
    expected, _ = cap_epochs(
        Mixture(found.weights, total_tokens=mix.total_tokens, domain_tokens=found.domain_tokens),
        rec["max_epochs"],
    )
    assert dict(mix.weights) == pytest.approx(dict(expected.weights))
    assert max(mix.epochs().values()) <= rec["max_epochs"] * (1 + 1e-9)
    scaling = Path(summary["steps"]["scaling"]["path"])
    assert pq.read_table(scaling / "results.parquet").num_rows == 6
    assert (scaling / "fits" / "chinchilla.png").is_file()
    exports = sorted(Path(f).name for f in summary["exports"])
    assert exports == ["mixture_csv.csv", "mixture_csv.md", "mixture_json.json",
                       "mixture_megatron.md", "mixture_megatron.txt"]  # fmt: skip
    megatron = (run / "export" / "mixture_megatron.txt").read_text()
    for d, w in mix.weights.items():
        assert f"data/{d}_text_document" in megatron and w > 0
    last = json.loads((run / "last_run.json").read_text())
    assert list(last) == STEPS


def test_artifacts_are_published(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from curamix.mixture import Mixture

    summary, flow_run_id, _ = first_run
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    by_key = {a.key: a for a in arts}
    expected = {f"curamix-{s}" for s in STAGES} | {
        "curamix-mixture-search", "curamix-scaling-laws", "curamix-mixture-weights",
        "curamix-final-mixture", "curamix-run", "curamix-dedup-plot-component-sizes",
        "curamix-select-plot-scores-hist", "curamix-mixture-search-plot-weights",
        "curamix-scaling-laws-plot-fits-chinchilla",
    }  # fmt: skip
    assert expected <= set(by_key), sorted(expected - set(by_key))
    assert set(summary["artifacts"]) == set(by_key)
    dedup = by_key["curamix-dedup"]
    assert dedup.type == "markdown"
    assert "## Per domain" in dedup.data and "removed reasons" in dedup.data
    assert "![component sizes](data:image/png;base64," in dedup.data
    table = by_key["curamix-mixture-weights"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    weights = dict(Mixture.read_json(Path(summary["run_dir"]) / "mixture.json").weights)
    assert {r["domain"]: r["weight"] for r in rows} == pytest.approx(weights, abs=1e-6)
    img = by_key["curamix-mixture-search-plot-weights"]
    assert img.type == "image" and img.data.startswith("file://")
    assert Path(img.data.removeprefix("file://")).is_file()


def test_rerun_skips_every_step(first_run, corpus):
    from curamix.flows.curate import curate_flow

    summary, _, _ = first_run
    _, pipeline = corpus
    run = Path(summary["run_dir"])
    before = _sha(run / "mixture.json")
    again = curate_flow(str(pipeline), tiny_overrides(run))
    assert list(again["steps"]) == STEPS
    assert all(s["skipped"] for s in again["steps"].values()), again["steps"]
    assert {k: v["path"] for k, v in again["steps"].items()} == {
        k: v["path"] for k, v in summary["steps"].items()
    }
    assert _sha(run / "mixture.json") == before


def test_tasks_are_plain_functions_underneath(first_run, corpus):
    from curamix.config import load_config
    from curamix.flows.curate import export_task, recommend_task
    from curamix.io.store import latest_result
    from curamix.mixture import Mixture

    summary, _, _ = first_run
    _, pipeline = corpus
    run = Path(summary["run_dir"])
    cfg = load_config(pipeline, tiny_overrides(run))
    search, scaling = latest_result(run, "mixture"), latest_result(run, "scaling")
    mix, path, same = recommend_task.fn(cfg, search, scaling)
    assert same and path == run / "mixture.json" and sum(mix.weights.values()) == pytest.approx(1)
    # without the scaling step the run's mixture is the mixer's, with no token budget
    mix2, _, same2 = recommend_task.fn(cfg, search, None)
    found = Mixture.read_json(search.path / "mixture.json")
    assert not same2 and mix2.weights == found.weights and mix2.total_tokens is None
    recommend_task.fn(cfg, search, scaling)  # back to the flow's mixture
    files, same3 = export_task.fn(cfg, path)
    assert same3 and {f.name for f in files} >= {"mixture_json.json", "mixture_megatron.txt"}


KILL_AT_CHECKPOINT = """
import os, signal, sys
from pathlib import Path
from curamix.flows.curate import curate_flow
from curamix.proxy import train

real = train._atomic

def write_then_die(path, write):
    real(path, write)
    if Path(path).name == train.CHECKPOINT and "search-" in str(path):
        os.killpg(os.getpgrp(), signal.SIGKILL)  # mid-search: a checkpoint, no output

train._atomic = write_then_die
curate_flow(sys.argv[1], sys.argv[2:])
"""
"""The flow, SIGKILLed (with anything it started) once the mixture search has written its
first proxy checkpoint: a driver-side step interrupted before it publishes anything."""


def test_killed_flow_resumes_with_identical_outputs(first_run, corpus, prefect_harness, caplog):
    """SIGKILL the flow (and its Spark JVM) once dedup is complete; run it again and SIGKILL it
    in the middle of the mixture search (a driver-side step); run it a third time: each
    restart takes the dead process's run-folder lock over, skips the finished steps, redoes
    the interrupted one (the search resumes from its checkpoint), and the outputs equal an
    uninterrupted run's, byte for byte."""
    import logging

    from prefect.settings import PREFECT_API_URL

    from curamix.flows.curate import curate_flow
    from curamix.io.store import lock_owner, read_stages_index

    summary_a, _, _ = first_run
    root, pipeline = corpus
    run_b = root / "run_b"
    log = root / "killed.log"
    code = "import sys; from curamix.flows.curate import curate_flow; curate_flow(sys.argv[1], sys.argv[2:])"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONHASHSEED": "0"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(pipeline), *tiny_overrides(run_b)],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(run_b.glob("dedup-*/_COMPLETE")):
            assert proc.poll() is None, (
                f"the flow ended before the kill:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, (
                f"no dedup marker in time:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow, its Spark JVM and Python workers
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_b / "mixture.json").exists()
    assert lock_owner(run_b)["pid"] == proc.pid  # the dead process's lock, left behind
    after_dedup = read_stages_index(run_b)

    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_AT_CHECKPOINT, str(pipeline), *tiny_overrides(run_b)],
            env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert lock_owner(run_b)["pid"] == proc.pid  # it took the first lock over
    index = read_stages_index(run_b)
    assert list(index) == STAGES  # every stage completed ...
    assert {s: index[s] for s in after_dedup} == after_dedup  # ... ingest and dedup not redone
    assert list(run_b.glob("proxy/search-*/proxy/checkpoint.pt"))  # killed mid-search
    assert not list(run_b.glob("mixture-*/_COMPLETE")) and not (run_b / "mixture.json").exists()

    caplog.set_level(logging.INFO, logger="curamix.proxy.train")
    summary_b = curate_flow(str(pipeline), tiny_overrides(run_b))
    assert lock_owner(run_b)["pid"] == os.getpid()  # the second lock taken over
    steps = summary_b["steps"]
    assert all(steps[s]["skipped"] for s in STAGES), steps
    assert not any(steps[s]["skipped"] for s in ("mixture", "scaling", "recommend", "export"))
    assert "proxy: resumed from" in caplog.text and "at step 10 of 30" in caplog.text
    for stage in STAGES:
        a, b = Path(summary_a["steps"][stage]["path"]), Path(steps[stage]["path"])
        da, db = tree_digest(a), tree_digest(b)
        assert da and da == db, stage
    run_a, run_b = Path(summary_a["run_dir"]), Path(summary_b["run_dir"])
    assert _sha(run_a / "mixture.json") == _sha(run_b / "mixture.json")
    for step, name in (("mixture", "trajectory.csv"), ("mixture", "mixture.json"),
                       ("scaling", "recommendation.json")):  # fmt: skip
        a = Path(summary_a["steps"][step]["path"]) / name
        b = Path(steps[step]["path"]) / name
        assert _sha(a) == _sha(b), name
    for f in summary_a["exports"]:
        assert _sha(Path(f)) == _sha(run_b / "export" / Path(f).name)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flow_run_against_a_real_prefect_server(first_run, corpus, tmp_path):
    """`prefect server start` on loopback, the flow run against it, its state read back."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from curamix.flows.curate import curate_flow

    summary, _, _ = first_run
    _, pipeline = corpus
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_API_URL": ""}  # fmt: skip
    prefect = Path(sys.executable).with_name("prefect")
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server was not healthy within 120 s"
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url}):
            state = curate_flow(
                str(pipeline), tiny_overrides(Path(summary["run_dir"])), return_state=True
            )
            with get_client(sync_client=True) as client:
                assert str(client.api_url).rstrip("/") == url
                run = client.read_flow_run(state.state_details.flow_run_id)
                arts = client.read_artifacts()
        assert run.state.is_completed(), run.state
        assert run.parameters["config"] == str(pipeline)
        assert "curamix-final-mixture" in {a.key for a in arts}
        assert all(s["skipped"] for s in state.result()["steps"].values())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_unknown_key_fails_before_any_stage(corpus, prefect_harness, tmp_path):
    from curamix.config import ConfigError
    from curamix.flows.curate import curate_flow

    _, pipeline = corpus
    bad = tmp_path / "bad.yaml"
    text = pipeline.read_text().replace("dedup:\n", "dedup:\n  treshold: 0.7\n", 1)
    bad.write_text(text.replace("run_dir: run", f"run_dir: {tmp_path / 'run'}"))
    with pytest.raises(ConfigError, match=r"dedup\.treshold: Extra inputs are not permitted"):
        curate_flow(str(bad))
    state = curate_flow({"stages": [], "mixtur": {}, "run_dir": str(tmp_path / "r2")},
                        return_state=True)  # fmt: skip
    assert state.is_failed() and "mixtur" in state.message
    assert not (tmp_path / "run").exists() and not (tmp_path / "r2").exists()


def test_plan_problems_fail_before_any_stage(corpus, tmp_path):
    from curamix.config import ConfigError, load_config
    from curamix.flows.steps import check_plan

    _, pipeline = corpus
    cfg = load_config(pipeline, [f"run_dir={tmp_path / 'r'}"], use_env=False)
    data = cfg.model_dump(mode="json")
    no_mix = {**data, "mixture": None}
    with pytest.raises(ConfigError, match="scaling: needs the 'mixture:' section"):
        check_plan(type(cfg).model_validate(no_mix))
    no_target = {**data, "dsir": None, "stages": ["ingest", "dedup"], "select": None}
    with pytest.raises(ConfigError, match="'dga' follows a target's gradient"):
        check_plan(type(cfg).model_validate(no_target))
    bad_params = {**data, "mixture": {**data["mixture"], "params": {"etta": 1.0}}}
    with pytest.raises(ConfigError, match=r"DGAMixer takes no parameter\(s\) \['etta'\]"):
        check_plan(type(cfg).model_validate(bad_params))
    scores = {**data, "mixture": {**data["mixture"], "stage": "dsir"}}
    with pytest.raises(ConfigError, match="'dsir' writes scores, not documents"):
        check_plan(type(cfg).model_validate(scores))
    assert not (tmp_path / "r").exists()


def test_explore_notebook_executes_on_the_flow_run(first_run, monkeypatch, tmp_path):
    """notebooks/explore.ipynb, executed cell by cell in a kernel (nbclient) on the flow's run:
    no cell fails, the plots render, and what it reports matches the run's own files."""
    import nbformat
    from nbclient import NotebookClient

    from curamix.mixture import Mixture

    summary, _, _ = first_run
    run = Path(summary["run_dir"])
    nb = nbformat.read(Path(__file__).resolve().parents[2] / "notebooks" / "explore.ipynb", 4)
    monkeypatch.setenv("CURAMIX_RUN", str(run))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # composition, scores, weight trajectories + losses, the staged schedule over the
    # trajectory (cell 4b), law fit
    assert len(images) == 5
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    seen = json.loads(text.split("SUMMARY ", 1)[1].splitlines()[0])
    data_stages = [s for s in STAGES if s not in ("embed", "dsir")]
    assert seen["data_stages"] == data_stages
    for stage in data_stages:
        manifest = json.loads((Path(summary["steps"][stage]["path"]) / "manifest.json").read_text())
        assert seen["docs"][stage] == manifest["counts"]["out"], stage
        assert seen["ledger_rows"][stage] == manifest["counts"]["in"], stage
    assert seen["quarantined"] == 8
    weights = dict(Mixture.read_json(run / "mixture.json").weights)
    assert seen["weights"] == pytest.approx(weights)
    assert "data/math_text_document" in text  # the megatron blend printed by the export cell


def test_a_read_only_run_folder_fails_the_flow_before_any_step(corpus, prefect_harness, tmp_path):
    """The flow stops on its first step, the run-folder lock, naming the folder (no Spark, no
    stage, nothing written); see tests/test_faults.py for the runner and the CLI."""
    from curamix.flows.curate import curate_flow
    from tests.test_faults import read_only

    _, pipeline = corpus
    run = tmp_path / "read-only"
    run.mkdir()
    with read_only(run) as reason:
        state = curate_flow(str(pipeline), tiny_overrides(run), return_state=True)
    assert state.is_failed()
    assert f"run folder {run} is not writable ({reason}); " in state.message, state.message
    assert not list(run.iterdir())
