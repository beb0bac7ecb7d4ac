"""Safe checkpoint loading and atomic checkpoint writing for the mmengine Runner.

mmengine 0.10.7 (its last release) loads checkpoints with a bare ``torch.load``; torch >= 2.6
defaults to ``weights_only=True`` and resuming fails on mmengine's own ``HistoryBuffer``
(fixed upstream in mmengine PR #1670, unreleased). mtlbench neither falls back to
``weights_only=False`` (a checkpoint from elsewhere could run code) nor patches mmengine's
source: it registers a local-file loader that unpickles with ``weights_only=True`` and an
explicit allow-list of the plain types mmengine stores (``ALLOWED_GLOBALS``).
"""
from __future__ import annotations

import os
import os.path as osp
import logging
from typing import Any, Callable, List, Mapping, Optional

import numpy as np
import torch
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader

from mtlbench.errors import UserError

__all__ = ['ALLOWED_GLOBALS', 'safe_torch_load', 'register_safe_loader', 'CheckpointError',
           'find_resumable_checkpoint']


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that is not a checkpoint, is truncated, or holds disallowed objects."""


def _numpy_globals() -> List[Any]:
    out: List[Any] = [np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore
    out += [_reconstruct, scalar]
    # dtype classes (np.dtypes.Float64DType, ...) appear in pickles of numpy 2 arrays / scalars
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return out


ALLOWED_GLOBALS: List[Any] = [HistoryBuffer] + _numpy_globals()


def safe_torch_load(path: str, map_location: Any = 'cpu') -> Any:
    """``torch.load(weights_only=True)`` with mmengine's plain types allowed.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or holds objects
            outside the allow-list (named in the message).
    """
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f'{path}: cannot be loaded as a checkpoint ({first})') from err


def register_safe_loader() -> None:
    """Make mmengine's local-file checkpoint loading use :func:`safe_torch_load`."""

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def _load_local_safely(filename: str, map_location: Any) -> Any:
        return safe_torch_load(osp.expanduser(filename), map_location)


def find_resumable_checkpoint(work_dir: str,
                              accept: Optional[Callable[[dict], Optional[str]]] = None) -> str | None:
    """Newest checkpoint in ``work_dir`` that loads and that ``accept`` does not reject.

    Checkpoints (``epoch_N.pth``, ``preempt.pth``) are tried newest first by modification time,
    so normally only one file is read. ``accept(checkpoint)`` returns None to take it, or the
    reason to skip it (another model, say); every skipped file is logged with its reason.
    """
    if not osp.isdir(work_dir):
        return None
    paths = [osp.join(work_dir, n) for n in os.listdir(work_dir) if n.endswith('.pth') and not n.startswith('.')]
    for path in sorted(paths, key=osp.getmtime, reverse=True):
        try:
            ckpt = safe_torch_load(path)
            ckpt['meta']
        except Exception as err:  # noqa: BLE001 - unreadable checkpoints are skipped
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            print_log(f'--resume: skipping {path}: it does not load ({first})', logger='current',
                      level=logging.WARNING)
            continue
        reason = accept(ckpt) if accept is not None else None
        if reason is not None:
            print_log(f'--resume: skipping {path}: {reason}', logger='current', level=logging.WARNING)
            continue
        return path
    return None
    paths = [osp.join(work_dir, n) for n in os.listdir(work_dir) if n.endswith('.pth') and not n.startswith('.')]
    for path in sorted(paths, key=osp.getmtime, reverse=True):
        try:
            safe_torch_load(path)['meta']
        except Exception:  # noqa: BLE001 - unreadable checkpoints are skipped
            continue
        return path
    return None


def strict_load_problems(state: Mapping[str, Any], own: Mapping[str, Any]) -> List[str]:
    """What a strict ``load_state_dict(state)`` into a module whose state dict is ``own`` would
    trip over: shape differences, tensors the module lacks, tensors it would miss (one line each,
    with the first offenders named). Empty when the load is exact."""
    def first(items: List[str], n: int = 3) -> str:
        return ', '.join(items[:n]) + (f' (+{len(items) - n} more)' if len(items) > n else '')

    shapes = [f'{k} {list(state[k].shape)} vs {list(own[k].shape)}' for k in state
              if k in own and getattr(state[k], 'shape', None) != own[k].shape]
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    problems = []
    if shapes:
        problems.append(f'{len(shapes)} shape(s) differ (checkpoint vs model): {first(shapes, 2)}')
    if unexpected:
        problems.append(f'{len(unexpected)} checkpoint tensor(s) the model lacks: {first(unexpected)}')
    if missing:
        problems.append(f'{len(missing)} model tensor(s) absent from the checkpoint: {first(missing)}')
    return problems
