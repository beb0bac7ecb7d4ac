"""How a multi-process (DDP) run wraps the model and gathers metrics.

Matches the MTLoRA reference's DDP (``torch.nn.parallel.DistributedDataParallel`` with torch's
defaults) where mmengine's Runner differs from it:

* ``broadcast_buffers=True`` (torch's default, the reference's; mmengine's Runner passes
  ``False``): every forward copies rank 0's buffers, BatchNorm running statistics included, to
  the other ranks, so all ranks evaluate the same model. Buffers a method keeps rank-local are
  listed in ``_ddp_params_and_buffers_to_ignore`` (FAAR's PDRS scores do so).
* ``find_unused_parameters`` only when the method says some trainable parameters never receive
  a gradient (:meth:`mtlbench.method.Method.ddp_find_unused_parameters`; DiTASK's
  ``inert_qkv_task_theta``, which the DiTASK release also trains with
  ``find_unused_parameters=True``); otherwise off, as it costs a graph walk per step.
* Before every evaluation, rank 0's buffers are copied to every rank
  (:class:`BroadcastBuffersHook`): mmengine's ``val_step`` bypasses DDP's forward, so without it
  each rank would evaluate with its own last BatchNorm update. Rank 0's model is the one the
  checkpoint holds, so a DDP evaluation equals a later ``--eval-only`` of that checkpoint.
* ``sync_bn='torch'`` (mmengine's key, a named departure): BatchNorm statistics of the batch are
  synchronised across ranks (``torch.nn.SyncBatchNorm``); the reference keeps per-rank BN.
* Metrics are gathered with ``all_gather_object`` (``collect_device='gpu'``, mmengine's
  ``collect_results``; it runs over gloo on CPU too), not through a temporary folder on rank 0's
  disk, which the ranks of another node cannot see.
"""
from __future__ import annotations

from typing import Any

import torch
from mmengine.hooks import Hook

from mtlbench.errors import OptionError
from mtlbench.protocol import register_departure
from mtlbench.registry import HOOKS

__all__ = ['configure_distributed', 'broadcast_buffers', 'BroadcastBuffersHook']

register_departure('sync-bn', 'sync_bn', reference=None,
                   doc='BatchNorm statistics synchronised across DDP ranks (SyncBatchNorm)')


def configure_distributed(cfg: Any, find_unused_parameters: bool, cuda: bool) -> None:
    """Set the DDP wrapper, backend, SyncBN and metric gathering of a ``launcher != 'none'`` run.

    Args:
        cfg: the run's mmengine Config (``launcher`` set).
        find_unused_parameters: the method's answer (see the module docstring).
        cuda: whether ranks compute on CUDA GPUs (else gloo on CPU).

    Raises:
        OptionError: ``sync_bn`` other than ``None`` / ``'torch'``.
    """
    if cfg.get('launcher', 'none') == 'none':
        return
    sync_bn = cfg.get('sync_bn')
    if sync_bn not in (None, 'torch'):
        raise OptionError(f"sync_bn must be None or 'torch', got {sync_bn!r}")
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=True,
                   find_unused_parameters=bool(find_unused_parameters))
    if not cuda:
        cfg.env_cfg.dist_cfg = dict(backend='gloo')
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = dict(wrapper, **(cfg.get('model_wrapper_cfg') or {}))
    for key in ('val_evaluator', 'test_evaluator'):
        if cfg.get(key) is not None:
            cfg[key].collect_device = 'gpu'
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='BroadcastBuffersHook')]


def broadcast_buffers(model: torch.nn.Module) -> int:
    """Copy rank 0's buffers to every rank (no-op outside a multi-process group); buffers the
    model lists in ``_ddp_params_and_buffers_to_ignore`` stay rank-local, as under DDP.
    Returns the number of buffers broadcast."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    module = getattr(model, 'module', model)
    ignore = set(getattr(module, '_ddp_params_and_buffers_to_ignore', ()))
    count = 0
    for name, buf in module.named_buffers():
        if name not in ignore:
            dist.broadcast(buf, src=0)
            count += 1
    return count


@HOOKS.register_module()
class BroadcastBuffersHook(Hook):
    """Before each evaluation, every rank takes rank 0's buffers (BatchNorm running statistics)."""
    priority = 'VERY_HIGH'

    def before_val_epoch(self, runner) -> None:
        broadcast_buffers(runner.model)

    def before_test_epoch(self, runner) -> None:
        broadcast_buffers(runner.model)
