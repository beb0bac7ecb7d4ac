"""Leaderboard figures: Δm against trainable parameters (Pareto plot) and per-task bars.

Both functions take a plain DataFrame (:func:`pareto_frame` builds one from a leaderboard) and
write a PNG with matplotlib's Agg backend, so they run headless.

Not in the brief, chosen here:
- Reported points whose parameter count covers the encoder only (DiTASK's table) are drawn
  with a different marker and left out of the Pareto front: their x is not the same quantity.
- Separate fronts for reproduced (solid) and reported (dashed) points.
- Task bars do not start at 0 (differences of a few tenths would be invisible); the axis label
  says so.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from mtlbench.reporting.reported import _norm_variant  # noqa: E402
from mtlbench.reporting.tables import DATASET_NAMES, LeaderboardResult, _is_nan, _row_label  # noqa: E402
from mtlbench.tasks import TASKS  # noqa: E402

__all__ = ['pareto_frame', 'pareto_plot', 'task_bars', 'pareto_front']


def pareto_front(params: Sequence[float], delta_m: Sequence[float]) -> List[int]:
    """Indices of the non-dominated points (fewer params and higher Δm are better),
    sorted by params.

    A point is dominated when another has params <= and Δm >= with one strict.
    """
    pts = [(float(p), float(d), i) for i, (p, d) in enumerate(zip(params, delta_m))
           if not (math.isnan(float(p)) or math.isnan(float(d)))]
    pts.sort(key=lambda x: (x[0], -x[1]))
    front, best = [], -math.inf
    for p, d, i in pts:
        if d > best:
            front.append(i)
            best = d
    return front


def _colors(methods: Sequence[str]) -> Dict[str, tuple]:
    cmap = plt.get_cmap('tab10')
    uniq = sorted(set(methods))
    return {m: cmap(k % 10) for k, m in enumerate(uniq)}


def _place_labels(ax, fig, xs, ys, labels, colors, weights=None) -> None:
    """Annotate points, trying a few offsets per label to avoid overlapping earlier labels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(7, 5, 'left', 'bottom'), (7, -5, 'left', 'top'), (-7, 5, 'right', 'bottom'),
               (-7, -5, 'right', 'top'), (7, 16, 'left', 'bottom'), (7, -16, 'left', 'top'),
               (-7, 16, 'right', 'bottom'), (-7, -16, 'right', 'top'), (0, 26, 'center', 'bottom'),
               (0, -26, 'center', 'top')]
    axbox = ax.get_window_extent(renderer)
    point_boxes = []
    rad = 0.5 * math.sqrt(60) * fig.dpi / 72 + 2  # marker radius in pixels (s=60) + margin
    for x, y in zip(xs, ys):
        px, py = ax.transData.transform((x, y))
        point_boxes.append((px - rad, py - rad, px + rad, py + rad))
    weights = weights or ['normal'] * len(xs)
    order = sorted(range(len(xs)), key=lambda i: (weights[i] != 'bold', -ys[i], xs[i]))
    for i in order:
        chosen = None
        for dx, dy, ha, va in offsets:
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy),
                            textcoords='offset points', ha=ha, va=va, fontsize=8,
                            color=colors[i], fontweight=weights[i])
            bb = t.get_window_extent(renderer).expanded(1.03, 1.1)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            inside = (box[0] >= axbox.x0 and box[2] <= axbox.x1 and box[1] >= axbox.y0
                      and box[3] <= axbox.y1)
            clash = not inside or any(_overlap(box, b) for b in placed) or \
                any(_overlap(box, b) for k, b in enumerate(point_boxes) if k != i)
            if not clash:
                chosen = t
                placed.append(box)
                break
            t.remove()
        if chosen is None:  # keep the first position, with a leader line
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(7, 5), textcoords='offset points',
                            fontsize=8, color=colors[i], fontweight=weights[i],
                            arrowprops=dict(arrowstyle='-', lw=0.5, color=colors[i]))
            bb = t.get_window_extent(renderer)
            placed.append((bb.x0, bb.y0, bb.x1, bb.y1))


def _overlap(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def pareto_plot(df: pd.DataFrame, path: Path | str, title: str = '') -> Path:
    """Δm (%) against trainable parameters (log x), one colour per method.

    Args:
        df (DataFrame): columns ``label``, ``method``, ``delta_m``, ``params_m``, ``source``
            (``'reproduced'`` filled markers, ``'reported'`` hollow) and optionally
            ``params_note`` (``'encoder only'`` drawn as squares, not on the front). Rows
            without Δm or params are left out and counted in the footnote.
        path (path): PNG to write (folder created).
        title (str): figure title.

    Returns:
        Path: the PNG written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = df.copy()
    if 'source' not in df:
        df['source'] = 'reproduced'
    if 'params_note' not in df:
        df['params_note'] = ''
    df['params_note'] = df['params_note'].fillna('').astype(str)
    df['delta_m'] = pd.to_numeric(df['delta_m'], errors='coerce')
    df['params_m'] = pd.to_numeric(df['params_m'], errors='coerce')
    usable = df[df['delta_m'].notna() & df['params_m'].notna() & (df['params_m'] > 0)]
    usable = usable.reset_index(drop=True)
    dropped = len(df) - len(usable)

    fig, ax = plt.subplots(figsize=(9, 6), dpi=150)
    colors = _colors(list(usable['method'])) if len(usable) else {}
    enc_only = usable['params_note'].str.contains('encoder only', case=False)
    for i in range(len(usable)):
        r = usable.loc[i]
        c = colors[r['method']]
        marker = 's' if enc_only[i] else 'o'
        if r['source'] == 'reported':
            ax.scatter(r['params_m'], r['delta_m'], s=60, marker=marker, facecolors='none',
                       edgecolors=[c], linewidths=1.6, zorder=3)
        else:
            ax.scatter(r['params_m'], r['delta_m'], s=60, marker=marker, color=c,
                       edgecolors='black', linewidths=0.6, zorder=4)

    for source, style in (('reproduced', '-'), ('reported', '--')):
        sel = usable[(usable['source'] == source) & ~enc_only]
        if len(sel) < 1:
            continue
        idx = pareto_front(list(sel['params_m']), list(sel['delta_m']))
        fx = [sel.iloc[k]['params_m'] for k in idx]
        fy = [sel.iloc[k]['delta_m'] for k in idx]
        if len(fx) >= 1:
            ax.step(fx, fy, where='post', linestyle=style, color='0.35', lw=1.2, zorder=2)

    ax.set_xscale('log')
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(0.0, color='0.6', lw=0.8, zorder=1)
    ax.set_xlabel('trainable parameters (M, log scale) — fewer is better')
    ax.set_ylabel('Δm vs single-task baseline (%) — higher is better')
    ax.grid(True, which='both', alpha=0.25)
    if title:
        ax.set_title('\n'.join(textwrap.wrap(title, 90)), fontsize=9)
    if len(usable):
        xs, ys = list(usable['params_m']), list(usable['delta_m'])
        lo, hi = min(xs), max(xs)
        ax.set_xlim(lo / 1.6, hi * 2.2)
        ymin, ymax = min(ys), max(ys)
        pad = max(0.6, 0.12 * (ymax - ymin))
        ax.set_ylim(ymin - pad, ymax + pad)
    else:
        ax.text(0.5, 0.5, 'no rows with both Δm and parameter counts', ha='center',
                va='center', transform=ax.transAxes)

    handles = [Line2D([], [], marker='o', ls='', color=colors[m], label=m) for m in colors]
    kinds = set(usable['source'])
    if 'reproduced' in kinds:
        handles.append(Line2D([], [], marker='o', ls='-', color='0.35', markerfacecolor='0.35',
                              markeredgecolor='black',
                              label='reproduced here (bold label; front: solid)'))
    if 'reported' in kinds:
        handles.append(Line2D([], [], marker='o', ls='--', color='0.35', markerfacecolor='none',
                              label='reported in papers (front: dashed)'))
    if enc_only.any():
        handles.append(Line2D([], [], marker='s', ls='', color='0.35', markerfacecolor='none',
                              label='params: encoder only (not on front)'))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc='center left', bbox_to_anchor=(1.01, 0.5),
                  frameon=False)
    if dropped:
        fig.text(0.01, 0.01, f'{dropped} row(s) without Δm or parameter count not shown',
                 fontsize=7, color='0.4')
    fig.tight_layout()
    if len(usable):  # after the layout, so that label collision checks use final positions
        _place_labels(ax, fig, list(usable['params_m']), list(usable['delta_m']),
                      [str(x) for x in usable['label']], [colors[m] for m in usable['method']],
                      ['normal' if s == 'reported' else 'bold' for s in usable['source']])
    fig.savefig(path)
    plt.close(fig)
    return path


def task_bars(df: pd.DataFrame, path: Path | str, tasks: Optional[Sequence[str]] = None,
              title: str = '') -> Path:
    """One panel per task: a horizontal bar per row with its primary metric.

    Args:
        df (DataFrame): columns ``label``, one column per task, optional ``source``
            (reported bars are hatched).
        path (path): PNG to write.
        tasks (list[str], optional): task columns; defaults to the columns named like tasks.
        title (str): figure title.

    Returns:
        Path: the PNG written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = [t for t in (tasks or [c for c in df.columns if c in TASKS]) if t in df.columns]
    df = df.reset_index(drop=True)
    n = len(df)
    fig_h = max(2.8, 0.28 * n + 1.4)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(3.6 * max(1, len(tasks)) + 1.6,
                                                              fig_h), dpi=150, sharey=True)
    axes = np.atleast_1d(axes)
    source = df['source'] if 'source' in df else pd.Series(['reproduced'] * n)
    labels = [f'{lab} (paper)' if s == 'reported' else str(lab)
              for lab, s in zip(df['label'], source)]
    y = np.arange(n)
    for ax, t in zip(axes, tasks):
        spec = TASKS[t]
        vals = pd.to_numeric(df[t], errors='coerce').to_numpy(dtype=float)
        ok = ~np.isnan(vals)
        if ok.any():
            lo, hi = np.nanmin(vals), np.nanmax(vals)
            span = max(hi - lo, 1e-3 if t == 'depth' else 0.5)
            left = lo - 0.35 * span
        else:
            left, span = 0.0, 1.0
        best = (np.nanmax(vals) if spec.higher_is_better else np.nanmin(vals)) if ok.any() \
            else None
        for k in range(n):
            if not ok[k]:
                continue
            rep = source.iloc[k] == 'reported'
            color = 'tab:green' if best is not None and vals[k] == best else \
                ('tab:gray' if rep else 'tab:blue')
            ax.barh(y[k], vals[k] - left, left=left, color=color, alpha=0.55 if rep else 0.9,
                    hatch='//' if rep else None, edgecolor='black', linewidth=0.4)
            ax.text(vals[k], y[k], f' {vals[k]:.{4 if t == "depth" else 2}f}', va='center',
                    fontsize=7)
        if ok.any():
            ax.set_xlim(left, np.nanmax(vals) + 0.45 * span)
        arrow = '↑' if spec.higher_is_better else '↓'
        ax.set_title(f'{t} {spec.primary_metric} {arrow}', fontsize=9)
        ax.set_xlabel('axis does not start at 0', fontsize=7, color='0.4')
        ax.tick_params(axis='x', labelsize=7)
        ax.grid(True, axis='x', alpha=0.25)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    handles = [Patch(facecolor='tab:blue', edgecolor='black', label='reproduced here')]
    if (source == 'reported').any():
        handles.append(Patch(facecolor='tab:gray', alpha=0.55, hatch='//', edgecolor='black',
                             label='reported in a paper'))
    handles.append(Patch(facecolor='tab:green', edgecolor='black', label='best in the panel'))
    fig.legend(handles=handles, loc='lower center', ncol=len(handles), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle('\n'.join(textwrap.wrap(title, 110)), fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_frame(result: LeaderboardResult, dataset: str) -> Tuple[pd.DataFrame, str]:
    """Points for :func:`pareto_plot`: the dataset's main reproduced table
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
