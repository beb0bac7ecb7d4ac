"""Adapter layers shared by several methods."""
from mtlbench.layers.dropout import AdapterDropout, adapter_dropout
from mtlbench.layers.lowrank import LoRALinear, TaskLoRALinear, fork_task_streams, lora_init_

__all__ = ['AdapterDropout', 'adapter_dropout', 'LoRALinear', 'TaskLoRALinear', 'fork_task_streams', 'lora_init_']
