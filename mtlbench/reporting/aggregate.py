"""One leaderboard table of reproduced rows: seeds averaged per method configuration, Δm, bench.

One row per method configuration ``(method, variant, checkpoint)``; per-task primary metrics
are the mean ± sample standard deviation (ddof 1) over the seeds (records), with ``n``. Δm is
recomputed from the per-task means against the table's ``single_task`` records; the
``delta_m`` stored in a record is never read.

Not in the brief, chosen here:
- A ``single_task`` row's parameter counts are the sum over its per-task models (the papers
  print 112.62M for four single-task models), averaged over seeds per model.
- The newest bench record of the same method, variant and dataset (at the table's input size
  when there is one) fills the speed and memory columns.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from mtlbench.reporting.comparability import _delta_m_function, collect_baseline
from mtlbench.reporting.grouping import _group_title
from mtlbench.reporting.schema import BASELINE_METHOD
from mtlbench.reporting.tables import (PAPER_BACKBONE, PAPER_PROTOCOL, PAPER_SIZE, GroupTable,
                                       _is_nan, _present, _row_label, _size_str)
from mtlbench.tasks import DATASET_TASKS, TASKS


def _delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float],
             tasks: Sequence[str]) -> Tuple[Optional[float], Optional[str]]:
    fn, reason = _delta_m_function()
    if fn is None:
        return None, reason
    hib = {t: TASKS[t].higher_is_better for t in tasks}
    try:
        return float(fn(dict(metrics), dict(baseline), list(tasks), higher_is_better=hib)), None
    except Exception as e:  # a bad baseline value (e.g. zero) must not crash a leaderboard
        return None, f'Δm computation failed: {type(e).__name__}: {e}'


def _mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return float(arr.mean()), std, int(arr.size)


def _bench_backbone(bench_record: Mapping) -> Optional[str]:
    """Backbone label of a bench record (``backbone``, or older records' ``arch``: ``'tiny'`` ->
    ``'swin-t'``), as run records name it."""
    from mtlbench.backbones.swin import backbone_label
    if bench_record.get('backbone'):
        return bench_record['backbone']
    arch = bench_record.get('arch')
    if arch is None:
        return None
    try:
        return backbone_label(arch)
    except ValueError:
        return f'swin-{arch}'


def _bench_for(bench: Sequence[Mapping], method: str, variant: str, dataset: str,
               img_size: Sequence[int], backbone: Optional[str] = None) -> Optional[Mapping]:
    cands = [b for b in bench if b.get('method') == method and b.get('variant') == variant
             and b.get('dataset') == dataset
             and (backbone is None or _bench_backbone(b) in (None, backbone))]
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
        # Projected wall time of the config's whole schedule on the bench device (run_cost.py).
        row['full_run_h'] = (b.get('full_run') or {}).get('total_h') if b else None
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
