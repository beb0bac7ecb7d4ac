#!/usr/bin/env python
"""Does Free Sinewich's sine act at trained magnitudes? Short synthetic runs, one per normalisation.

Trains the toy Swin + Free Sinewich on a synthetic PASCAL-Context (``mtlbench run``, CPU-fast
options of the tests) once per ``sine_norm`` setting and prints, from each run record's
``sine_regime``: max ``|w_t M|`` (the sine's argument), the max relative gap between the sine
kernel and its linearisation, the mean inter-task kernel cosine, and the trained magnitudes
(rms of ``A``, of ``W`` and of ``M``), over the 8 Sine-AWB layers.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/sine_regime.py [--epochs 12] [--n 16] \
        [--seeds 0 1 2] [--out results/studies/sine_regime_seeds.md]

With several seeds, ``--out`` gets one row per setting and seed and the mean +- std over seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    'reference w=10': ['model.method.sine_norm=reference'],
    'fan_in w=100': ['model.method.sine_norm=fan_in', 'model.method.omega_scale_init=100.0'],
    'fan_in w=1000': ['model.method.sine_norm=fan_in', 'model.method.omega_scale_init=1000.0'],
    'rms kappa=0.5': ['model.method.sine_norm=rms', 'model.method.sine_rms_arg=0.5'],
    'rms kappa=1': ['model.method.sine_norm=rms', 'model.method.sine_rms_arg=1.0'],
    'rms kappa=2': ['model.method.sine_norm=rms', 'model.method.sine_rms_arg=2.0'],
    'rms kappa=4': ['model.method.sine_norm=rms', 'model.method.sine_rms_arg=4.0'],
    'rms kappa=8': ['model.method.sine_norm=rms', 'model.method.sine_rms_arg=8.0'],
}
FAST = ['model.backbone.arch=toy', 'model.backbone.window_size=4', 'model.backbone.drop_path_rate=0.1',
        'model.decoder.channels=(4,8,8,8)', 'optim_wrapper.optimizer.lr=0.001', 'auto_scale_lr.enable=False']


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--n', type=int, default=16, help='synthetic samples')
    p.add_argument('--settings', nargs='*', default=list(SETTINGS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help='one run per setting and seed')
    p.add_argument('--out', help='write a markdown table of the figures here')
    p.add_argument('--extra', nargs='*', default=[], help='more --cfg-options for every run')
    p.add_argument('--json', help='write the figures here')
    p.add_argument('--save-factors', help="save every run's trained Sine-AWB factors and frequencies "
                                          "(torch.save, one dict per setting) here")
    args = p.parse_args(argv)
    from mtlbench.cli import main as cli
    from mtlbench.datasets import write_synthetic_dataset
    rows, factors = {}, {}
    runs = [(name, seed) for name in args.settings for seed in args.seeds]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'data'
        write_synthetic_dataset('pascal_context', str(root), n=args.n, seed=0)
        for setting, seed in runs:
            name = setting if args.seeds == [0] else f'{setting} seed {seed}'
            out = Path(tmp) / name.replace(' ', '_').replace('=', '')
            rc = cli(['run', '--method', 'free_sinewich', '--data-root', str(root), '--work-dir', str(out / 'w'),
                      '--results-dir', str(out / 'runs'), '--epochs', str(args.epochs), '--batch-size', '2',
                      '--img-size', '128', '128', '--num-workers', '0', '--seed', str(seed),
                      '--cfg-options', *FAST, *SETTINGS[setting], *args.extra])
            if rc != 0:
                print(f'{name}: run failed ({rc})', file=sys.stderr)
                continue
            if args.save_factors:
                import torch
                ckpts = sorted((out / 'w').rglob('*.pth'))
                state = torch.load(ckpts[-1], map_location='cpu', weights_only=False)['state_dict'] if ckpts else {}
                factors[name] = {k: v.clone() for k, v in state.items() if '.awb_' in k}
            (rec_path,) = sorted((out / 'runs').glob('*.json'))
            rec = json.loads(rec_path.read_text())
            reg = rec['sine_regime']
            layers = [v for v in reg['layers'].values() if v]
            rows[name] = dict(max_abs_arg=reg['max_abs_arg'], max_rel_gap=reg['max_rel_gap'],
                              mean_task_cosine=reg['mean_task_cosine'],
                              A_rms=max(v['A_rms'] for v in layers), W_rms=max(v['W_rms'] for v in layers),
                              M_rms=max(v['kernel_rms'] for v in layers), frequencies=rec['frequencies'],
                              layers=reg['layers'], metrics=rec['metrics'], setting=setting, seed=seed)
            print(f"{name:16s} max|z| {reg['max_abs_arg']:9.3f}  gap {reg['max_rel_gap']:7.2%}  "
                  f"cos {reg['mean_task_cosine']:.5f}  A_rms {rows[name]['A_rms']:.2e}  "
                  f"W_rms {rows[name]['W_rms']:.3f}  M_rms {rows[name]['M_rms']:.2e}", flush=True)
    if args.save_factors:
        import torch
        for name, row in rows.items():
            factors.setdefault(name, {})['frequencies'] = row['frequencies']
        torch.save(factors, args.save_factors)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(markdown(rows, args))
    return 0


def markdown(rows: dict, args) -> str:
    """Per run, then mean +- std over seeds per setting: max |z|, max gap, mean inter-task cosine."""
    from statistics import mean, pstdev
    keys = ('max_abs_arg', 'max_rel_gap', 'mean_task_cosine')
    lines = ['# Free Sinewich sine regime at trained magnitudes, per seed', '',
             f'Toy Swin + synthetic PASCAL-Context ({args.n} images, 128x128, batch 2, {args.epochs} epochs, '
             'AdamW lr 1e-3), figures from each run record\'s `sine_regime` over the 8 Sine-AWB layers: '
             'max |w_t M| (the sine\'s argument), max relative gap between the task kernel and its '
             'linearisation, mean inter-task kernel cosine.', '',
             '| setting | seed | max abs arg | max gap | mean cosine |', '|---|---:|---:|---:|---:|']
    for r in rows.values():
        lines.append(f"| {r['setting']} | {r['seed']} | {r['max_abs_arg']:.3f} | {r['max_rel_gap']:.1%} | "
                     f"{r['mean_task_cosine']:.5f} |")
    lines += ['', '| setting | seeds | max abs arg | max gap | mean cosine |', '|---|---:|---:|---:|---:|']
    for setting in dict.fromkeys(r['setting'] for r in rows.values()):
        sel = [r for r in rows.values() if r['setting'] == setting]
        cells = []
        for k, fmt in zip(keys, ('{:.3f} +- {:.3f}', '{:.1%} +- {:.1%}', '{:.5f} +- {:.5f}')):
            vals = [r[k] for r in sel]
            cells.append(fmt.format(mean(vals), pstdev(vals)))
        lines.append(f'| {setting} | {len(sel)} | ' + ' | '.join(cells) + ' |')
    lines += ['', 'Command: `PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/sine_regime.py --epochs '
              f'{args.epochs} --n {args.n} --seeds {" ".join(map(str, args.seeds))} --settings '
              + ' '.join(repr(s) for s in args.settings) + ' --out ...`']
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    sys.exit(main())
