"""Dense-prediction tasks of the benchmark: what each predicts, its target format, its loss
and its primary metric.

This module is the contract between datasets (which produce targets), the model (which
produces predictions and losses) and the metric (which scores predictions). Everything that
depends on "which task is this" reads it from here, so adding a task is one entry.

Target formats (one sample, after the pipeline; a batch adds a leading ``B``):

============  =======================  ===============================================
task          target                   ignore
============  =======================  ===============================================
semseg        int64 ``[H, W]``          255
human_parts   int64 ``[H, W]``          255 (images without person parts: all 255)
sal           int64 ``[H, W]`` in {0,1}  255
normals       float32 ``[3, H, W]``     invalid pixels are the zero vector
depth         float32 ``[1, H, W]``     0 (missing depth)
============  =======================  ===============================================

Predictions (``MultiTaskModel.predict``, one sample): semseg / human_parts int64 ``[H, W]``
class ids; sal float32 ``[H, W]`` probabilities; normals float32 ``[3, H, W]`` unit vectors;
depth float32 ``[1, H, W]`` metres.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from mtlbench.errors import OptionError

__all__ = ['TaskSpec', 'TASKS', 'DATASET_TASKS', 'IGNORE_INDEX', 'num_outputs', 'check_tasks']

IGNORE_INDEX = 255


@dataclass(frozen=True)
class TaskSpec:
    """Static description of one task.

    Args:
        name: task key used everywhere (configs, targets, predictions, records).
        kind: ``'classification'`` (per-pixel classes), ``'binary'``, ``'normals'`` or ``'depth'``.
        loss: loss name (see ``mtlbench.losses``).
        loss_weight: reference loss weight (``metrics.md``); configs may override.
        primary_metric: metric key printed in tables and used for Δm.
        higher_is_better: direction of the primary metric.
    """
    name: str
    kind: str
    loss: str
    loss_weight: float
    primary_metric: str
    higher_is_better: bool


TASKS: Dict[str, TaskSpec] = {
    'semseg': TaskSpec('semseg', 'classification', 'cross_entropy', 1.0, 'mIoU', True),
    'human_parts': TaskSpec('human_parts', 'classification', 'cross_entropy', 2.0, 'mIoU', True),
    'sal': TaskSpec('sal', 'binary', 'balanced_bce', 5.0, 'mIoU', True),
    'normals': TaskSpec('normals', 'normals', 'normals_l1', 10.0, 'mean', False),
    'depth': TaskSpec('depth', 'depth', 'depth_l1', 1.0, 'rmse', False),
}

# Output channels per dataset and task (the head's last conv).
DATASET_TASKS: Dict[str, Dict[str, int]] = {
    'pascal_context': {'semseg': 21, 'human_parts': 7, 'sal': 1, 'normals': 3},
    'nyudv2': {'semseg': 40, 'depth': 1, 'normals': 3},
}


def num_outputs(dataset: str, task: str) -> int:
    """Output channels of ``task`` on ``dataset``."""
    return DATASET_TASKS[dataset][task]


def check_tasks(dataset: str, tasks) -> Tuple[str, ...]:
    """Validate a task list against a dataset; raises ``OptionError`` (a ``ValueError``) naming the valid ones."""
    if dataset not in DATASET_TASKS:
        raise OptionError(f'unknown dataset {dataset!r}; valid: {sorted(DATASET_TASKS)}')
    valid = DATASET_TASKS[dataset]
    tasks = tuple(tasks) if tasks else tuple(valid)
    bad = [t for t in tasks if t not in valid]
    if bad:
        raise OptionError(f'task(s) {bad} not in dataset {dataset!r}; valid: {list(valid)}')
    if len(set(tasks)) != len(tasks):
        raise OptionError(f'duplicate tasks in {list(tasks)}')
    return tasks
