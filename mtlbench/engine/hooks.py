"""Hooks every mtlbench run uses."""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from mtlbench.engine.data import sample_seed
from mtlbench.registry import HOOKS

__all__ = ['IterSeedHook', 'PlainCheckpointHook', 'MergeAdaptersHook']


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
        model = getattr(runner.model, 'module', runner.model)
        model.current_iter = int(runner.iter)  # for error messages (e.g. a NaN loss)
        base = runner.seed if self.seed is None else self.seed
        s = sample_seed(int(base), int(runner.iter), 1_000_003 + get_rank())
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


@HOOKS.register_module()
class PlainCheckpointHook(Hook):
    """Store mmengine's ``HistoryBuffer`` log scalars as plain data in checkpoints.

    A pickled ``HistoryBuffer`` carries bound methods (``getattr(HistoryBuffer, 'min')``), and
    allowing ``getattr`` in a weights-only unpickler would allow almost anything. So buffers are
    written as plain lists and rebuilt after loading (before mmengine restores the message hub).
    """
    priority = 'VERY_LOW'
    _TAG = '__history_buffer__'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for key, buf in list(scalars.items()):
            if isinstance(buf, HistoryBuffer):
                scalars[key] = {self._TAG: True, 'log': np.asarray(buf._log_history).tolist(),
                                'count': np.asarray(buf._count_history).tolist(), 'max_length': int(buf.max_length)}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
        for key, value in list(scalars.items()):
            if isinstance(value, dict) and value.get(self._TAG):
                scalars[key] = HistoryBuffer(value['log'], value['count'], value['max_length'])


@HOOKS.register_module()
class MergeAdaptersHook(Hook):
    """Fold mergeable adapters into the frozen weights before evaluation (``--merged``), so the
    shared path costs what the plain backbone costs. Evaluation-only: never use while training."""
    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self.merged = None

    def before_val(self, runner) -> None:
        from mtlbench.method import merge_adapters
        if self.merged is None:
            self.merged = merge_adapters(getattr(runner.model, 'module', runner.model))
            runner.logger.info(f'merged {len(self.merged)} adapter layers into their frozen weights')
