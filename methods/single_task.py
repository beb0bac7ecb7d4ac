"""Single-task full fine-tuning: one backbone per task, the baseline of Δm.

Each task gets its own fully fine-tuned Swin-T + decoder. ``mtlbench run --method single_task``
trains the tasks one after another (or one with ``--tasks``) and writes one run record per
task; Δm of every other run is computed against these records. The four PASCAL models
together hold 112,017,896 parameters in the reference code (the papers print 112.62M).
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.method import Method, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['SingleTaskConfig', 'SingleTask']


@dataclass
class SingleTaskConfig(MethodConfig):
    """Everything trains; the model is built for one task at a time."""
    train_linears: bool = True


@METHODS.register_module('single_task')
class SingleTask(Method):
    """Full fine-tuning of one model per task."""
    config_cls = SingleTaskConfig
    one_model_per_task = True

    def __init__(self, config: SingleTaskConfig, tasks) -> None:
        super().__init__(config, tasks)
        if len(self.tasks) != 1:
            raise ValueError(f'single_task builds one model per task; got tasks {list(self.tasks)} '
                             '(the CLI builds one model per task for you)')
