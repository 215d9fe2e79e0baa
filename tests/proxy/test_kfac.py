"""K-FAC: factors equal their definition, the eigenbasis inverse equals the dense damped
inverse of kron(G, A), and TiKMiX with hessian="kfac" runs inside train_proxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from curamix.mixers import TiKMiXMixer
from curamix.proxy.kfac import KFACCollector, KFACPreconditioner, linear_layout
from curamix.proxy.model import ProxyLM, ProxyModelConfig
from curamix.proxy.train import ProxyTrainConfig, train_proxy


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.scale = nn.Parameter(torch.ones(3))  # not a linear layer: outside the layout
        self.fc1 = nn.Linear(3, 4, bias=False)
        self.fc2 = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.randn(4, 3, generator=g))
            self.fc2.weight.copy_(torch.randn(2, 4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x * self.scale)))


def flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def test_layout_offsets_follow_parameter_order():
    m = TwoLayer()
    layout = linear_layout(m)
    assert [(b.name, b.offset, b.out_features, b.in_features) for b in layout] == [
        ("fc1", 3, 4, 3),
        ("fc2", 15, 2, 4),
    ]


def test_factors_match_their_definition():
    m = TwoLayer()
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1))
    y = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(2))
    with KFACCollector(m) as kc:
        loss = ((m(x) - y) ** 2).sum(-1).mean()  # mean over the 10 tokens
        torch.autograd.grad(loss, list(m.parameters()))
    A2, G2 = kc.factors()["fc2"]
    # by hand: A = mean a a^T over tokens; G = mean d d^T, d = per-token loss gradient
    h = torch.tanh(m.fc1(x * m.scale)).detach().reshape(-1, 4).double()
    d = (2 * (m(x) - y)).detach().reshape(-1, 2).double()
    assert torch.allclose(A2, h.T @ h / 10, atol=1e-10)
    assert torch.allclose(G2, d.T @ d / 10, atol=1e-10)
    # the sum of per-token outer products gives the gradient: grad W2 = mean_t d_t a_t^T
    g = flat_grad(m, ((m(x) - y) ** 2).sum(-1).mean())
    assert torch.allclose(g[15:].double().reshape(2, 4), d.T @ h / 10, atol=1e-6)


def test_weighted_passes_average_factors():
    m = TwoLayer()
    xs = [torch.randn(4, 3, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    single = []
    for x in xs:
        with KFACCollector(m) as kc:
            torch.autograd.grad(m(x).square().mean(), list(m.parameters()))
        single.append(kc.factors()["fc1"])
    with KFACCollector(m) as kc:
        for w, x in zip((0.25, 0.75), xs, strict=True):
            kc.weight = w
            torch.autograd.grad(m(x).square().mean(), list(m.parameters()))
    A, G = kc.factors()["fc1"]
    assert torch.allclose(A, 0.25 * single[0][0] + 0.75 * single[1][0])
    assert torch.allclose(G, 0.25 * single[0][1] + 0.75 * single[1][1])


def test_apply_equals_dense_damped_inverse():
    rng = np.random.default_rng(0)
    m = TwoLayer()
    layout = linear_layout(m)
    factors = {}
    for b in layout:
        xa = rng.normal(size=(50, b.in_features))
        xg = rng.normal(size=(50, b.out_features))
        factors[b.name] = (torch.tensor(xa.T @ xa / 50), torch.tensor(xg.T @ xg / 50))
    P = KFACPreconditioner(layout, factors, damping=0.05)
    v = torch.tensor(rng.normal(size=(3, P.size)))
    out = P.apply(v).numpy()
    pos = 0
    for b in layout:
        A, G = (t.numpy() for t in factors[b.name])
        lam = 0.05 * np.linalg.eigvalsh(G).mean() * np.linalg.eigvalsh(A).mean()
        dense = np.kron(G, A) + lam * np.eye(b.size)  # vec(W) row by row
        want = np.linalg.solve(dense, v[:, pos : pos + b.size].numpy().T).T
        np.testing.assert_allclose(out[:, pos : pos + b.size], want, rtol=1e-8, atol=1e-10)
        pos += b.size
    # restrict drops the 3 'scale' entries and keeps fc1 (12) and fc2 (8)
    assert torch.equal(P.restrict(torch.arange(23.0)), torch.arange(3.0, 23.0))
    with pytest.raises(ValueError, match="damping"):
        KFACPreconditioner(layout, factors, damping=0.0)


def test_tikmix_kfac_inside_train_proxy():
    rng = np.random.default_rng(0)
    vocab = 64
    pat = rng.permutation(np.arange(1, 33))[:7]
    train = {
        "cyc": np.tile(pat, 900).astype(np.uint16)[:6000],
        "noise": rng.integers(1, vocab, 6000).astype(np.uint16),
    }
    val = {d: t[:600] for d, t in train.items()}
    target = np.tile(pat, 100).astype(np.uint16)[:600]
    cfg = ProxyTrainConfig(
        model="nano", vocab_size=vocab, seq_len=32, batch_size=8, total_tokens=8 * 32 * 30,
        lr=1e-2, eval_tokens=256, log_every=10, update_every=10, device="cpu", cpu_threads=1,
    )  # fmt: skip
    mixer = TiKMiXMixer(hessian="kfac", uniformity=0.3).fit({"cyc": 6000, "noise": 6000})
    assert mixer.needs_kfac and mixer.needs_gradients
    res = train_proxy(cfg, train, val, {"cyc": 0.5, "noise": 0.5}, target, hook=mixer,
                      progress=False)  # fmt: skip
    assert np.isfinite(mixer.influence_).all()
    # the target is the cyclic domain: its K-FAC influence is the larger benefit
    assert mixer.influence_[0] > mixer.influence_[1]
    assert res.weights["cyc"] > 0.5
    # the K-FAC layout covers every linear layer of the proxy model (no tied head)
    model = ProxyLM(ProxyModelConfig(vocab_size=vocab, seq_len=32, d_model=32, n_layers=1,
                                     n_heads=2))  # fmt: skip
    assert [b.name for b in linear_layout(model)] == [
        "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc", "blocks.0.mlp.proj",
    ]  # fmt: skip


def test_kfac_without_factors_is_named():
    mixer = TiKMiXMixer(hessian="kfac").fit({"a": 1.0, "b": 1.0})
    from tests.mixers import make_metrics

    g = {"a": np.ones(4), "b": -np.ones(4)}
    with pytest.raises(ValueError, match="K-FAC factors"):
        mixer(make_metrics(g, target=g["a"], step=10))
    with pytest.raises(ValueError, match="kfac_damping"):
        TiKMiXMixer(hessian="kfac", kfac_damping=0).fit({"a": 1.0, "b": 1.0})
