"""Compacter++: Compacter with only the adapter after the feed-forward (MLP) sublayer.

The "Compacter++" row of the Polyhistor table (Liu et al., NeurIPS 2022), after Karimi Mahabadi
et al. (NeurIPS 2021), whose Compacter++ drops the adapter after self-attention and keeps the one
after the feed-forward layer (reference configuration github.com/rabeehk/compacter,
``seq2seq/configs/compacter++.json``: ``add_adapter_in_self_attention`` false, every other
setting as ``compacter.json``). In Swin terms: :class:`~mtlbench.methods.compacter.Compacter`
with ``kinds=('fc2',)``; every Compacter option and choice applies (see that module).

On PASCAL's four tasks (``mtlbench params --method compacter_pp``): 64 shared + 13,680 per-layer
adapter parameters + 23,232 LayerNorm parameters + decoder 1,946,624 = 1,983,600 trainable
(counted from the formula in ``tests/test_method_phm_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .compacter import Compacter, CompacterConfig
from mtlbench.registry import METHODS

__all__ = ['CompacterPPConfig', 'CompacterPP']


@dataclass
class CompacterPPConfig(CompacterConfig):
    """Compacter's options, adapting only the MLP output by default."""
    kinds: tuple = field(default=('fc2',), metadata={'help': 'sites whose output is adapted (fc2: after the MLP)'})


@METHODS.register_module('compacter_pp')
class CompacterPP(Compacter):
    """Compacter with the post-MLP adapter only."""
    config_cls = CompacterPPConfig
