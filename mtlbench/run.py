"""``mtlbench run``: train one method on one dataset with the mmengine Runner, evaluate, and
write a run record.

The flow is config -> Runner -> train -> final evaluation -> run record. Everything specific to
a method happens inside the model (built from ``model.method``) and the hooks the method asks
for; this module only prepares the config, the data and the record.

With no ``--data-root`` and no dataset at the config's default root, a small synthetic dataset
in the real on-disk layout is generated in a cache folder and a short CPU-sized schedule is
used: the numbers say the pipeline works, not how good a method is, and the record is marked
``synthetic`` so leaderboards never mix it with real results.
"""
from __future__ import annotations

import copy
import logging
import os
import os.path as osp
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import MMLogger, print_log

from mtlbench.backbones.swin import backbone_label
from mtlbench.config import as_plain, find_config, inner_dataset, load_config, resolve
from mtlbench.errors import InputNotFoundError, OptionError, UserError
from mtlbench.protocol import departures, protocol_label, register_departure
from mtlbench.engine.device import device_name, prepare_device
from mtlbench.engine.distributed import configure_distributed
from mtlbench.model import compile_model
from mtlbench.precision import apply_tf32, resolve_precision
from mtlbench.registry import HOOKS
from mtlbench.visualization import configure_visualizer

import mtlbench.lr_schedule  # noqa: F401  (ReferenceCosineLR)
import mtlbench.optim  # noqa: F401  (optimizer groups and their departure, for protocol labels)

__all__ = ['RunOptions', 'run', 'prepare_config', 'SYNTHETIC_SCHEDULE', 'MetricsCaptureHook']

#: The CPU-sized schedule used on synthetic data (overridable with --epochs / --batch-size ...).
SYNTHETIC_SCHEDULE = dict(epochs=3, batch_size=2, img_size=(224, 224), num_samples=24, num_workers=0, lr=2e-4)


register_departure('train-keep-last', 'train_dataloader.drop_last', reference=True,
                   doc="each epoch's last incomplete training batch is trained on, not dropped")


@dataclass
class RunOptions:
    """Command-line options of ``mtlbench run`` (see ``mtlbench run --help``)."""
    method: str
    dataset: str = 'pascal_context'
    config: Optional[str] = None
    data_root: Optional[str] = None
    pretrained: Optional[str] = None
    work_dir: Optional[str] = None
    results_dir: str = 'results/runs'
    seed: int = 0
    epochs: Optional[int] = None
    iters: Optional[int] = None
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    img_size: Optional[Sequence[int]] = None
    tasks: Optional[Sequence[str]] = None
    amp: Optional[str] = None
    launcher: str = 'none'
    resume: Union[bool, str, None] = None  # True / 'required': a checkpoint must exist; 'auto': if one does
    deterministic: bool = False
    cfg_options: Dict[str, Any] = field(default_factory=dict)
    synthetic_samples: Optional[int] = None
    max_samples: Optional[int] = None
    eval_only: Optional[str] = None
    eval_before_train: bool = False
    merged: bool = False
    compile: bool = False
    vis_backends: Optional[Sequence[str]] = None  # None: local, plus tensorboard when installed

    def __post_init__(self) -> None:
        # None means "not given"; any given count must be usable (``--epochs 0`` must not mean 300).
        for name in ('epochs', 'iters', 'batch_size', 'synthetic_samples', 'max_samples'):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f'--{name.replace("_", "-")} must be at least 1, got {value}')
        if self.num_workers is not None and self.num_workers < 0:
            raise OptionError(f'--num-workers must be 0 or more, got {self.num_workers}')
        if self.img_size is not None and (len(self.img_size) != 2 or min(self.img_size) < 1):
            raise OptionError(f'--img-size needs two positive sizes (H W), got {list(self.img_size)}')


@HOOKS.register_module()
class MetricsCaptureHook(Hook):
    """Keeps the metrics of the last evaluation on the runner (``runner.mtl_last_metrics``).

    Args:
        eval_before_train: also score the model before the first iteration (kept as
            ``runner.mtl_initial_metrics``): a sanity baseline that training must beat.
    """
    priority = 'LOWEST'

    def __init__(self, eval_before_train: bool = False) -> None:
        self.eval_before_train = eval_before_train

    def before_train(self, runner) -> None:
        if self.eval_before_train and runner.iter == 0:
            runner.mtl_initial_metrics = dict(runner.val_loop.run())
            runner.model.train()

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        runner.mtl_last_metrics = dict(metrics or {})
        # every evaluation, for the optional flagged best-Δm extra (mtlbench.reporting.best_delta_m)
        if not hasattr(runner, 'mtl_eval_history'):
            runner.mtl_eval_history = []
        runner.mtl_eval_history.append({'epoch': runner.epoch, 'iter': runner.iter, 'metrics': dict(metrics or {})})


def _git_sha() -> Optional[str]:
    here = osp.dirname(osp.abspath(__file__))
    try:
        sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ('-dirty' if dirty else '')) if sha else None
    except Exception:  # noqa: BLE001 - no git: record null
        return None


def run_img_size(config_size: Any, cli_size: Optional[Sequence[int]], synthetic: bool) -> Any:
    """The input size a run uses and records: ``--img-size``, else the synthetic schedule's on
    synthetic data, else the config's (``mtlbench reproduce`` predicts records with it)."""
    if cli_size is not None:
        return tuple(cli_size)
    if synthetic:
        return SYNTHETIC_SCHEDULE['img_size']
    return config_size


def _set_schedule(cfg: Config, epochs: int) -> None:
    """Shrink the reference schedule to ``epochs`` keeping its shape (warm-up share, cosine)."""
    old = cfg.train_cfg.get('max_epochs', epochs)
    cfg.train_cfg.max_epochs = epochs
    cfg.train_cfg.val_interval = min(cfg.train_cfg.get('val_interval', epochs), epochs)
    scheds = cfg.get('param_scheduler') or []
    if len(scheds) == 1 and scheds[0].get('type') == 'ReferenceCosineLR' and old:
        scheds[0].end = epochs
        scheds[0].warmup = scheds[0].warmup * epochs / old  # same share (the reference truncates to iterations)
    elif len(scheds) == 2 and old:
        warm = int(round(scheds[0].end * epochs / old))
        if warm <= 0:
            cfg.param_scheduler = [dict(scheds[1], begin=0, end=epochs, T_max=epochs)]
        else:
            scheds[0].end = warm
            scheds[1].begin, scheds[1].end, scheds[1].T_max = warm, epochs, epochs - warm


def _dataset_root_exists(cfg: Config) -> bool:
    root = cfg.train_dataloader.dataset.get('data_root')
    return bool(root) and osp.isdir(root)


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it was not given (None); unlike ``value or default``, 0 stays 0."""
    return default if value is None else value


def prepare_config(opts: RunOptions) -> Config:
    """Resolve the config for a run: file, overrides, data, schedule, engine pieces."""
    import mtlbench.methods  # noqa: F401
    import mtlbench.datasets  # noqa: F401

    path = opts.config or str(find_config(opts.method, opts.dataset))
    cfg = load_config(path, opts.cfg_options)
    if cfg.model.method.get('type') != opts.method and opts.config is None:
        raise OptionError(f'config {path} is for method {cfg.model.method.get("type")!r}, not {opts.method!r}')
    if opts.tasks:
        cfg.model.tasks = list(opts.tasks)
    synthetic = False
    if opts.data_root:
        data_root = opts.data_root
        if not osp.isdir(data_root):
            raise InputNotFoundError(f'--data-root {data_root} does not exist')
    elif _dataset_root_exists(cfg):
        data_root = cfg.train_dataloader.dataset.data_root
    else:
        from mtlbench.datasets import ensure_synthetic_dataset

        synthetic = True
        n = _given(opts.synthetic_samples, SYNTHETIC_SCHEDULE['num_samples'])
        data_root = ensure_synthetic_dataset(cfg.dataset_name, n=n)
        print_log('=' * 78 + '\n NO DATASET FOUND: running on a SYNTHETIC dataset generated in\n '
                  f'{data_root}\n with a short CPU schedule. These numbers are NOT comparable to '
                  'any paper;\n pass --data-root to train on PASCAL-Context / NYUDv2.\n' + '=' * 78,
                  logger='current', level=logging.WARNING)
        for key in ('train_dataloader', 'val_dataloader'):
            cfg[key].batch_size = _given(opts.batch_size, SYNTHETIC_SCHEDULE['batch_size'])
            cfg[key].num_workers = SYNTHETIC_SCHEDULE['num_workers']
        _set_schedule(cfg, _given(opts.epochs, SYNTHETIC_SCHEDULE['epochs']))
        # a tiny batch scaled by 512 would not move the weights in a few iterations
        cfg.auto_scale_lr = dict(enable=False, base_batch_size=512)
        cfg.optim_wrapper.optimizer.lr = SYNTHETIC_SCHEDULE['lr']
        cfg.default_hooks.logger.interval = 1
        cfg.default_hooks.checkpoint.interval = 1
    cfg.model.backbone.img_size = run_img_size(cfg.model.backbone.img_size, opts.img_size, synthetic)
    # data ---------------------------------------------------------------
    for key in ('train_dataloader', 'val_dataloader'):
        dl = cfg[key]
        inner_dataset(dl).data_root = data_root
        if opts.max_samples is not None:
            inner_dataset(dl).max_samples = opts.max_samples
        if opts.batch_size is not None:
            dl.batch_size = opts.batch_size
        if opts.num_workers is not None:
            dl.num_workers = opts.num_workers
        if dl.num_workers == 0:
            dl.persistent_workers = False
        # workers survive a SIGTERM sent to the process group, so the main process can save preempt.pth
        dl.worker_init_fn = dict(type='mtlbench.preemptible_worker_init', num_workers=dl.num_workers, seed=opts.seed)
        if key == 'train_dataloader':
            dl.setdefault('drop_last', True)  # the reference's; a config without it departs not
        # reproducible + resumable order and augmentation (mtlbench.engine.data)
        dl.sampler = dict(dl.sampler, type='ResumableSampler') if key == 'train_dataloader' else dl.sampler
        if key == 'train_dataloader' and dl.dataset.type != 'SeededDataset':
            dl.dataset = dict(type='SeededDataset', dataset=dl.dataset)
        if not torch.cuda.is_available():
            dl.pin_memory = False
    if opts.epochs is not None and not synthetic:
        _set_schedule(cfg, opts.epochs)
    if opts.iters is not None:
        raise OptionError('--iters: use --epochs (the reference schedule is epoch based)')
    # model --------------------------------------------------------------
    if opts.pretrained:
        if not osp.isfile(opts.pretrained):
            raise InputNotFoundError(f'--pretrained {opts.pretrained} does not exist')
        cfg.model.backbone.pretrained = opts.pretrained
    resolve(cfg)
    if opts.pretrained:  # a checkpoint of a whole model (ours) is refused naming both models
        from mtlbench.interop.checkpoints import check_pretrained_declaration
        check_pretrained_declaration(opts.pretrained, cfg.model)
    # engine -------------------------------------------------------------
    cfg.train_cfg.type = 'ResumableEpochBasedTrainLoop'
    cfg.randomness = dict(seed=opts.seed, deterministic=opts.deterministic)
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='IterSeedHook'), dict(type='StateGuardHook'),
                                                              dict(type='MetricsCaptureHook', eval_before_train=opts.eval_before_train)]
    resolve_precision(cfg, opts.amp, cuda=torch.cuda.is_available())
    cfg.launcher = opts.launcher
    configure_visualizer(cfg, opts.vis_backends,
                         overridden=any(k.startswith('visualizer.vis_backends') for k in opts.cfg_options))
    if opts.launcher != 'none':
        configure_distributed(cfg, find_unused_parameters=_has_unused_parameters(cfg), cuda=torch.cuda.is_available())
    cfg.synthetic = synthetic
    cfg.config_path = str(path)
    return cfg


def _has_unused_parameters(cfg: Config) -> bool:
    """The method's :meth:`~mtlbench.method.Method.ddp_find_unused_parameters` (one task's model
    for methods that train one model per task)."""
    from mtlbench.method import build_method
    from mtlbench.registry import METHODS
    tasks = list(cfg.model.tasks)
    if getattr(METHODS.get(cfg.model.method.type), 'one_model_per_task', False):
        tasks = tasks[:1]
    return build_method(dict(cfg.model.method), tasks).ddp_find_unused_parameters()


def model_identity(model_cfg: Any) -> Dict[str, Any]:
    """What a checkpoint must have been trained as to be resumed into this model: the method
    and its options, the dataset, the tasks, and the backbone / decoder settings (not the
    pretrained file and its recorded source, which only initialise)."""
    plain = as_plain(model_cfg)
    backbone = {k: v for k, v in (plain.get('backbone') or {}).items() if k not in ('pretrained', 'pretrained_on')}
    return {'method': plain.get('method'), 'dataset': plain.get('dataset'), 'tasks': plain.get('tasks'),
            'backbone': backbone, 'decoder': plain.get('decoder')}


def _short_hash(value: Any) -> str:
    import hashlib
    import json
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:6]


def _work_dir(opts: RunOptions, cfg: Config, tag: str) -> str:
    """``--work-dir``, or ``work_dirs/<method>[_<variant>]_<dataset>[_synthetic]_s<seed>_<model hash>``:
    two runs that build different models (another rank, another --cfg-options) never share a
    folder, and the same command always finds its own checkpoints again."""
    if opts.work_dir:
        return opts.work_dir
    from mtlbench.method import build_method
    variant = build_method(dict(cfg.model.method), cfg.model.tasks).variant()
    slug = re.sub(r'[^A-Za-z0-9.=-]+', '-', variant).strip('-')
    name = (f'{tag}{"_" + slug if slug else ""}_{cfg.dataset_name}{"_synthetic" if cfg.synthetic else ""}'
            f'_s{opts.seed}_{_short_hash(model_identity(cfg.model))}')
    return str(Path('work_dirs') / name)


def _resume_filter(cfg: Config):
    """``accept`` for :func:`~mtlbench.engine.find_resumable_checkpoint`: the reason a checkpoint
    was trained as another model, or None."""
    from mtlbench.interop.checkpoints import trained_as
    want = model_identity(cfg.model)

    def accept(ckpt: dict) -> Optional[str]:
        declared = trained_as(ckpt)
        if declared is None:
            return None  # an older checkpoint without its config: the strict load still checks shapes
        got = model_identity(declared)
        differ = [k for k in want if _short_hash(got[k]) != _short_hash(want[k])]
        if differ:
            return (f'it was trained as another model ({", ".join(differ)} differ: '
                    f'{got[differ[0]]} vs this run\'s {want[differ[0]]})')
        return None
    return accept


class OutputDirError(UserError, ValueError):
    """A directory the run will write to cannot take its output (checked before training)."""


#: Free space a run needs before it starts: records are small, checkpoints are not.
MIN_FREE_BYTES = {'work dir': 256 * 2**20, 'results dir': 2**20}


def check_output_dir(path: str, what: str) -> None:
    """Create ``path`` if needed and prove it takes a file, so that hours of training cannot end
    without their checkpoint or record (a results dir that is a file, read-only or full)."""
    flag = f'--{what.replace(" ", "-")}'
    if osp.exists(path) and not osp.isdir(path):
        raise OutputDirError(f'{flag} {path} is a file, not a directory')
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.mtlbench-write-test-', dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OutputDirError(f'{flag} {path} is not writable ({err.strerror or err})') from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES[what]:
        raise OutputDirError(f'{flag} {path}: only {free / 2**20:.1f} MiB free; a run needs at least '
                             f'{MIN_FREE_BYTES[what] / 2**20:.0f} MiB there')


def _init_cpu_distributed(launcher: str) -> None:
    """torchrun on CPU: mmengine's 'pytorch' launcher calls cuda.set_device, so start gloo here."""
    import torch.distributed as dist
    if launcher != 'none' and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group('gloo')


def run(opts: RunOptions) -> List[Path]:
    """Train, evaluate and record. Returns the paths of the run records written (rank 0)."""
    if opts.merged and not opts.eval_only:
        raise OptionError('--merged folds adapters for evaluation only; use it with --eval-only CHECKPOINT')
    _init_cpu_distributed(opts.launcher)
    cfg = prepare_config(opts)
    from mtlbench.registry import METHODS
    method_cls = METHODS.get(cfg.model.method.type)
    if method_cls is not None and getattr(method_cls, 'one_model_per_task', False) and len(cfg.model.tasks) > 1:
        paths = []
        for task in list(cfg.model.tasks):
            sub = copy.deepcopy(cfg)
            sub.model.tasks = [task]
            sub.tasks = None
            resolve(sub)
            paths += _run_one(opts, sub, tag=f'{cfg.model.method.type}-{task}')
        return paths
    tag = cfg.model.method.type if len(cfg.model.tasks) == len(cfg.get('tasks', [])) else \
        f'{cfg.model.method.type}-{"-".join(cfg.model.tasks)}'
    return _run_one(opts, cfg, tag=tag)


def _run_one(opts: RunOptions, cfg: Config, tag: str) -> List[Path]:
    from mtlbench.engine import MTLRunner, find_resumable_checkpoint, stop_data_workers

    cfg = copy.deepcopy(cfg)
    prepare_device('cuda' if torch.cuda.is_available() else 'cpu')
    apply_tf32(bool(cfg.get('tf32', False)))
    cfg.work_dir = _work_dir(opts, cfg, tag)
    if opts.resume:
        ckpt = find_resumable_checkpoint(cfg.work_dir, accept=_resume_filter(cfg))
        if ckpt is not None:
            cfg.resume, cfg.load_from = True, ckpt
        elif opts.resume == 'auto':
            print_log(f'--resume auto: no checkpoint of this model in {cfg.work_dir}; starting afresh',
                      logger='current')
        else:
            raise InputNotFoundError(f'--resume: no loadable checkpoint of this model in {cfg.work_dir}')
    if is_main_process():
        check_output_dir(cfg.work_dir, 'work dir')
    if opts.eval_only:
        try:
            return _evaluate_only(opts, cfg)
        finally:
            stop_data_workers()
    if is_main_process():
        check_output_dir(opts.results_dir, 'results dir')
    start = time.time()
    try:
        runner = MTLRunner.from_cfg(cfg)
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        if opts.compile:
            compile_model(model)
        method = model.method
        for hook in method.runner_hooks():
            kind = hook.get('type') if isinstance(hook, dict) else type(hook).__name__
            if any(type(h).__name__ == kind for h in runner.hooks):
                continue  # already in the config's custom_hooks: never run a method's hook twice
            runner.register_hook(hook)
        runner.train()
        metrics = getattr(runner, 'mtl_last_metrics', None)
        if not metrics:
            metrics = runner.val_loop.run()
    finally:
        stop_data_workers()  # workers ignore SIGTERM: never leave them to the exit-time terminate()
    wall = time.time() - start
    if not is_main_process():
        return []
    extras = {}
    if getattr(runner, 'mtl_initial_metrics', None):
        extras['initial_metrics'] = nest_metrics(runner.mtl_initial_metrics, model.tasks)
    return [write_run_record(opts, cfg, model, metrics, wall, extras,
                             eval_history=getattr(runner, 'mtl_eval_history', None))]


def _evaluate_only(opts: RunOptions, cfg: Config) -> List[Path]:
    """Score a checkpoint on the val split (no training, no run record): writes
    ``<work_dir>/eval_metrics.json`` and returns its path (rank 0).

    The checkpoint is an mtlbench one or an MTLoRA / DiTASK reference one, loaded strictly by
    :func:`mtlbench.interop.load_for_evaluation`: a checkpoint of another method, variant,
    dataset or task list is refused with one line naming both."""
    import json

    from mtlbench.engine import MTLRunner
    from mtlbench.interop import load_for_evaluation

    cfg.load_from, cfg.resume = None, False  # loaded below, strictly, not by mmengine's non-strict load
    if opts.merged:
        cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='MergeAdaptersHook')]
    runner = MTLRunner.from_cfg(cfg)
    fmt = load_for_evaluation(opts.eval_only, runner.model.module if hasattr(runner.model, 'module') else runner.model)
    metrics = runner.val()
    if not is_main_process():
        return []
    path = Path(cfg.work_dir) / 'eval_metrics.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = next((h.merged for h in runner.hooks if type(h).__name__ == 'MergeAdaptersHook'), None)
    path.write_text(json.dumps({'checkpoint': opts.eval_only, 'checkpoint_format': fmt, 'merged_adapters': merged,
                                'metrics': {k: float(v) for k, v in metrics.items()}}, indent=1, sort_keys=True))
    print_log(f'metrics of {opts.eval_only}: {path}', logger='current')
    return [path]


def nest_metrics(flat: Dict[str, float], tasks: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """``{'semseg/mIoU': v}`` -> ``{'semseg': {'mIoU': v}}``."""
    out: Dict[str, Dict[str, float]] = {t: {} for t in tasks}
    for key, value in flat.items():
        task, _, name = key.partition('/')
        if task in out:
            out[task][name] = float(value)
    return out


def _eval_protocol(cfg: Config, img_size) -> str:
    """``resized-<size>``: scored at the network input size against resized ground truth (the
    field's protocol at 448), or the config's other protocol name."""
    proto = cfg.get('eval_protocol', 'resized-448')
    if proto.startswith('resized'):
        h, w = img_size
        return f'resized-{h}' if h == w else f'resized-{h}x{w}'
    return proto


def write_run_record(opts: RunOptions, cfg: Config, model: torch.nn.Module, flat_metrics: Dict[str, float],
                     wall_time_s: float, extras: Optional[Dict[str, Any]] = None,
                     eval_history: Optional[List[Dict[str, Any]]] = None) -> Path:
    """Assemble and atomically write the run record; Δm against existing baseline records.
    With ``record_best_delta_m`` in the config, the best Δm over ``eval_history`` (every
    evaluation during training) is added as a flagged extra (:mod:`mtlbench.reporting.best_delta_m`)."""
    from mtlbench.reporting import records
    from mtlbench.reporting.comparability import compute_delta_m_for_record, run_identity

    tasks = list(model.tasks)
    method = model.method
    metrics = nest_metrics(flat_metrics, tasks)
    rec = records.make_run_record(
        method=method.name, variant=method.variant(), method_options=as_plain(method.config.to_dict()),
        dataset=model.dataset_name, tasks=tasks, backbone=backbone_label(model.backbone.arch),
        pretrained=model.backbone.pretrained, pretrained_on=model.backbone.pretrained_on,
        img_size=list(model.backbone.img_size),
        eval_protocol=_eval_protocol(cfg, model.backbone.img_size), synthetic=bool(cfg.synthetic), seed=opts.seed,
        git_sha=_git_sha(), checkpoint=cfg.get('report_checkpoint', 'last'),
        epochs=int(cfg.train_cfg.max_epochs), iters=None, metrics=metrics,
        params=model.param_breakdown(), wall_time_s=round(wall_time_s, 2), device=device_name(),
        torch_version=torch.__version__, config=as_plain(cfg.to_dict()),
        protocol=protocol_label(cfg), departures=departures(cfg),
        **{**method.record_extras(model), **(extras or {})})
    os.makedirs(opts.results_dir, exist_ok=True)
    existing, _ = records.load_records(opts.results_dir, kind='run')
    same = [r for r in existing if run_identity(r) == run_identity(rec)]
    if same:
        print_log(f'{opts.results_dir} already has a record of this seed ({same[0].get("_path")}): the '
                  'leaderboard counts only the newest of them', logger='current', level=logging.WARNING)
    value, reason = compute_delta_m_for_record(rec, existing + [rec])
    rec['delta_m'], rec['delta_m_reason'] = value, reason
    if cfg.get('record_best_delta_m', False):
        from mtlbench.reporting.best_delta_m import FLAGGED_KEY, flagged_best_delta_m
        history = [dict(e, metrics=nest_metrics(e['metrics'], tasks)) for e in (eval_history or [])]
        extra = flagged_best_delta_m(rec, history, existing + [rec])
        if extra is not None:
            rec[FLAGGED_KEY] = extra
    path = records.write_record(rec, opts.results_dir)
    logger = MMLogger.get_current_instance()
    prim = ', '.join(f'{t} {rec["primary"][t]["metric"]}={rec["primary"][t]["value"]:.4g}' for t in tasks)
    dm = f'{value:+.2f}%' if value is not None else f'n/a ({reason})'
    logger.info(f'run record: {path}\n  {prim}\n  Δm: {dm}\n  trainable params: '
                f'{rec["params"]["total_trainable"]:,}')
    return path
