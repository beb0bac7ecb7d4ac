#!/usr/bin/env python
"""Time ``nn.Dropout`` against mtlbench's ``AdapterDropout`` on a stage-1 MLP activation.

Both run with freed memory kept for reuse (:mod:`mtlbench.engine.cpu_memory`), as in ``mtlbench
run``. ``AdapterDropout.drop`` is the form the LoRA layers use (mask applied, the 1 / keep gain
left to ride on the low-rank product).

    python benchmarks/dropout.py [--shape 25088 384] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mtlbench.layers.dropout import AdapterDropout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--shape', type=int, nargs='+', default=[2 * 112 * 112, 384])
    p.add_argument('--p', type=float, default=0.05)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--device', default='cpu')
    args = p.parse_args(argv)
    from mtlbench.engine.device import prepare_device
    x = torch.randn(*args.shape, device=prepare_device(args.device))
    ours = AdapterDropout(args.p)
    for name, mod in (('nn.Dropout', nn.Dropout(args.p)), ('AdapterDropout', ours),
                      ('.drop (no gain)', ours.drop)):
        mod(x)
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            mod(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        print(f'{name:15s} {statistics.median(times) * 1000:7.1f} ms per {tuple(x.shape)} call '
              f'({torch.get_num_threads()} threads, {args.device})')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
