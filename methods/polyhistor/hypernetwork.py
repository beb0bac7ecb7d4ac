"""The shared hypernetwork that writes every adapter of HyperFormer / Polyhistor / Polyhistor-Lite.

One module, owned by the backbone (``backbone.hypernetwork``), holds the conditioning
(:class:`~.condition.SiteCondition`) and the generators. For a site ``(layer, position)`` it
returns the ``T`` task adapters' down ``[T, C, b]``, down bias ``[T, b]``, up ``[T, b, C]`` and
up bias ``[T, C]``.

Two generator forms:

* **full** (``rank=None``, HyperFormer): one linear map ``I -> [down | down bias | up | up bias]``
  (flattened row-major, in that order).
* **decomposed** (``rank=ρ``, Polyhistor's Decomposed HyperNetworks, Sec. 4.1): every weight is a
  product of two low-rank factors, ``down = L_d R_d^T`` (``[C, ρ] [ρ, b]``) and
  ``up = L_u R_u^T`` (``[b, ρ] [ρ, C]``). A "left" hypernetwork emits ``[L_d | L_u]``, a "right"
  one ``[R_d | R_u]``, a third small map the biases. The output layer shrinks from
  ``2 C b`` to ``ρ (C + b)`` per projection, which is the paper's point: HyperFormer's output
  layer is what makes it large.

Swin's stage widths differ (96..768 for Swin-T), so the generators need a size per width
(``width_mode``, an option):

* ``'per_stage'``: one generator per distinct width (four for Swin), each emitting its width's
  full size. Default: no parameter of one stage's adapters is a slice of another's.
* ``'slice'``: a single generator at the largest width; a narrower site takes the leading
  ``C`` rows / ``b`` columns.
* ``'template'`` (Polyhistor-Lite): a single generator at the smallest width (the "template
  kernels"); the site expands them with its Layer-wise Scaling Kernels (``kron``).

``zero_init_up``: the generator rows that write the up projection (``R_u`` in the decomposed
form, so ``L_u R_u^T = 0``) and its bias start at zero, so every adapter is exactly zero at
init and the adapted backbone starts as the pretrained one (Houlsby's near-identity start; the
papers' own init is not given in the text we could read).

``layer_norm`` (HyperFormer's task-conditional LayerNorm, ``conditional_norm.py``): the same
conditioning ``I`` also feeds a generator of per-task LayerNorm ``(gamma, beta)``, one per
generator width; ``'slice'`` takes the leading ``C`` entries, ``'template'`` returns the template
width (the site repeats it ``k`` times, as it does the biases).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from mtlbench.method import MethodModule

from .condition import SiteCondition
from .conditional_norm import TaskLayerNormGenerator

__all__ = ['AdapterHyperNetwork']

WIDTH_MODES = ('per_stage', 'slice', 'template')


class AdapterHyperNetwork(MethodModule):
    """Task- and layer-conditioned generator of bottleneck adapters.

    Args:
        condition: the (task, layer, position) conditioning.
        bottlenecks: ``{width C: bottleneck b}`` of every adapted site.
        rank: ``None`` for full generation (HyperFormer), else the factor rank ``ρ`` (Polyhistor).
        width_mode: ``'per_stage'``, ``'slice'`` or ``'template'`` (module docstring).
        zero_init_up: start the generated up projections (and their biases) at zero.
        init_std: std of the generators' normal init (biases start at zero).
        layer_norm: also generate each task's adapter-output LayerNorm ``(gamma, beta)``.
        norm_init_std: std of the LayerNorm generators' normal init (biases start at zero).
    """

    def __init__(self, condition: SiteCondition, bottlenecks: Dict[int, int], rank: Optional[int] = None,
                 width_mode: str = 'per_stage', zero_init_up: bool = True, init_std: float = 0.02,
                 layer_norm: bool = False, norm_init_std: float = 0.01) -> None:
        super().__init__()
        if width_mode not in WIDTH_MODES:
            raise ValueError(f'width_mode must be one of {WIDTH_MODES}, got {width_mode!r}')
        self.condition = condition
        self.rank = rank
        self.width_mode = width_mode
        if width_mode == 'per_stage':
            groups = dict(bottlenecks)
        elif width_mode == 'slice':
            groups = {max(bottlenecks): bottlenecks[max(bottlenecks)]}
        else:
            groups = {min(bottlenecks): bottlenecks[min(bottlenecks)]}
        self.shapes = groups
        self.bottlenecks = dict(bottlenecks)
        d = condition.out_dim
        self.generators = nn.ModuleDict()
        for C, b in groups.items():
            if rank is None:
                gen = nn.ModuleDict(dict(full=nn.Linear(d, C * b + b + b * C + C)))
            else:
                gen = nn.ModuleDict(dict(left=nn.Linear(d, (C + b) * rank), right=nn.Linear(d, (b + C) * rank),
                                         bias=nn.Linear(d, b + C)))
            for lin in gen.values():
                nn.init.normal_(lin.weight, std=init_std)
                nn.init.zeros_(lin.bias)
            if zero_init_up:
                with torch.no_grad():
                    if rank is None:
                        gen['full'].weight[C * b + b:].zero_()
                    else:
                        gen['right'].weight[b * rank:].zero_()   # R_u
                        gen['bias'].weight[b:].zero_()            # up bias
            self.generators[str(C)] = gen
        self.layer_norms = TaskLayerNormGenerator(d, groups, norm_init_std) if layer_norm else None

    def group_width(self, width: int) -> int:
        """The generator width that serves a site of ``width`` channels."""
        if self.width_mode == 'per_stage':
            if width not in self.shapes:
                raise ValueError(f'no generator for width {width}; have {sorted(self.shapes)}')
            return width
        return next(iter(self.shapes))

    def forward(self, layer: int, position: int, width: int
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Task adapters for one site: ``(down [T, C, b], down_bias [T, b], up [T, b, C], up_bias [T, C])``
        at the site's size (``'per_stage'``, ``'slice'``) or the template size (``'template'``)."""
        G = self.group_width(width)
        C, b = G, self.shapes[G]
        gen = self.generators[str(G)]
        I = self.condition(layer, position)
        T = I.shape[0]
        if self.rank is None:
            out = gen['full'](I)
            down = out[:, :C * b].view(T, C, b)
            down_bias = out[:, C * b:C * b + b]
            up = out[:, C * b + b:C * b + b + b * C].view(T, b, C)
            up_bias = out[:, C * b + b + b * C:]
        else:
            r = self.rank
            left, right, bias = gen['left'](I), gen['right'](I), gen['bias'](I)
            L_d, L_u = left[:, :C * r].view(T, C, r), left[:, C * r:].view(T, b, r)
            R_d, R_u = right[:, :b * r].view(T, b, r), right[:, b * r:].view(T, C, r)
            down, up = L_d @ R_d.transpose(1, 2), L_u @ R_u.transpose(1, 2)
            down_bias, up_bias = bias[:, :b], bias[:, b:]
        if self.width_mode == 'slice' and width != C:
            c = width
            bb = self.bottlenecks[width]
            down, down_bias, up, up_bias = down[:, :c, :bb], down_bias[:, :bb], up[:, :bb, :c], up_bias[:, :c]
        return down, down_bias, up, up_bias

    def layer_norm_params(self, layer: int, position: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Task LayerNorms for one site: ``(gamma [T, C], beta [T, C])`` at the site's width
        (``'per_stage'``, ``'slice'``) or the template width (``'template'``)."""
        if self.layer_norms is None:
            raise RuntimeError('this hypernetwork was built without layer_norm')
        G = self.group_width(width)
        gamma, beta = self.layer_norms(self.condition(layer, position), G)
        if self.width_mode == 'slice' and width != G:
            gamma, beta = gamma[:, :width], beta[:, :width]
        return gamma, beta
