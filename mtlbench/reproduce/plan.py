"""A paper's table as sweep jobs: the single-task baselines and each row's method and variant.

A row's ``variant`` becomes config options by these rules, tried in order:

1. empty: the method's default config (``configs/<method>/<method>_swin-t_<dataset>.py``);
2. ``key=value`` words naming the method's options (``r=64`` -> ``model.method.r=64``, see
   ``mtlbench methods NAME``): the default config with those options;
3. otherwise the shipped config of the method whose own label (``Method.variant()``, what a run
   record stores) reads the same, ignoring case and spaces;
4. otherwise the shipped config that names the row in its own ``paper_rows`` list (the paper's
   variant text as the CSV prints it, e.g. ``paper_rows = ['ablation: + TS-PD']``). Only the
   file's own assignment counts, never one inherited through ``_base_``, so a config derived
   from an ablation config does not claim its row.

A row no rule maps (an ablation described in words, an unregistered method) is listed as "not
runnable" with the reason. Each runnable row carries the label its records will have (the
method's ``variant()`` under the final options, user overrides included): that label finds its
records again, both for skipping finished jobs and for the comparison. The jobs themselves are
:mod:`mtlbench.sweep` jobs, so running them locally and the Slurm array are the sweep's.

Not in the brief, chosen here:
- The single-task baseline (every Δm needs it) is planned once per table, as a row of its own
  when the table prints one, else as an extra "baseline" row.
- A job counts as done when a run record of the same method, label, dataset, seed, synthetic
  flag, backbone, input size and checkpoint file name exists (:func:`mtlbench.sweep.find_existing`
  with ``match``): the parts of the comparability key the plan can know before the run. The
  training protocol is not matched, since a run can add a departure only on its device (e.g.
  precision on a CPU); a record of another protocol lands in a comparison group of its own,
  never in the paper's.
- ``--work-dir`` is a parent folder: each job works in a sub-folder named after the job, since
  two seeds of one model in one folder would resume each other's checkpoints.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from mtlbench.reporting.comparability import pretrained_key
from mtlbench.reporting.schema import BASELINE_METHOD
from mtlbench.reproduce.table_ids import PaperTable
from mtlbench.sweep import SweepJob, plan_sweep

__all__ = ['RunSettings', 'PlannedRow', 'TablePlan', 'plan_table', 'job_cost', 'format_plan']


@dataclass
class RunSettings:
    """What every job of the table gets besides its own options (``mtlbench run`` flags)."""
    seeds: Sequence[int] = (0,)
    runs_dir: str = 'results/runs'
    data_root: Optional[str] = None
    pretrained: Optional[str] = None
    work_dir: Optional[str] = None
    cfg_options: Dict[str, Any] = field(default_factory=dict)
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    img_size: Optional[Sequence[int]] = None
    num_workers: Optional[int] = None
    synthetic_samples: Optional[int] = None
    max_samples: Optional[int] = None
    tasks: Optional[Sequence[str]] = None

    def run_args(self) -> List[str]:
        """The ``mtlbench run`` flags (all but ``--cfg-options``, which is per row)."""
        args = ['--results-dir', str(self.runs_dir)]
        for flag, value in (('--data-root', self.data_root), ('--pretrained', self.pretrained),
                            ('--epochs', self.epochs), ('--batch-size', self.batch_size),
                            ('--num-workers', self.num_workers),
                            ('--synthetic-samples', self.synthetic_samples),
                            ('--max-samples', self.max_samples)):
            if value is not None:
                args += [flag, str(value)]
        if self.img_size is not None:
            args += ['--img-size', *map(str, self.img_size)]
        if self.tasks:
            args += ['--tasks', *self.tasks]
        return args


@dataclass
class PlannedRow:
    """One row of the table (or the added baseline) and how it is run.

    Attributes:
        index (int, optional): row number in the table; None for an added baseline.
        method, variant (str): as the paper's row gives them.
        label (str): the variant label its run records will have ('' when not runnable).
        config (str, optional): config file when not the method's default.
        options (dict): ``model.method.*`` overrides read from the variant.
        reason (str, optional): why the row is not runnable; None when it is.
        baseline (bool): the row is the single-task baseline of the table's Δm.
        backbone (str): backbone label of its records.
        synthetic (bool): its runs train on synthetic data.
        cfg (Config, optional): the resolved config (for the cost projection).
    """
    index: Optional[int]
    method: str
    variant: str
    label: str = ''
    config: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    reason: Optional[str] = None
    baseline: bool = False
    backbone: str = ''
    synthetic: bool = False
    cfg: Any = None
    variant_default: bool = False  # the config is the method's default one

    @property
    def runnable(self) -> bool:
        return self.reason is None

    @property
    def name(self) -> str:
        return f'{self.method} {self.variant}'.strip()


@dataclass
class TablePlan:
    """The rows of a table and the sweep jobs that produce their records."""
    table: PaperTable
    rows: List[PlannedRow]
    jobs: List[SweepJob]
    job_rows: List[PlannedRow]  # the row each job belongs to, same order as ``jobs``


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _norm(label: str) -> str:
    return re.sub(r'\s+', '', str(label).lower())


def _label(cfg: Any) -> str:
    from mtlbench.method import build_method
    from mtlbench.registry import METHODS
    tasks = list(cfg.model.tasks)
    if getattr(METHODS.get(cfg.model.method.type), 'one_model_per_task', False):
        tasks = tasks[:1]
    return build_method(dict(cfg.model.method), tasks).variant()


def _load(path: Path, options: Mapping[str, Any], user: Mapping[str, Any]) -> Any:
    from mtlbench.config import load_config
    over = {f'model.method.{k}': v for k, v in options.items()}
    over.update(user)  # the user's overrides win
    return load_config(path, over)


def _run_img_size(cfg: Any, settings: RunSettings, synthetic: bool) -> tuple:
    """The input size ``mtlbench run`` will record (:func:`mtlbench.run.run_img_size`), as a tuple."""
    from mtlbench.run import run_img_size
    size = run_img_size(cfg.model.backbone.img_size, settings.img_size, synthetic)
    size = (size, size) if isinstance(size, int) else size
    return tuple(int(v) for v in size)


def _default_config(method: str, dataset: str) -> Optional[Path]:
    from mtlbench.config import find_config
    try:
        return find_config(method, dataset)
    except Exception:  # noqa: BLE001
        return None


def _map_variant(method: str, variant: str, dataset: str, backbone: str):
    """``(config path or None, options, reason)`` for a row's variant (rules of the module doc)."""
    from mtlbench.config import _dash, find_config, list_configs
    from mtlbench.method import method_options
    from mtlbench.registry import METHODS
    import mtlbench.methods  # noqa: F401

    if METHODS.get(method) is None:
        return None, {}, f'method {method!r} is not registered (see `mtlbench methods`)'
    try:
        default = find_config(method, dataset)
    except Exception as err:  # noqa: BLE001 - a missing config makes the row not runnable
        return None, {}, str(err)
    words = str(variant).split()
    if not words:
        return default, {}, None
    names = {o['name'] for o in method_options(method)}
    pairs = [w.split('=', 1) for w in words if '=' in w]
    if len(pairs) == len(words) and all(k in names for k, _ in pairs):
        return default, {k: _literal(v) for k, v in pairs}, None
    suffix = f'_{backbone or "swin-t"}_{_dash(dataset)}.py'
    for path in list_configs(method):
        if not path.name.endswith(suffix):
            continue
        try:
            if _norm(_label(_load(path, {}, {}))) == _norm(variant):
                return path, {}, None
        except Exception:  # noqa: BLE001 - a config that does not build matches nothing
            continue
    for path in list_configs(method):
        if path.name.endswith(suffix) and _norm(variant) in {_norm(r) for r in declared_paper_rows(path)}:
            return path, {}, None
    return None, {}, (f'variant {variant!r} is neither option=value words of {method} '
                      f'(`mtlbench methods {method}`), nor the label of one of its {dataset} configs, '
                      f'nor in the paper_rows of one of them')


def declared_paper_rows(path: Path) -> List[str]:
    """The ``paper_rows`` a config file assigns itself (read from its text, not inherited)."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError):
        return []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == 'paper_rows'
                                                for t in node.targets):
            try:
                rows = ast.literal_eval(node.value)
            except ValueError:
                return []
            return [str(r) for r in (rows if isinstance(rows, (list, tuple)) else [rows])]
    return []


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9._=-]+', '-', text).strip('-')


def plan_table(table: PaperTable, settings: RunSettings) -> TablePlan:
    """The rows of ``table`` mapped to runs, and the sweep jobs (baseline first, then the rows
    in table order; rows that run the same configuration share their jobs).

    Raises:
        ConfigError / OptionError: a user override (``--cfg-options``) that no config takes.
    """
    from mtlbench.backbones.swin import backbone_label

    rows: List[PlannedRow] = []
    for i, r in table.rows.iterrows():
        rows.append(PlannedRow(index=int(i), method=str(r['method']), variant=str(r['variant']),
                               baseline=r['method'] == BASELINE_METHOD,
                               backbone=str(r.get('backbone') or 'swin-t')))
    if not any(p.baseline for p in rows):
        rows.insert(0, PlannedRow(index=None, method=BASELINE_METHOD, variant='', baseline=True))
    else:  # baseline first: a Δm needs it
        rows.sort(key=lambda p: not p.baseline)

    specs, owners = [], []
    for p in rows:
        path, options, reason = _map_variant(p.method, p.variant, table.dataset, p.backbone or 'swin-t')
        if reason is not None:
            p.reason = reason
            continue
        cfg = _load(path, options, settings.cfg_options)
        p.config, p.options, p.cfg = str(path), options, cfg
        p.variant_default = Path(path) == _default_config(p.method, table.dataset)
        p.label = _label(cfg)
        p.backbone = backbone_label(cfg.model.backbone.arch)
        root = cfg.train_dataloader.dataset.get('data_root')
        p.synthetic = settings.data_root is None and not (root and os.path.isdir(root))
        over = {f'model.method.{k}': v for k, v in options.items()}
        over.update(settings.cfg_options)
        # the method's default config is found by `mtlbench run` itself (a portable command)
        args = ([] if p.variant_default else ['--config', str(path)]) + settings.run_args()
        if over:
            args += ['--cfg-options', *(f'{k}={v!r}' if isinstance(v, str) else f'{k}={v}'
                                        for k, v in over.items())]
        specs.append({'method': p.method, 'variant': p.label, 'args': args,
                      'match': {'backbone': p.backbone, 'img_size': _run_img_size(cfg, settings, p.synthetic),
                                'pretrained_key': pretrained_key(settings.pretrained
                                                                 or cfg.model.backbone.get('pretrained'))}})
        owners.append(p)
    jobs: List[SweepJob] = []
    job_rows: List[PlannedRow] = []
    for spec, owner in zip(specs, owners):
        for job in plan_sweep([spec], settings.seeds, table.dataset, synthetic=owner.synthetic):
            if settings.work_dir:
                job = dataclasses.replace(job, args=job.args + (
                    '--work-dir', str(Path(settings.work_dir) / _slug(job.name))))
            if job not in jobs:
                jobs.append(job)
                job_rows.append(owner)
    return TablePlan(table=table, rows=rows, jobs=jobs, job_rows=job_rows)


def job_cost(row: PlannedRow, bench: Sequence[Mapping]) -> Optional[Dict[str, Any]]:
    """Projected hours of one job of ``row`` (:mod:`mtlbench.run_cost`) from the newest
    matching bench record (method, label, dataset, backbone): its ``full_run`` projection, or,
    for a bench record without one, ``project_full_run`` of the row's config at the measured
    throughputs (checkpoint writes not timed). None: no bench record."""
    from mtlbench.reporting.aggregate import _bench_for
    from mtlbench.run_cost import project_full_run, schedule_from_config

    if not row.runnable or row.cfg is None:
        return None
    b = _bench_for(bench, row.method, row.label, row.cfg.dataset_name,
                   tuple(row.cfg.model.backbone.img_size), row.backbone)
    if b is None:
        return None
    if b.get('full_run'):
        return {'total_h': float(b['full_run']['total_h']), 'device': b.get('device'), 'note': ''}
    evaluate = b.get('eval_img_s') or b.get('infer_img_s')
    if not b.get('train_img_s') or not evaluate:
        return None
    out = project_full_run(schedule_from_config(row.cfg), float(b['train_img_s']), float(evaluate), 0.0)
    return {'total_h': out['total_h'], 'device': b.get('device'), 'note': 'checkpoint writes not timed'}


def format_plan(plan: TablePlan, bench: Sequence[Mapping] = ()) -> str:
    """The rows (runnable or why not) and the projected cost of the jobs."""
    from tabulate import tabulate

    t = plan.table
    lines = [f'{t.id}: {t.paper} ({t.citation}), {t.table} — {len(t.rows)} row(s), '
             f'{len(plan.jobs)} job(s)']
    table = []
    for p in plan.rows:
        what = 'baseline (single-task, for Δm)' if p.baseline else ''
        if not p.runnable:
            how = f'not runnable: {p.reason}'
        else:
            how = Path(p.config).name + ''.join(f' {k}={v}' for k, v in p.options.items())
        table.append([p.index if p.index is not None else 'added', p.name or p.method, what,
                      p.label if p.runnable else '—', how])
    lines.append(tabulate(table, headers=['row', 'paper row', 'role', 'record label', 'config / options'],
                          tablefmt='simple', disable_numparse=True))
    total, missing = 0.0, []
    cost_rows = []
    for job, row in zip(plan.jobs, plan.job_rows):
        cost = job_cost(row, bench)
        if cost is None:
            missing.append(job.name)
            cost_rows.append([job.name, 'no bench record', ''])
        else:
            total += cost['total_h']
            cost_rows.append([job.name, f'{cost["total_h"]:.2f} h', f'{cost["device"]}'
                              + (f' ({cost["note"]})' if cost['note'] else '')])
    lines += ['', 'Projected cost (mtlbench.run_cost: the config\'s full schedule at the bench '
                  'record\'s throughput):',
              tabulate(cost_rows, headers=['job', 'projected wall time', 'bench device'],
                       tablefmt='simple', disable_numparse=True)]
    lines.append(f'total: {total:.2f} h for {len(plan.jobs) - len(missing)} job(s) with a bench record'
                 + (f'; {len(missing)} job(s) have no bench record (`mtlbench bench --method M` '
                    'on the target device adds one)' if missing else ''))
    return '\n'.join(lines)
