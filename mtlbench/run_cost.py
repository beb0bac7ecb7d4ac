"""Projected wall time of a config's whole schedule on a benched device ("GPU-hours per
leaderboard row" before a sweep is launched).

The projection multiplies what the config schedules by what ``mtlbench bench`` measured:

- training: ``max_epochs x iterations per epoch x train batch / training img/s``, iterations per
  epoch from the real split size (the dataset class's ``split_sizes``, e.g. PASCAL-Context
  4,998 train / 5,105 val, NYUDv2 795 / 654) and ``drop_last``;
- evaluation: the passes mmengine's ``EpochBasedTrainLoop`` runs (every ``val_interval`` epochs
  from ``val_begin``, and after the last epoch), plus one before training when the config asks
  for it, each ``val images / evaluation img/s`` (forward + scoring);
- checkpoints: the writes ``CheckpointHook`` makes (every ``interval`` epochs from
  ``save_begin``, and the last one with ``save_last``), each timed once like a real write.

Not counted: data loading (``mtlbench bench --loader`` checks it keeps up), start-up, logging.
The throughputs are those of the benched batch size on one device; bench at the config's batch
size on the target device for the figure a run will see.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

import torch

from mtlbench.config import inner_dataset

__all__ = ['Schedule', 'schedule_from_config', 'split_size', 'time_checkpoint_write',
           'project_full_run', 'format_full_run']


@dataclass
class Schedule:
    """What a config's run does, in counts."""
    epochs: int
    iters_per_epoch: int
    train_batch: int
    train_images: int
    val_images: int
    val_passes: int
    checkpoint_writes: int


def split_size(dataset_cfg: Any) -> int:
    """Images of a dataset config's split: the dataset class's published split size, capped
    by ``max_samples``."""
    import mtlbench.datasets  # noqa: F401  (registers the dataset classes)
    from mtlbench.registry import DATASETS

    cls = DATASETS.get(dataset_cfg['type'])
    sizes = getattr(cls, 'METAINFO', {}).get('split_sizes') if cls is not None else None
    if not sizes or dataset_cfg.get('split') not in sizes:
        raise ValueError(f"no known size for split {dataset_cfg.get('split')!r} of dataset "
                         f"{dataset_cfg['type']!r} (METAINFO['split_sizes'])")
    n = int(sizes[dataset_cfg['split']])
    cap = dataset_cfg.get('max_samples')
    return min(n, int(cap)) if cap else n


def _every(epochs: int, interval: int, begin: int) -> set:
    """1-based epochs ``e >= begin + 1`` with ``(e - begin) % interval == 0`` (mmengine's
    ``every_n_epochs`` with a start)."""
    return {e for e in range(1, epochs + 1) if e > begin and (e - begin) % interval == 0}


def schedule_from_config(cfg: Any) -> Schedule:
    """Count iterations, evaluation passes and checkpoint writes of ``cfg`` as mmengine's
    ``EpochBasedTrainLoop`` and ``CheckpointHook`` run them."""
    train_cfg = cfg.train_cfg
    epochs = int(train_cfg.max_epochs)
    loader = cfg.train_dataloader
    batch = int(loader.batch_size)
    train_images = split_size(inner_dataset(loader))
    iters = train_images // batch if loader.get('drop_last', False) else math.ceil(train_images / batch)

    val_passes = 0
    if cfg.get('val_dataloader') is not None and cfg.get('val_cfg') is not None:
        interval, begin = int(train_cfg.get('val_interval', 1)), int(train_cfg.get('val_begin', 1))
        val_passes = len({e for e in range(1, epochs + 1) if e >= begin and (e % interval == 0 or e == epochs)})
        hooks = [h for h in cfg.get('custom_hooks') or [] if isinstance(h, dict)]
        val_passes += sum(bool(h.get('eval_before_train')) for h in hooks)
    val_images = split_size(inner_dataset(cfg.val_dataloader)) if val_passes else 0

    ckpt = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    writes = 0
    if ckpt and ckpt.get('by_epoch', True) and ckpt.get('interval', -1) > 0:
        saved = _every(epochs, int(ckpt['interval']), int(ckpt.get('save_begin', 0)))
        if ckpt.get('save_last', True):
            saved.add(epochs)
        writes = len(saved)
    elif ckpt and ckpt.get('interval', -1) > 0:  # by iteration
        total = epochs * iters
        writes = len({i for i in range(1, total + 1) if i % int(ckpt['interval']) == 0} |
                     ({total} if ckpt.get('save_last', True) else set()))
    return Schedule(epochs=epochs, iters_per_epoch=iters, train_batch=batch,
                    train_images=train_images, val_images=val_images, val_passes=val_passes,
                    checkpoint_writes=writes)


def time_checkpoint_write(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          directory: str) -> Tuple[float, int]:
    """Seconds and bytes of one checkpoint write as ``MTLRunner`` makes it (model and optimizer
    state with ``torch.save``, ``fsync``, rename), into a temporary file under ``directory``."""
    os.makedirs(directory, exist_ok=True)
    state = {'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(), 'meta': {}}
    with tempfile.TemporaryDirectory(dir=directory, prefix='.ckpt-bench-') as tmp:
        path, final = os.path.join(tmp, '.ckpt.tmp'), os.path.join(tmp, 'ckpt.pth')
        t0 = time.perf_counter()
        torch.save(state, path)
        with open(path, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(path, final)
        seconds = time.perf_counter() - t0
        return seconds, os.path.getsize(final)


def project_full_run(schedule: Schedule, train_img_s: float, eval_img_s: float,
                     checkpoint_s: float) -> Dict[str, Any]:
    """Projected seconds of each part of ``schedule`` and the total hours.

    Returns:
        ``train_s``, ``eval_s``, ``checkpoint_s``, ``total_s``, ``total_h`` and the
        ``schedule`` counts (a dict), for the bench record's ``full_run`` field.
    """
    train_s = schedule.epochs * schedule.iters_per_epoch * schedule.train_batch / train_img_s
    eval_s = schedule.val_passes * schedule.val_images / eval_img_s
    ckpt_s = schedule.checkpoint_writes * checkpoint_s
    total = train_s + eval_s + ckpt_s
    return {'train_s': round(train_s, 1), 'eval_s': round(eval_s, 1), 'checkpoint_s': round(ckpt_s, 1),
            'total_s': round(total, 1), 'total_h': round(total / 3600, 2), 'schedule': asdict(schedule)}


def format_full_run(full_run: Dict[str, Any]) -> str:
    """One line: ``projected full run: X h on <device> (train ..., evaluations ..., checkpoints ...)``."""
    sched = full_run['schedule']
    return (f"projected full run: {full_run['total_h']:.1f} h on {full_run['device']} "
            f"(train {full_run['train_s'] / 3600:.1f} h, {sched['val_passes']} evaluations "
            f"{full_run['eval_s'] / 3600:.1f} h, {sched['checkpoint_writes']} checkpoint writes "
            f"{full_run['checkpoint_s'] / 3600:.2f} h)")
