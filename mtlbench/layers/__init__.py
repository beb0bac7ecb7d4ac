"""Adapter layers shared by several methods."""
from mtlbench.layers.lowrank import LoRALinear, TaskLoRALinear, lora_init_

__all__ = ['LoRALinear', 'TaskLoRALinear', 'lora_init_']
