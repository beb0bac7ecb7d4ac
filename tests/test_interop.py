"""Checkpoints from elsewhere and ``--eval-only``'s strict loading.

* A checkpoint in the MTLoRA reference's format (its ``main.py`` saves ``{'model': state_dict,
  'config': yacs CfgNode, ...}``), saved from the reference model itself (built on CPU from
  ``MTLBENCH_MTLORA_REF``; skipped without it), imports into mtlbench's MTLoRA and gives the
  reference's outputs; ``mtlbench run --eval-only`` scores it. The same for DiTASK's model (same
  format, built from ``MTLBENCH_DITASK_REF``).
* ``--eval-only`` refuses, with one line naming both, an mtlbench checkpoint of another method
  or of MTLoRA at another rank (it used to load non-strictly and score it), and a file that is
  no checkpoint; nothing in a checkpoint is executed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.engine.checkpoint import CheckpointError
from mtlbench.interop import (CheckpointMismatchError, ReferenceCheckpointError, import_reference_state,
                              load_for_evaluation, mtlbench_to_reference, reference_to_mtlbench)
from mtlbench.model import MultiTaskModel
from mtl_testing import FAST, IMG, run_cli

REF_DIR = os.environ.get('MTLBENCH_MTLORA_REF')
DITASK_REF_DIR = os.environ.get('MTLBENCH_DITASK_REF')  # a checkout of Malygossssss/DiTASK @ 1ef40ae
TASKS = ('semseg', 'human_parts', 'sal', 'normals')
TOY = dict(arch='toy', img_size=128, window_size=4, decoder_channels=(4, 8, 8, 8))
R, TASK_R = 8, 2  # distinct ranks: a swapped or mis-stacked factor cannot fit by accident


def _toy_mtlbench(r=R, task_r=TASK_R, method='mtlora'):
    opts = dict(type=method, r=r, task_r=task_r) if method == 'mtlora' else dict(type=method)
    return MultiTaskModel('pascal_context', opts, dict(arch='toy', img_size=(128, 128), window_size=4),
                          tasks=TASKS, decoder=dict(channels=(4, 8, 8, 8))).eval()


def _cli_error(args, capsys) -> str:
    """Run the CLI as a user does (one-line errors, exit 2) and return stderr."""
    from mtlbench.cli import main
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------- the reference's own model
def _parity_tool():
    path = Path(__file__).resolve().parents[1] / 'tools' / 'parity_vs_reference.py'
    spec = importlib.util.spec_from_file_location('parity_vs_reference', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _yacs_config():
    """The run config as the reference pickles it: a yacs ``CfgNode`` (a stand-in of the same
    class path and instance flags when yacs is not installed)."""
    try:
        from yacs.config import CfgNode
    except ImportError:
        class CfgNode(dict):  # yacs 0.1.8's layout: dict items + four instance flags
            def __init__(self, init=None):
                super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in (init or {}).items()})
                self.__dict__.update({'__immutable__': True, '__deprecated_keys__': set(),
                                      '__renamed_keys__': {}, '__new_allowed__': False})
        CfgNode.__module__, CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
        sys.modules.setdefault('yacs', types.ModuleType('yacs'))
        sys.modules['yacs.config'] = types.SimpleNamespace(CfgNode=CfgNode)
    ranks = {'shared': [R], **{t: [TASK_R] for t in TASKS}}
    return CfgNode({'TASKS': list(TASKS), 'DATA': {'IMG_SIZE': 128},
                    'MODEL': {'MTLORA': {'ENABLED': True, 'R': [R] * 4, 'R_PER_TASK': ranks,
                                         'DOWNSAMPLER_ENABLED': False}}})


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """The reference's toy-size model (random LoRA B and BN statistics so every tensor matters)
    saved as its ``main.py`` saves checkpoints."""
    if not REF_DIR:
        pytest.skip('MTLBENCH_MTLORA_REF (a checkout of scale-lab/MTLoRA) not set')
    torch.manual_seed(0)
    ref = _parity_tool().build_reference(REF_DIR, R, TASK_R, TOY['img_size'], False, arch=TOY['arch'],
                                          window_size=TOY['window_size'], decoder_channels=TOY['decoder_channels'])
    with torch.no_grad():
        for name, prm in ref.named_parameters():
            if 'lora_' in name and '_B' in name:
                prm.normal_(0, 0.02)
        for name, buf in ref.named_buffers():
            if name.endswith('running_mean'):
                buf.normal_(0, 0.1)
            elif name.endswith('running_var'):
                buf.uniform_(0.5, 1.5)
    ref.eval()
    path = tmp_path_factory.mktemp('ref') / 'ckpt_epoch_299.pth'
    torch.save({'model': ref.state_dict(), 'optimizer': {'state': {}, 'param_groups': []}, 'lr_scheduler': {},
                'max_accuracy': 0.0, 'scaler': {}, 'epoch': 299, 'config': _yacs_config()}, path)
    return ref, path


@pytest.mark.parametrize('attention', ['plain', 'sdpa'])
def test_reference_checkpoint_gives_reference_outputs(reference, attention):
    """Both attention paths (CPU's plain product, the GPU's SDPA with a broadcast bias) match."""
    ref, path = reference
    ours = _toy_mtlbench()
    assert load_for_evaluation(str(path), ours) == 'mtlora-reference'
    for module in ours.modules():
        if hasattr(module, 'use_sdpa'):
            module.use_sdpa = attention == 'sdpa'
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_ref, out_ours = ref(x), ours(x)
    for t in TASKS:
        assert out_ours[t].shape == out_ref[t].shape
        assert (out_ours[t] - out_ref[t]).abs().max().item() < 1e-5, t
        assert out_ref[t].abs().max().item() > 1e-2  # not a comparison of zeros


def test_mtlora_plus_reference_weights_give_reference_outputs():
    """MTLoRA+ (LoRA on the PatchMerging reductions, which move from stage i to stage i + 1)."""
    if not REF_DIR:
        pytest.skip('MTLBENCH_MTLORA_REF (a checkout of scale-lab/MTLoRA) not set')
    torch.manual_seed(0)
    ref = _parity_tool().build_reference(REF_DIR, R, TASK_R, TOY['img_size'], True, arch=TOY['arch'],
                                          window_size=TOY['window_size'], decoder_channels=TOY['decoder_channels'])
    with torch.no_grad():
        for name, prm in ref.named_parameters():
            if 'lora_' in name and '_B' in name:
                prm.normal_(0, 0.02)
    ours = MultiTaskModel('pascal_context', dict(type='mtlora', r=R, task_r=TASK_R, plus=True),
                          dict(arch='toy', img_size=(128, 128), window_size=4), tasks=TASKS,
                          decoder=dict(channels=(4, 8, 8, 8))).eval()
    import_reference_state(ours, ref.eval().state_dict())
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out_ref, out_ours = ref(x), ours(x)
    assert max((out_ours[t] - out_ref[t]).abs().max().item() for t in TASKS) < 1e-5


def test_ditask_reference_weights_give_reference_outputs(tmp_path):
    """DiTASK's checkpoints have MTLoRA's layout with thetas for factors; the release's inert
    per-task thetas on qkv are dropped (mtlbench's default) or kept (``inert_qkv_task_theta``)."""
    if not DITASK_REF_DIR:
        pytest.skip('MTLBENCH_DITASK_REF (a checkout of Malygossssss/DiTASK @ 1ef40ae) not set')
    pytest.importorskip('difw')
    torch.manual_seed(0)
    ref = _parity_tool().build_reference_ditask(DITASK_REF_DIR, 8, 3, TOY['img_size'], arch=TOY['arch'],
                                                 window_size=TOY['window_size'],
                                                 decoder_channels=TOY['decoder_channels']).eval()
    path = tmp_path / 'ditask.pth'
    torch.save({'model': ref.state_dict(), 'epoch': 299}, path)
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out_ref = ref(x)
    for inert in (False, True):
        ours = MultiTaskModel('pascal_context', dict(type='ditask', num_cells=8, task_num_cells=3,
                                                     inert_qkv_task_theta=inert),
                              dict(arch='toy', img_size=(128, 128), window_size=4), tasks=TASKS,
                              decoder=dict(channels=(4, 8, 8, 8))).eval()
        assert load_for_evaluation(str(path), ours) == 'ditask-reference'
        with torch.no_grad():
            out_ours = ours(x)
        assert max((out_ours[t] - out_ref[t]).abs().max().item() for t in TASKS) < 1e-5, inert
    back = mtlbench_to_reference(ours.state_dict(), TASKS, 'ditask')  # the inert ones kept: exact inverse
    expected = {k: v for k, v in ref.state_dict().items() if not k.endswith(('relative_position_index', 'attn_mask'))}
    assert sorted(back) == sorted(expected) and all(torch.equal(back[k], expected[k]) for k in expected)


def test_export_restores_the_reference_state(reference):
    """mtlbench -> reference names is the exact inverse: every reference tensor comes back,
    bit for bit, except the buffers the reference recomputes."""
    ref, _ = reference
    ours = _toy_mtlbench()
    import_reference_state(ours, ref.state_dict())
    back = mtlbench_to_reference(ours.state_dict(), TASKS)
    expected = {k: v for k, v in ref.state_dict().items() if not k.endswith(('relative_position_index', 'attn_mask'))}
    assert sorted(back) == sorted(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)


def test_reference_checkpoint_at_another_rank_is_refused(reference):
    _, path = reference
    with pytest.raises(ReferenceCheckpointError, match=r'r=8, task_r=2.*does not fit mtlora r=8.*shape'):
        load_for_evaluation(str(path), _toy_mtlbench(task_r=4))
    with pytest.raises(ReferenceCheckpointError, match='holds MTLoRA weights; this run builds ditask'):
        load_for_evaluation(str(path), _toy_mtlbench(method='ditask'))


def test_eval_only_scores_a_reference_checkpoint(reference, pascal_root, tmp_path):
    """The CLI scores the imported weights: the same metrics as the same weights saved as an
    mtlbench checkpoint (a run that scored the untrained model would differ)."""
    ref, path = reference
    ours = _toy_mtlbench()
    import_reference_state(ours, ref.state_dict())
    torch.save({'meta': {}, 'state_dict': ours.state_dict()}, tmp_path / 'ours.pth')
    metrics = {}
    for name, ckpt in (('ref', path), ('ours', tmp_path / 'ours.pth')):
        rc = run_cli(['run', '--method', 'mtlora', '--data-root', pascal_root, '--work-dir', str(tmp_path / name),
                      '--eval-only', str(ckpt), '--max-samples', '4', '--num-workers', '0', *IMG] + FAST
                     + [f'model.method.r={R}', f'model.method.task_r={TASK_R}'])
        assert rc == 0
        out = json.loads((tmp_path / name / 'eval_metrics.json').read_text())
        metrics[name] = out['metrics']
        assert out['checkpoint_format'] == {'ref': 'mtlora-reference', 'ours': 'mtlbench'}[name]
    assert {'semseg/mIoU', 'normals/mean'} <= set(metrics['ref'])
    assert metrics['ref'] == pytest.approx(metrics['ours'], rel=1e-6, abs=1e-6)


# ------------------------------------------------------------- mtlbench's own checkpoints
@pytest.fixture(scope='module')
def mtlora_checkpoint(pascal_root, tmp_path_factory):
    """A real one-epoch mtlbench MTLoRA checkpoint (r=8, task_r=2, toy backbone)."""
    work = tmp_path_factory.mktemp('train')
    assert run_cli(['run', '--method', 'mtlora', '--data-root', pascal_root, '--work-dir', str(work / 'w'),
                    '--results-dir', str(work / 'runs'), '--epochs', '1', '--batch-size', '2', '--max-samples', '4',
                    '--num-workers', '0', *IMG] + FAST + [f'model.method.r={R}', f'model.method.task_r={TASK_R}']) == 0
    return str(work / 'w' / 'epoch_1.pth')


def _eval_args(pascal_root, tmp_path, ckpt, method='mtlora'):
    return ['run', '--method', method, '--data-root', pascal_root, '--work-dir', str(tmp_path / 'e'),
            '--eval-only', ckpt, '--max-samples', '2', '--num-workers', '0', *IMG] + FAST


def test_eval_only_refuses_mtlora_at_another_rank(mtlora_checkpoint, pascal_root, tmp_path, capsys):
    err = _cli_error(_eval_args(pascal_root, tmp_path, mtlora_checkpoint) + ['model.method.r=16'], capsys)
    assert 'trained as mtlora r=8' in err and 'this run builds mtlora r=16' in err
    assert not (tmp_path / 'e' / 'eval_metrics.json').exists()
    # same shared rank, another task rank: the variant label agrees, the shapes do not
    err = _cli_error(_eval_args(pascal_root, tmp_path, mtlora_checkpoint) + ['model.method.r=8'], capsys)
    assert 'task_r=2' in err and 'task_r=4' in err and 'shape' in err


def test_eval_only_refuses_another_method(mtlora_checkpoint, pascal_root, tmp_path, capsys):
    err = _cli_error(_eval_args(pascal_root, tmp_path, mtlora_checkpoint, method='ditask'), capsys)
    assert 'trained as mtlora r=8' in err and 'this run builds ditask' in err


def test_eval_only_loads_a_matching_checkpoint_exactly(mtlora_checkpoint):
    from mtlbench.engine import safe_torch_load
    model = _toy_mtlbench()
    assert load_for_evaluation(mtlora_checkpoint, model) == 'mtlbench'
    saved = safe_torch_load(mtlora_checkpoint)['state_dict']
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------ malformed checkpoints
def test_malformed_checkpoints_are_one_clear_error(tmp_path):
    model = _toy_mtlbench()
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='garbage.pth: cannot be loaded as a checkpoint'):
        load_for_evaluation(str(garbage), model)
    other = tmp_path / 'other.pth'
    torch.save({'weights': {'w': torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match=r"neither an mtlbench checkpoint .* found \['weights'\]"):
        load_for_evaluation(str(other), model)
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_for_evaluation(str(tmp_path / 'absent.pth'), model)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('echo pwned > pwned.txt',))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.zeros(1)}, 'config': _RunsCode()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match='outside the allow-list, not loaded: .*system'):
        load_for_evaluation(str(path), _toy_mtlbench())
    assert not (tmp_path / 'pwned.txt').exists()


def test_reference_layout_with_missing_and_extra_tensors_names_them(tmp_path):
    """A reference-format file (written by the exporter, so no reference checkout is needed)
    with one tensor removed and one added: both are named, nothing is loaded."""
    model = _toy_mtlbench()
    state = mtlbench_to_reference(model.state_dict(), TASKS)
    state.pop('backbone.layers.0.blocks.0.attn.qkv.lora_shared_A')
    state['backbone.layers.0.blocks.0.attn.qkv.lora_extra'] = torch.zeros(1)
    path = tmp_path / 'ref.pth'
    torch.save({'model': state}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ReferenceCheckpointError) as err:
        load_for_evaluation(str(path), model)
    msg = str(err.value)
    assert 'attn.qkv.lora_extra' in msg and 'backbone.layers.0.blocks.0.attn.qkv.lora_A' in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_reference_task_factors_must_cover_exactly_the_model_tasks():
    state = mtlbench_to_reference(_toy_mtlbench().state_dict(), TASKS)
    dropped = {k: v for k, v in state.items() if not k.endswith('.lora_tasks_A.sal')}
    with pytest.raises(ReferenceCheckpointError, match="tasks .* in the checkpoint, the model has"):
        reference_to_mtlbench(dropped, TASKS)


def test_declared_config_is_read_as_data_never_run(tmp_path, monkeypatch):
    """What an mtlbench checkpoint was trained as comes from mmengine's config text, parsed as
    literals: code in it is not run, and the checkpoint is then checked by its tensors alone."""
    monkeypatch.chdir(tmp_path)
    model = _toy_mtlbench()
    text = "model = dict(method=dict(type=__import__('os').system('echo pwned > pwned.txt')))"
    path = tmp_path / 'crafted.pth'
    torch.save({'meta': {'cfg': text}, 'state_dict': _toy_mtlbench(r=4).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match='without a readable config.*shape'):
        load_for_evaluation(str(path), model)
    assert not (tmp_path / 'pwned.txt').exists()
