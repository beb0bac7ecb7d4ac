"""Operator launches per training step (forward, backward, optimizer step) of each method.

On a GPU every top-level ATen operator is at least one kernel launch, so a method whose step
issues ten times as many operators as another is launch-bound at small batch sizes whatever its
FLOPs. This counts them on the CPU with ``torch.profiler`` (the count does not depend on the
device or the image size): ``top-level`` are ATen operators not nested in another ATen operator
(a proxy for kernel launches), ``all`` every ATen call. One untimed step runs first.

    python benchmarks/op_count.py --arch toy --methods mtlora,faar,ditask
    python benchmarks/op_count.py --arch tiny --img-size 224 --out results/op_count/tiny.json
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile


def count_step(method: str, arch: str, size: int, batch: int, top: int = 0) -> dict:
    from mtlbench.bench import synthetic_batch
    from mtlbench.params import build_model_from_config

    opts = {'model.backbone.arch': arch, 'model.backbone.img_size': (size, size)}
    if arch == 'toy':
        opts.update({'model.backbone.window_size': 4, 'model.decoder.channels': (4, 8, 8, 8)})
    tasks = ['semseg'] if method == 'single_task' else None
    model = build_model_from_config(method, 'pascal_context', tasks=tasks, cfg_options=opts)
    x, targets = synthetic_batch(model, batch, (size, size), torch.device('cpu'))
    # foreach: the multi-tensor update CUDA uses by default (CPU defaults to one loop per tensor)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    model.train()

    def step():
        losses = model(x, targets, mode='loss')
        sum(losses.values()).backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = [e for e in prof.events() if e.name.startswith('aten::')]
    ids = {e.id for e in events}

    def nested(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith('aten::') and p.id in ids:
                return True
            p = p.cpu_parent
        return False

    top_level = [e for e in events if not nested(e)]
    out = dict(method=method, arch=arch, img_size=size, batch=batch, top_level_ops=len(top_level),
               all_aten_ops=len(events))
    if top:
        out['most_common'] = Counter(e.name for e in top_level).most_common(top)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--methods', default='mtlora,faar,ditask,tadformer,free_sinewich',
                    help='comma-separated method names (default: %(default)s)')
    ap.add_argument('--arch', default='toy', help="backbone arch, 'toy' or 'tiny' (default: %(default)s)")
    ap.add_argument('--img-size', type=int, default=None, help='square input side (default: 32 toy, 224 tiny)')
    ap.add_argument('--batch-size', type=int, default=1, help='batch size (default: %(default)s)')
    ap.add_argument('--top', type=int, default=0, help='also list the N most frequent top-level ops')
    ap.add_argument('--out', default=None, help='write the rows as JSON here')
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    size = args.img_size or (32 if args.arch == 'toy' else 224)
    rows = []
    for m in args.methods.split(','):
        row = count_step(m, args.arch, size, args.batch_size, args.top)
        rows.append(row)
        print(f"{m:14s} {args.arch:5s} top-level ops {row['top_level_ops']:7d}  all aten ops {row['all_aten_ops']:7d}",
              flush=True)
        for name, n in row.get('most_common', []):
            print(f'    {n:6d} {name}')
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(torch_version=torch.__version__, rows=rows), indent=1) + '\n')


if __name__ == '__main__':
    main()
