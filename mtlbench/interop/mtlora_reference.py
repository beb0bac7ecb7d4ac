"""Checkpoints of the MTLoRA code base (scale-lab/MTLoRA @ 333a375, and DiTASK, which is built on
it: the fork Malygossssss/DiTASK @ 1ef40ae) in mtlbench's MTLoRA / DiTASK models. TADFormer's
release saves the same way; its key mapping is :mod:`~mtlbench.interop.tadformer_reference`, which
:func:`import_reference_state` hands a TADFormer state to.

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
  order; DiTASK stores its CPA thetas under the same names (A only): ``.lora_shared_A`` ->
  ``.ditask_theta``, ``.lora_tasks_A.<task>`` ``[1, N-1]`` -> rows of ``.ditask_task_theta``
  (:data:`ADAPTERS`);
* decoder: ``downsampler.<task>.downsample_i.`` -> ``decoder.downsamplers.<task>.convs.i.``,
  ``decoders.decoders.<task>.last_layer.{0,1,3}.`` -> ``decoder.heads.<task>.{conv1,bn,conv2}.``.

The mapping is strict: every reference tensor is used (the only ones dropped are the buffers
the reference itself recomputes, ``relative_position_index`` and ``attn_mask``, see
:data:`DERIVED_BUFFERS`, and DiTASK's inert qkv task thetas when the model does not keep them,
see :data:`DITASK_INERT`), every tensor of the mtlbench model is filled, shapes agree; anything
else is one :class:`ReferenceCheckpointError` that names the first offenders.

Checked against the reference models themselves (``tests/test_interop.py``, and
``tools/parity_vs_reference.py`` at full size): the imported model gives the reference's outputs.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from mtlbench.engine.checkpoint import ALLOWED_GLOBALS, CheckpointError, strict_load_problems

__all__ = ['DERIVED_BUFFERS', 'ADAPTERS', 'ReferenceCheckpointError', 'REFERENCE_GLOBALS', 'is_reference_checkpoint',
           'reference_method',
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


def _first_int(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) and value else value


def describe_reference(ckpt: Mapping[str, Any]) -> str:
    """``'MTLoRA reference checkpoint (r=64, task_r=4, tasks semseg/...)'`` or ``'DiTASK reference
    checkpoint (cells=64/4, ...)'`` from its config, or from the tensor shapes without one."""
    kind = reference_method(ckpt)
    cfg = ckpt.get('config')
    parts = []
    try:
        section = cfg['MODEL']['TADMTL' if kind == 'tadformer' else kind.upper()]
        per_task = section.get('R_PER_TASK') or {}
        shared = _first_int(per_task.get('shared', section['R']))
        ranks = {_first_int(per_task[t]) for t in cfg['TASKS'] if t in per_task}
        task = ranks.pop() if len(ranks) == 1 else '?'
        parts.append({'mtlora': f'r={shared}, task_r={task}', 'tadformer': f'r={shared}'}.get(
            kind, f'cells={shared}/{task}'))
        if section.get('DOWNSAMPLER_ENABLED'):
            parts.append('plus')
        parts.append('tasks ' + '/'.join(cfg['TASKS']))
    except (TypeError, KeyError, IndexError, AttributeError):
        state = ckpt.get('model', {})
        a = next((v for k, v in state.items() if k.endswith('lora_shared_A')), None)
        tasks = sorted({k.rsplit('.', 1)[1] for k in state if '.lora_tasks_A.' in k}
                       | {k.split('.lora_filter.')[1].split('.')[0] for k in state if k.endswith('.conv2d.weight')
                          and '.lora_filter.' in k})
        if a is not None and a.dim() == 2:
            parts.append(f'r={a.shape[0]}' if kind in ('mtlora', 'tadformer') else f'cells={a.shape[1] + 1}')
        if tasks:
            parts.append('tasks ' + '/'.join(tasks))
    title = f'{_TITLE[kind]} reference checkpoint'
    return f'{title} ({", ".join(parts)})' if parts else title


def _rename_to_mtlbench(key: str) -> str:
    n = re.sub(r'^backbone\.layers\.(\d+)\.downsample\.',
               lambda m: f'backbone.layers.{int(m.group(1)) + 1}.downsample.', key)
    return rename_shared_layout_to_mtlbench(n)


def rename_shared_layout_to_mtlbench(n: str) -> str:
    """The renames every fork of the MTLoRA code base shares (LoRA linears, decoder downsamplers
    and heads); the stage shift of ``downsample`` is the caller's, as forks place it differently."""
    n = n.replace('.linear.', '.base_layer.')
    n = re.sub(r'\.lora_shared_([AB])$', r'.lora_\1', n)
    n = re.sub(r'^downsampler\.(\w+)\.downsample_(\d)\.', r'decoder.downsamplers.\1.convs.\2.', n)
    for idx, part in (('0', 'conv1'), ('1', 'bn'), ('3', 'conv2')):
        n = re.sub(rf'^decoders\.decoders\.(\w+)\.last_layer\.{idx}\.', rf'decoder.heads.\1.{part}.', n)
    return n


def _rename_to_reference(key: str) -> str:
    n = re.sub(r'^backbone\.layers\.(\d+)\.downsample\.',
               lambda m: f'backbone.layers.{int(m.group(1)) - 1}.downsample.', key)
    return rename_shared_layout_to_reference(n)


def rename_shared_layout_to_reference(n: str) -> str:
    """Inverse of :func:`rename_shared_layout_to_mtlbench`."""
    n = n.replace('.base_layer.', '.linear.')
    n = re.sub(r'\.lora_([AB])$', r'.lora_shared_\1', n)
    n = re.sub(r'^decoder\.downsamplers\.(\w+)\.convs\.(\d)\.', r'downsampler.\1.downsample_\2.', n)
    for idx, part in (('0', 'conv1'), ('1', 'bn'), ('3', 'conv2')):
        n = re.sub(rf'^decoder\.heads\.(\w+)\.{part}\.', rf'decoders.decoders.\1.last_layer.{idx}.', n)
    return n


#: Adapter tensors per method: the reference's shared factor name -> mtlbench's, its per-task
#: ParameterDict name -> mtlbench's tensor over tasks, and how per-task tensors are joined
#: (MTLoRA's task factors ``[r, C]`` are stacked to ``[T, r, C]``; DiTASK's task thetas ``[1, N-1]``
#: are concatenated to ``[T, N-1]``).
ADAPTERS = {
    'mtlora': dict(shared={'A': 'lora_A', 'B': 'lora_B'}, task={'A': 'lora_task_A', 'B': 'lora_task_B'}, stack=True),
    'ditask': dict(shared={'A': 'ditask_theta'}, task={'A': 'ditask_task_theta'}, stack=False),
}


def reference_to_mtlbench(ref_state: Mapping[str, torch.Tensor], tasks: Sequence[str],
                          method: str = 'mtlora') -> Dict[str, torch.Tensor]:
    """Reference state dict -> mtlbench names; per-task adapter tensors joined in ``tasks`` order.

    Only renames and joins: :func:`import_reference_state` checks the result against a model.

    Raises:
        ReferenceCheckpointError: a per-task tensor lacks one of ``tasks`` or has one more.
    """
    names = ADAPTERS[method]
    out: Dict[str, torch.Tensor] = {}
    stacks: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in ref_state.items():
        if key.endswith(DERIVED_BUFFERS):
            continue
        m = re.match(r'(.*)\.lora_tasks_([AB])\.(\w+)$', key)
        if m and m.group(2) in names['task']:
            stacks.setdefault(f'{_rename_to_mtlbench(m.group(1))}.{names["task"][m.group(2)]}', {})[m.group(3)] = value
            continue
        m = re.match(r'(.*)\.lora_shared_([AB])$', key)
        if m and m.group(2) in names['shared']:
            out[f'{_rename_to_mtlbench(m.group(1))}.{names["shared"][m.group(2)]}'] = value
            continue
        out[_rename_to_mtlbench(key)] = value
    for name, per_task in stacks.items():
        if set(per_task) != set(tasks):
            raise ReferenceCheckpointError(
                f'per-task {name} has tasks {sorted(per_task)} in the checkpoint, the model has {list(tasks)}')
        out[name] = (torch.stack if names['stack'] else torch.cat)([per_task[t] for t in tasks])
    return out


def mtlbench_to_reference(state: Mapping[str, torch.Tensor], tasks: Sequence[str],
                          method: str = 'mtlora') -> Dict[str, torch.Tensor]:
    """Inverse of :func:`reference_to_mtlbench` (the reference's derived buffers are left out:
    it recomputes them, and its ``load_checkpoint`` loads with ``strict=False``)."""
    names = ADAPTERS[method]
    shared = {v: k for k, v in names['shared'].items()}
    task = {v: k for k, v in names['task'].items()}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition('.')
        if leaf in task:
            if value.shape[0] != len(tasks):
                raise ReferenceCheckpointError(f'{key} holds {value.shape[0]} tasks, expected {len(tasks)}')
            for i, t in enumerate(tasks):
                out[f'{_rename_to_reference(prefix)}.lora_tasks_{task[leaf]}.{t}'] = \
                    value[i] if names['stack'] else value[i:i + 1]
        elif leaf in shared:
            out[f'{_rename_to_reference(prefix)}.lora_shared_{shared[leaf]}'] = value
        else:
            out[_rename_to_reference(key)] = value
    return out


def reference_method(ckpt_or_state: Mapping[str, Any]) -> str:
    """``'mtlora'``, ``'ditask'`` or ``'tadformer'``: TADFormer's release by its task prompts
    (:mod:`~mtlbench.interop.tadformer_reference`); else from the config's
    ``MODEL.DITASK.ENABLED`` when there is one, else from the tensors (MTLoRA has
    ``lora_shared_B``, DiTASK only thetas ``lora_shared_A``)."""
    from mtlbench.interop.tadformer_reference import is_tadformer_state

    cfg = ckpt_or_state.get('config') if 'model' in ckpt_or_state else None
    if is_tadformer_state(ckpt_or_state.get('model', ckpt_or_state) if 'model' in ckpt_or_state else ckpt_or_state):
        return 'tadformer'
    try:
        if cfg['MODEL']['DITASK']['ENABLED']:
            return 'ditask'
        if cfg['MODEL']['MTLORA']['ENABLED']:
            return 'mtlora'
    except (TypeError, KeyError):
        pass
    state = ckpt_or_state.get('model', ckpt_or_state) if 'model' in ckpt_or_state else ckpt_or_state
    if any(k.endswith('.lora_shared_B') for k in state):
        return 'mtlora'
    return 'ditask' if any(k.endswith('.lora_shared_A') for k in state) else 'mtlora'


#: DiTASK's release gives every qkv of a task-aware block a per-task theta whose outputs its
#: attention discards; mtlbench stores them only with ``inert_qkv_task_theta=True``. Without it
#: they are the one kind of reference tensor an import may leave unused.
DITASK_INERT = re.compile(r'\.attn\.qkv\.ditask_task_theta$')


def import_reference_state(model: torch.nn.Module, ref_state: Mapping[str, torch.Tensor],
                           source: str = 'reference checkpoint', model_name: Optional[str] = None) -> None:
    """Load a reference MTLoRA or DiTASK state dict into mtlbench's ``MultiTaskModel`` (in place),
    strictly.

    Args:
        model: an mtlbench ``MultiTaskModel`` built with method ``mtlora`` or ``ditask``.
        ref_state: the reference model's ``state_dict()`` (checkpoint ``'model'``).
        source: what to call the checkpoint in errors (its path and description).
        model_name: what to call the model in errors (default: ``mtlora r=..``).

    Raises:
        ReferenceCheckpointError: another method, a key unused or unfilled, or a shape differs
            (one line).
    """
    method = getattr(model, 'method', None)
    model_name = model_name or (f'{method.name} {method.variant()}' if method is not None else type(model).__name__)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in ref_state.items()}
    kind = reference_method(state)
    if method is not None and method.name != kind:
        raise ReferenceCheckpointError(f'{source} holds {_TITLE[kind]} weights; this run builds {model_name}')
    if kind == 'tadformer':
        from mtlbench.interop.tadformer_reference import import_tadformer_state
        return import_tadformer_state(model, state, source, model_name)
    mapped = reference_to_mtlbench(state, list(model.tasks), kind)
    own = model.state_dict()
    if kind == 'ditask':
        mapped = {k: v for k, v in mapped.items() if k in own or not DITASK_INERT.search(k)}
    problems = strict_load_problems(mapped, own)
    if problems:
        raise ReferenceCheckpointError(f'{source} does not fit {model_name}: ' + '; '.join(problems))
    model.load_state_dict(mapped, strict=True)


_TITLE = {'mtlora': 'MTLoRA', 'ditask': 'DiTASK', 'tadformer': 'TADFormer'}


def export_reference_checkpoint(model: torch.nn.Module, path: str) -> Dict[str, torch.Tensor]:
    """Write mtlbench's MTLoRA (DiTASK, TADFormer) weights as a reference-format checkpoint
    (``{'model': state}``), loadable by the reference's ``main.py --eval --resume PATH``. Returns
    the state written."""
    if model.method.name == 'tadformer':
        from mtlbench.interop.tadformer_reference import mtlbench_to_tadformer
        state = mtlbench_to_tadformer({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                      list(model.tasks))
        torch.save({'model': state}, path)
        return state
    state = mtlbench_to_reference({k: v.detach().cpu() for k, v in model.state_dict().items()}, list(model.tasks),
                                  model.method.name)
    torch.save({'model': state}, path)
    return state
