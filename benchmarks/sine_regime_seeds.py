#!/usr/bin/env python
"""Free Sinewich's sine regime after a short training, over seeds (a light companion of
``sine_regime.py``, which trains through ``mtlbench run`` and costs minutes per run).

Per seed and ``sine_norm`` setting: the toy Swin + Free Sinewich (64x64 inputs, narrow decoder)
is trained in-process for ``--steps`` AdamW steps (lr 1e-3, no weight decay) on one fixed
random batch and random per-task targets (mean squared error), then the figures the run record
logs (``record_extras()['sine_regime']``) are read: max ``|w_t M|`` (the sine's argument), max
relative gap between a task kernel and its linearisation, mean inter-task kernel cosine. The
seed sets the model's initialisation, the batch and the targets.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/sine_regime_seeds.py [--steps 20] \
        [--seeds 0 1 2] [--out results/studies/sine_regime_seeds.md]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import mean, pstdev

SETTINGS = {
    "'rms' kappa=0.5 (default)": dict(),
    "'reference' w_ref=10 (former)": dict(sine_norm='reference'),
}
KEYS = ('max_abs_arg', 'max_rel_gap', 'mean_task_cosine')


def trained_regime(seed: int, steps: int, **options) -> dict:
    import torch
    import mtlbench.methods  # noqa: F401
    from mtlbench.model import MultiTaskModel
    torch.manual_seed(seed)
    model = MultiTaskModel('pascal_context', dict(type='free_sinewich', **options),
                           dict(type='SwinBackbone', arch='toy', img_size=(64, 64), window_size=4, drop_path_rate=0.0),
                           decoder=dict(channels=(4, 8, 8, 8)))
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(2, 3, 64, 64, generator=g)
    model.train()
    with torch.no_grad():
        targets = {t: torch.randn(v.shape, generator=g) for t, v in model(x).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    for _ in range(steps):
        out = model(x)
        loss = sum((out[t] - targets[t]).square().mean() for t in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model(x)
    reg = model.method.record_extras(model)['sine_regime']
    return {k: reg[k] for k in KEYS} | {'loss': float(loss.detach())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--out', help='write the markdown table here')
    args = p.parse_args(argv)
    import logging
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)  # the random-init warning is expected
    t0 = time.time()
    rows = []
    for name, opts in SETTINGS.items():
        for seed in args.seeds:
            r = trained_regime(seed, args.steps, **opts)
            rows.append(dict(r, setting=name, seed=seed))
            print(f"{name:32s} seed {seed}: max|z| {r['max_abs_arg']:8.3f}  gap {r['max_rel_gap']:7.2%}  "
                  f"cos {r['mean_task_cosine']:.5f}  loss {r['loss']:.3f}", flush=True)
    lines = ['# Free Sinewich sine regime after a short training, 3 seeds', '',
             f'Toy Swin + Free Sinewich, 64x64, {args.steps} AdamW steps (lr 1e-3) on a fixed random batch of 2 '
             'with random per-task targets; figures as logged in the run record (`sine_regime`, over the 8 '
             'Sine-AWB layers): max |w_t M| or, for \'rms\', max |z| (the sine\'s argument), max relative gap '
             'task kernel vs its linearisation, mean inter-task kernel cosine.', '',
             '| setting | seed | max abs arg | max gap | mean cosine |', '|---|---:|---:|---:|---:|']
    lines += [f"| {r['setting']} | {r['seed']} | {r['max_abs_arg']:.3f} | {r['max_rel_gap']:.1%} | "
              f"{r['mean_task_cosine']:.5f} |" for r in rows]
    lines += ['', '| setting | seeds | max abs arg | max gap | mean cosine |', '|---|---:|---:|---:|---:|']
    for name in SETTINGS:
        sel = [r for r in rows if r['setting'] == name]
        cells = [fmt.format(mean(r[k] for r in sel), pstdev([r[k] for r in sel]))
                 for k, fmt in zip(KEYS, ('{:.3f} +- {:.3f}', '{:.1%} +- {:.1%}', '{:.5f} +- {:.5f}'))]
        lines.append(f'| {name} | {len(sel)} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'Command: `PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/sine_regime_seeds.py --steps '
              f'{args.steps} --seeds {" ".join(map(str, args.seeds))} --out {args.out or "..."}` '
              f'({time.time() - t0:.0f} s wall on a shared 2-core machine).']
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
