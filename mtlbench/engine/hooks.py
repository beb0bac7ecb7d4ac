"""Hooks every mtlbench run uses."""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mtlbench.engine.data import sample_seed
from mtlbench.registry import HOOKS

__all__ = ['IterSeedHook']


@HOOKS.register_module()
class IterSeedHook(Hook):
    """Seed torch / numpy / random before every training iteration from ``(seed, iter, rank)``.

    Dropout and stochastic depth then draw the same masks at a given iteration whether or not
    the run was interrupted and resumed (the RNG state is not part of a checkpoint).

    Args:
        seed: base seed (default: the runner's seed).
    """
    priority = 'VERY_HIGH'

    def __init__(self, seed: Optional[int] = None) -> None:
        self.seed = seed

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        base = runner.seed if self.seed is None else self.seed
        s = sample_seed(int(base), int(runner.iter), 1_000_003 + get_rank())
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
