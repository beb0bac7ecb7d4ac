"""Run/bench record schema: validation, atomic writes, loading, baselines and Δm."""
import json
import os
import threading

import pytest

from mtlbench.reporting import comparability as C
from mtlbench.reporting import records as R
from mtlbench.reporting import schema as S

PASCAL_BASE = {'semseg': 67.21, 'human_parts': 61.93, 'sal': 62.35, 'normals': 17.97}
FULL_FT = {'semseg': 67.56, 'human_parts': 60.24, 'sal': 65.21, 'normals': 16.64}


def run_record(method='mtlora', variant='r=64', seed=0, values=None, tasks=None,
               dataset='pascal_context', **over):
    """A valid schema-v1 run record, built field by field."""
    values = dict(values or FULL_FT)
    tasks = list(tasks or values)
    metrics, primary = {}, {}
    for t in tasks:
        name = 'mean' if t == 'normals' else ('rmse' if t == 'depth' else 'mIoU')
        metrics[t] = {name: values[t]}
        primary[t] = {'metric': name, 'value': values[t],
                      'higher_is_better': t not in ('normals', 'depth')}
    rec = {
        'schema_version': 1, 'kind': 'run',
        'run_id': R.new_run_id(method, variant, dataset, seed),
        'method': method, 'variant': variant, 'method_options': {'rank': 64},
        'dataset': dataset, 'tasks': tasks, 'backbone': 'swin-t',
        'pretrained': '/weights/swin_tiny_patch4_window7_224.pth', 'img_size': [448, 448],
        'eval_protocol': 'resized-448', 'synthetic': False, 'seed': seed, 'git_sha': 'abc1234',
        'checkpoint': 'last', 'epochs': 300, 'iters': None, 'metrics': metrics,
        'primary': primary, 'delta_m': None, 'delta_m_reason': 'not computed',
        'params': {'total_trainable': 8_344_634, 'adapter': 4_798_464, 'decoder': 1_946_624,
                   'backbone_other': 1_599_546, 'total': 29_800_000},
        'rank_history': None, 'wall_time_s': 100.0, 'device': 'cpu', 'torch_version': '2.11.0',
        'config': {'model': {'type': 'MultiTaskModel'}}, 'created': '2026-01-01T00:00:00+00:00',
    }
    rec.update(over)
    return rec


def bench_record(**over):
    rec = {'schema_version': 1, 'kind': 'bench',
           'bench_id': R.new_bench_id('mtlora', 'r=64', 'pascal_context', 'H100'),
           'method': 'mtlora', 'variant': 'r=64', 'dataset': 'pascal_context',
           'device': 'NVIDIA H100', 'batch_size': 32, 'img_size': [448, 448], 'amp': 'bf16',
           'train_img_s': 100.0, 'infer_img_s': 300.0, 'peak_mem_mb': 12000.0,
           'flops_per_img': None, 'created': '2026-01-01T00:00:00+00:00'}
    rec.update(over)
    return rec


def test_run_id_shape_and_unique():
    a = R.new_run_id('mtlora', 'r=64', 'pascal_context', 3)
    b = R.new_run_id('mtlora', 'r=64', 'pascal_context', 3)
    assert a != b
    assert a.startswith('mtlora-r64_pascal_context_s3_')
    assert R.new_run_id('faar', '', 'nyudv2', 0).startswith('faar_nyudv2_s0_')


def test_valid_records_have_no_problems():
    assert S.validate_record(run_record()) == []
    assert S.validate_record(bench_record()) == []
    made = R.make_run_record(method='mtlora', variant='r=64', dataset='pascal_context',
                             tasks=['semseg'], seed=0, metrics={'semseg': {'mIoU': 60.0}},
                             pretrained=None, img_size=[448, 448], synthetic=True,
                             git_sha=None, epochs=1, iters=None,
                             params=run_record()['params'], wall_time_s=None, device='cpu',
                             torch_version=None, config={})
    assert S.validate_record(made) == []
    assert made['primary']['semseg'] == {'metric': 'mIoU', 'value': 60.0,
                                         'higher_is_better': True}


@pytest.mark.parametrize('change, expect', [
    (lambda r: r.pop('seed'), "missing field 'seed'"),
    (lambda r: r.update(eval_protocol='512'), 'eval_protocol'),
    (lambda r: r.update(checkpoint='epoch10'), 'checkpoint'),
    (lambda r: r.update(img_size=[448]), 'img_size'),
    (lambda r: r.update(synthetic='no'), "'synthetic'"),
    (lambda r: r.update(delta_m=None, delta_m_reason=None), 'delta_m_reason'),
    (lambda r: r['primary']['normals'].update(higher_is_better=True), 'higher_is_better'),
    (lambda r: r['primary']['semseg'].update(value=1.0), 'differs'),
    (lambda r: r['primary']['sal'].update(value=float('nan')), 'finite'),
    (lambda r: r['params'].pop('decoder'), 'params.decoder'),
    (lambda r: r.update(tasks=['semseg', 'depth']), 'not tasks of'),
    (lambda r: r.update(dataset='cityscapes'), 'unknown'),
    (lambda r: r.update(schema_version=2), 'schema_version'),
    (lambda r: r.update(kind='model'), 'kind'),
    (lambda r: r.update(created='yesterday'), 'ISO'),
])
def test_validation_finds_problems(change, expect):
    rec = run_record()
    change(rec)
    problems = S.validate_record(rec)
    assert problems and any(expect in p for p in problems), problems


def test_write_then_load_roundtrip(tmp_path):
    rec = run_record(wall_time_s=float('nan'))
    path = R.write_record(rec, tmp_path / 'runs')
    assert path.name == rec['run_id'] + '.json'
    data = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert data['wall_time_s'] is None
    loaded, skipped = R.load_records(tmp_path / 'runs')
    assert skipped == [] and len(loaded) == 1
    assert loaded[0]['_path'] == str(path)
    assert loaded[0]['metrics'] == rec['metrics']


def test_write_is_atomic_and_never_overwrites(tmp_path):
    rec = run_record()
    path = R.write_record(rec, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left
    assert R.write_record(dict(rec), tmp_path) == path  # identical: idempotent
    other = dict(rec, seed=5)
    with pytest.raises(FileExistsError):
        R.write_record(other, tmp_path)
    assert json.loads(path.read_text())['seed'] == 0
    assert sorted(os.listdir(tmp_path)) == [path.name]
    with pytest.raises(ValueError):
        R.write_record(run_record(checkpoint='nope'), tmp_path)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_two_writers_never_clobber(tmp_path):
    # Fresh ids: both writers' records all survive.
    errors = []

    def writer(seed0):
        try:
            for s in range(seed0, seed0 + 15):
                R.write_record(run_record(seed=s), tmp_path)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    loaded, skipped = R.load_records(tmp_path)
    assert len(loaded) == 30 and skipped == []
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]

    # Same id, different content, racing: exactly one wins and the file is whole.
    rid = R.new_run_id('mtlora', 'r=64', 'pascal_context', 0)
    a, b = run_record(run_id=rid, seed=1), run_record(run_id=rid, seed=2)
    outcome = {}
    barrier = threading.Barrier(2)

    def racer(name, rec):
        barrier.wait()
        try:
            R.write_record(rec, tmp_path / 'race')
            outcome[name] = 'ok'
        except FileExistsError:
            outcome[name] = 'refused'

    ts = [threading.Thread(target=racer, args=('a', a)), threading.Thread(target=racer,
                                                                          args=('b', b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(outcome.values()) == ['ok', 'refused']
    written = json.loads((tmp_path / 'race' / f'{rid}.json').read_text())
    assert written['seed'] == (1 if outcome['a'] == 'ok' else 2)
    assert os.listdir(tmp_path / 'race') == [f'{rid}.json']


def test_load_lists_bad_files_as_skipped(tmp_path):
    good = R.write_record(run_record(), tmp_path)
    R.write_record(bench_record(), tmp_path)
    (tmp_path / 'broken.json').write_text('{"schema_version": 1, ')
    (tmp_path / 'list.json').write_text('[1, 2]')
    missing = run_record()
    del missing['params']
    (tmp_path / 'missing.json').write_text(json.dumps(missing))
    (tmp_path / 'future.json').write_text(json.dumps(run_record(schema_version=9)))
    (tmp_path / '.partial.json.tmp').write_text('{')  # a writer's temp file: ignored
    (tmp_path / 'zz_dup.json').write_text(good.read_text())  # same run_id, read second
    (tmp_path / 'latin.json').write_bytes(b'\xff\xfe{')
    (tmp_path / 'deep.json').write_text('[' * 100_000 + ']' * 100_000)  # once a RecursionError for every reader
    infinite = json.loads(good.read_text())
    infinite['run_id'] += 'x'
    infinite['metrics'][infinite['tasks'][0]]['secondary'] = float('inf')  # once aborted the leaderboard
    (tmp_path / 'inf.json').write_text(json.dumps(infinite))

    runs, skipped = R.load_records(tmp_path, kind='run')
    assert [r['run_id'] for r in runs] == [json.loads(good.read_text())['run_id']]
    reasons = {p.name: why for p, why in skipped}
    assert set(reasons) == {'broken.json', 'list.json', 'missing.json', 'future.json',
                            'zz_dup.json', 'latin.json', 'deep.json', 'inf.json'}
    assert 'nested too deeply' in reasons['deep.json']
    assert "['secondary'] is not a finite number or null: inf" in reasons['inf.json']
    assert 'duplicate run id' in reasons['zz_dup.json']
    assert 'not valid JSON' in reasons['broken.json']
    assert "missing field 'params'" in reasons['missing.json']
    assert 'schema_version' in reasons['future.json']
    benches, _ = R.load_records(tmp_path, kind='bench')
    assert len(benches) == 1 and benches[0]['kind'] == 'bench'
    assert R.load_records(tmp_path / 'nope') == ([], [])


def _baselines(values=PASCAL_BASE, seeds=(0, 1), spread=0.2, **over):
    out = []
    for s in seeds:
        for t, v in values.items():
            out.append(run_record('single_task', '', seed=s, values={t: v + spread * s},
                                  **over))
    return out


def test_find_baseline_means_over_seeds():
    recs = _baselines()
    values, reason = C.find_baseline(recs, 'pascal_context', 'swin-t', [448, 448], 'resized-448',
                                     False, list(PASCAL_BASE))
    assert reason is None
    for t, v in PASCAL_BASE.items():
        assert values[t] == pytest.approx(v + 0.1)


def test_find_baseline_multi_task_record_and_missing_task():
    one = run_record('single_task', '', values=PASCAL_BASE)  # one record scoring all tasks
    values, reason = C.find_baseline([one], 'pascal_context', 'swin-t', (448, 448),
                                     'resized-448', False, list(PASCAL_BASE))
    assert values == PASCAL_BASE and reason is None

    partial = [r for r in _baselines() if r['tasks'] != ['sal']]
    values, reason = C.find_baseline(partial, 'pascal_context', 'swin-t', [448, 448],
                                     'resized-448', False, list(PASCAL_BASE))
    assert values is None and 'sal' in reason and 'semseg' not in reason


def test_find_baseline_never_crosses_comparability_keys():
    recs = _baselines(synthetic=True) + _baselines(img_size=[512, 512])
    for kw in ({}, {'pretrained': None}):
        values, reason = C.find_baseline(recs, 'pascal_context', 'swin-t', [448, 448],
                                         'resized-448', False, list(PASCAL_BASE), **kw)
        assert values is None and reason
    values, _ = C.find_baseline(recs, 'pascal_context', 'swin-t', [448, 448], 'resized-448',
                                True, list(PASCAL_BASE))
    assert values is not None
    # pretrained is matched by file name, not by path
    values, _ = C.find_baseline(recs, 'pascal_context', 'swin-t', [448, 448], 'resized-448',
                                True, list(PASCAL_BASE),
                                pretrained='/other/disk/swin_tiny_patch4_window7_224.pth')
    assert values is not None
    values, reason = C.find_baseline(recs, 'pascal_context', 'swin-t', [448, 448],
                                     'resized-448', True, list(PASCAL_BASE), pretrained=None)
    assert values is None and 'random init' in reason


def test_compute_delta_m_for_record_matches_paper_row():
    recs = _baselines(spread=0.0)
    mtl = run_record('full_ft', '', values=FULL_FT)
    value, reason = C.compute_delta_m_for_record(mtl, recs + [mtl])
    assert reason is None
    assert value == pytest.approx(2.45, abs=0.01)  # metrics.md: +2.45 (paper prints +2.23)

    value, reason = C.compute_delta_m_for_record(dict(mtl, synthetic=True), recs)
    assert value is None and 'no single_task baseline' in reason


def test_pretrained_key():
    assert C.pretrained_key(None) == 'random init'
    assert C.pretrained_key('/a/b/swin.pth') == C.pretrained_key('C:\\x\\swin.pth') == 'swin.pth'
    assert C.comparability_key(run_record()) == (
        'pascal_context', False, 'swin-t', (448, 448), 'resized-448',
        'swin_tiny_patch4_window7_224.pth (in1k)', 'unknown')  # no protocol recorded: 'unknown'


def test_uncomputable_metric_is_recorded_as_null(tmp_path):
    rec = run_record(values=dict(FULL_FT, human_parts=float('nan')))
    path = R.write_record(rec, tmp_path)  # NaN -> null: the run is still recorded
    loaded, skipped = R.load_records(tmp_path)
    assert skipped == [] and loaded[0]['primary']['human_parts']['value'] is None
    value, reason = C.compute_delta_m_for_record(loaded[0], _baselines())
    assert value is None and 'human_parts' in reason
    base = _baselines(values={'human_parts': 61.93}) + [
        run_record('single_task', '', seed=9, values={'human_parts': float('nan')})]
    values, _ = C.find_baseline(base, 'pascal_context', 'swin-t', [448, 448], 'resized-448',
                                False, ['human_parts'])
    assert values['human_parts'] == pytest.approx(61.93 + 0.1)  # the null one is left out
    assert path.exists()


def test_records_are_readable_by_others_like_checkpoints(tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        path = R.write_record(run_record(), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone gives 0600
