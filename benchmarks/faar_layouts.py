#!/usr/bin/env python
"""FAAR trainable-parameter counts per layout, on PASCAL-Context and NYUDv2, next to the paper.

The paper reports 3.38M (PASCAL-Context, 4 tasks) and 2.85M (NYUDv2, 3 tasks) after PDRS, at
a final average rank of about 5; their gap, 0.53M, is made of per-task parameters only (the
fourth task's decoder, adapters and TS-PD filter), so it does not depend on the shared ranks.

Every figure is counted on the model ``mtlbench run`` would build (``params.method_breakdown``:
the configs under ``configs/faar/`` with ``--cfg-options``), Swin-T 448. For each layout and
TS-PD filter the table gives the counts with every adapter at rank 5, the PASCAL - NYUD gap,
and the uniform shared / task ranks ``(r_s, r_t)`` that reproduce both paper totals exactly
(counts are affine in each rank; the slopes are measured with builds at ranks 6).

    PYTHONPATH=$PWD python3 benchmarks/faar_layouts.py [--out results/faar_layouts.md]

Random initialisation is skipped while counting (shapes only), as in the count tests.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from typing import Dict, Tuple

PAPER = {'pascal_context': 3.38e6, 'nyudv2': 2.85e6}
LAYOUTS = {
    'fork at qkv, shared stream frozen': dict(task_kinds=('qkv', 'proj', 'fc1', 'fc2'), task_block_shared='frozen'),
    'fork at qkv, shared stream adapted': dict(task_kinds=('qkv', 'proj', 'fc1', 'fc2'), task_block_shared='adapter'),
    'fork at proj, shared stream frozen': dict(task_kinds=('proj', 'fc1', 'fc2'), task_block_shared='frozen'),
    'fork at proj, shared stream adapted (MTLoRA)': dict(task_kinds=('proj', 'fc1', 'fc2'), task_block_shared='adapter'),
}
FILTERS = {
    'per-channel complex': dict(tspd_filter='complex', tspd_filter_channels='per_channel'),
    'per-channel real': dict(tspd_filter='real', tspd_filter_channels='per_channel'),
    'shared complex': dict(tspd_filter='complex', tspd_filter_channels='shared'),
    'shared real': dict(tspd_filter='real', tspd_filter_channels='shared'),
}


@contextmanager
def shapes_only():
    """Skip the random initialisation (counting needs shapes, not values)."""
    import torch
    import mtlbench.backbones.swin as swin
    saved = {n: getattr(torch.nn.init, n) for n in ('kaiming_uniform_', 'uniform_', 'trunc_normal_', 'normal_')}
    saved_swin = swin.trunc_normal_

    def keep(tensor, *args, **kwargs):
        return tensor
    for n in saved:
        setattr(torch.nn.init, n, keep)
    swin.trunc_normal_ = keep
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)
        swin.trunc_normal_ = saved_swin


def count(dataset: str, r: int, task_r: int, **opts) -> Tuple[int, int, int]:
    """``(total_trainable, number of shared adapters, number of task adapters)``."""
    from mtlbench.methods.faar import iter_units
    from mtlbench.params import build_model_from_config
    cfg = {'model.method.r': r, 'model.method.task_r': task_r}
    cfg.update({f'model.method.{k}': v for k, v in opts.items()})
    model = build_model_from_config('faar', dataset, cfg_options=cfg)
    units = [u for _, u in iter_units(model.backbone)]
    shared = sum(u.task == 'shared' for u in units)
    return model.param_breakdown()['total_trainable'], shared, len(units) - shared


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', help='write the markdown table here')
    args = p.parse_args(argv)
    t0 = time.time()
    rows = []
    with shapes_only():
        for lname, lopts in LAYOUTS.items():
            slopes: Dict[str, Tuple[float, float]] = {}
            for ds in PAPER:
                base, ns, nt = count(ds, 5, 5, **lopts)
                slopes[ds] = (count(ds, 6, 5, **lopts)[0] - base, count(ds, 5, 6, **lopts)[0] - base, ns, nt)
            for fname, fopts in FILTERS.items():
                tot = {ds: count(ds, 5, 5, **lopts, **fopts)[0] for ds in PAPER}
                # solve tot + a_s (r_s - 5) + a_t (r_t - 5) = paper, on both datasets
                (a1, b1, ns, nt), (a2, b2, _, nt2) = slopes['pascal_context'], slopes['nyudv2']
                c1, c2 = PAPER['pascal_context'] - tot['pascal_context'], PAPER['nyudv2'] - tot['nyudv2']
                det = a1 * b2 - a2 * b1
                ds_, dt_ = (c1 * b2 - c2 * b1) / det, (a1 * c2 - a2 * c1) / det
                rs, rt = 5 + ds_, 5 + dt_
                avg = (ns * rs + nt * rt) / (ns + nt)  # PASCAL unit counts
                rows.append(dict(layout=lname, filter=fname, pascal=tot['pascal_context'], nyud=tot['nyudv2'],
                                 gap=tot['pascal_context'] - tot['nyudv2'], r_s=rs, r_t=rt, avg=avg, ns=ns, nt=nt))
                print(f"{lname:46s} {fname:20s} PASCAL {tot['pascal_context']:>10,} NYUD {tot['nyudv2']:>10,} "
                      f"gap {rows[-1]['gap']:>9,}  fit r_s {rs:6.2f} r_t {rt:6.2f} avg {avg:5.2f}", flush=True)
    lines = ['# FAAR trainable parameters per layout (Swin-T 448, every adapter at rank 5)', '',
             'Paper: 3,380,000 (PASCAL-Context), 2,850,000 (NYUDv2), gap 530,000 (each +-5,000 from rounding).',
             '`fit r_s / r_t`: the uniform shared / task ranks that give both paper totals exactly; `avg`: the',
             'mean rank over the PASCAL adapters at that fit (the paper: about 5; its Finding 1: task-specific',
             'adapters keep higher ranks than shared ones). `units s/t`: shared / task adapters on PASCAL.', '',
             '| layout | TS-PD filter | PASCAL | vs 3.38M | NYUDv2 | vs 2.85M | gap | vs 0.53M | fit r_s | fit r_t | avg |'
             ' units s/t |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for r in rows:
        lines.append(f"| {r['layout']} | {r['filter']} | {r['pascal']:,} | {r['pascal'] / 3.38e6 - 1:+.1%} | "
                     f"{r['nyud']:,} | {r['nyud'] / 2.85e6 - 1:+.1%} | {r['gap']:,} | {r['gap'] / 0.53e6 - 1:+.0%} | "
                     f"{r['r_s']:.1f} | {r['r_t']:.1f} | {r['avg']:.1f} | {r['ns']}/{r['nt']} |")
    lines += ['', 'Command: `PYTHONPATH=$PWD python3 benchmarks/faar_layouts.py --out results/faar_layouts.md` '
              f'({time.time() - t0:.0f} s).']
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
