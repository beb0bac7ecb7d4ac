#!/usr/bin/env python
"""FAAR rank study on the synthetic pipeline: where PDRS leaves rank, and what moves it.

Short ``mtlbench run`` trainings of the toy Swin (dims 16/32/64/128, every adapter at initial
rank 16, the cap of the narrowest stage) + FAAR on a synthetic PASCAL-Context, one per setting:
the defaults, then one PDRS option changed at a time (EMA ``beta``, ``score_inactive``, and the
prune schedule: first prune, interval, stop rule). From each run record's ``rank_history`` the
final ranks are averaged by stage (1-4) and by kind (shared adapters vs per-task adapters of the
stages' last blocks), with the step where pruning stopped and the final training loss.

A toy with random backbone weights and 16 synthetic images: the numbers show how the options
move the ranks, not the ranks of a real run.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/faar_rank_study.py \
        [--epochs 30] [--n 16] [--seeds 0] [--out results/studies/faar_rank_study.md]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Dict, List

SETTINGS: Dict[str, List[str]] = {
    'defaults (beta 0.85, keep, from warm-up end, every epoch, stable)': [],
    'beta 0.5': ['model.method.beta=0.5'],
    'beta 0.95': ['model.method.beta=0.95'],
    "score_inactive 'zero'": ['model.method.score_inactive=zero'],
    'first prune after epoch 4 (not at the warm-up end)': ['model.method.prune_begin=4'],
    'prune every 3 epochs': ['model.method.prune_interval=3'],
    "prune_stop 'never' (masking to the end)": ['model.method.prune_stop=never'],
    "prune_rule 'coverage' rho 0.95 (paper's text)": ['model.method.prune_rule=coverage'],
}
FAST = ['model.backbone.arch=toy', 'model.backbone.window_size=4', 'model.backbone.drop_path_rate=0.1',
        'model.decoder.channels=(4,8,8,8)', 'optim_wrapper.optimizer.lr=0.001', 'auto_scale_lr.enable=False',
        'train_dataloader.drop_last=False', 'train_cfg.val_interval=100000',
        'model.method.r=16', 'model.method.task_r=16']


def summarise(rec: dict, losses: List[float]) -> dict:
    """Final ranks by stage and kind from a run record's rank history."""
    from mtlbench.ranks import final_ranks_from_history
    table = final_ranks_from_history(rec['rank_history'])
    by: Dict[str, List[int]] = {}
    for layer, row in table.items():
        stage = int(re.match(r'layers\.(\d+)\.', layer).group(1)) + 1
        for task, rank in row.items():
            kind = 'shared' if task == 'shared' else 'task'
            by.setdefault(f's{stage} {kind}', []).append(rank)
            by.setdefault(kind, []).append(rank)
            by.setdefault('all', []).append(rank)
    stop = rec.get('pdrs_stop') or {}
    tail = losses[-max(1, len(losses) // 10):] if losses else [float('nan')]
    return dict(mean={k: mean(v) for k, v in by.items()}, n={k: len(v) for k, v in by.items()},
                stop_step=stop.get('step'), stop_reason=stop.get('reason'), final_loss=mean(tail),
                table=table)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--epochs', type=int, default=30)
    p.add_argument('--n', type=int, default=16, help='synthetic samples')
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--settings', nargs='*', default=list(SETTINGS))
    p.add_argument('--out', help='write the markdown table here')
    p.add_argument('--json', help='write every figure here')
    p.add_argument('--from-json', nargs='+', help='only render the table from these --json files (runs split '
                                                  'over several processes)')
    args = p.parse_args(argv)
    t0 = time.time()
    if args.from_json:
        merged: Dict[str, List[dict]] = {}
        for f in args.from_json:
            for name, rows in json.loads(Path(f).read_text()).items():
                merged.setdefault(name, []).extend(rows)
        order = [n for n in SETTINGS if n in merged] + [n for n in merged if n not in SETTINGS]
        return render({n: merged[n] for n in order}, args, seconds=None)
    from mtlbench.cli import main as cli
    from mtlbench.datasets import write_synthetic_dataset
    results: Dict[str, List[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'data'
        write_synthetic_dataset('pascal_context', str(root), n=args.n, seed=0)
        for i, name in enumerate(args.settings):
            for seed in args.seeds:
                out = Path(tmp) / f'run{i}_s{seed}'
                t1 = time.time()
                rc = cli(['run', '--method', 'faar', '--data-root', str(root), '--work-dir', str(out / 'w'),
                          '--results-dir', str(out / 'runs'), '--epochs', str(args.epochs), '--batch-size', '2',
                          '--img-size', '128', '128', '--num-workers', '0', '--seed', str(seed),
                          '--cfg-options', *FAST, *SETTINGS[name]])
                if rc != 0:
                    print(f'{name} seed {seed}: run failed ({rc})', file=sys.stderr)
                    continue
                (rec_path,) = sorted((out / 'runs').glob('*.json'))
                rec = json.loads(rec_path.read_text())
                scal = sorted((out / 'w').glob('*/vis_data/scalars.json'))
                losses = [json.loads(line).get('loss') for line in scal[-1].read_text().splitlines()
                          if line.strip()] if scal else []
                row = summarise(rec, [v for v in losses if v is not None])
                row['seed'] = seed
                results.setdefault(name, []).append(row)
                m = row['mean']
                print(f"[{time.time() - t0:6.0f}s, run {time.time() - t1:4.0f}s] {name} seed {seed}: "
                      f"shared {m['shared']:.1f} task {m['task']:.1f} all {m['all']:.1f}  "
                      f"stop {row['stop_reason']}@{row['stop_step']}  loss {row['final_loss']:.3f}", flush=True)
                if args.json:  # after every run: a long study interrupted keeps what it has
                    Path(args.json).write_text(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return render(results, args, seconds=time.time() - t0)


def render(results: Dict[str, List[dict]], args, seconds) -> int:
    """The markdown table (printed, and written to ``--out``)."""
    seeds = sorted({r['seed'] for rows in results.values() for r in rows})
    cols = [f's{s} {k}' for k in ('shared', 'task') for s in (1, 2, 3, 4)]
    first = next(iter(results.values()))[0]
    lines = ['# FAAR rank study (synthetic PASCAL-Context, toy Swin, initial rank 16 everywhere)', '',
             f'{args.n} synthetic images, 128x128, batch 2, {args.epochs} epochs (lr warm-up: the reference '
             f"share, {args.epochs * 20 / 300:.1f} epochs), seeds {seeds}; mean final rank per group "
             '(over layers, tasks and seeds). Stage s = 1..4 (widths 16/32/64/128); shared = adapters of '
             "the non-last blocks and of the task blocks' shared stream; task = per-task adapters of "
             'each stage\'s last block. Adapters per group: '
             + ', '.join(f'{c} {first["n"].get(c, 0)}' for c in cols) + '.', '',
             '| setting | ' + ' | '.join(cols) + ' | shared | task | all | stop (reason@epoch) | final loss |',
             '|---|' + '---:|' * (len(cols) + 5)]
    for name, rows in results.items():
        def avg(key):
            vals = [r['mean'][key] for r in rows if key in r['mean']]
            return f'{mean(vals):.1f}' if vals else '-'
        stops = ', '.join(f"{r['stop_reason']}@{r['stop_step']}" for r in rows)
        lines.append(f'| {name} | ' + ' | '.join(avg(c) for c in cols) + f" | {avg('shared')} | {avg('task')} | "
                     f"{avg('all')} | {stops} | {mean(r['final_loss'] for r in rows):.3f} |")
    took = f' ({seconds:.0f} s)' if seconds is not None else ''
    lines += ['', f'Command: `PYTHONPATH=$PWD OMP_NUM_THREADS=1 python3 benchmarks/faar_rank_study.py --epochs '
              f'{args.epochs} --n {args.n} --seeds {" ".join(map(str, seeds))}`{took}; split over processes with '
              '`--settings ... --json part.json`, then `--from-json part*.json --out ...`.']
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
