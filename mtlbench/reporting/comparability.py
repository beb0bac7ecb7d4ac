"""Which run records may be compared, which repeat one another, and their single-task baselines.

Every Δm is computed against ``single_task`` run records that share the record's comparability
key (:func:`comparability_key`); both ``mtlbench run`` (the Δm stored in a record) and the
leaderboard use these functions.

Not in the task brief, chosen here:
- Records of different training protocols are never compared (neither in one table nor for
  Δm); a record written before protocols were recorded has protocol ``'unknown'``.
- Baseline matching compares checkpoints by their file name (``pretrained_key``), not their
  full path, so the same weights on two machines still match; null matches only null.
- The pretraining source (ImageNet-1K / 22K / 22K then 1K, the record's ``pretrained_on``) is
  part of the checkpoint's identity (:func:`pretrained_identity`, e.g.
  ``swin_tiny_patch4_window7_224_22k.pth (in22k)``), so a table and its Δm baseline never mix
  sources, and the table title shows it. Records written before it was recorded read it from the
  file name (:mod:`mtlbench.backbones.pretraining`), ``unknown`` if the name does not say.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from mtlbench.reporting.schema import BASELINE_METHOD, UNKNOWN_PROTOCOL, _is_finite_number

__all__ = [
    'ANY', 'pretrained_key', 'record_pretrained_on', 'pretrained_identity', 'record_protocol', 'comparability_key', 'run_identity',
    'newest_per_identity', 'collect_baseline', 'find_baseline', 'compute_delta_m_for_record',
]


class _Any:
    """Sentinel: "do not filter on this field"."""

    def __repr__(self) -> str:
        return 'ANY'


ANY = _Any()


def pretrained_key(pretrained: Optional[str]) -> str:
    """Comparable identity of a pretrained checkpoint: its file name (or tag), or
    ``'random init'`` for null."""
    if pretrained is None or str(pretrained).strip() == '':
        return 'random init'
    return re.split(r'[\\/]', str(pretrained).rstrip('/\\'))[-1]


def record_pretrained_on(record: Mapping) -> str:
    """The record's pretraining source: its ``pretrained_on``, else read from the checkpoint's
    file name, else ``'unknown'``; ``'none'`` for random init."""
    from mtlbench.backbones.pretraining import pretrained_on_from_name

    if pretrained_key(record.get('pretrained')) == 'random init':
        return 'none'
    return record.get('pretrained_on') or pretrained_on_from_name(str(record['pretrained'])) or 'unknown'


_IDENTITY = re.compile(r' \((in1k|in22k|in22k-ft-in1k|unknown)\)$')


def pretrained_identity(record: Mapping) -> str:
    """``'<file name> (<source>)'``, or ``'random init'``: the checkpoint part of the
    comparability key."""
    key = pretrained_key(record.get('pretrained'))
    return key if key == 'random init' else f'{key} ({record_pretrained_on(record)})'


def _as_identity(pretrained: Any) -> str:
    """A :func:`pretrained_identity` string as is; a path (or None) as a record of it would read."""
    if isinstance(pretrained, str) and _IDENTITY.search(pretrained):
        return pretrained
    return pretrained_identity({'pretrained': pretrained})


def record_protocol(record: Mapping) -> str:
    """The record's training protocol; ``'unknown'`` for records written before it was recorded."""
    return record.get('protocol') or UNKNOWN_PROTOCOL


def comparability_key(record: Mapping) -> tuple:
    """``(dataset, synthetic, backbone, (H, W), eval_protocol, pretrained_identity, protocol)``:
    records with different keys are never compared (neither in one table nor for Δm)."""
    return (record['dataset'], bool(record['synthetic']), record['backbone'],
            tuple(record['img_size']), record['eval_protocol'],
            pretrained_identity(record), record_protocol(record))


def run_identity(record: Mapping) -> tuple:
    """What makes two run records the same measurement: the comparability key plus method,
    variant, method options, tasks and seed. Re-running a seed (or ``--resume`` on a finished
    work dir) writes a second record with the same identity; it is one seed, not two."""
    options = json.dumps(record.get('method_options') or {}, sort_keys=True, default=str)
    return comparability_key(record) + (record['method'], record.get('variant') or '', options,
                                        tuple(record['tasks']), record['seed'])


def newest_per_identity(records: Iterable[Mapping]) -> Tuple[List[Mapping], List[Tuple[Mapping, Mapping]]]:
    """``(kept, repeats)``: one run record per :func:`run_identity`, the newest by ``created``;
    ``repeats`` pairs each record left out with the one kept. Other kinds pass through."""
    newest: Dict[tuple, Mapping] = {}
    others: List[Mapping] = []
    for rec in records:
        if rec.get('kind') != 'run':
            others.append(rec)
            continue
        key = run_identity(rec)
        if key not in newest or str(rec.get('created', '')) > str(newest[key].get('created', '')):
            newest[key] = rec
    kept_ids = {id(r) for r in newest.values()}
    repeats = [(r, newest[run_identity(r)]) for r in records
               if r.get('kind') == 'run' and id(r) not in kept_ids]
    return others + list(newest.values()), repeats


def collect_baseline(records: Iterable[Mapping], dataset: str, backbone: str,
                     img_size: Sequence[int], eval_protocol: str, synthetic: bool,
                     tasks: Sequence[str], *, pretrained: Any = ANY, protocol: Any = ANY,
                     ) -> Dict[str, List[Mapping]]:
    """The single-task baseline records matching the given keys, per task.

    Args:
        records: run records (other kinds are ignored).
        dataset, backbone, img_size, eval_protocol, synthetic: keys to match.
        tasks: tasks to collect.
        pretrained: a :func:`pretrained_identity` string, or a checkpoint path/tag or None
            (its source then read from the name), matched by identity; ``ANY`` (default)
            matches every checkpoint.
        protocol: training protocol to match (:func:`record_protocol`); ``ANY`` (default)
            matches every protocol.

    Returns:
        dict: task -> list of matching records scoring that task (possibly empty).
    """
    want_pre = None if pretrained is ANY else _as_identity(pretrained)
    size = tuple(img_size)
    out: Dict[str, List[Mapping]] = {t: [] for t in tasks}
    for rec in records:
        if rec.get('kind') != 'run' or rec.get('method') != BASELINE_METHOD:
            continue
        if (rec.get('dataset') != dataset or rec.get('backbone') != backbone
                or tuple(rec.get('img_size') or ()) != size
                or rec.get('eval_protocol') != eval_protocol
                or bool(rec.get('synthetic')) != bool(synthetic)):
            continue
        if want_pre is not None and pretrained_identity(rec) != want_pre:
            continue
        if protocol is not ANY and record_protocol(rec) != protocol:
            continue
        for task in tasks:
            entry = (rec.get('primary') or {}).get(task)
            if isinstance(entry, Mapping) and _is_finite_number(entry.get('value')):
                out[task].append(rec)
    return out


def _describe_keys(dataset, backbone, img_size, eval_protocol, synthetic, pretrained,
                   protocol=ANY) -> str:
    size = 'x'.join(str(s) for s in img_size)
    text = f'{dataset}, {backbone}, {size}, {eval_protocol}, ' \
           f'{"synthetic" if synthetic else "real"} data'
    if pretrained is not ANY:
        text += f', {_as_identity(pretrained)}'
    if protocol is not ANY:
        text += f', protocol {protocol}'
    return text


def find_baseline(records: Iterable[Mapping], dataset: str, backbone: str,
                  img_size: Sequence[int], eval_protocol: str, synthetic: bool,
                  tasks: Sequence[str], *, pretrained: Any = ANY, protocol: Any = ANY,
                  ) -> Tuple[Optional[Dict[str, float]], Optional[str]]:
    """Per-task single-task baseline values from ``single_task`` run records.

    A baseline record scores one task or several; every record (seed) that scores a task
    contributes, and the value is the mean over them.

    Args:
        records: run records (other kinds are ignored).
        dataset, backbone, img_size, eval_protocol, synthetic: keys the baseline must share.
        tasks: tasks needed.
        pretrained, protocol: see :func:`collect_baseline`.

    Returns:
        tuple: ``({task: mean primary value}, None)``, or ``(None, reason)`` naming the tasks
        without a baseline record.
    """
    found = collect_baseline(records, dataset, backbone, img_size, eval_protocol, synthetic,
                             tasks, pretrained=pretrained, protocol=protocol)
    missing = [t for t in tasks if not found[t]]
    if missing:
        keys = _describe_keys(dataset, backbone, img_size, eval_protocol, synthetic, pretrained,
                              protocol)
        return None, (f'no single_task baseline record for task(s) {", ".join(missing)} '
                      f'({keys})')
    values = {t: sum(r['primary'][t]['value'] for r in found[t]) / len(found[t]) for t in tasks}
    return values, None


def _delta_m_function():
    try:
        from mtlbench.evaluation.delta_m import delta_m
    except ImportError as e:  # written by another part of the project
        return None, f'Δm code unavailable (mtlbench.evaluation.delta_m: {e})'
    return delta_m, None


def compute_delta_m_for_record(record: Mapping, all_records: Iterable[Mapping],
                               ) -> Tuple[Optional[float], Optional[str]]:
    """Δm (%) of one run record against the matching single-task baseline records.

    The baseline must share dataset, backbone, input size, eval protocol, synthetic flag,
    pretrained checkpoint (file name and pretraining source) and training protocol with ``record``.

    Args:
        record (dict): a valid run record.
        all_records: run records to search for baselines (may include ``record``).

    Returns:
        tuple: ``(value, None)`` or ``(None, reason)``.
    """
    tasks = list(record['tasks'])
    baseline, reason = find_baseline(
        newest_per_identity(all_records)[0], record['dataset'], record['backbone'], record['img_size'],
        record['eval_protocol'], record['synthetic'], tasks, pretrained=pretrained_identity(record),
        protocol=record_protocol(record))
    if baseline is None:
        return None, reason
    null = [t for t in tasks if not _is_finite_number(record['primary'][t].get('value'))]
    if null:
        return None, f'primary metric not computed for {", ".join(null)}'
    fn, reason = _delta_m_function()
    if fn is None:
        return None, reason
    metrics = {t: record['primary'][t]['value'] for t in tasks}
    hib = {t: record['primary'][t]['higher_is_better'] for t in tasks}
    return float(fn(metrics, baseline, tasks, higher_is_better=hib)), None
