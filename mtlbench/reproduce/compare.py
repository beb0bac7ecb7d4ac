"""mtlbench's rows against a paper's table: per-cell differences and a verdict per row.

The rows come from the run records of the plan's jobs, grouped and averaged over seeds by the
leaderboard (:func:`mtlbench.reporting.leaderboard.build_leaderboard`: same comparability
rules, Δm recomputed against the single-task records of the same group); the differences are
the leaderboard's reproduced − reported table (:class:`~mtlbench.reporting.tables.DiffTable`)
with a ``verdict`` column, rendered by :mod:`mtlbench.reporting.render`'s cell code.

Verdicts:
- ``synthetic``: the records come from synthetic data or the toy backbone; such numbers say the
  pipeline runs, not whether the paper reproduces, so they never pass or fail;
- ``not comparable (...)``: real data, but not the papers' setting (random init, another input
  size, eval protocol, backbone or task set);
- ``no record`` / ``not runnable: ...``: nothing to compare;
- ``pass``: every task's mean within its tolerance of the paper's number;
- ``FAIL: task diff, ...``: the tasks outside their tolerance.

Default tolerances (:data:`DEFAULT_TOLERANCES`): ±0.5 for the mIoU columns and ±0.2° for
normals (the issue's), and ±0.01 m for NYUDv2 depth RMSE, chosen here: the papers print it with
two decimals (0.60 m), so one printed unit is the smallest difference a table can show, and
0.01 m of ~0.6 m (1.7%) is of the same order as 0.5 of ~40-70 mIoU (0.7-1.2%).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence

import pandas as pd

from mtlbench.errors import OptionError, UnknownNameError
from mtlbench.reporting.tables import DiffTable, GroupTable, ReportedTable, _is_nan
from mtlbench.reproduce.plan import TablePlan
from mtlbench.tasks import TASKS

__all__ = ['DEFAULT_TOLERANCES', 'parse_tolerances', 'verdict', 'TableComparison', 'compare_table']

#: Allowed |ours − paper| per task, in the task's primary-metric unit.
DEFAULT_TOLERANCES: Dict[str, float] = {'semseg': 0.5, 'human_parts': 0.5, 'sal': 0.5,
                                        'normals': 0.2, 'depth': 0.01}

TOY_BACKBONE = 'swin-toy'


def parse_tolerances(text: Optional[str]) -> Dict[str, float]:
    """``'semseg=0.5,normals=0.2'`` -> the defaults with those tasks replaced.

    Raises:
        UnknownNameError: a name that is not a task. OptionError: a value that is not a number >= 0.
    """
    out = dict(DEFAULT_TOLERANCES)
    for item in (text or '').split(','):
        item = item.strip()
        if not item:
            continue
        if '=' not in item:
            raise OptionError(f'--tol expects task=value[,task=value...], got {item!r}')
        task, value = (s.strip() for s in item.split('=', 1))
        if task not in TASKS:
            raise UnknownNameError(f'--tol: unknown task {task!r}; tasks: {", ".join(TASKS)}')
        try:
            tol = float(value)
        except ValueError:
            raise OptionError(f'--tol {task}: {value!r} is not a number') from None
        if not tol >= 0:
            raise OptionError(f'--tol {task}: tolerance must be >= 0, got {value}')
        out[task] = tol
    return out


def _not_comparable_reason(group: GroupTable) -> str:
    key = group.key
    why = []
    if key['pretrained'] == 'random init':
        why.append('random init')
    if tuple(key['img_size']) != (448, 448):
        why.append(f'input {"x".join(map(str, key["img_size"]))}')
    if key['eval_protocol'] != 'resized-448':
        why.append(f'eval {key["eval_protocol"]}')
    if key['backbone'] != 'swin-t':
        why.append(f'backbone {key["backbone"]}')
    return ', '.join(why) or 'task subset'


def verdict(diffs: Mapping[str, float], tolerances: Mapping[str, float], *, synthetic: bool = False,
            comparable: bool = True, why_not: str = '') -> str:
    """The verdict of one row from its per-task differences (ours − paper; NaN: missing)."""
    if synthetic:
        return 'synthetic'
    if not comparable:
        return f'not comparable ({why_not})'
    missing = [t for t, d in diffs.items() if _is_nan(d)]
    if missing:
        return 'incomplete: no ' + ', '.join(missing)
    out = [f'{t} {d:+.4g} (±{tolerances[t]:g})' for t, d in diffs.items()
           if abs(d) > tolerances[t] + 1e-9]
    return 'pass' if not out else 'FAIL: ' + ', '.join(out)


@dataclass
class TableComparison:
    """What ``mtlbench reproduce`` prints once records exist."""
    reported: ReportedTable
    groups: List[GroupTable] = field(default_factory=list)
    differences: List[DiffTable] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _reported_of_table(plan: TablePlan) -> ReportedTable:
    from mtlbench.reporting.reported import _build_reported
    t = plan.table
    rep = _build_reported(t.all_rows, t.dataset)
    keep = (rep.rows['paper'] == t.paper) & (rep.rows['table'] == t.table)
    prefix = f'{t.paper} / {t.table} / '
    notes = rep.notes[:1] + [n for n in rep.notes[1:] if n.startswith(prefix)]
    return replace(rep, title=f'{t.id}: {t.paper} ({t.citation}), {t.table} — as printed',
                   rows=rep.rows[keep].reset_index(drop=True), notes=notes)


def _diff_table(plan: TablePlan, group: GroupTable, rep: ReportedTable,
                tolerances: Mapping[str, float]) -> DiffTable:
    """Reproduced − reported for every row of the table (in the paper's order), with verdicts."""
    from mtlbench.reporting.reported import _build_diff
    # the group's rows carry the records' labels; the paper's rows their printed variants
    printed = {(p.method, p.label): p.variant for p in plan.rows if p.runnable}
    rows = group.rows.copy()
    rows['variant'] = [printed.get((m, v), f'(record) {v}') for m, v in zip(rows['method'], rows['variant'])]
    diff = _build_diff(replace(group, rows=rows), rep)
    found = diff.rows if diff is not None else pd.DataFrame()
    tasks = [t for t in group.tasks if t in rep.tasks]
    synthetic = bool(group.key['synthetic']) or group.key['backbone'] == TOY_BACKBONE
    out = []
    for p in plan.rows:
        if p.index is None:
            continue  # an added baseline has no printed row
        have = (found[(found['method'] == p.method) & (found['variant'] == p.variant)]
                if len(found) else found)
        if len(have):
            r = dict(have.iloc[0])
            r['verdict'] = verdict({t: r[f'{t}_diff'] for t in tasks}, tolerances, synthetic=synthetic,
                                   comparable=group.comparable_to_papers,
                                   why_not=_not_comparable_reason(group))
        else:
            paper = rep.rows.iloc[p.index]
            r = {'method': p.method, 'variant': p.variant, 'checkpoint': '', 'n_min': 0, 'n_max': 0,
                 'reported_source': f'{paper["paper"]} ({paper["citation"]}), {paper["table"]}'}
            for t in tasks:
                r[f'{t}_reproduced'], r[f'{t}_reported'], r[f'{t}_diff'] = math.nan, paper[t], math.nan
            r.update(delta_m_reproduced=math.nan, delta_m_reported=paper['delta_m'], delta_m_diff=math.nan,
                     params_reproduced_m=math.nan, params_reported_m=paper['params_m'],
                     params_diff_m=math.nan)
            r['verdict'] = 'no record' if p.runnable else f'not runnable: {p.reason}'
        out.append(r)
    notes = list(diff.notes) if diff is not None else []
    notes.append('Verdict: every task within its tolerance (' + ', '.join(
        f'{t} ±{tolerances[t]:g}' for t in tasks) + '); "synthetic" rows (synthetic data or the toy '
        'backbone) never pass or fail.')
    return DiffTable(title=f'{group.title} — ours − paper ({plan.table.id})', dataset=group.dataset,
                     tasks=tasks, rows=pd.DataFrame(out), notes=notes)


def compare_table(plan: TablePlan, records: Sequence[Mapping], tolerances: Mapping[str, float],
                  ) -> TableComparison:
    """Compare the records that answer the plan's jobs with the paper's table.

    Args:
        plan: from :func:`~mtlbench.reproduce.plan.plan_table`.
        records: run records (e.g. every record of the runs folder); only those answering one
            of the plan's jobs (:func:`mtlbench.sweep.find_existing`) are used.
        tolerances: per task, e.g. :func:`parse_tolerances`.

    Returns:
        TableComparison: the paper's table, mtlbench's table per comparability group, and one
        difference table with verdicts per group.
    """
    from mtlbench.reporting.leaderboard import build_leaderboard
    from mtlbench.sweep import find_existing

    rep = _reported_of_table(plan)
    mine, seen = [], set()
    for job in plan.jobs:
        for r in find_existing(job, records):
            if id(r) not in seen:
                seen.add(id(r))
                mine.append(r)
    out = TableComparison(reported=rep)
    if not mine:
        out.notes.append('no run records of this table yet: nothing to compare.')
        return out
    result = build_leaderboard(mine, dataset=plan.table.dataset)
    out.notes += [f'{p}: {r}' for p, r in result.skipped]
    for group in result.tables:
        if not any(m != 'single_task' for m in group.rows['method']) and len(result.tables) > 1:
            continue  # baseline-only group of another setting
        out.groups.append(group)
        out.differences.append(_diff_table(plan, group, rep, tolerances))
    return out


def render_comparison(comp: TableComparison) -> str:
    """Terminal text: the paper's table, mtlbench's, then ours − paper with verdicts."""
    from mtlbench.reporting.cells import _diff_cells, _main_cells, _reported_cells

    out = [comp.reported.title, _reported_cells(comp.reported).render('text'), '']
    out += [f'  * {n}' for n in comp.reported.notes] + ['']
    for g, d in zip(comp.groups, comp.differences):
        out += ['mtlbench: ' + g.title, _main_cells(g).render('text'), '']
        out += [f'  * {n}' for n in g.notes] + ['']
        out += [d.title, _diff_cells(d).render('text'), '']
        out += [f'  * {n}' for n in d.notes] + ['']
    out += [f'  * {n}' for n in comp.notes]
    return '\n'.join(out).rstrip() + '\n'
