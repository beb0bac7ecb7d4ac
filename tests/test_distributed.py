"""Distributed (2-process CPU DDP over gloo, launched by torchrun): metrics equal the 1-process
metrics on the same data, DDP training runs and writes one record, a dead rank does not hang."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from mtl_testing import FAST, IMG, read_records, run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _torchrun(args, timeout=600, **kw):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), '-m', 'mtlbench.cli'] + args
    env = dict(os.environ, OMP_NUM_THREADS='1', MTLBENCH_DEBUG='1')
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _common(root, tmp_path, name):
    return ['run', '--method', 'mtlora', '--data-root', root, '--work-dir', str(tmp_path / name),
            '--results-dir', str(tmp_path / f'runs_{name}'), '--epochs', '1', '--batch-size', '2',
            '--num-workers', '0', *IMG] + FAST


@pytest.fixture(scope='module')
def trained(pascal_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('ddp')
    assert run_cli(_common(pascal_root, tmp, 'single')) == 0
    return tmp, tmp / 'single' / 'epoch_1.pth'


def test_ddp_metrics_equal_single_process(trained, pascal_root):
    tmp, ckpt = trained
    # val split with an odd number of images, so DDP's sampler pads one rank. One image per batch
    # and one thread in both runs: every image then goes through the same arithmetic, so the
    # predictions agree bit for bit and what is compared is the gathering of metrics across
    # ranks (a different batch or thread count may round differently and flip a near-tied
    # argmax of this barely trained model).
    one_image = ['--eval-only', str(ckpt), '--batch-size', '1']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_cli(_common(pascal_root, tmp, 'eval1') + one_image)
    finally:
        torch.set_num_threads(threads)
    assert one == 0
    res = _torchrun(_common(pascal_root, tmp, 'eval2') + one_image + ['--launcher', 'pytorch'])
    assert res.returncode == 0, res.stderr[-3000:]
    m1 = json.loads((tmp / 'eval1' / 'eval_metrics.json').read_text())['metrics']
    m2 = json.loads((tmp / 'eval2' / 'eval_metrics.json').read_text())['metrics']
    assert m1.keys() == m2.keys()
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-5), k


def test_ddp_training_writes_one_record(pascal_root, tmp_path):
    res = _torchrun(_common(pascal_root, tmp_path, 'train') + ['--launcher', 'pytorch'])
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = read_records(tmp_path / 'runs_train')
    assert rec['config']['launcher'] == 'pytorch'
    assert (tmp_path / 'train' / 'epoch_1.pth').is_file()


def test_dead_rank_does_not_hang(pascal_root, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc_per_node', '2',
           '--master_addr', '127.0.0.1', '--master_port', str(_free_port()), '-m', 'mtlbench.cli'] + \
        _common(pascal_root, tmp_path, 'dead')[:-len(FAST)] + ['--epochs', '5'] + FAST + ['--launcher', 'pytorch']
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    log = None
    while time.time() < deadline and log is None:  # wait until training is under way
        logs = list((tmp_path / 'dead').glob('*/*.log'))
        if logs and 'Epoch(train)' in logs[0].read_text(errors='ignore'):
            log = logs[0]
        time.sleep(0.5)
    assert log is not None, 'training never started'
    # kill one worker (the one that is not rank 0's parent group leader): find rank 1 by its env
    children = subprocess.run(['pgrep', '-f', '-P', str(proc.pid), 'mtlbench.cli'], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    assert len(pids) == 2, children.stdout
    os.kill(pids[-1], signal.SIGKILL)
    start = time.time()
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError('the surviving rank hung after its peer died')
    assert rc != 0 and time.time() - start < 120


def test_merged_evaluation_equals_unmerged(trained, pascal_root):
    """``--eval-only CKPT --merged`` folds the shared LoRA into the frozen weights: same metrics."""
    tmp, ckpt = trained
    assert run_cli(_common(pascal_root, tmp, 'plain_eval') + ['--eval-only', str(ckpt)]) == 0
    assert run_cli(_common(pascal_root, tmp, 'merged_eval') + ['--eval-only', str(ckpt), '--merged']) == 0
    a = json.loads((tmp / 'plain_eval' / 'eval_metrics.json').read_text())
    b = json.loads((tmp / 'merged_eval' / 'eval_metrics.json').read_text())
    assert a['merged_adapters'] is None and len(b['merged_adapters']) > 0  # the shared LoRA layers
    for k in a['metrics']:
        assert b['metrics'][k] == pytest.approx(a['metrics'][k], rel=1e-3, abs=1e-3), k
    with pytest.raises(ValueError, match='--merged folds adapters for evaluation only'):
        run_cli(_common(pascal_root, tmp, 'bad') + ['--merged'])
