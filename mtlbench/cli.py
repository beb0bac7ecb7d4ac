"""``mtlbench`` command line: run, params, data, leaderboard, sweep, reproduce, bench, ranks, methods.

Each subcommand is a thin layer over a library function, so everything here can also be done
from Python. Errors a user can fix (unknown method, missing data, bad override: the classes of
:mod:`mtlbench.errors`, and OS errors about a path the user gave) are printed as one clear line
and exit code 2; every other exception is a bug and keeps its traceback. ``--debug`` (or
``MTLBENCH_DEBUG=1``) shows the traceback of user errors too.

Building the parser imports nothing heavy (no torch, no mmengine): ``mtlbench --help`` answers
at once; each command imports what it needs.
"""
from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

__all__ = ['main', 'build_parser']

DATASETS = ('pascal_context', 'nyudv2')
#: Files ``mtlbench leaderboard`` can write (mtlbench.leaderboard's renderers).
LEADERBOARD_FORMATS = ('md', 'csv', 'tex', 'json')
#: Visualizer backends of ``mtlbench run --vis-backends`` (mtlbench.visualization).
VIS_BACKENDS = ('local', 'tensorboard', 'wandb')


from mtlbench.errors import OptionError


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
            raise OptionError(f'--cfg-options expects key=value, got {item!r}')
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
        compile=args.compile, vis_backends=args.vis_backends)
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
        info = write_synthetic_dataset(args.dataset, args.out, n=args.n, seed=args.seed, progress=True)
        print(f'synthetic {args.dataset} dataset written to {args.out}: {info}')
        return 0
    raise AssertionError(args.data_cmd)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    formats = tuple(f.strip() for f in args.format.split(',') if f.strip())
    bad = [f for f in formats if f not in LEADERBOARD_FORMATS]
    if bad:
        raise OptionError(f'--format: unknown format(s) {bad}; valid: {", ".join(LEADERBOARD_FORMATS)}')
    from mtlbench.reporting.leaderboard import run_leaderboard

    text = run_leaderboard(runs_dir=args.runs, bench_dir=args.bench, dataset=args.dataset,
                           formats=formats, out_dir=args.out,
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


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mtlbench.reporting.tables import DEFAULT_REFERENCE_DIR

    reference_dir = args.reference_dir or str(DEFAULT_REFERENCE_DIR)
    if args.list:
        from mtlbench.reproduce.table_ids import format_table_list, load_tables
        print(format_table_list(load_tables(reference_dir)))
        return 0
    if not args.table:
        raise OptionError('mtlbench reproduce needs a TABLE (`mtlbench reproduce --list` lists them)')
    try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    except ValueError:
        raise OptionError(f'--seeds expects comma-separated integers, got {args.seeds!r}') from None
    if not seeds:
        raise OptionError('--seeds: no seed given')
    from mtlbench.reproduce.command import ReproduceOptions, reproduce
    from mtlbench.reproduce.compare import parse_tolerances
    from mtlbench.reproduce.plan import RunSettings

    settings = RunSettings(seeds=seeds, runs_dir=args.runs, data_root=args.data_root, pretrained=args.pretrained,
                           work_dir=args.work_dir, cfg_options=_parse_cfg_options(args.cfg_options),
                           epochs=args.epochs, batch_size=args.batch_size, img_size=args.img_size,
                           num_workers=args.num_workers, synthetic_samples=args.synthetic_samples,
                           max_samples=args.max_samples, tasks=args.tasks)
    opts = ReproduceOptions(table=args.table, settings=settings, reference_dir=reference_dir,
                            bench_dir=args.bench, dry_run=args.dry_run, slurm=args.slurm,
                            slurm_out=args.slurm_out, gpus_per_job=args.gpus_per_job,
                            tolerances=parse_tolerances(args.tol))
    result = reproduce(opts)
    return 1 if any(o.status == 'failed' for o in result.outcomes) else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from mtlbench.bench import BenchOptions, bench, bench_loader

    if args.device == 'auto':
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'

    if args.loader:
        res = bench_loader(args.dataset, args.data_root, num_workers=args.num_workers, batch_size=args.batch_size,
                           batches=args.iters, img_size=tuple(args.img_size))
        print(f'data loader ({args.dataset}, {res["num_workers"]} workers, batch {args.batch_size}, '
              f'{args.img_size[0]}x{args.img_size[1]}): {res["img_s"]:.1f} img/s over {res["samples"]} samples')
        return 0

    methods = [m.strip() for m in (args.method or '').split(',') if m.strip()]
    if not methods:
        raise OptionError('mtlbench bench needs --method (or --loader)')
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
                        cfg_options=_parse_cfg_options(args.cfg_options), eval=args.eval)
    print(f'bench record written: {bench(opts)}')
    return 0


def _bench_argv(args: argparse.Namespace, method: str) -> List[str]:
    """The ``mtlbench bench`` command line for one method of a multi-method bench."""
    argv = ['bench', '--method', method, '--dataset', args.dataset, '--device', args.device,
            '--batch-size', str(args.batch_size), '--amp', args.amp, '--img-size', *map(str, args.img_size),
            '--arch', args.arch, '--iters', str(args.iters), '--warmup', str(args.warmup), '--out', args.out]
    argv += ['--compile'] * bool(args.compile) + ['--merged'] * bool(args.merged) + ['--eval'] * bool(args.eval)
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
        raise OptionError(f'{args.record}: the run record has no rank_history (method {rec.get("method")!r})')
    print(format_rank_table(final_ranks_from_history(history)))
    if args.plot:
        print(f'plot written: {plot_rank_history(history, args.plot)}')
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import mtlbench.methods  # noqa: F401
    from mtlbench.config import list_configs
    from mtlbench.registry import METHODS

    if args.method:
        print(format_method_options(args.method))
        return 0
    for name in sorted(METHODS.module_dict):
        cls = METHODS.get(name)
        doc = (cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''
        print(f'{name:16s} {doc}')
        for p in list_configs(name):
            print(f'{"":16s}   configs/{name}/{p.name}')
    print('\n`mtlbench methods NAME` lists a method\'s options with their help and defaults.')
    return 0


def format_method_options(name: str) -> str:
    """``mtlbench methods NAME``: the method's options (help, type, default) and what each of
    its shipped configs sets differently."""
    import mtlbench.methods  # noqa: F401
    from mmengine.config import Config

    from mtlbench.config import list_configs
    from mtlbench.method import method_options
    from mtlbench.registry import METHODS

    options = method_options(name)  # refuses an unknown name, listing the registered ones
    cls = METHODS.get(name)
    doc = (cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''
    lines = [f'{name}: {doc}', '', 'options (set with --cfg-options model.method.NAME=VALUE; default = the option\'s '
             'own, a config may set another):']
    width = max(len(o['name']) for o in options)
    for o in options:
        lines.append(f'  {o["name"]:<{width}}  {o["help"] or "(no help)"} [{o["type"]}, default: {o["default"]!r}]')
    defaults = {o['name']: o['default'] for o in options}
    configs = list_configs(name)
    if configs:
        lines += ['', 'configs (what each sets differently from the defaults):']
    for path in configs:
        try:
            method_cfg = dict(Config.fromfile(str(path)).model.method)
        except Exception as err:  # noqa: BLE001 - a broken config is reported, the listing goes on
            lines.append(f'  configs/{name}/{path.name}: cannot be read ({type(err).__name__}: {err})')
            continue
        method_cfg.pop('type', None)
        diff = {k: v for k, v in method_cfg.items() if _plain_value(v) != _plain_value(defaults.get(k))}
        shown = ' '.join(f'{k}={v!r}' for k, v in diff.items()) or '(the defaults)'
        lines.append(f'  configs/{name}/{path.name}: {shown}')
    return '\n'.join(lines)


def _plain_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows each option's default when it has one
    (``None`` / ``False`` mean "not given": the help text says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS  # (0 is a default to show)
        if ('%(default)' not in text and action.option_strings and not unset
                and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            text += ' (default: %(default)s)'
        return text


def _examples(*lines: str) -> str:
    return 'examples:\n' + '\n'.join(f'  {line}' for line in lines)


_DEBUG_HELP = ('show the full traceback of every error, also of errors in your input (same as MTLBENCH_DEBUG=1); '
               'without it those are one line and only bugs keep their traceback')


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: `mtlbench --debug run ...` and `mtlbench run ... --debug` both work
    parser.add_argument('--debug', action='store_true', default=argparse.SUPPRESS, help=_DEBUG_HELP)


def _sub(sub, name: str, help: str, epilog: str = '', description: str = '') -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + '.',
                            epilog=epilog or None, formatter_class=_HelpFormatter)
    _add_debug(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``mtlbench`` argument parser (imports nothing heavy: ``--help`` answers at once)."""
    p = argparse.ArgumentParser(
        prog='mtlbench', formatter_class=_HelpFormatter,
        description='Multi-task PEFT benchmark harness: train and score methods, write run records, '
                    'build leaderboards from them. `mtlbench COMMAND --help` lists the options of a command.',
        epilog=_examples(
            'mtlbench run --method faar                        # no dataset: a synthetic one, short CPU schedule',
            'mtlbench run --method mtlora --data-root /data/PASCAL_MT --pretrained swin_tiny_patch4_window7_224.pth',
            'mtlbench methods mtlora                           # options of a method, with help and defaults',
            'mtlbench leaderboard --dataset pascal_context --with-reported',
            'mtlbench sweep --methods mtlora,faar --seeds 0,1,2 --emit slurm',
            'mtlbench reproduce faar-pascal-main --dry-run     # the runs a paper\'s table needs',
            '',
            'Errors in your input (unknown method, bad option, missing file) are one line, exit code 2;',
            'anything else is a bug and keeps its traceback. --debug (or MTLBENCH_DEBUG=1) shows the',
            'traceback of every error.'))
    _add_debug(p)
    sub = p.add_subparsers(dest='command', required=True, metavar='COMMAND')

    r = _sub(sub, 'run', 'train + evaluate one method and write a run record', epilog=_examples(
        'mtlbench run --method faar                                  # synthetic data, CPU-sized schedule',
        'mtlbench run --method mtlora --dataset nyudv2 --data-root /data/NYUD_MT --pretrained swin_t.pth',
        'mtlbench run --method mtlora --cfg-options model.method.r=32 default_hooks.checkpoint.interval=10',
        'mtlbench run --method mtlora --resume                       # continue in the same work dir',
        'mtlbench run --method mtlora --eval-only work_dirs/.../epoch_300.pth',
        'torchrun --nproc_per_node 4 -m mtlbench.cli run --method faar --launcher pytorch ...'))
    r.add_argument('--method', required=True, help='registered method (see `mtlbench methods`)')
    r.add_argument('--dataset', default='pascal_context', choices=DATASETS, help='dataset (picks the default config)')
    r.add_argument('--config', help='config file (default: configs/<method>/<method>_swin-t_<dataset>.py); a config is '
                   'Python and runs with your rights, as in every mmengine project: use only configs you trust')
    r.add_argument('--data-root', help="dataset root (default: the config's, else a synthetic dataset with a "
                   'short CPU schedule, said loudly)')
    r.add_argument('--pretrained', help='local Swin backbone weights (official .pth or timm format; default: random '
                   'init, with a warning); an mtlbench checkpoint is refused if it was trained as another model')
    r.add_argument('--work-dir', help='checkpoints and logs (default: work_dirs/<method>[_<variant>]_<dataset>_s<seed>_'
                   '<hash of the model settings>)')
    r.add_argument('--results-dir', default='results/runs', help='where run records go')
    r.add_argument('--seed', type=int, default=0, help='seed of initialisation, data order and augmentation')
    r.add_argument('--epochs', type=int, help="training epochs (default: the config's, 300; 3 on synthetic data); "
                   'the schedule keeps its shape (warm-up share, cosine)')
    r.add_argument('--iters', type=int, help=argparse.SUPPRESS)
    r.add_argument('--batch-size', type=int, help="per-GPU batch size (default: the config's; 2 on synthetic data)")
    r.add_argument('--num-workers', type=int, help="data-loader worker processes per GPU (default: the config's, 8; "
                   '0 on synthetic data)')
    r.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                   help="network input size (default: the config's, 448 448; 224 224 on synthetic data)")
    r.add_argument('--tasks', nargs='+', help="subset of the dataset's tasks (default: all of them)")
    r.add_argument('--amp', nargs='?', const='fp16', choices=('fp16', 'bf16', 'off'),
                   help='training precision (default: the config\'s, fp16 AMP as the reference, on CUDA; '
                        'CPU runs train in fp32); `off` = fp32; `--amp` alone = fp16')
    r.add_argument('--launcher', default='none', choices=('none', 'pytorch', 'slurm'),
                   help='`pytorch` under torchrun for multi-GPU DDP')
    r.add_argument('--resume', nargs='?', const='required', choices=['required', 'auto'], default=None,
                   help='continue from the newest checkpoint of this model in the work dir; "--resume auto" starts '
                        'afresh when there is none (what a requeued Slurm job needs)')
    r.add_argument('--deterministic', action='store_true', help='deterministic cuDNN / algorithms')
    r.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                   help='override config keys (values are Python literals); a key the config lacks is refused, except '
                        "mmengine's runtime keys (visualizer, default_hooks, env_cfg, log_processor, ...), which are "
                        'checked against the classes they configure')
    r.add_argument('--vis-backends', nargs='+', choices=VIS_BACKENDS, metavar='BACKEND',
                   help='where training curves go: ' + ', '.join(VIS_BACKENDS) + ' (default: local, plus tensorboard '
                        "when the `tensorboard` package is installed; wandb needs `pip install 'mtlbench[wandb]'`)")
    r.add_argument('--synthetic-samples', type=int, help=argparse.SUPPRESS)
    r.add_argument('--max-samples', type=int, help='use only the first N samples of each split (default: all)')
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

    pa = _sub(sub, 'params', 'trainable-parameter breakdown (no data needed)', epilog=_examples(
        'mtlbench params --method mtlora --per-layer',
        'mtlbench params --method mtlora --cfg-options model.method.r=32'))
    pa.add_argument('--method', required=True, help='registered method (see `mtlbench methods`)')
    pa.add_argument('--dataset', default='pascal_context', choices=DATASETS, help='dataset (fixes the heads)')
    pa.add_argument('--tasks', nargs='+', help="subset of the dataset's tasks (default: all of them)")
    pa.add_argument('--config', help='config file (default: the method\'s config for the dataset)')
    pa.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', help='override config keys (as for `run`)')
    pa.add_argument('--per-layer', action='store_true', help='also list each adapted site')
    pa.set_defaults(func=cmd_params)

    d = _sub(sub, 'data', 'verify or synthesise datasets', epilog=_examples(
        'mtlbench data verify --dataset pascal_context --root /data/PASCAL_MT',
        'mtlbench data synth --dataset nyudv2 --out /tmp/nyud_synth --n 32'))
    dsub = d.add_subparsers(dest='data_cmd', required=True, metavar='{verify,synth}')
    v = _sub(dsub, 'verify', 'check splits, counts and every file of a dataset (with a progress bar)')
    v.add_argument('--dataset', required=True, choices=DATASETS, help='dataset layout to expect')
    v.add_argument('--root', required=True, help='dataset root folder')
    v.add_argument('--tasks', nargs='+', help="tasks whose files are checked (default: all of the dataset's)")
    s = _sub(dsub, 'synth', 'write a small synthetic dataset in the real layout')
    s.add_argument('--dataset', required=True, choices=DATASETS, help='layout to write')
    s.add_argument('--out', required=True, help='folder to write (created)')
    s.add_argument('--n', type=int, default=16, help='number of images (a quarter go to val)')
    s.add_argument('--seed', type=int, default=0, help='seed of everything drawn')
    d.set_defaults(func=cmd_data)

    lb = _sub(sub, 'leaderboard', 'tables (md/csv/tex/json) and plots from run records', epilog=_examples(
        'mtlbench leaderboard                              # every dataset with records',
        'mtlbench leaderboard --dataset nyudv2 --format md --with-reported --plots'))
    lb.add_argument('--dataset', choices=DATASETS, help='one dataset (default: every dataset with records)')
    lb.add_argument('--runs', default='results/runs', help='folder of run records (JSON)')
    lb.add_argument('--bench', default='results/bench', help='folder of bench records (speed / memory columns)')
    lb.add_argument('--format', default=','.join(LEADERBOARD_FORMATS),
                    help='comma-separated files to write: ' + ', '.join(LEADERBOARD_FORMATS) + ' (empty: none)')
    lb.add_argument('--out', default='results', help='folder for leaderboard_<dataset>.* and plots')
    lb.add_argument('--with-reported', action='store_true', help='add the papers\' reported rows')
    lb.add_argument('--plots', action='store_true', help='also the Pareto and per-task plots (PNG)')
    lb.set_defaults(func=cmd_leaderboard)

    sw = _sub(sub, 'sweep', 'run a methods x seeds grid (or emit a Slurm array)', epilog=_examples(
        'mtlbench sweep --methods mtlora,faar --seeds 0,1,2 --dry-run',
        'mtlbench sweep --methods mtlora --seeds 0,1,2 --emit slurm -- --data-root /data/PASCAL_MT',
        '',
        'Jobs whose run record already exists in --runs are skipped, so a sweep restarts where it stopped.'))
    sw.add_argument('--methods', required=True, help='comma-separated methods (see `mtlbench methods`)')
    sw.add_argument('--seeds', default='0', help='comma-separated seeds')
    sw.add_argument('--dataset', default='pascal_context', choices=DATASETS, help='dataset of every job')
    sw.add_argument('--runs', default='results/runs', help='folder of run records (done jobs are skipped)')
    sw.add_argument('--dry-run', action='store_true', help='list the jobs and which are done, run nothing')
    sw.add_argument('--emit', choices=('slurm',), help='write a job-array script instead of running the jobs here')
    sw.add_argument('--slurm-out', default='sweep.sbatch', help='with --emit slurm: the script to write')
    sw.add_argument('--gpus-per-job', type=int, default=1, help='with --emit slurm: GPUs (torchrun processes) per job')
    sw.add_argument('extra', nargs=argparse.REMAINDER, help='-- extra arguments passed to every run')
    sw.set_defaults(func=cmd_sweep)

    rp = _sub(sub, 'reproduce', "plan, run and compare every run of a paper's table", epilog=_examples(
        'mtlbench reproduce --list                          # the tables and their rows',
        'mtlbench reproduce faar-pascal-main --dry-run      # the runs it needs and their projected cost',
        'mtlbench reproduce mtlora-pascal-main --seeds 0,1,2 --data-root /data/PASCAL_MT --pretrained swin_t.pth',
        'mtlbench reproduce faar-pascal-main --slurm --data-root /data/PASCAL_MT --pretrained swin_t.pth',
        '',
        'Table ids are <paper>-<dataset>-<table> from results/reference/*.csv, lowercased with runs of other',
        'characters as "-" (pascal / nyud; the table name without the dataset\'s name). Runs with a record',
        'are skipped; once records exist the paper\'s table and mtlbench\'s are printed side by side with',
        'ours - paper per cell and a verdict per row ("synthetic" for synthetic data or the toy backbone).'))
    rp.add_argument('table', nargs='?', help='table id, e.g. faar-pascal-main (see --list)')
    rp.add_argument('--list', action='store_true', help='list the tables with their rows and exit')
    rp.add_argument('--seeds', default='0', help='comma-separated seeds of every run')
    rp.add_argument('--dry-run', action='store_true', help='print the plan, its projected cost and which runs have '
                    'records; run nothing')
    rp.add_argument('--slurm', action='store_true', help='write a Slurm job array of the runs without a record '
                    '(the sweep\'s) instead of running them here')
    rp.add_argument('--slurm-out', help='with --slurm: the script to write (default: slurm/reproduce_<table>.sbatch)')
    rp.add_argument('--gpus-per-job', type=int, default=1, help='with --slurm: GPUs (torchrun processes) per job')
    rp.add_argument('--tol', help='per-task tolerance of the verdicts, e.g. semseg=0.5,normals=0.2 (default: '
                    '0.5 for mIoU tasks, 0.2 degrees for normals, 0.01 m for depth)')
    rp.add_argument('--runs', default='results/runs', help='folder of run records (read and written)')
    rp.add_argument('--bench', default='results/bench', help='folder of bench records (projected cost)')
    rp.add_argument('--reference-dir', help='folder of the reported-rows CSVs (default: results/reference)')
    rp.add_argument('--data-root', help='dataset root of every run (default: the config\'s, else synthetic data)')
    rp.add_argument('--pretrained', help='local Swin backbone weights of every run (default: random init)')
    rp.add_argument('--work-dir', help='parent of the runs\' work dirs, one sub-folder per run (default: each '
                    'run\'s own under work_dirs/)')
    rp.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                    help='config overrides of every run (as for `run`), applied after the row\'s own options')
    rp.add_argument('--epochs', type=int, help='training epochs of every run (default: the config\'s)')
    rp.add_argument('--batch-size', type=int, help='per-GPU batch size of every run (default: the config\'s)')
    rp.add_argument('--num-workers', type=int, help='data-loader workers of every run (default: the config\'s)')
    rp.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                    help='network input size of every run (default: the config\'s)')
    rp.add_argument('--max-samples', type=int, help='use only the first N samples of each split (default: all)')
    rp.add_argument('--tasks', nargs='+', help="train and compare only these tasks (default: all the dataset's; "
                    'a subset is never comparable to the papers: for quick checks)')
    rp.add_argument('--synthetic-samples', type=int, help=argparse.SUPPRESS)
    rp.set_defaults(func=cmd_reproduce)

    b = _sub(sub, 'bench', 'throughput / memory / FLOPs on synthetic tensors, or the data loader', epilog=_examples(
        'mtlbench bench --method mtlora                    # CPU, batch 2, 448x448',
        'mtlbench bench --method all --device cuda --batch-size 32 --amp bf16',
        'mtlbench bench --loader --num-workers 8 --batch-size 32'))
    b.add_argument('--method', help="method(s) to bench: a name, a comma list, or 'all' (not needed with --loader)")
    b.add_argument('--loader', action='store_true', help='measure the training data pipeline (img/s) instead')
    b.add_argument('--data-root', help='with --loader: dataset root (default: the synthetic dataset)')
    b.add_argument('--num-workers', type=int, default=2, help='with --loader: DataLoader workers')
    b.add_argument('--dataset', default='pascal_context', choices=DATASETS, help='dataset (fixes the heads)')
    b.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='auto: cuda when available')
    b.add_argument('--batch-size', type=int, default=2, help='images per step')
    b.add_argument('--amp', default='off', choices=('bf16', 'fp16', 'off'), help='autocast precision')
    b.add_argument('--compile', action='store_true', help='torch.compile the model first')
    b.add_argument('--merged', action='store_true', help='inference with shared adapters folded in')
    b.add_argument('--eval', action='store_true',
                   help='also time evaluation (forward + metric scoring) and scoring alone, per image')
    b.add_argument('--img-size', type=int, nargs=2, default=(448, 448), metavar=('H', 'W'), help='input size')
    b.add_argument('--arch', default='tiny', help='backbone: swin-t, swin-s, swin-b (or tiny, small, base, toy)')
    b.add_argument('--iters', type=int, default=10, help='timed iterations (the median is reported)')
    b.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    b.add_argument('--out', default='results/bench', help='folder for the bench record (JSON)')
    b.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE',
                   help='override config keys, e.g. model.backbone.window_size=4 for --arch toy at 128x128')
    b.set_defaults(func=cmd_bench)

    rk = _sub(sub, 'ranks', "per-adapter rank table (and plot) of a run record's rank_history", epilog=_examples(
        'mtlbench ranks results/runs/faar_pascal_context_s0_....json --plot ranks.png'))
    rk.add_argument('record', help='run record JSON (results/runs/*.json)')
    rk.add_argument('--plot', metavar='PNG', help='also plot the rank history to this PNG')
    rk.set_defaults(func=cmd_ranks)

    m = _sub(sub, 'methods', 'list registered methods and their configs, or one method\'s options', epilog=_examples(
        'mtlbench methods                                  # every method, one line each, with its configs',
        'mtlbench methods mtlora                           # its options: help, default, the configs\' values'))
    m.add_argument('method', nargs='?', help='show this method\'s options (set with --cfg-options model.method.NAME=...)')
    m.set_defaults(func=cmd_methods)
    return p


def _user_errors() -> tuple:
    """Exceptions told as one line: the user's input caused them (see mtlbench/errors.py)."""
    from mtlbench.errors import UserError
    # an OS error about a path the user gave (a results dir that is a file, a full disk) is theirs to fix
    return (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, _user_errors()):
        return True
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    # mmengine's registry: "X is not in the <scope>::<name> registry" -- a config names a type that does not exist
    return isinstance(err, KeyError) and bool(err.args) and 'registry' in str(err.args[0]) and \
        'is not in the' in str(err.args[0])


def _debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, 'debug', False) or os.environ.get('MTLBENCH_DEBUG'))


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``mtlbench`` command. Returns the exit code (2: an error in the input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if _debug_requested(args):
        return args.func(args)
    try:
        return args.func(args)
    except Exception as err:  # noqa: BLE001 - only the user's errors are shortened; bugs re-raise
        if not _is_user_error(err):
            raise
        from mtlbench.errors import UserError
        msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        if isinstance(err, OSError) and not isinstance(err, UserError) and err.filename:
            msg = f'{err.filename}: {err.strerror or err}'
        print(f'mtlbench {args.command}: error: {msg}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
