"""Sweeps: planning, skip-existing, dry run, failures and the Slurm script."""
import os
import shutil
import stat
import subprocess
import sys

import pytest

from mtlbench.reporting import records as R
from mtlbench.sweep import SweepJob, emit_slurm, pending_jobs, plan_sweep, run_sweep


def run_record(method, seed, variant='', synthetic=False, dataset='pascal_context'):
    """A minimal valid run record for ``method`` / ``seed`` (one task)."""
    return {
        'schema_version': 1, 'kind': 'run',
        'run_id': R.new_run_id(method, variant, dataset, seed),
        'method': method, 'variant': variant, 'method_options': {}, 'dataset': dataset,
        'tasks': ['semseg'], 'backbone': 'swin-t', 'pretrained': None, 'img_size': [448, 448],
        'eval_protocol': 'resized-448', 'synthetic': synthetic, 'seed': seed, 'git_sha': None,
        'checkpoint': 'last', 'epochs': 1, 'iters': None,
        'metrics': {'semseg': {'mIoU': 50.0}},
        'primary': {'semseg': {'metric': 'mIoU', 'value': 50.0, 'higher_is_better': True}},
        'delta_m': None, 'delta_m_reason': 'test',
        'params': {'total_trainable': 1, 'adapter': 0, 'decoder': 1, 'backbone_other': 0,
                   'total': 2},
        'wall_time_s': None, 'device': 'cpu', 'torch_version': None, 'config': {},
        'created': '2026-01-01T00:00:00+00:00'}


def test_plan_sweep_jobs_and_commands():
    jobs = plan_sweep(['mtlora', {'method': 'faar', 'variant': 'r=32',
                                  'args': '--cfg-options method.rank=32'}],
                      seeds=[0, 1, 2], dataset='pascal_context', extra_args=['--epochs', '5'])
    assert len(jobs) == 6
    assert [(j.method, j.seed) for j in jobs] == [('mtlora', 0), ('mtlora', 1), ('mtlora', 2),
                                                  ('faar', 0), ('faar', 1), ('faar', 2)]
    assert jobs[0].command() == [sys.executable, '-m', 'mtlbench.cli', 'run', '--method',
                                 'mtlora', '--seed', '0', '--dataset', 'pascal_context',
                                 '--epochs', '5', '--resume', 'auto']
    assert jobs[3].variant == 'r=32'
    assert jobs[3].cli_args()[-6:-2] == ['--cfg-options', 'method.rank=32', '--epochs', '5']
    assert all(j.synthetic is None for j in jobs)  # neither --synthetic nor --data-root
    syn = plan_sweep([('mtlora', 'r=64')], [0, 0], 'nyudv2', ['--synthetic'])
    assert len(syn) == 1 and syn[0].synthetic and syn[0].variant == 'r=64'
    with pytest.raises(ValueError):
        plan_sweep(['mtlora'], [], 'pascal_context')
    with pytest.raises(ValueError):
        plan_sweep([{'method': 'x', 'rank': 3}], [0], 'pascal_context')


def test_run_sweep_skips_existing_records(tmp_path):
    runs = tmp_path / 'runs'
    R.write_record(run_record('mtlora', 0, variant='r=64'), runs)
    R.write_record(run_record('faar', 1, synthetic=True), runs)  # synthetic: does not count
    real = ['--data-root', '/data/PASCAL_MT']
    jobs = (plan_sweep(['mtlora', 'faar'], [0, 1], 'pascal_context', real)
            + plan_sweep([{'method': 'mtlora', 'variant': 'r=32'}], [0], 'pascal_context', real))
    assert all(j.synthetic is False for j in jobs)
    calls = []

    def runner(cmd):
        calls.append(cmd)
        i = cmd.index('--method')
        method, seed = cmd[i + 1], int(cmd[cmd.index('--seed') + 1])
        R.write_record(run_record(method, seed, variant='r=32' if method == 'mtlora' else ''),
                       runs)
        return 0

    lines = []
    out = run_sweep(jobs, runs, runner=runner, echo=lines.append)
    status = {(o.job.method, o.job.variant, o.job.seed): o.status for o in out}
    assert status == {('mtlora', None, 0): 'exists', ('mtlora', None, 1): 'ok',
                      ('faar', None, 0): 'ok', ('faar', None, 1): 'ok',
                      # a job naming variant r=32 is not answered by the r=64 record
                      ('mtlora', 'r=32', 0): 'ok'}
    assert len(calls) == 4
    assert all(c[:4] == [sys.executable, '-m', 'mtlbench.cli', 'run'] for c in calls)
    assert any('record exists' in ln for ln in lines)

    # second pass: everything exists, nothing runs
    calls.clear()
    again = run_sweep(jobs, runs, runner=runner, echo=lines.append)
    assert calls == [] and {o.status for o in again} == {'exists'}
    assert pending_jobs(jobs, runs) == []


def test_dry_run_prints_plan_and_runs_nothing(tmp_path):
    runs = tmp_path / 'runs'
    R.write_record(run_record('mtlora', 0), runs)
    jobs = plan_sweep(['mtlora'], [0, 1], 'pascal_context')
    lines = []

    def runner(cmd):  # pragma: no cover - must not be called
        raise AssertionError('dry run ran a job')

    out = run_sweep(jobs, runs, dry_run=True, runner=runner, echo=lines.append)
    assert [o.status for o in out] == ['exists', 'would run']
    text = '\n'.join(lines)
    assert '2 job(s), 1 to run' in text
    assert 'mtlbench.cli run --method mtlora --seed 1 --dataset pascal_context' in text


def test_failures_are_reported(tmp_path):
    jobs = plan_sweep(['a', 'b'], [0], 'pascal_context')
    lines = []
    out = run_sweep(jobs, tmp_path, runner=lambda cmd: 3, echo=lines.append)
    assert [o.status for o in out] == ['failed', 'failed']
    assert out[0].returncode == 3 and 'FAILED (exit code 3)' in lines[1]
    assert '2 failed' in lines[-1]
    out = run_sweep(jobs, tmp_path, runner=lambda cmd: 3, echo=lines.append,
                    stop_on_error=True)
    assert len(out) == 1
    out = run_sweep(jobs[:1], tmp_path, runner=lambda cmd: 0, echo=lines.append)
    assert out[0].status == 'ok, no record'


def test_emit_slurm_script(tmp_path):
    jobs = plan_sweep(['mtlora', 'faar'], [0, 1, 2], 'pascal_context',
                      extra_args=['--work-dir', 'work dirs/x'])
    path = emit_slurm(jobs, tmp_path / 'sweep.sbatch', gpus_per_job=2, partition='gpu',
                      max_parallel=4, setup=['source .venv/bin/activate'])
    text = path.read_text()
    assert text.startswith('#!/bin/bash\n')
    for line in ('#SBATCH --array=0-5%4', '#SBATCH --gres=gpu:2', '#SBATCH --partition=gpu',
                 '#SBATCH --cpus-per-task=16', 'GPUS=2', 'source .venv/bin/activate',
                 'case "${SLURM_ARRAY_TASK_ID', '#SBATCH --signal=B:TERM@120', '#SBATCH --requeue'):
        assert line in text, line
    for k, job in enumerate(jobs):
        assert f'  {k})  # {job.name}' in text
    assert ('torchrun --standalone --nproc_per_node=$GPUS -m mtlbench.cli run --method faar '
            "--seed 2 --dataset pascal_context --work-dir 'work dirs/x' --resume auto --launcher pytorch") in text
    assert text.count('--launcher pytorch') == 6
    assert os.stat(path).st_mode & stat.S_IXUSR
    assert (tmp_path / 'slurm_logs').is_dir()  # Slurm needs it before the job starts
    assert 'mkdir -p slurm_logs && sbatch sweep.sbatch' in text
    if shutil.which('bash'):
        assert subprocess.run(['bash', '-n', str(path)]).returncode == 0


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_slurm_task_runs_its_job(tmp_path):
    jobs = plan_sweep(['mtlora', 'faar'], [0], 'nyudv2')
    script = emit_slurm(jobs, tmp_path / 'sweep.sh', gpus_per_job=3)
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'torchrun').write_text('#!/bin/bash\necho "torchrun $*"\n')
    (fake / 'torchrun').chmod(0o755)
    env = dict(os.environ, PATH=f'{fake}:{os.environ["PATH"]}', SLURM_ARRAY_TASK_ID='1')
    res = subprocess.run(['bash', str(script)], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ('torchrun --standalone --nproc_per_node=3 -m mtlbench.cli run '
                                  '--method faar --seed 0 --dataset nyudv2 --resume auto --launcher pytorch')
    env['SLURM_ARRAY_TASK_ID'] = '7'
    assert subprocess.run(['bash', str(script)], cwd=tmp_path, env=env,
                          capture_output=True).returncode == 1
    with pytest.raises(ValueError):
        emit_slurm([], tmp_path / 'none.sh')


def test_unknown_synthetic_flag_matches_either(tmp_path):
    R.write_record(run_record('mtlora', 0, synthetic=True), tmp_path)
    assert pending_jobs(plan_sweep(['mtlora'], [0], 'pascal_context'), tmp_path) == []
    assert len(pending_jobs(plan_sweep(['mtlora'], [0], 'pascal_context', synthetic=False),
                            tmp_path)) == 1


def test_job_name_is_readable():
    job = SweepJob('mtlora', 2, 'pascal_context', variant='r=64', synthetic=True)
    assert job.name == 'mtlora[r=64]_pascal_context_s2_synthetic'


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_slurm_warning_signal_reaches_the_run_and_the_task_is_requeued(tmp_path):
    """Slurm sends SIGTERM to the batch shell (--signal=B:TERM@120): the shell forwards it to the
    run, which saves and exits 143; the script then requeues its array task."""
    import signal
    import time
    script = emit_slurm(plan_sweep(['mtlora'], [0], 'nyudv2'), tmp_path / 'sweep.sh')
    fake = tmp_path / 'bin'
    fake.mkdir()
    # a run that is pre-empted: on SIGTERM it "saves" and exits 143, as mtlbench run does
    (fake / 'torchrun').write_text('#!/bin/bash\ntrap \'echo saved > "$OUT/preempt"; exit 143\' TERM\n'
                                   'echo started > "$OUT/started"\nwhile true; do sleep 0.05; done\n')
    (fake / 'scontrol').write_text('#!/bin/bash\necho "$*" > "$OUT/scontrol"\n')
    for f in ('torchrun', 'scontrol'):
        (fake / f).chmod(0o755)
    env = dict(os.environ, PATH=f'{fake}:{os.environ["PATH"]}', SLURM_ARRAY_TASK_ID='0',
               SLURM_ARRAY_JOB_ID='777', OUT=str(tmp_path))
    proc = subprocess.Popen(['bash', str(script)], cwd=tmp_path, env=env)
    deadline = time.time() + 30
    while not (tmp_path / 'started').exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the batch shell only, as B: does
    assert proc.wait(timeout=30) == 143
    assert (tmp_path / 'preempt').read_text().strip() == 'saved'
    assert (tmp_path / 'scontrol').read_text().strip() == 'requeue 777_0'
