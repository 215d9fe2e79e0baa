"""ProxyLM: analytic parameter / FLOP counts equal the module's, causality, seeded init."""

from __future__ import annotations

import pytest
import torch

from curamix.proxy.model import (
    PRESETS,
    ProxyLM,
    ProxyModelConfig,
    apply_rope,
    count_params,
    flops_per_token,
    rope_tables,
)


def real_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["nano", "tiny", "xs", "s"])
@pytest.mark.parametrize("tie", [True, False])
def test_count_params_equals_module(name, tie):
    cfg = ProxyModelConfig.preset(name, vocab_size=1000, seq_len=32, tie_embeddings=tie)
    counts = count_params(cfg)
    model = ProxyLM(cfg)
    assert counts.total == real_count(model)
    emb = {id(model.embed.weight)} | ({id(model.head.weight)} if model.head is not None else set())
    assert counts.non_embedding == sum(p.numel() for p in model.parameters() if id(p) not in emb)
    assert counts.embedding == counts.total - counts.non_embedding


def test_count_params_other_shapes():
    cfg = ProxyModelConfig(
        vocab_size=300, d_model=48, n_layers=3, n_heads=3, seq_len=8, mlp_ratio=2
    )
    assert count_params(cfg).total == real_count(ProxyLM(cfg))


def test_presets_span_50k_to_100m_non_embedding():
    n = {k: count_params(ProxyModelConfig.preset(k)).non_embedding for k in PRESETS}
    assert n["nano"] == 49_344 and n["tiny"] == 98_624 and n["s"] == 4_721_920
    assert min(n.values()) > 40_000 and max(n.values()) < 100_000_000
    assert list(n.values()) == sorted(n.values())


def test_flops_per_token_is_6n_plus_optional_terms():
    cfg = ProxyModelConfig.preset("tiny", vocab_size=8000, seq_len=256)
    n = count_params(cfg).non_embedding
    assert flops_per_token(cfg) == 6 * n
    assert flops_per_token(cfg, embedding=True) == 6 * n + 6 * 8000 * 64
    assert flops_per_token(cfg, attention=True) == 6 * n + 6 * 2 * 256 * 64


def test_same_seed_same_weights_and_no_global_rng_use():
    cfg = ProxyModelConfig.preset("nano", vocab_size=100, seq_len=16)
    state = torch.get_rng_state()
    a, b, c = (
        ProxyLM(cfg, random_state=3),
        ProxyLM(cfg, random_state=3),
        ProxyLM(cfg, random_state=4),
    )
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        if pa.ndim == 2:
            assert not torch.equal(pa, pc)


def test_causal_and_initial_loss_near_uniform():
    cfg = ProxyModelConfig.preset("tiny", vocab_size=500, seq_len=24)
    model = ProxyLM(cfg, random_state=0)
    x = torch.randint(0, 500, (3, 24), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 1) % 500  # change only the future
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :12], model(y)[:, :12], atol=1e-5)
        assert not torch.allclose(model(x)[:, 12:], model(y)[:, 12:], atol=1e-5)
        loss = model.loss(
            torch.randint(0, 500, (4, 25), generator=torch.Generator().manual_seed(1))
        )
    assert abs(float(loss) - torch.log(torch.tensor(500.0)).item()) < 0.1


def test_rope_preserves_norm_and_relative_position():
    cos, sin = rope_tables(16, 8)
    q = torch.randn(1, 1, 16, 8, generator=torch.Generator().manual_seed(0))
    rq = apply_rope(q, cos, sin)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # the score of the same vectors depends only on the position difference
    v = q[:, :, :1].expand(1, 1, 16, 8)
    rv = apply_rope(v, cos, sin)[0, 0]
    assert torch.allclose(rv[3] @ rv[1], rv[10] @ rv[8], atol=1e-5)


def test_longer_than_seq_len_rejected():
    model = ProxyLM(ProxyModelConfig.preset("nano", vocab_size=50, seq_len=8))
    with pytest.raises(ValueError, match="exceeds the model's seq_len 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        ProxyModelConfig(d_model=64, n_heads=3)
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ProxyModelConfig.preset("huge")
