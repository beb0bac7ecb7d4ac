"""Relative-position bias only: the Swin relative-position tables train, nothing else of the backbone.

A baseline of the Polyhistor table (Liu et al., NeurIPS 2022), reprinted by MTLoRA (CVPR 2024)
and its successors as "Relative bias": the Swin counterpart of tuning position embeddings.
Decoder (downsamplers and heads) trains as for every PEFT row. No layer is added, so the method
is pure data: decoder_only's flags with ``train_rel_pos`` on.

On PASCAL's four tasks (``mtlbench params --method relative_bias``): 1,969,946 trainable
parameters, decoder_only's 1,946,624 plus 23,322 table entries ((2*7-1)^2 = 169 per head, summed
over the 138 heads of the 12 blocks; checked in ``tests/test_method_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.method import Method, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['RelativeBiasConfig', 'RelativeBias']


@dataclass
class RelativeBiasConfig(MethodConfig):
    """Only the relative-position bias tables of the backbone train."""
    train_patch_embed: bool = False
    train_norms: bool = False
    train_rel_pos: bool = True
    train_reductions: bool = False


@METHODS.register_module('relative_bias')
class RelativeBias(Method):
    """Tune the relative-position bias tables."""
    config_cls = RelativeBiasConfig
