"""Adapter layers shared by several methods."""
from mtlbench.layers.dropout import AdapterDropout, adapter_dropout
from mtlbench.layers.lowrank import LoRALinear, TaskLoRALinear, lora_init_, lora_linear, task_lora_linear

__all__ = ['AdapterDropout', 'adapter_dropout', 'LoRALinear', 'TaskLoRALinear', 'lora_linear', 'task_lora_linear', 'lora_init_']
