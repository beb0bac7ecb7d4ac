"""The command line explains itself: help and defaults on every flag, examples, a method's
options, --help without torch, one-line user errors and tracebacks for bugs (--debug)."""
from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mtlbench.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subparsers(sub, prefix + (name,))


def test_help_does_not_import_torch():
    code = ('import sys, mtlbench.cli as c\n'
            'p = c.build_parser()\n'
            'for argv in ([], ["run"], ["bench"], ["leaderboard"], ["methods"], ["data", "synth"]):\n'
            '    try:\n'
            '        p.parse_args(argv + ["--help"])\n'
            '    except SystemExit:\n'
            '        pass\n'
            'heavy = [m for m in ("torch", "mmengine", "numpy") if m in sys.modules]\n'
            'print("HEAVY", heavy)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == 'HEAVY []'
    assert 'examples:' in out.stdout and 'mtlbench run --method faar' in out.stdout


def test_every_flag_has_help_and_shows_its_default():
    parser = build_parser()
    seen = 0
    for path, sub in _subparsers(parser):
        text = sub.format_help()
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                       argparse._SubParsersAction)):
                continue
            seen += 1
            assert action.help and len(action.help) > 8, (path, action.dest)
            unset = action.default is None or action.default is False or action.default is argparse.SUPPRESS
            if action.option_strings and not unset:
                assert f'(default: {action.default})' in ' '.join(text.split()), (path, action.dest)
    assert seen > 60
    run_help = ' '.join(build_parser()._subparsers._group_actions[0].choices['run'].format_help().split())
    assert '--seed SEED seed of initialisation, data order and augmentation (default: 0)' in run_help
    assert '--debug' in run_help and 'MTLBENCH_DEBUG' in run_help


def test_methods_lists_a_methods_options_with_help_and_defaults(capsys):
    from mtlbench.method import METHODS
    import mtlbench.methods  # noqa: F401
    assert main(['methods', 'mtlora']) == 0
    out = capsys.readouterr().out
    cls = METHODS.get('mtlora')
    for f in dataclasses.fields(cls.config_cls):  # every option, its help, its default
        line = next(line for line in out.splitlines() if line.strip().startswith(f.name + ' '))
        assert f.metadata['help'] in line and f'default: {f.default!r}' in line, line
    assert 'configs/mtlora/mtlora-r16_swin-t_pascal-context.py: r=16' in out


def test_unknown_method_in_methods_is_one_line(capsys):
    assert main(['methods', 'lora_xl']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'lora_xl'" in err[0] and 'mtlora' in err[0]


def test_user_errors_are_one_line_bugs_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv('MTLBENCH_DEBUG', raising=False)
    assert main(['leaderboard', '--format', 'md,docx']) == 2
    err = capsys.readouterr().err
    assert err.strip() == "mtlbench leaderboard: error: --format: unknown format(s) ['docx']; valid: md, csv, tex, json"
    # --debug (before or after the command) shows the traceback of the same user error
    from mtlbench.errors import OptionError
    for argv in (['--debug', 'leaderboard', '--format', 'docx'], ['leaderboard', '--format', 'docx', '--debug']):
        with pytest.raises(OptionError):
            main(argv)
    monkeypatch.setenv('MTLBENCH_DEBUG', '1')
    with pytest.raises(OptionError):
        main(['leaderboard', '--format', 'docx'])
    monkeypatch.delenv('MTLBENCH_DEBUG')

    # a plain ValueError / KeyError from inside is a bug: not shortened
    def buggy(args):
        return {}['semseg']
    import mtlbench.cli as cli
    monkeypatch.setattr(cli, 'cmd_leaderboard', buggy)
    with pytest.raises(KeyError):
        main(['leaderboard'])


def test_documented_override_keys_exist():
    """Every `key=value` the docs show (README, --help examples, docstrings) is accepted."""
    from mtlbench.config import check_overrides, find_config, load_config
    from mtlbench.method import method_options
    from mtlbench.registry import METHODS
    import mtlbench.methods  # noqa: F401

    texts = [ROOT / 'README.md', ROOT / 'mtlbench' / 'cli.py', ROOT / 'mtlbench' / 'sweep.py', ROOT / 'mtlbench' / 'run.py']
    keys = set()
    for path in texts:
        text = path.read_text()
        keys |= set(re.findall(r'(?<![\w.])((?:model|method|optim_wrapper|train_dataloader|val_dataloader|data_protocol|'
                               r'default_hooks|visualizer|env_cfg|log_processor|auto_scale_lr|randomness)'
                               r'(?:\.[a-z_0-9]+)+)=', text))
        keys |= set(re.findall(r'\| `((?:data_protocol|train_dataloader)\.[a-z_]+)` \|', text))
    keys = {k for k in keys if 'NAME' not in k}
    assert {'model.method.r', 'default_hooks.checkpoint.interval', 'data_protocol.label_pad'} <= keys, keys
    options = {o['name'] for m in METHODS.module_dict for o in method_options(m)}
    cfg = load_config(find_config('mtlora', 'pascal_context'))
    for key in sorted(keys):
        if key.startswith('model.method.'):
            assert key.split('.')[2] in options, key
        else:
            check_overrides(cfg, {key: None})
