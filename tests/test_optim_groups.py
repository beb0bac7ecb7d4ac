"""Weight-decay groups equal the MTLoRA reference's ``set_weight_decay`` (mtlbench/optim.py).

The hand-listed test always runs; the reference test builds the reference model on CPU from the
checkout in ``MTLBENCH_MTLORA_REF`` and skips without it.
"""
import importlib.util
import os

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.model import MultiTaskModel
from mtlbench.optim import ReferenceOptimWrapperConstructor
from mtlbench.protocol import departures

TASKS = ('semseg', 'human_parts', 'sal', 'normals')
WD = 0.05


def build(method: dict) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel('pascal_context', method, dict(arch='tiny', img_size=(224, 224)), tasks=TASKS)


def decay_of(model, **paramwise) -> dict:
    ctor = ReferenceOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=WD)), paramwise)
    optimizer = ctor(model).optimizer
    by_id = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def test_mtlora_groups_hand_listed():
    wd = decay_of(build(dict(type='mtlora', r=4, task_r=2)))
    expected = {
        'backbone.layers.0.blocks.0.attn.relative_position_bias_table': WD,  # reference decays it
        'backbone.layers.1.downsample.reduction.weight': WD,
        'backbone.patch_embed.proj.weight': WD,
        'backbone.patch_embed.proj.bias': 0.0,
        'backbone.layers.0.blocks.0.norm1.weight': 0.0,
        'backbone.layers.0.blocks.0.attn.qkv.lora_A': WD,
        'decoder.heads.semseg.conv1.weight': WD,
        'decoder.heads.semseg.conv1.bias': 0.0,
        'decoder.heads.semseg.bn.weight': 0.0,
        'decoder.downsamplers.semseg.convs.0.weight': WD,
    }
    assert {n: wd[n] for n in expected} == expected
    task_factor = next(n for n in wd if n.endswith('lora_task_A'))
    assert wd[task_factor] == WD  # stacked per-task 2-D factors: 3-D here, decayed in both


def test_rel_pos_no_decay_departure():
    wd = decay_of(build(dict(type='mtlora', r=4, task_r=2)), rel_pos_decay_mult=0.0)
    assert wd['backbone.layers.2.blocks.3.attn.relative_position_bias_table'] == 0.0
    assert wd['backbone.layers.2.blocks.3.attn.qkv.lora_A'] == WD
    assert departures({'optim_wrapper': {'paramwise_cfg': {'rel_pos_decay_mult': 0.0}}}) == ['rel-pos-no-decay']
    assert departures({'optim_wrapper': {'paramwise_cfg': {'rel_pos_decay_mult': 1.0}}}) == []


@pytest.mark.parametrize('task_filter, undecayed, decayed', [
    ('dynamic', ('tad_tap_std', 'tad_tap_mean', 'kernel_gen.bias'), ('kernel_gen.weight',)),
    ('static', ('tad_bias',), ('tad_weight',)),
])
def test_tadformer_filter_statistics_undecayed(task_filter, undecayed, decayed):
    """Stored 2-D here, 1-D in the reference: the method marks them (MethodModule.no_weight_decay)."""
    wd = decay_of(build(dict(type='tadformer', r=4, task_filter=task_filter)))
    for suffix, want in [(s, 0.0) for s in undecayed] + [(s, WD) for s in decayed]:
        names = [n for n in wd if n.endswith(suffix)]
        assert names and all(wd[n] == want for n in names), (suffix, {n: wd[n] for n in names})


def test_custom_keys_take_precedence():
    wd = decay_of(build(dict(type='mtlora', r=4, task_r=2)), custom_keys={'lora_A': dict(decay_mult=0.0)})
    assert wd['backbone.layers.0.blocks.0.attn.qkv.lora_A'] == 0.0
    assert wd['backbone.layers.0.blocks.0.attn.qkv.lora_B'] == WD


# ------------------------------------------------------------------ against the reference code
REF = os.environ.get('MTLBENCH_MTLORA_REF')


@pytest.mark.skipif(not REF, reason='MTLBENCH_MTLORA_REF (a checkout of scale-lab/MTLoRA) not set')
def test_groups_equal_reference_set_weight_decay():
    tools = os.path.join(os.path.dirname(__file__), '..', 'tools', 'parity_vs_reference.py')
    spec = importlib.util.spec_from_file_location('parity_vs_reference', tools)
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    ref_model = cmp.build_reference(REF, 4, 2, 224, plus=False)
    ref_groups, ref_trainable = cmp.reference_weight_decay(REF, ref_model, WD)
    ours = build(dict(type='mtlora', r=4, task_r=2))
    wd = decay_of(ours)
    mapped = cmp.map_reference_to_ours({n: torch.tensor(ref_groups[n], dtype=torch.float64) for n in ref_trainable})
    assert set(mapped) == set(wd)
    assert {n: float(v) for n, v in mapped.items() if v.ndim == 0} == \
        {n: wd[n] for n, v in mapped.items() if v.ndim == 0}
    for n, v in mapped.items():  # per-task factors were stacked: all tasks share one setting
        assert (v == wd[n]).all(), n
