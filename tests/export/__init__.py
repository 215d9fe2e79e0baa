"""Tests of curamix.export; the mixtures they share."""

from __future__ import annotations

from curamix.mixture import Mixture, upsampling_stage

# Domain order deliberately not alphabetical: every format must keep it.
WEIGHTS = {"web": 0.55, "code": 0.25, "math": 0.15, "books": 0.05}
TEMPLATE = "/data/{domain}_text_document"


def one_stage(**kwargs) -> Mixture:
    return Mixture(dict(WEIGHTS), **kwargs)


def two_stage() -> Mixture:
    """Main weights, then the last 15% with math and code upsampled 3x; with token counts."""
    return Mixture(
        dict(WEIGHTS),
        schedule=[upsampling_stage(WEIGHTS, ["math", "code"], 3.0, 0.15)],
        total_tokens=2e9,
        domain_tokens={"web": 5e9, "code": 4e8, "math": 1e8, "books": 3e8},
        provenance={"method": "test", "seed": 7},
    )


def three_stage() -> Mixture:
    """Three stages, the middle one unnamed, the last one leaving out 'books'."""
    from curamix.mixture import Stage

    return Mixture(
        dict(WEIGHTS),
        schedule=[
            Stage(0.5, {"web": 0.4, "code": 0.3, "math": 0.2, "books": 0.1}),
            Stage(0.9, {"web": 0.2, "code": 0.4, "math": 0.4}, "anneal"),
        ],
        total_tokens=1e9,
    )
