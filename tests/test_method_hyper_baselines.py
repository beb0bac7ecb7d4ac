"""HyperFormer, Polyhistor and Polyhistor-Lite: the mechanism against computations by hand.

* the adapter weights a site uses are the hypernetwork applied by hand (explicit products and
  ``einsum`` over the module's own parameters) to the task, layer and position embeddings;
  Polyhistor-Lite's scaling kernels expand the template as ``torch.kron`` does;
* a site's forward is ``h + gelu(h W_d + b_d) W_u + b_u`` per task stream, by hand;
* changing one task's embedding changes that task's outputs and no other task's;
* with the up generators at zero (the default) the adapted backbone is the plain backbone
  (without HyperFormer's conditional LayerNorm; with it, each task stream is shifted by its
  generated ``beta_t``);
* HyperFormer's task-conditional LayerNorm: ``(gamma_t, beta_t)`` are the generator applied by
  hand to the conditioning, and the normalisation written out (mean, biased variance, eps 1e-5)
  with those parameters reproduces each task stream; stream 0 never changes; gradients reach the
  generator (the ``gamma`` rows only once the adapter output is non-zero);
* trainable-parameter counts from the formula on a toy Swin (4 tasks).

Published counts: the Polyhistor table (NeurIPS 2022) and the MTLoRA table (CVPR 2024) print
counts for these rows, but no copy of those tables could be retrieved while writing this, so
none is compared here; the designs' sizes are not given in the text we could read either
(each method's docstring states its choices).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mtlbench.methods  # noqa: F401
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.method import param_breakdown
from mtlbench.methods.polyhistor.adapter import GeneratedAdapterLinear, kron_expand
from mtlbench.params import build_model_from_config

TOY = {'model.backbone.arch': 'toy', 'model.backbone.img_size': (224, 224)}
METHODS = ['hyperformer', 'polyhistor', 'polyhistor_lite']
WIDTHS = (16, 32, 64, 128)          # toy Swin stage widths; two blocks per stage
T = 4                               # PASCAL-Context tasks


def _model(method, **opts):
    cfg = dict(TOY)
    cfg.update({f'model.method.{k}': v for k, v in opts.items()})
    torch.manual_seed(0)
    return build_model_from_config(method, 'pascal_context', cfg_options=cfg)


def _perturb(model):
    """Move every trainable backbone parameter off its init (the up generators start at zero)."""
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


def _condition_by_hand(cond, layer, position):
    e = torch.cat([cond.task_embed, cond.layer_embed[layer].expand(T, -1),
                   cond.position_embed[position].expand(T, -1)], dim=1)
    l1, l2 = cond.projector[0], cond.projector[2]
    hidden = torch.clamp(torch.einsum('ti,hi->th', e, l1.weight) + l1.bias, min=0)
    out = torch.einsum('th,oh->to', hidden, l2.weight) + l2.bias
    if cond.norm is None:
        return out
    # HyperFormer++'s LayerNorm on the conditioning (eps 1e-6), written out
    mean = out.mean(dim=1, keepdim=True)
    var = ((out - mean) ** 2).mean(dim=1, keepdim=True)
    return (out - mean) / torch.sqrt(var + 1e-6) * cond.norm.weight + cond.norm.bias


def _weights_by_hand(method, model, site, sliced=False):
    """(down [T,C,b], down bias, up [T,b,C], up bias) of a site, from the parameters by hand."""
    hyper = model.backbone.hypernetwork
    I = _condition_by_hand(hyper.condition, site.layer, site.position)
    C = site.out_features
    G = WIDTHS[0] if method == 'polyhistor_lite' else WIDTHS[-1] if sliced else C
    b = G // 4
    gen = hyper.generators[str(G)]
    if method == 'hyperformer':
        out = I @ gen['full'].weight.T + gen['full'].bias
        parts = torch.split(out, [G * b, b, b * G, G], dim=1)
        down, down_bias, up, up_bias = parts[0].reshape(T, G, b), parts[1], parts[2].reshape(T, b, G), parts[3]
        c, bb = C, C // 4   # 'slice': a narrower site takes the leading rows / columns
        return down[:, :c, :bb], down_bias[:, :bb], up[:, :bb, :c], up_bias[:, :c]
    r = 8
    left = I @ gen['left'].weight.T + gen['left'].bias
    right = I @ gen['right'].weight.T + gen['right'].bias
    bias = I @ gen['bias'].weight.T + gen['bias'].bias
    L_d, L_u = left[:, :G * r].reshape(T, G, r), left[:, G * r:].reshape(T, b, r)
    R_d, R_u = right[:, :b * r].reshape(T, b, r), right[:, b * r:].reshape(T, G, r)
    down = torch.einsum('tcr,tbr->tcb', L_d, R_d)
    up = torch.einsum('tbr,tcr->tbc', L_u, R_u)
    down_bias, up_bias = bias[:, :b], bias[:, b:]
    if method == 'polyhistor_lite':
        k = C // G
        down = torch.stack([torch.kron(site.scale_down, down[t]) for t in range(T)])
        up = torch.stack([torch.kron(site.scale_up, up[t]) for t in range(T)])
        down_bias = torch.cat([down_bias] * k, dim=1)
        up_bias = torch.cat([up_bias] * k, dim=1)
    return down, down_bias, up, up_bias


def _norm_params_by_hand(method, model, site, sliced=False):
    """(gamma [T, C], beta [T, C]) of a site's task LayerNorms, from the parameters by hand."""
    hyper = model.backbone.hypernetwork
    I = _condition_by_hand(hyper.condition, site.layer, site.position)
    C = site.out_features
    G = WIDTHS[0] if method == 'polyhistor_lite' else WIDTHS[-1] if sliced else C
    lin = hyper.layer_norms.generators[str(G)]
    out = torch.einsum('td,od->to', I, lin.weight) + lin.bias
    gamma, beta = out[:, :G], out[:, G:]
    k = C // G if method == 'polyhistor_lite' else 1
    gamma, beta = torch.cat([gamma] * k, dim=1), torch.cat([beta] * k, dim=1)
    return gamma[:, :C], beta[:, :C]


def _layer_norm_by_hand(x, gamma, beta, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gamma + beta


@pytest.mark.parametrize('method,opts', [(m, {}) for m in METHODS] + [
    ('hyperformer', {'width_mode': 'slice'}),
    ('hyperformer', {'conditional_layer_norm': False}),
    ('polyhistor', {'conditional_layer_norm': True}),
    ('polyhistor_lite', {'conditional_layer_norm': True}),
])
def test_generated_weights_and_forward_equal_the_hypernetwork_by_hand(method, opts):
    model = _model(method, **opts)
    _perturb(model)
    sites = [m for m in model.backbone.modules() if isinstance(m, GeneratedAdapterLinear)]
    assert len(sites) == 2 * 8   # after proj and fc2 in each of the toy's 8 blocks
    assert sorted({(s.layer, s.position) for s in sites}) == [(l, p) for l in range(8) for p in (0, 1)]
    for site in (sites[0], sites[9], sites[-1]):   # widths 16, 64, 128
        C = site.out_features
        with torch.no_grad():
            got = site.generated()
            want = _weights_by_hand(method, model, site, sliced='width_mode' in opts)
            with_norm = opts.get('conditional_layer_norm', method == 'hyperformer')
            assert site.layer_norm == with_norm
            if with_norm:
                gamma, beta = _norm_params_by_hand(method, model, site, sliced='width_mode' in opts)
                got_norm = site.generated_layer_norm()
                torch.testing.assert_close(got_norm[0], gamma)
                torch.testing.assert_close(got_norm[1], beta)
        assert [tuple(w.shape) for w in got] == [(T, C, C // 4), (T, C // 4), (T, C // 4, C), (T, C)]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
        # the site applies task t's adapter to task t's stream; stream 0 is the frozen output
        x = torch.randn(1 + T, 3, 5, site.in_features)
        with torch.no_grad():
            y = site(x)
            h = x @ site.base_layer.weight.T + site.base_layer.bias
            torch.testing.assert_close(y[0], h[0])
            d, db, u, ub = want
            for t in range(T):
                delta = F.gelu(h[1 + t] @ d[t] + db[t]) @ u[t] + ub[t]
                if with_norm:
                    delta = _layer_norm_by_hand(delta, gamma[t], beta[t])
                torch.testing.assert_close(y[1 + t], h[1 + t] + delta, rtol=1e-4, atol=1e-5)


def test_scaling_kernels_expand_the_template_as_a_kronecker_product():
    S = torch.randn(4, 4)
    tmpl = torch.randn(3, 16, 4)
    out = kron_expand(S, tmpl)
    assert out.shape == (3, 64, 16)
    for t in range(3):
        torch.testing.assert_close(out[t], torch.kron(S, tmpl[t]))
    # in the model: stage widths / 16 = 1, 2, 4, 8; ones at init = the template repeated k x k
    model = _model('polyhistor_lite')
    sites = [m for m in model.backbone.modules() if isinstance(m, GeneratedAdapterLinear)]
    assert [s.scale_down.shape[0] for s in sites] == [C // 16 for C in WIDTHS for _ in range(4)]
    site = sites[-1]
    with torch.no_grad():
        down = site.generated()[0]
        template = model.backbone.hypernetwork(site.layer, site.position, site.out_features)[0]
    torch.testing.assert_close(down, template.repeat(1, 8, 8))


@pytest.mark.parametrize('method', METHODS)
def test_one_task_embedding_changes_only_that_task(method):
    model = _model(method).eval()
    _perturb(model)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        model.backbone.hypernetwork.condition.task_embed[1].add_(0.5)
        after = model(x)
    tasks = list(model.tasks)
    for i, t in enumerate(tasks):
        if i == 1:
            assert (after[t] - before[t]).abs().max() > 1e-4, t
        else:
            torch.testing.assert_close(after[t], before[t], rtol=0, atol=1e-6)


@pytest.mark.parametrize('method', METHODS)
def test_zero_up_init_starts_as_the_plain_backbone(method):
    x = torch.randn(1, 3, 224, 224)
    plain = SwinBackbone('toy', (224, 224), drop_path_rate=0.0).eval()
    for zero, same in ((True, True), (False, False)):
        model = _model(method, zero_init_up=zero, conditional_layer_norm=False).eval()
        state = {k.replace('.base_layer.', '.'): v for k, v in model.backbone.state_dict().items()}
        plain.load_state_dict({k: state[k] for k in plain.state_dict()})
        with torch.no_grad():
            feats, ref = model.backbone(x), plain(x)
        assert [f.shape[0] for f in feats] == [1 + T] * 4   # task streams through every stage
        for f, r in zip(feats, ref):
            for s in range(1, 1 + T):
                assert torch.allclose(f[s], r[0], atol=1e-6) == same, (zero, s)


def _condition_count(blocks=8, positions=2, e=64, h=128, d=64, norm=False):
    return T * e + blocks * e + positions * e + (3 * e * h + h) + (h * d + d) + (2 * d if norm else 0)


@pytest.mark.parametrize('method,opts,generators', [
    # adapter generators + one (gamma | beta) generator per width: 65 inputs (64 + bias) x 2 C
    ('hyperformer', {}, sum(65 * (2 * C * (C // 4) + C // 4 + C) + 65 * 2 * C for C in WIDTHS)),
    ('hyperformer', {'conditional_layer_norm': False}, sum(65 * (2 * C * (C // 4) + C // 4 + C) for C in WIDTHS)),
    ('hyperformer', {'width_mode': 'slice'}, 65 * (2 * 128 * 32 + 32 + 128) + 65 * 2 * 128),
    ('polyhistor', {'conditional_layer_norm': True},
     sum(65 * (2 * 8 * (C + C // 4) + C // 4 + C) + 65 * 2 * C for C in WIDTHS)),
    ('polyhistor', {}, sum(65 * (2 * 8 * (C + C // 4) + C // 4 + C) for C in WIDTHS)),
    ('polyhistor', {'rank': 2}, sum(65 * (2 * 2 * (C + C // 4) + C // 4 + C) for C in WIDTHS)),
    # one template-size (16 x 4) generator + a pair of k x k scaling kernels per site (4 per stage)
    ('polyhistor_lite', {}, 65 * (2 * 8 * (16 + 4) + 4 + 16) + sum(4 * 2 * (C // 16) ** 2 for C in WIDTHS)),
    ('polyhistor_lite', {'conditional_layer_norm': True},
     65 * (2 * 8 * (16 + 4) + 4 + 16) + 65 * 2 * 16 + sum(4 * 2 * (C // 16) ** 2 for C in WIDTHS)),
])
def test_trainable_parameters_by_formula(method, opts, generators):
    model = _model(method, **opts)
    counts = param_breakdown(model.backbone, model.decoder)
    norms = sum(p.numel() for name, m in model.backbone.named_modules() if isinstance(m, torch.nn.LayerNorm)
                and not name.startswith('hypernetwork.') for p in m.parameters())
    assert counts['adapter'] == _condition_count(norm=method == 'hyperformer') + generators
    assert counts['backbone_other'] == norms   # LayerNorms train, nothing else of the backbone
    split = model.method.adapter_breakdown(model.backbone)
    assert sum(split.values()) == counts['adapter']


@pytest.mark.parametrize('method,opts,generators,docstring_total', [
    # + the conditional LayerNorms' (gamma | beta) generator per width, 65 x 2 C
    ('hyperformer', {}, sum(65 * (2 * C * (C // 4) + C // 4 + C) + 65 * 2 * C for C in (96, 192, 384, 768)),
     27_767_496),
    ('hyperformer', {'conditional_layer_norm': False},
     sum(65 * (2 * C * (C // 4) + C // 4 + C) for C in (96, 192, 384, 768)), 27_580_296),
    ('hyperformer', {'conditional_layer_norm': False, 'condition_layer_norm': False},
     sum(65 * (2 * C * (C // 4) + C // 4 + C) for C in (96, 192, 384, 768)), 27_580_168),
    ('polyhistor', {}, sum(65 * (2 * 8 * (C + C // 4) + C // 4 + C) for C in (96, 192, 384, 768)), 3_992_968),
    # sites per stage: 2 x (2, 2, 6, 2) blocks; scaling kernels k = 1, 2, 4, 8
    ('polyhistor_lite', {}, 65 * (2 * 8 * (96 + 24) + 24 + 96)
     + sum(n * 2 * k * k for n, k in ((4, 1), (4, 2), (12, 4), (4, 8))), 2_137_504),
])
def test_swin_t_pascal_counts_by_formula(method, opts, generators, docstring_total):
    """The counts ``mtlbench params --method X --dataset pascal_context`` prints (Swin-T, 4 tasks),
    which the methods' docstrings and ``results/reference/published_params.md`` quote."""
    torch.manual_seed(0)
    model = build_model_from_config(method, 'pascal_context',
                                    cfg_options={f'model.method.{k}': v for k, v in opts.items()})
    counts = param_breakdown(model.backbone, model.decoder)
    with_norm = method == 'hyperformer' and opts.get('condition_layer_norm', True)
    assert counts['adapter'] == _condition_count(blocks=12, norm=with_norm) + generators
    assert counts['total_trainable'] == counts['adapter'] + 23_232 + 1_946_624   # + LayerNorms + decoder
    assert counts['total_trainable'] == docstring_total


def test_scaling_kernels_get_no_weight_decay():
    from mtlbench.optim import method_no_decay_ids
    model = _model('polyhistor_lite')
    kernels = {id(p) for m in model.backbone.modules() if isinstance(m, GeneratedAdapterLinear)
               for p in (m.scale_down, m.scale_up)}
    assert len(kernels) == 2 * 16 and method_no_decay_ids(model) == kernels
    assert method_no_decay_ids(_model('polyhistor')) == set()


def test_conditional_layer_norm_defaults_follow_each_paper():
    """HyperFormer normalises its adapters' outputs per task (official code's default for
    HyperFormer++); Polyhistor and Polyhistor-Lite keep their adapters without it."""
    hyper = _model('hyperformer')
    on = [m.layer_norm for m in hyper.backbone.modules() if isinstance(m, GeneratedAdapterLinear)]
    assert len(on) == 16 and all(on)
    # and its conditioning vector is normalised (unique_hyper_net_layer_norm, eps 1e-6)
    norm = hyper.backbone.hypernetwork.condition.norm
    assert isinstance(norm, torch.nn.LayerNorm) and norm.eps == 1e-6 and norm.normalized_shape == (64,)
    for method in ('polyhistor', 'polyhistor_lite'):
        model = _model(method)
        assert model.backbone.hypernetwork.layer_norms is None
        assert model.backbone.hypernetwork.condition.norm is None
        assert not any(m.layer_norm for m in model.backbone.modules() if isinstance(m, GeneratedAdapterLinear))


def test_conditional_layer_norm_with_zero_up_adds_each_tasks_beta():
    """With the up projection at zero the adapter output is exactly zero; its normalised value is
    zero, so each task stream gets ``h + beta_t`` and stream 0 stays the frozen output."""
    model = _model('hyperformer')
    site = [m for m in model.backbone.modules() if isinstance(m, GeneratedAdapterLinear)][5]
    x = torch.randn(1 + T, 2, 7, site.in_features)
    with torch.no_grad():
        y = site(x)
        h = x @ site.base_layer.weight.T + site.base_layer.bias
        _, beta = _norm_params_by_hand('hyperformer', model, site)
    torch.testing.assert_close(y[0], h[0])
    for t in range(T):
        torch.testing.assert_close(y[1 + t], h[1 + t] + beta[t], rtol=1e-5, atol=1e-6)
    assert all((beta[i] - beta[j]).abs().max() > 1e-6 for i in range(T) for j in range(i))


def _one_loss(model, x):
    out = model(x)
    return sum((v.float() ** 2).mean() for v in out.values())


def test_conditional_layer_norm_gradients_and_one_step():
    """Gradients reach the LayerNorm generator (its beta rows at once; its gamma rows only when the
    adapter output is non-zero, since d LN / d gamma is the normalised output, zero at init);
    after one step two tasks fed the same features get different norms, stream 0 none."""
    model = _model('hyperformer').eval()
    hyper = model.backbone.hypernetwork
    x = torch.randn(1, 3, 224, 224)
    _one_loss(model, x).backward()
    for C in WIDTHS:
        g = hyper.layer_norms.generators[str(C)].weight.grad
        assert g is not None and torch.all(g[:C] == 0), C           # gamma rows: no signal at init
        assert g[C:].abs().max() > 0, C                              # beta rows
    assert hyper.condition.task_embed.grad.abs().max() > 0
    site = [m for m in model.backbone.modules() if isinstance(m, GeneratedAdapterLinear)][-1]
    feats = torch.randn(1, 2, 5, site.in_features)
    with torch.no_grad():
        frozen_before = site(feats.expand(1 + T, -1, -1, -1))[0].clone()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    model.zero_grad()
    _one_loss(model, x).backward()
    for C in WIDTHS:
        g = hyper.layer_norms.generators[str(C)].weight.grad
        assert g[:C].abs().max() > 0 and g[C:].abs().max() > 0, C
    with torch.no_grad():
        y = site(feats.expand(1 + T, -1, -1, -1))
        h = feats[0] @ site.base_layer.weight.T + site.base_layer.bias
        d, db, u, ub = _weights_by_hand('hyperformer', model, site)
        gamma, beta = _norm_params_by_hand('hyperformer', model, site)
    torch.testing.assert_close(y[0], frozen_before)
    torch.testing.assert_close(y[0], h)
    for t in range(T):
        delta = F.gelu(h @ d[t] + db[t]) @ u[t] + ub[t]
        assert delta.abs().max() > 0                                 # the step moved the adapter
        torch.testing.assert_close(y[1 + t], h + _layer_norm_by_hand(delta, gamma[t], beta[t]),
                                   rtol=1e-4, atol=1e-5)
    assert all((y[1 + i] - y[1 + j]).abs().max() > 1e-5 for i in range(T) for j in range(i))


def test_conditional_layer_norm_off_leaves_everything_else_as_before():
    """``conditional_layer_norm=False`` builds the same modules minus the norm generator, and (same
    seed) the same initial weights for everything they share."""
    on, off = _model('hyperformer'), _model('hyperformer', conditional_layer_norm=False)
    s_on, s_off = on.backbone.state_dict(), off.backbone.state_dict()
    extra = set(s_on) - set(s_off)
    assert extra and all('.layer_norms.' in k for k in extra) and not set(s_off) - set(s_on)
    for k in s_off:
        torch.testing.assert_close(s_on[k], s_off[k], rtol=0, atol=0)
