"""The package's shape: no import cycle, imports point down the layers, one stage registry.

The import graph is read from the source (every ``import`` statement, also those inside
functions, since a lazy import is still a dependency); see docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import curamix
from curamix.config import KNOWN_STAGES, POOL_STAGES, PipelineConfig

ROOT = Path(curamix.__file__).parent

LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": (
        "curamix",
        "curamix.schema",
        "curamix.config",
        "curamix.device",
        "curamix.optim",
        "curamix.progress",
        "curamix.io",
        "curamix.mixture",
        "curamix.export",
    ),
    "algorithms": (
        "curamix.filters",
        "curamix.embeddings",
        "curamix.selectors",
        "curamix.proxy",
        "curamix.mixers",
        "curamix.scaling_laws",
    ),
    "pipelines": ("curamix.pipelines",),
    "orchestration": ("curamix.runner",),
    "entry points": ("curamix.flows", "curamix.cli", "curamix.demo"),
}
"""Bottom to top: a module may import its own layer and the layers below, never above."""
ALGORITHMS = LAYERS["algorithms"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The curamix module an imported name lives in (``a.b.func`` -> ``a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(module: str, runtime_only: bool = False) -> set[str]:
    """Every module name imported anywhere in ``module`` (absolute, as written)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skip |= {id(n) for child in node.body for n in ast.walk(child)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES}
    return names


def _graph() -> dict[str, set[str]]:
    graph = {}
    for m in MODULES:
        deps = {_resolve(n) for n in _imports(m) if n == "curamix" or n.startswith("curamix.")}
        graph[m] = {d for d in deps if d and d != m}
    return graph


def _layer(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS.values()):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_curamix():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_point_down_the_layers():
    names = list(LAYERS)
    bad = [
        f"{m} ({names[_layer(m)]}) imports {d} ({names[_layer(d)]})"
        for m, deps in sorted(_graph().items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not bad, "imports pointing up the layers:\n" + "\n".join(bad)


def test_algorithms_never_import_spark_or_prefect():
    bad = [
        f"{m} imports {n}"
        for m in MODULES
        if m.startswith(ALGORITHMS)
        for n in _imports(m, runtime_only=True)
        if n.split(".")[0] in ("pyspark", "prefect")
    ]
    assert not bad, bad


def test_only_entry_points_import_the_flows():
    entry = LAYERS["entry points"]
    bad = [
        f"{m} imports {d}"
        for m, deps in _graph().items()
        for d in deps
        if d.startswith("curamix.flows") and not m.startswith(entry)
    ]
    assert not bad, bad


def test_no_string_imports_in_the_pipelines_and_runner():
    for m, path in MODULES.items():
        if m.startswith(("curamix.pipelines", "curamix.runner")):
            assert "import_module" not in path.read_text(encoding="utf-8"), m


def test_registry_lists_every_stage_once_in_run_order():
    from curamix.pipelines.registry import REGISTRY, STAGES, get_stage

    assert tuple(s.name for s in STAGES) == KNOWN_STAGES
    assert tuple(s.name for s in STAGES if s.writes_pool) == POOL_STAGES
    for s in STAGES:
        assert s.section in PipelineConfig.model_fields, s.name
        assert s.run.__module__ == f"curamix.pipelines.{s.name}", s.name
        assert s.key.__module__ == f"curamix.pipelines.{s.name}", s.name
    assert REGISTRY["dedup"] is get_stage("dedup")
    with pytest.raises(ValueError, match=r"unknown stage 'nope'; known stages: \['ingest'"):
        get_stage("nope")


def test_registry_upstreams_point_to_earlier_stages():
    from curamix.config import build_config
    from curamix.pipelines.registry import STAGES

    every = {
        "stages": list(KNOWN_STAGES),
        "ingest": {"inputs": [{"path": "x.jsonl"}]},
        "dedup": {},
        "embed": {},
        "semdedup": {},
        "quality": {
            "classifiers": [
                {"name": "edu", "kind": "embedding_head", "label_inputs": [{"path": "l"}]}
            ]
        },
        "decontam": {"test_inputs": [{"path": "t.jsonl"}]},
        "dsir": {"target_domains": ["a"]},
        "betr": {"benchmark_inputs": [{"path": "b.jsonl"}]},
        "rds": {"query_inputs": [{"path": "q.jsonl"}], "representation": "embed"},
        "select": {"fraction": 0.1},
        "coreset": {"fraction": 0.1, "score": "dsir"},
        "adapt": {},
    }
    cfg = build_config(every, use_env=False)
    for s in STAGES:
        for role, up in s.upstream(cfg).items():
            assert KNOWN_STAGES.index(up) < KNOWN_STAGES.index(s.name), (s.name, role, up)
    pools = {s.name: s.upstream(cfg).get("pool") for s in STAGES}
    assert pools == {
        "ingest": None,
        "dedup": "ingest",
        "embed": "dedup",
        "semdedup": "dedup",
        "quality": "semdedup",
        "decontam": "quality",
        "dsir": "decontam",
        "betr": "decontam",
        "rds": "decontam",
        "select": "decontam",
        "coreset": "decontam",
        "adapt": "decontam",
    }
