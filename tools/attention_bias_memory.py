"""Memory of the shifted-window bias at batch 32, 448x448, before and after it was broadcast.

Builds each method's PASCAL model (random init), runs one 448x448 image through it with hooks on
every ``WindowAttention``, and from the shapes each call saw (streams ``S``, windows ``nW``, heads,
tokens ``L`` including prefix tokens, head width) computes, for batch 32:

* before (``_attend`` until this change, SDPA path): the bias expanded to ``[S*B*nW, heads, L, L]``
  in fp32 (a transient), then cast to the queries' dtype (bf16: a second copy) and handed to SDPA,
  whose autograd node keeps it for the backward until the step ends (retained, every shifted block);
* after: the bias ``[1, nW*heads, L, L]`` in the queries' dtype, retained per shifted block, plus
  the copies of q, k, v into ``[S*B, nW*heads, L, hd]`` (the SDPA node keeps these instead of the
  views of the qkv output it kept before, so they add a transient, nothing retained).

Sizes from shapes, not a device measurement. Usage:
    python tools/attention_bias_memory.py [--out results/speed/attention_bias_memory.txt]
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from mtlbench.backbones.swin import WindowAttention
from mtlbench.params import build_model_from_config

METHODS = ('mtlora', 'faar', 'tadformer', 'free_sinewich', 'ditask')
GIB = 2 ** 30


def attention_calls(method: str):
    model = build_model_from_config(method, 'pascal_context').eval()
    calls = []

    def hook(module, args, kwargs):
        x = args[0]
        mask = kwargs.get('mask', args[1] if len(args) > 1 else None)
        P = kwargs.get('num_prefix', args[2] if len(args) > 2 else 0)
        calls.append(dict(S_in=x.shape[0], BW=x.shape[1], L=x.shape[2], heads=module.num_heads,
                          hd=module.head_dim, nW=None if mask is None else mask.shape[0], P=P, module=module))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, WindowAttention)]
    out_streams = {}

    def record_streams(qkv, args, out):
        out_streams[id(qkv)] = out.shape[0]   # S' after a site that forks task streams

    handles += [m.qkv.register_forward_hook(record_streams) for m in model.modules() if isinstance(m, WindowAttention)]
    with torch.no_grad():
        model(torch.randn(1, 3, 448, 448))
    for h in handles:
        h.remove()
    for c in calls:
        c['S'] = out_streams[id(c.pop('module').qkv)]
    return calls


def bias_bytes(calls, batch: int, itemsize: int):
    """(max transient, retained sum) before and after, in bytes."""
    out = defaultdict(int)
    for c in calls:
        if c['nW'] is None:
            continue                       # unshifted block: [heads, L, L] was broadcast already
        n = c['S'] * batch * c['nW']       # windows in the batch, all streams
        per_window = c['heads'] * c['L'] * c['L']
        before_retained = n * per_window * itemsize
        before_transient = n * per_window * 4 + (before_retained if itemsize != 4 else 0)
        after_retained = c['nW'] * per_window * itemsize
        after_transient = 3 * n * c['heads'] * c['L'] * c['hd'] * itemsize + after_retained
        out['before_retained'] += before_retained
        out['after_retained'] += after_retained
        out['before_transient'] = max(out['before_transient'], before_transient)
        out['after_transient'] = max(out['after_transient'], after_transient)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    lines = [f'# tools/attention_bias_memory.py --batch {args.batch}: shifted-window bias memory, 448x448, '
             f'PASCAL (4 tasks); sizes from the shapes each attention call saw, GiB',
             f'{"method":15} {"dtype":5} {"before: retained":>17} {"max transient":>14} '
             f'{"after: retained":>16} {"max transient":>14} {"saved at peak":>14}']
    for method in args.methods:
        calls = attention_calls(method)
        for dtype, size in (('bf16', 2), ('fp32', 4)):
            b = bias_bytes(calls, args.batch, size)
            saved = (b['before_retained'] + b['before_transient']) - (b['after_retained'] + b['after_transient'])
            lines.append(f'{method:15} {dtype:5} {b["before_retained"] / GIB:17.2f} '
                         f'{b["before_transient"] / GIB:14.2f} {b["after_retained"] / GIB:16.3f} '
                         f'{b["after_transient"] / GIB:14.2f} {saved / GIB:14.2f}')
        print(lines[-2], lines[-1], sep='\n', flush=True)
    text = '\n'.join(lines) + '\n'
    if args.out:
        with open(args.out, 'a' if args.methods != list(METHODS) else 'w') as f:
            f.write(text)
    else:
        print(text)


if __name__ == '__main__':
    main()
