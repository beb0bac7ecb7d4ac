"""Bad input gets one clear line naming the problem (exit code 2), never a deep traceback; a loss
that turns NaN stops the run naming the task; nothing is written into the dataset or weights
folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mtlbench.cli import main
from mtl_testing import FAST, IMG, run_cli


def _err(capsys, argv) -> str:
    rc = main(argv)
    assert rc == 2
    return capsys.readouterr().err


def test_unknown_method_lists_the_valid_ones(capsys):
    err = _err(capsys, ['params', '--method', 'lora_xl'])
    assert "unknown method 'lora_xl'" in err and 'mtlora' in err and 'full_ft' in err


def test_unknown_dataset_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(['run', '--method', 'mtlora', '--dataset', 'cityscapes'])
    assert "invalid choice: 'cityscapes'" in capsys.readouterr().err


def test_task_the_dataset_lacks(capsys, nyud_root):
    err = _err(capsys, ['run', '--method', 'full_ft', '--dataset', 'nyudv2', '--data-root', nyud_root,
                        '--tasks', 'human_parts'])
    assert "task(s) ['human_parts'] not in dataset 'nyudv2'" in err and 'depth' in err


def test_override_of_a_missing_key(capsys):
    err = _err(capsys, ['params', '--method', 'mtlora', '--cfg-options', 'model.backbone.drop_pathrate=0.1'])
    assert "no key 'model.backbone.drop_pathrate'" in err and 'model.backbone.drop_path_rate' in err


def test_missing_data_root(capsys, tmp_path):
    err = _err(capsys, ['run', '--method', 'mtlora', '--data-root', str(tmp_path / 'nope')])
    assert 'does not exist' in err and 'nope' in err


def test_listed_files_absent_are_summarised(capsys, tmp_path, pascal_root):
    import shutil
    root = tmp_path / 'pascal'
    shutil.copytree(pascal_root, root)
    for p in sorted((root / 'JPEGImages').glob('*.jpg'))[:3]:
        p.unlink()
    err = _err(capsys, ['run', '--method', 'full_ft', '--data-root', str(root), '--work-dir', str(tmp_path / 'w'),
                        *IMG] + FAST)
    assert 'JPEGImages' in err and '3' in err


def test_pretrained_of_another_architecture(capsys, tmp_path, pascal_root):
    ckpt = tmp_path / 'other.pth'
    torch.save({'encoder.layer.0.weight': torch.zeros(4, 4)}, ckpt)
    err = _err(capsys, ['run', '--method', 'mtlora', '--data-root', pascal_root, '--pretrained', str(ckpt),
                        '--work-dir', str(tmp_path / 'w')])
    assert 'does not fit a Swin-tiny backbone' in err and str(ckpt) in err


def test_divergence_stops_naming_what_diverged(pascal_root, tmp_path):
    from mtlbench.model import NonFiniteLossError
    args = ['run', '--method', 'full_ft', '--data-root', pascal_root, '--work-dir', str(tmp_path / 'w'),
            '--results-dir', str(tmp_path / 'runs'), '--epochs', '1', '--num-workers', '0', '--batch-size', '2',
            *IMG] + FAST + ['optim_wrapper.optimizer.lr=1e30']
    # whichever check fires first names what diverged: the loss of a task, or (mtlbench.engine.state_guard)
    # a gradient or a weight, before the update / before anything is saved
    with pytest.raises(NonFiniteLossError, match=r"(loss of task '\w+' is (nan|inf|-inf)|the gradient of [\w.]+ is not "
                                                 r"finite|the update) at iteration \d+"):
        run_cli(args)
    assert not list((tmp_path / 'runs').glob('*.json')) if (tmp_path / 'runs').exists() else True


def test_pretrained_weights_survive_training_and_nothing_is_written_into_inputs(pascal_root, tmp_path):
    """The Runner calls model.init_weights() at train start; the loaded backbone must survive it.
    And neither the dataset root nor the weights folder is touched."""
    from mtlbench.backbones.swin import SwinBackbone
    weights = tmp_path / 'weights'
    weights.mkdir()
    torch.save(SwinBackbone('toy', (128, 128), window_size=4).state_dict(), weights / 'toy.pth')

    def snapshot(folder):
        return {str(p): p.stat().st_mtime_ns for p in Path(folder).rglob('*')}

    before_data, before_w = snapshot(pascal_root), snapshot(weights)
    assert run_cli(['run', '--method', 'decoder_only', '--data-root', pascal_root, '--pretrained',
                    str(weights / 'toy.pth'), '--work-dir', str(tmp_path / 'w'), '--results-dir',
                    str(tmp_path / 'runs'), '--epochs', '1', '--num-workers', '0', *IMG]
                   + FAST) == 0
    assert snapshot(pascal_root) == before_data and snapshot(weights) == before_w
    from mtlbench.engine import safe_torch_load
    trained = safe_torch_load(str(tmp_path / 'w' / 'epoch_1.pth'))['state_dict']
    loaded = torch.load(weights / 'toy.pth', weights_only=True)
    for k, v in loaded.items():  # decoder_only: the whole backbone is frozen at its pretrained values
        torch.testing.assert_close(trained[f'backbone.{k}'], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize('flag, value, expected', [
    ('--epochs', ['0'], '--epochs must be at least 1, got 0'),  # once trained the default 300 epochs
    ('--epochs', ['-1'], '--epochs must be at least 1, got -1'),  # once an mmengine message about end=-3
    ('--batch-size', ['0'], '--batch-size must be at least 1, got 0'),
    ('--max-samples', ['0'], '--max-samples must be at least 1, got 0'),
    ('--num-workers', ['-1'], '--num-workers must be 0 or more, got -1'),
    ('--img-size', ['0', '0'], '--img-size needs two positive sizes (H W), got [0, 0]'),
])
def test_counts_that_cannot_run_are_refused_not_ignored(capsys, tmp_path, flag, value, expected):
    err = _err(capsys, ['run', '--method', 'mtlora', '--work-dir', str(tmp_path / 'w'), flag, *value])
    assert err.strip().splitlines()[-1] == f'mtlbench run: error: {expected}'
    assert not (tmp_path / 'w').exists()


def _run_argv(pascal_root, tmp_path, results):
    return ['run', '--method', 'full_ft', '--data-root', pascal_root, '--work-dir', str(tmp_path / 'w'),
            '--results-dir', str(results), '--epochs', '1', '--num-workers', '0', '--batch-size', '2', *IMG] + FAST


def test_results_dir_that_is_a_file_is_refused_before_training(capsys, pascal_root, tmp_path):
    results = tmp_path / 'runs'
    results.write_text('not a directory')
    err = _err(capsys, _run_argv(pascal_root, tmp_path, results))
    assert f'--results-dir {results} is a file, not a directory' in err
    assert not list((tmp_path / 'w').glob('*.pth'))  # refused before any training


def test_full_disk_is_refused_before_training(capsys, pascal_root, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(shutil, 'disk_usage', lambda path: usage(2**30, 2**30 - 4096, 4096))
    err = _err(capsys, _run_argv(pascal_root, tmp_path, tmp_path / 'runs'))
    assert 'only 0.0 MiB free' in err and '--work-dir' in err
    assert not list((tmp_path / 'w').glob('*.pth'))


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0, reason='root writes into read-only directories')
def test_read_only_results_dir_is_refused_before_training(capsys, pascal_root, tmp_path):
    results = tmp_path / 'runs'
    results.mkdir()
    results.chmod(0o500)
    try:
        err = _err(capsys, _run_argv(pascal_root, tmp_path, results))
    finally:
        results.chmod(0o700)
    assert f'--results-dir {results} is not writable' in err


@pytest.mark.parametrize('split, content, expected', [
    ('train', b'', "split 'train' of pascal_context has no samples"),  # once mmengine's 'needs by_epoch=True'
    ('val', b'', "split 'val' of pascal_context has no samples"),  # once a ZeroDivisionError after training
    ('val', b'\xff\xfe2008_000002\n', 'split file is not UTF-8 text'),  # once unnamed
])
def test_unusable_split_file_is_named_before_training(capsys, pascal_root, tmp_path, split, content, expected):
    import shutil
    root = tmp_path / 'pascal'
    shutil.copytree(pascal_root, root)
    split_file = root / 'ImageSets' / 'Context' / f'{split}.txt'
    split_file.write_bytes(content)
    err = _err(capsys, _run_argv(str(root), tmp_path, tmp_path / 'runs'))
    assert expected in err and str(split_file) in err
    assert not list((tmp_path / 'w').glob('*.pth'))


@pytest.mark.parametrize('override, expected', [
    ('model.decoder.chanels=3', "the decoder has no option 'chanels' (model.decoder.chanels); did you mean ['channels']"),
    ('model.loss_weights.semseg2=3', "loss_weights for tasks not trained: ['semseg2']"),
])
def test_typos_in_decoder_and_loss_weight_overrides(capsys, pascal_root, tmp_path, override, expected):
    err = _err(capsys, _run_argv(pascal_root, tmp_path, tmp_path / 'runs') + [override])
    last = err.strip().splitlines()[-1]  # (a logger of an earlier test may complain about its closed stream)
    assert last.startswith('mtlbench run: error: ') and expected in last


def test_a_partial_loss_weight_override_keeps_the_other_reference_weights():
    from mtlbench.run import RunOptions, prepare_config
    from mtlbench.tasks import TASKS
    cfg = prepare_config(RunOptions(method='mtlora', cfg_options={'model.loss_weights.sal': 7.0}))
    assert cfg.model.loss_weights == {'sal': 7.0}  # the model fills the others from the reference weights
    assert TASKS['sal'].loss_weight != 7.0


def test_pretrained_with_non_tensor_values_or_nan_weights_is_refused(capsys, tmp_path, pascal_root):
    from mtlbench.backbones.swin import SwinBackbone
    odd, nan = tmp_path / 'odd.pth', tmp_path / 'nan.pth'
    torch.save({'patch_embed.proj.weight': 'hello'}, odd)  # once an AttributeError traceback
    state = SwinBackbone(arch='tiny').state_dict()
    state['patch_embed.proj.weight'][0, 0, 0, 0] = float('nan')  # once blamed on the learning rate
    torch.save(state, nan)
    for path, expected in ((odd, "value(s) are not, first ['patch_embed.proj.weight (str)']"),
                           (nan, "hold NaN or inf, first ['patch_embed.proj.weight']")):
        err = _err(capsys, ['run', '--method', 'mtlora', '--data-root', pascal_root, '--pretrained', str(path),
                            '--work-dir', str(tmp_path / 'w')])
        assert expected in err and str(path) in err
