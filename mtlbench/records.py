"""Run records and bench records: the only source of numbers for leaderboards and plots.

A *run record* is one JSON file per training run (one method configuration, one dataset, one
seed), written by ``mtlbench run`` into ``results/runs/``. A *bench record* is one JSON file
per throughput/memory measurement, written into ``results/bench/``. Both carry
``schema_version`` so that readers can refuse files they do not understand instead of
misreading them.

Single-task baselines are run records too (``method == 'single_task'``): Δm is always computed
against records that exist, never against numbers typed into code (the MTL research repos
hard-code them in a ``compute_delta_m.py``; see ``/work/shared/STYLE.md``).

Run record, schema version 1 (``RUN_FIELDS`` is the machine-readable version of this list):

=================  ==================  =====================================================
field              type                meaning
=================  ==================  =====================================================
schema_version     int                 ``1``
kind               str                 ``'run'``
run_id             str                 unique, ``<method>-<variant>_<dataset>_s<seed>_<time>_<hex>``
method             str                 registry key (``mtlora``, ``single_task``, ...)
variant            str                 short label of the key options (``'r=64'``; ``''``)
method_options     dict                the method's resolved options
dataset            str                 ``pascal_context`` / ``nyudv2``
tasks              list[str]           tasks trained and scored, dataset order
backbone           str                 ``'swin-t'``
pretrained         str | null          checkpoint path or tag; null means random init
img_size           [int, int]          ``[H, W]`` of the network input
eval_protocol      str                 ``'resized-448'`` or ``'original-resolution'``
protocol           str                 training protocol: ``'reference'`` (the MTLoRA reference
                                       pipeline) or its departures joined by ``+``
                                       (``mtlbench.protocol``); absent in older records, which
                                       read as ``'unknown'``
departures         list[str]           the departures' names, sorted (absent in older records)
synthetic          bool                trained/evaluated on synthetic data
seed               int
git_sha            str | null          commit of the code that ran
checkpoint         str                 which weights were scored: ``'last'`` or ``'best'``
epochs             int | null
iters              int | null
metrics            dict                task -> metric -> float (null when not computable)
primary            dict                task -> {metric, value, higher_is_better}; value null
                                       when not computable (e.g. no valid pixel)
delta_m            float | null        Δm (%) against the single-task baseline records
delta_m_reason     str | null          why ``delta_m`` is null (required then)
params             dict                total_trainable, adapter, decoder, backbone_other,
                                       total (all parameters at inference); optionally
                                       encoder_trainable. Counts, not millions.
rank_history       any | null          optional (FAAR rank shrinking)
wall_time_s        float | null
device             str                 e.g. ``'1x NVIDIA H100 80GB HBM3'`` or ``'cpu'``
torch_version      str | null
config             dict                the full resolved config
created            str                 ISO-8601 time with offset
=================  ==================  =====================================================

Bench record, schema version 1: ``schema_version``, ``kind: 'bench'``, ``bench_id``,
``method``, ``variant``, ``dataset``, ``device``, ``batch_size``, ``img_size``, ``amp``
(bool or dtype name), ``train_img_s``, ``infer_img_s``, ``peak_mem_mb``, ``flops_per_img``
(each number or null), ``created``; optional ``tasks``, ``method_options``, ``params``,
``git_sha``, ``torch_version``, ``notes`` and any further keys.

Keys beginning with ``_`` are never written: the loader adds ``_path`` (the file a record came
from) and writers drop such keys.

Not in the task brief, chosen here:
- ``write_record`` refuses to replace a *different* record under the same id
  (``FileExistsError``) and returns the existing path for an identical one, using a hard link
  (atomic, fails if the name exists) to publish the fsynced temporary file; ids carry a random
  suffix, so two writers of fresh records never collide.
- Non-finite floats are written as ``null`` (strict JSON), so a run whose metric could not be
  computed (or diverged) is still recorded; readers treat a null primary value as missing
  (no Δm, not averaged).
- Records of different training protocols are never compared (neither in one table nor for
  Δm); a record written before protocols were recorded has protocol ``'unknown'``.
- Baseline matching compares checkpoints by their file name (``pretrained_key``), not their
  full path, so the same weights on two machines still match; null matches only null.
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
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from mtlbench.tasks import DATASET_TASKS, TASKS

__all__ = [
    'SCHEMA_VERSION', 'EVAL_PROTOCOLS', 'CHECKPOINTS', 'RUN_FIELDS', 'BENCH_FIELDS',
    'PARAM_KEYS', 'BASELINE_METHOD', 'ANY', 'new_run_id', 'new_bench_id', 'primary_from_metrics',
    'make_run_record', 'make_bench_record', 'validate_record', 'write_record',
    'load_records', 'pretrained_key', 'comparability_key', 'collect_baseline', 'find_baseline',
    'compute_delta_m_for_record', 'UNKNOWN_PROTOCOL', 'record_protocol', 'run_identity', 'newest_per_identity',
]

SCHEMA_VERSION = 1
EVAL_PROTOCOLS = ('resized-448', 'original-resolution')
CHECKPOINTS = ('last', 'best')
BASELINE_METHOD = 'single_task'
UNKNOWN_PROTOCOL = 'unknown'  # protocol of a record written before protocols were recorded
PARAM_KEYS = ('total_trainable', 'adapter', 'decoder', 'backbone_other', 'total')
OPTIONAL_PARAM_KEYS = ('encoder_trainable',)


class _Any:
    """Sentinel: "do not filter on this field"."""

    def __repr__(self) -> str:
        return 'ANY'


ANY = _Any()

_NUM = (int, float)
# name -> (allowed types, nullable). ``bool`` is excluded from numbers explicitly below.
RUN_FIELDS: Dict[str, Tuple[tuple, bool]] = {
    'schema_version': ((int,), False),
    'kind': ((str,), False),
    'run_id': ((str,), False),
    'method': ((str,), False),
    'variant': ((str,), False),
    'method_options': ((dict,), False),
    'dataset': ((str,), False),
    'tasks': ((list,), False),
    'backbone': ((str,), False),
    'pretrained': ((str,), True),
    'img_size': ((list,), False),
    'eval_protocol': ((str,), False),
    'synthetic': ((bool,), False),
    'seed': ((int,), False),
    'git_sha': ((str,), True),
    'checkpoint': ((str,), False),
    'epochs': ((int,), True),
    'iters': ((int,), True),
    'metrics': ((dict,), False),
    'primary': ((dict,), False),
    'delta_m': (_NUM, True),
    'delta_m_reason': ((str,), True),
    'params': ((dict,), False),
    'rank_history': ((object,), True),
    'wall_time_s': (_NUM, True),
    'device': ((str,), False),
    'torch_version': ((str,), True),
    'config': ((dict,), False),
    'created': ((str,), False),
    'protocol': ((str,), False),
    'departures': ((list,), False),
}
# Fields that may be absent (treated as null; a missing protocol reads as 'unknown').
_OPTIONAL_RUN_FIELDS = {'rank_history', 'protocol', 'departures'}

BENCH_FIELDS: Dict[str, Tuple[tuple, bool]] = {
    'schema_version': ((int,), False),
    'kind': ((str,), False),
    'bench_id': ((str,), False),
    'method': ((str,), False),
    'variant': ((str,), False),
    'dataset': ((str,), False),
    'device': ((str,), False),
    'batch_size': ((int,), False),
    'img_size': ((list,), False),
    'amp': ((bool, str), False),
    'train_img_s': (_NUM, True),
    'infer_img_s': (_NUM, True),
    'peak_mem_mb': (_NUM, True),
    'flops_per_img': (_NUM, True),
    'created': ((str,), False),
}

_FIELDS_BY_KIND = {'run': RUN_FIELDS, 'bench': BENCH_FIELDS}
_ID_FIELD = {'run': 'run_id', 'bench': 'bench_id'}


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


def _is_number(x: Any) -> bool:
    return isinstance(x, _NUM) and not isinstance(x, bool)


def _is_finite_number(x: Any) -> bool:
    return _is_number(x) and math.isfinite(x)


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


# ----------------------------------------------------------------------------- validation

def _check_fields(rec: Mapping, fields: Mapping[str, Tuple[tuple, bool]],
                  optional: Iterable[str] = ()) -> List[str]:
    problems = []
    optional = set(optional)
    for name, (types, nullable) in fields.items():
        if name not in rec:
            if name not in optional:
                problems.append(f'missing field {name!r}')
            continue
        value = rec[name]
        if value is None:
            if not nullable:
                problems.append(f'field {name!r} is null')
            continue
        if types == (object,):
            continue
        if isinstance(value, bool) and bool not in types:
            problems.append(f'field {name!r} is a bool, expected {_type_names(types)}')
        elif not isinstance(value, types):
            problems.append(f'field {name!r} has type {type(value).__name__}, '
                            f'expected {_type_names(types)}')
    return problems


def _type_names(types: tuple) -> str:
    return ' or '.join(t.__name__ for t in types)


def _check_img_size(value: Any) -> List[str]:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return []
    return [f'img_size must be [H, W] with positive ints, got {value!r}']


def _check_created(value: Any) -> List[str]:
    if not isinstance(value, str):
        return []
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return [f'created {value!r} is not an ISO-8601 time']
    return []


def _validate_run(rec: Mapping) -> List[str]:
    problems = _check_fields(rec, RUN_FIELDS, _OPTIONAL_RUN_FIELDS)
    if rec.get('kind') != 'run':
        problems.append(f"kind must be 'run', got {rec.get('kind')!r}")
    if 'img_size' in rec:
        problems += _check_img_size(rec['img_size'])
    problems += _check_created(rec.get('created'))
    proto = rec.get('eval_protocol')
    if proto is not None and proto not in EVAL_PROTOCOLS and not re.fullmatch(r'resized-\d+(x\d+)?', str(proto)):
        problems.append(f'eval_protocol {proto!r} is neither one of {EVAL_PROTOCOLS} nor resized-<size>')
    if rec.get('checkpoint') is not None and rec.get('checkpoint') not in CHECKPOINTS:
        problems.append(f'checkpoint {rec.get("checkpoint")!r} not in {CHECKPOINTS}')
    if isinstance(rec.get('protocol'), str) and isinstance(rec.get('departures'), list):
        expect = '+'.join(sorted(map(str, rec['departures']))) or 'reference'
        if rec['protocol'] != expect:
            problems.append(f"protocol {rec['protocol']!r} does not match departures "
                            f"{rec['departures']} (expected {expect!r})")

    dataset = rec.get('dataset')
    if isinstance(dataset, str) and dataset not in DATASET_TASKS:
        problems.append(f'dataset {dataset!r} unknown (known: {sorted(DATASET_TASKS)})')
    tasks = rec.get('tasks')
    if isinstance(tasks, list):
        if not tasks:
            problems.append('tasks is empty')
        bad = [t for t in tasks if not isinstance(t, str) or t not in TASKS]
        if bad:
            problems.append(f'unknown task(s) {bad}')
        elif isinstance(dataset, str) and dataset in DATASET_TASKS:
            off = [t for t in tasks if t not in DATASET_TASKS[dataset]]
            if off:
                problems.append(f'task(s) {off} are not tasks of {dataset!r}')
        if len(set(map(str, tasks))) != len(tasks):
            problems.append(f'duplicate tasks in {tasks}')
    else:
        tasks = None

    metrics = rec.get('metrics')
    if isinstance(metrics, dict):
        for task, values in metrics.items():
            if not isinstance(values, dict):
                problems.append(f'metrics[{task!r}] is not a dict')
                continue
            for name, v in values.items():
                if v is not None and not _is_finite_number(v):  # mtlbench writes non-finite values as null
                    problems.append(f'metrics[{task!r}][{name!r}] is not a finite number or null: {v!r}')
        if tasks:
            missing = [t for t in tasks if t not in metrics]
            if missing:
                problems.append(f'metrics missing for task(s) {missing}')

    primary = rec.get('primary')
    if isinstance(primary, dict) and tasks:
        for task in tasks:
            entry = primary.get(task)
            if not isinstance(entry, dict):
                problems.append(f'primary[{task!r}] missing')
                continue
            spec = TASKS.get(task)
            value = entry.get('value')
            if value is not None and not _is_finite_number(value):
                problems.append(f'primary[{task!r}].value is not a finite number or null: '
                                f'{value!r}')
            if 'value' not in entry:
                problems.append(f'primary[{task!r}].value missing')
            if spec is not None:
                if entry.get('metric') != spec.primary_metric:
                    problems.append(f'primary[{task!r}].metric is {entry.get("metric")!r}, '
                                    f'mtlbench.tasks says {spec.primary_metric!r}')
                if entry.get('higher_is_better') is not spec.higher_is_better:
                    problems.append(f'primary[{task!r}].higher_is_better is '
                                    f'{entry.get("higher_is_better")!r}, mtlbench.tasks says '
                                    f'{spec.higher_is_better}')
            if isinstance(metrics, dict) and isinstance(metrics.get(task), dict):
                mv = metrics[task].get(entry.get('metric'))
                if mv is not None and _is_number(value) and mv != value:
                    problems.append(f'primary[{task!r}].value {value!r} differs from '
                                    f'metrics[{task!r}][{entry.get("metric")!r}] {mv!r}')
        extra = [t for t in primary if t not in tasks]
        if extra:
            problems.append(f'primary has task(s) {extra} not in tasks')

    params = rec.get('params')
    if isinstance(params, dict):
        for key in PARAM_KEYS:
            if key not in params:
                problems.append(f'params.{key} missing')
            elif not _is_finite_number(params[key]) or params[key] < 0:
                problems.append(f'params.{key} is not a non-negative number: {params[key]!r}')
        for key in OPTIONAL_PARAM_KEYS:
            if params.get(key) is not None and not _is_finite_number(params[key]):
                problems.append(f'params.{key} is not a number: {params[key]!r}')

    if 'delta_m' in rec and rec.get('delta_m') is None:
        reason = rec.get('delta_m_reason')
        if not (isinstance(reason, str) and reason.strip()):
            problems.append('delta_m is null but delta_m_reason gives no reason')
    if isinstance(rec.get('seed'), int) and rec['seed'] < 0:
        problems.append(f'seed {rec["seed"]} is negative')
    return problems


def _validate_bench(rec: Mapping) -> List[str]:
    problems = _check_fields(rec, BENCH_FIELDS)
    if 'img_size' in rec:
        problems += _check_img_size(rec['img_size'])
    problems += _check_created(rec.get('created'))
    if isinstance(rec.get('batch_size'), int) and rec['batch_size'] <= 0:
        problems.append(f'batch_size {rec["batch_size"]} is not positive')
    return problems


def validate_record(rec: Any) -> List[str]:
    """Check a run or bench record against schema version 1.

    Args:
        rec (dict): the record (keys starting with ``_`` are ignored).

    Returns:
        list[str]: the problems found; empty when the record is valid.
    """
    if not isinstance(rec, Mapping):
        return [f'record is a {type(rec).__name__}, not a JSON object']
    version = rec.get('schema_version')
    if version != SCHEMA_VERSION:
        return [f'unknown schema_version {version!r} (this mtlbench reads {SCHEMA_VERSION})']
    kind = rec.get('kind')
    if kind == 'run':
        return _validate_run(rec)
    if kind == 'bench':
        return _validate_bench(rec)
    return [f"unknown kind {kind!r} (expected 'run' or 'bench')"]


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


# ----------------------------------------------------------------------------- comparability

def pretrained_key(pretrained: Optional[str]) -> str:
    """Comparable identity of a pretrained checkpoint: its file name (or tag), or
    ``'random init'`` for null."""
    if pretrained is None or str(pretrained).strip() == '':
        return 'random init'
    return re.split(r'[\\/]', str(pretrained).rstrip('/\\'))[-1]


def record_protocol(record: Mapping) -> str:
    """The record's training protocol; ``'unknown'`` for records written before it was recorded."""
    return record.get('protocol') or UNKNOWN_PROTOCOL


def comparability_key(record: Mapping) -> tuple:
    """``(dataset, synthetic, backbone, (H, W), eval_protocol, pretrained_key, protocol)``:
    records with different keys are never compared (neither in one table nor for Δm)."""
    return (record['dataset'], bool(record['synthetic']), record['backbone'],
            tuple(record['img_size']), record['eval_protocol'],
            pretrained_key(record.get('pretrained')), record_protocol(record))


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
        pretrained: a checkpoint path/tag or None to match by :func:`pretrained_key`;
            ``ANY`` (default) matches every checkpoint.
        protocol: training protocol to match (:func:`record_protocol`); ``ANY`` (default)
            matches every protocol.

    Returns:
        dict: task -> list of matching records scoring that task (possibly empty).
    """
    want_pre = None if pretrained is ANY else pretrained_key(pretrained)
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
        if want_pre is not None and pretrained_key(rec.get('pretrained')) != want_pre:
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
        text += f', {pretrained_key(pretrained)}'
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
    pretrained checkpoint (by file name) and training protocol with ``record``.

    Args:
        record (dict): a valid run record.
        all_records: run records to search for baselines (may include ``record``).

    Returns:
        tuple: ``(value, None)`` or ``(None, reason)``.
    """
    tasks = list(record['tasks'])
    baseline, reason = find_baseline(
        newest_per_identity(all_records)[0], record['dataset'], record['backbone'], record['img_size'],
        record['eval_protocol'], record['synthetic'], tasks, pretrained=record.get('pretrained'),
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
