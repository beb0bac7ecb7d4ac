"""Checkpoints of the TADFormer release (punpunzaz10/TADFormer) in mtlbench's TADFormer model.

The key layout is transcribed from the release's source text as read at its clean history
(``models/swin_transformer_tadformer.py``, ``models/lora.py`` (``TAModuleLinear``, ``DTF``,
``NaiveConvFilter``), ``models/swin_mtl.py``; the stored versions are those of commit 9ce9721,
an ancestor of 1f53b9f). Nothing of that repository was run or downloaded; no released
TADFormer checkpoint was at hand, so the mapping is checked against the layout as read, not a file.
The release saves like MTLoRA (``{'model': state, 'config': ...}``, same ``main.py``); the
wrapper (``MultiTaskSwin``: ``downsampler.<task>.downsample_i``, ``decoders.decoders.<task>``) is
MTLoRA's, so decoder keys map as in :mod:`~mtlbench.interop.mtlora_reference`. The HRNet head file
(``models/seg_hrnet.py``) is imported but not in the stored release; its layout is assumed to be
MTLoRA's, from which the release says its code derives.

Name mapping, reference -> mtlbench (:func:`tadformer_to_mtlbench`; :func:`mtlbench_to_tadformer`
is its inverse):

* ``backbone.task_prompts`` ``[P, C]`` -> ``backbone.prompt_embed.tad_prompts`` (task ``t`` owns
  rows ``t * prompt_len ...`` in both, in the run's task order);
* ``backbone.layers.i.downsample.{norm,reduction}`` -> ``backbone.layers.{i+1}.downsample.*``
  (PatchMerging moves to the start of the next stage, as for MTLoRA; the reduction is a plain
  ``Linear`` there too) and ``backbone.layers.i.downsample.task_prompts_up`` ->
  ``backbone.layers.{i+1}.prompt_merge.up``;
* ``backbone.layers.i.prompt_gate`` ``[1]`` -> ``backbone.layers.i.blocks.{last}.stage_gate.tad_gate``;
* every adapted linear: ``.linear.`` -> ``.base_layer.``, ``.lora_shared_{A,B}`` -> ``.lora_{A,B}``;
* the TPC's LayerNorm ``attn.proj.prompt_layernorm`` (last block of a stage) ->
  ``attn.proj.conditioning.norm``;
* the release's static filter ``.lora_filter.<task>.conv2d.{weight [r,1,3,3], bias [r]}`` -> one
  ``.task_filter.tad_weight [T, r, 3, 3]`` / ``.task_filter.tad_bias [T, r]`` stacked in task order;
* the paper's Dynamic Task Filter, as the release's ``DTF`` class lays it out (the class is in
  ``models/lora.py`` but its construction is commented out in the release):
  ``.lora_filter.conv.{weight [9r, r, 1, 1], bias [9r]}`` -> ``.task_filter.kernel_gen.{weight
  [9r, r], bias}`` (output ``c * 9 + tap`` in both), ``.lora_filter.chan_FilterNorm.{std, mean}``
  ``[9r]`` -> ``.task_filter.tad_tap_{std, mean}`` ``[r, 9]``.

Reference tensors no output reads, dropped on import (:data:`TADFORMER_INERT`) and written at the
reference's initial values on export, so the release can load an export strictly: the
``prompt_layernorm`` the release builds in the proj of every block that is not the last of its
stage (LayerNorm 1 / 0), and ``prompt_gate`` when the mtlbench model has no learned gate
(``gate='average'`` / ``'none'``: 0). The derived buffers (``relative_position_index``,
``attn_mask``) are dropped as for MTLoRA.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from mtlbench.engine.checkpoint import strict_load_problems
from mtlbench.interop.mtlora_reference import rename_shared_layout_to_mtlbench, rename_shared_layout_to_reference

__all__ = ['TADFORMER_INERT', 'is_tadformer_state', 'tadformer_to_mtlbench', 'mtlbench_to_tadformer',
           'import_tadformer_state']

TADFORMER_INERT = re.compile(r'^backbone\.layers\.\d+\.blocks\.\d+\.attn\.proj\.prompt_layernorm\.|'
                             r'^backbone\.layers\.\d+\.prompt_gate$')
_DERIVED = ('relative_position_index', 'attn_mask')
_PROMPTS = ('backbone.task_prompts', 'backbone.prompt_embed.tad_prompts')


def is_tadformer_state(state: Mapping[str, torch.Tensor]) -> bool:
    """A TADFormer release state dict: it has the task prompts (``backbone.task_prompts``)."""
    return _PROMPTS[0] in state or f'module.{_PROMPTS[0]}' in state


def _last_blocks(keys) -> Dict[int, int]:
    """Stage -> index of its last block, from the keys present."""
    last: Dict[int, int] = {}
    for key in keys:
        m = re.match(r'^backbone\.layers\.(\d+)\.blocks\.(\d+)\.', key)
        if m:
            last[int(m.group(1))] = max(last.get(int(m.group(1)), 0), int(m.group(2)))
    return last


def _rename(key: str, last: Dict[int, int]) -> str:
    m = re.match(r'^backbone\.layers\.(\d+)\.downsample\.(.*)$', key)
    if m:
        stage, rest = int(m.group(1)) + 1, m.group(2)
        if rest.startswith('task_prompts_up.'):
            return f'backbone.layers.{stage}.prompt_merge.up.{rest[len("task_prompts_up."):]}'
        return f'backbone.layers.{stage}.downsample.{rest}'
    m = re.match(r'^backbone\.layers\.(\d+)\.prompt_gate$', key)
    if m:
        stage = int(m.group(1))
        return f'backbone.layers.{stage}.blocks.{last[stage]}.stage_gate.tad_gate'
    if key == _PROMPTS[0]:
        return _PROMPTS[1]
    n = key.replace('.attn.proj.prompt_layernorm.', '.attn.proj.conditioning.norm.')
    n = n.replace('.lora_filter.conv.', '.task_filter.kernel_gen.')
    n = re.sub(r'\.lora_filter\.chan_FilterNorm\.(std|mean)$', r'.task_filter.tad_tap_\1', n)
    return rename_shared_layout_to_mtlbench(n)


def tadformer_to_mtlbench(ref_state: Mapping[str, torch.Tensor], tasks: Sequence[str],
                          keep: Optional[set] = None) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Reference state dict -> (mtlbench state dict, reference keys dropped as inert).

    Args:
        ref_state: the release model's ``state_dict()``.
        tasks: the model's task order (per-task filters are stacked in it).
        keep: mtlbench keys the target model has; an inert reference tensor (see the module doc)
            whose mapped name is not among them is dropped. ``None`` keeps everything.
    """
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in ref_state.items()}
    last = _last_blocks(state)
    out: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    static: Dict[str, Dict[str, Dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if key.endswith(_DERIVED):
            continue
        m = re.match(r'^(.*)\.lora_filter\.(\w+)\.conv2d\.(weight|bias)$', key)
        if m:
            static.setdefault(_rename(m.group(1), last), {}).setdefault(m.group(3), {})[m.group(2)] = value
            continue
        name = _rename(key, last)
        if name.endswith('.task_filter.kernel_gen.weight'):
            value = value.reshape(value.shape[0], -1)
        elif name.endswith(('.task_filter.tad_tap_std', '.task_filter.tad_tap_mean')):
            value = value.reshape(-1, 9)
        if keep is not None and name not in keep and TADFORMER_INERT.search(key):
            dropped.append(key)
            continue
        out[name] = value
    for prefix, parts in static.items():
        for part, per_task in parts.items():
            if set(per_task) != set(tasks):
                from mtlbench.interop.mtlora_reference import ReferenceCheckpointError
                raise ReferenceCheckpointError(f'{prefix}: per-task filters of tasks {sorted(per_task)}, '
                                               f'the model has {list(tasks)}')
            stacked = torch.stack([per_task[t] for t in tasks])
            out[f'{prefix}.task_filter.tad_{part}'] = stacked[:, :, 0] if part == 'weight' else stacked
    return out, dropped


def _rename_back(key: str) -> str:
    m = re.match(r'^backbone\.layers\.(\d+)\.(downsample|prompt_merge)\.(.*)$', key)
    if m:
        rest = m.group(3) if m.group(2) == 'downsample' else m.group(3).replace('up.', 'task_prompts_up.', 1)
        return f'backbone.layers.{int(m.group(1)) - 1}.downsample.{rest}'
    m = re.match(r'^backbone\.layers\.(\d+)\.blocks\.\d+\.stage_gate\.tad_gate$', key)
    if m:
        return f'backbone.layers.{m.group(1)}.prompt_gate'
    if key == _PROMPTS[1]:
        return _PROMPTS[0]
    n = key.replace('.attn.proj.conditioning.norm.', '.attn.proj.prompt_layernorm.')
    n = n.replace('.task_filter.kernel_gen.', '.lora_filter.conv.')
    n = re.sub(r'\.task_filter\.tad_tap_(std|mean)$', r'.lora_filter.chan_FilterNorm.\1', n)
    return rename_shared_layout_to_reference(n)


def mtlbench_to_tadformer(state: Mapping[str, torch.Tensor], tasks: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`tadformer_to_mtlbench`, with the release's inert tensors written at their
    initial values (module doc); the derived buffers are left out (the release recomputes them)."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r'^(.*)\.task_filter\.tad_(weight|bias)$', key)
        if m:
            for i, t in enumerate(tasks):
                part = value[i].unsqueeze(1) if m.group(2) == 'weight' else value[i]
                out[f'{_rename_back(m.group(1))}.lora_filter.{t}.conv2d.{m.group(2)}'] = part
            continue
        name = _rename_back(key)
        if key.endswith('.task_filter.kernel_gen.weight'):
            value = value[:, :, None, None]
        elif key.endswith(('.task_filter.tad_tap_std', '.task_filter.tad_tap_mean')):
            value = value.reshape(-1)
        out[name] = value
    last = _last_blocks(out)
    for key, value in list(out.items()):
        m = re.match(r'^backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.linear\.weight$', key)
        if m and int(m.group(2)) != last[int(m.group(1))]:
            prefix = key[:-len('linear.weight')] + 'prompt_layernorm.'
            out.setdefault(prefix + 'weight', value.new_ones(value.shape[1]))
            out.setdefault(prefix + 'bias', value.new_zeros(value.shape[1]))
    for stage in last:
        out.setdefault(f'backbone.layers.{stage}.prompt_gate', torch.zeros(1))
    return out


def import_tadformer_state(model: torch.nn.Module, ref_state: Mapping[str, torch.Tensor], source: str,
                           model_name: str) -> None:
    """Load a release state dict into mtlbench's TADFormer ``MultiTaskModel`` strictly (in place).

    Raises:
        ReferenceCheckpointError: a key unused or unfilled, or a shape differs (one line).
    """
    from mtlbench.interop.mtlora_reference import ReferenceCheckpointError

    own = model.state_dict()
    mapped, _ = tadformer_to_mtlbench(ref_state, list(model.tasks), keep=set(own))
    problems = strict_load_problems(mapped, own)
    if problems:
        raise ReferenceCheckpointError(f'{source} does not fit {model_name}: ' + '; '.join(problems))
    model.load_state_dict(mapped, strict=True)
