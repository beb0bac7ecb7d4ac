"""Low-rank adapter, Compacter, Compacter++ and VL-Adapter (issue 16): each mechanism against an
independent computation (Kronecker sums by ``torch.kron``, ranks by ``torch.linalg.matrix_rank``),
trainable counts from the published formulas on the unadapted backbone's widths, and the shared
slow weights seen once by the counting, the optimiser and the checkpoint.

Training end to end on synthetic data is the registry-parametrized suites' job
(``tests/test_methods.py``, ``tests/test_run.py``), which pick these methods up by name.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import mtlbench.methods  # noqa: F401
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.errors import OptionError
from mtlbench.method import param_breakdown
from mtlbench.params import build_model_from_config

# the toy Swin on 64x64 inputs with window 4 (token grids 16/8/4/2): the same widths, cheap forwards
TOY = {'model.backbone.arch': 'toy', 'model.backbone.img_size': (64, 64), 'model.backbone.window_size': 4}
IMG = (1, 3, 64, 64)
ADAPTER_KEYS = ('.down.', '.up.')


def _build(method, toy=True, **opts):
    cfg = dict(TOY) if toy else {}
    cfg.update({f'model.method.{k}': v for k, v in opts.items()})
    return build_model_from_config(method, 'pascal_context', cfg_options=cfg or None)


def _counts(method, toy=False, **opts):
    model = _build(method, toy=toy, **opts)
    return model, param_breakdown(model.backbone, model.decoder)


@pytest.fixture(scope='module')
def tiny_widths():
    plain = SwinBackbone('tiny', pretrained=None)
    widths = [b.dim for stage in plain.layers for b in stage.blocks]
    assert widths == [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
    norms = sum(p.numel() for m in plain.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters())
    return widths, norms


@pytest.fixture(scope='module')
def decoder_only_counts():
    return _counts('decoder_only')[1]


def _unadapted_twin(model):
    """The decoder_only model carrying ``model``'s frozen weights (strict load: the adapters are
    the only parameters the method added)."""
    ref = _build('decoder_only')
    plain = {k.replace('.base_layer.', '.'): v for k, v in model.state_dict().items()
             if not any(a in k for a in ADAPTER_KEYS)}
    ref.load_state_dict(plain)
    return ref


# ---------------------------------------------------------------- low-rank adapter
@pytest.mark.parametrize('rank', [1, 2])
def test_low_rank_projections_have_rank_at_most_r(rank):
    from mtlbench.methods.low_rank_adapter import LowRankLinear
    torch.manual_seed(0)
    model = _build('low_rank_adapter', rank=rank, reduction_factor=4, zero_init_up=False)
    layers = [m for m in model.backbone.modules() if isinstance(m, LowRankLinear)]
    assert len(layers) == 2 * 2 * 8   # down + up, after proj and fc2, 8 toy blocks
    for m in layers:
        assert torch.linalg.matrix_rank(m.weight.detach()).item() == min(rank, m.in_features, m.out_features)
        x = torch.randn(3, m.in_features)
        torch.testing.assert_close(m(x), x @ (m.u @ m.v).T + m.bias)
    # the adapted site is h + up(gelu(down(h))) with those products, h the frozen linear's output
    site = model.backbone.layers[2].blocks[1].mlp.fc2
    x = torch.randn(2, 5, site.in_features)
    h = x @ site.base_layer.weight.T + site.base_layer.bias
    d, u = site.down, site.up
    by_hand = h + F.gelu(h @ (d.u @ d.v).T + d.bias) @ (u.u @ u.v).T + u.bias
    torch.testing.assert_close(site(x), by_hand)


def test_low_rank_adapter_counts(tiny_widths, decoder_only_counts):
    widths, norms = tiny_widths
    # rank 1, bottleneck C // 32: down C*1 + 1*h + h (bias), up h*1 + 1*C + C (bias); two per block
    expected = sum(2 * ((c + c // 32) + c // 32 + (c // 32 + c) + c) for c in widths)
    _, lr = _counts('low_rank_adapter')
    dec = decoder_only_counts
    assert lr['adapter'] == expected == 27_324
    assert lr['backbone_other'] == norms == 23_232
    assert lr['total_trainable'] == dec['total_trainable'] + expected + norms == 1_997_180


def test_low_rank_adapter_starts_as_the_pretrained_model():
    torch.manual_seed(0)
    model = _build('low_rank_adapter').eval()
    ref = _unadapted_twin(model).eval()
    x = torch.randn(*IMG)
    with torch.no_grad():
        a, b = model(x), ref(x)
    for t in a:
        torch.testing.assert_close(a[t], b[t])
    # the zero factor still learns: gradients reach U of every up-projection
    sum(v.square().mean() for v in model.train()(x).values()).backward()
    up = model.backbone.layers[0].blocks[0].attn.proj.up
    assert up.u.grad is not None and up.u.grad.abs().sum() > 0


# ---------------------------------------------------------------- Compacter
@pytest.mark.parametrize('n,rank,din,dout', [(4, 1, 8, 12), (2, 3, 6, 10), (4, 2, 16, 4), (2, 1, 8, 12)])
def test_phm_weight_is_the_sum_of_kronecker_products(n, rank, din, dout):
    from mtlbench.methods.compacter import PHMLinear
    torch.manual_seed(0)
    rule = torch.nn.Parameter(torch.randn(n, n, n))
    layer = PHMLinear(din, dout, rule, rank)
    with torch.no_grad():
        layer.bias.normal_()
    by_hand = sum(torch.kron(rule[i], layer.s[i] @ layer.t[i].T) for i in range(n))
    assert by_hand.shape == (dout, din)
    torch.testing.assert_close(layer.weight, by_hand)
    x = torch.randn(4, din)
    torch.testing.assert_close(layer(x), x @ by_hand.T + layer.bias)
    # rank(kron(A_i, B_i)) = rank(A_i) rank(B_i) <= n * rank, so the sum of n terms has rank <= n^2 rank
    assert torch.linalg.matrix_rank(layer.weight.detach()).item() <= min(n * n * rank, din, dout)


def test_compacter_shares_one_rule_object_across_layers_and_stages():
    from mtlbench.methods.compacter import PHMLinear
    torch.manual_seed(0)
    model = _build('compacter')
    phm = [m for m in model.backbone.modules() if isinstance(m, PHMLinear)]
    assert len(phm) == 2 * 2 * 8
    assert {m.in_features for m in phm} >= {16, 32, 64, 128}   # every toy stage width
    assert all(m.rule is phm[0].rule for m in phm)
    assert phm[0].rule.shape == (4, 4, 4) and phm[0].rule.requires_grad
    # counted once
    own = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    per_layer = sum(m.s.numel() + m.t.numel() + m.bias.numel() for m in phm)
    norms = sum(p.numel() for m in model.backbone.modules() if isinstance(m, torch.nn.LayerNorm)
                for p in m.parameters())
    assert own == 64 + per_layer + norms
    # one entry in the optimiser, whose step moves every layer's A together
    from mtlbench.optim import ReferenceOptimWrapperConstructor
    wrapper = ReferenceOptimWrapperConstructor(dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=1.0,
                                                                                       weight_decay=0.0)))(model)
    in_groups = [p for g in wrapper.optimizer.param_groups for p in g['params']]
    assert sum(p is phm[0].rule for p in in_groups) == 1
    assert len(in_groups) == len({id(p) for p in in_groups})
    x = torch.randn(*IMG)
    sum(v.square().mean() for v in model(x).values()).backward()
    before = phm[-1].rule.detach().clone()
    wrapper.optimizer.step()
    assert not torch.equal(phm[-1].rule, before) and all(m.rule is phm[0].rule for m in phm)
    # a checkpoint keeps the sharing: loading one layer's key sets the value every layer sees
    other = _build('compacter')
    other.load_state_dict(model.state_dict())
    other_phm = [m for m in other.backbone.modules() if isinstance(m, PHMLinear)]
    assert all(m.rule is other_phm[0].rule for m in other_phm)
    torch.testing.assert_close(other_phm[0].rule, phm[0].rule)


def test_compacter_without_shared_rule_gives_each_layer_its_own():
    from mtlbench.methods.compacter import PHMLinear
    model = _build('compacter', shared_rule=False)
    phm = [m for m in model.backbone.modules() if isinstance(m, PHMLinear)]
    assert len({id(m.rule) for m in phm}) == len(phm)


def _toy_hand_count(kinds_per_block):
    # toy widths 16, 32, 64, 128 (two blocks each); bottleneck 16/32 .. 128/32 rounded up to a
    # multiple of n = 4 is 4 everywhere. PHM layer in -> out, rank 1: n * (in/n + out/n) + out.
    total = 0
    for c in [16, 16, 32, 32, 64, 64, 128, 128]:
        h = 4
        total += kinds_per_block * ((c + h) + h + (h + c) + c)
    return 4 ** 3 + total


@pytest.mark.parametrize('method,kinds_per_block', [('compacter', 2), ('compacter_pp', 1)])
def test_compacter_toy_hand_count(method, kinds_per_block):
    toy = SwinBackbone('toy', (64, 64), window_size=4, pretrained=None)
    norms = sum(p.numel() for m in toy.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters())
    model, c = _counts(method, toy=True)
    _, dec = _counts('decoder_only', toy=True)
    assert c['adapter'] == _toy_hand_count(kinds_per_block) == {2: 3136, 1: 1600}[kinds_per_block]
    assert c['backbone_other'] == norms
    assert c['total_trainable'] == dec['total_trainable'] + c['adapter'] + norms


@pytest.mark.parametrize('method,kinds', [('compacter', ('proj', 'fc2')), ('compacter_pp', ('fc2',))])
def test_compacter_swin_t_counts_and_sites(tiny_widths, decoder_only_counts, method, kinds):
    widths, norms = tiny_widths
    hidden = {96: 4, 192: 8, 384: 12, 768: 24}   # C / 32 = 3, 6, 12, 24 rounded up to multiples of 4
    per_adapter = {c: (c + hidden[c]) + hidden[c] + (hidden[c] + c) + c for c in hidden}
    expected = 4 ** 3 + len(kinds) * sum(per_adapter[c] for c in widths)
    model, c = _counts(method)
    dec = decoder_only_counts
    assert c['adapter'] == expected == {2: 27_424, 1: 13_744}[len(kinds)]
    assert c['total_trainable'] == dec['total_trainable'] + expected + norms
    assert {s.rsplit('.', 2)[-1] for s in model.adapted_sites} == set(kinds)


def test_compacter_at_init_is_the_pretrained_model():
    torch.manual_seed(0)
    x = torch.randn(*IMG)
    exact = _build('compacter', zero_init_up=True).eval()
    ref = _unadapted_twin(exact).eval()
    with torch.no_grad():
        a, b = exact(x), ref(x)
    for t in a:
        torch.testing.assert_close(a[t], b[t])
    # the reference init (A ~ N(0, 1e-4), no zero factor) is not exactly the identity, but close
    torch.manual_seed(0)
    near = _build('compacter').eval()
    ref = _unadapted_twin(near).eval()
    site = near.backbone.layers[1].blocks[0].mlp.fc2
    h = torch.randn(2, 7, site.in_features)
    with torch.no_grad():
        delta = site(h) - site.base_layer(h)
        a, b = near(x), ref(x)
    assert 0 < delta.abs().max() < 1e-4
    for t in a:
        torch.testing.assert_close(a[t], b[t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('n', [5, 32])
def test_compacter_rejects_a_phm_dim_that_does_not_divide_the_widths(n):
    with pytest.raises(OptionError, match=r'phm_dim=%d does not divide the adapted width' % n):
        _build('compacter', phm_dim=n)


# ---------------------------------------------------------------- VL-Adapter
def test_vl_adapter_is_one_shared_adapter_set_with_reduction_8(tiny_widths, decoder_only_counts):
    widths, norms = tiny_widths
    expected = sum(2 * (2 * c * (c // 8) + c // 8 + c) for c in widths)
    _, vl = _counts('vl_adapter')
    dec = decoder_only_counts
    assert vl['adapter'] == expected == 1_088_208
    assert vl['total_trainable'] == dec['total_trainable'] + expected + norms
    torch.manual_seed(0)
    model = _build('vl_adapter').eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(*IMG))
    assert all(f.shape[0] == 1 for f in feats)   # one stream: every task reads the same features
    ref = _unadapted_twin(model).eval()
    x = torch.randn(*IMG)
    with torch.no_grad():
        a, b = model(x), ref(x)
    for t in a:
        torch.testing.assert_close(a[t], b[t])


@pytest.mark.parametrize('module, cls, options, message', [
    ('adapter', 'AdapterConfig', dict(reduction_factor=0), 'reduction_factor must be >= 1, got 0'),
    ('low_rank_adapter', 'LowRankAdapterConfig', dict(rank=0), 'rank must be >= 1, got 0'),
    ('compacter', 'CompacterConfig', dict(phm_rank=-1), 'phm_rank must be >= 1, got -1'),
    ('compacter', 'CompacterConfig', dict(kinds=('proj', 'mlp')), r'kinds must be a non-empty subset'),
    ('low_rank_adapter', 'LowRankAdapterConfig', dict(kinds=()), r'kinds must be a non-empty subset'),
])
def test_bottleneck_adapter_options_are_checked_by_name(module, cls, options, message):
    import importlib
    config_cls = getattr(importlib.import_module(f'mtlbench.methods.{module}'), cls)
    with pytest.raises(ValueError, match=message):
        config_cls(**options)
    # a list of kinds is accepted and stored as a tuple (configs from files give lists)
    assert config_cls(kinds=['fc2']).kinds == ('fc2',)
