"""HyperFormer's task-conditional LayerNorm: a generator of per-task ``(gamma, beta)``.

HyperFormer normalises each adapter's output with a LayerNorm whose gain and shift a small
"layer-norm hypernetwork" writes from the same conditioning vector ``I`` as the adapter weights
(official code, rabeehk/hyperformer: ``adapters/adapter_utils.py`` ``LayerNormHyperNet``, two
linear maps ``I -> gamma`` and ``I -> beta``; HyperFormer++ feeds it the task/layer/position
embedding in ``adapters/adapter_modeling.py`` ``AdapterLayersOneHyperNetController``). So
``gamma`` and ``beta`` are affine in ``I``: ``gamma_t = W_g I_t + b_g``, ``beta_t = W_b I_t + b_b``.
Init as there (``adapter_utils.py`` ``linear_layer``): weights ``N(0, 0.01)``, biases zero, so
``gamma`` starts near zero, not near one.

One generator per width, like the adapter generators (``hypernetwork.py``); here the two maps
are stored as one linear emitting ``[gamma | beta]``, which has the same parameters.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
from torch import nn

__all__ = ['TaskLayerNormGenerator']


class TaskLayerNormGenerator(nn.Module):
    """``I [T, d] -> (gamma [T, C], beta [T, C])`` for each generator width ``C``.

    Args:
        cond_dim: width ``d`` of the conditioning vector.
        widths: the generator widths (one linear ``d -> 2 C`` each).
        init_std: std of the weights' normal init (biases start at zero).
    """

    def __init__(self, cond_dim: int, widths: Iterable[int], init_std: float = 0.01) -> None:
        super().__init__()
        self.generators = nn.ModuleDict()
        for C in sorted(set(widths)):
            lin = nn.Linear(cond_dim, 2 * C)
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)
            self.generators[str(C)] = lin

    def forward(self, I: torch.Tensor, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.generators[str(width)](I)
        return out[:, :width], out[:, width:]
