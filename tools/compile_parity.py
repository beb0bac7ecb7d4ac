"""How far a compiled training step is from the eager one, per method (issue 14).

Builds the toy model of ``tests/test_compile_methods.py`` (dropout off, non-zero up-projections),
runs two training steps eager and compiled (``backend='aot_eager'`` by default) and prints the
graph count after each step and the largest loss / gradient / buffer differences. Run it in
float32 and float64: differences that shrink to ~1e-14 relative in float64 are summation order,
anything else is a bug.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 tools/compile_parity.py mtlora faar --dtype float64
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch._dynamo
from torch._dynamo.utils import counters

import mtlbench.methods  # noqa: F401
from mtlbench.bench import deterministic_toy_model, synthetic_batch
from mtlbench.model import compile_model

SIZE = (32, 32)


def toy_model(method: str, dtype: torch.dtype):
    return deterministic_toy_model(method, SIZE, dtype)


def step(model, x, targets, seed):
    torch.manual_seed(seed)
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(x, targets, mode='loss')
    sum(losses.values()).backward()
    return (losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            {n: b.clone() for n, b in model.named_buffers() if b.is_floating_point()})


def worst(a: dict, b: dict) -> dict:
    """Largest absolute difference, and the largest relative to each tensor's max magnitude
    (floored at 1e-6 of the largest magnitude of all: a bias before BatchNorm has a gradient of
    round-off size, which says nothing relative to itself)."""
    out = dict(abs=0.0, rel=0.0, abs_name=None, rel_name=None)
    floor = 1e-6 * max([b[n].double().abs().max().item() for n in b if b[n].numel()] + [1e-300])
    for name in a:
        d = (a[name].double() - b[name].double()).abs().max().item()
        r = d / max(b[name].double().abs().max().item(), floor)
        if d > out['abs']:
            out.update(abs=d, abs_name=name)
        if r > out['rel']:
            out.update(rel=r, rel_name=name)
    return out


def measure(method: str, dtype: torch.dtype, backend: str) -> dict:
    torch.manual_seed(0)
    eager = toy_model(method, dtype)
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    compile_model(twin, backend=backend)
    x, targets = synthetic_batch(eager, 2, SIZE, torch.device('cpu'))
    x = x.to(dtype)
    targets = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in targets.items()}
    rec = dict(method=method, dtype=str(dtype).replace('torch.', ''), backend=backend, steps=[])
    for i in range(2):
        t = time.time()
        le, ge, be = step(eager, x, targets, i + 1)
        te = time.time() - t
        t = time.time()
        lc, gc, bc = step(twin, x, targets, i + 1)
        rec['steps'].append(dict(
            eager_s=round(te, 1), compiled_s=round(time.time() - t, 1),
            unique_graphs=counters['stats']['unique_graphs'], graph_breaks=sum(counters['graph_break'].values()),
            loss=worst(lc, le), grad=worst(gc, ge), buffer=worst(bc, be)))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('methods', nargs='+', help='registered method names')
    ap.add_argument('--dtype', default='float32', choices=('float32', 'float64'), help='model dtype (float32)')
    ap.add_argument('--backend', default='aot_eager', help="torch.compile backend ('aot_eager')")
    ap.add_argument('--out', help='also append the records to this JSON-lines file')
    args = ap.parse_args()
    for method in args.methods:
        rec = measure(method, getattr(torch, args.dtype), args.backend)
        line = json.dumps(rec)
        print(line, flush=True)
        if args.out:
            with open(args.out, 'a') as f:
                f.write(line + '\n')


if __name__ == '__main__':
    main()
