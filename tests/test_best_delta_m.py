"""The reference's best-Δm pick as a flagged extra (mtlbench/reporting/best_delta_m.py): Δm per
evaluation against the same baseline, best kept, never in the main fields."""
import pytest

from mtlbench.reporting.best_delta_m import FLAG, flagged_best_delta_m
from test_records import PASCAL_BASE, run_record


def _baselines():
    return [run_record('single_task', '', values={t: v}) for t, v in PASCAL_BASE.items()]


def _metrics(semseg, human_parts, sal, normals):
    return {'semseg': {'mIoU': semseg}, 'human_parts': {'mIoU': human_parts}, 'sal': {'mIoU': sal},
            'normals': {'mean': normals}}


def test_best_evaluation_is_kept_with_its_epoch():
    record = run_record(values=PASCAL_BASE)
    history = [
        {'epoch': 1, 'iter': 10, 'metrics': _metrics(67.21, 61.93, 62.35, 17.97)},   # the baseline: 0
        {'epoch': 2, 'iter': 20, 'metrics': _metrics(70.572, 61.93, 62.35, 17.97)},  # semseg +5%: +1.25
        {'epoch': 3, 'iter': 30, 'metrics': _metrics(67.21, 61.93, 62.35, 17.0715)},  # normals -5% error: +1.25
        {'epoch': 4, 'iter': 40, 'metrics': _metrics(73.931, 61.93, 62.35, 18.8685)},  # +10% and -5%: +1.25
        {'epoch': 5, 'iter': 50, 'metrics': _metrics(73.931, 61.93, 62.35, 17.0715)},  # +10% and +5%: +3.75
    ]
    extra = flagged_best_delta_m(record, history, _baselines())
    assert extra['flag'] == FLAG and extra['evaluations'] == 5
    assert extra['epoch'] == 5 and extra['iter'] == 50
    assert extra['delta_m'] == pytest.approx(3.75)   # (10 + 5) / 4 tasks, by hand
    assert extra['metrics'] == history[-1]['metrics']


def test_without_baseline_or_evaluations():
    record = run_record(values=PASCAL_BASE)
    assert flagged_best_delta_m(record, [], _baselines()) is None
    extra = flagged_best_delta_m(record, [{'epoch': 1, 'iter': 1, 'metrics': _metrics(1, 1, 1, 1)}], [])
    assert extra['delta_m'] is None and 'baseline' in extra['reason']
