"""Interruption: a run killed (SIGKILL) or pre-empted (SIGTERM) mid-epoch resumes with
``--resume`` and ends with the same weights and metrics as an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mtl_testing import FAST, IMG, python_cmd, run_cli
from mtlbench.engine import safe_torch_load

EPOCHS = 3


def _args(root, work_dir, results_dir):
    return ['run', '--method', 'mtlora', '--data-root', root, '--work-dir', str(work_dir),
            '--results-dir', str(results_dir), '--epochs', str(EPOCHS), '--batch-size', '2', '--num-workers', '0',
            *IMG] + FAST + ['default_hooks.logger.interval=1']


def _final_state(work_dir):
    ckpt = safe_torch_load(str(Path(work_dir) / f'epoch_{EPOCHS}.pth'))
    return ckpt['state_dict'], ckpt['meta']['iter']


def _record(results_dir):
    (path,) = list(Path(results_dir).glob('*.json'))
    return json.loads(path.read_text())


def _subprocess_run(args):
    # every run of this file in a fresh process: same threads and state, so results are bitwise comparable
    res = subprocess.run(python_cmd() + args, env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope='module')
def uninterrupted(pascal_root, tmp_path_factory):
    base = tmp_path_factory.mktemp('uninterrupted')
    _subprocess_run(_args(pascal_root, base / 'w', base / 'runs'))
    return base


def _wait_for(pattern: str, work_dir: Path, proc: subprocess.Popen, timeout: float = 400) -> None:
    """Block until the run's log contains ``pattern``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in work_dir.glob('*/*.log'):
            if pattern in log.read_text(errors='ignore'):
                return
        if proc.poll() is not None:
            raise AssertionError(f'run exited early with {proc.returncode}')
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f'{pattern!r} never appeared in the log')


def _assert_same_run(a: Path, b: Path) -> None:
    sa, ia = _final_state(a / 'w')
    sb, ib = _final_state(b / 'w')
    assert ia == ib
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
    ra, rb = _record(a / 'runs'), _record(b / 'runs')
    for t in ra['metrics']:
        for m, v in ra['metrics'][t].items():
            assert rb['metrics'][t][m] == pytest.approx(v, rel=1e-5, abs=1e-6), (t, m)


@pytest.mark.parametrize('how, workers', [('SIGKILL', 0), ('SIGTERM', 0), ('SIGTERM to the group', 2)])
def test_interrupted_run_resumes_to_the_same_result(how, workers, uninterrupted, pascal_root, tmp_path):
    work = tmp_path / 'w'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    args = _args(pascal_root, work, tmp_path / 'runs') + ['--num-workers', str(workers)]  # the last flag wins
    # Slurm and `timeout` signal the whole process group, data-loader workers included
    proc = subprocess.Popen(python_cmd() + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_for('Epoch(train) [2][2/', work, proc)  # mid-way through the second epoch
    if how == 'SIGTERM to the group':
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(getattr(signal, how))
    rc = proc.wait(timeout=120)
    if how.startswith('SIGTERM'):
        assert rc == 143 and (work / 'preempt.pth').is_file()  # stopped after the iteration, checkpoint saved
    else:
        assert rc == -signal.SIGKILL
    assert not list(work.glob('.*.tmp*')), 'a half-written checkpoint was left behind'
    assert not list((tmp_path / 'runs').glob('*.json')) if (tmp_path / 'runs').exists() else True
    _subprocess_run(args + ['--resume'])
    _assert_same_run(uninterrupted, tmp_path)


def test_resume_without_checkpoint_is_a_clear_error(pascal_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='no loadable checkpoint'):
        run_cli(_args(pascal_root, tmp_path / 'empty', tmp_path / 'runs') + ['--resume'])


def test_corrupt_newest_checkpoint_is_skipped(tmp_path, uninterrupted, monkeypatch):
    import mtlbench.engine.checkpoint as checkpoint
    from mtlbench.engine import find_resumable_checkpoint
    logged = []
    monkeypatch.setattr(checkpoint, 'print_log', lambda msg, **kw: logged.append(msg))
    work = tmp_path / 'w'
    work.mkdir()
    src = uninterrupted / 'w'
    for name in ('epoch_2.pth', 'epoch_3.pth'):
        (work / name).write_bytes((src / name).read_bytes())
    data = (work / 'epoch_3.pth').read_bytes()
    (work / 'epoch_3.pth').write_bytes(data[: len(data) // 2])  # truncated
    assert find_resumable_checkpoint(str(work)) == str(work / 'epoch_2.pth')
    assert len(logged) == 1 and f'skipping {work / "epoch_3.pth"}: it does not load' in logged[0]  # once silent


def test_default_work_dir_tells_variants_and_model_options_apart():
    from mtlbench.run import RunOptions, _work_dir, prepare_config

    def work_dir(**cfg_options):
        opts = RunOptions(method='mtlora', cfg_options=cfg_options)
        return _work_dir(opts, prepare_config(opts), 'mtlora')

    r64, r8 = work_dir(), work_dir(**{'model.method.r': 8})
    assert r64 != r8 and '_r=64_' in r64 and '_r=8_' in r8  # an r=8 run no longer overwrites an r=64 run
    assert work_dir() == r64  # the same command finds its own checkpoints again
    assert work_dir(**{'model.decoder.channels': (4, 8, 8, 8)}) != r64  # any option that changes the model


def test_resume_skips_a_newer_checkpoint_of_another_model(pascal_root, tmp_path, capfd):
    work = tmp_path / 'w'

    def args(rank, epochs):
        return ['run', '--method', 'mtlora', '--data-root', pascal_root, '--work-dir', str(work), '--results-dir',
                str(tmp_path / 'runs'), '--epochs', str(epochs), '--batch-size', '2', '--num-workers', '0',
                '--max-samples', '4', *IMG] + FAST + [f'model.method.r={rank}']

    run_cli(args(4, 1))
    os.replace(work / 'epoch_1.pth', work / 'r4_epoch_1.pth')
    os.utime(work / 'r4_epoch_1.pth', (time.time() - 60, time.time() - 60))
    run_cli(args(8, 1))  # newer, and of another rank
    run_cli(args(4, 2) + ['--resume'])
    out = capfd.readouterr()
    logged = out.out + out.err + ''.join(p.read_text(errors='ignore') for p in work.glob('*/*.log'))
    skipped = [line for line in logged.splitlines() if '--resume: skipping' in line]
    assert any('epoch_1.pth' in m and 'trained as another model' in m and "'r': 8" in m for m in skipped), skipped
    assert safe_torch_load(str(work / 'epoch_2.pth'))['meta']['epoch'] == 2  # resumed from the r=4 epoch 1


def test_full_disk_during_a_save_leaves_no_temp_file(pascal_root, tmp_path, monkeypatch):
    import errno

    from mmengine.fileio.backends.local_backend import LocalBackend

    def put_half_then_enospc(self, obj, filepath):
        Path(filepath).write_bytes(obj[: len(obj) // 2])
        raise OSError(errno.ENOSPC, 'No space left on device')

    work = tmp_path / 'w'
    monkeypatch.setattr(LocalBackend, 'put', put_half_then_enospc)
    with pytest.raises(OSError, match='No space left'):
        run_cli(_args(pascal_root, work, tmp_path / 'runs') + ['--max-samples', '4'])
    assert not list(work.glob('.*.tmp*')) and not list(work.glob('*.pth'))


def test_temp_checkpoint_of_a_dead_writer_is_removed_at_start(tmp_path):
    from mtlbench.engine.runner import remove_stale_temp_checkpoints
    dead = subprocess.Popen(['true'])
    dead.wait()
    (tmp_path / f'.epoch_3.pth.tmp{dead.pid}').write_bytes(b'half')
    (tmp_path / f'.epoch_3.pth.tmp{os.getppid()}').write_bytes(b'a live writer')
    assert remove_stale_temp_checkpoints(str(tmp_path)) == [f'.epoch_3.pth.tmp{dead.pid}']
    assert (tmp_path / f'.epoch_3.pth.tmp{os.getppid()}').exists()


def test_resume_auto_starts_afresh_without_a_checkpoint(pascal_root, tmp_path):
    """What a requeued sweep job runs: no checkpoint yet means a fresh start, not an error."""
    assert run_cli(_args(pascal_root, tmp_path / 'w', tmp_path / 'runs') + ['--max-samples', '4', '--epochs', '1',
                                                                            '--resume', 'auto']) == 0
    assert (tmp_path / 'w' / 'epoch_1.pth').is_file() and len(list((tmp_path / 'runs').glob('*.json'))) == 1
