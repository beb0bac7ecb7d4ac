"""Δm: average relative gain of a multi-task model over single-task baselines.

Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR 2019 (arXiv 1904.08918):

    Δm = (1/T) Σ_t (−1)^{l_t} (M_t − B_t) / B_t × 100 %

with ``l_t = 1`` when lower is better for task ``t``, ``M_t`` the model's primary metric and
``B_t`` the single-task baseline's (``metrics.md``). Directions come from
``mtlbench.tasks.TASKS[t].higher_is_better`` unless overridden.

Why a checked variant: papers print Δm values that do not follow from their own rows (e.g. MTL
full fine-tuning on PASCAL prints +2.23, its row gives +2.45), so Δm is always recomputed, and it
is never computed against a baseline that lacks a task: ``compute_delta_m`` returns no value and
says why, ``delta_m`` raises.

Not in the paper; chosen: printed and recomputed values agree when they differ by at most
``AGREEMENT_TOL`` = 0.02 percentage points (papers round to two decimals).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence

from mtlbench.tasks import TASKS

__all__ = ['AGREEMENT_TOL', 'DeltaMResult', 'relative_gain', 'delta_m', 'compute_delta_m',
           'primary_values', 'agrees_with_printed']

#: Largest |recomputed − printed| Δm (percentage points) that counts as agreeing.
AGREEMENT_TOL = 0.02


@dataclass(frozen=True)
class DeltaMResult:
    """Outcome of a Δm computation that may be impossible.

    Args:
        value: Δm in percent, or None when it cannot be computed.
        reason: why ``value`` is None; None when it was computed.
        per_task: task -> signed relative gain in percent (positive = better than baseline);
            empty when ``value`` is None.
    """
    value: Optional[float]
    reason: Optional[str] = None
    per_task: Dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when a value was computed."""
        return self.value is not None


def _direction(task: str, higher_is_better: Optional[Mapping[str, bool]]) -> bool:
    if higher_is_better is not None and task in higher_is_better:
        return bool(higher_is_better[task])
    if task not in TASKS:
        raise KeyError(f'no direction for task {task!r}: not in mtlbench.tasks.TASKS and not '
                       'given in higher_is_better')
    return TASKS[task].higher_is_better


def relative_gain(value: float, baseline: float, higher_is_better: bool) -> float:
    """Signed relative gain of one task in percent: ``±(value − baseline) / baseline × 100``.

    Args:
        value: the model's primary metric.
        baseline: the single-task baseline's primary metric; finite and non-zero.
        higher_is_better: direction of the metric.

    Returns:
        The gain; positive means better than the baseline.
    """
    if not math.isfinite(baseline) or baseline == 0:
        raise ValueError(f'baseline must be finite and non-zero, got {baseline}')
    if not math.isfinite(value):
        raise ValueError(f'metric must be finite, got {value}')
    sign = 1.0 if higher_is_better else -1.0
    return sign * (value - baseline) / baseline * 100.0


def compute_delta_m(metrics: Mapping[str, float],
                    baseline: Mapping[str, float],
                    tasks: Optional[Sequence[str]] = None,
                    higher_is_better: Optional[Mapping[str, bool]] = None) -> DeltaMResult:
    """Δm, or no value with the reason when it cannot be computed.

    Args:
        metrics: task -> the model's primary metric.
        baseline: task -> the single-task baseline's primary metric.
        tasks: tasks to average over. Defaults to the keys of ``metrics``.
        higher_is_better: task -> direction, overriding ``TASKS[t].higher_is_better``.

    Returns:
        A ``DeltaMResult``; ``value`` is None (with ``reason``) when there are no tasks, a task
        lacks a model value or a baseline value, a value is not finite, a baseline is zero, or
        a task has no known direction.
    """
    tasks = list(metrics) if tasks is None else list(tasks)
    if not tasks:
        return DeltaMResult(None, 'no tasks to compare')
    missing_b = [t for t in tasks if t not in baseline]
    if missing_b:
        return DeltaMResult(None, f'baseline lacks task(s) {missing_b}')
    missing_m = [t for t in tasks if t not in metrics]
    if missing_m:
        return DeltaMResult(None, f'metrics lack task(s) {missing_m}')
    per_task: Dict[str, float] = {}
    for t in tasks:
        try:
            per_task[t] = relative_gain(float(metrics[t]), float(baseline[t]),
                                        _direction(t, higher_is_better))
        except (KeyError, ValueError) as e:
            return DeltaMResult(None, f'{t}: {e.args[0] if e.args else e}')
    return DeltaMResult(sum(per_task.values()) / len(per_task), None, per_task)


def delta_m(metrics: Mapping[str, float],
            baseline: Mapping[str, float],
            tasks: Optional[Sequence[str]] = None,
            higher_is_better: Optional[Mapping[str, bool]] = None) -> float:
    """Δm in percent (Maninis et al. 2019); raises where ``compute_delta_m`` gives no value.

    Args:
        metrics: task -> the model's primary metric (e.g. ``{'semseg': 67.56, ...}``).
        baseline: task -> the single-task baseline's primary metric.
        tasks: tasks to average over. Defaults to the keys of ``metrics``.
        higher_is_better: task -> direction, overriding ``TASKS[t].higher_is_better``.

    Returns:
        Δm in percent (e.g. ``2.445`` for +2.45 %).

    Raises:
        ValueError: when Δm cannot be computed (the message gives the reason).
    """
    result = compute_delta_m(metrics, baseline, tasks, higher_is_better)
    if result.value is None:
        raise ValueError(f'cannot compute Δm: {result.reason}')
    return result.value


def primary_values(flat_metrics: Mapping[str, float], tasks: Sequence[str]) -> Dict[str, float]:
    """Pick each task's primary metric from a flat ``'<task>/<metric>'`` dict.

    Args:
        flat_metrics: e.g. ``MultiTaskMetric`` output (``{'semseg/mIoU': 67.5, ...}``); an
            mmengine prefix (``'val/semseg/mIoU'``) is accepted.
        tasks: tasks to pick.

    Returns:
        task -> primary metric value; tasks whose key is absent are left out.
    """
    out: Dict[str, float] = {}
    for t in tasks:
        key = f'{t}/{TASKS[t].primary_metric}'
        hits = [k for k in flat_metrics if k == key or k.endswith('/' + key)]
        if len(hits) > 1:
            raise ValueError(f'ambiguous keys for {t!r}: {hits}')
        if hits:
            out[t] = float(flat_metrics[hits[0]])
    return out


def agrees_with_printed(recomputed: float, printed: float, tol: float = AGREEMENT_TOL) -> bool:
    """Whether a recomputed Δm agrees with a paper's printed (rounded) one.

    Args:
        recomputed: Δm recomputed from the row's metrics.
        printed: the Δm the paper prints.
        tol: largest absolute difference that agrees. Defaults to ``AGREEMENT_TOL`` (0.02).

    Returns:
        True when ``|recomputed − printed| <= tol``.
    """
    return abs(recomputed - printed) <= tol + 1e-9
