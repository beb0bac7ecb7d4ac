"""``mtlbench`` command line: run, params, data, leaderboard, sweep, bench, methods.

Each subcommand is a thin layer over a library function, so everything here can also be done
from Python. Errors a user can fix (unknown method, missing data, bad override) are printed as
one clear line and exit code 2, never as a traceback from deep inside.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

__all__ = ['main', 'build_parser']

DATASETS = ('pascal_context', 'nyudv2')


def _parse_value(text: str) -> Any:
    import ast
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_cfg_options(items: Optional[List[str]]) -> Dict[str, Any]:
    out = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'--cfg-options expects key=value, got {item!r}')
        key, value = item.split('=', 1)
        out[key] = _parse_value(value)
    return out


# ------------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    from mtlbench.run import RunOptions, run

    opts = RunOptions(
        method=args.method, dataset=args.dataset, config=args.config, data_root=args.data_root,
        pretrained=args.pretrained, work_dir=args.work_dir, results_dir=args.results_dir, seed=args.seed,
        epochs=args.epochs, iters=args.iters, batch_size=args.batch_size, num_workers=args.num_workers,
        img_size=args.img_size, tasks=args.tasks, amp=args.amp, launcher=args.launcher, resume=args.resume,
        deterministic=args.deterministic, cfg_options=_parse_cfg_options(args.cfg_options),
        synthetic_samples=args.synthetic_samples, max_samples=args.max_samples,
        eval_only=args.eval_only, eval_before_train=args.eval_before_train, merged=args.merged,
        compile=args.compile)
    paths = run(opts)
    for p in paths:
        print(f'run record written: {p}')
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from mtlbench.params import format_breakdown, method_breakdown

    rows = method_breakdown(args.method, args.dataset, tasks=args.tasks, config=args.config,
                            cfg_options=_parse_cfg_options(args.cfg_options))
    print(format_breakdown(rows, per_layer=args.per_layer))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == 'verify':
        from mtlbench.datasets import verify_dataset
        report = verify_dataset(args.dataset, args.root, tasks=args.tasks)
        print(report.format())
        return 0 if report.ok else 1
    if args.data_cmd == 'synth':
        from mtlbench.datasets import write_synthetic_dataset
        info = write_synthetic_dataset(args.dataset, args.out, n=args.n, seed=args.seed)
        print(f'synthetic {args.dataset} dataset written to {args.out}: {info}')
        return 0
    raise AssertionError(args.data_cmd)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from mtlbench.reporting.leaderboard import run_leaderboard

    text = run_leaderboard(runs_dir=args.runs, bench_dir=args.bench, dataset=args.dataset,
                           formats=tuple(args.format.split(',')), out_dir=args.out,
                           with_reported=args.with_reported, plots=args.plots)
    print(text)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mtlbench.sweep import emit_slurm, plan_sweep, run_sweep

    methods = [m for m in args.methods.split(',') if m]
    seeds = [int(s) for s in args.seeds.split(',') if s]
    extra = list(args.extra or [])
    if extra[:1] == ['--']:
        extra = extra[1:]
    if '--results-dir' not in extra:
        extra += ['--results-dir', args.runs]
    # a run without --data-root trains on synthetic data unless the config's default root exists
    synthetic = None
    if '--data-root' not in extra:
        from mtlbench.config import find_config, load_config
        cfg = load_config(find_config(methods[0], args.dataset)) if methods else None
        synthetic = cfg is None or not os.path.isdir(cfg.train_dataloader.dataset.data_root)
    jobs = plan_sweep(methods, seeds, args.dataset, extra, synthetic=synthetic)
    if args.emit == 'slurm':
        path = emit_slurm(jobs, args.slurm_out, gpus_per_job=args.gpus_per_job)
        print(f'Slurm job-array script written: {path} ({len(jobs)} jobs)')
        return 0
    run_sweep(jobs, args.runs, dry_run=args.dry_run)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mtlbench.bench import BenchOptions, bench, bench_loader

    if args.loader:
        res = bench_loader(args.dataset, args.data_root, num_workers=args.num_workers, batch_size=args.batch_size,
                           batches=args.iters, img_size=tuple(args.img_size))
        print(f'data loader ({args.dataset}, {res["num_workers"]} workers, batch {args.batch_size}, '
              f'{args.img_size[0]}x{args.img_size[1]}): {res["img_s"]:.1f} img/s over {res["samples"]} samples')
        return 0

    methods = [m.strip() for m in (args.method or '').split(',') if m.strip()]
    if not methods:
        raise ValueError('mtlbench bench needs --method (or --loader)')
    if methods == ['all']:
        import mtlbench.methods  # noqa: F401
        from mtlbench.registry import METHODS
        # single_task is one model per task, not one model: it has no single bench figure
        methods = sorted(m for m in METHODS.module_dict if m != 'single_task')
        print('bench all: single_task skipped (one model per task)', flush=True)
    if len(methods) > 1:
        # one process per method: peak memory on CPU is the process's max RSS, which never falls
        for i, method in enumerate(methods):
            print(f'[{i + 1}/{len(methods)}] {method}', flush=True)
            subprocess.run([sys.executable, '-m', 'mtlbench.cli'] + _bench_argv(args, method), check=True)
        return 0
    opts = BenchOptions(method=methods[0], dataset=args.dataset, device=args.device, batch_size=args.batch_size,
                        amp=args.amp, compile=args.compile, img_size=tuple(args.img_size), iters=args.iters,
                        warmup=args.warmup, out_dir=args.out, merged=args.merged, arch=args.arch,
                        cfg_options=_parse_cfg_options(args.cfg_options))
    print(f'bench record written: {bench(opts)}')
    return 0


def _bench_argv(args: argparse.Namespace, method: str) -> List[str]:
    """The ``mtlbench bench`` command line for one method of a multi-method bench."""
    argv = ['bench', '--method', method, '--dataset', args.dataset, '--device', args.device,
            '--batch-size', str(args.batch_size), '--amp', args.amp, '--img-size', *map(str, args.img_size),
            '--arch', args.arch, '--iters', str(args.iters), '--warmup', str(args.warmup), '--out', args.out]
    argv += ['--compile'] * bool(args.compile) + ['--merged'] * bool(args.merged)
    if args.cfg_options:
        argv += ['--cfg-options', *args.cfg_options]
    return argv


def cmd_ranks(args: argparse.Namespace) -> int:
    import json

    from mtlbench.ranks import final_ranks_from_history, format_rank_table, plot_rank_history

    with open(args.record) as f:
        rec = json.load(f)
    history = rec.get('rank_history')
    if not history:
        raise ValueError(f'{args.record}: the run record has no rank_history (method {rec.get("method")!r})')
    print(format_rank_table(final_ranks_from_history(history)))
    if args.plot:
        print(f'plot written: {plot_rank_history(history, args.plot)}')
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import mtlbench.methods  # noqa: F401
    from mtlbench.config import list_configs
    from mtlbench.registry import METHODS

    for name in sorted(METHODS.module_dict):
        cls = METHODS.get(name)
        doc = (cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''
        print(f'{name:16s} {doc}')
        for p in list_configs(name):
            print(f'{"":16s}   configs/{name}/{p.name}')
    return 0


# ------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='mtlbench', description='Multi-task PEFT benchmark harness.')
    sub = p.add_subparsers(dest='command', required=True)

    r = sub.add_parser('run', help='train + evaluate one method and write a run record')
    r.add_argument('--method', required=True, help='registered method (see `mtlbench methods`)')
    r.add_argument('--dataset', default='pascal_context', choices=DATASETS)
    r.add_argument('--config', help='config file (default: configs/<method>/<method>_swin-t_<dataset>.py); a config is '
                   'Python and runs with your rights, as in every mmengine project: use only configs you trust')
    r.add_argument('--data-root', help='dataset root (default: the config\'s, else a synthetic dataset)')
    r.add_argument('--pretrained', help='local Swin checkpoint (official .pth or timm format)')
    r.add_argument('--work-dir', help='checkpoints and logs (default: work_dirs/<method>[_<variant>]_<dataset>_s<seed>_<hash of the model settings>)')
    r.add_argument('--results-dir', default='results/runs', help='where run records go')
    r.add_argument('--seed', type=int, default=0)
    r.add_argument('--epochs', type=int)
    r.add_argument('--iters', type=int, help=argparse.SUPPRESS)
    r.add_argument('--batch-size', type=int, help='per-GPU batch size')
    r.add_argument('--num-workers', type=int)
    r.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'))
    r.add_argument('--tasks', nargs='+', help='subset of the dataset\'s tasks')
    r.add_argument('--amp', nargs='?', const='fp16', choices=('fp16', 'bf16', 'off'),
                   help='training precision (default: the config\'s, fp16 AMP as the reference, on CUDA; '
                        'CPU runs train in fp32); `off` = fp32')
    r.add_argument('--launcher', default='none', choices=('none', 'pytorch', 'slurm'),
                   help='`pytorch` under torchrun for multi-GPU DDP')
    r.add_argument('--resume', nargs='?', const='required', choices=['required', 'auto'], default=None,
                   help='continue from the newest checkpoint of this model in the work dir; "--resume auto" starts '
                        'afresh when there is none (what a requeued Slurm job needs)')
    r.add_argument('--deterministic', action='store_true', help='deterministic cuDNN / algorithms')
    r.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', help='override config keys')
    r.add_argument('--synthetic-samples', type=int, help=argparse.SUPPRESS)
    r.add_argument('--max-samples', type=int, help='use only the first N samples of each split')
    r.add_argument('--eval-only', metavar='CHECKPOINT',
                   help='only evaluate CHECKPOINT on the val split (writes <work_dir>/eval_metrics.json)')
    r.add_argument('--merged', action='store_true',
                   help='with --eval-only: fold mergeable adapters into the frozen weights before scoring')
    r.add_argument('--eval-before-train', action='store_true',
                   help='also score the untrained model (kept in the record as initial_metrics)')
    r.add_argument('--compile', action='store_true',
                   help='torch.compile the backbone and decoder (same results; faster on GPU, not on small CPUs)')
    r.add_argument('--local-rank', '--local_rank', type=int, default=0, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)

    pa = sub.add_parser('params', help='trainable-parameter breakdown (no data needed)')
    pa.add_argument('--method', required=True)
    pa.add_argument('--dataset', default='pascal_context', choices=DATASETS)
    pa.add_argument('--tasks', nargs='+')
    pa.add_argument('--config')
    pa.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE')
    pa.add_argument('--per-layer', action='store_true', help='also list each adapted site')
    pa.set_defaults(func=cmd_params)

    d = sub.add_parser('data', help='verify or synthesise datasets')
    dsub = d.add_subparsers(dest='data_cmd', required=True)
    v = dsub.add_parser('verify', help='check splits, counts and every file of a dataset')
    v.add_argument('--dataset', required=True, choices=DATASETS)
    v.add_argument('--root', required=True)
    v.add_argument('--tasks', nargs='+')
    s = dsub.add_parser('synth', help='write a small synthetic dataset in the real layout')
    s.add_argument('--dataset', required=True, choices=DATASETS)
    s.add_argument('--out', required=True)
    s.add_argument('--n', type=int, default=16)
    s.add_argument('--seed', type=int, default=0)
    d.set_defaults(func=cmd_data)

    lb = sub.add_parser('leaderboard', help='tables (md/csv/tex/json) and plots from run records')
    lb.add_argument('--dataset', choices=DATASETS)
    lb.add_argument('--runs', default='results/runs')
    lb.add_argument('--bench', default='results/bench')
    lb.add_argument('--format', default='md,csv,tex,json')
    lb.add_argument('--out', default='results')
    lb.add_argument('--with-reported', action='store_true', help='add the papers\' reported rows')
    lb.add_argument('--plots', action='store_true', help='also per-task bar plots')
    lb.set_defaults(func=cmd_leaderboard)

    sw = sub.add_parser('sweep', help='run a methods x seeds grid (or emit a Slurm array)')
    sw.add_argument('--methods', required=True)
    sw.add_argument('--seeds', default='0')
    sw.add_argument('--dataset', default='pascal_context', choices=DATASETS)
    sw.add_argument('--runs', default='results/runs')
    sw.add_argument('--dry-run', action='store_true')
    sw.add_argument('--emit', choices=('slurm',))
    sw.add_argument('--slurm-out', default='sweep.sbatch')
    sw.add_argument('--gpus-per-job', type=int, default=1)
    sw.add_argument('extra', nargs=argparse.REMAINDER, help='-- extra arguments passed to every run')
    sw.set_defaults(func=cmd_sweep)

    b = sub.add_parser('bench', help='throughput / memory / FLOPs on synthetic tensors, or the data loader')
    b.add_argument('--method', help="method(s) to bench: a name, a comma list, or 'all' (not needed with --loader)")
    b.add_argument('--loader', action='store_true', help='measure the training data pipeline (img/s) instead')
    b.add_argument('--data-root', help='with --loader: dataset root (default: the synthetic dataset)')
    b.add_argument('--num-workers', type=int, default=2, help='with --loader: DataLoader workers')
    b.add_argument('--dataset', default='pascal_context', choices=DATASETS)
    b.add_argument('--device', default='cuda' if _cuda() else 'cpu', choices=('cpu', 'cuda'))
    b.add_argument('--batch-size', type=int, default=2)
    b.add_argument('--amp', default='off', choices=('bf16', 'fp16', 'off'))
    b.add_argument('--compile', action='store_true')
    b.add_argument('--merged', action='store_true', help='inference with shared adapters folded in')
    b.add_argument('--img-size', type=int, nargs=2, default=(448, 448), metavar=('H', 'W'))
    b.add_argument('--arch', default='tiny', help='backbone: swin-t, swin-s, swin-b (or tiny, small, base, toy)')
    b.add_argument('--iters', type=int, default=10)
    b.add_argument('--warmup', type=int, default=3)
    b.add_argument('--out', default='results/bench')
    b.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                   help='override config keys, e.g. model.backbone.window_size=4 for --arch toy at 128x128')
    b.set_defaults(func=cmd_bench)

    rk = sub.add_parser('ranks', help="per-adapter rank table (and plot) of a run record's rank_history")
    rk.add_argument('record', help='run record JSON (results/runs/*.json)')
    rk.add_argument('--plot', metavar='PNG', help='also plot the rank history to this PNG')
    rk.set_defaults(func=cmd_ranks)

    m = sub.add_parser('methods', help='list registered methods and their configs')
    m.set_defaults(func=cmd_methods)
    return p


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _user_errors():
    from mtlbench.config import ConfigError
    from mtlbench.engine.checkpoint import CheckpointError
    from mtlbench.backbones.swin import PretrainedLoadError
    from mtlbench.model import NonFiniteLossError
    errors = [ConfigError, CheckpointError, PretrainedLoadError, NonFiniteLossError, FileNotFoundError,
              KeyError, ValueError, NotImplementedError]
    try:
        from mtlbench.datasets import DatasetError
        errors.insert(0, DatasetError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get('MTLBENCH_DEBUG'):
        return args.func(args)
    try:
        return args.func(args)
    except _user_errors() as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'mtlbench {args.command}: error: {msg}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
