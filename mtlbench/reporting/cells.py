"""Display strings of leaderboard tables: number formats, arrows, best-in-column bold, LaTeX escapes.

Each ``_*_cells`` function turns one numeric table into a :class:`_Cells` grid that renders
as Markdown, LaTeX or terminal text (:mod:`mtlbench.reporting.render`).
"""
from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence

from tabulate import tabulate

from mtlbench.reporting.tables import DiffTable, GroupTable, ReportedTable, _is_nan, _present
from mtlbench.tasks import TASKS

__all__ = ['latex_escape']

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
        heads += ['train img/s', 'infer img/s', 'peak mem (MB)', 'full run (h)', 'bench device']
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
                      _fmt_num(r['peak_mem_mb'], 0), _fmt_num(r.get('full_run_h'), 1),
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
                                 (2, 'peak_mem_mb', False, 0), (3, 'full_run_h', False, 1)):
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
    verdicts = 'verdict' in d.rows.columns  # mtlbench reproduce's per-row verdict
    if verdicts:
        heads.append('verdict')
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
        if verdicts:
            cells.append(r['verdict'])
        c.rows.append([str(x) for x in cells])
    return c
