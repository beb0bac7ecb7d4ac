"""Adapter-input dropout whose mask is cheap to draw on a CPU.

Every method here drops out the *input* of its low-rank branch (MTLoRA, TADFormer, DiTASK,
FAAR, Free Sinewich all use p=0.05 on activations of up to ``2 x 112 x 112 x 384`` values).
``nn.Dropout`` draws one double-precision uniform per element; on CPUs where PyTorch has no
vectorised Bernoulli (AMD, or any build without MKL's VSL) that single-threaded draw costs
about as much as the adapter's matrix products. :class:`AdapterDropout` draws the mask from
64-bit random words instead (NumPy's SFC64 on CPU, seeded from PyTorch's generator), four
16-bit lanes per word (``python benchmarks/dropout.py`` prints the comparison on the machine
at hand).

The distribution is the same up to rounding ``p`` to a multiple of 2**-15: each element is
dropped independently with probability ``q = round(p * 32768) / 32768`` (0.0499878 for
p=0.05) and the survivors are scaled by ``1 / (1 - q)``, so ``E[dropout(x)] == x`` exactly.
Adapters that feed the dropped input straight into a linear map call :meth:`AdapterDropout.drop`,
which returns the zeroed input and that scale separately so the scale can ride on the (small)
low-rank product instead of costing a pass over the input. On CUDA, where ``nn.Dropout``'s
fused kernel is already fast, and under ``torch.compile`` (whose generated kernels draw their
own random numbers), the module calls :func:`torch.nn.functional.dropout`. The masks come from
PyTorch's default generator, so ``torch.manual_seed`` (and
:class:`~mtlbench.engine.hooks.IterSeedHook`) make them reproducible.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['AdapterDropout', 'adapter_dropout', 'drop_mask']

_LEVELS = 1 << 15   # p is rounded to a multiple of 2**-15


def _random_words(count: int, device: torch.device) -> torch.Tensor:
    """``count`` uniformly random 64-bit words.

    On CPU they come from NumPy's SFC64 generator, seeded by one draw from PyTorch's default
    generator (so ``torch.manual_seed`` still fixes every mask): it fills a buffer about twice as
    fast as PyTorch's Mersenne Twister, which runs on one thread while the GEMMs use them all.
    """
    if device.type != 'cpu':
        return torch.empty(count, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    seed = int(torch.randint(0, 1 << 62, ()).item())
    return torch.from_numpy(np.random.SFC64(seed).random_raw(count).view(np.int64))


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """Boolean mask, True (drop) with probability ``round(p * 2**15) / 2**15`` i.i.d. per element."""
    n = torch.Size(shape).numel()
    # each 16-bit lane of a uniform 64-bit word is uniform on [-2**15, 2**15), so one scalar
    # threshold serves every lane
    lanes = _random_words((n + 3) // 4, torch.device(device)).view(torch.int16)[:n]
    q = round(p * _LEVELS)
    return (lanes < -(1 << 15) + 2 * q).view(shape)


class AdapterDropout(nn.Module):
    """Inverted dropout for adapter inputs (drop-in for ``nn.Dropout(p)``).

    Args:
        p: drop probability, ``0 <= p < 1``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f'dropout probability must be in [0, 1), got {p}')
        self.p = float(p)
        self.drop_prob = round(self.p * _LEVELS) / _LEVELS

    def drop(self, x: torch.Tensor) -> Tuple[torch.Tensor, float]:
        """``(x with dropped elements zeroed, gain)``; ``gain * result`` is the dropout output.

        ``gain`` is ``1 / (1 - q)`` when elements were dropped here, else 1.0 (eval, p=0, or a
        path that already scaled).
        """
        mask, dropped, gain = self.parts(x)
        if mask is not None:
            return torch.where(mask, 0.0, x), gain
        return (x if dropped is None else dropped), gain

    def parts(self, x: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], float]:
        """``(mask, dropped, gain)`` for layers that apply the dropout inside their own kernel.

        On CPU: the boolean drop mask, ``None`` and ``1 / (1 - q)`` (zero the masked elements,
        multiply by the gain). On GPU / under compile: ``None``, ``F.dropout(x)`` and 1.0.
        Without dropout (eval, p=0): ``None, None, 1.0``.
        """
        if not self.training or self.drop_prob == 0.0:
            return None, None, 1.0
        if x.device.type != 'cpu' or torch.compiler.is_compiling():
            return None, F.dropout(x, self.p, True), 1.0   # fused kernel on GPU; the compiler's own RNG
        return drop_mask(x.shape, self.p, x.device), None, 1.0 / (1.0 - self.drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, gain = self.drop(x)
        return y if gain == 1.0 else y * gain

    def extra_repr(self) -> str:
        return f'p={self.p}'


def adapter_dropout(p: float) -> AdapterDropout:
    """``AdapterDropout(p)`` (``p == 0`` passes inputs through untouched)."""
    return AdapterDropout(p)

