"""Keep freed CPU tensor memory inside the process instead of handing it back to the OS.

PyTorch's CPU allocator is plain ``malloc``. glibc serves every large request (a Swin-T stage-1
activation at 448x448 is 40-150 MB) with a fresh ``mmap`` and returns it with ``munmap`` when
the tensor dies, so the next step's tensor of the same size page-faults all of its pages in
again: on this project's 2-core CPU that is ~40 ms per 150 MB tensor and about 15% of an
MTLoRA training step. CUDA has a caching allocator for exactly this reason; on CPU the
equivalent is to tell glibc to serve large blocks from its heap and keep freed ones
(``mallopt(M_MMAP_MAX, 0)`` and a high ``M_TRIM_THRESHOLD``), which is what Intel's PyTorch
CPU tuning guide achieves with jemalloc / tcmalloc.

The cost is that the process keeps its peak heap (resident memory does not shrink after a
peak), as with CUDA. ``mtlbench run`` and ``mtlbench bench`` call :func:`keep_freed_memory`
when they compute on the CPU; set ``MTLBENCH_KEEP_FREED_MEMORY=0`` to opt out. Without glibc
(macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys

__all__ = ['keep_freed_memory', 'ENV_VAR']

ENV_VAR = 'MTLBENCH_KEEP_FREED_MEMORY'
_M_TRIM_THRESHOLD = -1   # glibc <malloc.h>
_M_MMAP_MAX = -4
_INT_MAX = 2 ** 31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Switch glibc malloc to keep freed large blocks for reuse (idempotent).

    Returns:
        True when the setting is active in this process.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_VAR, '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return False
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    return _applied
