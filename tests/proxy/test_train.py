"""train_proxy: determinism, exact resume, learning, budget and data errors, NaN, mixer hook."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from curamix.proxy import train as ptrain
from curamix.proxy.model import ProxyLM, count_params
from curamix.proxy.train import (
    NonFiniteLossError,
    ProxyTrainConfig,
    StepMetrics,
    hook_batches,
    lr_at,
    train_proxy,
)

VOCAB = 64


def pattern_stream(pattern: list[int], n_tokens: int) -> np.ndarray:
    reps = n_tokens // len(pattern) + 1
    return np.tile(np.array(pattern, dtype=np.uint16), reps)[:n_tokens]


def noise_stream(n_tokens: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, VOCAB, n_tokens).astype(np.uint16)


@pytest.fixture(scope="module")
def data():
    """Two learnable domains (fixed cycles) and a noisy one; a target like domain 'cyc7'."""
    rng = np.random.default_rng(0)
    p7, p11 = rng.permutation(np.arange(1, 33))[:7].tolist(), list(range(40, 51))
    train = {
        "cyc7": pattern_stream(p7, 6000),
        "cyc11": pattern_stream(p11, 6000),
        "noise": noise_stream(6000, 1),
    }
    val = {
        "cyc7": pattern_stream(p7[3:] + p7[:3], 600),
        "cyc11": pattern_stream(p11, 600),
        "noise": noise_stream(600, 2),
    }
    return train, val, pattern_stream(p7, 600)


WEIGHTS = {"cyc7": 0.4, "cyc11": 0.4, "noise": 0.2}


def cfg(**kw) -> ProxyTrainConfig:
    base = {
        "model": "nano",
        "vocab_size": VOCAB,
        "seq_len": 32,
        "batch_size": 8,
        "total_tokens": 8 * 32 * 40,
        "lr": 1e-2,
        "eval_tokens": 256,
        "log_every": 5,
        "device": "cpu",
        "cpu_threads": 1,  # tiny models: faster, and immune to a busy machine
    }
    return ProxyTrainConfig(**{**base, **kw})


def test_lr_schedule_warmup_then_cosine_to_10_percent():
    c = cfg(lr=1.0, warmup=0.1)
    lrs = [lr_at(s, 100, c) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))


def test_learns_a_learnable_stream(data):
    train, val, target = data
    threads = torch.get_num_threads()
    r = train_proxy(cfg(total_tokens=8 * 32 * 80), train, val, WEIGHTS, target, progress=False)
    assert torch.get_num_threads() == threads  # cpu_threads is restored
    assert r.val_losses["cyc7"] < 0.3 and r.val_losses["cyc11"] < 0.3
    assert r.target_loss < 0.3
    assert r.val_losses["noise"] > 3.5  # uniform over 63 ids: ln 63 = 4.14, not learnable
    m = r.metrics
    assert m["train_loss"].iloc[0] > 3.0 > 1.5 > m["train_loss"].iloc[-1]
    assert r.steps == 80 and r.tokens_trained == 80 * 256
    n = count_params(cfg().resolve_model())
    assert r.n_params == n.total and r.n_params_non_embedding == n.non_embedding
    assert r.flops == 6 * n.non_embedding * r.tokens_trained
    assert r.mean_val_loss == pytest.approx(np.mean(list(r.val_losses.values())))
    assert r.tokens_per_s > 0 and r.wall_s > 0


def test_same_seed_same_loss_exactly(data):
    train, val, target = data
    a = train_proxy(cfg(seed=3), train, val, WEIGHTS, target, progress=False)
    b = train_proxy(cfg(seed=3), train, val, WEIGHTS, target, progress=False)
    c = train_proxy(cfg(seed=4), train, val, WEIGHTS, target, progress=False)
    assert a.val_losses == b.val_losses and a.target_loss == b.target_loss
    assert a.metrics["train_loss"].tolist() == b.metrics["train_loss"].tolist()
    assert a.val_losses != c.val_losses


def test_resume_after_interruption_equals_uninterrupted(data, tmp_path):
    train, val, target = data
    c = cfg(checkpoint_every=10, update_every=1, eval_every=20)

    def quiet(m: StepMetrics):
        return None

    full = train_proxy(
        c, train, val, WEIGHTS, target, out_dir=tmp_path / "full", hook=quiet, progress=False
    )

    def crash_at_25(m: StepMetrics):
        if m.step == 25:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train_proxy(
            c,
            train,
            val,
            WEIGHTS,
            target,
            out_dir=tmp_path / "cut",
            hook=crash_at_25,
            progress=False,
        )
    ck = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 20
    resumed = train_proxy(
        c, train, val, WEIGHTS, target, out_dir=tmp_path / "cut", hook=quiet, progress=False
    )
    assert resumed.resumed_from == 20
    assert resumed.val_losses == full.val_losses and resumed.target_loss == full.target_loss
    assert resumed.tokens_seen == full.tokens_seen
    cols = ["step", "tokens", "train_loss", "lr", "val/cyc7", "val_mean"]
    pd.testing.assert_frame_equal(resumed.metrics[cols], full.metrics[cols])
    for (ka, va), (kb, vb) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)

    # a finished run is not trained again, and its files are there
    again = train_proxy(c, train, val, WEIGHTS, target, out_dir=tmp_path / "cut", progress=False)
    assert again.resumed_from == 40 and again.val_losses == full.val_losses
    on_disk = pd.read_parquet(tmp_path / "cut" / "metrics.parquet")
    pd.testing.assert_frame_equal(on_disk[cols], full.metrics[cols])
    summary = json.loads((tmp_path / "cut" / "result.json").read_text())
    assert summary["val_losses"] == full.val_losses and summary["steps"] == 40


def test_checkpoint_from_another_config_is_refused(data, tmp_path):
    train, val, _ = data
    train_proxy(cfg(total_tokens=8 * 32 * 5), train, val, WEIGHTS, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="written for another config"):
        train_proxy(
            cfg(total_tokens=8 * 32 * 5, lr=1e-3),
            train,
            val,
            WEIGHTS,
            out_dir=tmp_path,
            progress=False,
        )


def test_budget_smaller_than_one_batch(data):
    train, val, _ = data
    with pytest.raises(ValueError, match=r"total_tokens=100 .* 8 \* 32 = 256 tokens"):
        train_proxy(cfg(total_tokens=100), train, val, WEIGHTS, progress=False)


def test_empty_domain_is_named(data):
    train, val, _ = data
    with pytest.raises(ValueError, match="training domain 'empty' has 0 tokens"):
        train_proxy(cfg(), {**train, "empty": np.zeros(0, np.uint16)}, val, WEIGHTS, progress=False)
    with pytest.raises(ValueError, match="validation domain 'cyc7' has 1 tokens"):
        train_proxy(cfg(), train, {**val, "cyc7": val["cyc7"][:1]}, WEIGHTS, progress=False)
    with pytest.raises(ValueError, match="token id 80, outside the model's vocab_size 64"):
        train_proxy(cfg(), {**train, "cyc7": train["cyc7"] + 50}, val, WEIGHTS, progress=False)


def test_nan_loss_names_step_and_domains_and_keeps_checkpoint(data, tmp_path, monkeypatch):
    train, val, _ = data
    real = ptrain._forward_loss
    calls = {"n": 0}

    def nan_at_13(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls["n"] == 13 else loss

    monkeypatch.setattr(ptrain, "_forward_loss", nan_at_13)
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at step 13 \(batch domains: \{'cyc11'"
    ):
        train_proxy(cfg(checkpoint_every=5), train, val, WEIGHTS, out_dir=tmp_path, progress=False)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 10
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


class SetWeights:
    """A hook that moves all weight to one domain at step 10 and records what it saw."""

    def __init__(self):
        self.seen: list[StepMetrics] = []

    def __call__(self, m: StepMetrics):
        self.seen.append(m)
        return {"cyc11": 1.0} if m.step == 10 else None


def test_hook_returning_weights_changes_the_sampler(data):
    train, val, _ = data
    hook = SetWeights()
    r = train_proxy(
        cfg(update_every=10, log_every=10), train, val, WEIGHTS, hook=hook, progress=False
    )
    assert [m.step for m in hook.seen] == [10, 20, 30, 40]
    assert hook.seen[0].weights == WEIGHTS and hook.seen[1].weights == {
        "cyc11": 1.0,
        "cyc7": 0.0,
        "noise": 0.0,
    }
    assert set(hook.seen[0].domain_losses) == set(WEIGHTS) and hook.seen[0].domain_grads is None
    assert r.weights == {"cyc11": 1.0, "cyc7": 0.0, "noise": 0.0}
    seen_at_10 = hook.seen[0].tokens_seen
    assert (
        r.tokens_seen["cyc7"] == seen_at_10["cyc7"]
        and r.tokens_seen["noise"] == seen_at_10["noise"]
    )
    assert r.metrics["weight/cyc7"].tolist() == [0.4, 0.0, 0.0, 0.0]


def test_bad_weights_from_the_hook_raise(data):
    train, val, _ = data
    with pytest.raises(ValueError, match="must sum to 1"):
        train_proxy(
            cfg(update_every=5), train, val, WEIGHTS, hook=lambda m: {"cyc7": 0.5}, progress=False
        )


def test_gradient_dot_products_equal_direct_computation(data):
    train, val, target = data

    class GradHook:
        needs_gradients = True
        metrics: StepMetrics | None = None

        def __call__(self, m: StepMetrics):
            self.metrics = m

    hook = GradHook()
    c = cfg(total_tokens=8 * 32 * 12, update_every=12, hook_rows=3)
    r = train_proxy(c, train, val, WEIGHTS, target, hook=hook, progress=False)
    m = hook.metrics
    assert m is not None and m.step == 12 == r.steps
    n_params = sum(p.numel() for p in r.model.parameters())
    assert all(g.shape == (n_params,) and g.dtype == torch.float32 for g in m.domain_grads.values())

    # recompute the micro-batch gradients directly from the final model
    batches, tbatch = hook_batches(train, target, 32, 3, c.seed, 12)
    model: ProxyLM = r.model

    def grad(b: np.ndarray) -> torch.Tensor:
        model.zero_grad()
        loss = model.loss(torch.from_numpy(b))
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), float(loss.detach())

    gt, lt = grad(tbatch)
    assert m.target_loss == pytest.approx(lt, rel=1e-6)
    dots = m.grad_dots()
    for d, b in batches.items():
        g, loss = grad(b)
        assert m.domain_losses[d] == pytest.approx(loss, rel=1e-6)
        assert torch.allclose(m.domain_grads[d], g, rtol=1e-5, atol=1e-8)
        assert dots[d] == pytest.approx(float(torch.dot(g, gt)), rel=1e-4, abs=1e-10)
    names, gram = m.gram()
    assert names == ["cyc11", "cyc7", "noise", "target"]
    assert np.allclose(gram, gram.T) and np.all(np.diag(gram) > 0)
    assert gram[1, 3] == pytest.approx(dots["cyc7"], rel=1e-6)


def test_metrics_frame_and_files(data, tmp_path):
    train, val, target = data
    r = train_proxy(
        cfg(eval_every=20), train, val, WEIGHTS, target, out_dir=tmp_path, progress=True
    )
    m = r.metrics
    assert m["step"].tolist() == [5, 10, 15, 20, 25, 30, 35, 40]
    assert list(m.columns[:6]) == ["step", "tokens", "train_loss", "lr", "tokens_per_s", "wall_s"]
    assert m["val/cyc7"].notna().tolist() == [False, False, False, True, False, False, False, True]
    assert (
        m["val/cyc7"].iloc[-1] == r.val_losses["cyc7"]
        and m["target_loss"].iloc[-1] == r.target_loss
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "metrics.parquet"), m)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files


def test_adam_second_moments_are_the_optimizer_preconditioner():
    """adam_second_moments = exp_avg_sq / (1 - beta2^t) in model.parameters() order, and
    sqrt(it) + eps is exactly the denominator of AdamW's next update."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    params = list(model.parameters())  # w0, b0, w1, b1; groups below reorder them
    opt = torch.optim.AdamW(
        [{"params": [params[2], params[0]]}, {"params": [params[3], params[1]]}],
        lr=0.1, betas=(0.0, 0.9), weight_decay=0.0,
    )  # fmt: skip
    x = torch.randn(5, 3)
    for _ in range(3):
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    v = ptrain.adam_second_moments(model, opt)
    want = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) / (1 - 0.9**3) for p in params])
    assert torch.allclose(v, want) and v.shape == (sum(p.numel() for p in params),)
    # one more step with beta1 = 0: the update is -lr * g / (sqrt(v_hat) + eps)
    before = torch.cat([p.detach().reshape(-1).clone() for p in params])
    model(x).square().sum().backward()
    g = torch.cat([p.grad.reshape(-1).clone() for p in params])
    opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in params])
    v4 = ptrain.adam_second_moments(model, opt)
    assert torch.allclose(after - before, -0.1 * g / (v4.sqrt() + 1e-8), rtol=1e-5, atol=1e-7)
    # a parameter the optimizer never stepped has v_hat = 0
    fresh = torch.optim.AdamW(model.parameters())
    assert torch.equal(ptrain.adam_second_moments(model, fresh), torch.zeros_like(v))


def test_hook_gets_the_optimizer_second_moments_when_it_asks(data, tmp_path):
    """``needs_adam_moments``: StepMetrics.adam_v is the AdamW state after that step (checked
    against the checkpoint written at the same step); other hooks get None."""
    train, val, target = data

    class AdamHook(SetWeights):
        needs_gradients = True
        needs_adam_moments = True

    hook = AdamHook()
    c = cfg(total_tokens=8 * 32 * 12, update_every=6, hook_rows=2)
    r = train_proxy(c, train, val, WEIGHTS, target, out_dir=tmp_path, hook=hook, progress=False)
    assert [m.step for m in hook.seen] == [6, 12]  # (SetWeights acts at step 10 only)
    v = hook.seen[-1].adam_v
    n_params = sum(p.numel() for p in r.model.parameters())
    assert v.shape == (n_params,) and v.dtype == torch.float32 and (v > 0).all()
    assert not torch.equal(hook.seen[0].adam_v, v)  # the state at step 6, not a reference
    # the final checkpoint holds the optimizer at step 12, the last hook call's state
    ck = torch.load(tmp_path / ptrain.CHECKPOINT, weights_only=True)["optimizer"]
    order = [i for g in ck["param_groups"] for i in g["params"]]
    by_param = dict(zip(order, _optimizer_param_order(r.model), strict=True))
    beta2 = c.betas[1]
    want = {by_param[i]: s["exp_avg_sq"].reshape(-1) / (1 - beta2 ** float(s["step"]))
            for i, s in ck["state"].items()}  # fmt: skip
    assert torch.allclose(v, torch.cat([want[k] for k in range(len(want))]))
    plain = SetWeights()  # needs neither gradients nor moments
    train_proxy(cfg(total_tokens=8 * 32 * 6, update_every=6), train, val, WEIGHTS,
                hook=plain, progress=False)  # fmt: skip
    assert plain.seen[0].adam_v is None


def _optimizer_param_order(model: ProxyLM) -> list[int]:
    """Positions in ``model.parameters()`` of the optimizer's parameters, in its group order
    (matrices first, then vectors: ``_make_optimizer``)."""
    ps = list(model.parameters())
    return [i for i, p in enumerate(ps) if p.ndim >= 2] + [
        i for i, p in enumerate(ps) if p.ndim < 2
    ]
