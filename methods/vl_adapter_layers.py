"""VL-Adapter's per-task and half-shared bottleneck adapters on task streams.

One site holds its ``T`` task adapters as stacked tensors (down ``[n, C, b]`` and its bias
``[n, b]``, up ``[n, b, C]`` and its bias ``[n, C]``) with ``n = T`` for a per-task projection
and ``n = 1`` for a projection shared by all tasks. The shared one broadcasts over the task axis
of one batched product, so it is a single tensor every task stream reads (and whose gradient sums
over the tasks), as VL-Adapter's controller points every task's adapter at the first task's
``nn.Linear`` (weight and bias together).

Streams as in ``methods/polyhistor/adapter.py``: a single input stream (the first adapted block)
is forked into ``1 + T``; stream 0 stays the frozen path (no adapter), stream ``1 + t`` gets
``h + up_t(gelu(down_t(h)))`` after the frozen linear (Houlsby placement).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.streams import task_streams
from mtlbench.method import AdapterLayer

__all__ = ['TaskBottleneckAdapted']


class TaskBottleneckAdapted(AdapterLayer):
    """Frozen linear, then one bottleneck adapter per task stream, either projection shareable.

    Args:
        base_layer: the frozen linear.
        hidden: bottleneck width ``b``.
        num_tasks: ``T``.
        share_down: one down-projection (weight and bias) for all tasks.
        share_up: one up-projection (weight and bias) for all tasks.
        init_std: std of the down-projection weights; the up-projection starts at zero, so the
            adapted model starts as the pretrained one (as ``methods/adapter.py``).
    """
    #: stacked biases are 2-D, so the optimiser's "1-D or ``.bias``" rule would decay them; they
    #: keep the exemption ``nn.Linear`` biases of the single adapter get (``mtlbench.optim``)
    no_weight_decay = ('down_bias', 'up_bias')

    def __init__(self, base_layer: nn.Linear, hidden: int, num_tasks: int, share_down: bool = False,
                 share_up: bool = False, init_std: float = 0.02) -> None:
        super().__init__(base_layer)
        C, T = self.out_features, num_tasks
        self.num_tasks, self.share_down, self.share_up = T, share_down, share_up
        n_down, n_up = (1 if share_down else T), (1 if share_up else T)
        self.down_weight = nn.Parameter(torch.randn(n_down, C, hidden) * init_std)
        self.down_bias = nn.Parameter(torch.zeros(n_down, hidden))
        self.up_weight = nn.Parameter(torch.zeros(n_up, hidden, C))
        self.up_bias = nn.Parameter(torch.zeros(n_up, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        T = self.num_tasks
        tasks = task_streams(h, T, type(self).__name__)
        flat = tasks.reshape(T, -1, h.shape[-1])
        # a shared projection ([1, ...]) broadcasts over the task axis of the batched product
        z = F.gelu(torch.matmul(flat, self.down_weight.to(flat.dtype)) + self.down_bias.unsqueeze(1).to(flat.dtype))
        delta = torch.matmul(z, self.up_weight.to(z.dtype)) + self.up_bias.unsqueeze(1).to(z.dtype)
        return torch.cat([h[:1], tasks + delta.view(tasks.shape)], dim=0)

    def extra_repr(self) -> str:
        return (f'bottleneck={self.down_weight.shape[-1]}, tasks={self.num_tasks}, '
                f'share_down={self.share_down}, share_up={self.share_up}')
