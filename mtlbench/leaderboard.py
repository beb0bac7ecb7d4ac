"""Leaderboards from run records (and bench records), with papers' reported numbers on request.

Inputs are only files: run records (``results/runs``), bench records (``results/bench``) and the
papers' tables as data (``results/reference/*.csv``). Outputs are
``results/leaderboard_<dataset>.{md,csv,tex,json}`` and the text printed by ``mtlbench
leaderboard``.

Rules the tables follow (``/work/shared/reference/metrics.md``):

- One row per method configuration: ``(method, variant, checkpoint)``. Per-task primary metrics
  are the mean ± sample standard deviation (ddof 1) over the seeds (records), with ``n``.
- Δm is recomputed from the per-task means against the ``single_task`` run records with the
  same dataset, backbone, input size, eval protocol, synthetic flag, pretrained checkpoint and
  training protocol.
  The ``delta_m`` stored in a record is never read. Without a baseline the cell is ``—`` and
  the reason is listed under the table.
- Records that are not comparable are never in one table: dataset, synthetic flag, backbone,
  input size, eval protocol, pretrained checkpoint, training protocol (``'reference'``, the
  departures of ``mtlbench.protocol``, or ``'unknown'`` for older records) and (for multi-task
  rows) the task set each split tables. Tables are titled with what they hold.
- Reported rows (``with_reported``) sit in their own table per dataset; their Δm is recomputed
  from their own per-task numbers against the single-task row of the same paper, and a
  printed Δm more than 0.02 away is flagged. A difference table gives reproduced − reported
  for methods that have both.

Not in the brief, chosen here:
- The pretrained checkpoint (by file name) and the task set are part of the comparability key:
  a random-init run or a 2-task run is not comparable to a pretrained 4-task run.
- A ``single_task`` row's parameter counts are the sum over its per-task models (the papers
  print 112.62M for four single-task models), averaged over seeds per model.
- Throughput/memory columns are bolded only when every bench number in the table comes from
  the same device.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from tabulate import tabulate

from mtlbench.records import (BASELINE_METHOD, collect_baseline, comparability_key, load_records,
                              newest_per_identity)
from mtlbench.tasks import DATASET_TASKS, TASKS

__all__ = [
    'GroupTable', 'ReportedTable', 'DiffTable', 'LeaderboardResult', 'build_leaderboard',
    'write_leaderboard', 'run_leaderboard', 'load_reported', 'pareto_frame', 'latex_escape',
    'DEFAULT_REFERENCE_DIR', 'DATASET_NAMES',
]

_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_DIR = (_REPO_ROOT / 'results' / 'reference'
                         if (_REPO_ROOT / 'results' / 'reference').is_dir()
                         else Path('results') / 'reference')
DATASET_NAMES = {'pascal_context': 'PASCAL-Context', 'nyudv2': 'NYUDv2'}
DELTA_M_TOLERANCE = 0.02  # metrics.md: papers round; within ±0.02 counts as agreeing
PAPER_SIZE = (448, 448)
PAPER_PROTOCOL = 'resized-448'
PAPER_BACKBONE = 'swin-t'

_UP, _DOWN = '↑', '↓'
_DASH = '—'

# Directions of secondary metrics (``None``: unknown, shown without arrow and never bolded).
_SECONDARY_HIB = {
    'miou': True, 'maxf': True, 'pixel_acc': True, 'acc': True, 'fscore': True, 'f1': True,
    'mean': False, 'median': False, 'rmse': False, 'abs_rel': False, 'sq_rel': False,
    'log_rmse': False, 'rmse_log': False, 'log10': False, 'mae': False,
}


def _secondary_direction(name: str) -> Optional[bool]:
    low = name.lower()
    if low in _SECONDARY_HIB:
        return _SECONDARY_HIB[low]
    if re.match(r'^(within_?|pct_?|<)?\d+(\.\d+)?$', low) or low.startswith('within'):
        return True  # % of pixels within an angle
    if low.startswith('delta') or low.startswith('d1') or low.startswith('δ'):
        return True  # depth threshold accuracy
    return None


def _decimals(task: str, metric: str) -> int:
    return 4 if task == 'depth' else 2


def _arrow(hib: Optional[bool]) -> str:
    return '' if hib is None else (_UP if hib else _DOWN)


# ----------------------------------------------------------------------------- data classes

@dataclass
class GroupTable:
    """One table of comparable reproduced rows.

    Attributes:
        title (str): label naming what the table holds.
        dataset (str): dataset key.
        key (dict): synthetic, backbone, img_size, eval_protocol, pretrained, protocol, tasks.
        comparable_to_papers (bool): real data, pretrained, the papers' size/protocol/backbone
            and the dataset's full task set.
        tasks (list[str]): task columns.
        rows (DataFrame): numeric rows (one per method configuration).
        detail (DataFrame): secondary metrics, same row order.
        notes (list[str]): Δm reasons, baseline provenance, caveats.
    """
    title: str
    dataset: str
    key: Dict[str, Any]
    comparable_to_papers: bool
    tasks: List[str]
    rows: pd.DataFrame
    detail: pd.DataFrame
    notes: List[str] = field(default_factory=list)
    secondary: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class ReportedTable:
    """Papers' rows for one dataset (``rows``: numeric, with recomputed and printed Δm)."""
    title: str
    dataset: str
    tasks: List[str]
    rows: pd.DataFrame
    notes: List[str] = field(default_factory=list)


@dataclass
class DiffTable:
    """Reproduced − reported for the method configurations that have both."""
    title: str
    dataset: str
    tasks: List[str]
    rows: pd.DataFrame
    notes: List[str] = field(default_factory=list)


@dataclass
class LeaderboardResult:
    """Everything a leaderboard shows, before formatting."""
    datasets: List[str]
    tables: List[GroupTable] = field(default_factory=list)
    reported: List[ReportedTable] = field(default_factory=list)
    differences: List[DiffTable] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    n_runs: int = 0
    n_bench: int = 0

    def for_dataset(self, dataset: str) -> 'LeaderboardResult':
        """The part of the result about one dataset (skipped entries are kept whole)."""
        return LeaderboardResult(
            datasets=[dataset],
            tables=[t for t in self.tables if t.dataset == dataset],
            reported=[t for t in self.reported if t.dataset == dataset],
            differences=[t for t in self.differences if t.dataset == dataset],
            skipped=list(self.skipped), notes=list(self.notes),
            n_runs=len({rid for t in self.tables if t.dataset == dataset and len(t.rows)
                        for ids in t.rows['run_ids'] for rid in str(ids).split(',') if rid}),
            n_bench=self.n_bench)


# ----------------------------------------------------------------------------- helpers

def _delta_m_fn():
    try:
        from mtlbench.evaluation.delta_m import delta_m
    except ImportError as e:
        return None, f'Δm code unavailable (mtlbench.evaluation.delta_m: {e})'
    return delta_m, None


def _delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float],
             tasks: Sequence[str]) -> Tuple[Optional[float], Optional[str]]:
    fn, reason = _delta_m_fn()
    if fn is None:
        return None, reason
    hib = {t: TASKS[t].higher_is_better for t in tasks}
    try:
        return float(fn(dict(metrics), dict(baseline), list(tasks), higher_is_better=hib)), None
    except Exception as e:  # a bad baseline value (e.g. zero) must not crash a leaderboard
        return None, f'Δm computation failed: {type(e).__name__}: {e}'


def _tolerance() -> float:
    try:
        from mtlbench.evaluation.delta_m import AGREEMENT_TOL
    except ImportError:
        return DELTA_M_TOLERANCE
    return float(AGREEMENT_TOL)


def _mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), std, int(arr.size)


def _size_str(size: Sequence[int]) -> str:
    return 'x'.join(str(int(s)) for s in size)


def _is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _present(x: Any) -> bool:
    return not _is_nan(x) and x is not pd.NA and x != ''


def _row_label(method: str, variant: str) -> str:
    return f'{method} {variant}'.strip()


def _registered_methods() -> Optional[set]:
    """Registry keys of ``METHODS`` after importing ``mtlbench.methods``; None if unavailable."""
    try:
        import importlib
        importlib.import_module('mtlbench.methods')
        from mtlbench.registry import METHODS
        keys = set(METHODS.module_dict)
    except Exception:
        return None
    return keys or None


# ----------------------------------------------------------------------------- reproduced rows

def _order_tasks(dataset: str, tasks: Iterable[str]) -> List[str]:
    order = list(DATASET_TASKS.get(dataset, {}))
    tasks = set(tasks)
    return [t for t in order if t in tasks] + sorted(t for t in tasks if t not in order)


def _group_title(dataset: str, key: Mapping[str, Any], full_tasks: bool) -> str:
    parts = [DATASET_NAMES.get(dataset, dataset)]
    if key['synthetic']:
        parts.append('SYNTHETIC DATA (not comparable to papers)')
    parts.append(f"{key['backbone']} {_size_str(key['img_size'])} {key['eval_protocol']}")
    if key['pretrained'] == 'random init':
        parts.append('random init (not comparable to papers)')
    else:
        parts.append(f"pretrained: {key['pretrained']}")
    parts.append(f"protocol: {key['protocol']}")
    if not full_tasks:
        parts.append('tasks: ' + ', '.join(key['tasks']))
    return ' — '.join(parts)


def _bench_backbone(arch: Optional[str]) -> Optional[str]:
    """Backbone label of a bench record's ``arch`` (``'tiny'`` -> ``'swin-t'``), as run records name it."""
    if arch is None:
        return None
    return {'tiny': 'swin-t', 'small': 'swin-s', 'base': 'swin-b'}.get(arch, f'swin-{arch}')


def _bench_for(bench: Sequence[Mapping], method: str, variant: str, dataset: str,
               img_size: Sequence[int], backbone: Optional[str] = None) -> Optional[Mapping]:
    cands = [b for b in bench if b.get('method') == method and b.get('variant') == variant
             and b.get('dataset') == dataset
             and (backbone is None or b.get('arch') is None or _bench_backbone(b.get('arch')) == backbone)]
    if not cands:
        return None
    same = [b for b in cands if tuple(b.get('img_size') or ()) == tuple(img_size)]
    cands = same or cands
    return max(cands, key=lambda b: str(b.get('created', '')))


def _aggregate_row(recs: Sequence[Mapping], tasks: Sequence[str],
                   secondary: Sequence[Tuple[str, str]]) -> Tuple[dict, dict, List[str]]:
    """Numeric main row and detail row for the records of one method configuration."""
    notes: List[str] = []
    first = recs[0]
    label = _row_label(first['method'], first['variant'])
    row: Dict[str, Any] = {'method': first['method'], 'variant': first['variant'],
                           'checkpoint': first['checkpoint']}
    ns = []
    for t in tasks:
        vals = [r['primary'][t].get('value') for r in recs if t in r['primary']]
        mean, std, n = _mean_std([v for v in vals if v is not None])
        if len(vals) > n:
            notes.append(f'{label}: {len(vals) - n} record(s) without a {t} value (null, e.g. '
                         f'not computable) left out of the mean')
        row[t], row[f'{t}_std'], row[f'{t}_n'] = mean, std, n
        ns.append(n)
    present = [n for n in ns if n]
    row['n_min'] = min(present) if present else 0
    row['n_max'] = max(present) if present else 0
    row['n_records'] = len(recs)
    row['seeds'] = ','.join(str(s) for s in sorted({r['seed'] for r in recs}))

    # Parameters: mean over seeds per task set (model), summed over the models of the row.
    by_model: Dict[tuple, List[Mapping]] = {}
    for r in recs:
        by_model.setdefault(tuple(r['tasks']), []).append(r)
    for name, key in (('params_trainable_m', 'total_trainable'),
                      ('params_adapter_m', 'adapter'),
                      ('params_decoder_m', 'decoder'),
                      ('params_backbone_other_m', 'backbone_other'),
                      ('params_total_m', 'total'),
                      ('params_encoder_trainable_m', 'encoder_trainable')):
        total = 0.0
        have = False
        for model_recs in by_model.values():
            vals = [r['params'].get(key) for r in model_recs if r['params'].get(key) is not None]
            if not vals:
                continue
            have = True
            if max(vals) != min(vals):
                notes.append(f'{label}: params.{key} differs between seeds '
                             f'({min(vals):,}–{max(vals):,}); the mean is shown')
            total += float(np.mean(vals))
        row[name] = total / 1e6 if have else math.nan
    if len(by_model) > 1:
        models = sorted(by_model, key=lambda k: [tasks.index(t) if t in tasks else len(tasks)
                                                 for t in k])
        notes.append(f'{label}: parameter counts are the sum over its {len(by_model)} '
                     f'separate models ({"; ".join(",".join(k) for k in models)}).')
    walls = [r.get('wall_time_s') for r in recs if r.get('wall_time_s') is not None]
    row['wall_time_h'] = float(np.mean(walls)) / 3600 if walls else math.nan
    row['devices'] = '; '.join(sorted({str(r.get('device')) for r in recs}))
    row['git_shas'] = ','.join(sorted({str(r.get('git_sha'))[:10] for r in recs}))
    row['run_ids'] = ','.join(r['run_id'] for r in recs)

    detail: Dict[str, Any] = {'method': first['method'], 'variant': first['variant'],
                              'checkpoint': first['checkpoint'], 'n_records': len(recs)}
    for t, m in secondary:
        vals = [r['metrics'][t].get(m) for r in recs if isinstance(r['metrics'].get(t), dict)]
        mean, std, n = _mean_std([v for v in vals if v is not None])
        detail[f'{t}.{m}'], detail[f'{t}.{m}_std'], detail[f'{t}.{m}_n'] = mean, std, n
    return row, detail, notes


def _build_group(dataset: str, key: Dict[str, Any], recs: List[Mapping],
                 all_runs: Sequence[Mapping], bench: Sequence[Mapping]) -> GroupTable:
    tasks = list(key['tasks'])
    full = tasks == list(DATASET_TASKS.get(dataset, {}))
    notes: List[str] = []
    secondary = sorted({(t, m) for r in recs for t in tasks for m in r['metrics'].get(t, {})
                        if m != TASKS[t].primary_metric},
                       key=lambda tm: (tasks.index(tm[0]), tm[1]))

    # Baseline (the same for every row of the table).
    found = collect_baseline(all_runs, dataset, key['backbone'], key['img_size'],
                             key['eval_protocol'], key['synthetic'], tasks,
                             pretrained=key['pretrained'], protocol=key['protocol'])
    missing = [t for t in tasks if not found[t]]
    baseline = None
    if missing:
        base_reason = (f'no single_task baseline record for {", ".join(missing)} with these '
                       f'keys (dataset, backbone, size, eval protocol, synthetic flag, pretrained, '
                       f'training protocol)')
        notes.append(f'Δm: {base_reason}, so no row of this table has a Δm.')
    else:
        base_reason = None
        baseline = {t: float(np.mean([r['primary'][t]['value'] for r in found[t]]))
                    for t in tasks}
        desc = []
        for t in tasks:
            ck = sorted({r['checkpoint'] for r in found[t]})
            desc.append(f'{t} {len(found[t])} record(s), checkpoint {"/".join(ck)}')
        notes.append('Δm baseline: mean of single_task records — ' + '; '.join(desc) + '.')

    by_config: Dict[tuple, List[Mapping]] = {}
    for r in recs:
        by_config.setdefault((r['method'], r['variant'], r['checkpoint']), []).append(r)
    rows, details = [], []
    for (method, variant, ckpt), config_recs in by_config.items():
        row, detail, row_notes = _aggregate_row(config_recs, tasks, secondary)
        notes += row_notes
        label = _row_label(method, variant) + (f' [{ckpt}]' if ckpt != 'last' else '')
        lacking = [t for t in tasks if row[f'{t}_n'] == 0]
        if lacking:
            row['delta_m'], row['delta_m_reason'] = math.nan, \
                f'row has no records for {", ".join(lacking)}'
        elif baseline is None:
            row['delta_m'], row['delta_m_reason'] = math.nan, base_reason
        else:
            value, reason = _delta_m({t: row[t] for t in tasks}, baseline, tasks)
            row['delta_m'] = math.nan if value is None else value
            row['delta_m_reason'] = reason
        if row['delta_m_reason'] and baseline is not None:
            notes.append(f'{label}: Δm not computed — {row["delta_m_reason"]}.')
        b = _bench_for(bench, method, variant, dataset, key['img_size'], key.get('backbone'))
        row['bench_device'] = b.get('device') if b else None
        row['train_img_s'] = b.get('train_img_s') if b else None
        row['infer_img_s'] = b.get('infer_img_s') if b else None
        row['peak_mem_mb'] = b.get('peak_mem_mb') if b else None
        row['flops_per_img_g'] = (b['flops_per_img'] / 1e9
                                  if b and b.get('flops_per_img') is not None else None)
        row['bench_batch_size'] = b.get('batch_size') if b else None
        row['bench_amp'] = b.get('amp') if b else None
        row['bench_img_size'] = _size_str(b['img_size']) if b else None
        if b and tuple(b.get('img_size') or ()) != tuple(key['img_size']):
            notes.append(f'{label}: bench record measured at {_size_str(b["img_size"])}, '
                         f'not {_size_str(key["img_size"])}.')
        row['backbone'] = key['backbone']
        row['pretrained'] = key['pretrained']
        row['resolution'] = _size_str(key['img_size'])
        row['eval_protocol'] = key['eval_protocol']
        row['synthetic'] = key['synthetic']
        rows.append(row)
        details.append(detail)
        if ckpt == 'best':
            notes.append(f'{label}: checkpoint "best" was chosen on the evaluation split, '
                         f'which leaks the test set (metrics.md); "last" rows do not.')

    df = pd.DataFrame(rows)
    det = pd.DataFrame(details)
    # Order: baseline first, then Δm descending (missing last), then name.
    order = sorted(range(len(df)), key=lambda i: (
        df.loc[i, 'method'] != BASELINE_METHOD,
        -(df.loc[i, 'delta_m']) if not _is_nan(df.loc[i, 'delta_m']) else math.inf,
        df.loc[i, 'method'], df.loc[i, 'variant'], df.loc[i, 'checkpoint']))
    df = df.iloc[order].reset_index(drop=True)
    det = det.iloc[order].reset_index(drop=True)
    devices = {d for d in df['bench_device'] if _present(d)}
    if len(devices) > 1:
        notes.append('Bench numbers come from different devices (' + ', '.join(sorted(devices))
                     + '); compare speed and memory only between rows of the same device.')
    if (df['n_max'] > 0).any():
        notes.insert(0, 'Values: mean ± sample std over n seeds (one record per seed); '
                        'Δm is recomputed from the per-task means.')
    comparable = (not key['synthetic'] and key['pretrained'] != 'random init'
                  and tuple(key['img_size']) == PAPER_SIZE
                  and key['eval_protocol'] == PAPER_PROTOCOL
                  and key['backbone'] == PAPER_BACKBONE and full)
    return GroupTable(title=_group_title(dataset, key, full), dataset=dataset, key=key,
                      comparable_to_papers=comparable, tasks=tasks, rows=df, detail=det,
                      notes=notes, secondary=secondary)


def _group_records(runs: Sequence[Mapping]) -> Dict[tuple, List[Mapping]]:
    """Split runs into comparability groups; baseline records join every group of their
    base key whose tasks they score."""
    base: Dict[tuple, Dict[str, List[Mapping]]] = {}
    for r in runs:
        k = comparability_key(r)
        slot = base.setdefault(k, {'mtl': [], 'single': []})
        slot['single' if r['method'] == BASELINE_METHOD else 'mtl'].append(r)
    groups: Dict[tuple, List[Mapping]] = {}
    for k, slot in base.items():
        dataset = k[0]
        task_sets = {tuple(_order_tasks(dataset, r['tasks'])) for r in slot['mtl']}
        if not task_sets:
            task_sets = {tuple(_order_tasks(dataset, {t for r in slot['single']
                                                      for t in r['tasks']}))}
        for ts in task_sets:
            members = [r for r in slot['mtl'] if tuple(_order_tasks(dataset, r['tasks'])) == ts]
            members += [r for r in slot['single'] if set(r['tasks']) & set(ts)]
            groups[k + (ts,)] = members
    return groups


def _group_sort_key(gkey: tuple) -> tuple:
    dataset, synthetic, backbone, size, eval_protocol, pre, protocol, tasks = gkey
    full = list(tasks) == list(DATASET_TASKS.get(dataset, {}))
    return (dataset, synthetic, pre == 'random init', not full, size != PAPER_SIZE,
            eval_protocol != PAPER_PROTOCOL, protocol != 'reference', backbone, size,
            eval_protocol, pre, protocol, tasks)


# ----------------------------------------------------------------------------- reported rows

def load_reported(reference_dir: Path | str, dataset: Optional[str] = None,
                  ) -> Tuple[pd.DataFrame, List[Tuple[str, str]]]:
    """Read the papers' rows from ``reference_dir/*.csv``.

    Args:
        reference_dir (path): folder of the reference CSVs (``results/reference``).
        dataset (str, optional): keep only this dataset.

    Returns:
        tuple: ``(rows, problems)``; ``rows`` has one row per CSV line (task columns numeric,
        NaN where the paper prints nothing), ``problems`` lists unreadable files.
    """
    frames, problems = [], []
    for path in sorted(Path(reference_dir).glob('*.csv')):
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as e:
            problems.append((str(path), f'unreadable reference CSV: {e}'))
            continue
        need = {'paper', 'citation', 'table', 'dataset', 'method', 'variant', 'printed_delta_m'}
        if not need <= set(df.columns):
            problems.append((str(path), f'missing columns {sorted(need - set(df.columns))}'))
            continue
        df['source_file'] = path.name
        frames.append(df)
    if not frames:
        return pd.DataFrame(), problems
    df = pd.concat(frames, ignore_index=True).fillna('')
    numeric = [t for t in TASKS if t in df.columns] + ['printed_delta_m', 'params_m']
    for col in numeric:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col].replace('', np.nan), errors='coerce')
    for col in ('origin', 'params_note', 'backbone', 'pretrained', 'notes'):
        if col not in df.columns:
            df[col] = ''
    if dataset is not None:
        df = df[df['dataset'] == dataset].reset_index(drop=True)
    return df, problems


def _reported_baseline(df: pd.DataFrame, idx: int, tasks: Sequence[str],
                       ) -> Tuple[Optional[Dict[str, float]], str]:
    row = df.loc[idx]
    single = df[(df['method'] == BASELINE_METHOD) & (df['dataset'] == row['dataset'])]
    for where, cands in (('same table', single[(single['paper'] == row['paper'])
                                              & (single['table'] == row['table'])]),
                         ('same paper', single[single['paper'] == row['paper']])):
        if len(cands):
            b = cands.iloc[0]
            vals = {t: b[t] for t in tasks}
            if all(not _is_nan(v) for v in vals.values()):
                return {t: float(v) for t, v in vals.items()}, \
                    f'{b["paper"]}: {b["table"]} ({where})'
    if len(single):
        vals = single[list(tasks)].drop_duplicates()
        if len(vals) == 1 and not vals.isna().any(axis=None):
            return {t: float(vals.iloc[0][t]) for t in tasks}, 'shared single-task row'
        return None, 'single-task rows of the papers disagree and the paper has none of its own'
    return None, 'no single-task row for this dataset'


def _build_reported(df: pd.DataFrame, dataset: str) -> ReportedTable:
    tasks = [t for t in DATASET_TASKS.get(dataset, {}) if t in df.columns]
    rows, notes = [], []
    for i in range(len(df)):
        r = df.loc[i]
        out = {k: r[k] for k in ('paper', 'citation', 'table', 'method', 'variant', 'origin')}
        for t in tasks:
            out[t] = float(r[t]) if not _is_nan(r[t]) else math.nan
        label = f'{r["paper"]} / {r["table"]} / {_row_label(r["method"], r["variant"])}'
        lacking = [t for t in tasks if _is_nan(out[t])]
        if lacking:
            value, reason = None, f'per-task numbers not reported ({", ".join(lacking)})'
            base_src = ''
        else:
            baseline, base_src = _reported_baseline(df, i, tasks)
            if baseline is None:
                value, reason = None, base_src
            else:
                value, reason = _delta_m({t: out[t] for t in tasks}, baseline, tasks)
        out['delta_m'] = math.nan if value is None else value
        out['delta_m_reason'] = reason
        out['delta_m_baseline'] = base_src
        printed = r['printed_delta_m']
        out['printed_delta_m'] = float(printed) if not _is_nan(printed) else math.nan
        flag = ''
        if value is not None and not _is_nan(printed) \
                and abs(value - float(printed)) > _tolerance() + 1e-9:
            flag = f'⚠ printed {float(printed):+.2f}'
            notes.append(f'{label}: printed Δm {float(printed):+.2f} does not follow from '
                         f'the row (recomputed {value:+.2f}).')
        if value is None:
            notes.append(f'{label}: Δm not recomputed — {reason}.')
        out['delta_m_flag'] = flag
        if str(r.get('notes', '')).strip():
            notes.append(f'{label}: {str(r["notes"]).strip()}.'.replace('..', '.'))
        out['params_m'] = float(r['params_m']) if not _is_nan(r.get('params_m')) else math.nan
        for k in ('params_note', 'backbone', 'pretrained', 'notes', 'source_file'):
            out[k] = r.get(k, '')
        rows.append(out)
    notes.insert(0, 'Reported rows are transcribed from the papers (results/reference/); Δm '
                    'is recomputed from each row against the single-task row of the same '
                    f'paper; a printed Δm more than {_tolerance()} away is flagged ⚠.')
    title = (f'{DATASET_NAMES.get(dataset, dataset)} — REPORTED in papers (not run here; '
             f'protocol as each paper states)')
    return ReportedTable(title=title, dataset=dataset, tasks=tasks, rows=pd.DataFrame(rows),
                         notes=notes)


def _norm_variant(v: str) -> str:
    v = str(v).strip().lower().replace(' ', '')
    return '' if v in ('', 'default') else v


def _pick_reported(rep: pd.DataFrame, method: str, variant: str) -> Optional[pd.Series]:
    if rep.empty:
        return None
    cand = rep[(rep['method'] == method)
               & (rep['variant'].map(_norm_variant) == _norm_variant(variant))]
    if cand.empty:
        return None
    order = sorted(range(len(cand)), key=lambda i: (
        cand.iloc[i]['origin'] != 'own', 'ablation' in str(cand.iloc[i]['table']).lower(),
        'encoder only' in str(cand.iloc[i]['params_note']).lower(),
        _is_nan(cand.iloc[i]['params_m'])))
    return cand.iloc[order[0]]


def _build_diff(group: GroupTable, rep: ReportedTable) -> Optional[DiffTable]:
    tasks = [t for t in group.tasks if t in rep.tasks]
    rows, notes = [], []
    for i in range(len(group.rows)):
        r = group.rows.loc[i]
        p = _pick_reported(rep.rows, r['method'], r['variant'])
        if p is None:
            continue
        out = {'method': r['method'], 'variant': r['variant'], 'checkpoint': r['checkpoint'],
               'n_min': r['n_min'], 'n_max': r['n_max'],
               'reported_source': f'{p["paper"]} ({p["citation"]}), {p["table"]}'}
        for t in tasks:
            out[f'{t}_reproduced'] = r[t]
            out[f'{t}_reported'] = p[t]
            out[f'{t}_diff'] = r[t] - p[t] if not (_is_nan(r[t]) or _is_nan(p[t])) else math.nan
        out['delta_m_reproduced'] = r['delta_m']
        out['delta_m_reported'] = p['delta_m']
        out['delta_m_diff'] = (r['delta_m'] - p['delta_m']
                               if not (_is_nan(r['delta_m']) or _is_nan(p['delta_m']))
                               else math.nan)
        ours = r['params_trainable_m']
        if 'encoder only' in str(p['params_note']).lower():
            ours = r.get('params_encoder_trainable_m', math.nan)
            notes.append(f'{_row_label(r["method"], r["variant"])}: the paper counts encoder '
                         f'parameters only; compared with params.encoder_trainable.')
        out['params_reproduced_m'] = ours
        out['params_reported_m'] = p['params_m']
        out['params_diff_m'] = (ours - p['params_m']
                                if not (_is_nan(ours) or _is_nan(p['params_m'])) else math.nan)
        rows.append(out)
    if not rows:
        return None
    notes.insert(0, 'Differences are reproduced − reported, per metric in its own unit (for ↓ '
                    'metrics a negative difference is better); Δm of both sides recomputed.')
    title = f'{group.title} — reproduced − reported'
    return DiffTable(title=title, dataset=group.dataset, tasks=tasks, rows=pd.DataFrame(rows),
                     notes=notes)


# ----------------------------------------------------------------------------- build

def build_leaderboard(records: Sequence[Mapping], dataset: Optional[str] = None,
                      with_reported: bool = False,
                      reference_dir: Path | str = DEFAULT_REFERENCE_DIR,
                      bench_records: Sequence[Mapping] = (),
                      known_methods: Optional[Iterable[str]] = None,
                      skipped: Sequence[Tuple[Any, str]] = ()) -> LeaderboardResult:
    """Group, aggregate and score run records.

    Args:
        records (list[dict]): run records (loaded and validated; other kinds are ignored,
            bench records may be passed here too).
        dataset (str, optional): only this dataset. Defaults to every dataset present.
        with_reported (bool): add the papers' rows and difference tables.
        reference_dir (path): folder of the reference CSVs.
        bench_records (list[dict]): bench records for the speed/memory columns.
        known_methods (set[str], optional): method keys to accept; records of other methods
            are skipped with a reason. Defaults to accepting every method.
        skipped (list): ``(path, reason)`` from loading, carried into the result.

    Returns:
        LeaderboardResult: numeric tables, notes and skipped entries.
    """
    skipped_out: List[Tuple[str, str]] = [(str(p), r) for p, r in skipped]
    known = set(known_methods) if known_methods is not None else None
    runs, bench = [], list(r for r in bench_records if r.get('kind') == 'bench')
    bench += [r for r in records if r.get('kind') == 'bench']
    for r in records:
        if r.get('kind') != 'run':
            continue
        where = r.get('_path', r.get('run_id', '?'))
        if known is not None and r.get('method') not in known:
            skipped_out.append((str(where), f'unknown method {r.get("method")!r} '
                                            f'(not registered)'))
            continue
        if r.get('dataset') not in DATASET_TASKS:
            skipped_out.append((str(where), f'unknown dataset {r.get("dataset")!r}'))
            continue
        if dataset is not None and r['dataset'] != dataset:
            continue
        runs.append(r)
    runs, repeats = newest_per_identity(runs)  # a seed run twice is one seed, not n=2
    for repeat, kept in repeats:
        skipped_out.append((str(repeat.get('_path', repeat.get('run_id', '?'))),
                            f'repeats seed {repeat["seed"]} of {_row_label(repeat["method"], repeat["variant"])} '
                            f'(same method, options, dataset and protocol); the newest record '
                            f'{kept.get("_path", kept.get("run_id", "?"))} is counted instead'))
    if known is not None:
        for b in list(bench):
            if b.get('method') not in known:
                skipped_out.append((str(b.get('_path', b.get('bench_id', '?'))),
                                    f'bench record of unknown method {b.get("method")!r}'))
                bench.remove(b)

    datasets = [dataset] if dataset else sorted({r['dataset'] for r in runs})
    result = LeaderboardResult(datasets=list(datasets), skipped=skipped_out, n_runs=len(runs),
                               n_bench=len(bench))
    groups = _group_records(runs)
    for gkey in sorted(groups, key=_group_sort_key):
        ds, synthetic, backbone, size, eval_protocol, pre, protocol, tasks = gkey
        key = {'synthetic': synthetic, 'backbone': backbone, 'img_size': list(size),
               'eval_protocol': eval_protocol, 'pretrained': pre, 'protocol': protocol,
               'tasks': list(tasks)}
        result.tables.append(_build_group(ds, key, groups[gkey], runs, bench))

    if with_reported:
        rep_all, problems = load_reported(reference_dir)
        result.skipped += problems
        if rep_all.empty:
            result.notes.append(f'--with-reported: no reference CSVs found in {reference_dir}.')
        rep_datasets = sorted(set(rep_all['dataset'])) if not rep_all.empty else []
        if dataset:
            rep_datasets = [d for d in rep_datasets if d == dataset]
        for ds in rep_datasets:
            if ds not in result.datasets:
                result.datasets.append(ds)
            rep = _build_reported(rep_all[rep_all['dataset'] == ds].reset_index(drop=True), ds)
            result.reported.append(rep)
            comparable = [g for g in result.tables if g.dataset == ds and g.comparable_to_papers]
            for g in comparable:
                diff = _build_diff(g, rep)
                if diff is not None:
                    result.differences.append(diff)
            if not comparable and any(g.dataset == ds for g in result.tables):
                result.notes.append(
                    f'{DATASET_NAMES.get(ds, ds)}: no reproduced table is comparable to the '
                    f'papers (needs real data, a pretrained {PAPER_BACKBONE}, '
                    f'{_size_str(PAPER_SIZE)} {PAPER_PROTOCOL}, all tasks), so no differences.')
    return result


# ----------------------------------------------------------------------------- formatting

def latex_escape(text: Any) -> str:
    """Escape text for a LaTeX table cell (``_``, ``%``, ``&``, ``#``, ``±`` ...)."""
    s = str(text)
    s = s.replace('\\', r'\textbackslash{}')
    for a, b in (('{', r'\{'), ('}', r'\}'), ('_', r'\_'), ('%', r'\%'), ('&', r'\&'),
                 ('#', r'\#'), ('$', r'\$'), ('~', r'\textasciitilde{}'),
                 ('^', r'\textasciicircum{}')):
        s = s.replace(a, b)
    s = s.replace(r'\textbackslash\{\}', r'\textbackslash{}')
    s = s.replace(r'\textasciitilde\{\}', r'\textasciitilde{}')
    s = s.replace(r'\textasciicircum\{\}', r'\textasciicircum{}')
    for a, b in (('±', r'$\pm$'), ('↑', r'$\uparrow$'), ('↓', r'$\downarrow$'),
                 ('Δ', r'$\Delta$'), ('—', '---'), ('–', '--'), ('−', '$-$'),
                 ('×', r'$\times$'), ('⚠', r'\textbf{!}'), ('≥', r'$\geq$'), ('≤', r'$\leq$')):
        s = s.replace(a, b)
    return s


def _fmt_num(x: Any, decimals: int = 2, signed: bool = False) -> str:
    if _is_nan(x):
        return _DASH
    return f'{x:+.{decimals}f}' if signed else f'{x:.{decimals}f}'


def _fmt_pm(mean: Any, std: Any, decimals: int) -> str:
    if _is_nan(mean):
        return _DASH
    if _is_nan(std):
        return f'{mean:.{decimals}f}'
    return f'{mean:.{decimals}f} ± {std:.{decimals}f}'


def _best_indices(values: Sequence[Any], hib: Optional[bool], decimals: int) -> set:
    if hib is None:
        return set()
    vals = [(i, round(float(v), decimals)) for i, v in enumerate(values) if not _is_nan(v)]
    if len(vals) < 2:
        return set()
    best = max(v for _, v in vals) if hib else min(v for _, v in vals)
    winners = {i for i, v in vals if v == best}
    return set() if len(winners) == len(vals) else winners  # all tied: nothing stands out


class _Cells:
    """A table of display strings plus which cells are best (bolded by md/tex renderers)."""

    def __init__(self, headers: List[str]):
        self.headers = headers
        self.rows: List[List[str]] = []
        self.bold: set = set()

    def render(self, fmt: str) -> str:
        def cell(i, j, s):
            if (i, j) in self.bold and s != _DASH:
                if fmt == 'md':
                    return f'**{s}**'
                if fmt == 'tex':
                    return r'\textbf{' + latex_escape(s) + '}'
            return latex_escape(s) if fmt == 'tex' else s

        body = [[cell(i, j, s) for j, s in enumerate(r)] for i, r in enumerate(self.rows)]
        if fmt == 'md':
            heads = [h.replace('|', '\\|') for h in self.headers]
            body = [[c.replace('|', '\\|') for c in r] for r in body]
            return tabulate(body, headers=heads, tablefmt='pipe', disable_numparse=True)
        if fmt == 'text':
            return tabulate(body, headers=self.headers, tablefmt='simple', disable_numparse=True)
        if fmt == 'tex':
            return _tex_tabular([latex_escape(h) for h in self.headers], body)
        raise ValueError(fmt)


def _tex_tabular(headers: List[str], body: List[List[str]]) -> str:
    spec = 'l' * min(2, len(headers)) + 'r' * max(0, len(headers) - 2)
    lines = [r'\begin{tabular}{' + spec + '}', r'\toprule', ' & '.join(headers) + r' \\',
             r'\midrule']
    lines += [' & '.join(r) + r' \\' for r in body]
    lines += [r'\bottomrule', r'\end{tabular}']
    return '\n'.join(lines)


def _main_cells(g: GroupTable) -> _Cells:
    df = g.rows
    has_bench = df['bench_device'].notna().any() if len(df) else False
    heads = ['method', 'variant', 'n']
    for t in g.tasks:
        spec = TASKS[t]
        heads.append(f'{t} {spec.primary_metric} {_arrow(spec.higher_is_better)}')
    heads += [f'Δm (%) {_UP}', 'backbone', 'pretrained', 'resolution', 'protocol', 'ckpt',
              'trainable (M)', 'adapter / decoder (M)', 'total @inference (M)']
    if has_bench:
        heads += ['train img/s', 'infer img/s', 'peak mem (MB)', 'bench device']
    c = _Cells(heads)
    for i in range(len(df)):
        r = df.loc[i]
        n = str(r['n_min']) if r['n_min'] == r['n_max'] else f'{r["n_min"]}–{r["n_max"]}'
        cells = [r['method'], r['variant'], n]
        for t in g.tasks:
            d = _decimals(t, TASKS[t].primary_metric)
            cells.append(_fmt_pm(r[t], r[f'{t}_std'], d))
        cells.append(_fmt_num(r['delta_m'], 2, signed=True))
        cells += [r['backbone'], r['pretrained'], r['resolution'], r['eval_protocol'],
                  r['checkpoint'], _fmt_num(r['params_trainable_m']),
                  f'{_fmt_num(r["params_adapter_m"])} / {_fmt_num(r["params_decoder_m"])}',
                  _fmt_num(r['params_total_m'])]
        if has_bench:
            cells += [_fmt_num(r['train_img_s'], 1), _fmt_num(r['infer_img_s'], 1),
                      _fmt_num(r['peak_mem_mb'], 0),
                      r['bench_device'] if _present(r['bench_device']) else _DASH]
        c.rows.append([str(x) for x in cells])
    # Best per column.
    for k, t in enumerate(g.tasks):
        d = _decimals(t, TASKS[t].primary_metric)
        for i in _best_indices(list(df[t]), TASKS[t].higher_is_better, d):
            c.bold.add((i, 3 + k))
    dm_col = 3 + len(g.tasks)
    for i in _best_indices(list(df['delta_m']), True, 2):
        c.bold.add((i, dm_col))
    if has_bench and len({d for d in df['bench_device'] if _present(d)}) == 1:
        base = heads.index('train img/s')
        for off, col, hib, d in ((0, 'train_img_s', True, 1), (1, 'infer_img_s', True, 1),
                                 (2, 'peak_mem_mb', False, 0)):
            for i in _best_indices(list(df[col]), hib, d):
                c.bold.add((i, base + off))
    return c


def _detail_cells(g: GroupTable) -> Optional[_Cells]:
    if not g.secondary or g.detail.empty:
        return None
    heads = ['method', 'variant', 'ckpt']
    for t, m in g.secondary:
        heads.append(f'{t} {m} {_arrow(_secondary_direction(m))}'.strip())
    c = _Cells(heads)
    for i in range(len(g.detail)):
        r = g.detail.loc[i]
        cells = [r['method'], r['variant'], r['checkpoint']]
        for t, m in g.secondary:
            cells.append(_fmt_pm(r[f'{t}.{m}'], r[f'{t}.{m}_std'], _decimals(t, m)))
        c.rows.append([str(x) for x in cells])
    for k, (t, m) in enumerate(g.secondary):
        for i in _best_indices(list(g.detail[f'{t}.{m}']), _secondary_direction(m),
                               _decimals(t, m)):
            c.bold.add((i, 3 + k))
    return c


def _reported_cells(rep: ReportedTable) -> _Cells:
    df = rep.rows
    heads = ['source', 'method', 'variant']
    for t in rep.tasks:
        spec = TASKS[t]
        heads.append(f'{t} {spec.primary_metric} {_arrow(spec.higher_is_better)}')
    heads += [f'Δm (%) {_UP} recomputed', 'printed Δm', 'params (M)']
    c = _Cells(heads)
    for i in range(len(df)):
        r = df.loc[i]
        cells = [f'reported: {r["paper"]} ({r["citation"]}), {r["table"]}', r['method'],
                 r['variant']]
        for t in rep.tasks:
            cells.append(_fmt_num(r[t], 2))  # as printed: papers give two decimals
        dm = _fmt_num(r['delta_m'], 2, signed=True)
        if r['delta_m_flag']:
            dm += f' {r["delta_m_flag"]}'
        cells.append(dm)
        cells.append(_fmt_num(r['printed_delta_m'], 2, signed=True))
        p = _fmt_num(r['params_m'])
        if r['params_note'] and p != _DASH:
            p += f' ({r["params_note"]})'
        cells.append(p)
        c.rows.append([str(x) for x in cells])
    for k, t in enumerate(rep.tasks):
        for i in _best_indices(list(df[t]), TASKS[t].higher_is_better, 2):
            c.bold.add((i, 3 + k))
    for i in _best_indices(list(df['delta_m']), True, 2):
        c.bold.add((i, 3 + len(rep.tasks)))
    return c


def _diff_cells(d: DiffTable) -> _Cells:
    heads = ['method', 'variant', 'n', 'reported source']
    for t in d.tasks:
        spec = TASKS[t]
        heads.append(f'{t} {spec.primary_metric} {_arrow(spec.higher_is_better)} '
                     f'(ours / paper)')
    heads += ['Δm (%) (ours / paper)', 'trainable M (ours / paper)']
    c = _Cells(heads)
    for i in range(len(d.rows)):
        r = d.rows.loc[i]
        n = str(r['n_min']) if r['n_min'] == r['n_max'] else f'{r["n_min"]}–{r["n_max"]}'
        cells = [r['method'], r['variant'], n, r['reported_source']]
        for t in d.tasks:
            dec = _decimals(t, TASKS[t].primary_metric)
            cells.append(f'{_fmt_num(r[f"{t}_diff"], dec, signed=True)} '
                         f'({_fmt_num(r[f"{t}_reproduced"], dec)} / '
                         f'{_fmt_num(r[f"{t}_reported"], dec)})')
        cells.append(f'{_fmt_num(r["delta_m_diff"], 2, signed=True)} '
                     f'({_fmt_num(r["delta_m_reproduced"], 2, signed=True)} / '
                     f'{_fmt_num(r["delta_m_reported"], 2, signed=True)})')
        cells.append(f'{_fmt_num(r["params_diff_m"], 2, signed=True)} '
                     f'({_fmt_num(r["params_reproduced_m"])} / '
                     f'{_fmt_num(r["params_reported_m"])})')
        c.rows.append([str(x) for x in cells])
    return c


def _header_line(result: LeaderboardResult) -> str:
    return (f'{result.n_runs} run record(s), {result.n_bench} bench record(s). Rows: one per '
            f'method configuration (method, variant, checkpoint). ↑/↓: higher/lower is better; '
            f'best per column in bold.')


def render_markdown(result: LeaderboardResult, dataset: str) -> str:
    """Markdown leaderboard for one dataset."""
    part = result.for_dataset(dataset)
    out = [f'# Leaderboard — {DATASET_NAMES.get(dataset, dataset)}', '',
           'Generated by `mtlbench leaderboard` from run records; do not edit by hand. '
           + _header_line(part), '']
    if not part.tables:
        out += ['No run records for this dataset.', '']
    for g in part.tables:
        out += [f'## {g.title}', '', _main_cells(g).render('md'), '']
        det = _detail_cells(g)
        if det is not None:
            out += ['Secondary metrics:', '', det.render('md'), '']
        out += [f'- {n}' for n in g.notes] + ['']
    for rep in part.reported:
        out += [f'## {rep.title}', '', _reported_cells(rep).render('md'), '']
        out += [f'- {n}' for n in rep.notes] + ['']
    for d in part.differences:
        out += [f'## {d.title}', '', _diff_cells(d).render('md'), '']
        out += [f'- {n}' for n in d.notes] + ['']
    if part.notes:
        out += ['## Notes', ''] + [f'- {n}' for n in part.notes] + ['']
    if part.skipped:
        out += ['## Skipped', ''] + [f'- `{p}`: {r}' for p, r in part.skipped] + ['']
    return '\n'.join(out).rstrip() + '\n'


def _tex_table(title: str, cells: _Cells, notes: Sequence[str], label: str) -> List[str]:
    lines = [r'\begin{table}[t]', r'\centering', r'\caption{' + latex_escape(title) + '}',
             r'\label{tab:' + label + '}', r'\resizebox{\linewidth}{!}{%',
             cells.render('tex') + '}']
    lines += ['% ' + str(n).replace('\n', ' ') for n in notes]
    lines += [r'\end{table}', '']
    return lines


def render_latex(result: LeaderboardResult, dataset: str) -> str:
    """Paste-ready LaTeX (booktabs; needs ``\\usepackage{booktabs,graphicx}``)."""
    part = result.for_dataset(dataset)
    out = [f'% Leaderboard — {DATASET_NAMES.get(dataset, dataset)}; generated by mtlbench '
           f'leaderboard, do not edit by hand.', r'% Requires \usepackage{booktabs} and '
           r'\usepackage{graphicx}. Notes are kept as comments under each table.', '']
    slug = re.sub(r'[^a-z0-9]+', '-', dataset.lower())
    for k, g in enumerate(part.tables):
        out += _tex_table(g.title, _main_cells(g), g.notes, f'{slug}-{k}')
        det = _detail_cells(g)
        if det is not None:
            out += _tex_table(f'{g.title} — secondary metrics', det, [], f'{slug}-{k}-detail')
    for k, rep in enumerate(part.reported):
        out += _tex_table(rep.title, _reported_cells(rep), rep.notes, f'{slug}-reported-{k}')
    for k, d in enumerate(part.differences):
        out += _tex_table(d.title, _diff_cells(d), d.notes, f'{slug}-diff-{k}')
    return '\n'.join(out).rstrip() + '\n'


def render_text(result: LeaderboardResult) -> str:
    """Terminal text for every dataset in ``result``."""
    out = []
    for ds in result.datasets:
        part = result.for_dataset(ds)
        out += [f'=== Leaderboard: {DATASET_NAMES.get(ds, ds)} ===', '']
        if not part.tables:
            out += ['(no run records)', '']
        for g in part.tables:
            out += [g.title, _main_cells(g).render('text'), '']
            det = _detail_cells(g)
            if det is not None:
                out += ['secondary metrics:', det.render('text'), '']
            out += [f'  * {n}' for n in g.notes] + ['']
        for rep in part.reported:
            out += [rep.title, _reported_cells(rep).render('text'), '']
            out += [f'  * {n}' for n in rep.notes] + ['']
        for d in part.differences:
            out += [d.title, _diff_cells(d).render('text'), '']
            out += [f'  * {n}' for n in d.notes] + ['']
    if result.notes:
        out += ['Notes:'] + [f'  * {n}' for n in result.notes] + ['']
    if result.skipped:
        out += [f'Skipped {len(result.skipped)} file(s)/record(s):']
        out += [f'  - {p}: {r}' for p, r in result.skipped] + ['']
    if not result.datasets:
        out += ['No run records found.', '']
    return '\n'.join(out).rstrip() + '\n'


def _json_value(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if x is pd.NA:
        return None
    return x


def _frame_records(df: pd.DataFrame) -> List[dict]:
    return [{k: _json_value(v) for k, v in row.items()} for row in df.to_dict('records')]


def to_json(result: LeaderboardResult, dataset: str) -> dict:
    """Machine-readable leaderboard for one dataset (numbers, not display strings)."""
    part = result.for_dataset(dataset)
    return {
        'schema_version': 1, 'dataset': dataset,
        'tables': [{'title': g.title, 'key': g.key, 'comparable_to_papers': g.comparable_to_papers,
                    'tasks': g.tasks, 'rows': _frame_records(g.rows),
                    'detail': _frame_records(g.detail), 'notes': g.notes} for g in part.tables],
        'reported': [{'title': r.title, 'tasks': r.tasks, 'rows': _frame_records(r.rows),
                      'notes': r.notes} for r in part.reported],
        'differences': [{'title': d.title, 'tasks': d.tasks, 'rows': _frame_records(d.rows),
                         'notes': d.notes} for d in part.differences],
        'notes': part.notes,
        'skipped': [{'path': p, 'reason': r} for p, r in part.skipped],
    }


def to_csv_frame(result: LeaderboardResult, dataset: str) -> pd.DataFrame:
    """One long numeric table: reproduced rows (with secondary metrics) and reported rows."""
    part = result.for_dataset(dataset)
    frames = []
    for g in part.tables:
        df = g.rows.copy()
        det = g.detail.drop(columns=['method', 'variant', 'checkpoint', 'n_records'],
                            errors='ignore')
        df = pd.concat([df, det], axis=1)
        df.insert(0, 'section', g.title)
        df.insert(0, 'source', 'reproduced')
        frames.append(df)
    for rep in part.reported:
        df = rep.rows.copy()
        df.insert(0, 'section', rep.title)
        df.insert(0, 'source', 'reported')
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def write_leaderboard(result: LeaderboardResult, out_dir: Path | str = 'results',
                      formats: Sequence[str] = ('md', 'csv', 'tex', 'json')) -> List[Path]:
    """Write ``leaderboard_<dataset>.<fmt>`` for every dataset of ``result``.

    Args:
        result (LeaderboardResult): from :func:`build_leaderboard`.
        out_dir (path): output folder (created).
        formats (list[str]): any of ``md``, ``csv``, ``tex``, ``json``.

    Returns:
        list[Path]: files written.
    """
    formats = [f.strip().lower() for f in formats if f and f.strip()]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bad = set(formats) - {'md', 'csv', 'tex', 'json'}
    if bad:
        raise ValueError(f'unknown leaderboard format(s) {sorted(bad)}')
    written = []
    for ds in result.datasets:
        for fmt in formats:
            path = out_dir / f'leaderboard_{ds}.{fmt}'
            if fmt == 'md':
                text = render_markdown(result, ds)
            elif fmt == 'tex':
                text = render_latex(result, ds)
            elif fmt == 'json':
                text = json.dumps(to_json(result, ds), indent=2, ensure_ascii=False,
                                  allow_nan=False) + '\n'
            else:
                text = to_csv_frame(result, ds).to_csv(index=False)
            tmp = path.with_name(f'.{path.name}.tmp')
            tmp.write_text(text, encoding='utf-8')
            tmp.replace(path)
            written.append(path)
    return written


# ----------------------------------------------------------------------------- plots

def pareto_frame(result: LeaderboardResult, dataset: str) -> Tuple[pd.DataFrame, str]:
    """Points for :func:`mtlbench.plots.pareto_plot`: the dataset's main reproduced table
    (real data preferred) plus reported rows when they are comparable.

    Returns:
        tuple: ``(frame, title)``; frame columns ``label, method, variant, delta_m, params_m,
        source ('reproduced'|'reported'), params_note`` plus per-task means.
    """
    part = result.for_dataset(dataset)
    rows = []
    title = DATASET_NAMES.get(dataset, dataset)
    main = part.tables[0] if part.tables else None
    if main is not None:
        title = main.title
        for i in range(len(main.rows)):
            r = main.rows.loc[i]
            item = {'label': _row_label(r['method'], r['variant'])
                    + (' [best]' if r['checkpoint'] == 'best' else ''),
                    'method': r['method'], 'variant': r['variant'], 'delta_m': r['delta_m'],
                    'params_m': r['params_trainable_m'], 'source': 'reproduced',
                    'params_note': ''}
            item.update({t: r[t] for t in main.tasks})
            rows.append(item)
    use_reported = main is None or main.comparable_to_papers
    if use_reported:
        for rep in part.reported:
            seen = set()
            df = rep.rows
            order = sorted(range(len(df)), key=lambda i: (
                df.loc[i, 'origin'] != 'own', _is_nan(df.loc[i, 'params_m']),
                'encoder only' in str(df.loc[i, 'params_note']).lower()))
            for i in order:
                r = df.loc[i]
                if 'ablation' in str(r['table']).lower() or 'ablation' in str(r['variant']):
                    continue
                k = (r['method'], _norm_variant(r['variant']))
                if k in seen:
                    continue
                seen.add(k)
                item = {'label': _row_label(r['method'], r['variant']), 'method': r['method'],
                        'variant': r['variant'], 'delta_m': r['delta_m'],
                        'params_m': r['params_m'], 'source': 'reported',
                        'params_note': r['params_note']}
                item.update({t: r[t] for t in rep.tasks})
                rows.append(item)
        if part.reported:
            title += ' (+ reported)' if main is not None else ' — REPORTED in papers only'
    return pd.DataFrame(rows), title


# ----------------------------------------------------------------------------- entry point

def run_leaderboard(runs_dir: Path | str = 'results/runs', bench_dir: Path | str = 'results/bench',
                    dataset: Optional[str] = None,
                    formats: Sequence[str] = ('md', 'csv', 'tex', 'json'),
                    out_dir: Path | str = 'results', with_reported: bool = False,
                    plots: bool = False, reference_dir: Path | str = DEFAULT_REFERENCE_DIR,
                    known_methods: Optional[Iterable[str]] = None,
                    echo: Optional[Callable[[str], None]] = None) -> str:
    """Load records, build, write and describe the leaderboards (what ``mtlbench
    leaderboard`` does).

    Args:
        runs_dir (path): run records. bench_dir (path): bench records.
        dataset (str, optional): one dataset; defaults to every dataset with records.
        formats (list[str]): files to write (``md``, ``csv``, ``tex``, ``json``); empty: none.
        out_dir (path): where ``leaderboard_<dataset>.*`` and plots go.
        with_reported (bool): add papers' rows and difference tables.
        plots (bool): also write ``pareto_<dataset>.png`` and ``tasks_<dataset>.png``.
        reference_dir (path): reference CSVs.
        known_methods (set[str], optional): accepted method keys; defaults to the ``METHODS``
            registry when it can be imported and is non-empty, else every method.
        echo (callable, optional): called with the text (e.g. ``print``).

    Returns:
        str: the text (tables, notes, skipped files, files written).
    """
    runs, skipped = load_records(runs_dir, kind='run')
    bench, bench_skipped = load_records(bench_dir, kind='bench')
    if known_methods is None:
        known_methods = _registered_methods()
    result = build_leaderboard(runs, dataset=dataset, with_reported=with_reported,
                               reference_dir=reference_dir, bench_records=bench,
                               known_methods=known_methods,
                               skipped=list(skipped) + list(bench_skipped))
    text = render_text(result)
    written = write_leaderboard(result, out_dir, formats) if formats else []
    if plots:
        from mtlbench import plots as _plots
        for ds in result.datasets:
            frame, title = pareto_frame(result, ds)
            if frame.empty:
                continue
            written.append(_plots.pareto_plot(frame, Path(out_dir) / f'pareto_{ds}.png', title))
            tasks = [t for t in DATASET_TASKS.get(ds, {}) if t in frame.columns]
            written.append(_plots.task_bars(frame, Path(out_dir) / f'tasks_{ds}.png',
                                            tasks=tasks, title=title))
    if written:
        text += 'Wrote:\n' + '\n'.join(f'  {p}' for p in written) + '\n'
    if echo is not None:
        echo(text)
    return text
