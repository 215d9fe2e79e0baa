"""Renderers: one :class:`~curamix.mixture.Mixture` as the config each trainer reads.

Every ``render_<format>(mixture, **options) -> str`` validates first (the mixture through
:func:`~curamix.export.load.as_mixture`; data locations: a ``paths`` mapping that names an
unknown domain or, without a ``template``, lacks one is refused with the domain named) and
returns the file's text. Where the format allows comments the text starts with notes: the
compute-aware decision behind the mixture (N, D and loss with their bootstrap intervals, where
they came from, whether the fit was identified and why not, the extrapolation, the guards'
notes), the schedule, and per domain the weight, the tokens drawn, the unique tokens and the
epochs they imply (when the mixture has ``total_tokens`` / ``domain_tokens``). JSON holds all
of it in ``provenance``; Megatron's and CSV files cannot hold comments, so
:func:`export_mixture` writes the notes to a Markdown sidecar. A mixture whose epochs exceed
the ``max_epochs`` its provenance names is refused (:func:`curamix.mixture.check_epoch_cap`).

Schedules (never silently the first stage only):

- ``json``, ``yaml``, ``csv`` hold the whole mixture, every stage included.
- ``nanotron`` and ``levanter`` have a native schedule (``data_stages`` with
  ``start_training_step``; ``train_weights`` as ``[step, weights]`` pairs): a multi-stage
  mixture needs ``total_steps`` to place the boundaries, or ``stage=`` for one stage.
- ``hf``: one snippet runs every stage: a seeded sampler that draws each example's domain
  with the probabilities of the stage in force and switches at the token boundaries
  (``interleave_datasets`` takes one probability vector); ``stage=`` renders one stage as
  ``interleave_datasets``.
- ``megatron``, ``olmo-core``, ``llm-foundry`` hold one stage: a multi-stage mixture needs
  ``stage=`` (a label such as ``"main"``/``"upsample"``, or an index), and :func:`render` /
  :func:`export_mixture` render every stage, one file each, plus a README of the token
  boundaries and how to resume from one stage to the next (:func:`render_notes`); for
  Megatron also a run script that trains the phases in order
  (:func:`render_megatron_script`).
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from curamix.export._common import (
    StageView,
    comment_block,
    dropped_note,
    fmt_tokens,
    notes_lines,
    plain,
    positive,
    resolve_locations,
    select_stage,
    stage_labels,
    stage_steps,
    stage_views,
)
from curamix.export.load import as_mixture
from curamix.mixture import Mixture, MixtureError

Paths = Mapping[str, str | Sequence[str]]
MixtureLike = Mixture | Mapping[str, Any]


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(plain(obj), sort_keys=False, default_flow_style=False, width=100)


# ---------------------------------------------------------------- plain: the whole mixture


def render_json(mixture: MixtureLike) -> str:
    """The mixture as JSON (``Mixture.to_dict()``: weights, schedule, total and domain
    tokens, provenance, tokens per domain and epochs when known). ``load_mixture`` reads it."""
    m = as_mixture(mixture)
    return json.dumps(plain(m.to_dict()), indent=2) + "\n"


def render_yaml(mixture: MixtureLike) -> str:
    """The mixture as YAML, the same keys as :func:`render_json`, with notes as comments."""
    m = as_mixture(mixture)
    return comment_block(notes_lines(m, "yaml")) + _yaml(m.to_dict())


def render_csv(mixture: MixtureLike) -> str:
    """One row per domain: ``domain, weight`` (the first stage), ``tokens`` (drawn over the
    whole schedule, when ``total_tokens`` is known), ``epochs`` (when ``domain_tokens`` is
    also known), then one column per later stage named ``<label>@<start>``."""
    m = as_mixture(mixture)
    views = stage_views(m)
    tokens = m.tokens_per_domain() if m.total_tokens is not None else None
    epochs = m.epochs() if tokens is not None and m.domain_tokens is not None else None
    header = ["domain", "weight"]
    header += ["tokens"] if tokens is not None else []
    header += ["epochs"] if epochs is not None else []
    header += [f"{v.label}@{v.start:g}" for v in views[1:]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for d in m.domains:
        row = [d, repr(views[0].weights[d])]
        row += [repr(tokens[d])] if tokens is not None else []
        row += [repr(epochs[d])] if epochs is not None else []
        row += [repr(v.weights[d]) for v in views[1:]]
        w.writerow(row)
    return buf.getvalue()


# ---------------------------------------------------------------- Megatron-LM


def render_megatron(
    mixture: MixtureLike,
    *,
    paths: Mapping[str, str] | None = None,
    template: str | None = None,
    stage: str | int | None = None,
    form: Literal["data-path", "data-args"] = "data-path",
) -> str:
    """Megatron-LM's blend: ``weight prefix weight prefix ...`` for one stage.

    Parameters
    ----------
    paths, template
        The indexed-dataset prefix of each domain (the path without ``.bin``/``.idx``):
        ``{domain: prefix}``, else ``template.format(domain=...)`` such as
        ``"/data/{domain}_text_document"``.
    stage
        Required for a multi-stage mixture (label or index).
    form
        ``"data-path"``: the value of ``--data-path``, one line, no newline.
        ``"data-args"``: the file for ``--data-args-path`` (that line and a newline;
        Megatron reads it with ``str.split()``, so it holds no comments).

    Domains with weight 0 in the stage are left out (Megatron would build an empty dataset).
    A prefix with whitespace, or ending in ``.bin``/``.idx``, is refused naming the domain.
    """
    m = as_mixture(mixture)
    view = select_stage(m, stage, "megatron")
    locs = resolve_locations(m, "megatron", paths, template, single=True)
    assert locs is not None
    for d, (p,) in locs.items():
        if any(c.isspace() for c in p):
            raise MixtureError(f"megatron: the prefix of domain {d!r} has whitespace: {p!r}")
        if p.endswith((".bin", ".idx")):
            raise MixtureError(
                f"megatron: the prefix of domain {d!r} must not end in .bin/.idx, got {p!r}"
            )
    line = " ".join(f"{w!r} {locs[d][0]}" for d, w in positive(view).items())
    if form == "data-path":
        return line
    if form == "data-args":
        return line + "\n"
    raise MixtureError(f"megatron: form must be 'data-path' or 'data-args', got {form!r}")


# ---------------------------------------------------------------- OLMo-core


def _repetition(
    m: Mixture, view: StageView, d: str, max_repetition_ratio: float | Mapping[str, float] | None
) -> float:
    if isinstance(max_repetition_ratio, Mapping):
        return float(max_repetition_ratio[d])
    if max_repetition_ratio is not None:
        return float(max_repetition_ratio)
    if view.tokens is None or m.domain_tokens is None:
        return 1.0
    unique = m.domain_tokens[d]
    if unique <= 0:
        raise MixtureError(
            f"olmo-core: domain {d!r} has weight {view.weights[d]!r} in stage {view.label!r} "
            "but 0 unique tokens"
        )
    return max(1.0, math.ceil(view.tokens[d] / unique * 100) / 100)


def render_olmo_core(
    mixture: MixtureLike,
    *,
    paths: Paths | None = None,
    template: str | None = None,
    stage: str | int | None = None,
    max_repetition_ratio: float | Mapping[str, float] | None = None,
    global_batch_size: int | None = None,
) -> str:
    """OLMo-core's ``SourceMixtureDatasetConfig`` for one stage, as YAML.

    ``source_list.sources`` has one ``SourceMixtureConfig`` per domain with weight > 0:
    ``source_name``, ``target_ratio``, ``paths`` (the domain's token files or globs, from
    ``paths``/``template``), ``max_repetition_ratio``. ``requested_tokens`` is the stage's
    share of ``total_tokens`` (when known); ``global_batch_size`` (tokens) when given.

    ``max_repetition_ratio``: a number, a ``{domain: ratio}`` mapping, or ``None``: the
    repetition the stage implies (its tokens over the domain's unique tokens, rounded up to
    0.01, at least 1), or 1 without token counts.
    """
    m = as_mixture(mixture)
    view = select_stage(m, stage, "olmo-core")
    locs = resolve_locations(m, "olmo-core", paths, template)
    assert locs is not None
    if isinstance(max_repetition_ratio, Mapping):
        unknown = [d for d in max_repetition_ratio if d not in m.weights]
        missing = [d for d in m.domains if d not in max_repetition_ratio]
        if unknown or missing:
            raise MixtureError(
                f"olmo-core: max_repetition_ratio must name every domain and no other; "
                f"unknown {unknown}, missing {missing}"
            )
    sources = []
    for d, w in positive(view).items():
        r = _repetition(m, view, d, max_repetition_ratio)
        if not (math.isfinite(r) and r >= 1):
            raise MixtureError(f"olmo-core: max_repetition_ratio of {d!r} must be >= 1, got {r!r}")
        sources.append(
            {"source_name": d, "target_ratio": w, "paths": locs[d], "max_repetition_ratio": r}
        )
    cfg: dict[str, Any] = {"source_list": {"sources": sources}}
    hints = []
    if view.stage_tokens is not None:
        cfg["requested_tokens"] = round(view.stage_tokens)
    else:
        hints.append("set requested_tokens (the mixture has no total_tokens)")
    if global_batch_size is not None:
        if isinstance(global_batch_size, bool) or not (
            isinstance(global_batch_size, int) and global_batch_size > 0
        ):
            raise MixtureError(
                f"olmo-core: global_batch_size must be a positive integer (tokens), "
                f"got {global_batch_size!r}"
            )
        cfg["global_batch_size"] = global_batch_size
    else:
        hints.append("set global_batch_size (tokens per batch)")
    lines = notes_lines(m, "olmo-core", view) + dropped_note(view) + hints
    return comment_block(lines) + _yaml(cfg)


# ---------------------------------------------------------------- nanotron / datatrove


def render_nanotron(
    mixture: MixtureLike,
    *,
    paths: Mapping[str, str] | None = None,
    template: str | None = None,
    stage: str | int | None = None,
    total_steps: int | None = None,
    seed: int | None = None,
) -> str:
    """nanotron's ``data_stages`` with Nanoset datasets (datatrove-tokenized folders), YAML.

    Each stage is ``{name, start_training_step, data: {dataset: {dataset_folder: [...],
    dataset_weights: [...]}, seed}}`` over the domains with weight > 0. nanotron's
    ``data_stages`` is the native schedule: a multi-stage mixture renders every stage, its
    ``start_training_step`` = ``round(start * total_steps) + 1``, and so needs
    ``total_steps``; ``stage=`` renders one stage (a later one still needs ``total_steps``).
    """
    m = as_mixture(mixture)
    views = stage_views(m)
    locs = resolve_locations(m, "nanotron", paths, template, single=True)
    assert locs is not None
    if stage is None and len(views) > 1 and total_steps is None:
        ways = (
            "give total_steps= to render them all as nanotron's data_stages (the step of each "
            "start), or stage=<label or index> for one stage"
        )
        select_stage(m, None, "nanotron", ways)  # raises, naming both ways out
    chosen = views if stage is None else [select_stage(m, stage, "nanotron")]
    steps = stage_steps(m, total_steps, "nanotron", offset=1) or [1] * len(views)
    if chosen[0].index > 0 and total_steps is None:
        raise MixtureError(
            f"nanotron: stage {chosen[0].label!r} starts at {chosen[0].start:g} of training; "
            "give total_steps= to place its start_training_step"
        )
    seed = _seed(m, seed)
    stages_cfg = []
    for v in chosen:
        pos = positive(v)
        stages_cfg.append(
            {
                "name": v.label,
                "start_training_step": steps[v.index],
                "data": {
                    "dataset": {
                        "dataset_folder": [locs[d][0] for d in pos],
                        "dataset_weights": list(pos.values()),
                    },
                    "seed": seed,
                },
            }
        )
    lines = notes_lines(m, "nanotron", chosen[0] if len(chosen) == 1 else None)
    for v in chosen:
        lines += [f"{v.label}: {n}" for n in dropped_note(v)]
    return comment_block(lines) + _yaml({"data_stages": stages_cfg})


# ---------------------------------------------------------------- llm-foundry / streaming


def render_llm_foundry(
    mixture: MixtureLike,
    *,
    paths: Mapping[str, str] | None = None,
    template: str | None = None,
    remote: Mapping[str, str] | None = None,
    remote_template: str | None = None,
    split: str | None = None,
    stage: str | int | None = None,
) -> str:
    """llm-foundry's ``streams:`` (MosaicML streaming) for one stage, YAML.

    One stream per domain with weight > 0: ``local`` (from ``paths``/``template``),
    ``remote`` (from ``remote``/``remote_template``, when given), ``split`` (when given) and
    ``proportion``. Paste it under ``train_loader.dataset``.
    """
    m = as_mixture(mixture)
    view = select_stage(m, stage, "llm-foundry")
    local = resolve_locations(m, "llm-foundry", paths, template, single=True)
    rem = resolve_locations(
        m,
        "llm-foundry",
        remote,
        remote_template,
        option="remote",
        template_option="remote_template",
        single=True,
        required=False,
    )
    assert local is not None
    streams: dict[str, Any] = {}
    for d, w in positive(view).items():
        s: dict[str, Any] = {"local": local[d][0]}
        if rem is not None:
            s["remote"] = rem[d][0]
        if split is not None:
            s["split"] = split
        s["proportion"] = w
        streams[d] = s
    lines = notes_lines(m, "llm-foundry", view) + dropped_note(view)
    lines.append("paste under train_loader.dataset of an llm-foundry config")
    return comment_block(lines) + _yaml({"streams": streams})


def render_megatron_script(mixture: MixtureLike, files: Mapping[str, str]) -> str:
    """A bash script that trains a multi-stage mixture with Megatron-LM, one phase per stage.

    ``files`` maps each stage label to its ``--data-args-path`` file (as
    :func:`export_mixture` names them, in the script's folder). Every phase runs
    ``$LAUNCH $MEGATRON $MEGATRON_ARGS`` with its blend, ``--train-samples`` = the samples
    at the phase's end (counted from the start of the run: Megatron resumes its iteration and
    consumed-sample counters from the checkpoint), ``--lr-decay-samples`` = the whole run's
    samples (one LR schedule across phases), and ``--load``/``--save`` on ``$CKPT_DIR``.
    The run's samples are ``TRAIN_SAMPLES``, by default ``TOTAL_TOKENS / SEQ_LENGTH`` with
    ``TOTAL_TOKENS`` the mixture's ``total_tokens`` (when it has one).
    """
    m = as_mixture(mixture)
    views = stage_views(m)
    missing = [v.label for v in views if v.label not in files]
    if missing:
        raise MixtureError(f"megatron: no blend file for stage(s) {missing}")
    total = (
        f'TOTAL_TOKENS="${{TOTAL_TOKENS:-{round(m.total_tokens)}}}"'
        if m.total_tokens is not None
        else ': "${TOTAL_TOKENS:?set TOTAL_TOKENS (the run\'s tokens; the mixture has none)}"'
    )
    head = [
        *notes_lines(m, "megatron"),
        f"Megatron-LM has no blend schedule: {len(views)} phases, one blend each, each resuming "
        "from the previous phase's checkpoint.",
        "usage: SEQ_LENGTH=2048 CKPT_DIR=/ckpt MEGATRON_ARGS='--num-layers ... "
        "--lr-warmup-samples ...' bash this-script",
        "env: TOTAL_TOKENS or TRAIN_SAMPLES (the run), LAUNCH (default torchrun), "
        "MEGATRON (default pretrain_gpt.py)",
    ]
    lines = [
        "#!/usr/bin/env bash",
        comment_block(head).rstrip("\n"),
        "set -euo pipefail",
        'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
        ': "${SEQ_LENGTH:?set SEQ_LENGTH (tokens per sample)}"',
        ': "${CKPT_DIR:?set CKPT_DIR (one checkpoint folder for every phase)}"',
        total,
        'TRAIN_SAMPLES="${TRAIN_SAMPLES:-$((TOTAL_TOKENS / SEQ_LENGTH))}"',
        'LAUNCH="${LAUNCH:-torchrun --nproc-per-node=${GPUS_PER_NODE:-1}}"',
        'MEGATRON="${MEGATRON:-pretrain_gpt.py}"',
        "",
        "phase() {  # label, blend file, end of the phase as a fraction of the run",
        "  local end",
        '  end="$(awk -v n="$TRAIN_SAMPLES" -v f="$3" \'BEGIN { printf "%.0f", n * f }\')"',
        '  echo "curamix: phase $1 until sample $end of $TRAIN_SAMPLES ($2)"',
        "  # shellcheck disable=SC2086  # LAUNCH and MEGATRON_ARGS are word lists",
        '  $LAUNCH "$MEGATRON" ${MEGATRON_ARGS:-} \\',
        '    --seq-length "$SEQ_LENGTH" \\',
        '    --data-args-path "$HERE/$2" \\',
        '    --train-samples "$end" \\',
        '    --lr-decay-samples "$TRAIN_SAMPLES" \\',
        '    --load "$CKPT_DIR" --save "$CKPT_DIR"',
        "}",
        "",
    ]
    for v in views:
        lines.append(f"phase {shlex.quote(v.label)} {shlex.quote(files[v.label])} {v.end!r}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Hugging Face datasets


def _hf_staged(
    m: Mixture, locs: Mapping[str, list[str]], builder: str | None, seed: int, split: str,
    streaming: bool,
) -> str:  # fmt: skip
    """The multi-stage snippet of :func:`render_hf`: a stage-switching sampler."""
    views = stage_views(m)
    used = [d for d in m.domains if any(v.weights[d] > 0 for v in views)]
    path_map = {d: (locs[d][0] if builder is None else locs[d]) for d in used}
    if builder is None:
        load = "load_dataset(PATHS[d], split=SPLIT, streaming=STREAMING)"
    else:
        load = f"load_dataset({builder!r}, data_files=PATHS[d], split=SPLIT, streaming=STREAMING)"
    lines = notes_lines(m, "hf")
    zero = [d for d in m.domains if d not in used]
    if zero:
        lines.append(f"left out (weight 0 in every stage): {', '.join(zero)}")
    lines.append(
        "interleave_datasets takes one probability vector: the sampler below draws each "
        "example's domain with the probabilities of the stage in force instead"
    )
    stages = "".join(
        f"    ({v.label!r}, {v.start!r}, [{', '.join(repr(v.weights[d]) for d in used)}]),\n"
        for v in views
    )
    total = (
        f"TOTAL = {round(m.total_tokens)!r}  # tokens over the whole run\n"
        if m.total_tokens is not None
        else "TOTAL = None  # set it: the run's tokens (the mixture has no total_tokens)\n"
    )
    return (
        comment_block(lines)
        + "import random\n\n"
        + "from datasets import load_dataset\n\n"
        + f"DOMAINS = {json.dumps(used)}\n"
        + f"PATHS = {json.dumps(path_map, indent=4)}\n"
        + "# (label, start as a fraction of TOTAL, probabilities in DOMAINS order)\n"
        + f"STAGES = [\n{stages}]\n"
        + total
        + f"SEED = {seed!r}\n"
        + f"SPLIT = {split!r}\n"
        + f"STREAMING = {bool(streaming)!r}\n\n\n"
        + "def size(example):\n"
        + '    """Tokens one example adds to the budget (tokenize first: input_ids)."""\n'
        + '    return len(example["input_ids"])\n\n\n'
        + "def staged_examples(datasets, stages=STAGES, total=TOTAL, seed=SEED, size=size):\n"
        + '    """Examples of ``datasets`` (DOMAINS order), each from a domain drawn with the\n'
        + "    probabilities of the stage in force; a stage is in force from ``start * total``\n"
        + "    tokens on. A domain that runs out starts over (like interleave_datasets'\n"
        + '    "all_exhausted"); the stream ends after ``total`` tokens."""\n'
        + "    if total is None:\n"
        + '        raise ValueError("set TOTAL: the stage boundaries are fractions of it")\n'
        + "    return _draw(datasets, stages, total, random.Random(seed), size)\n\n\n"
        + "def _draw(datasets, stages, total, rng, size):\n"
        + "    iters = [iter(d) for d in datasets]\n"
        + "    ends = [start * total for _, start, _ in stages[1:]] + [total]\n"
        + "    drawn, stage = 0, 0\n"
        + "    while drawn < total:\n"
        + "        while drawn >= ends[stage]:\n"
        + "            stage += 1\n"
        + "        i = rng.choices(range(len(iters)), weights=stages[stage][2])[0]\n"
        + "        try:\n"
        + "            example = next(iters[i])\n"
        + "        except StopIteration:\n"
        + "            iters[i] = iter(datasets[i])\n"
        + "            example = next(iters[i])\n"
        + "        drawn += size(example)\n"
        + "        yield example\n\n\n"
        + f"datasets = [{load} for d in DOMAINS]\n"
        + "mixed = staged_examples(datasets)  # a generator of examples for the training loop\n"
    )


def render_hf(
    mixture: MixtureLike,
    *,
    paths: Paths | None = None,
    template: str | None = None,
    stage: str | int | None = None,
    seed: int | None = None,
    split: str = "train",
    streaming: bool = True,
    builder: str | None = None,
) -> str:
    """A Python snippet: ``datasets.interleave_datasets`` over the domains, for one stage, or
    a stage-switching sampler for every stage of a multi-stage mixture.

    One stage (or ``stage=``): the domains (weight > 0) are in the mixture's order in
    ``DOMAINS``, their probabilities in ``PROBABILITIES``; ``stopping_strategy=
    "all_exhausted"``. Several stages: ``STAGES`` lists ``(label, start, probabilities)``,
    ``TOTAL`` the run's tokens (the mixture's ``total_tokens``), and ``staged_examples``
    draws each example's domain with the probabilities of the stage in force (seeded
    ``random.Random``), switching when the tokens drawn (``len(input_ids)``) pass the next
    start; ``mixed`` is its generator. Each domain is loaded with ``load_dataset(PATHS[d],
    split=..., streaming=...)`` (a Hub id or a local folder), or, with ``builder``
    (``"parquet"``, ``"json"``, ...), ``load_dataset(builder, data_files=PATHS[d], ...)``.
    ``seed`` defaults to the mixture's provenance seed, else 0. Probabilities pick examples,
    not tokens: with documents of very different lengths per domain, pack or chunk to fixed
    lengths first to keep token shares.
    """
    m = as_mixture(mixture)
    locs = resolve_locations(m, "hf", paths, template, single=builder is None)
    assert locs is not None
    seed = _seed(m, seed)
    if stage is None and len(m.stages()) > 1:
        return _hf_staged(m, locs, builder, seed, split, streaming)
    view = select_stage(m, stage, "hf")
    pos = positive(view)
    path_map = {d: (locs[d][0] if builder is None else locs[d]) for d in pos}
    if builder is None:
        load = "load_dataset(PATHS[d], split=SPLIT, streaming=STREAMING)"
    else:
        load = f"load_dataset({builder!r}, data_files=PATHS[d], split=SPLIT, streaming=STREAMING)"
    lines = notes_lines(m, "hf", view) + dropped_note(view)
    probs = "".join(f"    {w!r},  # {json.dumps(d)}\n" for d, w in pos.items())
    return (
        comment_block(lines)
        + "from datasets import interleave_datasets, load_dataset\n\n"
        + f"DOMAINS = {json.dumps(list(pos))}\n"
        + f"PATHS = {json.dumps(path_map, indent=4)}\n"
        + f"PROBABILITIES = [\n{probs}]\n"
        + f"SEED = {seed!r}\n"
        + f"SPLIT = {split!r}\n"
        + f"STREAMING = {bool(streaming)!r}\n\n"
        + f"datasets = [{load} for d in DOMAINS]\n"
        + "mixed = interleave_datasets(\n"
        + '    datasets, probabilities=PROBABILITIES, seed=SEED, stopping_strategy="all_exhausted"\n'
        + ")\n"
    )


# ---------------------------------------------------------------- Levanter


def render_levanter(
    mixture: MixtureLike,
    *,
    paths: Paths | None = None,
    template: str | None = None,
    stage: str | int | None = None,
    total_steps: int | None = None,
) -> str:
    """Levanter's mixture ``train_weights`` (``LMMixtureDatasetConfig``), YAML.

    One stage: a ``{domain: weight}`` map (every domain, zeros kept: Levanter accepts them).
    A multi-stage mixture without ``stage=`` uses Levanter's native schedule, a list of
    ``[step, weights]`` pairs with ``step = round(start * total_steps)``, and so needs
    ``total_steps``. With ``paths``/``template``, ``configs`` gets ``{domain: {train_urls}}``.
    """
    m = as_mixture(mixture)
    views = stage_views(m)
    locs = resolve_locations(m, "levanter", paths, template, required=False)
    ways = (
        "give total_steps= to render them all as Levanter's [step, weights] schedule, or "
        "stage=<label or index> for one stage"
    )
    cfg: dict[str, Any] = {}
    if locs is not None:
        cfg["configs"] = {d: {"train_urls": locs[d]} for d in m.domains}
    if stage is not None or len(views) == 1:
        view = select_stage(m, stage, "levanter")
        cfg["train_weights"] = dict(view.weights)
        lines = notes_lines(m, "levanter", view)
    else:
        if total_steps is None:
            select_stage(m, None, "levanter", ways)  # raises, naming both ways out
        steps = stage_steps(m, total_steps, "levanter")
        assert steps is not None
        cfg["train_weights"] = [[steps[v.index], dict(v.weights)] for v in views]
        lines = notes_lines(m, "levanter")
    return comment_block(lines) + _yaml(cfg)


def _seed(m: Mixture, seed: int | None) -> int:
    if seed is None:
        s = m.provenance.get("seed")
        return s if isinstance(s, int) and not isinstance(s, bool) else 0
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MixtureError(f"seed must be an integer, got {seed!r}")
    return seed


# ---------------------------------------------------------------- registry


class ExportFormat(NamedTuple):
    """A trainer format: its renderer, file extension and how it holds a schedule.

    ``schedule``: ``"whole"`` (one file, every stage), ``"native"`` (one file that runs the
    stages: the trainer's own schedule, needing ``total_steps`` for nanotron and Levanter; the
    ``hf`` snippet's sampler) or ``"per-stage"`` (one file per stage, plus a README of the
    boundaries). ``sidecar``: the format cannot hold comments, so the notes go to a ``.md``
    file.
    """

    render: Callable[..., str]
    ext: str
    schedule: str
    sidecar: bool = False


FORMATS: dict[str, ExportFormat] = {
    "json": ExportFormat(render_json, "json", "whole"),
    "yaml": ExportFormat(render_yaml, "yaml", "whole"),
    "csv": ExportFormat(render_csv, "csv", "whole", sidecar=True),
    "megatron": ExportFormat(render_megatron, "txt", "per-stage", sidecar=True),
    "olmo-core": ExportFormat(render_olmo_core, "yaml", "per-stage"),
    "nanotron": ExportFormat(render_nanotron, "yaml", "native"),
    "llm-foundry": ExportFormat(render_llm_foundry, "yaml", "per-stage"),
    "hf": ExportFormat(render_hf, "py", "native"),
    "levanter": ExportFormat(render_levanter, "yaml", "native"),
}

ALIASES = {
    "olmo": "olmo-core",
    "datatrove": "nanotron",
    "foundry": "llm-foundry",
    "mosaic": "llm-foundry",
    "streaming": "llm-foundry",
    "huggingface": "hf",
    "yml": "yaml",
}


def format_name(fmt: str) -> str:
    """The registry name of ``fmt`` (aliases such as ``olmo``, ``huggingface`` resolved)."""
    name = ALIASES.get(fmt, fmt)
    if name not in FORMATS:
        raise MixtureError(
            f"unknown export format {fmt!r}; formats: {sorted(FORMATS)} "
            f"(aliases: {sorted(ALIASES)})"
        )
    return name


def format_options(fmt: str) -> list[str]:
    """The keyword options the format's renderer takes."""
    params = inspect.signature(FORMATS[format_name(fmt)].render).parameters
    return [p for p in params if p != "mixture"]


def render(mixture: MixtureLike, fmt: str, **options: Any) -> dict[str, str]:
    """Every file ``fmt`` needs for ``mixture``: ``{key: text}``.

    The key is ``""`` when one text holds the mixture (a single-stage mixture; ``json``,
    ``yaml``, ``csv``; the native schedule of ``nanotron``/``levanter``), the stage label
    when ``stage=`` was given, and one key per stage label for a multi-stage mixture in a
    per-stage format. Options the format does not take are refused.
    """
    name = format_name(fmt)
    spec = FORMATS[name]
    m = as_mixture(mixture)
    allowed = format_options(name)
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise MixtureError(f"{name}: does not take option(s) {bad}; it takes {allowed}")
    stage = options.get("stage")
    if stage is not None:
        label = select_stage(m, stage, name).label
        return {label: spec.render(m, **options)}
    if spec.schedule != "per-stage" or len(m.stages()) == 1:
        return {"": spec.render(m, **options)}
    return {label: spec.render(m, **{**options, "stage": label}) for label in stage_labels(m)}


RESUME: dict[str, str] = {
    "megatron": (
        "Megatron-LM has no blend schedule: train each stage with its own file, resuming from "
        "the previous stage's checkpoint at the stage boundary. `{script}` does it: phase by "
        "phase, `--data-args-path` the phase's blend, `--train-samples` the samples at the "
        "phase's end counted from the start of the run (Megatron resumes its iteration and "
        "consumed-sample counters from the checkpoint), `--lr-decay-samples` the whole run's "
        "samples (one LR schedule), `--load`/`--save` one folder. Megatron resumes the data by "
        "one consumed-samples index into the rebuilt blend: a phase skips that many samples of "
        "its own blend's order, and may draw documents an earlier phase drew (at most the "
        "epochs above)."
    ),
    "olmo-core": (
        "OLMo-core reads one source mixture per run: train the stages in order, each with its "
        "file as the dataset's source mixture, from the previous stage's checkpoint "
        "(`trainer.load_path`), until the stage's end in tokens counted from the start of the "
        "run (`trainer.max_duration`); `requested_tokens` is the stage's own share. Keep one LR "
        "schedule over the whole run, and do not restore the previous stage's data-loader "
        "position (its mixture differs)."
    ),
    "llm-foundry": (
        "llm-foundry (Composer) takes one set of streams per run: train the stages in order, "
        "each with its `streams` under `train_loader.dataset`, from the previous stage's "
        "checkpoint (`load_path`), until the stage's end in tokens counted from the start of "
        "the run (`max_duration: <end>tok`). Keep one LR schedule over the whole run (its "
        "`t_max` the run's duration), and do not restore the previous stage's data-loader "
        "state (its streams differ)."
    ),
}
"""How to train a per-stage export's files in order (:func:`render_notes`)."""


def render_notes(
    mixture: MixtureLike,
    fmt: str,
    files: Mapping[str, str] | None = None,
    script: str | None = None,
) -> str:
    """Markdown notes for ``fmt``'s files: the decision, schedule, per-domain tokens and
    epochs, usage, and for several stage files the token boundaries and how to go from one
    stage to the next.

    ``files`` maps a :func:`render` key to the file name written for it; ``script`` names a
    run script that trains the stages (Megatron). Megatron's and CSV files cannot hold
    comments, so :func:`~curamix.export.export_mixture` writes this next to them, and next to
    the stage files of every per-stage format.
    """
    name = format_name(fmt)
    m = as_mixture(mixture)
    views = {v.label: v for v in stage_views(m)}
    out = [f"# curamix mixture: {name} export", ""]
    out += ["```", *notes_lines(m, name), "```", ""]
    staged = [k for k in (files or {}) if k in views]
    if len(staged) > 1:
        out += ["## Stages", "", "| stage | file | from | to | tokens from | tokens to |"]
        out.append("|---|---|---:|---:|---:|---:|")
        for key in staged:
            v = views[key]
            t = m.total_tokens
            lo = fmt_tokens(v.start * t) if t is not None else "-"
            hi = fmt_tokens(v.end * t) if t is not None else "-"
            out.append(f"| {key} | `{files[key]}` | {v.start:g} | {v.end:g} | {lo} | {hi} |")
        out.append("")
        if name in RESUME:
            out += [RESUME[name].format(script=script or "the run script"), ""]
    for key, fname in (files or {}).items():
        view = views.get(key) if key else (next(iter(views.values())) if len(views) == 1 else None)
        title = f"## `{fname}`" + (f": stage {key!r}" if key else "")
        out += [title, ""]
        if view is not None and len(views) > 1:
            out.append(
                f"From {view.start:g} to {view.end:g} of training"
                + (f" ({view.stage_tokens:.4g} tokens)." if view.stage_tokens else ".")
            )
            out.append("")
        if name == "megatron":
            out += [
                "Use it as `--data-args-path " + fname + "`, or inline as "
                "`--data-path $(cat " + shlex.quote(fname) + ")`.",
                "",
            ]
        if view is not None:
            zero = dropped_note(view)
            out += [*zero, ""] if zero else []
    if script is not None:
        out += [f"## `{script}`", "", "Trains every phase in order (see its header).", ""]
    return "\n".join(out).rstrip() + "\n"
