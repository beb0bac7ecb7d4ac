"""mmengine Runner with the guarantees a days-long benchmark run needs.

* Checkpoints are written atomically (temp file in the same folder, fsync, ``os.replace``): a
  kill during a write never leaves a truncated ``.pth`` that a resume would read.
* Log history is stored as plain data (:class:`~mtlbench.engine.hooks.PlainCheckpointHook`) and
  checkpoints load through :func:`mtlbench.engine.checkpoint.safe_torch_load` (weights-only
  with an allow-list), so resuming works on torch >= 2.6 without trusting arbitrary pickles.
* The log file is plain text: colour codes are stripped (:mod:`mtlbench.engine.log_files`).
* SIGTERM / SIGINT (cluster pre-emption, Ctrl-C) stop training after the current iteration
  with a checkpoint saved (see :class:`mtlbench.engine.hooks.PreemptionHook`).
"""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import re

from mmengine.dist import is_main_process
from mmengine.runner import Runner

from mtlbench.engine.checkpoint import register_safe_loader

__all__ = ['MTLRunner']


_TEMP_CHECKPOINT = re.compile(r'^\..+\.pth\.tmp(\d+)$')


def remove_stale_temp_checkpoints(work_dir: str) -> list:
    """Delete temp checkpoints left by a writer that died (kill -9 or a full disk during a save),
    so they neither fill the disk nor confuse a resume; a live writer's file is kept."""
    removed = []
    if not osp.isdir(work_dir):
        return removed
    for name in os.listdir(work_dir):
        m = _TEMP_CHECKPOINT.match(name)
        if m and not _process_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(osp.join(work_dir, name))
                removed.append(name)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class MTLRunner(Runner):
    """``mmengine.runner.Runner`` with atomic checkpoint writes and safe loading."""

    def __init__(self, *args, **kwargs) -> None:
        register_safe_loader()
        super().__init__(*args, **kwargs)
        if is_main_process():
            remove_stale_temp_checkpoints(self.work_dir)
        from mtlbench.engine.hooks import PlainCheckpointHook
        if not any(isinstance(h, PlainCheckpointHook) for h in self.hooks):
            self.register_hook(PlainCheckpointHook())

    def build_logger(self, *args, **kwargs):
        """mmengine's logger, whose log file gets plain text (no ANSI colour codes)."""
        from mtlbench.engine.log_files import plain_file_handlers
        logger = super().build_logger(*args, **kwargs)
        plain_file_handlers(logger)
        return logger

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        tmp_name = f'.{filename}.tmp{os.getpid()}'
        tmp, final = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        try:
            super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
            if not is_main_process():  # mmengine writes checkpoints on rank 0 only
                return
            with open(tmp, 'rb') as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            # e.g. ENOSPC: a half-written temp file would keep the disk full for the next --resume
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
