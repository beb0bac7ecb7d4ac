"""FAAR PDRS rank recovery: do the pruned ranks find a planted rank, and does the fit survive?

A frozen linear ``W`` (d = 96) is adapted by a FAAR DoRA linear trained to regress
``W* = W + D`` with ``D`` of known rank ``k`` and a flat spectrum (all singular values equal).
PDRS runs through the real :class:`~mtlbench.methods.faar.pdrs.PDRSHook` driven by a small
stand-in for mmengine's runner: mmengine's ``LinearLR`` warm-up then cosine, per-iteration
losses fed to the hook, a prune after every epoch (40 steps). Each case is compared with the
same adapter trained on the same schedule without PDRS (no masking, no pruning).

Fit error: ``||W'_merged - W*||_F / ||D||_F`` (exact, from the merged weight).

Cases: single adapters with planted ranks 2 / 8 / 24 and initial ranks 16 / 32 / 64 (capped at
d), and a multi-adapter toy (one per-task DoRA adapter per planted rank, one summed loss, one
stop rule for all).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/faar_rank_recovery.py [--epochs 30] \
        [--prune-rule gain] [--stop stable-or-loss] [--seeds 0]
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from mtlbench.methods.faar import FAARLinear, FAARTaskLinear, PDRSHook

D = 96
STEPS_PER_EPOCH = 40
BATCH = 64


def planted_delta(d: int, k: int, gen: torch.Generator, sigma: float = 0.3) -> torch.Tensor:
    """A ``[d, d]`` matrix of rank ``k`` whose ``k`` singular values all equal ``sigma``."""
    U = torch.linalg.qr(torch.randn(d, k, generator=gen))[0]
    V = torch.linalg.qr(torch.randn(d, k, generator=gen))[0]
    return sigma * U @ V.t()


def frozen_base(d: int, gen: torch.Generator) -> nn.Linear:
    base = nn.Linear(d, d)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(d)
        base.weight.copy_(torch.empty(d, d).uniform_(-bound, bound, generator=gen))
        base.bias.copy_(torch.empty(d).uniform_(-bound, bound, generator=gen))
    base.requires_grad_(False)
    return base


def _merged(layer: nn.Module, unit, magnitude: Optional[torch.Tensor]) -> torch.Tensor:
    from mtlbench.methods.faar import dora_coefficient
    W = layer.base_layer.weight
    with torch.no_grad():
        merged = W + unit.delta_weight()
        if magnitude is not None:
            merged = merged * dora_coefficient(W, unit, magnitude)[:, None]
    return merged


class _Runner(SimpleNamespace):
    """What :class:`PDRSHook` reads from mmengine's Runner."""


def train(truths: Sequence[int], r0: int, pdrs: bool, seed: int = 0, epochs: int = 40, warmup: int = 3,
          lr: float = 5e-3, noise: float = 0.01, hook_kw: Optional[Dict[str, Any]] = None, unit_kw: Optional[Dict[str, Any]] = None
          ) -> Dict[str, Any]:
    """Train one adapter per planted rank in ``truths`` (one: :class:`FAARLinear`; several: a
    :class:`FAARTaskLinear` with one task per truth), return ranks, fit errors, stop info."""
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR

    gen = torch.Generator().manual_seed(seed)
    base = frozen_base(D, gen)
    deltas = [planted_delta(D, k, gen) for k in truths]
    torch.manual_seed(seed + 1000)
    kw = dict(prefix_masking=pdrs, scoring=pdrs, **(unit_kw or {}))
    multi = len(truths) > 1
    if multi:
        layer = FAARTaskLinear(base, [f't{i}' for i in range(len(truths))], r0, scale=1.0, **kw)
        units, mags = list(layer.faar_units), list(layer.faar_magnitude)
    else:
        layer = FAARLinear(base, r0, scale=1.0, **kw)
        units, mags = [layer.faar_unit], [layer.faar_magnitude]
    targets = [base.weight + dlt for dlt in deltas]
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    total = epochs * STEPS_PER_EPOCH
    scheds = [LinearLR(opt, start_factor=1e-3, by_epoch=False, begin=0, end=warmup * STEPS_PER_EPOCH),
              CosineAnnealingLR(opt, T_max=total - warmup * STEPS_PER_EPOCH, by_epoch=False,
                                begin=warmup * STEPS_PER_EPOCH, end=total, eta_min_ratio=1e-2)]
    runner = _Runner(model=layer, optim_wrapper=OptimWrapper(opt), epoch=0, iter=0, param_schedulers=scheds,
                     train_dataloader=range(STEPS_PER_EPOCH))
    hook = PDRSHook(**(hook_kw or {})) if pdrs else None
    if hook is not None:
        hook.before_train(runner)
    data_gen = torch.Generator().manual_seed(seed + 7)
    ranks_by_epoch: List[List[int]] = []
    layer.train()
    for ep in range(epochs):
        runner.epoch = ep
        for i in range(STEPS_PER_EPOCH):
            x = torch.randn(BATCH, D, generator=data_gen)
            out = layer(x[None])
            outs = out[1:] if multi else out
            ys = [x @ tgt.t() + base.bias + noise * torch.randn(BATCH, D, generator=data_gen) for tgt in targets]
            loss = sum((outs[t] - ys[t]).square().mean() for t in range(len(truths)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            for s in scheds:
                s.step()
            if hook is not None:
                hook.after_train_iter(runner, i, outputs={'loss': loss.detach()})
            runner.iter += 1
        if hook is not None:
            hook.after_train_epoch(runner)
        ranks_by_epoch.append([u.rank for u in units])
    errors = [float((_merged(layer, u, m) - tgt).norm() / dlt.norm()) for u, m, tgt, dlt
              in zip(units, mags, targets, deltas)]
    first_prune = None
    for u in units:
        trace = u.faar_rank_trace.tolist()
        if len(trace) > 1:
            first_prune = trace[1][0] if first_prune is None else min(first_prune, trace[1][0])
    sched = hook.schedule if hook is not None else None
    return dict(ranks=[u.rank for u in units], errors=errors, ranks_by_epoch=ranks_by_epoch,
                first_prune=first_prune, begin=sched.begin if sched else None,
                stopped=bool(sched and sched.stopped), stop_step=sched.stop_step if sched else None,
                stop_reason=sched.stop_reason if sched else None,
                masking_after=[u.prefix_masking for u in units])


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--epochs', type=int, default=40)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0])
    ap.add_argument('--truths', type=int, nargs='+', default=[2, 8, 24])
    ap.add_argument('--inits', type=int, nargs='+', default=[16, 32, 64])
    ap.add_argument('--prune-rule', default='gain')
    ap.add_argument('--gain-threshold', type=float, default=0.25)
    ap.add_argument('--score-norm', default='active_mean')
    ap.add_argument('--noise', type=float, default=0.01)
    ap.add_argument('--stop', default='stable')
    ap.add_argument('--no-unmask', action='store_true')
    ap.add_argument('--no-multi', action='store_true')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger('mmengine').setLevel(logging.WARNING)
    unit_kw = dict(prune_rule=args.prune_rule, gain_threshold=args.gain_threshold, score_norm=args.score_norm)
    hook_kw = dict(stop=args.stop, unmask_after_stop=not args.no_unmask)
    t0 = time.time()
    print(f'# d={D}, {STEPS_PER_EPOCH} steps/epoch, {args.epochs} epochs, warm-up {args.warmup}, noise {args.noise}, '
          f'{unit_kw}, {hook_kw}')
    print(f"{'case':<14}{'seed':>5}{'truth':>7}{'init':>6}{'final':>7}{'err':>10}{'err_unpr':>10}{'ratio':>7}"
          f"{'1st prune':>10}{'stop':>14}")
    cases = [([k], r0) for k in args.truths for r0 in args.inits if r0 >= k]  # r0 < k cannot recover k
    if not args.no_multi:
        cases += [(list(args.truths), r0) for r0 in args.inits if r0 >= max(args.truths)]
    for seed in args.seeds:
        for truths, r0 in cases:
            common = dict(seed=seed, epochs=args.epochs, warmup=args.warmup, noise=args.noise)
            res = train(truths, r0, True, hook_kw=hook_kw, unit_kw=unit_kw, **common)
            ref = train(truths, r0, False, **common)
            name = 'single' if len(truths) == 1 else 'multi'
            for i, k in enumerate(truths):
                print(f"{name:<14}{seed:>5}{k:>7}{min(r0, D):>6}{res['ranks'][i]:>7}{res['errors'][i]:>10.4f}"
                      f"{ref['errors'][i]:>10.4f}{res['errors'][i] / ref['errors'][i]:>7.2f}"
                      f"{str(res['first_prune']):>10}{str(res['stop_step']) + ' ' + str(res['stop_reason']):>14}")
    print(f'# {time.time() - t0:.0f} s')


if __name__ == '__main__':
    main()
