"""``mtlbench run`` end to end on synthetic data: every method trains (loss down, metrics above
the untrained model), writes a run record, and the record's numbers are real."""
from __future__ import annotations

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.evaluation.delta_m import delta_m
from mtlbench.registry import METHODS
from mtl_testing import FAST, IMG, read_records, run_cli, scalars

METHOD_NAMES = sorted(METHODS.module_dict)


def _primary(rec, key='metrics'):
    return {t: rec[key][t][rec['primary'][t]['metric']] for t in rec['tasks']}


def _gain(rec) -> float:
    after, before = _primary(rec), _primary(rec, 'initial_metrics')
    signs = {t: 1 if rec['primary'][t]['higher_is_better'] else -1 for t in rec['tasks']}
    return sum(signs[t] * (after[t] - before[t]) / max(abs(before[t]), 1.0) for t in rec['tasks']) / len(rec['tasks'])


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_every_method_trains_on_synthetic_pascal(method, pascal_root, tmp_path):
    extra = ['--tasks', 'semseg'] if METHODS.get(method).one_model_per_task else []
    rc = run_cli(['run', '--method', method, '--data-root', pascal_root, '--work-dir', str(tmp_path / 'w'),
                  '--results-dir', str(tmp_path / 'runs'), '--epochs', '4', '--batch-size', '2',
                  *IMG, '--eval-before-train', '--num-workers', '0'] + extra + FAST)
    assert rc == 0
    (rec,) = read_records(tmp_path / 'runs')
    assert rec['method'] == method and rec['dataset'] == 'pascal_context'
    assert rec['synthetic'] is False  # a --data-root dataset is treated as real; the loader cannot tell
    assert rec['params']['total_trainable'] > 0
    if method == 'free_sinewich':  # the sine regime at the trained magnitudes is logged (issue 13)
        reg = rec['sine_regime']
        assert reg['max_abs_arg'] > 0 and -1 <= reg['mean_task_cosine'] <= 1 and len(reg['layers']) == 8
    if method == 'single_task':  # a baseline record is its own baseline
        assert rec['delta_m'] == 0.0
    else:
        assert rec['delta_m'] is None and 'no single_task baseline' in rec['delta_m_reason']
    # loss decreases: mean of the first epoch's iterations vs the last epoch's
    losses = [s['loss'] for s in scalars(tmp_path / 'w') if 'loss' in s]
    per_epoch = len(losses) // 4
    first, last = losses[:per_epoch], losses[-per_epoch:]
    assert sum(last) / len(last) < sum(first) / len(first), losses
    # the trained model beats the untrained one: mean signed relative gain over tasks > 0
    # (Δm-like, with the denominator floored at 1 because an untrained model can score 0 mIoU)
    assert _gain(rec) > 0, (rec['metrics'], rec['initial_metrics'])


def test_default_run_without_data_uses_synthetic_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('MTLBENCH_CACHE', str(tmp_path / 'cache'))
    rc = run_cli(['run', '--method', 'decoder_only', '--epochs', '1', '--synthetic-samples', '8', *IMG] + FAST)
    assert rc == 0
    (rec,) = read_records(tmp_path / 'results' / 'runs')
    assert rec['synthetic'] is True and rec['img_size'] == [128, 128]
    assert (tmp_path / 'cache').is_dir()


def test_nyud_data_root_run(nyud_root, tmp_path):
    rc = run_cli(['run', '--method', 'full_ft', '--dataset', 'nyudv2', '--data-root', nyud_root,
                  '--work-dir', str(tmp_path / 'w'), '--results-dir', str(tmp_path / 'runs'), '--epochs', '1',
                  *IMG, '--num-workers', '0'] + FAST)
    assert rc == 0
    (rec,) = read_records(tmp_path / 'runs')
    assert rec['tasks'] == ['semseg', 'depth', 'normals']
    assert set(rec['metrics']['depth']) >= {'rmse', 'abs_rel'}
    # FAST keeps the last incomplete batch; a CPU run is fp32, not the reference's fp16 AMP
    expected = sorted(['train-keep-last'] + ([] if torch.cuda.is_available() else ['precision-not-fp16']))
    assert rec['departures'] == expected and rec['protocol'] == '+'.join(expected)


def test_single_task_baselines_give_delta_m(pascal_root, tmp_path):
    common = ['--data-root', pascal_root, '--results-dir', str(tmp_path / 'runs'), '--epochs', '1',
              *IMG, '--num-workers', '0', '--tasks', 'semseg', 'sal'] + FAST
    assert run_cli(['run', '--method', 'single_task', '--work-dir', str(tmp_path / 'st')] + common) == 0
    recs = read_records(tmp_path / 'runs')
    assert sorted(r['tasks'][0] for r in recs) == ['sal', 'semseg']
    assert run_cli(['run', '--method', 'full_ft', '--work-dir', str(tmp_path / 'ft')] + common
                   + ['record_best_delta_m=True']) == 0
    ft = [r for r in read_records(tmp_path / 'runs') if r['method'] == 'full_ft'][0]
    base = {r['tasks'][0]: r['primary'][r['tasks'][0]]['value'] for r in recs}
    assert ft['delta_m'] == pytest.approx(delta_m(_primary(ft), base, ft['tasks']))
    assert ft['pretrained_on'] == 'none' and all(r['pretrained_on'] == 'none' for r in recs)
    # the reference's best-Δm pick, flagged apart: one evaluation, so it is the last one
    best = ft['flagged_best_delta_m']
    assert (best['evaluations'], best['epoch']) == (1, 1) and 'not a leaderboard number' in best['flag']
    assert best['delta_m'] == pytest.approx(ft['delta_m']) and best['metrics'] == ft['metrics']
