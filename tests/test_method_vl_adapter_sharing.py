"""VL-Adapter's per-task settings (``sharing``: half-shared down / up, multiple) against
independent computations on a toy Swin:

* trainable counts from the hand formula per sharing (toy widths, and Swin-T on PASCAL);
* a task stream's output is ``nn.Linear`` / ``GELU`` modules loaded with that task's weights;
* the shared projection of a half-shared adapter is one tensor: changing it moves every task
  stream, changing task t's own projection moves stream t only; stream 0 stays the frozen path;
* one training step per sharing reaches every trainable parameter.

The default ``'single'`` setting is covered by ``tests/test_method_phm_baselines.py``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mtlbench.methods  # noqa: F401
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.errors import OptionError
from mtlbench.method import param_breakdown
from mtlbench.methods.vl_adapter_layers import TaskBottleneckAdapted
from mtlbench.params import build_model_from_config

TOY = {'model.backbone.arch': 'toy', 'model.backbone.img_size': (64, 64), 'model.backbone.window_size': 4}
IMG = (1, 3, 64, 64)
T = 4                     # PASCAL-Context tasks
PER_TASK = ('half_shared_down', 'half_shared_up', 'multiple')


def _build(sharing, toy=True, **opts):
    cfg = dict(TOY) if toy else {}
    cfg['model.method.sharing'] = sharing
    cfg.update({f'model.method.{k}': v for k, v in opts.items()})
    torch.manual_seed(0)
    return build_model_from_config('vl_adapter', 'pascal_context', cfg_options=cfg)


def _block_widths(arch, **kw):
    plain = SwinBackbone(arch, pretrained=None, **kw)
    return [b.dim for stage in plain.layers for b in stage.blocks]


def _by_hand(widths, sharing, rf=8):
    """Adapter parameters: per adapted linear (proj, fc2 of each block) a down C x b + b and an
    up b x C + C, times T where that projection is per task."""
    n_down = 1 if sharing in ('single', 'half_shared_down') else T
    n_up = 1 if sharing in ('single', 'half_shared_up') else T
    return sum(2 * (n_down * (c * (c // rf) + c // rf) + n_up * ((c // rf) * c + c)) for c in widths)


def _perturb(model, scale=0.05):
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize('sharing', ('single',) + PER_TASK)
def test_counts_follow_the_hand_formula_on_the_toy_swin(sharing):
    widths = _block_widths('toy', img_size=(64, 64), window_size=4)
    assert widths == [16] * 2 + [32] * 2 + [64] * 2 + [128] * 2
    model = _build(sharing)
    counts = param_breakdown(model.backbone, model.decoder)
    assert counts['adapter'] == _by_hand(widths, sharing)
    plain = param_breakdown(*(lambda m: (m.backbone, m.decoder))(_build('single')))
    assert counts['total_trainable'] - counts['adapter'] == plain['total_trainable'] - plain['adapter']


def test_counts_on_swin_t_pascal_match_the_documented_figures():
    widths = _block_widths('tiny')
    assert widths == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    documented = {'half_shared_down': 2_732_112, 'half_shared_up': 2_708_928, 'multiple': 4_352_832}
    for sharing, n in documented.items():
        assert _by_hand(widths, sharing) == n, sharing
    model = _build('multiple', toy=False)
    assert param_breakdown(model.backbone, model.decoder)['adapter'] == documented['multiple']
    split = model.method.adapter_breakdown(model.backbone)
    assert split == {'shared adapter': 0, 'task adapters': 4_352_832}


def test_sharing_shows_in_the_variant_and_is_checked():
    assert _build('single').method.variant() == 'rf=8'   # unchanged: old records still match
    variants = {_build(s).method.variant() for s in PER_TASK}
    assert variants == {'rf=8,half_shared_down', 'rf=8,half_shared_up', 'rf=8,multiple'}
    with pytest.raises(OptionError, match='sharing must be one of'):
        _build('half')


def _site(model, name='layers.1.blocks.0.mlp.fc2'):
    layer = model.backbone.get_submodule(name)
    assert isinstance(layer, TaskBottleneckAdapted)
    return layer


def _task_adapter_by_hand(layer, t):
    """Task t's adapter as independent torch modules loaded with its weights."""
    C, b = layer.down_weight.shape[1:]
    i_down = 0 if layer.share_down else t
    i_up = 0 if layer.share_up else t
    down, up = nn.Linear(C, b), nn.Linear(b, C)
    with torch.no_grad():
        down.weight.copy_(layer.down_weight[i_down].T)
        down.bias.copy_(layer.down_bias[i_down])
        up.weight.copy_(layer.up_weight[i_up].T)
        up.bias.copy_(layer.up_bias[i_up])
    return nn.Sequential(down, nn.GELU(), up)


@pytest.mark.parametrize('sharing', PER_TASK)
@pytest.mark.parametrize('streams', [1, 1 + T])
def test_each_task_stream_is_its_own_adapter_by_hand(sharing, streams):
    layer = _site(_build(sharing))
    _perturb_layer(layer)
    x = torch.randn(streams, 2, 5, layer.in_features)
    with torch.no_grad():
        out = layer(x)
        h = layer.base_layer(x)
    assert out.shape == (1 + T, 2, 5, layer.out_features)
    torch.testing.assert_close(out[0], h[0])                 # stream 0: the frozen linear only
    for t in range(T):
        h_t = h[0] if streams == 1 else h[1 + t]
        with torch.no_grad():
            expected = h_t + _task_adapter_by_hand(layer, t)(h_t)
        torch.testing.assert_close(out[1 + t], expected)


def _perturb_layer(layer):
    with torch.no_grad():
        for p in (layer.down_weight, layer.down_bias, layer.up_weight, layer.up_bias):
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize('sharing, shared, own', [
    ('half_shared_down', ('down_weight', 'down_bias'), ('up_weight', 'up_bias')),
    ('half_shared_up', ('up_weight', 'up_bias'), ('down_weight', 'down_bias')),
])
def test_half_shared_projection_is_one_tensor_for_all_task_streams(sharing, shared, own):
    model = _build(sharing).eval()
    _perturb(model)
    layer = _site(model)
    for name in shared:
        assert getattr(layer, name).shape[0] == 1
    for name in own:
        assert getattr(layer, name).shape[0] == T
    x = torch.randn(*IMG)
    with torch.no_grad():
        base = model.backbone(x)[-1]
        # the shared projection moves every task stream (and never stream 0)
        getattr(layer, shared[0]).add_(0.2)
        moved = model.backbone(x)[-1]
        getattr(layer, shared[0]).sub_(0.2)
        torch.testing.assert_close(model.backbone(x)[-1], base)
        # task 2's own projection moves stream 1 + 2 only
        getattr(layer, own[0])[2].add_(0.2)
        own_moved = model.backbone(x)[-1]
    assert base.shape[0] == 1 + T
    torch.testing.assert_close(moved[0], base[0])
    for t in range(T):
        assert not torch.allclose(moved[1 + t], base[1 + t]), t
    for s in range(1 + T):
        if s == 1 + 2:
            assert not torch.allclose(own_moved[s], base[s])
        else:
            torch.testing.assert_close(own_moved[s], base[s])


@pytest.mark.parametrize('sharing', PER_TASK)
def test_stream_zero_is_the_frozen_backbone(sharing):
    model = _build(sharing).eval()
    _perturb(model)
    plain = build_model_from_config('decoder_only', 'pascal_context', cfg_options=dict(TOY)).eval()
    frozen = {k.replace('.base_layer.', '.'): v for k, v in model.backbone.state_dict().items()
              if not any(k.endswith(f'.{n}') for n in ('down_weight', 'down_bias', 'up_weight', 'up_bias'))}
    plain.backbone.load_state_dict(frozen)   # strict: the adapters are all the method added
    x = torch.randn(*IMG)
    with torch.no_grad():
        feats, ref = model.backbone(x), plain.backbone(x)
    for f, r in zip(feats, ref):
        assert f.shape[0] == 1 + T and r.shape[0] == 1
        torch.testing.assert_close(f[0], r[0])
        assert not torch.allclose(f[1], r[0])   # the task streams are adapted


@pytest.mark.parametrize('sharing', PER_TASK)
def test_one_training_step_reaches_every_trainable_parameter(sharing):
    # no stochastic depth: a dropped branch would leave a task's adapter without gradient
    cfg = dict(TOY, **{'model.method.sharing': sharing, 'model.backbone.drop_path_rate': 0.0})
    torch.manual_seed(0)
    model = build_model_from_config('vl_adapter', 'pascal_context', cfg_options=cfg).train()
    assert model.backbone.carry_task_streams
    x = torch.randn(2, 3, 64, 64)
    targets = {'semseg': torch.randint(0, 7, (2, 64, 64)), 'human_parts': torch.randint(0, 7, (2, 64, 64)),
               'sal': torch.randint(0, 2, (2, 64, 64)),
               'normals': nn.functional.normalize(torch.randn(2, 3, 64, 64), dim=1)}
    losses = model(x, targets, mode='loss')
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    # every task's own up projection gets a gradient (zero init: only through its own loss)
    for name, p in model.backbone.named_parameters():
        if name.endswith('up_weight') and p.shape[0] == T:
            assert (p.grad.flatten(1).abs().sum(1) > 0).all(), name


@pytest.mark.parametrize('sharing', ('single', 'half_shared_down'))
def test_adapter_biases_are_not_decayed_whatever_the_sharing(sharing):
    """Stacked biases are 2-D: without the method's exemption the optimiser's rule (1-D or
    ``.bias``) would decay them, unlike the single adapter's ``nn.Linear`` biases."""
    from mtlbench.optim import ReferenceOptimWrapperConstructor
    model = _build(sharing)
    ctor = ReferenceOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)), {})
    by_id = {id(p): g['weight_decay'] for g in ctor(model).optimizer.param_groups for p in g['params']}
    site = 'backbone.layers.1.blocks.0.mlp.fc2.'
    names = ({'down.weight': 0.05, 'down.bias': 0.0, 'up.weight': 0.05, 'up.bias': 0.0} if sharing == 'single' else
             {'down_weight': 0.05, 'down_bias': 0.0, 'up_weight': 0.05, 'up_bias': 0.0})
    params = dict(model.named_parameters())
    assert {n: by_id[id(params[site + n])] for n in names} == names
