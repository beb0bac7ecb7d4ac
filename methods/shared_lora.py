"""Shared LoRA: one LoRA for all tasks, no task-specific part (MTLoRA's task-agnostic half alone).

The "LoRA" baseline of the MTL PEFT tables in its multi-task form: a single low-rank update per
linear, shared by every task, with every task decoder reading the same (unforked) features. It
is exactly :class:`~mtlbench.methods.mtlora.MTLoRA` with ``task_kinds=()`` (no
:class:`~mtlbench.layers.lowrank.TaskLoRALinear` anywhere, so the streams never fork), so it is
registered as that configuration rather than as new code; every MTLoRA option applies.

Choices: rank 64, scale 4, dropout 0.05 and MTLoRA's trainable extras (patch embedding,
LayerNorms, relative-position tables, reductions) by default, so that the row isolates what
MTLoRA's task-specific modules add. A plain low-rank baseline without those extras is
``--cfg-options model.method.train_patch_embed=False model.method.train_norms=False ...``.

On PASCAL's four tasks (``mtlbench params --method shared_lora``): 8,068,154 trainable
parameters, MTLoRA r=64's 8,344,634 minus its task-specific LoRA (checked in
``tests/test_method_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .mtlora import MTLoRA, MTLoRAConfig
from mtlbench.registry import METHODS

__all__ = ['SharedLoRAConfig', 'SharedLoRA']


@dataclass
class SharedLoRAConfig(MTLoRAConfig):
    """MTLoRA's options with no task-specific LoRA."""
    task_kinds: tuple = field(default=(), metadata={'help': 'must stay empty: no task LoRA'})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task_kinds:
            raise ValueError(f'shared_lora has no task-specific LoRA; use mtlora for task_kinds={self.task_kinds}')


@METHODS.register_module('shared_lora')
class SharedLoRA(MTLoRA):
    """MTLoRA with ``task_kinds=()``: one LoRA shared by all tasks."""
    config_cls = SharedLoRAConfig
