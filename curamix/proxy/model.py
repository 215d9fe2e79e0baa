"""A small decoder-only transformer for proxy runs, with analytic parameter and FLOP counts.

Architecture (GPT-2 / LLaMA-style, no biases, no dropout):
token embedding -> ``n_layers`` x [RMSNorm -> causal self-attention with RoPE -> residual,
RMSNorm -> MLP (d -> ratio*d -> d, GELU) -> residual] -> RMSNorm -> LM head. The LM head
shares the embedding matrix by default (``tie_embeddings=True``); untied, it is its own
``vocab_size x d_model`` matrix. Attention is ``torch.nn.functional.scaled_dot_product_attention``
with ``is_causal=True`` (flash / memory-efficient kernels on CUDA). Weights are initialised
from a local ``torch.Generator`` (normal, std 0.02; residual output projections scaled by
``1/sqrt(2 n_layers)``), never from the global RNG, so the same ``random_state`` gives the
same model on any machine.

Counting (:func:`count_params`, :func:`flops_per_token`) follows Kaplan et al.: ``N`` is
the non-embedding parameter count (every weight but the embedding / LM-head matrices),
``N = n_layers * (4 + 2 * mlp_ratio) * d^2 + (2 * n_layers + 1) * d`` (the second term is
the RMSNorm gains), and training costs ``C = 6 N D`` FLOPs for ``D`` tokens.

References: Vaswani et al. 2017, arXiv:1706.03762; Radford et al. 2019 (GPT-2);
Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv:2104.09864;
Zhang & Sennrich, "Root Mean Square Layer Normalization", arXiv:1910.07467;
Kaplan et al., "Scaling Laws for Neural Language Models", arXiv:2001.08361 (6N, C_attn);
Hoffmann et al., "Training Compute-Optimal Large Language Models", arXiv:2203.15556.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from curamix.config import CuramixModel

PRESETS: dict[str, tuple[int, int, int]] = {
    # name: (d_model, n_layers, n_heads) -> non-embedding parameters
    "nano": (64, 1, 2),  # 49,344
    "tiny": (64, 2, 2),  # 98,624
    "xs": (128, 5, 4),  # 984,448
    "s": (256, 6, 4),  # 4,721,920
    "m": (512, 8, 8),  # 25,174,528
    "l": (768, 12, 12),  # 84,953,856
}
"""Named sizes from ~50k to ~85M non-embedding parameters (``mlp_ratio`` 4)."""


class ProxyModelConfig(CuramixModel):
    """Shape of a :class:`ProxyLM` (frozen, validated)."""

    vocab_size: int = 8000
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    seq_len: int = 256
    """Longest sequence the model sees (the RoPE tables are built for it)."""
    mlp_ratio: int = 4
    tie_embeddings: bool = True
    """Share the input embedding with the LM head (one ``vocab_size x d_model`` matrix)."""
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5

    @model_validator(mode="after")
    def _check(self) -> ProxyModelConfig:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "seq_len", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"head size d_model/n_heads = {self.d_model // self.n_heads} must be even for RoPE"
            )
        return self

    @classmethod
    def preset(
        cls, name: str, vocab_size: int = 8000, seq_len: int = 256, **overrides: object
    ) -> ProxyModelConfig:
        """A config from :data:`PRESETS` (``nano``, ``tiny``, ``xs``, ``s``, ``m``, ``l``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {list(PRESETS)}")
        d, n_layers, n_heads = PRESETS[name]
        fields = {"d_model": d, "n_layers": n_layers, "n_heads": n_heads, **overrides}
        return cls(vocab_size=vocab_size, seq_len=seq_len, **fields)


class ParamCount(NamedTuple):
    total: int
    """Every trainable parameter (a tied embedding counted once)."""
    non_embedding: int
    """Everything but the embedding and LM-head matrices: Kaplan's ``N``."""
    embedding: int
    """The embedding matrix, plus the LM head when untied."""


def count_params(cfg: ProxyModelConfig) -> ParamCount:
    """Parameter counts of a :class:`ProxyLM` with config ``cfg``, from the formula.

    Per layer: attention ``4 d^2`` (q, k, v, out), MLP ``2 r d^2``, two RMSNorm gains ``2 d``;
    plus the final norm ``d``. Embedding ``V d`` (``2 V d`` untied). Equal to
    ``sum(p.numel() for p in ProxyLM(cfg).parameters())`` (tested).
    """
    d, r = cfg.d_model, cfg.mlp_ratio
    non_emb = cfg.n_layers * ((4 + 2 * r) * d * d + 2 * d) + d
    emb = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return ParamCount(total=non_emb + emb, non_embedding=non_emb, embedding=emb)


def flops_per_token(
    cfg: ProxyModelConfig, embedding: bool = False, attention: bool = False
) -> float:
    """Training FLOPs per token, forward + backward: ``6 N`` (Kaplan et al. 2020, Table 1).

    Parameters
    ----------
    cfg : ProxyModelConfig
    embedding : bool
        Add the LM-head matmul, ``6 V d`` (the embedding lookup itself costs nothing). Off by
        default: ``N`` is the non-embedding count, as in Kaplan's ``C = 6 N D``. For tiny
        models with an 8k vocabulary the head is most of the real compute; turn it on to
        compare with wall-clock throughput.
    attention : bool
        Add the attention-score term ``6 n_layers seq_len d`` (``2 n_layer n_ctx d_attn`` per
        forward token, x3 for training; full context, no causal halving).
    """
    n = count_params(cfg).non_embedding
    f = 6.0 * n
    if embedding:
        f += 6.0 * cfg.vocab_size * cfg.d_model
    if attention:
        f += 6.0 * cfg.n_layers * cfg.seq_len * cfg.d_model
    return f


# ---------------------------------------------------------------------------------------------
# Modules


def rope_tables(
    seq_len: int, head_dim: int, base: float = 10_000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` tables ``(seq_len, head_dim / 2)`` for rotary embeddings (float32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x[..., :h/2], x[..., h/2:])`` of ``x`` ``(B, H, T, h)`` by position."""
    t = x.shape[-2]
    c, s = cos[:t].to(x.dtype), sin[:t].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ProxyModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ProxyModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: ProxyModelConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class ProxyLM(nn.Module):
    """Decoder-only transformer language model for proxy runs.

    Parameters
    ----------
    cfg : ProxyModelConfig
    random_state : int
        Seed of the local generator that initialises the weights (on CPU; move the model with
        ``.to(device)`` afterwards, so every device starts from the same weights).
    """

    def __init__(self, cfg: ProxyModelConfig, random_state: int = 0):
        super().__init__()
        self.cfg = cfg
        with torch.device("meta"):  # built without touching the global RNG, then initialised
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
            self.head = (
                None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            )
        self.to_empty(device="cpu")
        cos, sin = rope_tables(cfg.seq_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters(random_state)

    @torch.no_grad()
    def reset_parameters(self, random_state: int = 0) -> None:
        """Initialise every weight from ``torch.Generator().manual_seed(random_state)``."""
        g = torch.Generator(device="cpu").manual_seed(int(random_state))
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.ndim == 1:  # RMSNorm gains
                p.fill_(1.0)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, 0.0, resid_std, generator=g)
            else:
                nn.init.normal_(p, 0.0, 0.02, generator=g)

    def last_hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The last layer's hidden states ``(B, T, d_model)`` after the final RMSNorm, i.e. what
        the LM head reads (Hugging Face's ``hidden_states[-1]`` of a causal LM is the same
        point). ``idx`` ``(B, T)``, ``T <= seq_len``; causal, so right padding leaves the
        states of the earlier positions unchanged."""
        t = idx.shape[1]
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model's seq_len {self.cfg.seq_len}")
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.norm(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` for token ids ``idx`` ``(B, T)``, ``T <= seq_len``."""
        weight = self.embed.weight if self.head is None else self.head.weight
        return F.linear(self.last_hidden(idx), weight)

    def loss(self, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy of rows ``batch`` ``(B, T + 1)`` (inputs ``[:, :-1]``,
        targets ``[:, 1:]``), in float32."""
        logits = self(batch[:, :-1])
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            batch[:, 1:].reshape(-1),
            reduction=reduction,
        )
