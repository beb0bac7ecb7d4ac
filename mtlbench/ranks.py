"""Per-adapter rank histories (a run-record field): text table and plot.

Methods that change adapter ranks during training (FAAR's PDRS) record
``rank_history = [{'epoch' | 'iter': n, 'layer': site, 'task': task or 'shared', 'rank': r}, ...]``
in their run records; ``mtlbench ranks RECORD`` prints and plots it with these functions, which
read only that data.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

__all__ = ['final_ranks_from_history', 'format_rank_table', 'plot_rank_history']


def final_ranks_from_history(history: List[Dict[str, Any]]) -> Dict[str, Dict[str, int]]:
    """``{layer: {task: last rank}}`` from a rank history (entries in time order)."""
    table: Dict[str, Dict[str, int]] = {}
    for e in history:
        table.setdefault(e['layer'], {})[e['task']] = int(e['rank'])
    return table


def _columns(table: Dict[str, Dict[str, int]]) -> List[str]:
    cols: List[str] = []
    for row in table.values():
        for c in row:
            if c not in cols:
                cols.append(c)
    return (['shared'] if 'shared' in cols else []) + [c for c in cols if c != 'shared']


def format_rank_table(table: Dict[str, Dict[str, int]]) -> str:
    """A text table layer x task -> rank from ``{layer: {task: rank}}``."""
    if not table:
        return '(no FAAR adapters)'
    cols = _columns(table)
    width = max(len('layer'), *(len(k) for k in table))
    cw = [max(len(c), 4) for c in cols]
    lines = ['  '.join(['layer'.ljust(width)] + [c.rjust(w) for c, w in zip(cols, cw)])]
    lines.append('-' * len(lines[0]))
    for layer, row in table.items():
        lines.append('  '.join([layer.ljust(width)] + [(str(row[c]) if c in row else '-').rjust(w)
                                                       for c, w in zip(cols, cw)]))
    values = [v for row in table.values() for v in row.values()]
    lines.append(f'{len(values)} adapters, average rank {sum(values) / len(values):.2f}')
    return '\n'.join(lines)


def plot_rank_history(history: List[Dict[str, Any]], path: str) -> str:
    """Plot the ranks to a PNG: final ranks as a layer x task heat map, and the mean rank per
    column (shared / each task) over the prune steps.

    Args:
        history: a run record's ``rank_history``.
        path: output ``.png`` path.

    Returns:
        ``path``.
    """
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    if not history:
        raise ValueError('empty rank history: nothing to plot')
    step_key = 'epoch' if 'epoch' in history[-1] else 'iter'
    traces: Dict[Tuple[str, str], List[Tuple[int, int]]] = {}
    for e in history:
        step = e.get('epoch', e.get('iter', 0))
        traces.setdefault((e['layer'], e['task']), []).append((int(step), int(e['rank'])))
    layers = list(dict.fromkeys(k[0] for k in traces))
    table = {layer: {} for layer in layers}
    for (layer, task), tr in traces.items():
        table[layer][task] = tr[-1][1]
    cols = _columns(table)
    grid = [[float(table[l][c]) if c in table[l] else float('nan') for c in cols] for l in layers]
    steps = sorted({s for tr in traces.values() for s, _ in tr})
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, max(4.0, 0.22 * len(layers) + 1.5)),
                                   gridspec_kw=dict(width_ratios=[1.2, 1]))
    im = ax0.imshow(grid, aspect='auto', cmap='viridis')
    ax0.set_xticks(range(len(cols)), cols, rotation=30, ha='right')
    ax0.set_yticks(range(len(layers)), layers, fontsize=6)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:
                ax0.text(j, i, f'{int(v)}', ha='center', va='center', fontsize=6, color='w')
    fig.colorbar(im, ax=ax0, label='rank')
    ax0.set_title('final rank per adapter')
    for c in cols:
        keys = [k for k in traces if k[1] == c]

        def rank_at(tr: List[Tuple[int, int]], s: int) -> int:
            r = tr[0][1]
            for st, rk in tr:
                if st <= s:
                    r = rk
            return r
        ax1.step(steps, [sum(rank_at(traces[k], s) for k in keys) / len(keys) for s in steps], where='post', label=c)
    ax1.set_xlabel(step_key)
    ax1.set_ylabel('mean rank')
    ax1.set_title('PDRS rank over training')
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
