"""Adapter-input dropout whose mask is cheap to draw on a CPU.

Every method here drops out the *input* of its low-rank branch (MTLoRA, TADFormer, DiTASK,
FAAR, Free Sinewich all use p=0.05 on activations of up to ``2 x 112 x 112 x 384`` values).
``nn.Dropout`` draws one double-precision uniform per element; on CPUs where PyTorch has no
vectorised Bernoulli (AMD, or any build without MKL's VSL) that single-threaded draw costs
about as much as the adapter's matrix products. :class:`AdapterDropout` draws the mask from
64-bit random words instead, three 16-bit lanes per word, which is 2.5x faster on this
project's 2-core CPU (``python benchmarks/dropout.py`` prints the comparison).

The distribution is the same up to rounding ``p`` to a multiple of 2**-16: each element is
kept independently with probability ``1 - round(p * 65536) / 65536`` and the survivors are
scaled by the inverse of that probability, so ``E[dropout(x)] == x`` exactly. For p=0.05 the
drop probability is 0.0500031. On CUDA, where ``nn.Dropout``'s fused kernel is already fast,
the module calls :func:`torch.nn.functional.dropout`. The masks come from PyTorch's default
generator, so ``torch.manual_seed`` (and :class:`~mtlbench.engine.hooks.IterSeedHook`) make
them reproducible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['AdapterDropout', 'adapter_dropout', 'inverted_dropout_mask']

_LANES = 3          # 16-bit lanes used per 64-bit random word (the top lane has only 15 random bits)
_LEVELS = 1 << 16


def inverted_dropout_mask(shape: torch.Size, p: float, device: torch.device,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``0`` with probability ``q = round(p * 2**16) / 2**16``, else ``1 / (1 - q)``; i.i.d. per element."""
    n = 1
    for s in shape:
        n *= s
    words = torch.empty(((n + _LANES - 1) // _LANES, 4), dtype=torch.int16, device=device)
    # random_() on int64 fills [0, 2**63): the low 48 bits (three int16 lanes) are uniform.
    words.view(torch.int64).random_()
    q = round(p * _LEVELS)
    threshold = -(1 << 15) + q  # int16 lanes are uniform on [-2**15, 2**15)
    keep_scale = _LEVELS / (_LEVELS - q)
    mask = torch.where(words[:, :_LANES] < threshold, 0.0, keep_scale).to(dtype)
    return mask.view(-1)[:n].view(shape)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        if x.device.type != 'cpu':
            return F.dropout(x, self.p, True)
        return x * inverted_dropout_mask(x.shape, self.p, x.device, x.dtype)

    def extra_repr(self) -> str:
        return f'p={self.p}'


def adapter_dropout(p: float) -> nn.Module:
    """``AdapterDropout(p)``, or ``nn.Identity()`` when ``p == 0`` (no module call cost)."""
    return AdapterDropout(p) if p > 0 else nn.Identity()

