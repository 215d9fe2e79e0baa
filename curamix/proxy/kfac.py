"""K-FAC curvature of a proxy model's linear layers, for influence estimates (TiKMiX).

K-FAC (Martens & Grosse 2015) approximates the Fisher / Gauss-Newton block of a linear layer
``s = W a`` (``W`` of shape ``(out, in)``) by a Kronecker product ``G (x) A`` with
``A = E[a a^T]`` over the layer's inputs and ``G = E[d d^T]`` over the per-token loss
gradients ``d = dl/ds`` of its outputs. With ``vec`` stacking ``W`` row by row, the block is
``kron(G, A)`` and its damped inverse applied to a gradient ``V`` is, from the eigenvectors
``G = Q_G diag(g) Q_G^T``, ``A = Q_A diag(a) Q_A^T``::

    (kron(G, A) + lam I)^-1 vec(V) = vec(Q_G [(Q_G^T V Q_A) / (g a^T + lam)] Q_A^T)

which is what :meth:`KFACPreconditioner.apply` computes (the eigenbasis form used by EK-FAC,
George et al. 2018, without its eigenvalue correction). ``lam = damping * mean(g) * mean(a)``
(damping relative to the block's average curvature, as in Grosse et al. 2023).

Scope: the ``nn.Linear`` weights only (attention and MLP projections, the untied LM head);
embeddings and norm gains have no K-FAC block and are left out of the preconditioned inner
products, as in Grosse et al. 2023's influence study. The factors come from the micro-batches
the mixer hook evaluates anyway (each domain's batch weighted by its current mixture weight),
with the observed labels (the empirical Fisher).

References: Martens & Grosse 2015, "Optimizing Neural Networks with Kronecker-factored
Approximate Curvature", arXiv:1503.05671; George et al. 2018, "Fast Approximate Natural
Gradient Descent in a Kronecker-factored Eigenbasis", arXiv:1806.03884; Grosse et al. 2023,
"Studying Large Language Model Generalization with Influence Functions", arXiv:2308.03296.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LinearBlock:
    """Where a linear layer's weight sits in the flattened gradient (``model.parameters()``
    order, trainable parameters only)."""

    name: str
    offset: int
    out_features: int
    in_features: int

    @property
    def size(self) -> int:
        return self.out_features * self.in_features


def linear_layout(model: nn.Module) -> list[LinearBlock]:
    """The ``nn.Linear`` weights of ``model`` and their offsets in the flat gradient."""
    offsets: dict[int, int] = {}
    pos = 0
    for p in model.parameters():
        if p.requires_grad:
            offsets[id(p)] = pos
            pos += p.numel()
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and id(mod.weight) in offsets:
            out.append(
                LinearBlock(name, offsets[id(mod.weight)], mod.out_features, mod.in_features)
            )
    return sorted(out, key=lambda b: b.offset)


class KFACCollector:
    """Accumulates the K-FAC factors of every linear layer over forward/backward passes.

    Use as a context manager around passes whose loss is a MEAN over tokens; set
    :attr:`weight` before each pass to weight its factors (e.g. the domain's mixture weight)::

        with KFACCollector(model) as kc:
            for d, batch in batches.items():
                kc.weight = weights[d]
                grads[d] = flat_grad(model, model.loss(batch))
        factors = kc.factors()
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.layout = linear_layout(model)
        self.weight = 1.0
        self._mods = {
            name: mod for name, mod in model.named_modules() if isinstance(mod, nn.Linear)
        }
        self._A: dict[str, torch.Tensor] = {}
        self._G: dict[str, torch.Tensor] = {}
        self._wA: dict[str, float] = {}
        self._wG: dict[str, float] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> KFACCollector:
        for block in self.layout:
            self._handles.append(
                self._mods[block.name].register_forward_hook(self._forward_hook(block.name))
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _add(self, store: dict, wstore: dict, name: str, value: torch.Tensor, w: float) -> None:
        if name in store:
            store[name] += w * value
            wstore[name] += w
        else:
            store[name] = w * value
            wstore[name] = w

    def _forward_hook(self, name: str) -> Any:
        def hook(mod: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            w = float(self.weight)
            a = inputs[0].detach().reshape(-1, mod.in_features).to(torch.float64)
            n = a.shape[0]
            self._add(self._A, self._wA, name, a.T @ a / n, w)
            if output.requires_grad:

                def grad_hook(g: torch.Tensor) -> None:
                    # g = d(mean loss)/ds = (1/n) dl_t/ds per token: E[d d^T] = n * g^T g.
                    d = g.detach().reshape(-1, mod.out_features).to(torch.float64)
                    self._add(self._G, self._wG, name, d.T @ d * d.shape[0], w)

                output.register_hook(grad_hook)

        return hook

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer: (A, G)}``, each the weighted mean over the passes seen."""
        missing = [b.name for b in self.layout if b.name not in self._A or b.name not in self._G]
        if missing:
            raise RuntimeError(
                f"K-FAC: no forward/backward pass reached layers {missing[:3]}; run the passes "
                "inside the collector and take gradients of their loss"
            )
        return {
            b.name: (self._A[b.name] / self._wA[b.name], self._G[b.name] / self._wG[b.name])
            for b in self.layout
        }


class KFACPreconditioner:
    """The damped inverse K-FAC curvature of the linear layers, in eigenbasis form.

    Parameters
    ----------
    layout : list of LinearBlock
    factors : dict of name to (A, G)
        From :meth:`KFACCollector.factors`.
    damping : float
        ``lam`` relative to each block's mean curvature ``mean(eig G) * mean(eig A)``.
    """

    def __init__(
        self,
        layout: list[LinearBlock],
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
        damping: float = 0.1,
    ):
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping!r}")
        self.layout = layout
        self.damping = damping
        self._eig: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for b in layout:
            A, G = factors[b.name]
            ea, qa = torch.linalg.eigh(A.to(torch.float64))
            eg, qg = torch.linalg.eigh(G.to(torch.float64))
            ea, eg = ea.clamp_min(0.0), eg.clamp_min(0.0)
            lam = damping * float(eg.mean()) * float(ea.mean())
            if not lam > 0:  # a dead layer (all-zero factor): identity scaled by the damping
                lam = damping
            self._eig[b.name] = (qa, qg, torch.outer(eg, ea) + lam, torch.tensor(lam))

    @property
    def size(self) -> int:
        """Entries of the restricted (linear-layers-only) gradient."""
        return sum(b.size for b in self.layout)

    def restrict(self, flat: torch.Tensor) -> torch.Tensor:
        """The linear layers' entries of flat gradients ``(P,)`` or ``(m, P)``, concatenated
        in layout order."""
        x = flat if flat.ndim == 2 else flat[None, :]
        out = torch.cat([x[:, b.offset : b.offset + b.size] for b in self.layout], dim=1)
        return out if flat.ndim == 2 else out[0]

    def apply(self, restricted: torch.Tensor) -> torch.Tensor:
        """``(kron(G, A) + lam I)^-1`` per block, applied to restricted gradients ``(m, S)``
        or ``(S,)``."""
        x = restricted if restricted.ndim == 2 else restricted[None, :]
        if x.shape[1] != self.size:
            raise ValueError(f"expected {self.size} entries per gradient, got {x.shape[1]}")
        x = x.to(torch.float64)
        outs, pos = [], 0
        for b in self.layout:
            qa, qg, den, _ = self._eig[b.name]
            qa, qg, den = qa.to(x.device), qg.to(x.device), den.to(x.device)
            v = x[:, pos : pos + b.size].reshape(-1, b.out_features, b.in_features)
            u = qg.T @ v @ qa / den
            outs.append((qg @ u @ qa.T).reshape(x.shape[0], -1))
            pos += b.size
        out = torch.cat(outs, dim=1)
        return out if restricted.ndim == 2 else out[0]


def kfac_preconditioner(collector: KFACCollector, damping: float = 0.1) -> KFACPreconditioner:
    """The preconditioner of the factors a collector gathered."""
    return KFACPreconditioner(collector.layout, collector.factors(), damping)
