"""The device a run or bench computes on: its name in records, and CPU preparation."""
from __future__ import annotations

import platform
from typing import Optional, Union

import torch

from mtlbench.engine.cpu_memory import keep_freed_memory

__all__ = ['device_name', 'prepare_device']


def device_name(device: Optional[Union[str, torch.device]] = None) -> str:
    """Human-readable device for records: the GPU model, or the CPU and its thread count.

    Args:
        device: the compute device; ``None`` means CUDA when available, else CPU.
    """
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def prepare_device(device: Union[str, torch.device]) -> torch.device:
    """Per-process setup before computing on ``device``: on CPU, keep freed tensor memory for
    reuse (:func:`~mtlbench.engine.cpu_memory.keep_freed_memory`)."""
    device = torch.device(device)
    if device.type == 'cpu':
        keep_freed_memory()
    return device
