"""The pretraining source of a Swin checkpoint (ImageNet-1K / 22K) is inferred or given and kept
on the backbone for the run record (mtlbench/backbones/pretraining.py)."""
import pytest
import torch

from mtlbench.backbones import SwinBackbone
from mtlbench.backbones.pretraining import pretrained_on_from_name, resolve_pretrained_on

# file names of the official releases (Microsoft's Swin README, timm's model tags) and what they are
RELEASE_NAMES = {
    'checkpoints/swin_tiny_patch4_window7_224.pth': 'in1k',
    'swin_small_patch4_window7_224.pth': 'in1k',
    'swin_base_patch4_window12_384.pth': 'in1k',
    'swin_tiny_patch4_window7_224_22k.pth': 'in22k',
    'swin_base_patch4_window7_224_22k.pth': 'in22k',
    'swin_large_patch4_window12_384_22k.pth': 'in22k',
    'swin_tiny_patch4_window7_224_22kto1k_finetune.pth': 'in22k-ft-in1k',
    'swin_base_patch4_window7_224_22kto1k.pth': 'in22k-ft-in1k',
    'hub/swin_tiny_patch4_window7_224.ms_in1k/model.safetensors': 'in1k',
    'hub/swin_tiny_patch4_window7_224.ms_in22k/model.safetensors': 'in22k',
    'hub/swin_tiny_patch4_window7_224.ms_in22k_ft_in1k/model.safetensors': 'in22k-ft-in1k',
    'my_backbone.pth': None,
    'work_dirs/run/epoch_21.pth': None,
}


@pytest.mark.parametrize('name, source', sorted(RELEASE_NAMES.items()))
def test_release_names(name, source):
    assert pretrained_on_from_name(name) == source


def _toy_checkpoint(path, head_classes):
    state = SwinBackbone('toy', (128, 128), window_size=4).state_dict()
    state['head.weight'] = torch.zeros(head_classes, 128)
    torch.save({'model': state}, path)
    return str(path)


def test_backbone_records_the_source(tmp_path):
    neutral22k = _toy_checkpoint(tmp_path / 'mine.pth', 21841)
    assert SwinBackbone('toy', (128, 128), window_size=4, pretrained=neutral22k).pretrained_on == 'in22k'
    neutral1k = _toy_checkpoint(tmp_path / 'other.pth', 1000)  # 1K or 22K-then-1K: not decidable
    assert SwinBackbone('toy', (128, 128), window_size=4, pretrained=neutral1k).pretrained_on == 'unknown'
    given = SwinBackbone('toy', (128, 128), window_size=4, pretrained=neutral1k, pretrained_on='in22k-ft-in1k')
    assert given.pretrained_on == 'in22k-ft-in1k'
    assert SwinBackbone('toy', (128, 128), window_size=4).pretrained_on == 'none'
    named = _toy_checkpoint(tmp_path / 'swin_tiny_patch4_window7_224_22k.pth', 1000)
    assert resolve_pretrained_on(named, 'in1k') == 'in1k'   # the user's word is kept (a warning is logged)
    assert resolve_pretrained_on(named) == 'in22k'


def test_bad_values_fail_in_one_line():
    with pytest.raises(ValueError, match="pretrained_on='imagenet'; valid: in1k, in22k"):
        SwinBackbone('toy', (128, 128), window_size=4, pretrained_on='imagenet')
    with pytest.raises(ValueError, match='no pretrained checkpoint is given'):
        resolve_pretrained_on(None, 'in1k')


def test_source_splits_tables_and_baselines():
    """Same file name, declared sources differ: never one table, never each other's baseline;
    an older record without ``pretrained_on`` reads it from the name."""
    from test_records import PASCAL_BASE, run_record

    from mtlbench.reporting import comparability as C
    from mtlbench.reporting.schema import validate_record

    old = run_record()                                     # no pretrained_on: the official 1K name
    assert C.record_pretrained_on(old) == 'in1k'
    same = run_record(pretrained_on='in1k')
    other = run_record(pretrained_on='in22k-ft-in1k')
    assert C.comparability_key(old) == C.comparability_key(same) != C.comparability_key(other)
    assert C.comparability_key(other)[5] == 'swin_tiny_patch4_window7_224.pth (in22k-ft-in1k)'
    baselines = [run_record('single_task', '', values={t: v}, pretrained_on='in22k-ft-in1k')
                 for t, v in PASCAL_BASE.items()]
    assert C.compute_delta_m_for_record(other, baselines)[0] is not None
    value, reason = C.compute_delta_m_for_record(same, baselines)
    assert value is None and '(in1k)' in reason
    assert not validate_record(same) and any('pretrained_on' in p for p in validate_record(run_record(pretrained_on='22k')))
