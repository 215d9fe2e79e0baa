"""Staged mixtures (a mixer's trajectory as K stages) in every export format, each in the
trainer's own terms: native schedules, one file per stage with a README and (Megatron) a run
script that resumes phase by phase, the Hugging Face snippet's stage-switching sampler run on
in-memory datasets; and ``curamix export --format <each>`` on a DGA search's run folder."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from curamix.export import FORMATS, export_command, export_mixture, load_mixture, render
from curamix.mixers import compress_trajectory, staged_mixture
from curamix.mixture import Mixture, MixtureError

TEMPLATE = "/data/{domain}_text_document"
DOMAINS = ["web", "code", "math", "books"]
PHASES = [
    (0, {"web": 0.25, "code": 0.25, "math": 0.25, "books": 0.25}),
    (200, {"web": 0.40, "code": 0.20, "math": 0.30, "books": 0.10}),
    (450, {"web": 0.10, "code": 0.30, "math": 0.60, "books": 0.00}),
    (800, {"web": 0.30, "code": 0.30, "math": 0.20, "books": 0.20}),
]


def staged(total_tokens: float | None = 2e9) -> Mixture:
    """Four stages from a piecewise-constant trajectory of 1000 proxy tokens (updates every 50
    tokens, a plateau per phase), the third without books."""
    rows = []
    for i in range(20):
        t = 50 * i
        w = [w for start, w in PHASES if start <= t][-1]
        rows.append((i, t, w))
    sc = compress_trajectory(rows, 1000, n_stages=4)
    assert sc.starts == [0.0, 0.2, 0.45, 0.8] and sc.max_l1 == pytest.approx(0.0, abs=1e-12)
    base = Mixture(
        PHASES[-1][1], total_tokens=total_tokens,
        domain_tokens={"web": 5e9, "code": 4e8, "math": 3e8, "books": 3e8},
        provenance={"method": "dga", "seed": 3},
    )  # fmt: skip
    return staged_mixture(sc, base)


STARTS = [0.0, 0.2, 0.45, 0.8]
ENDS = [0.2, 0.45, 0.8, 1.0]
LABELS = ["main", "stage1", "stage2", "stage3"]


def positive(w: dict) -> dict:
    return {d: x for d, x in w.items() if x > 0}


# ---------------------------------------------------------------------------------------------
# Every format, in its own terms


def test_whole_formats_hold_every_stage(tmp_path):
    m = staged()
    d = json.loads(render(m, "json")[""])
    assert [s["start"] for s in d["schedule"]] == STARTS[1:]
    assert [d["weights"]] + [s["weights"] for s in d["schedule"]] == [w for _, w in PHASES]
    assert d["provenance"]["schedule"]["n_stages"] == 4
    (js,) = export_mixture(m, "json", tmp_path)
    assert load_mixture(js) == m  # the whole staged mixture reads back
    y = yaml.safe_load(render(m, "yaml")[""])
    assert y["schedule"] == d["schedule"] and y["tokens_per_domain"] == pytest.approx(
        d["tokens_per_domain"]
    )
    rows = list(csv.DictReader(io.StringIO(render(m, "csv")[""])))
    assert list(rows[0]) == ["domain", "weight", "tokens", "epochs", "stage1@0.2", "stage2@0.45",
                             "stage3@0.8"]  # fmt: skip
    for i, col in enumerate(["weight", "stage1@0.2", "stage2@0.45", "stage3@0.8"]):
        assert {r["domain"]: float(r[col]) for r in rows} == PHASES[i][1]
    # tokens per domain over the schedule: each stage's weight times its share of the run
    tok = {r["domain"]: float(r["tokens"]) for r in rows}
    for dom in DOMAINS:
        want = sum(w[dom] * (e - s) for (_, w), s, e in zip(PHASES, STARTS, ENDS, strict=True))
        assert tok[dom] == pytest.approx(2e9 * want)


def test_native_schedules_place_the_boundaries_in_steps():
    m = staged()
    nano = yaml.safe_load(render(m, "nanotron", template=TEMPLATE, total_steps=4000)[""])
    st = nano["data_stages"]
    assert [s["name"] for s in st] == LABELS
    assert [s["start_training_step"] for s in st] == [1, 801, 1801, 3201]  # nanotron counts from 1
    for s, (_, w) in zip(st, PHASES, strict=True):
        ds = s["data"]["dataset"]
        names = [p.split("/")[-1].removesuffix("_text_document") for p in ds["dataset_folder"]]
        assert dict(zip(names, ds["dataset_weights"], strict=True)) == positive(w)
        assert s["data"]["seed"] == 3
    lev = yaml.safe_load(render(m, "levanter", template=TEMPLATE, total_steps=4000)[""])
    assert lev["train_weights"] == [[0, PHASES[0][1]], [800, PHASES[1][1]], [1800, PHASES[2][1]],
                                    [3200, PHASES[3][1]]]  # fmt: skip


@pytest.mark.parametrize("fmt", ["megatron", "olmo-core", "llm-foundry"])
def test_per_stage_formats_write_one_config_per_stage_and_a_readme(fmt, tmp_path):
    m = staged()
    files = export_mixture(m, fmt, tmp_path, template=TEMPLATE)
    slug = fmt.replace("-", "_")
    ext = FORMATS[fmt].ext
    stage_files = [f"mixture_{slug}_{label}.{ext}" for label in LABELS]
    extra = ["mixture_megatron_run.sh"] if fmt == "megatron" else []
    assert [f.name for f in files] == [*stage_files, *extra, f"mixture_{slug}.md"]
    for name, (_, w), s, e in zip(stage_files, PHASES, STARTS, ENDS, strict=True):
        text = (tmp_path / name).read_text()
        if fmt == "megatron":
            tokens = text.split()
            names = [p.split("/")[-1].removesuffix("_text_document") for p in tokens[1::2]]
            got = dict(zip(names, map(float, tokens[0::2]), strict=True))
        elif fmt == "olmo-core":
            cfg = yaml.safe_load(text)
            got = {x["source_name"]: x["target_ratio"] for x in cfg["source_list"]["sources"]}
            assert cfg["requested_tokens"] == round((e - s) * 2e9)  # the stage's own share
        else:
            got = {d: x["proportion"] for d, x in yaml.safe_load(text)["streams"].items()}
        assert got == positive(w)
        if fmt != "megatron":  # the file says where its stage starts and ends
            assert f"this file: stage '{LABELS[STARTS.index(s)]}', from {s:g} to {e:g}" in text
    readme = (tmp_path / f"mixture_{slug}.md").read_text()
    assert "## Stages" in readme
    for label, name, s, e in zip(LABELS, stage_files, STARTS, ENDS, strict=True):
        row = f"| {label} | `{name}` | {s:g} | {e:g} | {s * 2e9:.4g} | {e * 2e9:.4g} |"
        assert row in readme
    assert "previous stage's checkpoint" in readme
    assert "schedule from the mixer's trajectory: 4 stages from 20 points" in readme


def test_megatron_run_script_trains_each_phase_resuming_from_the_last(tmp_path):
    """The script, run with a stand-in for pretrain_gpt.py: one call per phase, in order, each
    with its blend, the samples at its end (cumulative), the whole run's decay horizon and
    one checkpoint folder."""
    m = staged(total_tokens=1_000_000)
    export_mixture(m, "megatron", tmp_path, template=TEMPLATE)
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "fake_megatron.py"
    fake.write_text(
        "import json, os, sys\n"
        "with open(os.environ['LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    env = {**os.environ, "SEQ_LENGTH": "128", "CKPT_DIR": str(tmp_path / "ckpt"),
           "LAUNCH": sys.executable, "MEGATRON": str(fake), "LOG": str(log),
           "MEGATRON_ARGS": "--num-layers 2 --lr-warmup-samples 10"}  # fmt: skip
    out = subprocess.run(["bash", str(tmp_path / "mixture_megatron_run.sh")], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert "curamix: phase stage2 until sample 6250 of 7812" in out.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 4
    samples = 1_000_000 // 128
    for call, (_, w), end, label in zip(calls, PHASES, ENDS, LABELS, strict=True):
        args = dict(zip(call[::2], call[1::2], strict=False))
        assert call[:4] == ["--num-layers", "2", "--lr-warmup-samples", "10"]
        assert args["--train-samples"] == str(round(end * samples))
        assert args["--lr-decay-samples"] == str(samples) and args["--seq-length"] == "128"
        assert args["--load"] == args["--save"] == str(tmp_path / "ckpt")
        blend = Path(args["--data-args-path"])
        assert blend == tmp_path / f"mixture_megatron_{label}.txt"
        tokens = blend.read_text().split()
        names = [p.split("/")[-1].removesuffix("_text_document") for p in tokens[1::2]]
        assert dict(zip(names, map(float, tokens[0::2]), strict=True)) == positive(w)
    # without a total in the mixture the script asks for one
    export_mixture(staged(total_tokens=None), "megatron", tmp_path / "nt", template=TEMPLATE)
    bad = subprocess.run(["bash", str(tmp_path / "nt" / "mixture_megatron_run.sh")],
                         env={**env, "LOG": str(tmp_path / "nt.log")}, capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode != 0 and "set TOTAL_TOKENS" in bad.stderr
    assert not (tmp_path / "nt.log").exists()


def test_hf_snippet_runs_the_stages_on_in_memory_datasets(monkeypatch):
    """Exec the snippet with load_dataset answering tiny in-memory datasets: the sampler draws
    each stage's domains at its probabilities and switches at the token boundaries."""
    datasets = pytest.importorskip("datasets")
    m = staged(total_tokens=60_000)
    text = render(m, "hf", template=TEMPLATE, seed=5)[""]
    compile(text, "<hf snippet>", "exec")
    lengths = {"web": 12, "code": 8, "math": 5, "books": 20}  # tokens per example

    def fake_load(path, split, streaming):
        d = path.split("/")[-1].removesuffix("_text_document")
        assert split == "train" and streaming is True
        return datasets.Dataset.from_dict(
            {"input_ids": [[i] * lengths[d] for i in range(30)], "domain": [d] * 30}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    ns: dict = {}
    exec(text, ns)
    assert ns["DOMAINS"] == DOMAINS and ns["TOTAL"] == 60_000 and ns["SEED"] == 5
    assert [(label, s) for label, s, _ in ns["STAGES"]] == list(zip(LABELS, STARTS, strict=True))
    drawn, per_stage = 0, [dict.fromkeys(DOMAINS, 0) for _ in STARTS]
    for ex in ns["mixed"]:
        stage = max(i for i, s in enumerate(STARTS) if drawn >= s * 60_000)
        per_stage[stage][ex["domain"]] += 1
        drawn += len(ex["input_ids"])
    assert 60_000 <= drawn < 60_000 + max(lengths.values())
    for counts, (_, w) in zip(per_stage, PHASES, strict=True):
        n = sum(counts.values())
        for d in DOMAINS:
            p = w[d]
            assert abs(counts[d] / n - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-12, (counts, w)
    assert per_stage[2]["books"] == 0  # weight 0 in that stage
    # one stage still renders as interleave_datasets
    one = render(m, "hf", template=TEMPLATE, stage="stage2")["stage2"]
    assert "interleave_datasets(" in one and "STAGES" not in one
    with pytest.raises(ValueError, match="set TOTAL"):
        exec(render(staged(total_tokens=None), "hf", template=TEMPLATE)[""], {})


# ---------------------------------------------------------------------------------------------
# The real run: scaled budget, epoch caps, and the CLI on a DGA search


def test_export_scales_the_schedule_to_the_real_run_and_caps_epochs(tmp_path):
    src = staged(total_tokens=None).write_json(tmp_path / "mix.json")
    (js,) = export_command(src, "json", tmp_path / "a", total_tokens=1e9)
    m = load_mixture(js)
    assert m.total_tokens == 1e9 and [s.start for s in m.schedule] == STARTS[1:]
    # at 2e10 tokens math asks for 25 epochs of its 3e8 unique tokens (stage2 alone 14),
    # code 13.25, books 7.67: each scaled down in every stage to 4, web takes the rest
    files = export_command(src, "olmo-core", tmp_path / "b", prefix_template=TEMPLATE,
                           total_tokens=2e10, max_epochs=4)  # fmt: skip
    readme = files[-1].read_text()
    assert "epoch cap: the schedule asked for 25 epochs of 'math'" in readme
    assert "stage2 [0.45, 0.8) 14 (alone over the cap)" in readme
    assert readme.count("epoch cap:") == 3  # code and books too
    cfg = yaml.safe_load(files[2].read_text())  # stage2: math capped, the rest spread
    ratios = {s["source_name"]: s["target_ratio"] for s in cfg["source_list"]["sources"]}
    assert ratios["math"] == pytest.approx(0.6 * 4 / 25)
    assert sum(ratios.values()) == pytest.approx(1.0)
    capped = load_mixture(export_command(src, "json", tmp_path / "d", total_tokens=2e10,
                                         max_epochs=4)[0])  # fmt: skip
    assert capped.epochs() == pytest.approx({"web": capped.epochs()["web"], "code": 4.0,
                                             "math": 4.0, "books": 4.0})  # fmt: skip
    assert "max_epochs: 4 per domain (checked)" in files[0].read_text()
    with pytest.raises(MixtureError, match="max_epochs needs the mixture's total_tokens"):
        export_command(src, "json", tmp_path / "c", max_epochs=4)


@pytest.fixture(scope="module")
def dga_run(tmp_path_factory) -> Path:
    """A run folder whose mixture.json is a DGA search's staged schedule (3 stages)."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curamix.config import MixtureSearchConfig
    from curamix.demo import DOMAINS as MAKERS
    from curamix.flows.steps import finalize_mixture
    from curamix.io.store import JobResult
    from curamix.mixers.search import run_mixture_search

    root = tmp_path_factory.mktemp("dgarun")
    r = random.Random(0)
    makers = list(MAKERS.items())[:3]
    rows = [
        {"id": f"{d}-{i}", "domain": d, "text": make(r)} for d, make in makers for i in range(12)
    ]
    pool = root / "select-x"
    (pool / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), pool / "data" / "part-00000.parquet")
    (pool / "manifest.json").write_text("{}")
    cfg = MixtureSearchConfig(
        method="dga", vocab_size=300, seq_len=32, batch_size=4, total_tokens=128 * 40,
        update_every=5, eval_tokens=512, checkpoint_every=None,
        schedule={"stages": 3, "export": "staged"},
    )  # fmt: skip
    target = [makers[0][1](r) for _ in range(8)]
    search = run_mixture_search(root / "run", cfg, JobResult("select", pool, {}, skipped=True),
                                seed=0, target_texts=target)  # fmt: skip
    finalize_mixture(root / "run", search)
    return root / "run"


CLI_OPTIONS = {
    "json": [], "yaml": [], "csv": [],
    "megatron": ["--prefix-template", TEMPLATE],
    "olmo-core": ["--prefix-template", TEMPLATE],
    "nanotron": ["--prefix-template", TEMPLATE, "--total-steps", "1000"],
    "llm-foundry": ["--prefix-template", TEMPLATE],
    "hf": ["--prefix-template", TEMPLATE],
    "levanter": ["--prefix-template", TEMPLATE, "--total-steps", "1000"],
}  # fmt: skip


def test_every_format_has_cli_options_here():
    assert set(CLI_OPTIONS) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_curamix_export_writes_a_staged_mixture_for_each_format(fmt, dga_run, tmp_path):
    from curamix.cli import app

    mix = load_mixture(dga_run)
    assert mix.provenance["schedule"]["export"] == "staged" and len(mix.stages()) == 3
    assert mix.provenance["schedule"]["final_weights"]  # both recorded
    out = tmp_path / fmt
    res = CliRunner().invoke(app, ["export", "--format", fmt, str(dga_run), "--out", str(out),
                                   "--total-tokens", "1000000", *CLI_OPTIONS[fmt]])  # fmt: skip
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir())
    texts = render(Mixture.from_dict({**mix.to_dict(), "total_tokens": 1e6}), fmt,
                   **{"template": TEMPLATE, "total_steps": 1000}
                   if fmt in ("nanotron", "levanter") else
                   ({"template": TEMPLATE} if CLI_OPTIONS[fmt] else {}))  # fmt: skip
    if FORMATS[fmt].schedule == "per-stage":
        assert len(texts) == 3 and f"mixture_{fmt.replace('-', '_')}.md" in names
    else:
        assert len(texts) == 1  # one file runs every stage
    for key, text in texts.items():
        stem = f"mixture_{fmt.replace('-', '_')}" + (f"_{key}" if key else "")
        written = (out / f"{stem}.{FORMATS[fmt].ext}").read_text()
        assert written == (text + "\n" if fmt == "megatron" else text)
    if fmt == "megatron":
        assert "mixture_megatron_run.sh" in names
        script = (out / "mixture_megatron_run.sh").read_text()
        assert 'TOTAL_TOKENS="${TOTAL_TOKENS:-1000000}"' in script
        assert script.count("\nphase ") == 3
    if fmt == "hf":
        assert "TOTAL = 1000000" in texts[""] and texts[""].count("    ('") == 3
