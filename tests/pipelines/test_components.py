"""Spark components (large-star / small-star rounds, and the one-task union-find) equal
scipy's on known and random graphs."""

import numpy as np
import pytest

from curamix.filters.dedup import connected_components as cc_local
from curamix.pipelines.components import connected_components, connected_components_single_task

pytestmark = pytest.mark.spark


IMPLS = {"distributed": connected_components, "single_task": connected_components_single_task}


def _spark_labels(spark, edges: list[tuple[str, str]], impl: str = "distributed") -> dict[str, str]:
    df = spark.createDataFrame(edges, "u string, v string").repartition(3)
    return {r["node"]: r["component"] for r in IMPLS[impl](df).collect()}


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_chain_star_and_isolated(spark, impl):
    edges = [("d", "c"), ("c", "b"), ("b", "a"), ("x", "y"), ("y", "z"), ("q", "q"), ("é", "z")]
    labels = _spark_labels(spark, edges, impl)
    assert labels == {
        "a": "a",
        "b": "a",
        "c": "a",
        "d": "a",
        "x": "x",
        "y": "x",
        "z": "x",
        "é": "x",
    }


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("seed,n,m", [(0, 200, 150), (1, 500, 480), (2, 300, 900)])
def test_random_graphs_match_scipy(spark, impl, seed, n, m):
    rng = np.random.default_rng(seed)
    e = rng.integers(0, n, size=(m, 2))
    e = e[e[:, 0] != e[:, 1]]
    names = np.array([f"n{i:04d}" for i in range(n)])  # lexicographic = numeric order
    labels = _spark_labels(spark, [(names[a], names[b]) for a, b in e.tolist()], impl)
    want = cc_local(n, e)
    nodes = set(e.ravel().tolist())
    assert labels == {names[i]: names[want[i]] for i in nodes}
