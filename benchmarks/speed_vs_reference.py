#!/usr/bin/env python
"""Time mtlbench's MTLoRA against the MTLoRA reference implementation in one process.

Both models are built with the same configuration and weights (see
``tools/parity_vs_reference.py``); their training step (forward + backward + AdamW step on the
trainable parameters, frozen exactly as each code base freezes them) and inference are timed on
the same inputs, alternating between the two so that machine noise hits both alike. Prints the
median times and the mtlbench / reference ratios (for the training step also the median of the
per-iteration ratios, each of two runs adjacent in time, which a machine whose speed drifts
disturbs less). Also times plain Swin-T + heads (no adapters)
and mtlbench's merged inference, for the "merged inference costs what plain Swin-T costs" target:
once for MTLoRA itself (whose task-specific blocks run 1 + T streams by design, merged or not)
and once for its shared adapters alone (``task_kinds=()``), which merge completely.

The process keeps freed memory for reuse (``mtlbench.engine.cpu_memory``), as ``mtlbench run``
does; both models run under that setting, so the ratios compare code, not allocators.
``--compile`` adds mtlbench's ``torch.compile``d training step (compiled once, before timing).

    python benchmarks/speed_vs_reference.py --reference-dir ~/src/MTLoRA --batch-size 2 --img-size 448
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tools'))
from parity_vs_reference import TASKS, build_ours, build_reference, map_reference_to_ours  # noqa: E402


def _freeze_reference(model):
    """The reference's ``mark_only_lora_as_trainable`` with its default flags: LoRA, patch
    embedding, norms, relative-position tables, reductions and the decoder train."""
    keep = ('lora_', 'patch_embed', 'norm', 'relative_position_bias_table', 'downsample.reduction')
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith('backbone.') or any(k in n for k in keep))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reference-dir', required=True)
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--compile', action='store_true', help="also time mtlbench's torch.compile'd training step")
    args = p.parse_args(argv)
    from mtlbench.bench import synthetic_batch
    from mtlbench.engine.device import device_name, prepare_device
    from mtlbench.losses import build_loss
    from mtlbench.method import merge_adapters
    from mtlbench.model import compile_model

    device = prepare_device(args.device)
    torch.manual_seed(0)
    ref = build_reference(args.reference_dir, 64, 4, args.img_size, False)
    ours = build_ours(64, 4, args.img_size, False)
    ours.load_state_dict(map_reference_to_ours(ref.state_dict()), strict=False)
    _freeze_reference(ref)
    from mtlbench.model import MultiTaskModel
    backbone = dict(arch='tiny', img_size=(args.img_size,) * 2)
    plain = MultiTaskModel('pascal_context', 'decoder_only', backbone, tasks=TASKS)  # plain Swin-T + heads
    shared_only = MultiTaskModel('pascal_context', dict(type='mtlora', r=64, task_kinds=()), backbone, tasks=TASKS)
    ref, ours, plain, shared_only = ref.to(device), ours.to(device), plain.to(device), shared_only.to(device)
    x, targets = synthetic_batch(ours, args.batch_size, (args.img_size, args.img_size), device)
    losses = {t: build_loss(t) for t in TASKS}
    weights = {'semseg': 1.0, 'human_parts': 2.0, 'sal': 5.0, 'normals': 10.0}
    opt_ref = torch.optim.AdamW([q for q in ref.parameters() if q.requires_grad], lr=1e-6)
    opt_ours = torch.optim.AdamW([q for q in ours.parameters() if q.requires_grad], lr=1e-6)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    def train_ref():
        ref.train()
        out = ref(x)
        sum(weights[t] * losses[t](out[t], targets[t]) for t in TASKS).backward()
        opt_ref.step()
        opt_ref.zero_grad(set_to_none=True)

    def train_ours():
        ours.train()
        sum(ours(x, targets, mode='loss').values()).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    compiled = compile_model(copy.deepcopy(ours)) if args.compile else None  # what --compile does
    opt_compiled = torch.optim.AdamW([q for q in compiled.parameters() if q.requires_grad], lr=1e-6) \
        if compiled is not None else None

    def train_compiled():
        compiled.train()
        sum(compiled(x, targets, mode='loss').values()).backward()
        opt_compiled.step()
        opt_compiled.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(model):
        model.eval()
        model(x)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    if compiled is not None:
        print('compiling the mtlbench training step (minutes on a CPU) ...', file=sys.stderr)
        train_compiled()
    for _ in range(args.warmup):
        train_ref(), train_ours(), infer(ref), infer(ours), infer(plain)
        if compiled is not None:
            train_compiled()
    jobs = {'train_ref': train_ref, 'train_ours': train_ours}
    if compiled is not None:
        jobs['train_ours_compiled'] = train_compiled
    jobs.update(infer_ref=lambda: infer(ref), infer_ours=lambda: infer(ours), infer_plain=lambda: infer(plain))
    t = {k: [] for k in jobs}
    for i in range(args.iters):  # alternate so that noise hits all alike
        for k, fn in jobs.items():
            t[k].append(timed(fn))
        print(f'iteration {i + 1}/{args.iters}', file=sys.stderr)
    merged = merge_adapters(ours)
    merge_adapters(shared_only)
    for _ in range(args.warmup):
        infer(ours), infer(shared_only)
    t['infer_merged'], t['infer_merged_shared'] = [], []
    for _ in range(args.iters):
        t['infer_merged'].append(timed(lambda: infer(ours)))
        t['infer_merged_shared'].append(timed(lambda: infer(shared_only)))
        t['infer_plain'].append(timed(lambda: infer(plain)))
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f'device {device_name(device)}, batch {args.batch_size}, {args.img_size}x{args.img_size}, '
          f'median of {args.iters} (infer_plain: {len(t["infer_plain"])})')
    for k, v in med.items():
        print(f'  {k:20s} {v * 1000:9.1f} ms   (min {min(t[k]) * 1000:.1f}, max {max(t[k]) * 1000:.1f})')
    paired = statistics.median(o / r for o, r in zip(t['train_ours'], t['train_ref']))
    print(f'  training step  mtlbench / reference = {med["train_ours"] / med["train_ref"]:.3f} '
          f'(median of the {args.iters} per-iteration ratios: {paired:.3f})')
    if compiled is not None:
        print(f'  training step  mtlbench compiled / reference = {med["train_ours_compiled"] / med["train_ref"]:.3f}')
    print(f'  inference      mtlbench / reference = {med["infer_ours"] / med["infer_ref"]:.3f}')
    print(f'  merged inference ({len(merged)} layers merged) / plain Swin-T + heads = '
          f'{med["infer_merged"] / med["infer_plain"]:.3f}')
    print(f'  merged inference, shared adapters only / plain Swin-T + heads = '
          f'{med["infer_merged_shared"] / med["infer_plain"]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
