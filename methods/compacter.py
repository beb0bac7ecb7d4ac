"""Compacter: bottleneck adapters whose projections are low-rank PHM layers (Karimi Mahabadi,
Henderson, Ruder, "Compacter: Efficient Low-Rank Hypercomplex Adapter Layers", NeurIPS 2021).

The "Compacter" row of the Polyhistor table (Liu et al., NeurIPS 2022) that MTLoRA (CVPR 2024)
and its successors reprint; ``compacter_pp`` (``methods/compacter_pp.py``) is its Compacter++
row. Each adapter is ``h + up(gelu(down(h)))`` after ``proj`` and ``fc2`` (as
:mod:`~mtlbench.methods.adapter`), with both projections :class:`PHMLinear`:

    ``W = sum_i A_i kron B_i``,  ``A_i`` ``[n, n]`` ("slow", shared),  ``B_i = s_i t_i^T``
    ``[out/n, in/n]`` of rank ``phm_rank`` ("fast", per layer),  ``y = x W^T + b``.

Sharing across Swin's stages: the ``A_i`` are ``n x n`` whatever a layer's width, so one set
``A`` ``[n, n, n]`` serves every PHM layer of every stage (down and up projections alike, as the
paper's "shared across all Compacter layers"); only the ``B_i`` and biases are per layer. It is
one ``nn.Parameter`` referenced by every layer: counted, optimised and decayed once
(``named_parameters`` deduplicates), and stored under each layer's key in a state dict.

Choices (each an option), with the evidence:

* ``phm_dim`` n = 4, ``phm_rank`` 1, ``reduction_factor`` 32, ``A`` drawn ``N(0, 1e-4)``, the
  factors Glorot-uniform, zero biases, LayerNorms trainable: the Compacter reference
  configuration (github.com/rabeehk/compacter, ``seq2seq/configs/compacter.json``:
  ``hypercomplex_division`` 4, ``factorized_phm`` with rank 1, ``shared_phm_rule``,
  ``phm_c_init`` normal, ``phm_init_range`` 1e-4, ``task_reduction_factor`` 32,
  ``unfreeze_layer_norms``). Polyhistor's Swin-T values could not be read (only its abstract
  and introduction were reachable); the paper's own are used. With ``A ~ 1e-4`` the adapter is
  within ~1e-8 of the identity at init, as in the reference.
* Bottleneck width: PHM needs both widths divisible by n, and Swin-T's ``96 / 32 = 3`` is not;
  the width is ``C / reduction_factor`` rounded *up* to a multiple of n (Swin-T: 4, 8, 12, 24).
  Every adapted stage width must itself be divisible by n (96, 192, 384, 768 are for n = 2, 4, 8,
  16, 32): otherwise ``adapt`` stops with a one-line error naming the width.
* ``zero_init_up`` (default off): start the up-projection's ``s`` at zero (exact identity at
  init, as mtlbench's ``adapter`` row). Off by default because with the reference's tiny ``A``
  a zero up-projection leaves every adapter gradient ~1e-8, at AdamW's epsilon.
* ``shared_rule`` (default on): off gives each layer its own ``A`` (the paper's "PHM-Adapter").
* One adapter set shared by all tasks, as mtlbench's ``adapter`` (a per-task set in every block
  would carry ``1 + T`` streams, as ``vl_adapter``'s ``sharing='multiple'``; not offered here). Polyhistor's
  introduction says its single-task baselines "learn and store task-wise parameters"
  (https://www.jiubeiyun.com.cn/doc/32630.html, a copy of arXiv 2210.03265), so its count for
  this row is not the same design (stated, not compared).

On PASCAL's four tasks (``mtlbench params --method compacter``): 64 shared + 27,360 per-layer
adapter parameters + 23,232 LayerNorm parameters + decoder 1,946,624 = 1,997,280 trainable
(counted from the formula in ``tests/test_method_phm_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .adapter import Adapter, BottleneckAdapted, check_bottleneck_options
from mtlbench.errors import OptionError
from mtlbench.method import AdapterLayer, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['CompacterConfig', 'PHMLinear', 'Compacter']


@dataclass
class CompacterConfig(MethodConfig):
    """Compacter options."""
    phm_dim: int = field(default=4, metadata={'help': 'n: number of Kronecker terms; must divide every adapted width'})
    phm_rank: int = field(default=1, metadata={'help': 'rank of each per-layer B_i = s_i t_i^T'})
    reduction_factor: int = field(default=32, metadata={'help': 'bottleneck = channels / reduction_factor, '
                                                                'rounded up to a multiple of phm_dim'})
    kinds: tuple = field(default=('proj', 'fc2'), metadata={'help': 'sites whose output is adapted'})
    shared_rule: bool = field(default=True, metadata={'help': 'one set of A_i for every layer (False: per layer)'})
    rule_init_std: float = field(default=1e-4, metadata={'help': 'std of the normal init of the A_i'})
    zero_init_up: bool = field(default=False, metadata={'help': "up-projection's s starts at zero (exact identity)"})
    train_patch_embed: bool = False
    train_norms: bool = True
    train_rel_pos: bool = False
    train_reductions: bool = False

    def __post_init__(self) -> None:
        check_bottleneck_options(self, 'phm_dim', 'phm_rank', 'reduction_factor')
        if self.rule_init_std <= 0:
            raise ValueError(f'rule_init_std must be > 0, got {self.rule_init_std}')


class PHMLinear(nn.Module):
    """Parameterized hypercomplex multiplication layer with low-rank fast weights.

    ``weight = sum_i kron(rule[i], s[i] @ t[i].T)`` (``[out, in]``), ``y = x weight^T + bias``.

    Args:
        in_features: input width (divisible by ``n``).
        out_features: output width (divisible by ``n``).
        rule: the ``[n, n, n]`` slow weights ``A``; pass the same parameter to share it.
        rank: rank of each ``B_i``.
        zero_init: start ``s`` at zero (the weight is then zero).
    """

    def __init__(self, in_features: int, out_features: int, rule: nn.Parameter, rank: int = 1,
                 zero_init: bool = False) -> None:
        super().__init__()
        n = rule.shape[0]
        if tuple(rule.shape) != (n, n, n):
            raise ValueError(f'rule must be [n, n, n], got {tuple(rule.shape)}')
        if in_features % n or out_features % n:
            raise ValueError(f'PHM widths {in_features} -> {out_features} are not divisible by n={n}')
        self.in_features, self.out_features, self.n, self.rank = in_features, out_features, n, rank
        self.rule = rule
        self.s = nn.Parameter(torch.empty(n, out_features // n, rank))
        self.t = nn.Parameter(torch.empty(n, in_features // n, rank))
        self.bias = nn.Parameter(torch.zeros(out_features))
        for i in range(n):  # Glorot-uniform per factor, as the reference
            nn.init.xavier_uniform_(self.t.data[i])
            if not zero_init:
                nn.init.xavier_uniform_(self.s.data[i])
        if zero_init:
            nn.init.zeros_(self.s)

    @property
    def weight(self) -> torch.Tensor:
        """The ``[out, in]`` PHM weight."""
        fast = self.s @ self.t.transpose(1, 2)                      # B_i: [n, out/n, in/n]
        n, p, q = fast.shape
        # kron(A_i, B_i)[a p + c, b q + d] = A_i[a, b] B_i[c, d], summed over i
        return torch.einsum('iab,icd->acbd', self.rule, fast).reshape(n * p, n * q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f'{self.in_features}, {self.out_features}, n={self.n}, rank={self.rank}'


@METHODS.register_module('compacter')
class Compacter(Adapter):
    """Houlsby-placed adapters with PHM projections sharing one set of slow weights."""
    config_cls = CompacterConfig

    def __init__(self, config: CompacterConfig, tasks) -> None:
        super().__init__(config, tasks)
        self._rule: Optional[nn.Parameter] = None

    def variant(self) -> str:
        c = self.config
        return f'rf={c.reduction_factor},n={c.phm_dim}'

    def bottleneck_width(self, channels: int) -> int:
        n = self.config.phm_dim
        return n * max(1, -(-channels // (self.config.reduction_factor * n)))

    def new_rule(self) -> nn.Parameter:
        n = self.config.phm_dim
        return nn.Parameter(torch.randn(n, n, n) * self.config.rule_init_std)

    def adapter_layer(self, base_layer: nn.Linear, site) -> AdapterLayer:
        c = self.config
        d, hidden = site.out_features, self.bottleneck_width(site.out_features)
        rule_down = self._rule if c.shared_rule else self.new_rule()
        rule_up = self._rule if c.shared_rule else self.new_rule()
        down = PHMLinear(d, hidden, rule_down, c.phm_rank)
        up = PHMLinear(hidden, d, rule_up, c.phm_rank, zero_init=c.zero_init_up)
        return BottleneckAdapted(base_layer, hidden, projections=(down, up))

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        sites = backbone.select_sites(kinds=c.kinds)
        widths = sorted({s.out_features for s in sites})
        bad = [w for w in widths if w % c.phm_dim]
        if bad:
            raise OptionError(f'{self.name}: phm_dim={c.phm_dim} does not divide the adapted width(s) {bad} of '
                              f'{widths}; choose a phm_dim that divides all of them')
        self._rule = self.new_rule() if c.shared_rule else None
        try:
            return super().adapt(backbone)
        finally:
            self._rule = None   # the layers hold it; the method keeps no parameter of its own

    def adapter_breakdown(self, backbone: nn.Module) -> Dict[str, int]:
        rules, fast, biases = {}, 0, 0
        for m in backbone.modules():
            if isinstance(m, PHMLinear):
                rules[id(m.rule)] = m.rule.numel()
                fast += m.s.numel() + m.t.numel()
                biases += m.bias.numel()
        return {'slow A (shared)' if self.config.shared_rule else 'slow A': sum(rules.values()),
                'fast s, t': fast, 'biases': biases}
