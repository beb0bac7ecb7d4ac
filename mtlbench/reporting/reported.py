"""The papers' reported rows (``results/reference/*.csv``) and reproduced − reported tables.

Reported rows sit in their own table per dataset; their Δm is recomputed from their own
per-task numbers against the single-task row of the same paper, and a printed Δm more than
0.02 away is flagged. A difference table gives reproduced − reported for the method
configurations that have both.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from mtlbench.reporting.aggregate import _delta_m
from mtlbench.reporting.schema import BASELINE_METHOD
from mtlbench.reporting.tables import (DATASET_NAMES, DELTA_M_TOLERANCE, DiffTable, GroupTable,
                                       ReportedTable, _is_nan, _row_label)
from mtlbench.tasks import DATASET_TASKS, TASKS

__all__ = ['load_reported']


def _tolerance() -> float:
    try:
        from mtlbench.evaluation.delta_m import AGREEMENT_TOL
    except ImportError:
        return DELTA_M_TOLERANCE
    return float(AGREEMENT_TOL)


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
