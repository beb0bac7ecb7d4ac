"""MTL full fine-tuning baseline: one shared backbone, every parameter trainable.

The "MTL full FT" row of the MTL PEFT tables. As in the MTLoRA reference pipeline, the backbone
is not forked into task streams: every task's decoder reads the same shared features. The
reference builds 29,464,442 trainable parameters on PASCAL's four tasks (the papers print
30.06M; ``shared/reference/mtlora.md``).
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.method import Method, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['FullFineTuningConfig', 'FullFineTuning']


@dataclass
class FullFineTuningConfig(MethodConfig):
    """Everything trains."""
    train_linears: bool = True


@METHODS.register_module('full_ft')
class FullFineTuning(Method):
    """Multi-task full fine-tuning (no adapters)."""
    config_cls = FullFineTuningConfig
