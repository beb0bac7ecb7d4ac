"""Adapter (Houlsby et al., ICML 2019): a bottleneck MLP after attention and after the MLP.

The "Adapter" row of the Polyhistor table (Liu et al., NeurIPS 2022) that MTLoRA (CVPR 2024) and
its successors reprint. In every Swin block the output of the attention projection (``proj``)
and of the MLP (``fc2``) passes through ``h + up(act(down(h)))`` before the residual addition,
which is where Houlsby places it ("after the attention and feed-forward modules").

Choices (each an option):

* ``reduction_factor`` (default 4): bottleneck width ``C // reduction_factor`` per block, so the
  adapter grows with the stage width as in Swin adaptations of Houlsby adapters. Polyhistor
  does not give the factor in the text we could read; 4 is a choice.
* ``act`` GELU (Swin's nonlinearity); ``down`` initialised ``N(0, init_std)``, ``up`` to zero, so
  the adapted model starts as the pretrained one (Houlsby: near-identity initialisation).
* Trainable besides the adapters: the LayerNorms (Houlsby trains them), nothing else of the
  backbone; the decoder trains as for every PEFT row.
* One adapter set shared by all tasks (the streams do not fork; every decoder reads the same
  features). Per-task adapters in every block carry ``1 + T`` streams through the whole backbone
  (``SwinBackbone.carry_task_streams``); ``vl_adapter`` offers them (``sharing='multiple'`` and
  the half-shared settings), at about ``T + 1`` times this row's backbone cost.

On PASCAL's four tasks (``mtlbench params --method adapter``), reduction 4: 2,167,584 adapter
parameters + 23,232 LayerNorm parameters + decoder 1,946,624 = 4,137,440 trainable (checked in
``tests/test_method_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn

from mtlbench.method import AdapterLayer, Method, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['AdapterConfig', 'BottleneckAdapted', 'Adapter']


@dataclass
class AdapterConfig(MethodConfig):
    """Houlsby adapter options."""
    reduction_factor: int = field(default=4, metadata={'help': 'bottleneck width = channels // reduction_factor'})
    kinds: tuple = field(default=('proj', 'fc2'), metadata={'help': 'sites whose output is adapted'})
    init_std: float = field(default=0.02, metadata={'help': 'std of the down-projection init (up is zero)'})
    train_patch_embed: bool = False
    train_norms: bool = True
    train_rel_pos: bool = False
    train_reductions: bool = False

    def __post_init__(self) -> None:
        check_bottleneck_options(self, 'reduction_factor')


#: the linears of a Swin block a bottleneck adapter can follow
SITE_KINDS = ('qkv', 'proj', 'fc1', 'fc2')


def check_bottleneck_options(config, *at_least_one: str) -> None:
    """Validate the options every bottleneck-adapter config shares (this file's, the low-rank
    and the PHM adapters'): each field named in ``at_least_one`` is >= 1, and ``kinds`` is a
    non-empty subset of :data:`SITE_KINDS` (stored as a tuple, so configs compare equal)."""
    for name in at_least_one:
        if getattr(config, name) < 1:
            raise ValueError(f'{name} must be >= 1, got {getattr(config, name)}')
    bad = set(config.kinds) - set(SITE_KINDS)
    if bad or not config.kinds:
        raise ValueError(f'kinds must be a non-empty subset of {"/".join(SITE_KINDS)}, got {config.kinds}')
    config.kinds = tuple(config.kinds)


class BottleneckAdapted(AdapterLayer):
    """Frozen linear followed by a residual bottleneck: ``h + up(gelu(down(h)))``, ``h = W x + b``.

    Args:
        base_layer: the frozen linear.
        hidden: bottleneck width.
        init_std: std of the down-projection weights (the up-projection starts at zero).
        projections: ``(down, up)`` modules to use instead of dense ``nn.Linear`` ones (the
            low-rank and PHM adapters: ``methods/low_rank_adapter.py``, ``methods/compacter.py``),
            initialised by their owner; ``hidden`` and ``init_std`` are then unused.
    """

    def __init__(self, base_layer: nn.Linear, hidden: int, init_std: float = 0.02,
                 projections: Optional[Tuple[nn.Module, nn.Module]] = None) -> None:
        super().__init__(base_layer)
        d = self.out_features
        self.act = nn.GELU()
        if projections is not None:
            self.down, self.up = projections
            return
        self.down = nn.Linear(d, hidden)
        self.up = nn.Linear(hidden, d)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h + self.up(self.act(self.down(h)))

    def extra_repr(self) -> str:
        return f'bottleneck={self.down.out_features}'


@METHODS.register_module('adapter')
class Adapter(Method):
    """Houlsby bottleneck adapters after attention and MLP."""
    config_cls = AdapterConfig

    def variant(self) -> str:
        return f'rf={self.config.reduction_factor}'

    def bottleneck_width(self, channels: int) -> int:
        """Bottleneck width of an adapter on a ``channels``-wide site."""
        return max(1, channels // self.config.reduction_factor)

    def adapter_layer(self, base_layer: nn.Linear, site) -> AdapterLayer:
        """The module that replaces ``site`` (variants change the projections here)."""
        return BottleneckAdapted(base_layer, self.bottleneck_width(site.out_features), self.config.init_std)

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        done = []
        for site in backbone.select_sites(kinds=c.kinds):
            backbone.replace_site(site.name, self.adapter_layer(backbone.get_submodule(site.name), site))
            done.append(site.name)
        if not done:
            raise ValueError(f'adapter matched no backbone site of kinds {c.kinds}')
        return done
