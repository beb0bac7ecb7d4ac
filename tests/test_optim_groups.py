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


DEAD = ('backbone.layers.3.blocks.1.mlp.fc2.lora_A', 'backbone.layers.3.blocks.1.mlp.fc2.lora_B')


def build_toy(**method) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel('pascal_context', dict(type='mtlora', r=4, task_r=2, dropout=0.0, **method),
                          dict(arch='toy', img_size=(128, 128), window_size=4, drop_path_rate=0.0), tasks=TASKS)


def test_mtlora_dead_shared_fc2_is_dead_and_never_changes():
    """The shared LoRA of the network's last fc2 feeds no output (checked by perturbing it), and
    AdamW steps with weight decay leave it bit-identical while its neighbours move."""
    model = build_toy()
    declared = sorted(f'{n}.{p}' for n, m in model.named_modules() for p in getattr(m, 'unused_parameters', ()))
    assert declared == sorted(DEAD)
    params = dict(model.named_parameters())
    live = 'backbone.layers.3.blocks.1.mlp.fc1.lora_B'
    x = torch.randn(2, 3, 128, 128)
    model.eval()
    with torch.no_grad():
        before = model(x)
        for name in (DEAD[1], live):
            saved = params[name].clone()
            params[name].normal_()
            after = model(x)
            same = all(torch.equal(before[t], after[t]) for t in TASKS)
            assert same == (name in DEAD), name
            params[name].copy_(saved)
    model.train()
    ctor = ReferenceOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-2, weight_decay=WD)), {})
    optimizer = ctor(model).optimizer
    start = {n: p.detach().clone() for n, p in params.items()}
    for _ in range(3):
        optimizer.zero_grad()
        sum(v.square().mean() for v in model(x).values()).backward()
        for name in DEAD:
            assert params[name].grad is not None and not params[name].grad.any()  # zero, not None (DDP)
        optimizer.step()
    for name in DEAD:
        assert torch.equal(params[name], start[name]), name
    neighbour = 'backbone.layers.3.blocks.1.mlp.fc1.lora_A'
    assert not torch.equal(params[neighbour], start[neighbour])
    assert params[DEAD[0]].requires_grad  # still counted trainable, as in the reference


def test_task_includes_shared_keeps_fc2_shared_lora_live():
    model = build_toy(task_includes_shared=True)
    assert not any(getattr(m, 'unused_parameters', ()) for m in model.modules())


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
    for name in DEAD:  # decayed by the reference's rule, but outside its graph: its AdamW skips them
        assert wd.pop(name) == 0.0 and float(mapped.pop(name)) == WD
    assert {n: float(v) for n, v in mapped.items() if v.ndim == 0} == \
        {n: wd[n] for n, v in mapped.items() if v.ndim == 0}
    for n, v in mapped.items():  # per-task factors were stacked: all tasks share one setting
        assert (v == wd[n]).all(), n


@pytest.mark.skipif(not REF, reason='MTLBENCH_MTLORA_REF (a checkout of scale-lab/MTLoRA) not set')
def test_unused_parameters_are_the_references_ungraphed_ones():
    """What mtlbench declares unused is exactly what the reference leaves without a gradient."""
    tools = os.path.join(os.path.dirname(__file__), '..', 'tools', 'parity_vs_reference.py')
    spec = importlib.util.spec_from_file_location('parity_vs_reference', tools)
    cmp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cmp)
    torch.manual_seed(0)
    ref = cmp.build_reference(REF, 4, 2, 128, plus=False, arch='toy', window_size=4, drop_path_rate=0.0, dropout=0.0)
    outputs = ref(torch.randn(2, 3, 128, 128))
    sum(v.square().mean() for v in outputs.values()).backward()
    ungraphed = [n for n, p in ref.named_parameters() if p.requires_grad and p.grad is None]
    assert ungraphed  # the reference does leave some out
    mapped = set(cmp.map_reference_to_ours({n: torch.zeros(1) for n in ungraphed}))
    ours = build_toy()
    declared = {f'{n}.{p}' for n, m in ours.named_modules() for p in getattr(m, 'unused_parameters', ())}
    assert mapped == declared
