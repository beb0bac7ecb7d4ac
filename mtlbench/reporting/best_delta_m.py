"""The reference's "best Δm checkpoint", kept as a flagged extra of a run record.

TADFormer's and MTLoRA's ``main.py`` evaluate on the split they report and keep the best Δm seen
over training: the checkpoint is chosen on the numbers it is then scored by, which flatters it.
mtlbench reports the last checkpoint (``report_checkpoint = 'last'``). With
``record_best_delta_m = True`` in the config (off by default) the run record also carries the
best-Δm evaluation under :data:`FLAGGED_KEY`, with its epoch and a flag saying how it was chosen,
so a paper's number can be compared with the same selection. The leaderboard never reads it:
``metrics``, ``primary`` and ``delta_m`` stay those of the last checkpoint.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional

__all__ = ['FLAGGED_KEY', 'FLAG', 'flagged_best_delta_m']

#: record key of the extra (its name says it is not a leaderboard number)
FLAGGED_KEY = 'flagged_best_delta_m'
FLAG = ('selected on the evaluation split (best delta_m over all evaluations during training, as the '
        'TADFormer/MTLoRA reference code does): optimistic, not a leaderboard number')


def flagged_best_delta_m(record: Mapping[str, Any], history: List[Mapping[str, Any]],
                         all_records: Iterable[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The extra for ``record``: its evaluations' Δm against the same baseline, the best kept.

    Args:
        record: the run record being written (its comparability fields pick the baseline).
        history: ``[{'epoch': e, 'iter': i, 'metrics': {task: {name: value}}}, ...]``, one per
            evaluation during training.
        all_records: records to find the single-task baseline in.

    Returns:
        ``{'flag', 'epoch', 'iter', 'delta_m', 'metrics', 'evaluations'}``, or ``{'flag', 'delta_m':
        None, 'reason'}`` when no Δm can be computed, or ``None`` without evaluations.
    """
    from mtlbench.reporting.comparability import compute_delta_m_for_record
    from mtlbench.reporting.records import primary_from_metrics

    if not history:
        return None
    pool = list(all_records)
    best, reason = None, None
    for entry in history:
        trial = dict(record, metrics=entry['metrics'])
        trial['primary'] = primary_from_metrics(entry['metrics'], list(record['tasks']))
        value, reason = compute_delta_m_for_record(trial, pool)
        if value is not None and (best is None or value > best[0]):
            best = (value, entry)
    if best is None:
        return {'flag': FLAG, 'delta_m': None, 'reason': reason, 'evaluations': len(history)}
    value, entry = best
    return {'flag': FLAG, 'epoch': entry.get('epoch'), 'iter': entry.get('iter'), 'delta_m': value,
            'metrics': entry['metrics'], 'evaluations': len(history)}
