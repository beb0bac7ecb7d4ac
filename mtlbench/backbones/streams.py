"""The stream axis: how one image becomes a shared stream plus one stream per task.

Inside the task-specific last block of each Swin stage the shared representation forks into
``1 + T`` streams (index 0 shared, index ``1 + t`` task ``t``). Every tensor between backbone
layers carries that axis first, ``[S, B, ...]``, with ``S == 1`` in shared blocks. Keeping it a
tensor axis (not a dict of tensors) keeps every layer one-tensor-in / one-tensor-out, lets shared
layers (PatchMerging, LayerNorm, frozen linears) run once on all streams, and turns "one low-rank
update per task" into one batched product.

Adapter layers decide how many streams they emit: a shared adapter maps ``S -> S``; a task
adapter maps ``S -> 1 + T`` (broadcasting a single shared input stream to every task).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ['SHARED', 'task_stream', 'select_task_stream', 'task_streams', 'split_streams', 'StreamDropPath']

SHARED = 0


def task_stream(task_index: int) -> int:
    """Stream index of task ``task_index`` (0-based) in a forked tensor."""
    return 1 + task_index


def select_task_stream(x: Union[torch.Tensor, Sequence[torch.Tensor]], task_index: int) -> torch.Tensor:
    """Stream of a task, falling back to the shared stream when ``x`` never forked.

    Args:
        x: ``[S, B, ...]`` with ``S == 1`` (no fork) or ``S == 1 + T``, or its streams as a
            sequence (:func:`split_streams`).
        task_index: 0-based task index.

    Returns:
        ``[B, ...]``.
    """
    return x[0] if len(x) == 1 else x[task_stream(task_index)]


def task_streams(h: torch.Tensor, num_tasks: int, owner: str = 'layer') -> torch.Tensor:
    """The ``T`` task streams of a site whose adapters are per task in every block (methods that
    set ``SwinBackbone.carry_task_streams``): an unforked input (the first adapted site) serves
    every task, a forked one gives streams ``1 .. T``; stream 0 is left to the caller.

    Args:
        h: ``[S, B, ...]`` with ``S == 1`` or ``S == 1 + num_tasks``.
        num_tasks: ``T``.
        owner: named in the error for any other ``S``.

    Returns:
        ``[T, B, ...]`` (a view: broadcast or slice).
    """
    S = h.shape[0]
    if S == 1:
        return h.expand(num_tasks, *h.shape[1:])
    if S == 1 + num_tasks:
        return h[1:]
    raise ValueError(f'{owner}: expected 1 or 1 + {num_tasks} streams, got {S}')


def split_streams(feats: Sequence[torch.Tensor]) -> List[Tuple[torch.Tensor, ...]]:
    """Each ``[S, B, ...]`` map as its ``S`` streams (views).

    A decoder that reads every task's stream should select from these: their backward is one
    stack per map, where indexing the tensor once per task costs a zero-filled ``[S, B, ...]``
    gradient per task and the sum of them all.
    """
    return [f.unbind(0) for f in feats]


class StreamDropPath(nn.Module):
    """Stochastic depth with an independent draw per (stream, sample).

    The reference calls one DropPath module once per task stream, so each stream gets its own
    random mask; folding the stream axis into the batch reproduces that distribution.

    Args:
        drop_prob: probability of dropping a residual branch.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def _mask(self, x: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.drop_prob
        mask_shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
        return x.new_empty(mask_shape).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        return x * self._mask(x)

    def residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """``x + self(branch)`` in one pass (``addcmul``); ``x`` broadcasts over streams."""
        if self.drop_prob == 0.0 or not self.training:
            return x + branch
        return torch.addcmul(x, branch, self._mask(branch))

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'
