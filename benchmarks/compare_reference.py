#!/usr/bin/env python
"""Time mtlbench's MTLoRA against the MTLoRA reference implementation in one process.

Both models are built with the same configuration and weights (see
``tools/compare_reference.py``); their training step (forward + backward + AdamW step on the
trainable parameters, frozen exactly as each code base freezes them) and inference are timed on
the same inputs, alternating between the two so that machine noise hits both alike. Prints the
median times and the mtlbench / reference ratios. Also times plain Swin-T + heads (no adapters)
and mtlbench's merged inference, for the "merged inference costs what plain Swin-T costs" target.

    python benchmarks/compare_reference.py --reference-dir ~/src/MTLoRA --batch-size 2 --img-size 448
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tools'))
from compare_reference import TASKS, build_ours, build_reference, map_reference_to_ours  # noqa: E402


def _freeze_reference(model):
    """The reference's ``mark_only_lora_as_trainable`` with its default flags: LoRA, patch
    embedding, norms, relative-position tables, reductions and the decoder train."""
    keep = ('lora_', 'patch_embed', 'norm', 'relative_position_bias_table', 'downsample.reduction')
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith('backbone.') or any(k in n for k in keep))


def _targets(batch, size):
    g = torch.Generator().manual_seed(0)
    return {'semseg': torch.randint(0, 21, (batch, size, size), generator=g),
            'human_parts': torch.randint(0, 7, (batch, size, size), generator=g),
            'sal': torch.randint(0, 2, (batch, size, size), generator=g),
            'normals': torch.nn.functional.normalize(torch.randn(batch, 3, size, size, generator=g), dim=1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--reference-dir', required=True)
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    from mtlbench.method import merge_adapters
    from mtlbench.losses import build_loss

    device = torch.device(args.device)
    torch.manual_seed(0)
    ref = build_reference(args.reference_dir, 64, 4, args.img_size, False)
    ours = build_ours(64, 4, args.img_size, False)
    ours.load_state_dict(map_reference_to_ours(ref.state_dict()), strict=False)
    _freeze_reference(ref)
    from mtlbench.model import MultiTaskModel
    plain = MultiTaskModel('pascal_context', 'decoder_only', dict(arch='tiny', img_size=(args.img_size,) * 2),
                           tasks=TASKS)  # plain Swin-T + heads, no adapters
    ref, ours, plain = ref.to(device), ours.to(device), plain.to(device)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    targets = {k: v.to(device) for k, v in _targets(args.batch_size, args.img_size).items()}
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

    for _ in range(args.warmup):
        train_ref(), train_ours(), infer(ref), infer(ours), infer(plain)
    t = {k: [] for k in ('train_ref', 'train_ours', 'infer_ref', 'infer_ours', 'infer_plain')}
    for i in range(args.iters):  # alternate so that noise hits both
        t['train_ref'].append(timed(train_ref))
        t['train_ours'].append(timed(train_ours))
        t['infer_ref'].append(timed(lambda: infer(ref)))
        t['infer_ours'].append(timed(lambda: infer(ours)))
        t['infer_plain'].append(timed(lambda: infer(plain)))
        print(f'iteration {i + 1}/{args.iters}', file=sys.stderr)
    merged = merge_adapters(ours)
    for _ in range(args.warmup):
        infer(ours)
    t['infer_merged'] = [timed(lambda: infer(ours)) for _ in range(args.iters)]
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f'device {device} ({torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"}), '
          f'batch {args.batch_size}, {args.img_size}x{args.img_size}, median of {args.iters}')
    for k, v in med.items():
        print(f'  {k:13s} {v * 1000:9.1f} ms   (min {min(t[k]) * 1000:.1f}, max {max(t[k]) * 1000:.1f})')
    print(f'  training step  mtlbench / reference = {med["train_ours"] / med["train_ref"]:.3f}')
    print(f'  inference      mtlbench / reference = {med["infer_ours"] / med["infer_ref"]:.3f}')
    print(f'  merged inference ({len(merged)} layers merged) / plain Swin-T + heads = '
          f'{med["infer_merged"] / med["infer_plain"]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
