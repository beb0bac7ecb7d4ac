"""Splitting run records into leaderboard tables of comparable records, and naming the tables.

Records that are not comparable are never in one table: the comparability key
(:func:`mtlbench.reporting.comparability.comparability_key`) and, for multi-task rows, the
task set split tables. ``single_task`` baseline records join every table of their key whose
tasks they score. Tables closest to the papers' setting come first.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Sequence

from mtlbench.reporting.comparability import comparability_key
from mtlbench.reporting.schema import BASELINE_METHOD
from mtlbench.reporting.tables import DATASET_NAMES, PAPER_PROTOCOL, PAPER_SIZE, _size_str
from mtlbench.tasks import DATASET_TASKS


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
