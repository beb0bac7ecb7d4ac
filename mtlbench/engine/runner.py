"""mmengine Runner with the guarantees a days-long benchmark run needs.

* Checkpoints are written atomically (temp file in the same folder, fsync, ``os.replace``): a
  kill during a write never leaves a truncated ``.pth`` that a resume would read.
* Log history is stored as plain data (:class:`~mtlbench.engine.hooks.PlainCheckpointHook`) and
  checkpoints load through :func:`mtlbench.engine.checkpoint.safe_torch_load` (weights-only
  with an allow-list), so resuming works on torch >= 2.6 without trusting arbitrary pickles.
* SIGTERM / SIGINT (cluster pre-emption, Ctrl-C) stop training after the current iteration
  with a checkpoint saved (see :class:`mtlbench.engine.hooks.PreemptionHook`).
"""
from __future__ import annotations

import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.runner import Runner

from mtlbench.engine.checkpoint import register_safe_loader

__all__ = ['MTLRunner']


class MTLRunner(Runner):
    """``mmengine.runner.Runner`` with atomic checkpoint writes and safe loading."""

    def __init__(self, *args, **kwargs) -> None:
        register_safe_loader()
        super().__init__(*args, **kwargs)
        from mtlbench.engine.hooks import PlainCheckpointHook
        if not any(isinstance(h, PlainCheckpointHook) for h in self.hooks):
            self.register_hook(PlainCheckpointHook())

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        tmp_name = f'.{filename}.tmp{os.getpid()}'
        super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
        if not is_main_process():  # mmengine writes checkpoints on rank 0 only
            return
        tmp, final = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
