"""Schema version 1 of run records and bench records, and :func:`validate_record`.

A *run record* is one JSON file per training run (one method configuration, one dataset, one
seed), written by ``mtlbench run`` into ``results/runs/``. A *bench record* is one JSON file
per throughput/memory measurement, written into ``results/bench/``. Both carry
``schema_version`` so that readers can refuse files they do not understand instead of
misreading them. Writing and reading them is :mod:`mtlbench.reporting.records`.

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
pretrained_on      str                 its pretraining data: ``in1k``, ``in22k``, ``in22k-ft-in1k``,
                                       ``unknown``, ``none`` (random init); absent in older
                                       records, which read it from the file name
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
``git_sha``, ``torch_version``, ``notes``, ``arch`` (the ``SWIN_ARCHS`` key) and ``backbone`` (as
run records label it, ``'swin-b'``; leaderboards match bench and run records on it) and any
further keys.

Not in the task brief, chosen here:
- Non-finite floats are written as ``null`` (strict JSON), so a run whose metric could not be
  computed (or diverged) is still recorded; readers treat a null primary value as missing
  (no Δm, not averaged).
"""
from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from mtlbench.tasks import DATASET_TASKS, TASKS

__all__ = [
    'SCHEMA_VERSION', 'EVAL_PROTOCOLS', 'CHECKPOINTS', 'RUN_FIELDS', 'BENCH_FIELDS',
    'PARAM_KEYS', 'BASELINE_METHOD', 'UNKNOWN_PROTOCOL', 'validate_record',
]

SCHEMA_VERSION = 1
EVAL_PROTOCOLS = ('resized-448', 'original-resolution')
CHECKPOINTS = ('last', 'best')
BASELINE_METHOD = 'single_task'
UNKNOWN_PROTOCOL = 'unknown'  # protocol of a record written before protocols were recorded
PARAM_KEYS = ('total_trainable', 'adapter', 'decoder', 'backbone_other', 'total')
OPTIONAL_PARAM_KEYS = ('encoder_trainable',)

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
    'pretrained_on': ((str,), False),
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
_OPTIONAL_RUN_FIELDS = {'rank_history', 'protocol', 'departures', 'pretrained_on'}

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


def _is_number(x: Any) -> bool:
    return isinstance(x, _NUM) and not isinstance(x, bool)


def _is_finite_number(x: Any) -> bool:
    return _is_number(x) and math.isfinite(x)


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
    if isinstance(rec.get('pretrained_on'), str):
        from mtlbench.backbones.pretraining import PRETRAINING_SOURCES
        if rec['pretrained_on'] not in PRETRAINING_SOURCES:
            problems.append(f"pretrained_on {rec['pretrained_on']!r} not in {PRETRAINING_SOURCES}")
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
