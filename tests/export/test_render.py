"""Every format round-trips the weights, keeps domain order, exports every stage, refuses
bad locations, and carries the token and epoch notes."""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import json

import pytest
import yaml

from curamix.export import (
    FORMATS,
    format_name,
    render,
    render_csv,
    render_hf,
    render_json,
    render_levanter,
    render_llm_foundry,
    render_megatron,
    render_nanotron,
    render_notes,
    render_olmo_core,
)
from curamix.mixture import Mixture, MixtureError
from tests.export import TEMPLATE, WEIGHTS, one_stage, three_stage, two_stage

# What each format needs to render every stage of a multi-stage mixture.
OPTIONS = {
    "json": {},
    "yaml": {},
    "csv": {},
    "megatron": {"template": TEMPLATE},
    "olmo-core": {"template": TEMPLATE},
    "nanotron": {"template": TEMPLATE, "total_steps": 1000},
    "llm-foundry": {"template": TEMPLATE},
    "hf": {"template": TEMPLATE},
    "levanter": {"template": TEMPLATE, "total_steps": 1000},
}


def _hf_assignments(text: str) -> dict:
    compile(text, "<hf snippet>", "exec")  # it is valid Python
    values = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):  # skip non-literals
                values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def parse_stages(fmt: str, texts: dict[str, str]) -> list[dict[str, float]]:
    """Each stage's ``{domain: weight}`` (in file order), read back from the rendered text."""
    if fmt in ("json", "yaml"):
        (text,) = texts.values()
        d = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        return [d["weights"]] + [s["weights"] for s in d["schedule"]]
    if fmt == "csv":
        (text,) = texts.values()
        rows = list(csv.DictReader(io.StringIO(text)))
        cols = ["weight"] + [c for c in rows[0] if "@" in c]
        return [{r["domain"]: float(r[c]) for r in rows} for c in cols]
    if fmt == "nanotron":
        (text,) = texts.values()
        stages = yaml.safe_load(text)["data_stages"]
        out = []
        for s in stages:
            ds = s["data"]["dataset"]
            assert len(ds["dataset_folder"]) == len(ds["dataset_weights"])
            names = [p.split("/")[-1].removesuffix("_text_document") for p in ds["dataset_folder"]]
            out.append(dict(zip(names, ds["dataset_weights"], strict=True)))
        return out
    if fmt == "levanter":
        (text,) = texts.values()
        tw = yaml.safe_load(text)["train_weights"]
        return [tw] if isinstance(tw, dict) else [w for _, w in tw]
    out = []
    for text in texts.values():
        if fmt == "megatron":
            tokens = text.split()
            assert len(tokens) % 2 == 0
            prefixes = tokens[1::2]
            assert prefixes == [TEMPLATE.format(domain=d) for d in _names(prefixes)]
            out.append(dict(zip(_names(prefixes), map(float, tokens[0::2]), strict=True)))
        elif fmt == "olmo-core":
            sources = yaml.safe_load(text)["source_list"]["sources"]
            for s in sources:
                assert s["paths"] == [TEMPLATE.format(domain=s["source_name"])]
                assert s["max_repetition_ratio"] >= 1
            out.append({s["source_name"]: s["target_ratio"] for s in sources})
        elif fmt == "llm-foundry":
            streams = yaml.safe_load(text)["streams"]
            assert all(s["local"] == TEMPLATE.format(domain=d) for d, s in streams.items())
            out.append({d: s["proportion"] for d, s in streams.items()})
        elif fmt == "hf":
            v = _hf_assignments(text)
            assert list(v["PATHS"]) == v["DOMAINS"]
            assert v["PATHS"] == {d: TEMPLATE.format(domain=d) for d in v["DOMAINS"]}
            if "STAGES" in v:  # every stage in one snippet, its sampler switching
                starts = [start for _, start, _ in v["STAGES"]]
                assert starts[0] == 0.0 and starts == sorted(starts)
                out += [dict(zip(v["DOMAINS"], p, strict=True)) for _, _, p in v["STAGES"]]
            else:
                out.append(dict(zip(v["DOMAINS"], v["PROBABILITIES"], strict=True)))
        else:
            raise AssertionError(f"no parser for {fmt}")
    return out


def _names(prefixes: list[str]) -> list[str]:
    return [p.split("/")[-1].removesuffix("_text_document") for p in prefixes]


def test_every_format_has_a_parser_here():
    assert set(OPTIONS) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("make", [one_stage, two_stage], ids=["one_stage", "two_stage"])
def test_weights_roundtrip_in_order_and_sum_to_one(fmt, make):
    m = make()
    texts = render(m, fmt, **OPTIONS[fmt])
    stages = parse_stages(fmt, texts)
    assert len(stages) == len(m.stages())  # every stage is exported
    for got, stage in zip(stages, m.stages(), strict=True):
        assert list(got) == list(WEIGHTS)  # the mixture's domain order, not sorted
        assert got == dict(stage.weights)  # exact: weights are written with repr
        assert abs(sum(got.values()) - 1.0) < 1e-9


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_three_stages_all_exported_with_zero_weights_handled(fmt):
    m = three_stage()
    texts = render(m, fmt, **OPTIONS[fmt])
    stages = parse_stages(fmt, texts)
    assert len(stages) == 3
    for got, stage in zip(stages, m.stages(), strict=True):
        want = {d: stage.weights.get(d, 0.0) for d in m.domains}
        if fmt in ("json", "yaml"):
            want = dict(stage.weights)  # the artifact as stored
        elif fmt in ("megatron", "olmo-core", "nanotron", "llm-foundry"):
            want = {
                d: w for d, w in want.items() if w > 0
            }  # trainers: zero-weight domains left out
        # hf: one sampler over the domains some stage uses (every one here), zeros kept
        assert got == want
        assert abs(sum(got.values()) - 1.0) < 1e-9
    if FORMATS[fmt].schedule == "per-stage":
        assert list(texts) == ["main", "stage1", "anneal"]


@pytest.mark.parametrize("fmt", ["megatron", "olmo-core", "llm-foundry"])
def test_single_stage_formats_refuse_a_multi_stage_mixture_without_stage(fmt):
    renderer = FORMATS[fmt].render
    with pytest.raises(MixtureError, match=r"2 stages .*'main' from 0, 'upsample' from 0\.85"):
        renderer(two_stage(), template=TEMPLATE)
    one = renderer(two_stage(), template=TEMPLATE, stage="upsample")
    assert one == renderer(two_stage(), template=TEMPLATE, stage=1)
    assert render(two_stage(), fmt, template=TEMPLATE, stage="upsample") == {"upsample": one}
    with pytest.raises(MixtureError, match="no stage 'cooldown'"):
        renderer(two_stage(), template=TEMPLATE, stage="cooldown")


@pytest.mark.parametrize("renderer", [render_nanotron, render_levanter])
def test_native_schedules_need_total_steps(renderer):
    with pytest.raises(MixtureError, match="total_steps="):
        renderer(two_stage(), template=TEMPLATE)
    with pytest.raises(MixtureError, match="too few to separate"):
        renderer(three_stage(), template=TEMPLATE, total_steps=1)


def test_native_schedule_steps():
    nano = yaml.safe_load(render_nanotron(two_stage(), template=TEMPLATE, total_steps=2000))
    assert [s["start_training_step"] for s in nano["data_stages"]] == [1, 1701]
    assert [s["name"] for s in nano["data_stages"]] == ["main", "upsample"]
    assert nano["data_stages"][0]["data"]["seed"] == 7  # the provenance seed
    lev = yaml.safe_load(render_levanter(two_stage(), template=TEMPLATE, total_steps=2000))
    assert [step for step, _ in lev["train_weights"]] == [0, 1700]
    assert lev["configs"]["math"] == {"train_urls": ["/data/math_text_document"]}
    one = yaml.safe_load(render_levanter(two_stage(), stage="upsample"))
    assert one == {"train_weights": dict(two_stage().schedule[0].weights)}
    with pytest.raises(MixtureError, match="give total_steps= to place"):
        render_nanotron(two_stage(), template=TEMPLATE, stage="upsample")


@pytest.mark.parametrize("fmt", ["megatron", "olmo-core", "nanotron", "llm-foundry", "hf"])
def test_missing_or_unknown_location_is_refused_naming_the_domain(fmt):
    renderer = FORMATS[fmt].render
    paths = {d: f"/data/{d}" for d in WEIGHTS if d != "math"}
    with pytest.raises(MixtureError, match="no entry for domain 'math'"):
        renderer(one_stage(), paths=paths)
    with pytest.raises(MixtureError, match="unknown domain 'wiki'"):
        renderer(one_stage(), paths={**paths, "math": "/m", "wiki": "/w"})
    with pytest.raises(MixtureError, match="needs a data location for every domain"):
        renderer(one_stage())
    # the template fills what the mapping lacks; the mapping wins where it names a domain
    text = renderer(one_stage(), paths={"math": "/special/math"}, template=TEMPLATE)
    assert "/special/math" in text and "/data/web_text_document" in text


def test_megatron_forms_and_prefix_checks():
    line = render_megatron(one_stage(), template=TEMPLATE)
    assert line == " ".join(f"{w!r} /data/{d}_text_document" for d, w in WEIGHTS.items())
    assert render_megatron(one_stage(), template=TEMPLATE, form="data-args") == line + "\n"
    with pytest.raises(MixtureError, match="domain 'code' has whitespace"):
        render_megatron(one_stage(), paths={"code": "/my data/code"}, template=TEMPLATE)
    with pytest.raises(MixtureError, match=r"domain 'web' must not end in \.bin"):
        render_megatron(one_stage(), paths={"web": "/d/web.bin"}, template=TEMPLATE)
    with pytest.raises(MixtureError, match="template must contain"):
        render_megatron(one_stage(), template="/data/all")


def test_invalid_weights_are_refused_before_rendering():
    for fmt in FORMATS:
        with pytest.raises(MixtureError, match="sum to 1"):
            render({"web": 0.5, "code": 0.6}, fmt, **OPTIONS[fmt])
        with pytest.raises(MixtureError, match="'code' must be finite and >= 0"):
            render({"web": 1.5, "code": -0.5}, fmt, **OPTIONS[fmt])


def test_notes_carry_tokens_and_epochs():
    m = two_stage()
    epochs = m.epochs()
    text = render_olmo_core(m, template=TEMPLATE, stage="upsample")
    assert "# this file: stage 'upsample', from 0.85 to 1 of training" in text
    assert f"{epochs['math']:.3g}" in text and "epochs" in text
    cfg = yaml.safe_load(text)
    assert cfg["requested_tokens"] == round(0.15 * 2e9)
    rep = {s["source_name"]: s["max_repetition_ratio"] for s in cfg["source_list"]["sources"]}
    math_tokens = 0.15 * 2e9 * m.schedule[0].weights["math"]
    assert rep["math"] >= math_tokens / 1e8 and rep["web"] == 1.0
    rows = list(csv.DictReader(io.StringIO(render_csv(m))))
    assert [float(r["epochs"]) for r in rows] == list(epochs.values())
    assert sum(float(r["tokens"]) for r in rows) == pytest.approx(2e9)
    assert json.loads(render_json(m))["epochs"] == epochs
    notes = render_notes(m, "megatron", {"main": "a.txt", "upsample": "b.txt"})
    assert "--data-args-path b.txt" in notes and "epochs" in notes
    # a mixture without token counts renders without those columns
    assert "tokens" not in render_csv(one_stage()).splitlines()[0]


def test_hf_snippet_options():
    v = _hf_assignments(render_hf(one_stage(), template=TEMPLATE, seed=11, streaming=False))
    assert v["SEED"] == 11 and v["STREAMING"] is False and v["SPLIT"] == "train"
    assert v["PROBABILITIES"] == list(WEIGHTS.values())
    text = render_hf(
        one_stage(), paths={d: [f"/p/{d}/a.parquet", f"/p/{d}/b.parquet"] for d in WEIGHTS},
        builder="parquet",
    )  # fmt: skip
    assert "load_dataset('parquet', data_files=PATHS[d]" in text
    assert _hf_assignments(text)["PATHS"]["web"] == ["/p/web/a.parquet", "/p/web/b.parquet"]
    with pytest.raises(MixtureError, match="domain 'web' needs exactly one location"):
        render_hf(one_stage(), paths={"web": ["/a", "/b"]}, template=TEMPLATE)


def test_llm_foundry_remote_and_split():
    text = render_llm_foundry(
        one_stage(), template="/local/{domain}", remote_template="s3://b/{domain}", split="train"
    )
    streams = yaml.safe_load(text)["streams"]
    assert streams["code"] == {
        "local": "/local/code",
        "remote": "s3://b/code",
        "split": "train",
        "proportion": 0.25,
    }
    with pytest.raises(MixtureError, match="remote has no entry for domain 'web'"):
        render_llm_foundry(one_stage(), template="/l/{domain}", remote={"code": "s3://c"})


def test_olmo_core_repetition_options():
    m = one_stage(total_tokens=1e6, domain_tokens={"web": 1e6, "code": 1e5, "math": 0, "books": 1})
    with pytest.raises(MixtureError, match=r"domain 'math' has weight 0\.15 .* 0 unique tokens"):
        render_olmo_core(m, template=TEMPLATE)
    cfg = yaml.safe_load(render_olmo_core(m, template=TEMPLATE, max_repetition_ratio=4.0))
    assert {s["max_repetition_ratio"] for s in cfg["source_list"]["sources"]} == {4.0}
    with pytest.raises(MixtureError, match="must be >= 1"):
        render_olmo_core(m, template=TEMPLATE, max_repetition_ratio=0.5)
    with pytest.raises(MixtureError, match=r"missing \['books'\]"):
        render_olmo_core(
            m, template=TEMPLATE, max_repetition_ratio={"web": 1, "code": 1, "math": 1}
        )
    cfg = yaml.safe_load(render_olmo_core(one_stage(), template=TEMPLATE, global_batch_size=4096))
    assert cfg["global_batch_size"] == 4096 and "requested_tokens" not in cfg


def test_formats_aliases_and_options():
    assert format_name("olmo") == "olmo-core" and format_name("huggingface") == "hf"
    with pytest.raises(MixtureError, match="unknown export format 'deepspeed'"):
        render(one_stage(), "deepspeed")
    with pytest.raises(MixtureError, match=r"json: does not take option\(s\) \['template'\]"):
        render(one_stage(), "json", template=TEMPLATE)


def test_rendering_is_deterministic():
    for fmt in FORMATS:
        assert render(two_stage(), fmt, **OPTIONS[fmt]) == render(two_stage(), fmt, **OPTIONS[fmt])
    assert isinstance(two_stage(), Mixture)


def test_odd_domain_names_cannot_break_the_files():
    m = Mixture({"web\nimport os": 0.5, "code: x": 0.5})
    v = _hf_assignments(render_hf(m, template="/d/{domain}"))
    assert v["DOMAINS"] == ["web\nimport os", "code: x"]
    assert list(yaml.safe_load(render_levanter(m))["train_weights"]) == list(m.weights)
    assert yaml.safe_load(render_llm_foundry(m, template="/d/{domain}"))["streams"].keys() == {
        "web\nimport os",
        "code: x",
    }


def _decided() -> Mixture:
    """A recommended mixture: the decision (a published-constants fallback) in provenance."""
    rec = {
        "compute": 1e11, "n_params": 55_584.0, "n_tokens": 299_848.0, "predicted_loss": None,
        "intervals": None, "ci_level": None, "max_epochs": 4.0,
        "size_source": "published Chinchilla constants (Hoffmann et al. 2022, approach 3); "
                       "fallback: fit not identified",
        "identification": {"identified": False, "reasons": ["only 2 distinct N values"]},
        "extrapolation": {"n_params": 0.056, "tokens": 2.9, "compute": 0.33},
        "notes": ["epoch cap (4 per domain over D = 2.998e+05 tokens): code would be read 8.11 "
                  "times"],
    }  # fmt: skip
    return Mixture(
        dict(WEIGHTS), total_tokens=299_848.0,
        domain_tokens={"web": 1e6, "code": 5e4, "math": 5e4, "books": 5e4},
        provenance={"method": "dga", "max_epochs": 4.0, "recommendation": rec},
    )  # fmt: skip


def test_every_export_carries_the_decision():
    """Headers (or, for files that cannot hold comments, the Markdown sidecar; for JSON the
    provenance) name the sizes, their source, the verdict on the fit and the notes."""
    m = _decided()
    must = [
        "recommended for C = 1e+11 FLOPs: N = 5.558e+04 parameters, D = 2.998e+05 tokens",
        "size source: published Chinchilla constants (Hoffmann et al. 2022, approach 3); "
        "fallback: fit not identified",
        "fit NOT identified: only 2 distinct N values",
        "note: epoch cap (4 per domain",
        "max_epochs: 4 per domain (checked)",
    ]
    for fmt in FORMATS:
        if fmt == "json":
            prov = json.loads(render_json(m))["provenance"]
            assert prov["recommendation"]["size_source"].startswith("published Chinchilla")
            continue
        texts = render(m, fmt, **OPTIONS[fmt])
        if FORMATS[fmt].sidecar:  # megatron, csv: the notes file
            text = render_notes(m, fmt, {k: f"f{k}" for k in texts})
        else:
            (text,) = texts.values()
            text = "\n".join(x for x in text.splitlines() if x.startswith("#"))
        for line in must:
            assert line in text, (fmt, line)


def test_a_mixture_over_its_epoch_cap_is_refused():
    m = _decided()
    over = Mixture(
        dict(m.weights), total_tokens=3e6, domain_tokens=dict(m.domain_tokens),
        provenance=dict(m.provenance),
    )  # fmt: skip
    for fmt in FORMATS:
        with pytest.raises(MixtureError, match=r"domain 'code' would be read 15 times, over the "
                           r"mixture's cap of max_epochs = 4"):  # fmt: skip
            render(over, fmt, **OPTIONS[fmt])
