"""Epoch-based training loop that resumes mid-epoch and stops cleanly on pre-emption, and a
validation loop that evaluates under AMP (named option ``eval_amp``, :mod:`mtlbench.precision`).

mmengine's ``EpochBasedTrainLoop`` restarts an interrupted epoch from its first batch. This
loop skips the batches the checkpoint already trained on (through
:class:`~mtlbench.engine.data.ResumableSampler`, without loading them), and, when SIGTERM or
SIGINT arrives, finishes the current iteration, saves ``preempt.pth`` and stops, so a
pre-empted job loses at most one iteration.
"""
from __future__ import annotations

import signal
from typing import Any, Dict

from mmengine.logging import print_log
import torch
from mmengine.runner import EpochBasedTrainLoop, ValLoop
from mmengine.runner.loops import _update_losses

from mtlbench.registry import LOOPS

__all__ = ['ResumableEpochBasedTrainLoop', 'AmpValLoop', 'Preempted', 'PREEMPT_CHECKPOINT']

PREEMPT_CHECKPOINT = 'preempt.pth'


class Preempted(SystemExit):
    """Raised after the pre-emption checkpoint is saved; exit code 143 (as SIGTERM)."""

    def __init__(self, path: str) -> None:
        super().__init__(143)
        self.path = path


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` + mid-epoch resume + graceful pre-emption."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_signal = None
        self._old_handlers: Dict[int, Any] = {}

    # signal handling -------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self._stop_signal = signum
        print_log(f'received {signal.Signals(signum).name}: saving a checkpoint after this iteration',
                  logger='current')

    def _install_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def _restore_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def run(self):
        self._install_handlers()
        try:
            return super().run()
        finally:
            self._restore_handlers()

    # epoch -----------------------------------------------------------------
    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        done = self._iter - self._epoch * len(self.dataloader)
        sampler = self.dataloader.sampler
        if done > 0:
            if not hasattr(sampler, 'set_start'):
                raise RuntimeError('mid-epoch resume needs ResumableSampler')
            sampler.set_start(done * self.dataloader.batch_size)
            print_log(f'resuming epoch {self._epoch + 1} at iteration {done + 1}', logger='current')
        for idx, data_batch in enumerate(self.dataloader, start=max(done, 0)):
            self.run_iter(idx, data_batch)
            if self._stop_signal is not None:
                self._save_preempt_checkpoint()
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _save_preempt_checkpoint(self) -> None:
        import os.path as osp
        self.runner.save_checkpoint(self.runner.work_dir, PREEMPT_CHECKPOINT, by_epoch=False,
                                    meta=dict(epoch=self._epoch, iter=self._iter))
        path = osp.join(self.runner.work_dir, PREEMPT_CHECKPOINT)
        print_log(f'pre-empted: checkpoint saved to {path}; continue with --resume', logger='current')
        raise Preempted(path)


@LOOPS.register_module()
class AmpValLoop(ValLoop):
    """``ValLoop`` whose model forward runs under autocast in ``dtype`` (mmengine's own ``fp16``
    flag knows only float16); the metrics are computed outside autocast, as in training's loss.

    Args:
        dtype: ``'float16'`` or ``'bfloat16'``.
        device_type: autocast device; ``None`` = CUDA when available, else CPU.
    """

    def __init__(self, *args: Any, dtype: str = 'float16', device_type: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if dtype not in ('float16', 'bfloat16'):
            raise ValueError(f"AmpValLoop dtype must be 'float16' or 'bfloat16', got {dtype!r}")
        self.dtype = getattr(torch, dtype)
        self.device_type = device_type or ('cuda' if torch.cuda.is_available() else 'cpu')

    @torch.no_grad()
    def run_iter(self, idx, data_batch) -> None:
        self.runner.call_hook('before_val_iter', batch_idx=idx, data_batch=data_batch)
        with torch.autocast(self.device_type, dtype=self.dtype):
            outputs = self.runner.model.val_step(data_batch)
        outputs, self.val_loss = _update_losses(outputs, self.val_loss)
        self.evaluator.process(data_samples=outputs, data_batch=data_batch)
        self.runner.call_hook('after_val_iter', batch_idx=idx, data_batch=data_batch, outputs=outputs)
