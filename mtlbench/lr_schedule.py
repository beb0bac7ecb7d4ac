"""The reference's learning-rate schedule, iteration by iteration.

The MTLoRA reference (``lr_scheduler.py``) uses timm's ``CosineLRScheduler`` per iteration
(``t_in_epochs=False``) with ``warmup_prefix=True``: with ``W`` warm-up and ``N`` total
iterations (``int(epochs * iters_per_epoch)``), the value at ``t`` is

* ``t < W``: ``lr_w + t (lr - lr_w) / W`` (linear from the warm-up lr, never reaching ``lr``);
* ``W <= t < N``: ``lr_min + (lr - lr_min) (1 + cos(pi (t - W) / (N - W))) / 2``;
* later: ``lr_min``.

The training loop calls ``step_update(epoch * iters_per_epoch + idx)`` *after* the optimizer step
of iteration ``idx``, and the scheduler's constructor sets the value at ``t = 0``; so iteration
``k`` (counted from 0 over the whole run) trains with the value at ``max(k - 1, 0)``: the first
two iterations share the warm-up lr and the schedule runs one iteration late. mmengine's
``LinearLR`` + ``CosineAnnealingLR`` pair differs (its warm-up reaches ``lr`` one iteration
early and the cosine starts at once), hence this scheduler.

``warmup_ratio`` and ``min_ratio`` are the reference's warm-up and minimum lr over its base lr
(5e-7 / 5e-4 and 5e-6 / 5e-4: the reference scales all three by batch / 512, so the ratios hold
after mmengine's ``auto_scale_lr``).
"""
from __future__ import annotations

import math
from typing import List, Optional

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

from mtlbench.errors import OptionError
from mtlbench.registry import PARAM_SCHEDULERS

__all__ = ['ReferenceCosineLR', 'reference_lr']


def reference_lr(t: int, base: float, warmup_iters: int, total_iters: int, warmup_ratio: float,
                 min_ratio: float) -> float:
    """timm ``CosineLRScheduler._get_lr`` (warm-up prefix, one cycle) at update ``t``."""
    lr_min = base * min_ratio
    if t < warmup_iters:
        lr_w = base * warmup_ratio
        return lr_w + t * ((base - lr_w) / warmup_iters)
    t_cur, t_len = t - warmup_iters, total_iters - warmup_iters
    if t_cur >= t_len:
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t_cur / t_len))


@PARAM_SCHEDULERS.register_module()
class ReferenceCosineLR(LRSchedulerMixin, _ParamScheduler):
    """Linear warm-up + cosine, per iteration, shifted by one iteration as the reference's loop.

    Written in epochs in configs (``convert_to_iter_based=True``); iterations inside.

    Args:
        optimizer: the optimizer (wrapper).
        warmup_iters: ``W`` (``int(warmup_epochs * iters_per_epoch)``).
        total_iters: ``N`` (``int(epochs * iters_per_epoch)``).
        warmup_ratio: warm-up start lr / base lr (reference 5e-7 / 5e-4 = 1e-3).
        min_ratio: final lr / base lr (reference 5e-6 / 5e-4 = 1e-2).
        begin, end, last_step, by_epoch, verbose: as mmengine's schedulers.

    Example:
        >>> param_scheduler = [dict(type='ReferenceCosineLR', warmup=20, warmup_ratio=1e-3,
        ...                         min_ratio=1e-2, begin=0, end=300, by_epoch=True,
        ...                         convert_to_iter_based=True)]
    """

    def __init__(self, optimizer, warmup_iters: int, total_iters: int, warmup_ratio: float = 1e-3,
                 min_ratio: float = 1e-2, begin: int = 0, end: Optional[int] = None, last_step: int = -1,
                 by_epoch: bool = False, verbose: bool = False) -> None:
        if by_epoch:
            raise ValueError('ReferenceCosineLR steps per iteration: use convert_to_iter_based=True in configs')
        if not 0 <= warmup_iters < total_iters:
            raise OptionError(f'ReferenceCosineLR: need 0 <= warmup_iters < total_iters, got {warmup_iters}, {total_iters}')
        self.warmup_iters, self.total_iters = int(warmup_iters), int(total_iters)
        self.warmup_ratio, self.min_ratio = float(warmup_ratio), float(min_ratio)
        super().__init__(optimizer, begin=begin, end=begin + self.total_iters if end is None else end,
                         last_step=last_step, by_epoch=False, verbose=verbose)

    @classmethod
    def build_iter_from_epoch(cls, *args, warmup: float, begin: int = 0, end: int, by_epoch: bool = True,
                              epoch_length: Optional[int] = None, **kwargs) -> 'ReferenceCosineLR':
        """From epochs (``warmup``, ``begin``, ``end``) to iterations, truncated as the reference."""
        if not by_epoch or not epoch_length:
            raise ValueError('build_iter_from_epoch needs by_epoch=True and epoch_length')
        total = int((end - begin) * epoch_length)
        return cls(*args, warmup_iters=int(warmup * epoch_length), total_iters=total,
                   begin=int(begin * epoch_length), end=int(begin * epoch_length) + total, by_epoch=False, **kwargs)

    def lr_at(self, base: float, step: int) -> float:
        """The lr of iteration ``step`` (0-based from ``begin``): the reference's value one behind."""
        return reference_lr(max(step - 1, 0), base, self.warmup_iters, self.total_iters,
                            self.warmup_ratio, self.min_ratio)

    def _get_value(self) -> List[float]:
        return [self.lr_at(base, self.last_step) for base in self.base_values]
