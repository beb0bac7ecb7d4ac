#!/usr/bin/env python
"""Numerical equivalence of mtlbench's MTLoRA with the reference implementation.

Builds the reference model from a user's checkout of scale-lab/MTLoRA (``--reference-dir``;
never vendored into mtlbench; tests that build it skip without ``MTLBENCH_MTLORA_REF``) and
mtlbench's model with the same configuration, copies the reference's weights into mtlbench's
(name mapping: ``mtlbench.interop.mtlora_reference``, the one ``--eval-only`` uses on reference
checkpoints), gives every LoRA B a random non-zero value so the adapters matter, and prints the maximum absolute
difference of the per-task outputs on the same input (eval mode). ``--grads`` also compares the
gradients of every parameter both models have, in float64.

    python tools/compare_reference.py --method mtlora --reference-dir ~/src/MTLoRA [--r 64] [--img-size 448] [--grads]

``--method ditask`` builds DiTASK from the fork Malygossssss/DiTASK @ 1ef40ae (the release lacks
its model file; the fork adds it). TADFormer is not supported: its repository must not be run
(see ``shared/reference/methods.md``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import types
from types import SimpleNamespace
from typing import Dict, Sequence

import torch

TASKS = ('semseg', 'human_parts', 'sal', 'normals')
NUM_OUTPUTS = {'semseg': 21, 'human_parts': 7, 'sal': 1, 'normals': 3}


def _import_reference(reference_dir: str, model_file: str = 'swin_transformer_mtlora'):
    """Import the reference's model modules without running its ``models/__init__.py`` (which
    pulls in its whole training stack). Its HRNet head imports ``ptflops`` (FLOP counting,
    unused here): a stub stands in when the package is not installed. MTLoRA's and DiTASK's
    code bases both name their package ``models``: one imported before is dropped first."""
    reference_dir = os.path.abspath(reference_dir)
    if not os.path.isfile(os.path.join(reference_dir, 'models', f'{model_file}.py')):
        raise SystemExit(f'{reference_dir} is not the expected reference checkout (models/{model_file}.py missing)')
    try:
        importlib.import_module('ptflops')
    except ImportError:
        stub = types.ModuleType('ptflops')
        stub.get_model_complexity_info = lambda *args, **kwargs: (None, None)
        sys.modules['ptflops'] = stub
    for name in [n for n in sys.modules if n == 'models' or n.startswith('models.')]:
        del sys.modules[name]
    pkg = types.ModuleType('models')
    pkg.__path__ = [os.path.join(reference_dir, 'models')]
    sys.modules['models'] = pkg
    sys.path[:] = [reference_dir] + [q for q in sys.path if q != reference_dir]
    swin = importlib.import_module(f'models.{model_file}')
    mtl = importlib.import_module('models.swin_mtl')
    return swin, mtl


class _Cfg(SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def build_reference(reference_dir: str, r: int, task_r: int, img_size: int, plus: bool, arch: str = 'tiny',
                    window_size: int = 7, decoder_channels: Sequence[int] = (18, 36, 72, 144), tasks=TASKS):
    """The reference's ``MultiTaskSwin`` with MTLoRA, built as its ``models/build.py`` does for
    ``mtlora_tiny_448_r64_scale4_pertask`` (other ranks, arch and sizes as given; ``arch`` is one
    of mtlbench's ``SWIN_ARCHS``, e.g. ``'toy'`` for fast CPU tests)."""
    from mtlbench.backbones.swin import SWIN_ARCHS

    swin, mtl = _import_reference(reference_dir)
    dims = SWIN_ARCHS[arch]
    ranks = {'shared': r, **{t: task_r for t in tasks}}
    mtlora = _Cfg(ENABLED=True, QKV_ENABLED=True, PROJ_ENABLED=True, FC1_ENABLED=True, FC2_ENABLED=True,
                  DOWNSAMPLER_ENABLED=plus, R_PER_TASK_LIST=[ranks] * 4, SHARED_SCALE=[4.0] * 4,
                  SCALE_PER_TASK_LIST=[{t: 4.0 for t in tasks}] * 4, DROPOUT=[0.05] * 4,
                  INTERMEDIATE_SPECIALIZATION=False, TRAINABLE_SCALE_SHARED=False, TRAINABLE_SCALE_PER_TASK=False,
                  SHARED_MODE='matrix')
    encoder = swin.SwinTransformerMTLoRA(img_size=img_size, patch_size=4, in_chans=3, num_classes=0,
                                         embed_dim=dims['embed_dim'], depths=list(dims['depths']),
                                         num_heads=list(dims['num_heads']), window_size=window_size,
                                         drop_path_rate=0.2, tasks=list(tasks), mtlora=mtlora)
    config = _Cfg(TASKS=list(tasks), TASKS_CONFIG=_Cfg(ALL_TASKS=_Cfg(NUM_OUTPUT=NUM_OUTPUTS)),
                  MODEL=_Cfg(DECODER_HEAD={t: 'hrnet' for t in tasks}, MTLORA=mtlora,
                             DECODER_CHANNELS=list(decoder_channels), DECODER_DOWNSAMPLER=True,
                             PER_TASK_DOWNSAMPLER=True, SWIN=_Cfg(WINDOW_SIZE=window_size)),
                  DATA=_Cfg(IMG_SIZE=img_size))
    return mtl.MultiTaskSwin(encoder, config)


def build_ours(r: int, task_r: int, img_size: int, plus: bool, arch: str = 'tiny', window_size: int = 7,
               decoder_channels: Sequence[int] = (18, 36, 72, 144), tasks=TASKS):
    import mtlbench.methods  # noqa: F401
    from mtlbench.model import MultiTaskModel
    return MultiTaskModel('pascal_context', dict(type='mtlora', r=r, task_r=task_r, plus=plus),
                          dict(arch=arch, img_size=(img_size, img_size), window_size=window_size, drop_path_rate=0.2),
                          tasks=tasks, decoder=dict(channels=tuple(decoder_channels)))


def map_reference_to_ours(ref_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Reference parameter names -> mtlbench names (one mapping: :mod:`mtlbench.interop`)."""
    from mtlbench.interop import reference_to_mtlbench
    return reference_to_mtlbench(ref_state, TASKS)


def build_ours_ditask(num_cells: int, task_num_cells: int, img_size: int, arch: str = 'tiny', window_size: int = 7,
                      decoder_channels: Sequence[int] = (18, 36, 72, 144), tasks=TASKS):
    import mtlbench.methods  # noqa: F401
    from mtlbench.model import MultiTaskModel
    return MultiTaskModel('pascal_context', dict(type='ditask', num_cells=num_cells, task_num_cells=task_num_cells),
                          dict(arch=arch, img_size=(img_size, img_size), window_size=window_size, drop_path_rate=0.2),
                          tasks=tasks, decoder=dict(channels=tuple(decoder_channels)))


def build_reference_ditask(reference_dir: str, num_cells: int, task_num_cells: int, img_size: int,
                           arch: str = 'tiny', window_size: int = 7,
                           decoder_channels: Sequence[int] = (18, 36, 72, 144), tasks=TASKS):
    """DiTASK's model (the fork Malygossssss/DiTASK @ 1ef40ae, which adds the release's missing
    ``models/swin_transformer_ditask.py``) as its ``ditask_tiny_448_r64`` config builds it. Its
    ``difw.Cpab(device='gpu')`` is redirected to the CPU and to difw's pure-PyTorch closed form
    (``use_slow``): its JIT-compiled CPU kernel is built with -ffast-math and returns non-monotone
    grids with this toolchain (see tests/test_method_ditask.py); the release ran the CUDA kernel,
    which implements the same closed form."""
    import difw
    from mtlbench.backbones.swin import SWIN_ARCHS

    if not getattr(difw.Cpab, '_mtlbench_cpu', False):
        gpu_cpab = difw.Cpab

        class CpuCpab(gpu_cpab):
            _mtlbench_cpu = True

            def __init__(self, *args, **kwargs):
                kwargs['device'] = 'cpu'
                super().__init__(*args, **kwargs)
                self.params.use_slow = True
        difw.Cpab = CpuCpab
    swin, mtl = _import_reference(reference_dir, 'swin_transformer_ditask')
    dims = SWIN_ARCHS[arch]
    ranks = {'shared': num_cells, **{t: task_num_cells for t in tasks}}
    ditask = _Cfg(ENABLED=True, QKV_ENABLED=True, PROJ_ENABLED=True, FC1_ENABLED=True, FC2_ENABLED=True,
                  DOWNSAMPLER_ENABLED=False, R_PER_TASK_LIST=[ranks] * 4, SHARED_SCALE=[1.0] * 4,
                  SCALE_PER_TASK_LIST=[{t: 1.0 for t in tasks}] * 4, DROPOUT=[0.05] * 4,
                  INTERMEDIATE_SPECIALIZATION=False, TRAINABLE_SCALE_SHARED=False, TRAINABLE_SCALE_PER_TASK=False,
                  SHARED_MODE='matrix')
    encoder = swin.SwinTransformerDiTASK(img_size=img_size, patch_size=4, in_chans=3, num_classes=0,
                                         embed_dim=dims['embed_dim'], depths=list(dims['depths']),
                                         num_heads=list(dims['num_heads']), window_size=window_size,
                                         drop_path_rate=0.2, tasks=list(tasks), DITASK=ditask)
    config = _Cfg(TASKS=list(tasks), TASKS_CONFIG=_Cfg(ALL_TASKS=_Cfg(NUM_OUTPUT=NUM_OUTPUTS)),
                  MODEL=_Cfg(TYPE='swin', DECODER_HEAD={t: 'hrnet' for t in tasks}, DITASK=ditask,
                             MTLORA=_Cfg(ENABLED=False), DECODER_CHANNELS=list(decoder_channels),
                             DECODER_DOWNSAMPLER=True, PER_TASK_DOWNSAMPLER=True, SWIN=_Cfg(WINDOW_SIZE=window_size)),
                  DATA=_Cfg(IMG_SIZE=img_size))
    return mtl.MultiTaskSwin(encoder, config)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--method', default='mtlora', choices=['mtlora', 'ditask'],
                   help='ditask: --reference-dir is a checkout of Malygossssss/DiTASK @ 1ef40ae; --r / --task-r '
                        'are its shared / per-task CPA cells (release: 64 / 4)')
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
    if args.method == 'ditask':
        ref = build_reference_ditask(args.reference_dir, args.r, args.task_r, args.img_size).eval()
    else:
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
    if args.method == 'ditask':
        ours = build_ours_ditask(args.r, args.task_r, args.img_size).eval()
    else:
        ours = build_ours(args.r, args.task_r, args.img_size, args.plus).eval()
    from mtlbench.interop import ReferenceCheckpointError, import_reference_state
    try:  # strict: every reference tensor used, every mtlbench tensor filled, shapes equal
        import_reference_state(ours, ref.state_dict(), source='reference model')
    except ReferenceCheckpointError as err:
        print(f'weight mapping incomplete: {err}')
        return 1
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch.no_grad():
        out_ref = ref(x)
        out_ours = ours(x)
    label = f'DiTASK cells={args.r}/{args.task_r}' if args.method == 'ditask' else \
        f'MTLoRA r={args.r} task_r={args.task_r} plus={args.plus}'
    print(f'{label} img={args.img_size} batch={args.batch_size}')
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
