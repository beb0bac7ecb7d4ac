"""TADFormer release checkpoints (mtlbench/interop/tadformer_reference.py).

No released TADFormer checkpoint and no runnable release code are at hand (the repository may only
be read as text), so what these tests prove is limited and said so: the export has exactly the
key set and shapes the release's modules define (enumerated below by hand from its source text),
and import is the export's inverse (same outputs after a round trip). They cannot prove that a
real release checkpoint's values land where the release's forward reads them.
"""
import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.interop import (ReferenceCheckpointError, load_for_evaluation, mtlbench_to_reference,
                              mtlbench_to_tadformer)
from mtlbench.model import MultiTaskModel

TASKS = ('semseg', 'human_parts', 'sal', 'normals')
DIMS, DEPTHS, R = (16, 32, 64, 128), (2, 2, 2, 2), 4


def build(seed=0, method='tadformer', **options):
    torch.manual_seed(seed)
    opts = dict(r=R, **options) if method == 'tadformer' else dict(r=R, task_r=2)
    return MultiTaskModel('pascal_context', dict(type=method, **opts),
                          dict(arch='toy', img_size=(128, 128), window_size=4, drop_path_rate=0.0), tasks=TASKS).eval()


def release_layout(task_filter):
    """Backbone keys and shapes of the release's SwinTransformerTADFormer (toy sizes), written out
    from its module definitions: TAModuleLinear (linear, lora_shared_A/B, prompt_layernorm in every
    proj, lora_filter in task blocks), PatchMerging (reduction, norm, task_prompts_up), BasicLayer
    (prompt_gate), the model's task_prompts and PatchEmbed."""
    keys = {'backbone.task_prompts': (len(TASKS), DIMS[0]),
            'backbone.patch_embed.proj.weight': (DIMS[0], 3, 4, 4), 'backbone.patch_embed.proj.bias': (DIMS[0],),
            'backbone.patch_embed.norm.weight': (DIMS[0],), 'backbone.patch_embed.norm.bias': (DIMS[0],)}
    for i, (c, depth) in enumerate(zip(DIMS, DEPTHS)):
        keys[f'backbone.layers.{i}.prompt_gate'] = (1,)
        if i < 3:
            keys.update({f'backbone.layers.{i}.downsample.reduction.weight': (2 * c, 4 * c),
                         f'backbone.layers.{i}.downsample.norm.weight': (4 * c,),
                         f'backbone.layers.{i}.downsample.norm.bias': (4 * c,),
                         f'backbone.layers.{i}.downsample.task_prompts_up.weight': (2 * c, c)})
        heads = {16: 1, 32: 2, 64: 2, 128: 4}[c]
        for j in range(depth):
            b = f'backbone.layers.{i}.blocks.{j}.'
            for norm in ('norm1', 'norm2', 'attn.proj.prompt_layernorm'):
                keys[b + norm + '.weight'] = keys[b + norm + '.bias'] = (c,)
            keys[b + 'attn.relative_position_bias_table'] = (49, heads)
            for name, fin, fout in (('attn.qkv', c, 3 * c), ('attn.proj', c, c), ('mlp.fc1', c, 4 * c),
                                    ('mlp.fc2', 4 * c, c)):
                keys.update({b + name + '.linear.weight': (fout, fin), b + name + '.linear.bias': (fout,),
                             b + name + '.lora_shared_A': (R, fin), b + name + '.lora_shared_B': (fout, R)})
                if j == depth - 1 and name != 'attn.qkv':
                    if task_filter == 'static':   # NaiveConvFilter per task
                        for t in TASKS:
                            keys[f'{b}{name}.lora_filter.{t}.conv2d.weight'] = (R, 1, 3, 3)
                            keys[f'{b}{name}.lora_filter.{t}.conv2d.bias'] = (R,)
                    else:                          # DTF
                        keys.update({f'{b}{name}.lora_filter.conv.weight': (9 * R, R, 1, 1),
                                     f'{b}{name}.lora_filter.conv.bias': (9 * R,),
                                     f'{b}{name}.lora_filter.chan_FilterNorm.std': (9 * R,),
                                     f'{b}{name}.lora_filter.chan_FilterNorm.mean': (9 * R,)})
    return keys


@pytest.mark.parametrize('task_filter', ['static', 'dynamic'])
def test_export_has_the_release_layout(task_filter):
    model = build(task_filter=task_filter)
    exported = mtlbench_to_tadformer(model.state_dict(), TASKS)
    backbone = {k: tuple(v.shape) for k, v in exported.items() if k.startswith('backbone.')}
    assert backbone == release_layout(task_filter)
    # the decoder is the MTLoRA wrapper's (same MultiTaskSwin): named as the MTLoRA export names it
    decoder = {k: v for k, v in model.state_dict().items() if k.startswith('decoder.')}
    assert {k: v.shape for k, v in exported.items() if not k.startswith('backbone.')} == \
        {k: v.shape for k, v in mtlbench_to_reference(decoder, TASKS).items()}


@pytest.mark.parametrize('task_filter', ['static', 'dynamic'])
def test_round_trip_gives_the_same_outputs(tmp_path, task_filter):
    source = build(seed=0, task_filter=task_filter)
    path = tmp_path / 'tadformer_release.pth'
    state = mtlbench_to_tadformer(source.state_dict(), TASKS)
    for key in [k for k in state if k.endswith('prompt_layernorm.weight')]:
        state[key] = torch.randn_like(state[key])   # inert in the release outside the last blocks: dropped
    torch.save({'model': state}, path)
    target = build(seed=1, task_filter=task_filter)
    assert load_for_evaluation(str(path), target) == 'tadformer-reference'
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want, got = source(x), target(x)
    for t in TASKS:
        torch.testing.assert_close(got[t], want[t], rtol=0, atol=0)


def test_wrong_model_or_extra_key_is_one_line(tmp_path):
    state = mtlbench_to_tadformer(build(task_filter='static').state_dict(), TASKS)
    path = tmp_path / 'release.pth'
    torch.save({'model': state}, path)
    with pytest.raises(ReferenceCheckpointError, match='holds TADFormer weights; this run builds mtlora'):
        load_for_evaluation(str(path), build(method='mtlora'))
    with pytest.raises(ReferenceCheckpointError, match='does not fit'):   # release filter into the paper's DTF
        load_for_evaluation(str(path), build(task_filter='dynamic'))
    state['backbone.layers.0.blocks.0.attn.proj.lora_filter.semseg.conv2d.weight'] = torch.zeros(R, 1, 3, 3)
    torch.save({'model': state}, path)
    with pytest.raises(ReferenceCheckpointError, match=r"per-task filters of tasks \['semseg'\]"):
        load_for_evaluation(str(path), build(task_filter='static'))
