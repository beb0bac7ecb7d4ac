"""FAAR's adapted linears: DoRA (or LoRA) with PDRS prefix-rank masking, on stream-major tensors.

DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024, arXiv 2402.09353)
splits the adapted weight into a magnitude per output unit and a direction:

    W' = m * (W + s B A) / ||W + s B A||      (norm of each row of the [out, in] weight)

``m`` starts at the row norms of the frozen ``W`` and ``B`` at zero, so a fresh layer computes
exactly ``W x + b`` (function-preserving start). The frozen bias is added after the rescaling.
The low-rank pair ``(A, B)`` is a :class:`~mtlbench.methods.faar.pdrs.LowRankUnit`: in training
only a random prefix ``A[:b]``, ``B[:, :b]`` is used, and PDRS may shrink it.

Computed without materialising ``W'`` for the product:
``y = (m / ||W + s B A||) * (W x + s B A dropout(x)) + b``; only the row norms need ``W + s B A``
(computed in fp32 with autocast off, so AMP does not perturb the start). By default the norm is
a constant in backward (``detach_norm=True``): DoRA's paper (section 4.3) recommends it, and
peft's ``DoraLinearLayer`` does it; outputs and gradients match peft's layer (tested).

* :class:`FAARLinear`: one shared adapter applied to every stream (``[S, ..., in] -> [S, ..., out]``).
* :class:`FAARTaskLinear`: one adapter per task in the last block of each stage
  (``[1 or 1+T, ..., in] -> [1+T, ..., out]``). Task ``t``'s stream is ``W'_t x_t + b`` with its
  own ``A_t, B_t, m_t`` applied to its own input (a single input stream is broadcast to all
  tasks). The shared stream is ``W x_0 + b`` (``shared='frozen'``, default) or gets its own
  shared adapter (``shared='adapter'``).

With ``variant='lora'`` (the "PDRS with LoRA" ablation) there is no magnitude and the update is
added directly: ``W x + s B A dropout(x) + b``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.layers.dropout import adapter_dropout
from mtlbench.method import AdapterLayer

from .pdrs import LowRankUnit

__all__ = ['dora_coefficient', 'FAARLinear', 'FAARTaskLinear']


def dora_coefficient(weight: torch.Tensor, unit: LowRankUnit, magnitude: torch.Tensor, b: Optional[int] = None,
                     detach_norm: bool = False) -> torch.Tensor:
    """``m / ||W + s B[:, :b] A[:b]||`` per output row, in fp32.

    Args:
        weight: frozen ``W [out, in]``.
        unit: the low-rank pair.
        magnitude: ``m [out]``.
        b: active rank (``None``: full).
        detach_norm: stop the gradient through the norm.

    Returns:
        ``[out]`` float32.
    """
    with torch.autocast(device_type=weight.device.type, enabled=False):
        A, B = unit.factors(b)
        merged = weight.float() + unit.scale * (B.float() @ A.float())
        norm = merged.norm(p=2, dim=1)
        if detach_norm:
            norm = norm.detach()
        return magnitude.float() / norm


def _finish(out: torch.Tensor, coef: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``out * coef + bias`` in one pass (either may be ``None``)."""
    if coef is not None:
        coef = coef.to(out.dtype)
        return out * coef if bias is None else torch.addcmul(bias.to(out.dtype), out, coef)
    return out if bias is None else out + bias.to(out.dtype)


def _make_unit(layer: nn.Linear, r: int, scale: float, task: str, unit_kw: dict) -> LowRankUnit:
    return LowRankUnit(layer.in_features, layer.out_features, r, scale, task=task, **unit_kw)


class FAARLinear(AdapterLayer):
    """Shared DoRA / LoRA adapter: every stream ``s`` gets the same adapted weight.

    Args:
        base_layer: frozen linear.
        r: initial rank.
        scale: multiplier of ``B A``.
        dropout: dropout on the low-rank path's input.
        variant: ``'dora'`` or ``'lora'``.
        detach_norm: DoRA norm without gradient (default, as DoRA's section 4.3 and peft).
        **unit_kw: :class:`LowRankUnit` options (prefix masking, scoring, beta, rho, ...).

    Shapes: ``[S, ..., in] -> [S, ..., out]``.
    """

    def __init__(self, base_layer: nn.Linear, r: int, scale: float = 4.0, dropout: float = 0.0,
                 variant: str = 'dora', detach_norm: bool = True, **unit_kw) -> None:
        super().__init__(base_layer)
        if variant not in ('dora', 'lora'):
            raise ValueError(f"variant must be 'dora' or 'lora', got {variant!r}")
        self.variant = variant
        self.detach_norm = detach_norm
        self.dropout = adapter_dropout(dropout)
        self.faar_unit = _make_unit(base_layer, r, scale, 'shared', unit_kw)
        if variant == 'dora':
            self.faar_magnitude = nn.Parameter(base_layer.weight.detach().float().norm(p=2, dim=1).clone())
        self.merged = False
        self._merge_backup: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        unit = self.faar_unit
        b = unit.sample_rank()
        out = F.linear(x, self.base_layer.weight) + unit.delta(self.dropout(x), b)
        coef = None
        if self.variant == 'dora':
            coef = dora_coefficient(self.base_layer.weight, unit, self.faar_magnitude, b, self.detach_norm)
        return _finish(out, coef, self.base_layer.bias)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The adapted weight ``W'`` at full rank, ``[out, in]``."""
        W = self.base_layer.weight
        merged = W.float() + self.faar_unit.delta_weight().float()
        if self.variant == 'dora':
            merged = merged * dora_coefficient(W, self.faar_unit, self.faar_magnitude)[:, None]
        return merged.to(W.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            merged = self.merged_weight()
            if not torch.isfinite(merged).all():
                raise FloatingPointError('FAARLinear.merge: the merged weight is not finite')
            self._merge_backup = self.base_layer.weight.detach().clone()
            self.base_layer.weight.data.copy_(merged)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.data.copy_(self._merge_backup)
            self._merge_backup = None
            self.merged = False

    def extra_repr(self) -> str:
        return f'variant={self.variant}'


class FAARTaskLinear(AdapterLayer):
    """One DoRA / LoRA adapter per task; the shared stream frozen or with a shared adapter.

    Args:
        base_layer: frozen linear.
        tasks: task names (stream order).
        r: initial rank of each task adapter.
        scale: multiplier of ``B A``.
        dropout: dropout on the low-rank path's input.
        variant: ``'dora'`` or ``'lora'``.
        detach_norm: DoRA norm without gradient (default, as DoRA's section 4.3 and peft).
        shared: ``'frozen'`` (shared stream ``W x_0 + b``) or ``'adapter'`` (a shared adapter).
        shared_r: initial rank of that shared adapter.
        shared_unit_kw: :class:`LowRankUnit` options of the shared adapter (default: ``unit_kw``).
        **unit_kw: :class:`LowRankUnit` options of the task adapters.

    Shapes: ``[S, ..., in]`` with ``S`` in ``{1, 1 + T}`` ``-> [1 + T, ..., out]``.
    """

    def __init__(self, base_layer: nn.Linear, tasks: Sequence[str], r: int, scale: float = 4.0,
                 dropout: float = 0.0, variant: str = 'dora', detach_norm: bool = True, shared: str = 'frozen',
                 shared_r: Optional[int] = None, shared_unit_kw: Optional[dict] = None, **unit_kw) -> None:
        super().__init__(base_layer)
        if variant not in ('dora', 'lora'):
            raise ValueError(f"variant must be 'dora' or 'lora', got {variant!r}")
        if shared not in ('frozen', 'adapter'):
            raise ValueError(f"shared must be 'frozen' or 'adapter', got {shared!r}")
        self.tasks = tuple(tasks)
        self.num_tasks = len(self.tasks)
        self.variant = variant
        self.detach_norm = detach_norm
        self.shared = shared
        self.dropout = adapter_dropout(dropout)
        self.faar_units = nn.ModuleList([_make_unit(base_layer, r, scale, t, unit_kw) for t in self.tasks])
        norms = base_layer.weight.detach().float().norm(p=2, dim=1)
        if variant == 'dora':
            self.faar_magnitude = nn.Parameter(norms.unsqueeze(0).repeat(self.num_tasks, 1))
        if shared == 'adapter':
            kw = unit_kw if shared_unit_kw is None else shared_unit_kw
            self.faar_shared_unit = _make_unit(base_layer, shared_r or r, scale, 'shared', kw)
            if variant == 'dora':
                self.faar_shared_magnitude = nn.Parameter(norms.clone())

    def _adapted(self, x: torch.Tensor, base: torch.Tensor, unit: LowRankUnit,
                 magnitude: Optional[torch.Tensor]) -> torch.Tensor:
        """``W' x + b``, given ``base = W x``."""
        b = unit.sample_rank()
        out = base + unit.delta(self.dropout(x), b)
        coef = None
        if magnitude is not None:
            coef = dora_coefficient(self.base_layer.weight, unit, magnitude, b, self.detach_norm)
        return _finish(out, coef, self.base_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.num_tasks
        S = x.shape[0]
        if S not in (1, 1 + T):
            raise ValueError(f'expected 1 or {1 + T} streams, got {S}')
        base = F.linear(x, self.base_layer.weight)  # [S, ..., out]
        dora = self.variant == 'dora'
        if self.shared == 'adapter':
            shared_out = self._adapted(x[0], base[0], self.faar_shared_unit,
                                       self.faar_shared_magnitude if dora else None)
        else:
            shared_out = _finish(base[0], None, self.base_layer.bias)
        outs = [shared_out]
        for t, unit in enumerate(self.faar_units):
            i = 0 if S == 1 else 1 + t
            outs.append(self._adapted(x[i], base[i], unit, self.faar_magnitude[t] if dora else None))
        return torch.stack(outs)

    def extra_repr(self) -> str:
        return f'tasks={self.num_tasks}, variant={self.variant}, shared={self.shared}'
