"""Checkpoints of the MTLoRA reference (scale-lab/MTLoRA @ 333a375) in mtlbench's MTLoRA model.

The reference's ``main.py`` saves (``utils.save_checkpoint``) a dict with the model's state dict
under ``'model'``, its optimizer / scheduler / scaler states, ``'epoch'``, ``'max_accuracy'``
and the run's yacs ``CfgNode`` under ``'config'``; the released checkpoint has the same layout.
Only ``'model'`` (and, to describe the checkpoint, ``'config'``) are read here.

Loading never unpickles code: the file is read with ``torch.load(weights_only=True)`` and the
one class the reference pickles besides plain data, ``yacs.config.CfgNode``, is rebuilt as a
plain ``OrderedDict`` (read it with ``cfg['MODEL']['MTLORA']``; yacs is neither needed nor
imported, and no yacs code runs).

Name mapping, reference -> mtlbench (:func:`reference_to_mtlbench`; :func:`mtlbench_to_reference`
is its inverse):

* ``backbone.layers.i.downsample`` (PatchMerging at the end of stage i) ->
  ``backbone.layers.{i+1}.downsample`` (timm / mtlbench put it at the start of the next stage);
* LoRA wrappers: ``.linear.`` -> ``.base_layer.``, ``.lora_shared_{A,B}`` -> ``.lora_{A,B}``,
  per-task ``.lora_tasks_{A,B}.<task>`` -> one ``.lora_task_{A,B}`` stacked in the model's task
  order;
* decoder: ``downsampler.<task>.downsample_i.`` -> ``decoder.downsamplers.<task>.convs.i.``,
  ``decoders.decoders.<task>.last_layer.{0,1,3}.`` -> ``decoder.heads.<task>.{conv1,bn,conv2}.``.

The mapping is strict: every reference tensor is used (the only ones dropped are the buffers
the reference itself recomputes, ``relative_position_index`` and ``attn_mask``, see
:data:`DERIVED_BUFFERS`), every tensor of the mtlbench model is filled, shapes agree; anything
else is one :class:`ReferenceCheckpointError` that names the first offenders.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from mtlbench.engine.checkpoint import ALLOWED_GLOBALS, CheckpointError

__all__ = ['DERIVED_BUFFERS', 'ReferenceCheckpointError', 'REFERENCE_GLOBALS', 'is_reference_checkpoint',
           'load_reference_checkpoint', 'reference_to_mtlbench', 'mtlbench_to_reference', 'import_reference_state',
           'export_reference_checkpoint', 'describe_reference']

#: Reference buffers that are functions of the architecture (recomputed at build time; the
#: reference's own ``load_checkpoint`` deletes ``attn_mask`` before loading): not transferred.
DERIVED_BUFFERS = ('relative_position_index', 'attn_mask')


class ReferenceCheckpointError(CheckpointError):
    """A reference-format checkpoint that does not fit the mtlbench model (or is not one)."""


#: what ``weights_only`` unpickling of a reference checkpoint may construct
#: (a yacs ``CfgNode`` is a ``dict`` subclass pickled as new-object + items + instance flags:
#: rebuilt as an ``OrderedDict``, the one mapping type whose flags torch's weights-only
#: unpickler accepts; its ``set`` of deprecated keys is plain data)
REFERENCE_GLOBALS: List[Any] = [(OrderedDict, 'yacs.config.CfgNode'), set] + list(ALLOWED_GLOBALS)


def load_reference_checkpoint(path: str) -> Dict[str, Any]:
    """Read a reference-format checkpoint safely (``weights_only``; yacs config as plain data).

    Raises:
        CheckpointError: missing, truncated or holding objects outside the allow-list.
        ReferenceCheckpointError: no ``'model'`` state dict of tensors.
    """
    from mtlbench.interop.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)
    if not is_reference_checkpoint(ckpt):
        raise ReferenceCheckpointError(f'{path}: not an MTLoRA reference checkpoint (no "model" dict of tensors)')
    return ckpt


def is_reference_checkpoint(ckpt: Any) -> bool:
    """The reference's layout: a dict with a ``'model'`` dict of tensors and no mmengine
    ``'state_dict'`` / ``'meta'``."""
    return (isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict) and 'state_dict' not in ckpt
            and bool(ckpt['model']) and all(isinstance(v, torch.Tensor) for v in ckpt['model'].values()))


def describe_reference(ckpt: Mapping[str, Any]) -> str:
    """``'MTLoRA reference checkpoint (r=64, task_r=4, tasks semseg/...)'`` from its config,
    or from the tensor shapes when the config is absent."""
    cfg = ckpt.get('config')
    parts = []
    try:
        mt = cfg['MODEL']['MTLORA']
        if not mt['ENABLED']:
            return 'reference checkpoint without MTLoRA (MODEL.MTLORA.ENABLED false)'
        per_task = mt.get('R_PER_TASK') or {}
        shared = per_task.get('shared', mt['R'])
        parts.append(f'r={shared[0] if isinstance(shared, (list, tuple)) else shared}')
        task_ranks = {t: per_task[t] for t in cfg['TASKS'] if t in per_task}
        ranks = {(v[0] if isinstance(v, (list, tuple)) else v) for v in task_ranks.values()}
        if len(ranks) == 1:
            parts.append(f'task_r={ranks.pop()}')
        if mt.get('DOWNSAMPLER_ENABLED'):
            parts.append('plus')
        parts.append('tasks ' + '/'.join(cfg['TASKS']))
    except (TypeError, KeyError, IndexError):
        state = ckpt.get('model', {})
        a = next((v for k, v in state.items() if k.endswith('lora_shared_A')), None)
        tasks = sorted({k.rsplit('.', 1)[1] for k in state if '.lora_tasks_A.' in k})
        if a is not None:
            parts.append(f'r={a.shape[0]}')
        if tasks:
            parts.append('tasks ' + '/'.join(tasks))
    return f'MTLoRA reference checkpoint ({", ".join(parts)})' if parts else 'MTLoRA reference checkpoint'


def _rename_to_mtlbench(key: str) -> str:
    n = re.sub(r'^backbone\.layers\.(\d+)\.downsample\.',
               lambda m: f'backbone.layers.{int(m.group(1)) + 1}.downsample.', key)
    n = n.replace('.linear.', '.base_layer.')
    n = re.sub(r'\.lora_shared_([AB])$', r'.lora_\1', n)
    n = re.sub(r'^downsampler\.(\w+)\.downsample_(\d)\.', r'decoder.downsamplers.\1.convs.\2.', n)
    for idx, part in (('0', 'conv1'), ('1', 'bn'), ('3', 'conv2')):
        n = re.sub(rf'^decoders\.decoders\.(\w+)\.last_layer\.{idx}\.', rf'decoder.heads.\1.{part}.', n)
    return n


def _rename_to_reference(key: str) -> str:
    n = re.sub(r'^backbone\.layers\.(\d+)\.downsample\.',
               lambda m: f'backbone.layers.{int(m.group(1)) - 1}.downsample.', key)
    n = n.replace('.base_layer.', '.linear.')
    n = re.sub(r'\.lora_([AB])$', r'.lora_shared_\1', n)
    n = re.sub(r'^decoder\.downsamplers\.(\w+)\.convs\.(\d)\.', r'downsampler.\1.downsample_\2.', n)
    for idx, part in (('0', 'conv1'), ('1', 'bn'), ('3', 'conv2')):
        n = re.sub(rf'^decoder\.heads\.(\w+)\.{part}\.', rf'decoders.decoders.\1.last_layer.{idx}.', n)
    return n


def reference_to_mtlbench(ref_state: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Reference state dict -> mtlbench names; task LoRA factors stacked in ``tasks`` order.

    Only renames and stacks: :func:`import_reference_state` checks the result against a model.

    Raises:
        ReferenceCheckpointError: a task factor lacks one of ``tasks`` or has one more.
    """
    out: Dict[str, torch.Tensor] = {}
    stacks: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in ref_state.items():
        if key.endswith(DERIVED_BUFFERS):
            continue
        m = re.match(r'(.*)\.lora_tasks_([AB])\.(\w+)$', key)
        if m:
            stacks.setdefault(f'{_rename_to_mtlbench(m.group(1))}.lora_task_{m.group(2)}', {})[m.group(3)] = value
            continue
        out[_rename_to_mtlbench(key)] = value
    for name, per_task in stacks.items():
        if set(per_task) != set(tasks):
            raise ReferenceCheckpointError(
                f'task LoRA {name} has tasks {sorted(per_task)} in the checkpoint, the model has {list(tasks)}')
        out[name] = torch.stack([per_task[t] for t in tasks])
    return out


def mtlbench_to_reference(state: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`reference_to_mtlbench` (the reference's derived buffers are left out:
    it recomputes them, and its ``load_checkpoint`` loads with ``strict=False``)."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r'(.*)\.lora_task_([AB])$', key)
        if m:
            if value.shape[0] != len(tasks):
                raise ReferenceCheckpointError(f'{key} stacks {value.shape[0]} tasks, expected {len(tasks)}')
            for i, t in enumerate(tasks):
                out[f'{_rename_to_reference(m.group(1))}.lora_tasks_{m.group(2)}.{t}'] = value[i]
            continue
        out[_rename_to_reference(key)] = value
    return out


def _first(items: List[str], n: int = 3) -> str:
    return ', '.join(items[:n]) + (f' (+{len(items) - n} more)' if len(items) > n else '')


def import_reference_state(model: torch.nn.Module, ref_state: Mapping[str, torch.Tensor],
                           source: str = 'reference checkpoint', model_name: Optional[str] = None) -> None:
    """Load a reference MTLoRA state dict into mtlbench's ``MultiTaskModel`` (in place), strictly.

    Args:
        model: an mtlbench ``MultiTaskModel`` built with method ``mtlora``.
        ref_state: the reference model's ``state_dict()`` (checkpoint ``'model'``).
        source: what to call the checkpoint in errors (its path and description).
        model_name: what to call the model in errors (default: ``mtlora r=.. on <dataset>``).

    Raises:
        ReferenceCheckpointError: a key unused or unfilled, or a shape differs (one line).
    """
    method = getattr(model, 'method', None)
    model_name = model_name or (f'{method.name} {method.variant()}' if method is not None else type(model).__name__)
    if method is not None and method.name != 'mtlora':
        raise ReferenceCheckpointError(f'{source} holds an MTLoRA model; this run builds {model_name}')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in ref_state.items()}
    mapped = reference_to_mtlbench(state, list(model.tasks))
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    shapes = [f'{k} {list(mapped[k].shape)} vs {list(own[k].shape)}' for k in mapped
              if k in own and mapped[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = []
        if shapes:
            problems.append(f'{len(shapes)} shape(s) differ (checkpoint vs model): {_first(shapes, 2)}')
        if unexpected:
            problems.append(f'{len(unexpected)} checkpoint tensor(s) the model lacks: {_first(unexpected)}')
        if missing:
            problems.append(f'{len(missing)} model tensor(s) absent from the checkpoint: {_first(missing)}')
        raise ReferenceCheckpointError(f'{source} does not fit {model_name}: ' + '; '.join(problems))
    model.load_state_dict(mapped, strict=True)


def export_reference_checkpoint(model: torch.nn.Module, path: str) -> Dict[str, torch.Tensor]:
    """Write mtlbench's MTLoRA weights as a reference-format checkpoint (``{'model': state}``),
    loadable by the reference's ``main.py --eval --resume PATH``. Returns the state written."""
    state = mtlbench_to_reference({k: v.detach().cpu() for k, v in model.state_dict().items()}, list(model.tasks))
    torch.save({'model': state}, path)
    return state
