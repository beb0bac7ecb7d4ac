#!/usr/bin/env python
"""Numerical equivalence of mtlbench's MTLoRA with the reference implementation.

Builds the reference model from a user's checkout of scale-lab/MTLoRA (``--reference-dir``;
never vendored into mtlbench; tests that build it skip without ``MTLBENCH_MTLORA_REF``) and
mtlbench's model with the same configuration, copies the reference's weights into mtlbench's
(name mapping: ``mtlbench.interop.mtlora_reference``, the one ``--eval-only`` uses on reference
checkpoints), gives every LoRA B a random non-zero value so the adapters matter, and prints the maximum absolute
difference of the per-task outputs on the same input (eval mode). ``--grads`` also compares the
gradients of every parameter both models have, in float64.

    python tools/parity_vs_reference.py --method mtlora --reference-dir ~/src/MTLoRA [--r 64] [--img-size 448] [--grads]

``--arch swin-s|swin-b`` builds both on the larger Swin (the reference's Swin class takes embed
dim, depths and heads; the decoder keeps its 18/36/72/144 channels). For MTLoRA the trainable
parameter count the reference's ``main.py`` prints (after its ``mark_only_lora_as_trainable``) is
printed beside mtlbench's and must be equal.

``--train-steps K`` trains both for K iterations on CPU in float64 from the same initial weights:
the reference with its own optimizer builder (``optimizer.py``), lr scheduler
(``lr_scheduler.py``), loss module (``mtl_loss_schemes.py``, weights of ``main.py``) and loss
scaler, stepped as ``main.py: train_one_epoch`` does; mtlbench with ``model.train_step``, the
optim wrapper and scheduler of ``configs/_base_/schedules/adamw_300e.py``. Both get the same
batches (one PASCAL-layout folder, ``mtlbench data synth``; mtlbench's resize + normalise, no
random augmentation), adapter dropout and drop path 0. Prints per iteration the lr, each task's
loss, the total loss and the gradient norm before clipping, then the largest parameter
difference (``results/parity/``).

    python tools/parity_vs_reference.py --reference-dir ~/src/MTLoRA --train-steps 20 --img-size 224

``--method ditask`` builds DiTASK from the fork Malygossssss/DiTASK @ 1ef40ae (the release lacks
its model file; the fork adds it). TADFormer is not supported: its repository must not be run
(see ``shared/reference/methods.md``).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
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
    models_dir = os.path.join(reference_dir, 'models')
    if list(getattr(sys.modules.get('models'), '__path__', [])) != [models_dir]:
        for name in [n for n in sys.modules if n == 'models' or n.startswith('models.')]:
            del sys.modules[name]
        pkg = types.ModuleType('models')
        pkg.__path__ = [models_dir]
        sys.modules['models'] = pkg
    sys.path[:] = [reference_dir] + [q for q in sys.path if q != reference_dir]
    swin = importlib.import_module(f'models.{model_file}')
    mtl = importlib.import_module('models.swin_mtl')
    return swin, mtl


class _Cfg(SimpleNamespace):
    def get(self, key, default=None):
        return getattr(self, key, default)


def build_reference(reference_dir: str, r: int, task_r: int, img_size: int, plus: bool, arch: str = 'tiny',
                    window_size: int = 7, decoder_channels: Sequence[int] = (18, 36, 72, 144), tasks=TASKS,
                    drop_path_rate: float = 0.2, dropout: float = 0.05):
    """The reference's ``MultiTaskSwin`` with MTLoRA, built as its ``models/build.py`` does for
    ``mtlora_tiny_448_r64_scale4_pertask`` (other ranks, arch and sizes as given; ``arch`` is one
    of mtlbench's ``SWIN_ARCHS`` or its alias, e.g. ``'swin-b'``, or ``'toy'`` for fast CPU tests)."""
    from mtlbench.backbones.swin import SWIN_ARCHS, canonical_arch

    swin, mtl = _import_reference(reference_dir)
    dims = SWIN_ARCHS[canonical_arch(arch)]
    ranks = {'shared': r, **{t: task_r for t in tasks}}
    mtlora = _Cfg(ENABLED=True, QKV_ENABLED=True, PROJ_ENABLED=True, FC1_ENABLED=True, FC2_ENABLED=True,
                  DOWNSAMPLER_ENABLED=plus, R_PER_TASK_LIST=[ranks] * 4, SHARED_SCALE=[4.0] * 4,
                  SCALE_PER_TASK_LIST=[{t: 4.0 for t in tasks}] * 4, DROPOUT=[dropout] * 4,
                  INTERMEDIATE_SPECIALIZATION=False, TRAINABLE_SCALE_SHARED=False, TRAINABLE_SCALE_PER_TASK=False,
                  SHARED_MODE='matrix')
    encoder = swin.SwinTransformerMTLoRA(img_size=img_size, patch_size=4, in_chans=3, num_classes=0,
                                         embed_dim=dims['embed_dim'], depths=list(dims['depths']),
                                         num_heads=list(dims['num_heads']), window_size=window_size,
                                         drop_path_rate=drop_path_rate, tasks=list(tasks), mtlora=mtlora)
    config = _Cfg(TASKS=list(tasks), TASKS_CONFIG=_Cfg(ALL_TASKS=_Cfg(NUM_OUTPUT=NUM_OUTPUTS)),
                  MODEL=_Cfg(DECODER_HEAD={t: 'hrnet' for t in tasks}, MTLORA=mtlora,
                             DECODER_CHANNELS=list(decoder_channels), DECODER_DOWNSAMPLER=True,
                             PER_TASK_DOWNSAMPLER=True, SWIN=_Cfg(WINDOW_SIZE=window_size)),
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


def reference_trainable_count(ref_model, plus: bool) -> int:
    """What the reference's ``main.py`` prints as "Number of trainable params": its
    ``mark_only_lora_as_trainable`` on the backbone with the config's defaults (reductions frozen
    under MTLoRA+, ``DOWNSAMPLER_ENABLED``), every decoder parameter trainable."""
    import contextlib
    import io
    lora = importlib.import_module('models.lora')
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its freezing choices
        lora.mark_only_lora_as_trainable(ref_model.backbone, bias='none', freeze_patch_embed=False, freeze_norm=False,
                                         free_relative_bias=False, freeze_downsample_reduction=plus)
    return sum(q.numel() for q in ref_model.parameters() if q.requires_grad)


def reference_weight_decay(reference_dir: str, ref_model, weight_decay: float):
    """``({name: weight decay}, [trainable names])`` of the reference's optimizer groups."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its freezing choices
        optimizer = reference_optimizer(reference_dir, ref_model, 1e-3, weight_decay)
    by_id = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    decay = {n: by_id[id(p)] for n, p in ref_model.named_parameters()}
    return decay, [n for n, p in ref_model.named_parameters() if p.requires_grad]


def build_ours(r: int, task_r: int, img_size: int, plus: bool, arch: str = 'tiny', window_size: int = 7,
               decoder_channels: Sequence[int] = (18, 36, 72, 144), tasks=TASKS, drop_path_rate: float = 0.2,
               dropout: float = 0.05):
    import mtlbench.methods  # noqa: F401
    from mtlbench.model import MultiTaskModel
    return MultiTaskModel('pascal_context', dict(type='mtlora', r=r, task_r=task_r, plus=plus, dropout=dropout),
                          dict(arch=arch, img_size=(img_size, img_size), window_size=window_size,
                               drop_path_rate=drop_path_rate),
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
    from mtlbench.backbones.swin import SWIN_ARCHS, canonical_arch

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
    dims = SWIN_ARCHS[canonical_arch(arch)]
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
    p.add_argument('--arch', default='swin-t', help='swin-t, swin-s, swin-b (or toy, with --window-size 4)')
    p.add_argument('--window-size', type=int, default=7)
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--grads', action='store_true',
                   help='also compare the gradients of every mapped parameter (float64, eval mode: no dropout, no drop path)')
    p.add_argument('--train-steps', type=int, metavar='K',
                   help='drive K training iterations of both pipelines (float64, CPU) and compare lr, losses, '
                        'grad norm and the parameters after them')
    p.add_argument('--data-root', help='--train-steps: a PASCAL-layout folder (`mtlbench data synth`); '
                                       'default: a fresh synthetic one')
    p.add_argument('--samples', type=int, default=20, help='--train-steps: synthetic train images to write')
    p.add_argument('--epochs', type=int, default=4, help='--train-steps: schedule length (epochs)')
    p.add_argument('--warmup-epochs', type=int, default=1, help='--train-steps: warm-up epochs')
    p.add_argument('--base-lr', type=float, default=5e-4, help='--train-steps: lr for a batch of 512 (reference)')
    args = p.parse_args(argv)
    if args.train_steps:
        if args.method != 'mtlora':
            p.error('--train-steps drives the MTLoRA reference only')
        return train_steps(args)

    torch.manual_seed(args.seed)
    if args.method == 'ditask':
        ref = build_reference_ditask(args.reference_dir, args.r, args.task_r, args.img_size, arch=args.arch,
                                     window_size=args.window_size).eval()
    else:
        ref = build_reference(args.reference_dir, args.r, args.task_r, args.img_size, args.plus, arch=args.arch,
                              window_size=args.window_size).eval()
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
        ours = build_ours_ditask(args.r, args.task_r, args.img_size, arch=args.arch,
                                 window_size=args.window_size).eval()
    else:
        ours = build_ours(args.r, args.task_r, args.img_size, args.plus, arch=args.arch,
                          window_size=args.window_size).eval()
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
    print(f'{label} {args.arch} img={args.img_size} window={args.window_size} batch={args.batch_size}')
    ours_count = ours.param_breakdown()["total_trainable"]
    print(f'  mtlbench trainable params: {ours_count:,}')
    counts_ok = True
    if args.method == 'mtlora':
        ref_count = reference_trainable_count(ref, args.plus)
        counts_ok = ref_count == ours_count
        print(f'  reference trainable params (main.py, after mark_only_lora_as_trainable): {ref_count:,}  '
              f'({"EQUAL" if counts_ok else "DIFFERENT"})')
    worst = 0.0
    for t in TASKS:
        diff = (out_ref[t] - out_ours[t]).abs().max().item()
        scale = out_ref[t].abs().max().item()
        worst = max(worst, diff)
        print(f'  {t:12s} max |ref - mtlbench| = {diff:.3e}   (max |ref| = {scale:.3e})')
    print(f'  worst: {worst:.3e}  ({"OK" if worst < 1e-4 else "ABOVE 1e-4"})')
    ok = worst < 1e-4 and counts_ok
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


# ------------------------------------------------------------------------ --train-steps K
# Loss weights of the reference's main.py (all_loss_weights), PASCAL's four tasks.
REFERENCE_LOSS_WEIGHTS = {'semseg': 1.0, 'human_parts': 2.0, 'sal': 5.0, 'normals': 10.0}


def reference_training(reference_dir: str, ref_model, base_lr: float, epochs: int, warmup_epochs: int,
                       iters_per_epoch: int, batch_size: int, plus: bool):
    """The reference's optimizer, lr scheduler, loss module and loss scaler, configured as its
    ``main.py`` does (lrs scaled by batch / 512, weight decay 0.05, clip 5.0)."""
    import contextlib
    import io
    scale = batch_size / 512.0
    with contextlib.redirect_stdout(io.StringIO()):
        optimizer = reference_optimizer(reference_dir, ref_model, base_lr * scale, 0.05, plus=plus)
    lr_mod = _load_reference_module(reference_dir, 'lr_scheduler')
    config = _Cfg(TRAIN=_Cfg(EPOCHS=epochs, WARMUP_EPOCHS=warmup_epochs, BASE_LR=base_lr * scale,
                             WARMUP_LR=base_lr * 1e-3 * scale, MIN_LR=base_lr * 1e-2 * scale,
                             LR_SCHEDULER=_Cfg(NAME='cosine', DECAY_EPOCHS=30, DECAY_RATE=0.1, WARMUP_PREFIX=True,
                                               GAMMA=0.1, MULTISTEPS=[])))
    scheduler = lr_mod.build_scheduler(config, optimizer, iters_per_epoch)
    loss_mod = _load_reference_module(reference_dir, 'mtl_loss_schemes')
    loss_ft = torch.nn.ModuleDict({t: loss_mod.get_loss(None, t) for t in TASKS})
    criterion = loss_mod.MultiTaskLoss(list(TASKS), loss_ft, dict(REFERENCE_LOSS_WEIGHTS))
    sys.modules.setdefault('imageio', types.ModuleType('imageio'))  # imported by utils.py, unused here
    scaler = _load_reference_module(reference_dir, 'utils').NativeScalerWithGradNormCount()  # disabled on CPU
    return optimizer, scheduler, criterion, scaler


def our_training(model, base_lr: float, epochs: int, warmup_epochs: int, iters_per_epoch: int, batch_size: int):
    """mtlbench's optimizer wrapper and scheduler, built from the reference schedule config."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from mtlbench.registry import PARAM_SCHEDULERS
    here = os.path.dirname(os.path.abspath(__file__))
    sched_cfg = Config.fromfile(os.path.join(here, '..', 'configs', '_base_', 'schedules', 'adamw_300e.py'))
    optim_cfg = sched_cfg.optim_wrapper.to_dict()
    optim_cfg['optimizer']['lr'] = base_lr * batch_size / 512.0  # what auto_scale_lr does
    (scheduler_cfg,) = sched_cfg.param_scheduler
    scheduler_cfg = dict(scheduler_cfg, warmup=warmup_epochs, begin=0, end=epochs)
    with DefaultScope.overwrite_default_scope('mtlbench'):
        wrapper = build_optim_wrapper(model, optim_cfg)
        scheduler = PARAM_SCHEDULERS.build(scheduler_cfg, default_args=dict(optimizer=wrapper,
                                                                            epoch_length=iters_per_epoch))
    return wrapper, scheduler


def parity_batches(data_root: str, img_size: int, batch_size: int):
    """Batches of the folder's train split, in file order, through mtlbench's resize + normalise
    (no random augmentation), as float64; the reference gets the same tensors in its formats."""
    from torch.utils.data import default_collate

    import mtlbench.datasets  # noqa: F401
    from mtlbench.registry import DATASETS
    ds = DATASETS.build(dict(type='PascalContextMT', data_root=data_root, split='train', tasks=list(TASKS),
                             img_size=(img_size, img_size),
                             pipeline=[dict(type='MTResize', size=(img_size, img_size)), dict(type='MTNormalize'),
                                       dict(type='MTPackInputs')]))
    batches = []
    for start in range(0, len(ds) - batch_size + 1, batch_size):  # drop_last, as the reference
        batch = default_collate([ds[i] for i in range(start, start + batch_size)])
        batches.append((batch['inputs'].double(), {t: batch['data_samples'][t] for t in TASKS}))
    return batches


def reference_targets(targets: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mtlbench's batched targets -> the reference's: label maps ``[B, 1, H, W]`` float, normals
    with 255 where invalid (mtlbench: the zero vector). Saliency has no ignore value there."""
    out = {}
    for t, v in targets.items():
        if t == 'normals':
            v = v.double()
            invalid = (v == 0).all(dim=1, keepdim=True).expand_as(v)
            out[t] = torch.where(invalid, torch.full_like(v, 255.0), v)
        else:
            if t == 'sal' and (v == 255).any():
                raise SystemExit('saliency labels with ignore (255) in the batch: the reference has no ignore for sal')
            out[t] = v.reshape(v.shape[0], 1, *v.shape[-2:]).double()
    return out


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def train_steps(args) -> int:
    """Drive both pipelines for ``args.train_steps`` iterations in float64; print and compare."""
    from mmengine.logging import MessageHub

    torch.manual_seed(args.seed)
    ref = build_reference(args.reference_dir, args.r, args.task_r, args.img_size, args.plus,
                          drop_path_rate=0.0, dropout=0.0)
    ours = build_ours(args.r, args.task_r, args.img_size, args.plus, drop_path_rate=0.0, dropout=0.0)
    mapped = map_reference_to_ours(ref.state_dict())
    ours.load_state_dict(mapped, strict=False)
    ref, ours = ref.double().train(), ours.double().train()
    if args.data_root:
        data_root = args.data_root
    else:
        import tempfile

        from mtlbench.datasets import write_synthetic_dataset
        data_root = os.path.join(tempfile.mkdtemp(prefix='mtlbench_parity_'), 'PASCAL_MT')
        write_synthetic_dataset('pascal_context', data_root, n=args.samples, seed=args.seed)
    batches = parity_batches(data_root, args.img_size, args.batch_size)
    per_epoch = len(batches)
    ref_opt, ref_sched, criterion, scaler = reference_training(
        args.reference_dir, ref, args.base_lr, args.epochs, args.warmup_epochs, per_epoch, args.batch_size, args.plus)
    wrapper, sched = our_training(ours, args.base_lr, args.epochs, args.warmup_epochs, per_epoch, args.batch_size)
    ref_trainable = {n for n, q in ref.named_parameters() if q.requires_grad}
    our_trainable = {n for n, q in ours.named_parameters() if q.requires_grad}
    mapped_trainable = set(map_reference_to_ours({n: torch.zeros(1) for n in ref_trainable}))
    hub = MessageHub.get_current_instance()

    print(f'MTLoRA r={args.r} task_r={args.task_r} plus={args.plus}: {args.train_steps} training iterations, '
          f'float64, CPU, batch {args.batch_size}, img {args.img_size}')
    print(f'  data: {data_root} (train split, file order, {per_epoch} iterations per epoch, last incomplete batch '
          'dropped); both sides get the same tensors: mtlbench resize + normalise, no random augmentation '
          '(the transforms are compared separately)')
    print('  adapter dropout and drop path set to 0 on both sides (they draw from different generators)')
    print(f'  schedule: {args.epochs} epochs, {args.warmup_epochs} warm-up, base lr {args.base_lr} x batch / 512; '
          'reference: optimizer.build_optimizer, lr_scheduler.build_scheduler, mtl_loss_schemes.MultiTaskLoss, '
          'utils.NativeScalerWithGradNormCount (disabled on CPU); mtlbench: configs/_base_/schedules/adamw_300e.py')
    print(f'  trainable parameters: reference {len(ref_trainable)} tensors, mtlbench {len(our_trainable)} '
          f'({"same set" if mapped_trainable == our_trainable else "DIFFERENT SETS"})')
    head = f'  {"it":>3s} {"lr ref":>13s} {"lr rel":>8s} ' + ' '.join(f'{t[:8]:>10s} {"rel":>8s}' for t in TASKS) + \
        f' {"total":>10s} {"rel":>8s} {"gnorm ref":>10s} {"rel":>8s}'
    print(head)
    worst = {'lr': 0.0, 'loss': 0.0, 'total': 0.0, 'grad_norm': 0.0}
    empties = 0
    never_in_graph = set(ref_trainable)  # reference parameters whose grad stayed None (AdamW skips them)
    for it in range(args.train_steps):
        x, targets = batches[it % per_epoch]
        epoch, idx = divmod(it, per_epoch)
        # reference: main.py train_one_epoch
        lr_ref = ref_opt.param_groups[0]['lr']
        outputs = ref(x)
        loss_ref, loss_dict = criterion(outputs, reference_targets(targets))
        gn_ref = float(scaler(loss_ref, ref_opt, clip_grad=5.0, parameters=ref.parameters(), create_graph=False,
                              update_grad=True))
        never_in_graph &= {n for n, q in ref.named_parameters() if q.requires_grad and q.grad is None}
        ref_opt.zero_grad()
        ref_sched.step_update(epoch * per_epoch + idx)
        # mtlbench: BaseModel.train_step + ParamSchedulerHook
        lr_ours = wrapper.optimizer.param_groups[0]['lr']
        log_vars = ours.train_step(dict(inputs=x, data_samples=targets), wrapper)
        gn_ours = hub.get_scalar('train/grad_norm').current()
        sched.step()
        ours_task = {t: float(log_vars[f'loss_{t}'].detach()) / ours.loss_weights[t] for t in TASKS}
        # a task without any valid pixel in the batch (human parts of images without a person):
        # the reference's NLLLoss gives NaN (0 / 0; its gradient is 0, training is unaffected),
        # mtlbench gives 0. Compared as agreeing; the reference's total is then summed without it.
        empty = {t for t in TASKS if math.isnan(float(loss_dict[t])) and ours_task[t] == 0.0
                 and bool((targets[t] == 255).all())}
        rels = {t: 0.0 if t in empty else _rel(ours_task[t], float(loss_dict[t])) for t in TASKS}
        total_ref = sum(REFERENCE_LOSS_WEIGHTS[t] * float(loss_dict[t]) for t in TASKS if t not in empty)
        r_lr, r_tot, r_gn = _rel(lr_ours, lr_ref), _rel(float(log_vars['loss']), total_ref), _rel(gn_ours, gn_ref)
        empties += len(empty)
        worst['lr'] = max(worst['lr'], r_lr)
        worst['loss'] = max(worst['loss'], *rels.values())
        worst['total'] = max(worst['total'], r_tot)
        worst['grad_norm'] = max(worst['grad_norm'], r_gn)
        print(f'  {it:3d} {lr_ref:13.6e} {r_lr:8.1e} ' +
              ' '.join(f'{float(loss_dict[t]):10.6f} {rels[t]:8.1e}' for t in TASKS) +
              f' {total_ref:10.6f} {r_tot:8.1e} {gn_ref:10.4e} {r_gn:8.1e}')
    ref_params = map_reference_to_ours({n: q.detach() for n, q in ref.named_parameters()})
    param_rel = {}
    for name, q in ours.named_parameters():
        if name in ref_params:
            param_rel[name] = (q.detach() - ref_params[name]).abs().max().item() / \
                max(ref_params[name].abs().max().item(), 1e-300)
    # Parameters outside the reference's graph get no update at all there (grad None: AdamW
    # skips them, weight decay included). mtlbench gives them a zero gradient and, as the method
    # declares them unused_parameters, no weight decay (mtlbench/optim.py): they must not move
    # either. Counted with the others, and named.
    unused = set(map_reference_to_ours({n: torch.zeros(1) for n in never_in_graph}))
    unused_rel = {n: param_rel[n] for n in sorted(unused) if n in param_rel}
    ranked = sorted(param_rel.items(), key=lambda kv: -kv[1])
    param_worst, param_name = ranked[0][1], ranked[0][0]
    buf_ref = map_reference_to_ours({n: b for n, b in ref.named_buffers()})
    buf_worst = max(((b - buf_ref[n]).abs().max().item() / max(buf_ref[n].abs().max().item(), 1e-300)
                     for n, b in ours.named_buffers() if n in buf_ref and b.is_floating_point()), default=0.0)
    print(f'  worst relative difference over {args.train_steps} iterations: lr {worst["lr"]:.1e} (target 1e-12), '
          f'per-task loss {worst["loss"]:.1e} (target 1e-6), total loss {worst["total"]:.1e}, '
          f'grad norm {worst["grad_norm"]:.1e}')
    if empties:
        print(f'  {empties} task losses had no valid pixel in their batch: reference NaN (gradient 0), mtlbench 0 '
              '(counted as agreeing; not a training difference)')
    if any(not math.isfinite(v) for v in worst.values()):
        print('  NON-FINITE differences above')
    print(f'  parameters after the last step: worst relative difference (max |diff| / max |ref| per tensor) '
          f'{param_worst:.1e} at {param_name} (target 1e-6); BatchNorm running statistics {buf_worst:.1e}')
    print('  next worst: ' + ', '.join(f'{n} {v:.1e}' for n, v in ranked[1:5]) +
          f'; {sum(v > 1e-6 for v in param_rel.values())} of {len(param_rel)} tensors above 1e-6')
    if unused_rel:
        print(f'  not in the reference\'s graph (grad None, never updated there; no output depends on them; mtlbench: '
              'zero gradient, no weight decay), counted above: ' +
              ', '.join(f'{n} {v:.1e}' for n, v in unused_rel.items()))
    ok = all(math.isfinite(v) for v in worst.values()) and worst['lr'] <= 1e-12 and worst['loss'] <= 1e-6 and param_worst <= 1e-6 and mapped_trainable == our_trainable
    print(f'  {"OK" if ok else "TARGETS MISSED"}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
