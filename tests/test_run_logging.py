"""What a run leaves to watch: TensorBoard event files that tensorboard's own reader parses
(the same curves as mmengine's scalars.json), a log without per-parameter optimizer warnings
and without colour codes, and a --pretrained that refuses a checkpoint of a whole model."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mtl_testing import FAST, IMG, read_records, run_cli, scalars
from mmengine.hooks import Hook

from mtlbench.registry import HOOKS

COLOURED = 'coloured message for the log file'


@HOOKS.register_module(force=True)
class _ColourfulHook(Hook):
    """Logs a message with its own ANSI colour codes, as termcolor does under FORCE_COLOR."""

    def before_train(self, runner) -> None:
        from termcolor import colored
        runner.logger.warning(colored(COLOURED, 'red', attrs=['bold']))


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory, pascal_root):
    tmp = tmp_path_factory.mktemp('logging_run')
    mp = pytest.MonkeyPatch()
    mp.setenv('FORCE_COLOR', '1')  # colour even though stdout is not a terminal
    try:
        assert run_cli(['run', '--method', 'mtlora', '--data-root', pascal_root, '--work-dir', str(tmp / 'w'),
                        '--results-dir', str(tmp / 'runs'), '--epochs', '2', '--num-workers', '0', '--batch-size', '4',
                        '--max-samples', '4', *IMG] + FAST + ['custom_hooks=[{"type": "_ColourfulHook"}]']) == 0
    finally:
        mp.undo()
    logs = sorted((tmp / 'w').glob('*/*.log'))
    assert len(logs) == 1
    return dict(work_dir=tmp / 'w', log=logs[0].read_text(), record=read_records(tmp / 'runs')[0], tmp=tmp)


def test_tensorboard_event_files_hold_the_training_curves(toy_run):
    pytest.importorskip('tensorboard')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(toy_run['work_dir'].glob('*/vis_data/events.out.tfevents.*'))
    assert events, 'no TensorBoard event file'
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()['scalars'])
    assert {'loss', 'lr', 'loss_semseg', 'semseg/mIoU', 'normals/mean'} <= tags
    # the same numbers as mmengine's local backend (scalars.json), written independently
    local = scalars(toy_run['work_dir'])
    train = [(r['step'], r['loss']) for r in local if 'loss' in r]
    board = [(e.step, e.value) for e in acc.Scalars('loss')]
    assert len(train) == len(board) == 2  # 2 epochs of 1 iteration, logged at the end of each epoch
    for (s1, v1), (s2, v2) in zip(train, board):
        assert s1 == s2 and v2 == pytest.approx(v1, rel=1e-6)
    miou = [e.value for e in acc.Scalars('semseg/mIoU')]
    assert miou[-1] == pytest.approx(toy_run['record']['metrics']['semseg']['mIoU'], rel=1e-6)


def test_log_has_no_per_parameter_optimizer_warnings(toy_run):
    # mtlora freezes the backbone linears: mmengine's default constructor warned once per frozen parameter
    params = toy_run['record']['params']
    assert params['total'] > params['total_trainable'] > 0
    assert 'requires_grad=False' not in toy_run['log'] and 'is skipped since' not in toy_run['log']


def test_log_file_has_no_colour_codes(toy_run):
    log = toy_run['log']
    assert COLOURED in log  # the message arrived, its escapes did not
    assert '\x1b' not in log


def test_strip_on_an_mmengine_logger_under_forced_colour(tmp_path, monkeypatch, capsys):
    from mmengine.logging import MMLogger
    from termcolor import colored

    from mtlbench.engine.log_files import plain_file_handlers
    monkeypatch.setenv('FORCE_COLOR', '1')
    logger = MMLogger.get_instance('ansi-test', log_file=str(tmp_path / 'x.log'))
    assert plain_file_handlers(logger) == 1
    # force_color: termcolor caches its FORCE_COLOR / tty answer for the process, so an earlier test
    # that coloured without the variable would otherwise leave this message plain.
    logger.warning(colored('warm', 'red', force_color=True))
    for h in logger.handlers:
        h.flush()
    text = (tmp_path / 'x.log').read_text()
    assert text.rstrip().endswith('WARNING - warm') and '\x1b' not in text
    assert '\x1b[31mwarm\x1b[0m' in capsys.readouterr().out  # the terminal keeps its colours


def _last_err_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_pretrained_refuses_a_checkpoint_of_a_whole_model(toy_run, capsys, pascal_root, monkeypatch):
    from mtlbench.cli import main
    monkeypatch.delenv('MTLBENCH_DEBUG', raising=False)
    ckpt = str(toy_run['work_dir'] / 'epoch_2.pth')
    base = ['--data-root', pascal_root, '--work-dir', str(toy_run['tmp'] / 'w2'), '--pretrained', ckpt, *IMG] + FAST
    # another method
    assert main(['run', '--method', 'full_ft', *base]) == 2
    line = _last_err_line(capsys)
    assert line.startswith('mtlbench run: error: --pretrained ') and 'was trained as mtlora r=64 (pascal_context' \
        in line and 'this run builds full_ft' in line
    # another variant (a shape-changing option)
    assert main(['run', '--method', 'mtlora', *base, 'model.method.r=8']) == 2
    line = _last_err_line(capsys)
    assert 'was trained as mtlora r=64' in line and 'this run builds mtlora r=8' in line and 'method' in line
    # the same model: --pretrained is not how to continue it
    assert main(['run', '--method', 'mtlora', *base]) == 2
    line = _last_err_line(capsys)
    assert 'checkpoint of this same model (mtlora r=64' in line and '--resume' in line
    assert not (toy_run['tmp'] / 'w2').exists()


def test_override_check_accepts_mmengine_runtime_keys_and_refuses_typos():
    from mtlbench.config import ConfigError, find_config, load_config
    import mtlbench.methods  # noqa: F401
    path = find_config('mtlora', 'pascal_context')
    accepted = {
        'visualizer.vis_backends': [dict(type='LocalVisBackend')], 'visualizer.save_dir': '/tmp/vis',
        'default_hooks.checkpoint.interval': 5, 'default_hooks.checkpoint.save_best': 'auto',
        'default_hooks.logger.interval': 50, 'env_cfg.cudnn_benchmark': True,
        'env_cfg.mp_cfg.mp_start_method': 'spawn', 'env_cfg.dist_cfg.timeout': 600,
        'log_processor.window_size': 20, 'log_processor.num_digits': 6, 'log_level': 'DEBUG',
        'randomness.diff_rank_seed': True, 'custom_hooks': [], 'default_hooks.timer': None,
    }
    for key, value in accepted.items():
        cfg = load_config(path, {key: value})
        assert cfg[key.split('.')[0]] is not None, key
    cfg = load_config(path, {'default_hooks.early.type': 'EarlyStoppingHook', 'default_hooks.early.monitor': 'sal/mIoU'})
    assert cfg.default_hooks.early.monitor == 'sal/mIoU'
    refused = {
        'default_hooks.checkpoint.intervl': "default_hooks.checkpoint (CheckpointHook) has no option 'intervl'",
        'default_hooks.chekpoint.interval': "default_hooks has no hook 'chekpoint'",
        'visualizer.vis_backend': "visualizer (Visualizer) has no option 'vis_backend'",
        'env_cfg.cudnn_bench': "env_cfg has no option 'cudnn_bench'",
        'env_cfg.mp_cfg.start': "env_cfg.mp_cfg has no option 'start'",
        'log_processor.windowsize': "log_processor (LogProcessor) has no option 'windowsize'",
        'randomness.sed': "randomness has no option 'sed'",
        'log_level.x': 'log_level takes one value',
        'optim_wrapper.optimizer.lrr': "the config has no key 'optim_wrapper.optimizer.lrr'",
        'train_cfg.max_epoch': "the config has no key 'train_cfg.max_epoch'",
    }
    for key, message in refused.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, {key: 1})


