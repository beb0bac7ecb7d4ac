"""Polyhistor and Polyhistor-Lite (Liu et al., NeurIPS 2022, arXiv 2210.03265).

Both keep HyperFormer's structure (``hyperformer.py``: task-specific bottleneck adapters after
attention and MLP in every block, written by a hypernetwork shared across tasks and layers) and
shrink its hypernetwork:

* **Decomposed HyperNetworks** (Sec. 4.1, ``polyhistor``): instead of emitting a ``C x b``
  adapter weight, two smaller hypernetworks emit its low-rank factors: a "left" one
  ``[L_d | L_u]`` and a "right" one ``[R_d | R_u]``, ``down = L_d R_d^T``, ``up = L_u R_u^T``
  (``hypernetwork.py``). The paper's argument: HyperFormer's output layer scales with the adapter
  size, the factors' with ``ρ (C + b)``.
* **Layer-wise Scaling Kernels** (Sec. 4.2) plus the decomposed hypernetwork = **Polyhistor-Lite**
  (Sec. 4.3, ``polyhistor_lite``): the hypernetwork emits only "template kernels" of the first
  stage's size (``C1 x b1``, 96 x 24 for Swin-T), and every site owns a pair of small trainable
  scaling kernels ``S`` (``k x k``, ``k = C / C1``: 1, 2, 4, 8 for Swin-T) that expand a
  template to its width as ``kron(S, template)`` (``adapter.py``). Biases are repeated ``k``
  times (``kron(1_k, bias)``).

Not in the text we could read, chosen (each an option; the evidence is only the paper's
description of the two components, which fixes neither sizes nor inits):

* ``rank=8`` (``ρ``) and ``reduction_factor=4`` (bottleneck ``C // 4``; in Lite the template's
  ``C1 // 4`` scaled by ``k`` gives the same ``C // 4`` per stage);
* ``polyhistor`` sizes its generators per stage width (``width_mode='per_stage'``, or
  ``'slice'``); Lite has one template-size generator by construction (``'template'``);
* scaling kernels start as ones (``scaling_init='ones'``: ``kron`` with ones repeats the
  template, the "repeat" reading of the paper's figure; ``'identity'`` gives block-diagonal
  copies) and are shared by the tasks (one pair per layer and position, "layer-wise");
* task, layer and position conditioning as in HyperFormer++ (``condition.py``); the up factor
  ``R_u`` starts at zero so the adapted backbone starts as the pretrained one;
* no task-conditional LayerNorm (``conditional_layer_norm=False``; HyperFormer's default is on):
  the description of Polyhistor's components this docstring rests on has hypernetworks writing
  adapter weights only and names no conditional norm (none was found in what was read), so the
  rows keep the design and counts they had; ``True`` adds HyperFormer's norm (Lite: generated at
  the template width and repeated ``k`` times, like the biases). For the same reason the
  conditioning vector has no LayerNorm (``condition_layer_norm=False``; HyperFormer++'s is on).

Trainable parameters on PASCAL's four tasks, Swin-T (``mtlbench params --method X --dataset
pascal_context``; formulas checked in ``tests/test_method_hyper_baselines.py``), each plus
LayerNorms 23,232 and decoder 1,946,624:

* ``polyhistor``: hypernetwork 2,023,112 (conditioning 34,112 + per-stage factor generators
  1,989,000), 3,992,968 trainable in all;
* ``polyhistor_lite``: hypernetwork 166,712 (conditioning 34,112 + one template generator
  132,600) + scaling kernels 936, 2,137,504 in all.

No printed count could be retrieved while writing this; with the sizes above being choices, no
count is claimed to match the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mtlbench.registry import METHODS

from .hyperformer import HyperFormer, HyperFormerConfig

__all__ = ['PolyhistorConfig', 'Polyhistor', 'PolyhistorLiteConfig', 'PolyhistorLite']


@dataclass
class PolyhistorConfig(HyperFormerConfig):
    """HyperFormer's options plus the factor rank of the Decomposed HyperNetworks."""
    rank: int = field(default=8, metadata={'help': 'rank of the generated factors (down = L_d R_d^T)'})
    conditional_layer_norm: bool = field(default=False, metadata={
        'help': "HyperFormer's task-conditional LayerNorm on each adapter output (off: not named in the "
                "Polyhistor description read)"})
    condition_layer_norm: bool = field(default=False, metadata={
        'help': "HyperFormer++'s LayerNorm on the conditioning vector (off: not named in the Polyhistor "
                "description read)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError(f'rank must be >= 1, got {self.rank}')


@METHODS.register_module('polyhistor')
class Polyhistor(HyperFormer):
    """Decomposed HyperNetworks: the shared hypernetwork emits low-rank factors of each adapter."""
    config_cls = PolyhistorConfig

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.config.rank

    def variant(self) -> str:
        return f'rf={self.config.reduction_factor},rank={self.config.rank}'


@dataclass
class PolyhistorLiteConfig(PolyhistorConfig):
    """Polyhistor's options; the generator emits first-stage templates, scaled per layer."""
    width_mode: str = field(default='template', metadata={'help': "must stay 'template' (Layer-wise Scaling Kernels)"})
    scaling_init: str = field(default='ones', metadata={'help': "scaling kernels' init: 'ones' (repeat) or 'identity'"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scaling_init not in ('ones', 'identity'):
            raise ValueError(f"scaling_init must be 'ones' or 'identity', got {self.scaling_init!r}")

    @staticmethod
    def valid_width_modes() -> tuple:
        return ('template',)


@METHODS.register_module('polyhistor_lite')
class PolyhistorLite(Polyhistor):
    """Decomposed HyperNetworks emitting template kernels + Layer-wise Scaling Kernels."""
    config_cls = PolyhistorLiteConfig

    def scale_factor(self, width: int, template_width: int) -> int:
        if width % template_width:
            raise ValueError(f'polyhistor_lite: site width {width} is not a multiple of the template width '
                             f'{template_width}')
        return width // template_width
