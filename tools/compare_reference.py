#!/usr/bin/env python
"""Numerical equivalence of mtlbench's MTLoRA with the reference implementation.

Builds the reference model from a user's checkout of scale-lab/MTLoRA (``--reference-dir``;
never vendored into mtlbench, never needed by the tests) and mtlbench's model with the same
configuration, copies the reference's weights into mtlbench's (name mapping below), gives every
LoRA B a random non-zero value so the adapters matter, and prints the maximum absolute
difference of the per-task outputs on the same input (eval mode). ``--grads`` also compares the
gradients of every parameter both models have, in float64.

    python tools/compare_reference.py --method mtlora --reference-dir ~/src/MTLoRA [--r 64] [--img-size 448] [--grads]

TADFormer and DiTASK are not supported: TADFormer's repository must not be run (see
``shared/reference/methods.md``), and DiTASK's release lacks its model file.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
import types
from types import SimpleNamespace
from typing import Dict

import torch

TASKS = ('semseg', 'human_parts', 'sal', 'normals')
NUM_OUTPUTS = {'semseg': 21, 'human_parts': 7, 'sal': 1, 'normals': 3}


def _import_reference(reference_dir: str):
    """Import the reference's model modules without running its ``models/__init__.py`` (which
    pulls in its whole training stack)."""
    reference_dir = os.path.abspath(reference_dir)
    if not os.path.isfile(os.path.join(reference_dir, 'models', 'swin_transformer_mtlora.py')):
        raise SystemExit(f'{reference_dir} is not a checkout of scale-lab/MTLoRA (models/swin_transformer_mtlora.py missing)')
    if 'ptflops' not in sys.modules:  # imported by the reference's HRNet module, not needed here
        ptflops = types.ModuleType('ptflops')
        ptflops.get_model_complexity_info = lambda *a, **k: (None, None)
        sys.modules['ptflops'] = ptflops
    pkg = types.ModuleType('models')
    pkg.__path__ = [os.path.join(reference_dir, 'models')]
    sys.modules['models'] = pkg
    sys.path.insert(0, reference_dir)
    swin = importlib.import_module('models.swin_transformer_mtlora')
    mtl = importlib.import_module('models.swin_mtl')
    return swin, mtl


class _Cfg(SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def build_reference(reference_dir: str, r: int, task_r: int, img_size: int, plus: bool):
    swin, mtl = _import_reference(reference_dir)
    ranks = {'shared': r, **{t: task_r for t in TASKS}}
    mtlora = _Cfg(ENABLED=True, QKV_ENABLED=True, PROJ_ENABLED=True, FC1_ENABLED=True, FC2_ENABLED=True,
                  DOWNSAMPLER_ENABLED=plus, R_PER_TASK_LIST=[ranks] * 4, SHARED_SCALE=[4.0] * 4,
                  SCALE_PER_TASK_LIST=[{t: 4.0 for t in TASKS}] * 4, DROPOUT=[0.05] * 4,
                  INTERMEDIATE_SPECIALIZATION=False, TRAINABLE_SCALE_SHARED=False, TRAINABLE_SCALE_PER_TASK=False,
                  SHARED_MODE='matrix')
    encoder = swin.SwinTransformerMTLoRA(img_size=img_size, patch_size=4, in_chans=3, num_classes=0, embed_dim=96,
                                         depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                         drop_path_rate=0.2, tasks=list(TASKS), mtlora=mtlora)
    config = _Cfg(TASKS=list(TASKS), TASKS_CONFIG=_Cfg(ALL_TASKS=_Cfg(NUM_OUTPUT=NUM_OUTPUTS)),
                  MODEL=_Cfg(DECODER_HEAD={t: 'hrnet' for t in TASKS}, MTLORA=mtlora, DECODER_CHANNELS=[18, 36, 72, 144],
                             DECODER_DOWNSAMPLER=True, PER_TASK_DOWNSAMPLER=True, SWIN=_Cfg(WINDOW_SIZE=7)),
                  DATA=_Cfg(IMG_SIZE=img_size))
    return mtl.MultiTaskSwin(encoder, config)


def _load_reference_module(reference_dir: str, name: str):
    """A top-level module of the reference checkout (``optimizer``, ``lr_scheduler`` ...) under a
    private name, so that it cannot shadow anything of ours."""
    spec = importlib.util.spec_from_file_location(f'_mtlora_ref_{name}', os.path.join(reference_dir, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_optimizer(reference_dir: str, ref_model, lr: float, weight_decay: float, plus: bool = False):
    """The reference's own optimizer (``optimizer.build_optimizer``: AdamW, its decay groups),
    built before the LoRA freezing as ``main.py`` does, then the reference's freezing
    (``mark_only_lora_as_trainable`` with the config defaults)."""
    opt_mod = _load_reference_module(reference_dir, 'optimizer')
    config = _Cfg(TRAIN=_Cfg(OPTIMIZER=_Cfg(NAME='adamw', EPS=1e-8, BETAS=(0.9, 0.999), MOMENTUM=0.9),
                             BASE_LR=lr, WEIGHT_DECAY=weight_decay))
    optimizer = opt_mod.build_optimizer(config, ref_model)
    lora = importlib.import_module('models.lora')
    lora.mark_only_lora_as_trainable(ref_model.backbone, bias='none', freeze_patch_embed=False, freeze_norm=False,
                                     free_relative_bias=False,
                                     freeze_downsample_reduction=plus)
    return optimizer


def reference_weight_decay(reference_dir: str, ref_model, weight_decay: float):
    """``({name: weight decay}, [trainable names])`` of the reference's optimizer groups."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its freezing choices
        optimizer = reference_optimizer(reference_dir, ref_model, 1e-3, weight_decay)
    by_id = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    decay = {n: by_id[id(p)] for n, p in ref_model.named_parameters()}
    return decay, [n for n, p in ref_model.named_parameters() if p.requires_grad]


def build_ours(r: int, task_r: int, img_size: int, plus: bool):
    import mtlbench.methods  # noqa: F401
    from mtlbench.model import MultiTaskModel
    return MultiTaskModel('pascal_context', dict(type='mtlora', r=r, task_r=task_r, plus=plus),
                          dict(arch='tiny', img_size=(img_size, img_size), drop_path_rate=0.2), tasks=TASKS)


def map_reference_to_ours(ref_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Reference parameter names -> mtlbench names (task LoRA factors stacked over tasks)."""
    out: Dict[str, torch.Tensor] = {}
    stacks: Dict[str, Dict[str, torch.Tensor]] = {}
    for k, v in ref_state.items():
        if k.startswith('backbone.head') or k.endswith(('relative_position_index', 'attn_mask', 'num_batches_tracked')):
            continue
        n = k
        # PatchMerging: end of stage i in the reference, start of stage i + 1 in timm / mtlbench
        n = re.sub(r'backbone\.layers\.(\d+)\.downsample', lambda m: f'backbone.layers.{int(m.group(1)) + 1}.downsample', n)
        n = n.replace('.linear.', '.base_layer.').replace('.lora_shared_A', '.lora_A').replace('.lora_shared_B', '.lora_B')
        m = re.match(r'(.*)\.lora_tasks_([AB])\.(\w+)$', n)
        if m:
            stacks.setdefault(f'{m.group(1)}.lora_task_{m.group(2)}', {})[m.group(3)] = v
            continue
        n = re.sub(r'^downsampler\.(\w+)\.downsample_(\d)\.', r'decoder.downsamplers.\1.convs.\2.', n)
        n = re.sub(r'^decoders\.decoders\.(\w+)\.last_layer\.0\.', r'decoder.heads.\1.conv1.', n)
        n = re.sub(r'^decoders\.decoders\.(\w+)\.last_layer\.1\.', r'decoder.heads.\1.bn.', n)
        n = re.sub(r'^decoders\.decoders\.(\w+)\.last_layer\.3\.', r'decoder.heads.\1.conv2.', n)
        out[n] = v
    for name, per_task in stacks.items():
        out[name] = torch.stack([per_task[t] for t in TASKS])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--method', default='mtlora', choices=['mtlora'])
    p.add_argument('--reference-dir', required=True)
    p.add_argument('--r', type=int, default=64)
    p.add_argument('--task-r', type=int, default=4)
    p.add_argument('--plus', action='store_true')
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--grads', action='store_true',
                   help='also compare the gradients of every mapped parameter (float64, eval mode: no dropout, no drop path)')
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    ref = build_reference(args.reference_dir, args.r, args.task_r, args.img_size, args.plus).eval()
    with torch.no_grad():  # non-zero B so that every adapter contributes
        for n, prm in ref.named_parameters():
            if 'lora_' in n and ('_B' in n):
                prm.normal_(0, 0.02)
        for n, buf in ref.named_buffers():
            if n.endswith('running_mean'):
                buf.normal_(0, 0.1)
            elif n.endswith('running_var'):
                buf.uniform_(0.5, 1.5)
    ours = build_ours(args.r, args.task_r, args.img_size, args.plus).eval()
    mapped = map_reference_to_ours(ref.state_dict())
    own = ours.state_dict()
    missing = [k for k in own if k not in mapped and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in mapped if k not in own]
    shape = [k for k in mapped if k in own and mapped[k].shape != own[k].shape]
    if missing or unexpected or shape:
        print(f'weight mapping incomplete: missing {missing[:8]} unexpected {unexpected[:8]} shape {shape[:8]}')
        return 1
    ours.load_state_dict(mapped, strict=False)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch.no_grad():
        out_ref = ref(x)
        out_ours = ours(x)
    print(f'MTLoRA r={args.r} task_r={args.task_r} plus={args.plus} img={args.img_size} batch={args.batch_size}')
    print(f'  mtlbench trainable params: {ours.param_breakdown()["total_trainable"]:,}')
    worst = 0.0
    for t in TASKS:
        diff = (out_ref[t] - out_ours[t]).abs().max().item()
        scale = out_ref[t].abs().max().item()
        worst = max(worst, diff)
        print(f'  {t:12s} max |ref - mtlbench| = {diff:.3e}   (max |ref| = {scale:.3e})')
    print(f'  worst: {worst:.3e}  ({"OK" if worst < 1e-4 else "ABOVE 1e-4"})')
    ok = worst < 1e-4
    if args.grads:
        ok = _compare_grads(ref, ours, x) and ok
    return 0 if ok else 1


def _compare_grads(ref, ours, x) -> bool:
    """Gradients of one fixed random projection of every task output, for every parameter both
    models have (eval mode, so that neither draws random numbers), in float64 so that what is
    left is a difference of formulas, not of float32 summation order. Prints the worst relative
    difference (max |diff| / max |grad|) per parameter kind."""
    ref, ours, x = ref.double(), ours.double(), x.double()
    weights = {}
    for model in (ref, ours):
        model.zero_grad(set_to_none=True)
        for prm in model.parameters():
            prm.requires_grad_(True)
        out = model(x)
        if not weights:
            g = torch.Generator().manual_seed(1)
            weights = {t: torch.randn(out[t].shape, generator=g, dtype=x.dtype) for t in TASKS}
        sum((out[t] * weights[t]).sum() for t in TASKS).backward()
    ref_grads = map_reference_to_ours({n: q.grad for n, q in ref.named_parameters() if q.grad is not None})
    worst: Dict[str, float] = {}
    for name, q in ours.named_parameters():
        if name not in ref_grads or q.grad is None:
            continue
        kind = re.sub(r'\.\d+', '', name).split('.')[-1]
        rel = (q.grad - ref_grads[name]).abs().max().item() / max(ref_grads[name].abs().max().item(), 1e-12)
        worst[kind] = max(worst.get(kind, 0.0), rel)
    print(f'  gradients of {len(ref_grads)} parameters, worst relative difference per kind:')
    for kind, rel in sorted(worst.items()):
        print(f'    {kind:32s} {rel:.2e}')
    top = max(worst.values())
    print(f'  worst: {top:.2e}  ({"OK" if top < 1e-9 else "ABOVE 1e-9"})')
    return top < 1e-9


if __name__ == '__main__':
    sys.exit(main())
