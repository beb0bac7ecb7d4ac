"""DiTASK (``methods/ditask.py``): CPA maths, layer semantics, counts, gradients, caching."""
import contextlib
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import mtlbench.methods  # noqa: F401  (registers the methods)
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.heads.hrnet import MultiTaskDecoder
from mtlbench.method import apply_trainable, build_method, param_breakdown
from mtlbench.methods.ditask import (DiTASKConfig, DiTASKLinear, cpa_cell_basis, cpa_integrate, cpa_vertex_basis,
                                     cpa_vertex_velocity, cpa_warp_sequence)
from mtlbench.tasks import DATASET_TASKS

PASCAL = ('semseg', 'human_parts', 'sal', 'normals')
NYUD = ('semseg', 'depth', 'normals')


def _random_theta(n, cells, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, cells - 1, generator=g) * 2 - 1) * scale / math.sqrt(cells - 1)


def _build(arch, size, tasks, dataset, channels=(18, 36, 72, 144), **method):
    bb = SwinBackbone(arch, (size, size), drop_path_rate=0.0 if arch == 'toy' else 0.2)
    m = build_method(dict(type='ditask', **method), tasks)
    sites = m.adapt(bb)
    dec = m.adapt_decoder(MultiTaskDecoder(tasks, DATASET_TASKS[dataset], bb.out_channels, channels=channels,
                                           out_size=(size, size)))
    apply_trainable(bb, dec, m.config)
    return bb, dec, m, sites


# --------------------------------------------------------------------------- parameter counts
def test_counts_release_config_pascal():
    bb, dec, m, sites = _build('tiny', 448, PASCAL, 'pascal_context')
    assert m.variant() == 'cells=64/4'
    assert len(sites) == 48
    # shared 48 x 63 + task 4 stages x 3 linears x 4 tasks x 3
    assert param_breakdown(bb, dec) == dict(adapter=3168, decoder=1946624, backbone_other=1599546,
                                            encoder_trainable=1602714, total_trainable=3549338, total=29467610)
    # with the release's inert per-task theta on every qkv (12 x 4 x 3 = 144): its 3,312
    bb, dec, m, _ = _build('tiny', 448, PASCAL, 'pascal_context', inert_qkv_task_theta=True)
    bd = param_breakdown(bb, dec)
    assert bd['adapter'] == 3312
    assert (bd['encoder_trainable'], bd['total_trainable']) == (1602858, 3549482)
    assert round(bd['encoder_trainable'] / 1e6, 2) == 1.60   # the paper's encoder-only column


def test_counts_nyud_and_32_cells():
    bb = SwinBackbone('tiny', (448, 448))
    build_method(dict(type='ditask', num_cells=32), NYUD).adapt(bb)
    theta = {n: p.numel() for n, p in bb.named_parameters() if 'ditask' in n}
    assert sum(v for n, v in theta.items() if n.endswith('ditask_theta')) == 48 * 31
    assert sum(v for n, v in theta.items() if n.endswith('ditask_task_theta')) == 4 * 3 * 3 * 3


# --------------------------------------------------------------------------- CPA maths
def test_basis_by_hand():
    # column k (1-based) after normalisation: velocity j/(N k) at vertex j <= k, zero after
    for n in (2, 4, 7):
        vb = cpa_vertex_basis(n)
        expect = torch.zeros(n + 1, n - 1, dtype=torch.float64)
        for k in range(1, n):
            for j in range(1, k + 1):
                expect[j, k - 1] = j / (n * k)
        torch.testing.assert_close(vb, expect, rtol=0, atol=1e-15)
        # cell layout (a_c, b_c): continuity at inner vertices, zero at 0 and 1
        cb = cpa_cell_basis(n).view(n, 2, n - 1)
        xs = torch.arange(n + 1, dtype=torch.float64) / n
        left = cb[:, 0] * xs[:-1, None] + cb[:, 1]
        right = cb[:, 0] * xs[1:, None] + cb[:, 1]
        torch.testing.assert_close(right[:-1], left[1:], atol=1e-15, rtol=0)
        assert left[0].abs().max() < 1e-15 and right[-1].abs().max() < 1e-15
        assert torch.allclose(cb.abs().amax(dim=(0, 1)), torch.ones(n - 1, dtype=torch.float64))


@pytest.mark.parametrize('c', [0.7, -1.3, 2.5])
def test_two_cell_flow_by_hand(c):
    # N = 2: v = c x on [0, 1/2], c (1 - x) on [1/2, 1]; integrate dx/dt = v for t = 1 by hand
    x = torch.linspace(0, 1, 41, dtype=torch.float64)
    got = cpa_integrate(x, torch.tensor([[c]], dtype=torch.float64))[0]
    expect = torch.empty_like(x)
    for i, xi in enumerate(x.tolist()):
        if c > 0:
            if xi <= 0.5 and xi * math.exp(c) <= 0.5:
                expect[i] = xi * math.exp(c)
            elif xi <= 0.5:        # reaches 1/2 at log(1/(2x))/c, then 1 - x decays in cell 1
                expect[i] = 1 - math.exp(-c) / (4 * xi)
            else:
                expect[i] = 1 - (1 - xi) * math.exp(-c)
        else:                      # mirror image
            if xi >= 0.5 and (1 - xi) * math.exp(-c) <= 0.5:
                expect[i] = 1 - (1 - xi) * math.exp(-c)
            elif xi >= 0.5:
                expect[i] = math.exp(c) / (4 * (1 - xi))
            else:
                expect[i] = xi * math.exp(c)
    torch.testing.assert_close(got, expect, atol=1e-12, rtol=0)


@pytest.mark.parametrize('cells,scale', [(4, 1.0), (4, 4.0), (64, 1.0), (64, 8.0), (32, 0.2)])
def test_phi_is_an_increasing_flow_fixing_the_ends(cells, scale):
    theta = _random_theta(6, cells, scale, seed=cells)
    x = torch.linspace(0, 1, 2001, dtype=torch.float64)
    phi = cpa_integrate(x, theta)
    assert phi.shape == (6, 2001)
    assert torch.all(phi[:, 0] == 0) and torch.allclose(phi[:, -1], torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert torch.all(phi[:, 1:] > phi[:, :-1])                      # strictly increasing
    assert phi.min() >= 0 and phi.max() <= 1 + 1e-12
    # flow property: phi_{1/2} o phi_{1/2} = phi_1 (checks the cell-by-cell integration)
    half = cpa_integrate(x, theta, time=0.5)
    twice = torch.stack([cpa_integrate(h, t[None], time=0.5)[0] for h, t in zip(half, theta)])
    torch.testing.assert_close(twice, phi, atol=1e-10, rtol=0)
    # it is the flow of the CPA field: (phi_h(x) - x) / h -> v(x)
    h = 1e-6
    vel = cpa_vertex_velocity(theta)
    vertices = torch.arange(cells + 1, dtype=torch.float64) / cells
    v_at_x = torch.stack([torch.from_numpy(np.interp(x.numpy(), vertices.numpy(), row.numpy())) for row in vel])
    torch.testing.assert_close((cpa_integrate(x, theta, time=h) - x) / h, v_at_x, atol=1e-5, rtol=1e-4)
    # theta = 0 is the identity
    assert torch.equal(cpa_integrate(x, torch.zeros(1, cells - 1)), x[None])


def test_phi_gradient_is_finite_and_correct():
    theta = _random_theta(2, 8, 3.0, seed=3).double().requires_grad_()
    x = torch.linspace(0, 1, 33, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: cpa_integrate(x, t), (theta,))
    # at theta = 0 (init='identity') phi is the identity but d phi / d theta = t * basis velocity
    zero = torch.zeros(1, 7, dtype=torch.float64, requires_grad=True)
    cpa_integrate(x, zero, time=0.5).sum().backward()
    vertices = torch.arange(9, dtype=torch.float64) / 8
    basis_v = torch.stack([torch.from_numpy(np.interp(x.numpy(), vertices.numpy(), col.numpy()))
                           for col in cpa_vertex_basis(8).t()])          # [7, P]
    torch.testing.assert_close(zero.grad[0], 0.5 * basis_v.sum(1), atol=1e-12, rtol=0)
    big = (_random_theta(1, 64, 20.0, seed=4)).requires_grad_()
    cpa_warp_sequence(torch.rand(3, 96), big).sum().backward()
    assert torch.isfinite(big.grad).all() and big.grad.abs().sum() > 0


def test_warp_sequence_is_linear_interpolation_along_phi():
    p = 50
    values = torch.sort(torch.rand(2, p, dtype=torch.float64), descending=True).values
    theta = _random_theta(3, 8, 2.0, seed=5)
    got = cpa_warp_sequence(values, theta)
    assert got.shape == (3, 2, p)
    grid = torch.arange(p, dtype=torch.float64) / (p - 1)
    phi = cpa_integrate(grid, theta)
    for n in range(3):
        for r in range(2):
            for j in range(p):
                pos = float(phi[n, j]) * (p - 1)
                i0 = min(int(math.floor(pos)), p - 1)
                i1 = min(i0 + 1, p - 1)
                w = pos - i0
                expect = float(values[r, i0]) * (1 - w) + float(values[r, i1]) * w
                assert abs(float(got[n, r, j]) - expect) < 1e-12
    assert torch.equal(cpa_warp_sequence(values, torch.zeros(1, 7))[0], values)


@contextlib.contextmanager
def _difw_without_compiling():
    """Import difw with its C++/CUDA JIT builds refused; its pure-PyTorch path is the oracle.

    (The compiled CPU kernel is built with -ffast-math and returns non-monotone grids with this
    toolchain; the release ran the CUDA kernel. Both implement the same closed form as the
    pure-PyTorch ``transformer_slow``.)
    """
    difw = pytest.importorskip('difw', reason='difw not installed (pip install difw==0.0.31)')
    import torch.utils.cpp_extension as cpp

    def refuse(*args, **kwargs):
        raise RuntimeError('JIT build disabled in tests')

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpp, 'load', refuse)
        import difw.backend.pytorch.functions  # noqa: F401  (compiles nothing now)
    yield difw


@pytest.mark.parametrize('cells', [4, 64])
def test_agrees_with_difw_transform_data(cells):
    with _difw_without_compiling() as difw:
        cpab = difw.Cpab(tess_size=cells, backend='pytorch', device='cpu', zero_boundary=True)
        cpab.params.use_slow = True
        torch.testing.assert_close(cpab.params.B.double(), cpa_cell_basis(cells), atol=1e-7, rtol=0)
        p = 96
        s = torch.sort(torch.rand(p) * 3, descending=True).values
        for seed, scale in ((0, 1.0), (1, 3.0)):
            theta = _random_theta(1, cells, scale, seed)   # the release's init range, and wider
            t_ref, t_own = theta.clone().requires_grad_(), theta.clone().requires_grad_()
            ref = cpab.transform_data(s.view(1, -1, 1), t_ref, outsize=p).view(-1)
            own = cpa_warp_sequence(s, t_own)[0]
            torch.testing.assert_close(own, ref.double(), atol=2e-5, rtol=0)
            grid = torch.linspace(0, 1, 257)
            torch.testing.assert_close(cpa_integrate(grid, theta), cpab.transform_grid(grid, theta).double(),
                                       atol=2e-6, rtol=0)
            w = torch.randn(p)
            (ref * w).sum().backward()
            (own * w).sum().backward()
            torch.testing.assert_close(t_own.grad, t_ref.grad, atol=1e-4, rtol=1e-3)


# --------------------------------------------------------------------------- the layer
def _layer(out_f=24, in_f=12, splits=1, **kw):
    torch.manual_seed(0)
    base = nn.Linear(in_f, out_f)
    for p in base.parameters():
        p.requires_grad_(False)
    return DiTASKLinear(base, splits=splits, **kw)


def _by_hand(w, theta, splits=1):
    blocks = w.double().reshape(splits, -1, w.shape[1])
    u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
    s_new = cpa_warp_sequence(s, theta)                    # [n, splits, p]
    return torch.einsum('kop,nkp,kpi->nkoi', u, s_new, vh).reshape(theta.shape[0], *w.shape)


def test_identity_init_reproduces_w():
    for splits, shape in ((1, (48, 12)), (1, (12, 48)), (3, (36, 12))):
        layer = _layer(*shape, splits=splits, num_cells=64, num_tasks=2, init='identity')
        assert torch.count_nonzero(layer.ditask_theta) == 0 and torch.count_nonzero(layer.ditask_task_theta) == 0
        w = layer.base_layer.weight     # float32 factors, as the release: float32 round-off
        torch.testing.assert_close(layer.warped_weight(), w, atol=1e-5 * w.abs().max().item(), rtol=0)
        torch.testing.assert_close(layer.task_weights(), w.expand(2, *w.shape), atol=1e-5, rtol=0)
    layer = _layer(36, 12, splits=3, num_cells=8, init='identity').double()
    torch.testing.assert_close(layer.warped_weight(), layer.base_layer.weight, atol=1e-13, rtol=0)


def test_release_init_range():
    layer = _layer(num_cells=64, num_tasks=4, task_num_cells=4)
    assert layer.ditask_theta.shape == (1, 63) and layer.ditask_task_theta.shape == (4, 3)
    assert layer.ditask_theta.abs().max() <= 1 / math.sqrt(63) and layer.ditask_theta.std() > 0.02
    assert layer.ditask_task_theta.abs().max() <= 1 / math.sqrt(3) and layer.ditask_task_theta.std() > 0.05


def test_shared_and_task_weights_by_hand():
    layer = _layer(36, 12, splits=3, num_cells=8, num_tasks=3, task_num_cells=4).eval()
    with torch.no_grad():
        layer.ditask_theta.copy_(_random_theta(1, 8, 3.0, seed=1))
        layer.ditask_task_theta.copy_(_random_theta(3, 4, 3.0, seed=2))
    w = layer.base_layer.weight
    shared = _by_hand(w, layer.ditask_theta.detach(), splits=3)[0]
    tasks = _by_hand(w, layer.ditask_task_theta.detach(), splits=3)
    torch.testing.assert_close(layer.warped_weight().double(), shared, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.task_weights().double(), tasks, atol=1e-5, rtol=0)
    # the task warp acts on the ORIGINAL spectrum, not on the shared-warped one
    u, s, vh = torch.linalg.svd(w.double().reshape(3, 12, 12))
    composed = cpa_warp_sequence(cpa_warp_sequence(s, layer.ditask_theta.detach())[0], layer.ditask_task_theta.detach())
    own = torch.linalg.svdvals(layer.task_weights().double().reshape(3, 3, 12, 12))
    expect = torch.sort(cpa_warp_sequence(s, layer.ditask_task_theta.detach()), descending=True).values
    torch.testing.assert_close(own, expect, atol=1e-5, rtol=0)
    assert (torch.sort(composed, descending=True).values - own).abs().max() > 1e-3

    # streams: one input stream -> every task reads it; 1 + T streams -> each its own
    x = torch.randn(1, 5, 12)
    out = layer(x)
    assert out.shape == (4, 5, 36)
    b = layer.base_layer.bias.double()
    torch.testing.assert_close(out[0].double(), x[0].double() @ shared.t() + b, atol=1e-5, rtol=0)
    for t in range(3):
        torch.testing.assert_close(out[1 + t].double(), x[0].double() @ tasks[t].t() + b, atol=1e-5, rtol=0)
    xs = torch.randn(4, 2, 5, 12)
    out = layer(xs)
    assert out.shape == (4, 2, 5, 36)
    torch.testing.assert_close(out[0].double(), xs[0].double() @ shared.t() + b, atol=1e-5, rtol=0)
    for t in range(3):   # W'_t acts on the task stream (unlike MTLoRA's W x_shared + update)
        torch.testing.assert_close(out[1 + t].double(), xs[1 + t].double() @ tasks[t].t() + b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match='streams'):
        layer(torch.randn(3, 5, 12))


def test_inert_task_theta_changes_nothing():
    layer = _layer(num_cells=8, num_tasks=4, task_outputs=False).eval()
    x = torch.randn(1, 3, 12)
    out = layer(x)
    assert out.shape == (1, 3, 24)
    torch.testing.assert_close(out, x @ layer.warped_weight().t() + layer.base_layer.bias)


def test_eval_cache_and_invalidation():
    layer = _layer(num_cells=8, num_tasks=2)
    layer.eval()
    with torch.no_grad():
        w1 = layer.warped_weight()
        assert layer.warped_weight() is w1                      # cached
        t1 = layer.task_weights()
        assert layer.task_weights() is t1
        layer.ditask_theta.mul_(2.0)                            # theta changed -> rebuilt
        w2 = layer.warped_weight()
        assert w2 is not w1 and not torch.allclose(w1, w2)
    w3 = layer.warped_weight()                                  # grad enabled: fresh, differentiable
    assert w3.requires_grad and w3 is not w2
    layer.train()
    assert layer._wcache == {}
    assert layer.warped_weight() is not layer.warped_weight()   # training: once per call
    # a new base weight (load_state_dict) refreshes the factors
    layer.eval()
    sd = layer.state_dict()
    assert set(sd) == {'base_layer.weight', 'base_layer.bias', 'ditask_theta', 'ditask_task_theta'}
    sd['ditask_theta'] = torch.zeros_like(sd['ditask_theta'])
    sd['base_layer.weight'] = torch.randn_like(sd['base_layer.weight'])
    with torch.no_grad():
        layer.warped_weight()
        layer.load_state_dict(sd)
        torch.testing.assert_close(layer.warped_weight(), sd['base_layer.weight'], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- in the backbone
def test_identity_model_equals_frozen_backbone():
    torch.manual_seed(0)
    bb = SwinBackbone('toy', (224, 224), drop_path_rate=0.0)
    frozen = copy.deepcopy(bb).eval()
    sites = build_method(dict(type='ditask', init='identity'), PASCAL).adapt(bb)
    bb.eval()
    assert len(sites) == 32 and all(isinstance(bb.get_submodule(s), DiTASKLinear) for s in sites)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref, got = frozen(x), bb(x)
    for r, g in zip(ref, got):
        assert g.shape[0] == 1 + len(PASCAL)
        torch.testing.assert_close(g, r.expand_as(g), atol=1e-4, rtol=0)


def test_gradients_reach_exactly_the_trainable_params():
    torch.manual_seed(0)
    bb, dec, m, _ = _build('toy', 224, NYUD, 'nyudv2', channels=(2, 2, 2, 2))   # a light decoder
    bb.train(), dec.train()
    out = dec(bb(torch.randn(1, 3, 224, 224)))
    sum(o.float().square().mean() for o in out.values()).backward()
    params = list(bb.named_parameters()) + list(dec.named_parameters())
    assert [n for n, p in params if p.requires_grad and p.grad is None] == []
    assert [n for n, p in params if not p.requires_grad and p.grad is not None] == []
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert all(not n.endswith(('qkv.base_layer.weight', 'fc1.base_layer.weight')) for n in trainable)
    assert {'layers.1.downsample.reduction.weight', 'layers.3.blocks.1.mlp.fc2.ditask_task_theta',
            'layers.0.blocks.0.attn.qkv.ditask_theta', 'patch_embed.proj.weight'} <= trainable
    # the task theta got a real signal, and the state dict holds theta but no SVD caches
    assert bb.get_submodule('layers.3.blocks.1.mlp.fc2').ditask_task_theta.grad.abs().sum() > 0
    # the identity start is trainable too: theta = 0 gets a gradient through the warp
    layer = _layer(num_cells=8, num_tasks=2, init='identity')
    layer(torch.randn(3, 4, 12)).square().sum().backward()
    assert layer.ditask_theta.grad.abs().sum() > 0 and layer.ditask_task_theta.grad.abs().sum() > 0
    sd = bb.state_dict()
    fresh = SwinBackbone('toy', (224, 224), drop_path_rate=0.0)
    build_method('ditask', NYUD).adapt(fresh)
    fresh.load_state_dict(sd)
    bb.eval(), fresh.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = bb(x), fresh(x)
        c = copy.deepcopy(bb)(x)                       # deepcopy after forwards (caches filled)
    for fa, fb, fc in zip(a, b, c):
        torch.testing.assert_close(fa, fb)
        torch.testing.assert_close(fa, fc)


def test_config_checks_and_registry():
    m = build_method('ditask', PASCAL)
    assert isinstance(m.config, DiTASKConfig)
    assert (m.config.num_cells, m.config.task_num_cells, m.config.dropout, m.config.init) == (64, 4, 0.05,
                                                                                              'kaiming_uniform')
    assert m.config.train_reductions and not m.config.train_linears
    assert build_method(dict(type='ditask', num_cells=32, kinds=['qkv', 'fc1']), NYUD).config.kinds == ('qkv', 'fc1')
    for bad in (dict(num_cells=1), dict(task_kinds=('qkv',)), dict(init='zeros'), dict(dropout=1.0),
                dict(integration_time=0.0), dict(kinds=('reduction',))):
        with pytest.raises(ValueError):
            build_method(dict(type='ditask', **bad), PASCAL)
