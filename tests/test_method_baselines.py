"""The general PEFT baselines of the Polyhistor / MTLoRA tables (issue 16): what trains, counted
independently of the methods' code on a plain, unadapted Swin-T.

Published counts: the Polyhistor (NeurIPS 2022) / MTLoRA (CVPR 2024) tables print a count per
baseline, but no copy of those tables could be retrieved while writing this (not in
``shared/reference/papers.md`` nor in the stored corpora), so no count is compared with a
printed one here; the expected counts below are computed from the unadapted backbone.
"""
from __future__ import annotations

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.method import param_breakdown
from mtlbench.params import build_model_from_config

TOY = {'model.backbone.arch': 'toy', 'model.backbone.img_size': (224, 224)}


@pytest.fixture(scope='module')
def plain_tiny():
    return SwinBackbone('tiny', pretrained=None)


def _counts(method, **opts):
    cfg = dict(TOY) if opts.pop('toy', False) else {}
    cfg.update({f'model.method.{k}': v for k, v in opts.items()})
    model = build_model_from_config(method, 'pascal_context', cfg_options=cfg or None)
    return model, param_breakdown(model.backbone, model.decoder)


def test_bitfit_trains_exactly_the_backbone_biases(plain_tiny):
    biases = sum(p.numel() for n, p in plain_tiny.named_parameters() if n.endswith('.bias'))
    _, bitfit = _counts('bitfit')
    _, dec = _counts('decoder_only')
    assert bitfit['encoder_trainable'] == biases == 51_456
    assert bitfit['total_trainable'] == dec['total_trainable'] + biases
    assert bitfit['total'] == dec['total'] + biases   # deltas are the only added parameters


def test_bitfit_starts_as_the_frozen_model_and_only_shifts_biases():
    torch.manual_seed(0)
    model, _ = _counts('bitfit', toy=True)
    torch.manual_seed(0)
    ref, _ = _counts('decoder_only', toy=True)
    plain = {k.replace('.base_layer.', '.').replace('.base.', '.'): v
             for k, v in model.state_dict().items() if not k.endswith('bias_delta')}
    ref.load_state_dict(plain)   # strict: every key of the unadapted model is matched
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = model.eval()(x), ref.eval()(x)
    for t in a:   # zero deltas: identical to the unadapted model with the same weights
        torch.testing.assert_close(a[t], b[t])
    # a bias shift on one qkv changes the output; every weight stays frozen
    qkv = model.backbone.layers[0].blocks[0].attn.qkv
    qkv.bias_delta.data.fill_(0.5)
    with torch.no_grad():
        assert not torch.allclose(model(x)['semseg'], a['semseg'])
    frozen_weights = [n for n, p in model.backbone.named_parameters() if p.requires_grad and 'bias_delta' not in n]
    assert frozen_weights == []


def test_relative_bias_trains_exactly_the_position_tables(plain_tiny):
    heads = sum(b.attn.num_heads for stage in plain_tiny.layers for b in stage.blocks)
    assert heads == 2 * 3 + 2 * 6 + 6 * 12 + 2 * 24
    tables = sum(p.numel() for n, p in plain_tiny.named_parameters() if n.endswith('relative_position_bias_table'))
    assert tables == heads * (2 * 7 - 1) ** 2 == 23_322
    model, rel = _counts('relative_bias')
    _, dec = _counts('decoder_only')
    assert rel['encoder_trainable'] == tables and rel['adapter'] == 0
    assert rel['total_trainable'] == dec['total_trainable'] + tables and rel['total'] == dec['total']
    trainable = {n.rsplit('.', 1)[-1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {'relative_position_bias_table'}


def test_adapter_counts_and_identity_start(plain_tiny):
    widths = [b.dim for stage in plain_tiny.layers for b in stage.blocks]
    assert widths == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    # two bottlenecks per block (after proj, after fc2): C->C/4 and C/4->C, with biases
    expected = sum(2 * (2 * c * (c // 4) + c // 4 + c) for c in widths)
    norms = sum(p.numel() for m in plain_tiny.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters())
    _, ad = _counts('adapter')
    _, dec = _counts('decoder_only')
    assert ad['adapter'] == expected == 2_167_584
    assert ad['backbone_other'] == norms
    assert ad['total_trainable'] == dec['total_trainable'] + expected + norms
    _, ad8 = _counts('adapter', reduction_factor=8)
    assert ad8['adapter'] == sum(2 * (2 * c * (c // 8) + c // 8 + c) for c in widths)


def test_adapter_is_the_identity_at_init_and_sits_after_proj_and_fc2():
    from mtlbench.methods.adapter import BottleneckAdapted
    torch.manual_seed(0)
    model, _ = _counts('adapter', toy=True)
    blk = model.backbone.layers[1].blocks[0]
    assert isinstance(blk.attn.proj, BottleneckAdapted) and isinstance(blk.mlp.fc2, BottleneckAdapted)
    assert not isinstance(blk.attn.qkv, BottleneckAdapted) and not isinstance(blk.mlp.fc1, BottleneckAdapted)
    x = torch.randn(2, 5, blk.dim)
    with torch.no_grad():
        torch.testing.assert_close(blk.mlp.fc2(torch.randn(2, 5, 4 * blk.dim).mul_(0) + 1),
                                   blk.mlp.fc2.base_layer(torch.ones(2, 5, 4 * blk.dim)))
        blk.attn.proj.up.weight.normal_()
        h = blk.attn.proj.base_layer(x)
        down, up = blk.attn.proj.down, blk.attn.proj.up
        by_hand = h + torch.nn.functional.gelu(h @ down.weight.T + down.bias) @ up.weight.T + up.bias
        torch.testing.assert_close(blk.attn.proj(x), by_hand)


def test_shared_lora_is_mtlora_without_its_task_part(plain_tiny):
    from mtlbench.layers.lowrank import LoRALinear, TaskLoRALinear
    widths = [b.dim for stage in plain_tiny.layers for b in stage.blocks]
    # rank 64 on qkv (C -> 3C), proj (C -> C), fc1 (C -> 4C), fc2 (4C -> C): 64 * 16C per block
    shared = sum(64 * (c + 3 * c) + 64 * (c + c) + 64 * (c + 4 * c) + 64 * (4 * c + c) for c in widths)
    model, sl = _counts('shared_lora')
    _, mt = _counts('mtlora')
    assert sl['adapter'] == shared == 4_521_984
    assert sl['backbone_other'] == mt['backbone_other']
    assert sl['total_trainable'] == 8_068_154 and mt['total_trainable'] == 8_344_634  # mtlora: the reference's count
    assert not any(isinstance(m, TaskLoRALinear) for m in model.backbone.modules())
    assert sum(isinstance(m, LoRALinear) for m in model.backbone.modules()) == 4 * len(widths)
    with pytest.raises(ValueError, match='no task-specific'):
        _counts('shared_lora', task_kinds=('proj',))


@pytest.mark.parametrize('method,per_block', [('vpt_shallow', False), ('vpt_deep', True)])
def test_vpt_counts(plain_tiny, method, per_block):
    widths = [b.dim for stage in plain_tiny.layers for b in stage.blocks]
    expected = 10 * (sum(widths) if per_block else plain_tiny.embed_dim)
    _, vpt = _counts(method)
    _, dec = _counts('decoder_only')
    assert vpt['adapter'] == vpt['encoder_trainable'] == expected
    assert vpt['total_trainable'] == dec['total_trainable'] + expected


@pytest.mark.parametrize('method', ['vpt_shallow', 'vpt_deep'])
def test_vpt_prompts_change_the_features_and_get_gradients(method):
    torch.manual_seed(0)
    model, _ = _counts(method, toy=True)
    # eval mode: stochastic depth (0.03-0.2 per block) would otherwise drop whole attention branches
    # at random, zeroing some prompts' gradients (it did, with torch 2.5/2.6's random stream) and
    # making the with/without-prompts comparison below differ by chance; gradients still flow
    model.backbone.eval()
    x = torch.randn(1, 3, 224, 224)
    feats = model.backbone(x)
    sum(f.square().mean() for f in feats).backward()
    prompts = [p for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert prompts and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)
    with torch.no_grad():   # without prompts the backbone computes something else
        model.backbone.prompt_embed, saved = None, model.backbone.prompt_embed
        plain = model.backbone(x)
        model.backbone.prompt_embed = saved
    assert not torch.allclose(plain[0], feats[0])
