"""Making, writing and reading run and bench records (schema: :mod:`mtlbench.reporting.schema`).

These files are the only source of numbers for leaderboards and plots. Keys beginning with
``_`` are never written: :func:`load_records` adds ``_path`` (the file a record came from) and
:func:`write_record` drops such keys.

Not in the task brief, chosen here:
- ``write_record`` refuses to replace a *different* record under the same id
  (``FileExistsError``) and returns the existing path for an identical one, using a hard link
  (atomic, fails if the name exists) to publish the fsynced temporary file; ids carry a random
  suffix, so two writers of fresh records never collide.
- Non-finite floats are written as ``null`` (strict JSON); see the schema.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mtlbench.reporting.schema import _FIELDS_BY_KIND, _ID_FIELD, SCHEMA_VERSION, validate_record
from mtlbench.tasks import TASKS

__all__ = [
    'new_run_id', 'new_bench_id', 'primary_from_metrics', 'make_run_record', 'make_bench_record',
    'write_record', 'load_records',
]


# ----------------------------------------------------------------------------- helpers

def _slug(text: str) -> str:
    """File-name-safe form of a label: ``'r=64'`` -> ``'r64'``, other odd characters -> ``-``."""
    text = str(text).replace('=', '')
    text = re.sub(r'[^A-Za-z0-9._+-]+', '-', text).strip('-._')
    return text


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='seconds')


def _stamp(when: Optional[datetime]) -> str:
    when = when or datetime.now(timezone.utc)
    return when.strftime('%Y%m%dT%H%M%S')


def _sanitize(obj: Any) -> Any:
    """Copy of ``obj`` as strict JSON data: non-finite floats -> None, tuples -> lists,
    keys starting with ``_`` dropped at the top level only (done by the caller)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if hasattr(obj, 'item') and callable(obj.item):  # numpy / torch scalars
        try:
            return _sanitize(obj.item())
        except (TypeError, ValueError):
            pass
    return obj


def _public(record: Mapping) -> dict:
    return {k: v for k, v in record.items() if not str(k).startswith('_')}


# ----------------------------------------------------------------------------- construction

def new_run_id(method: str, variant: str, dataset: str, seed: int,
               when: Optional[datetime] = None) -> str:
    """A fresh, unique run id: ``<method>-<variant>_<dataset>_s<seed>_<YYYYmmddTHHMMSS>_<hex6>``.

    Args:
        method (str): registry key.
        variant (str): short label of the options (``'r=64'``); may be empty.
        dataset (str): dataset key.
        seed (int): random seed.
        when (datetime, optional): time stamp to use. Defaults to now (UTC).

    Returns:
        str: the id, safe as a file name.
    """
    head = _slug(method) + (f'-{_slug(variant)}' if _slug(variant) else '')
    return f'{head}_{_slug(dataset)}_s{int(seed)}_{_stamp(when)}_{secrets.token_hex(3)}'


def new_bench_id(method: str, variant: str, dataset: str, device: str,
                 when: Optional[datetime] = None) -> str:
    """A fresh, unique bench id (same shape as :func:`new_run_id`, device instead of seed)."""
    head = _slug(method) + (f'-{_slug(variant)}' if _slug(variant) else '')
    dev = _slug(device)[:40] or 'device'
    return f'bench_{head}_{_slug(dataset)}_{dev}_{_stamp(when)}_{secrets.token_hex(3)}'


def primary_from_metrics(metrics: Mapping[str, Mapping[str, float]],
                         tasks: Sequence[str]) -> Dict[str, dict]:
    """Build the ``primary`` field from per-task metrics using ``mtlbench.tasks.TASKS``.

    Args:
        metrics (dict): task -> metric name -> value.
        tasks (list[str]): tasks of the run.

    Returns:
        dict: task -> ``{'metric', 'value', 'higher_is_better'}``.

    Raises:
        KeyError: when a task's primary metric is missing from ``metrics``.
    """
    out = {}
    for task in tasks:
        spec = TASKS[task]
        if spec.primary_metric not in metrics.get(task, {}):
            raise KeyError(f'metrics for task {task!r} lack its primary metric '
                           f'{spec.primary_metric!r}')
        out[task] = {'metric': spec.primary_metric,
                     'value': metrics[task][spec.primary_metric],
                     'higher_is_better': spec.higher_is_better}
    return out


def make_run_record(**fields: Any) -> dict:
    """Assemble a schema-v1 run record, filling what can be derived.

    Fills ``schema_version``, ``kind``, ``run_id`` (from method/variant/dataset/seed),
    ``created``, ``primary`` (from ``metrics`` and ``tasks``), ``variant=''``,
    ``method_options={}``, ``backbone='swin-t'``, ``eval_protocol='resized-448'``,
    ``checkpoint='last'``, ``delta_m=None`` with a reason, ``rank_history=None`` when absent.
    Nothing is validated here; :func:`write_record` validates.

    Example:
        >>> rec = make_run_record(method='mtlora', variant='r=64', dataset='pascal_context',
        ...                       tasks=['semseg'], seed=0, metrics={'semseg': {'mIoU': 67.9}},
        ...                       ...)
    """
    rec = dict(fields)
    rec.setdefault('schema_version', SCHEMA_VERSION)
    rec.setdefault('kind', 'run')
    rec.setdefault('variant', '')
    rec.setdefault('method_options', {})
    rec.setdefault('backbone', 'swin-t')
    rec.setdefault('eval_protocol', 'resized-448')
    rec.setdefault('checkpoint', 'last')
    rec.setdefault('rank_history', None)
    rec.setdefault('created', _now_iso())
    if 'delta_m' not in rec:
        rec['delta_m'] = None
        rec.setdefault('delta_m_reason', 'not computed when the record was written')
    rec.setdefault('delta_m_reason', None)
    if 'run_id' not in rec and {'method', 'dataset', 'seed'} <= rec.keys():
        rec['run_id'] = new_run_id(rec['method'], rec['variant'], rec['dataset'], rec['seed'])
    if 'primary' not in rec and 'metrics' in rec and 'tasks' in rec:
        rec['primary'] = primary_from_metrics(rec['metrics'], rec['tasks'])
    return rec


def make_bench_record(**fields: Any) -> dict:
    """Assemble a schema-v1 bench record (fills ``schema_version``, ``kind``, ``bench_id``,
    ``created``, ``variant=''`` and null ``flops_per_img``)."""
    rec = dict(fields)
    rec.setdefault('schema_version', SCHEMA_VERSION)
    rec.setdefault('kind', 'bench')
    rec.setdefault('variant', '')
    rec.setdefault('flops_per_img', None)
    rec.setdefault('created', _now_iso())
    if 'bench_id' not in rec and {'method', 'dataset', 'device'} <= rec.keys():
        rec['bench_id'] = new_bench_id(rec['method'], rec['variant'], rec['dataset'],
                                       rec['device'])
    return rec


# ----------------------------------------------------------------------------- I/O

def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_json(path: Path) -> Any:
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_record(record: Mapping, directory: os.PathLike | str) -> Path:
    """Validate ``record`` and write it atomically as ``<directory>/<id>.json``.

    The JSON goes to a temporary file in the same directory, is flushed and fsynced, then
    published under its final name with a hard link, which fails if the name exists, so an
    existing file is never replaced. Readers never see a half-written record.

    Args:
        record (dict): a run or bench record; keys starting with ``_`` are not written.
        directory (path): target directory, created if missing.

    Returns:
        Path: the file written (or the existing identical file).

    Raises:
        ValueError: the record does not validate.
        FileExistsError: a *different* record already has this id.
    """
    data = _sanitize(_public(record))
    problems = validate_record(data)
    if problems:
        raise ValueError('refusing to write an invalid record:\n  ' + '\n  '.join(problems))
    id_field = _ID_FIELD[data['kind']]
    name = _slug(data[id_field])
    if not name or name != data[id_field]:
        raise ValueError(f'{id_field} {data[id_field]!r} is not a safe file name '
                         f'(use new_run_id / new_bench_id)')
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f'{name}.json'
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + '\n'

    fd, tmp_name = tempfile.mkstemp(prefix=f'.{name}.', suffix='.tmp', dir=directory)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide records from co-workers; as checkpoints
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)
        except FileExistsError:
            return _existing_or_raise(final, data)
        except OSError:
            # File systems without hard links: exclusive create, then atomic replace of our
            # own placeholder. A concurrent writer of the same name fails at the O_EXCL step.
            try:
                os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return _existing_or_raise(final, data)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(directory)
    return final


def _existing_or_raise(path: Path, data: dict) -> Path:
    try:
        existing = _read_json(path)
    except (OSError, ValueError):
        existing = None
    if existing == data:
        return path
    raise FileExistsError(f'{path} already holds a different record; records are never '
                          f'overwritten (make a new id with new_run_id / new_bench_id)')


def load_records(directory: os.PathLike | str,
                 kind: Optional[str] = None) -> Tuple[List[dict], List[Tuple[Path, str]]]:
    """Read every ``*.json`` record under ``directory`` (recursively).

    Hidden files (temporary files of a writer) are ignored. Files that do not parse, have an
    unknown ``schema_version`` or ``kind``, fail validation or repeat an id already read are
    returned in ``skipped`` with the reason, never raised.

    Args:
        directory (path): e.g. ``results/runs``. A missing directory gives no records.
        kind (str, optional): ``'run'`` or ``'bench'``; records of other kinds are left out
            silently. Defaults to all kinds.

    Returns:
        tuple: ``(records, skipped)``; each record gains ``_path`` (str), ``skipped`` is a list
        of ``(path, reason)``.
    """
    directory = Path(directory)
    records: List[dict] = []
    skipped: List[Tuple[Path, str]] = []
    if not directory.is_dir():
        return records, skipped
    seen: Dict[Tuple[str, str], Path] = {}
    paths = sorted(p for p in directory.rglob('*.json')
                   if not any(part.startswith('.') for part in p.relative_to(directory).parts))
    for path in paths:
        try:
            rec = _read_json(path)
        except UnicodeDecodeError as e:
            skipped.append((path, f'not UTF-8 text: {e}'))
            continue
        except json.JSONDecodeError as e:
            skipped.append((path, f'not valid JSON: {e}'))
            continue
        except OSError as e:
            skipped.append((path, f'unreadable: {e}'))
            continue
        except RecursionError:
            skipped.append((path, 'not a record: JSON nested too deeply to read'))
            continue
        if isinstance(rec, dict) and kind is not None and rec.get('kind') != kind \
                and rec.get('kind') in _FIELDS_BY_KIND:
            continue
        try:
            problems = validate_record(rec)
        except RecursionError:
            problems = ['not a record: nested too deeply to check']
        if problems:
            skipped.append((path, '; '.join(problems)))
            continue
        key = (rec['kind'], rec[_ID_FIELD[rec['kind']]])
        if key in seen:
            skipped.append((path, f'duplicate {key[0]} id {key[1]!r} (first read from '
                                  f'{seen[key]})'))
            continue
        seen[key] = path
        rec['_path'] = str(path)
        records.append(rec)
    return records, skipped
