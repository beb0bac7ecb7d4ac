"""Decoder-only baseline: frozen pretrained backbone, only downsamplers and heads train.

The lower bound of every PEFT table: what the pretrained features give without any
backbone adaptation.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.method import Method, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['DecoderOnlyConfig', 'DecoderOnly']


@dataclass
class DecoderOnlyConfig(MethodConfig):
    """Nothing in the backbone trains."""
    train_patch_embed: bool = False
    train_norms: bool = False
    train_rel_pos: bool = False
    train_reductions: bool = False


@METHODS.register_module('decoder_only')
class DecoderOnly(Method):
    """Frozen backbone."""
    config_cls = DecoderOnlyConfig
