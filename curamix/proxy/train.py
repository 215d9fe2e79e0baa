"""Training a proxy LM on a domain mixture: budget, schedule, evaluation, checkpoints, mixer hook.

:func:`train_proxy` trains a :class:`~curamix.proxy.model.ProxyLM` for a token budget on
batches from a :class:`~curamix.proxy.data.MixtureSampler`, evaluates per-domain validation
loss (and a target set's loss), and returns a :class:`ProxyResult`. With ``out_dir`` it writes
``checkpoint.pt`` every ``checkpoint_every`` steps and at the end, ``metrics.parquet`` and
``result.json`` (each through a temporary file and an atomic rename), and a rerun resumes
from the checkpoint: on CPU an interrupted and resumed run ends with exactly the same loss as
an uninterrupted one.

Determinism: the weights come from a local ``torch.Generator`` seeded with ``seed``, the
batches from the sampler's numpy Generator, the mixer hook's micro-batches from a numpy
Generator keyed by (seed, step); the loop draws no torch random numbers (no dropout) and never
seeds the global RNGs. The checkpoint holds the model, the optimizer, the sampler (positions,
counts, weights, RNG state) and the metrics so far. On CUDA the forward pass runs under bf16
autocast (weights, optimizer and loss in fp32), on CPU everything is fp32.

Mixer hook: every ``update_every`` steps, ``hook(StepMetrics)`` gets the step, tokens,
weights, per-domain losses on small per-domain micro-batches and, when
``hook.needs_gradients`` is true, each domain's and the target's flattened loss gradient;
it may return new weights for the sampler. ``hook.needs_adam_moments`` adds the AdamW
optimizer's bias-corrected second moments (TiKMiX's ``hessian="adam"``), ``hook.needs_kfac``
K-FAC factors, ``hook.needs_val_losses`` each training domain's and the target's held-out
evaluation loss (Skill-it; on ``hook.val_eval_tokens`` tokens each). An online mixer
(``curamix.mixers``) is itself a hook: ``train_proxy(..., hook=DGAMixer(...).fit(stats))``.
A hook with ``state_dict``/``load_state_dict`` is checkpointed with the run.

References: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW),
arXiv:1711.05101; Loshchilov & Hutter, "SGDR" (cosine schedule), arXiv:1608.03983;
Kaplan et al. 2020, arXiv:2001.08361 (C = 6ND); Fan et al., "DoGE: Domain Reweighting with
Generalization Estimation", arXiv:2310.15393 (gradient alignment <g_i, g_target>).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import polars as pl
import torch
from pydantic import model_validator

from curamix.config import CuramixModel
from curamix.device import resolve_device
from curamix.proxy.data import MixtureSampler, eval_windows, random_windows
from curamix.proxy.model import ProxyLM, ProxyModelConfig, count_params

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.parquet"
RESULT = "result.json"
_CKPT_FORMAT = 1
_NOT_TRAJECTORY = ("device", "checkpoint_every", "eval_every", "log_every")
"""Config fields a resumed run may change: they do not alter the training trajectory."""


class ProxyTrainConfig(CuramixModel):
    """How to train one proxy model (frozen, validated)."""

    model: str | ProxyModelConfig = "tiny"
    """A preset name (:data:`curamix.proxy.model.PRESETS`) or a full model config."""
    vocab_size: int | None = None
    """With a preset: the tokenizer's vocabulary size (default 8000). With a model config:
    leave unset, or equal to its ``vocab_size``."""
    seq_len: int | None = None
    """With a preset: the context length (default 256). With a model config: unset or equal."""
    batch_size: int = 32
    total_tokens: int = 5_000_000
    """Token budget: ``total_tokens // (batch_size * seq_len)`` optimizer steps."""
    lr: float = 3e-3
    warmup: float = 0.05
    """Linear warmup over this fraction of the steps (0 <= warmup < 1)."""
    min_lr_ratio: float = 0.1
    """Cosine decay from ``lr`` to ``min_lr_ratio * lr`` at the last step."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, on matrices only (not on RMSNorm gains)."""
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    eval_every: int | None = None
    """Evaluate every this many steps (and always at the end); None: only at the end."""
    eval_tokens: int = 32_768
    """Validation tokens per domain (and of the target) per evaluation."""
    log_every: int = 10
    """A metrics row (mean train loss, lr, tokens/s) every this many steps."""
    seed: int = 0
    device: str = "auto"
    cpu_threads: int | None = None
    """On CPU, ``torch.set_num_threads`` for the run (restored afterwards); None: torch's
    default. One thread per run is the way to train several proxies side by side, and keeps its
    speed on a busy machine, where multi-threaded torch slows down many times over."""
    checkpoint_every: int | None = None
    """Write ``checkpoint.pt`` every this many steps (with ``out_dir``; one is always written at
    the end). None: only at the end."""
    update_every: int = 100
    """Call the mixer hook every this many steps."""
    hook_rows: int = 4
    """Rows per domain (and of the target) in the hook's micro-batches."""
    max_epochs: float | None = None
    on_exhausted: Literal["raise", "drop"] = "raise"
    """What the sampler does when a domain would pass ``max_epochs`` (see MixtureSampler)."""

    @model_validator(mode="after")
    def _check(self) -> ProxyTrainConfig:
        for name in (
            "batch_size",
            "total_tokens",
            "eval_tokens",
            "log_every",
            "update_every",
            "hook_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("eval_every", "checkpoint_every", "cpu_threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {v!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        self.resolve_model()  # a preset name that does not exist, or conflicting sizes
        return self

    def resolve_model(self) -> ProxyModelConfig:
        """The model config: the preset with ``vocab_size`` / ``seq_len``, or ``model`` itself."""
        if isinstance(self.model, str):
            return ProxyModelConfig.preset(
                self.model, vocab_size=self.vocab_size or 8000, seq_len=self.seq_len or 256
            )
        for name in ("vocab_size", "seq_len"):
            mine, theirs = getattr(self, name), getattr(self.model, name)
            if mine is not None and mine != theirs:
                raise ValueError(f"{name}={mine} disagrees with model.{name}={theirs}")
        return self.model

    def n_steps(self) -> int:
        """Optimizer steps of the budget (0 when the budget is smaller than one batch)."""
        return self.total_tokens // (self.batch_size * self.resolve_model().seq_len)


def lr_at(step: int, n_steps: int, cfg: ProxyTrainConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warmup over ``round(warmup * n_steps)``
    steps, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    warm = round(cfg.warmup * n_steps)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(1, n_steps - 1 - warm)
    p = min(1.0, (step - warm) / span)
    lo = cfg.min_lr_ratio * cfg.lr
    return lo + (cfg.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))


# ---------------------------------------------------------------------------------------------
# Mixer hook


@dataclass
class StepMetrics:
    """What the mixer hook sees every ``update_every`` steps (after that step's update)."""

    step: int
    tokens: int
    lr: float
    weights: dict[str, float]
    """The sampler's current weights."""
    domain_losses: dict[str, float]
    """Mean loss per domain on this step's micro-batch (``hook_rows`` random training windows)."""
    target_loss: float | None
    tokens_seen: dict[str, int]
    epochs: dict[str, float]
    train_loss: float
    """Mean training loss since the previous hook call."""
    domain_grads: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    """Flattened float32 gradient of each domain's micro-batch loss (``hook.needs_gradients``),
    on the training device, in ``model.parameters()`` order."""
    target_grad: torch.Tensor | None = field(default=None, repr=False)
    kfac: Any = field(default=None, repr=False)
    """``(layout, {layer: (A, G)})``: the K-FAC factors of the linear layers from this call's
    domain micro-batches, each weighted by its domain's mixture weight (``hook.needs_kfac``;
    see :mod:`curamix.proxy.kfac`)."""
    adam_v: torch.Tensor | None = field(default=None, repr=False)
    """The optimizer's bias-corrected second moments ``exp_avg_sq / (1 - beta2^t)`` after this
    step, flattened like the gradients (``hook.needs_adam_moments``; :func:`adam_second_moments`)."""
    val_losses: dict[str, float] | None = None
    """Loss of each training domain on its held-out evaluation windows (the first
    ``hook.val_eval_tokens`` tokens, default ``cfg.eval_tokens``, of its validation stream), when
    ``hook.needs_val_losses`` is true (Skill-it); domains without validation data are absent."""
    val_target_loss: float | None = None
    """The target's loss on its evaluation windows, likewise (None without a target)."""

    def grad_dots(self) -> dict[str, float]:
        """``<g_domain, g_target>`` per domain (the DoGE / gradient-alignment score)."""
        if self.domain_grads is None or self.target_grad is None:
            raise ValueError(
                "grad_dots needs gradients: set hook.needs_gradients = True and pass target_tokens"
            )
        return {d: float(torch.dot(g, self.target_grad)) for d, g in self.domain_grads.items()}

    def gram(self) -> tuple[list[str], np.ndarray]:
        """Names and Gram matrix of the domain gradients (plus ``"target"`` last, when given)."""
        if self.domain_grads is None:
            raise ValueError("gram needs gradients: set hook.needs_gradients = True")
        names = list(self.domain_grads)
        grads = [self.domain_grads[d] for d in names]
        if self.target_grad is not None:
            names.append("target")
            grads.append(self.target_grad)
        k = len(grads)
        out = np.zeros((k, k))
        for i in range(k):
            for j in range(i, k):
                out[i, j] = out[j, i] = float(torch.dot(grads[i], grads[j]))
        return names, out


MixerHook = Callable[[StepMetrics], "Mapping[str, float] | None"]


def hook_batches(
    train_tokens: Mapping[str, np.ndarray],
    target_tokens: np.ndarray | None,
    seq_len: int,
    rows: int,
    seed: int,
    step: int,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The hook's micro-batches at ``step``: ``rows`` random windows per domain (sorted order)
    and of the target, from a numpy Generator seeded with ``(seed, step)``."""
    rng = np.random.default_rng([int(seed), int(step), 0x6D6978])
    per_domain = {
        d: random_windows(train_tokens[d], rows, seq_len, rng) for d in sorted(train_tokens)
    }
    target = None if target_tokens is None else random_windows(target_tokens, rows, seq_len, rng)
    return per_domain, target


def adam_second_moments(model: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
    """Adam's bias-corrected second moments ``v_hat = exp_avg_sq / (1 - beta2^t)``, flattened
    in ``model.parameters()`` order (trainable parameters, as the hook's gradients), float32.

    ``sqrt(v_hat) + eps`` is the denominator of the Adam(W) update (Kingma & Ba 2015,
    arXiv:1412.6980), i.e. TiKMiX's ``hessian="adam"`` preconditioner. A parameter the
    optimizer has not stepped yet has ``v_hat = 0`` (its state before any gradient).
    """
    beta2 = {id(p): g["betas"][1] for g in opt.param_groups for p in g["params"]}
    parts = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        st = opt.state.get(p, {})
        if "exp_avg_sq" not in st:
            parts.append(torch.zeros(p.numel(), dtype=torch.float32, device=p.device))
            continue
        t = float(st["step"])
        v = st["exp_avg_sq"].float().reshape(-1)
        parts.append(v / (1.0 - beta2[id(p)] ** t))
    return torch.cat(parts)


def _flat_grad(model: ProxyLM, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return torch.cat([g.float().reshape(-1) for g in grads])


# ---------------------------------------------------------------------------------------------
# Result, errors


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) of a training step is NaN or infinite."""


@dataclass(frozen=True)
class ProxyResult:
    """The outcome of :func:`train_proxy`."""

    val_losses: dict[str, float]
    """Final validation loss per domain (mean over up to ``eval_tokens`` tokens)."""
    target_loss: float | None
    mean_val_loss: float
    """Unweighted mean of ``val_losses`` over domains."""
    n_params: int
    n_params_non_embedding: int
    tokens_trained: int
    flops: float
    """``6 * n_params_non_embedding * tokens_trained`` (Kaplan's C = 6ND)."""
    steps: int
    wall_s: float
    """Wall seconds of the whole run (every resumed part included)."""
    tokens_per_s: float
    """Training tokens per second of training-step time (evaluation and hook excluded)."""
    weights: dict[str, float]
    """The sampler's weights at the end (the hook or epoch limits may have changed them)."""
    tokens_seen: dict[str, int]
    epochs: dict[str, float]
    metrics: pd.DataFrame = field(repr=False)
    """One row per logged / evaluated step: step, tokens, train_loss, lr, tokens_per_s, wall_s,
    ``val/<domain>``, val_mean, target_loss, ``weight/<domain>``."""
    resumed_from: int | None = None
    """The checkpoint step this call started from (None: from scratch)."""
    model: ProxyLM | None = field(default=None, repr=False, compare=False)


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_streams(
    streams: Mapping[str, np.ndarray], what: str, vocab_size: int, min_len: int = 1
) -> None:
    for d, arr in streams.items():
        if len(arr) < min_len:
            raise ValueError(
                f"{what} domain {d!r} has {len(arr)} tokens"
                + (f" (needs at least {min_len})" if min_len > 1 else "")
                + "; remove it or give it data"
            )
        top = int(np.max(arr))
        if top >= vocab_size:
            raise ValueError(
                f"{what} domain {d!r} has token id {top}, outside the model's vocab_size {vocab_size}"
            )


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _forward_loss(model: ProxyLM, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of a training batch (a seam for tests)."""
    return model.loss(batch)


@torch.no_grad()
def evaluate_loss(model: ProxyLM, rows: np.ndarray, batch_size: int, device: torch.device) -> float:
    """Mean next-token loss over every target token of ``rows`` (from :func:`eval_windows`)."""
    total, n = 0.0, 0
    for i in range(0, len(rows), batch_size):
        b = torch.from_numpy(np.ascontiguousarray(rows[i : i + batch_size])).to(device)
        with _autocast(device):
            total += float(model.loss(b, reduction="sum"))
        n += b[:, 1:].numel()
    return total / n if n else float("nan")


def _make_optimizer(
    model: ProxyLM, cfg: ProxyTrainConfig, device: torch.device
) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
        fused=device.type == "cuda",
    )


def _fingerprint(
    cfg: ProxyTrainConfig,
    train_tokens: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    target_tokens: np.ndarray | None,
) -> dict[str, Any]:
    conf = cfg.model_dump(mode="json", exclude=set(_NOT_TRAJECTORY))
    conf["model"] = cfg.resolve_model().model_dump(mode="json")
    conf.pop("vocab_size"), conf.pop("seq_len")
    return {
        "config": conf,
        "streams": {d: len(train_tokens[d]) for d in sorted(train_tokens)},
        "weights": {d: float(w) for d, w in sorted(weights.items())},
        "target": None if target_tokens is None else len(target_tokens),
    }


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_FIRST_COLUMNS = ("step", "tokens", "train_loss", "lr", "tokens_per_s", "wall_s")


def _metrics_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Rows as a polars frame, columns in a fixed order: the step fields, ``val/*``,
    ``val_mean``, ``target_loss``, ``weight/*`` (a field a row lacks is null)."""
    keys = {k for r in rows for k in r}
    cols = [c for c in _FIRST_COLUMNS if c in keys]
    cols += sorted(k for k in keys if k.startswith("val/"))
    cols += [c for c in ("val_mean", "target_loss") if c in keys]
    cols += sorted(k for k in keys if k.startswith("weight/"))
    if not rows:
        return pl.DataFrame()
    return pl.from_dicts(rows, infer_schema_length=None).select(cols)


def _write_metrics(out_dir: Path, rows: list[dict[str, Any]]) -> pl.DataFrame:
    df = _metrics_frame(rows)
    _atomic(out_dir / METRICS, df.write_parquet)
    return df


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, done: int) -> Iterator[Callable[[int, str], None]]:
    """A rich progress bar on stderr (steps done / total, elapsed, remaining, a status line)."""
    if not enabled:
        yield lambda _done, _desc: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[dim]proxy[/] steps"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
    )
    task = progress.add_task("", total=total, completed=done)
    with progress:
        yield lambda d, desc: progress.update(task, completed=d, description=desc)


def _fmt_tokens(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


# ---------------------------------------------------------------------------------------------
# Training


def train_proxy(
    cfg: ProxyTrainConfig,
    train_tokens: Mapping[str, np.ndarray],
    val_tokens: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    target_tokens: np.ndarray | None = None,
    out_dir: str | Path | None = None,
    hook: MixerHook | None = None,
    progress: bool = True,
) -> ProxyResult:
    """Train a proxy LM on a mixture of domains for ``cfg.total_tokens`` tokens.

    Parameters
    ----------
    cfg : ProxyTrainConfig
    train_tokens : dict of str to ndarray
        One token stream per domain (documents separated by EOS, see
        :func:`curamix.proxy.data.tokenize_domains`); every one non-empty.
    val_tokens : dict of str to ndarray
        Validation streams, evaluated on their first ``cfg.eval_tokens`` tokens. Keys may
        differ from the training domains (a domain can be evaluated without being trained on).
    weights : dict of str to float
        Initial mixture over the training domains (non-negative, sum 1; missing = 0).
    target_tokens : ndarray, optional
        A target set's stream: its loss is reported, and its gradient given to the hook.
    out_dir : path, optional
        Where ``checkpoint.pt``, ``metrics.parquet`` and ``result.json`` go. A checkpoint
        already there is resumed (it must come from the same config, data sizes and weights).
    hook : callable, optional
        ``hook(StepMetrics) -> dict | None`` every ``cfg.update_every`` steps; returned weights
        go to the sampler. ``hook.needs_gradients = True`` adds per-domain and target gradients.
    progress : bool
        Show a progress bar (steps, loss, tokens, tokens/s) on stderr.

    Returns
    -------
    ProxyResult

    Raises
    ------
    ValueError
        A budget smaller than one batch (naming both numbers), an empty domain (naming it), a
        token id outside the vocabulary, bad weights, or a checkpoint from another config.
    NonFiniteLossError
        A NaN or infinite loss or gradient norm: names the step and the batch's domains. That
        step's update is not applied and the last good checkpoint is left in place.
    curamix.proxy.data.EpochLimitError
        A domain would pass ``cfg.max_epochs`` with ``on_exhausted="raise"``.
    """
    t_start = time.perf_counter()
    mcfg = cfg.resolve_model()
    seq_len, batch_size = mcfg.seq_len, cfg.batch_size
    per_step = batch_size * seq_len
    n_steps = cfg.n_steps()
    if n_steps < 1:
        raise ValueError(
            f"total_tokens={cfg.total_tokens} is smaller than one batch of "
            f"batch_size * seq_len = {batch_size} * {seq_len} = {per_step} tokens"
        )
    _check_streams(train_tokens, "training", mcfg.vocab_size)
    _check_streams(val_tokens, "validation", mcfg.vocab_size, min_len=2)
    if target_tokens is not None:
        _check_streams({"target": target_tokens}, "target", mcfg.vocab_size, min_len=2)
    device = resolve_device(cfg.device)
    with _cpu_threads(cfg.cpu_threads if device.type == "cpu" else None):
        return _train(
            cfg,
            mcfg,
            device,
            train_tokens,
            val_tokens,
            weights,
            target_tokens,
            out_dir,
            hook,
            progress,
            t_start,
        )


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    cfg: ProxyTrainConfig,
    mcfg: ProxyModelConfig,
    device: torch.device,
    train_tokens: Mapping[str, np.ndarray],
    val_tokens: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    target_tokens: np.ndarray | None,
    out_dir: str | Path | None,
    hook: MixerHook | None,
    progress: bool,
    t_start: float,
) -> ProxyResult:
    seq_len, batch_size = mcfg.seq_len, cfg.batch_size
    per_step = batch_size * seq_len
    n_steps = cfg.n_steps()
    sampler = MixtureSampler(
        train_tokens,
        weights,
        seq_len,
        batch_size,
        max_epochs=cfg.max_epochs,
        on_exhausted=cfg.on_exhausted,
        random_state=cfg.seed,
    )
    model = ProxyLM(mcfg, random_state=cfg.seed).to(device)
    opt = _make_optimizer(model, cfg, device)
    counts = count_params(mcfg)
    fingerprint = _fingerprint(cfg, train_tokens, weights, target_tokens)

    step, rows, prev_wall, train_s = 0, [], 0.0, 0.0
    loss_sum, loss_n, hook_loss_sum, hook_loss_n = 0.0, 0, 0.0, 0
    resumed_from, ckpt_step = None, None
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / CHECKPOINT if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if ckpt_path is not None and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("format") != _CKPT_FORMAT or ck["fingerprint"] != fingerprint:
            raise ValueError(
                f"{ckpt_path} was written for another config, data or initial weights; "
                "delete it or use another out_dir to start over"
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sampler.load_state_dict(ck["sampler"])
        st = ck["state"]
        step, rows, prev_wall, train_s = ck["step"], list(st["rows"]), st["wall_s"], st["train_s"]
        loss_sum, loss_n = st["loss_sum"], st["loss_n"]
        hook_loss_sum, hook_loss_n = st["hook_loss_sum"], st["hook_loss_n"]
        if hook is not None and ck.get("hook") is not None and hasattr(hook, "load_state_dict"):
            hook.load_state_dict(ck["hook"])
        resumed_from = ckpt_step = step
        log.info("proxy: resumed from %s at step %d of %d", ckpt_path, step, n_steps)

    val_rows = {
        d: eval_windows(val_tokens[d], seq_len, cfg.eval_tokens) for d in sorted(val_tokens)
    }
    target_rows = (
        None if target_tokens is None else eval_windows(target_tokens, seq_len, cfg.eval_tokens)
    )
    needs_grads = bool(getattr(hook, "needs_gradients", False))
    needs_kfac = needs_grads and bool(getattr(hook, "needs_kfac", False))
    needs_adam = needs_grads and bool(getattr(hook, "needs_adam_moments", False))

    def wall() -> float:
        return prev_wall + time.perf_counter() - t_start

    def evaluate() -> tuple[dict[str, float], float | None]:
        model.eval()
        losses = {d: evaluate_loss(model, r, batch_size, device) for d, r in val_rows.items()}
        tl = None if target_rows is None else evaluate_loss(model, target_rows, batch_size, device)
        model.train()
        return losses, tl

    def hook_evaluate(n_tokens: int) -> tuple[dict[str, float], float | None]:
        """Held-out losses of the training domains (and the target) on their first
        ``n_tokens`` evaluation tokens, for a hook that asks for them (``needs_val_losses``)."""
        n_rows = max(1, -(-int(n_tokens) // seq_len))
        model.eval()
        losses = {
            d: evaluate_loss(model, r[:n_rows], batch_size, device)
            for d, r in val_rows.items()
            if d in sampler.tokens and len(r)
        }
        tl = None
        if target_rows is not None:
            tl = evaluate_loss(model, target_rows[:n_rows], batch_size, device)
        model.train()
        return losses, tl

    def base_row(done: int) -> dict[str, Any]:
        return {"step": done, "tokens": done * per_step, "lr": lr_at(done - 1, n_steps, cfg)}

    def eval_fields(losses: dict[str, float], tl: float | None) -> dict[str, Any]:
        f: dict[str, Any] = {f"val/{d}": v for d, v in losses.items()}
        f["val_mean"] = float(np.mean(list(losses.values()))) if losses else float("nan")
        f["target_loss"] = float("nan") if tl is None else tl
        return f

    def save_checkpoint(done: int) -> None:
        nonlocal ckpt_step
        assert ckpt_path is not None and out is not None
        hook_state = hook.state_dict() if hook is not None and hasattr(hook, "state_dict") else None
        payload = {
            "format": _CKPT_FORMAT,
            "step": done,
            "fingerprint": fingerprint,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "sampler": sampler.state_dict(),
            "hook": hook_state,
            "state": {
                "rows": rows,
                "wall_s": wall(),
                "train_s": train_s,
                "loss_sum": loss_sum,
                "loss_n": loss_n,
                "hook_loss_sum": hook_loss_sum,
                "hook_loss_n": hook_loss_n,
            },
        }
        _atomic(ckpt_path, lambda p: torch.save(payload, p))
        _write_metrics(out, rows)
        ckpt_step = done

    def call_hook(done: int) -> None:
        nonlocal hook_loss_sum, hook_loss_n
        assert hook is not None
        batches, target_batch = hook_batches(
            sampler.tokens, target_tokens, seq_len, cfg.hook_rows, cfg.seed, done
        )

        def micro(b: np.ndarray) -> tuple[float, torch.Tensor | None]:
            x = torch.from_numpy(b).to(device)
            with torch.set_grad_enabled(needs_grads), _autocast(device):
                loss = model.loss(x)
            return float(loss.detach()), _flat_grad(model, loss) if needs_grads else None

        model.eval()
        kfac = None
        if needs_kfac:
            from curamix.proxy.kfac import KFACCollector

            with KFACCollector(model) as kc:
                per_domain = {}
                for d, b in batches.items():
                    kc.weight = sampler.weights.get(d, 0.0) + 1e-12
                    per_domain[d] = micro(b)
            kfac = (kc.layout, kc.factors())
        else:
            per_domain = {d: micro(b) for d, b in batches.items()}
        tgt_loss, tgt_grad = micro(target_batch) if target_batch is not None else (None, None)
        losses = {d: v[0] for d, v in per_domain.items()}
        grads = {d: v[1] for d, v in per_domain.items()} if needs_grads else None
        model.train()
        metrics = StepMetrics(
            step=done,
            tokens=done * per_step,
            lr=lr_at(done - 1, n_steps, cfg),
            weights=dict(sampler.weights),
            domain_losses=losses,
            target_loss=tgt_loss,
            tokens_seen=sampler.tokens_seen,
            epochs=sampler.epochs,
            train_loss=hook_loss_sum / hook_loss_n if hook_loss_n else float("nan"),
            domain_grads=grads,
            target_grad=tgt_grad,
            kfac=kfac,
            adam_v=adam_second_moments(model, opt) if needs_adam else None,
        )
        if getattr(hook, "needs_val_losses", False):
            metrics.val_losses, metrics.val_target_loss = hook_evaluate(
                getattr(hook, "val_eval_tokens", None) or cfg.eval_tokens
            )
        hook_loss_sum, hook_loss_n = 0.0, 0
        new = hook(metrics)
        if new is not None:
            sampler.set_weights(new)

    model.train()
    t_log, tok_log = time.perf_counter(), 0
    with _progress_bar(progress, n_steps, step) as show:
        for s in range(step, n_steps):
            done = s + 1
            t0 = time.perf_counter()
            lr = lr_at(s, n_steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            batch_np, names = sampler.next_batch()
            batch = torch.from_numpy(batch_np).to(device, non_blocking=True)
            with _autocast(device):
                loss = _forward_loss(model, batch)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                _raise_non_finite("loss", lv, done, names, ckpt_path, ckpt_step)
            loss.backward()
            if cfg.grad_clip is not None:
                gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if not math.isfinite(gn):
                    opt.zero_grad(set_to_none=True)
                    _raise_non_finite("gradient norm", gn, done, names, ckpt_path, ckpt_step)
            opt.step()
            opt.zero_grad(set_to_none=True)
            train_s += time.perf_counter() - t0
            loss_sum, loss_n = loss_sum + lv, loss_n + 1
            hook_loss_sum, hook_loss_n = hook_loss_sum + lv, hook_loss_n + 1
            tok_log += per_step

            row: dict[str, Any] | None = None
            if done % cfg.log_every == 0 or done == n_steps:
                now = time.perf_counter()
                row = {
                    **base_row(done),
                    "train_loss": loss_sum / loss_n,
                    "tokens_per_s": tok_log / max(now - t_log, 1e-9),
                }
                show(
                    done,
                    f"loss {loss_sum / loss_n:.3f} | {_fmt_tokens(done * per_step)} tok | "
                    f"{_fmt_tokens(row['tokens_per_s'])} tok/s",
                )
                loss_sum, loss_n, t_log, tok_log = 0.0, 0, now, 0
            if cfg.eval_every and done % cfg.eval_every == 0 and done != n_steps:
                losses, tl = evaluate()
                row = {**(row or base_row(done)), **eval_fields(losses, tl)}
                log.info("proxy: step %d val_mean %.4f", done, row["val_mean"])
            if row is not None:
                row["wall_s"] = wall()
                row.update({f"weight/{d}": w for d, w in sampler.weights.items()})
                rows.append(row)
            if hook is not None and done % cfg.update_every == 0:
                call_hook(done)
            if ckpt_path is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                save_checkpoint(done)

    val_losses, target_loss = evaluate()
    final = eval_fields(val_losses, target_loss)
    # the last step always logs a row; on a resume from the final checkpoint it is evaluated again
    rows[-1] = {**rows[-1], **final, "wall_s": wall()}
    tokens_trained = n_steps * per_step
    if ckpt_path is not None and ckpt_step != n_steps:
        save_checkpoint(n_steps)
    metrics = _metrics_frame(rows).to_pandas()  # ProxyResult.metrics stays a pandas frame
    result = ProxyResult(
        val_losses=val_losses,
        target_loss=target_loss,
        mean_val_loss=final["val_mean"],
        n_params=counts.total,
        n_params_non_embedding=counts.non_embedding,
        tokens_trained=tokens_trained,
        flops=6.0 * counts.non_embedding * tokens_trained,
        steps=n_steps,
        wall_s=wall(),
        tokens_per_s=tokens_trained / train_s if train_s > 0 else float("nan"),
        weights=dict(sampler.weights),
        tokens_seen=sampler.tokens_seen,
        epochs=sampler.epochs,
        metrics=metrics,
        resumed_from=resumed_from,
        model=model,
    )
    if out is not None:
        from curamix.io.store import write_json_atomic

        _write_metrics(out, rows)
        summary = {
            k: getattr(result, k)
            for k in (
                "val_losses",
                "target_loss",
                "mean_val_loss",
                "n_params",
                "n_params_non_embedding",
                "tokens_trained",
                "flops",
                "steps",
                "wall_s",
                "tokens_per_s",
                "weights",
                "tokens_seen",
                "epochs",
                "resumed_from",
            )
        }
        summary["config"] = cfg.model_dump(mode="json")
        summary["device"] = str(device)
        write_json_atomic(out / RESULT, summary)
    return result


def _raise_non_finite(
    what: str,
    value: float,
    step: int,
    names: list[str],
    ckpt_path: Path | None,
    ckpt_step: int | None,
) -> None:
    where = (
        f"the last good checkpoint is {ckpt_path} (step {ckpt_step})"
        if ckpt_path is not None and ckpt_step is not None
        else "no checkpoint was written yet"
    )
    raise NonFiniteLossError(
        f"{what} is {value} at step {step} (batch domains: {dict(sorted(Counter(names).items()))}); "
        f"this step's update was not applied and {where}; lower lr or check those domains' data"
    )
