"""Low-rank adapter: a bottleneck adapter whose projections are rank-``r`` products ``W = U V``.

The "LowRank-Adapter" baseline of the Compacter paper (Karimi Mahabadi, Henderson, Ruder,
NeurIPS 2021), reprinted as "Low-rank adapter" in the Polyhistor table (Liu et al., NeurIPS 2022)
that MTLoRA (CVPR 2024) and its successors copy. It is :mod:`~mtlbench.methods.adapter` (after
``proj`` and ``fc2``, ``h + up(gelu(down(h)))``) with each dense projection replaced by
:class:`LowRankLinear`: ``y = x (U V)^T + b``, ``U`` ``[out, r]``, ``V`` ``[r, in]``.

Choices (each an option), with the evidence:

* ``rank`` 1 and ``reduction_factor`` 32: the Compacter reference configuration of this
  baseline (github.com/rabeehk/compacter, ``seq2seq/configs/low_rank_adapters.json``:
  ``low_rank_rank`` 1, ``task_reduction_factor`` 32, Glorot-uniform factors, zero biases,
  LayerNorms unfrozen). Polyhistor's values for Swin-T could not be read (only its abstract
  and introduction were reachable), so the paper's own are used. With rank 1 the bottleneck
  width only sets how many biases and GELUs the rank-1 signal passes through.
* ``zero_init_up`` (default on): the up-projection's ``U`` starts at zero, so the adapted
  model starts as the pretrained one (exactly, as mtlbench's ``adapter`` row does; Houlsby's
  near-identity intent). The reference draws both factors Glorot-uniform, which changes the
  features at step 0; ``zero_init_up=False`` restores that.
* Trainable besides the adapters: the LayerNorms (as the reference); the decoder trains.
* One adapter set shared by all tasks, as mtlbench's ``adapter``. A per-task set in every block
  would carry ``1 + T`` streams through the backbone, as ``vl_adapter``'s ``sharing='multiple'``
  does; it is not offered here. Polyhistor's introduction says its single-task baselines
  "learn and store task-wise parameters" (https://www.jiubeiyun.com.cn/doc/32630.html, a copy
  of arXiv 2210.03265), so its count for this row is not the same design (stated, not compared).

On PASCAL's four tasks (``mtlbench params --method low_rank_adapter``): 27,324 adapter
parameters + 23,232 LayerNorm parameters + decoder 1,946,624 = 1,997,180 trainable (counted from
the formula in ``tests/test_method_phm_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

from .adapter import Adapter, BottleneckAdapted, check_bottleneck_options
from mtlbench.method import AdapterLayer, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['LowRankAdapterConfig', 'LowRankLinear', 'LowRankAdapter']


@dataclass
class LowRankAdapterConfig(MethodConfig):
    """Low-rank adapter options."""
    rank: int = field(default=1, metadata={'help': 'rank of each projection (W = U V)'})
    reduction_factor: int = field(default=32, metadata={'help': 'bottleneck width = channels // reduction_factor'})
    kinds: tuple = field(default=('proj', 'fc2'), metadata={'help': 'sites whose output is adapted'})
    zero_init_up: bool = field(default=True, metadata={'help': 'up-projection U starts at zero (identity at init); '
                                                               'False: Glorot-uniform as the reference'})
    train_patch_embed: bool = False
    train_norms: bool = True
    train_rel_pos: bool = False
    train_reductions: bool = False

    def __post_init__(self) -> None:
        check_bottleneck_options(self, 'rank', 'reduction_factor')


class LowRankLinear(nn.Module):
    """``y = x (U V)^T + b`` with ``U`` ``[out, r]`` and ``V`` ``[r, in]`` (Glorot-uniform, zero bias).

    Args:
        in_features: input width.
        out_features: output width.
        rank: inner dimension ``r``.
        zero_init: start ``U`` at zero (the product is then zero and ``V`` still gets gradients).
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 1, zero_init: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.u = nn.Parameter(torch.empty(out_features, rank))
        self.v = nn.Parameter(torch.empty(rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.xavier_uniform_(self.v)
        if zero_init:
            nn.init.zeros_(self.u)
        else:
            nn.init.xavier_uniform_(self.u)

    @property
    def weight(self) -> torch.Tensor:
        """The ``[out, in]`` product ``U V`` (rank at most ``r``)."""
        return self.u @ self.v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.v), self.u, self.bias)

    def extra_repr(self) -> str:
        return f'{self.in_features}, {self.out_features}, rank={self.rank}'


@METHODS.register_module('low_rank_adapter')
class LowRankAdapter(Adapter):
    """Houlsby-placed bottleneck adapters with rank-r down and up projections."""
    config_cls = LowRankAdapterConfig

    def variant(self) -> str:
        return f'rf={self.config.reduction_factor},r={self.config.rank}'

    def adapter_layer(self, base_layer: nn.Linear, site) -> AdapterLayer:
        c = self.config
        d, hidden = site.out_features, self.bottleneck_width(site.out_features)
        down = LowRankLinear(d, hidden, c.rank)
        up = LowRankLinear(hidden, d, c.rank, zero_init=c.zero_init_up)
        return BottleneckAdapted(base_layer, hidden, projections=(down, up))

    def adapter_breakdown(self, backbone: nn.Module) -> Dict[str, int]:
        out = {'factors': 0, 'biases': 0}
        for m in backbone.modules():
            if isinstance(m, LowRankLinear):
                out['factors'] += m.u.numel() + m.v.numel()
                out['biases'] += m.bias.numel()
        return out
