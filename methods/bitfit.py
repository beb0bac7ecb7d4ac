"""BitFit: only the backbone's bias terms train (plus the decoder, as for every PEFT row).

Ben Zaken, Ravfogel, Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022. One of the general PEFT baselines of the
Polyhistor table (Liu et al., NeurIPS 2022) that MTLoRA, TADFormer and their successors reprint.

How it is expressed through the method contract (no core flag): every biased backbone layer is
wrapped in a module that owns a zero-initialised ``bias_delta`` and adds it to the frozen
layer's output. ``b + delta`` with ``delta`` trained is the same function and the same
trainable-parameter count as training ``b`` itself; it also merges (``delta`` folded into ``b``).

Which biases (choices, each an option):

* ``linears``: qkv, proj, fc1, fc2 of every block (PatchMerging reductions have no bias).
* ``norm_biases``: the LayerNorm biases (blocks, PatchMerging, patch embedding). BitFit's
  reference selects parameters by the name ``bias``, which includes LayerNorm's; default on.
* ``patch_embed``: the patch-embedding convolution's bias; default on.

Everything else in the backbone (weights, LayerNorm scales, relative-position tables,
reductions, patch embedding weight) is frozen; the decoder trains as for every PEFT method.
On PASCAL's four tasks (``mtlbench params --method bitfit``) this gives 1,998,080 trainable
parameters: 51,456 bias terms (39,744 linear, 11,616 LayerNorm, 96 patch-embedding) plus
decoder_only's 1,946,624 (checked in ``tests/test_method_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch
from torch import nn

from mtlbench.method import AdapterLayer, Method, MethodConfig, MethodModule
from mtlbench.registry import METHODS

__all__ = ['BitFitConfig', 'BitFit', 'BiasTunedLinear', 'BiasTunedNorm', 'BiasTunedConv']


@dataclass
class BitFitConfig(MethodConfig):
    """BitFit options: which biases train. No other backbone parameter trains."""
    linears: bool = field(default=True, metadata={'help': 'biases of qkv/proj/fc1/fc2'})
    norm_biases: bool = field(default=True, metadata={'help': 'LayerNorm biases'})
    patch_embed: bool = field(default=True, metadata={'help': 'patch-embedding conv bias'})
    train_patch_embed: bool = False
    train_norms: bool = False
    train_rel_pos: bool = False
    train_reductions: bool = False

    def __post_init__(self) -> None:
        if not (self.linears or self.norm_biases or self.patch_embed):
            raise ValueError('bitfit needs at least one of linears, norm_biases, patch_embed')


class BiasTunedLinear(AdapterLayer):
    """Frozen linear whose bias is shifted by a trained ``bias_delta`` (stream-major safe)."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__(base_layer)
        if base_layer.bias is None:
            raise ValueError('BiasTunedLinear needs a linear with a bias')
        self.bias_delta = nn.Parameter(torch.zeros_like(base_layer.bias))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        return out if self.merged else out + self.bias_delta

    def merge(self) -> None:
        if not self.merged:
            self.base_layer.bias.data += self.bias_delta.data
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.bias.data -= self.bias_delta.data
            self.merged = False


class BiasTunedNorm(MethodModule):
    """Frozen LayerNorm plus a trained bias shift (last dimension)."""
    frozen_children = ('base',)

    def __init__(self, base: nn.LayerNorm) -> None:
        super().__init__()
        self.base = base
        self.bias_delta = nn.Parameter(torch.zeros_like(base.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.bias_delta


class BiasTunedConv(MethodModule):
    """Frozen conv plus a trained per-channel bias shift (NCHW output)."""
    frozen_children = ('base',)

    def __init__(self, base: nn.Conv2d) -> None:
        super().__init__()
        self.base = base
        self.bias_delta = nn.Parameter(torch.zeros_like(base.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.bias_delta.view(1, -1, 1, 1)


def _swap(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition('.')
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)


@METHODS.register_module('bitfit')
class BitFit(Method):
    """Train the backbone's bias terms only."""
    config_cls = BitFitConfig

    def adapter_breakdown(self, backbone: nn.Module) -> Dict[str, int]:
        kinds = {BiasTunedLinear: 'linear biases', BiasTunedNorm: 'norm biases', BiasTunedConv: 'patch-embed bias'}
        out = {v: 0 for v in kinds.values()}
        for m in backbone.modules():
            if type(m) in kinds:
                out[kinds[type(m)]] += m.bias_delta.numel()
        return out

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        done = []
        if c.linears:
            for site in backbone.sites():
                base = backbone.get_submodule(site.name)
                if site.kind != 'reduction' and getattr(base, 'bias', None) is not None:
                    backbone.replace_site(site.name, BiasTunedLinear(base))
                    done.append(site.name)
        # LayerNorms and the patch-embedding conv are not sites: chosen by module type.
        targets = []
        for name, m in backbone.named_modules():
            if isinstance(m, MethodModule):
                continue
            if c.norm_biases and isinstance(m, nn.LayerNorm) and m.bias is not None:
                targets.append((name, BiasTunedNorm(m)))
            elif c.patch_embed and isinstance(m, nn.Conv2d) and m.bias is not None:
                targets.append((name, BiasTunedConv(m)))
        for name, module in targets:
            _swap(backbone, name, module)
            done.append(name)
        if not done:
            raise ValueError('bitfit found no bias to train in the backbone')
        return done
