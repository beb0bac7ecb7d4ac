"""Free Sinewich (``methods/free_sinewich.py``): parameter counts against the paper, the Sine-AWB
and Clock Net math by hand, the shared decoder, function-preserving start and gradient flow."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlbench.methods  # noqa: F401  (registers the methods)
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.heads.hrnet import HRNetHead, MultiTaskDecoder
from mtlbench.layers.lowrank import LoRALinear
from mtlbench.method import apply_trainable, build_method, param_breakdown
from mtlbench.methods.free_sinewich import (ClockNet, FreeSinewichConfig, SineAWBLinear, SineSharedDecoder,
                                            TaskFrequencies, _TokenState, fuse_awb, gaussian_kernel1d,
                                            gaussian_lowpass, sine_modulate)
from mtlbench.model import MultiTaskModel
from mtlbench.tasks import DATASET_TASKS

PASCAL = tuple(DATASET_TASKS['pascal_context'])
NYUD = tuple(DATASET_TASKS['nyudv2'])
CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'free_sinewich'


# ----------------------------------------------------------------------------- counts
# The paper's totals (PASCAL-Context, Swin-T, incl. decoders) are given to 0.01M, so each is
# uncertain by +-0.005M and a difference of two by +-0.01M.
ROUNDING = 0.005e6
PAPER = {'r64': 6.53e6, 'r32': 4.04e6, 'no-clock': 6.51e6, 'no-lowpass': 6.53e6, 'no-sine': 6.53e6,
         'indep-base': 10.22e6, 'indep-decoder': 7.41e6}
ROW_OPTIONS = {'r64': dict(), 'r32': dict(r=32), 'no-clock': dict(clock='learned'), 'no-lowpass': dict(lowpass=False),
               'no-sine': dict(sine=False), 'indep-base': dict(independent_base=True),
               'indep-decoder': dict(shared_decoder=False)}
#: The paper's totals minus ours, the same for every row (the slope matches; see the module
#: docstring): the constant part of the reported counts this reconstruction does not explain.
CONSTANT_SHORTFALL = 0.18e6
MTLORA_DECODER = 1_946_624


@pytest.fixture(scope='module')
def tiny_backbone():
    return SwinBackbone('tiny', (448, 448))


def _breakdown(tiny_backbone, dataset='pascal_context', **options):
    tasks = tuple(DATASET_TASKS[dataset])
    backbone = copy.deepcopy(tiny_backbone)
    method = build_method(dict(type='free_sinewich', **options), tasks)
    method.adapt(backbone)
    decoder = method.adapt_decoder(MultiTaskDecoder(tasks, DATASET_TASKS[dataset], backbone.out_channels,
                                                    out_size=(448, 448)))
    apply_trainable(backbone, decoder, method.config)
    return param_breakdown(backbone, decoder)


@pytest.fixture(scope='module')
def totals(tiny_backbone):
    return {row: _breakdown(tiny_backbone, **opts)['total_trainable'] for row, opts in ROW_OPTIONS.items()}


def test_rank_slope_matches_the_paper(totals):
    """T(64) - T(32) is what the rank-dependent parts cost: 2.49M in the paper, +-0.01M rounding."""
    assert abs((totals['r64'] - totals['r32']) - (PAPER['r64'] - PAPER['r32'])) <= 2 * ROUNDING


@pytest.mark.parametrize('row', ['no-clock', 'no-lowpass', 'no-sine', 'indep-decoder'])
def test_ablation_differences_match_the_paper(totals, row):
    """Each ablation row minus the r = 64 row, within the +-0.01M of two rounded figures (the
    Clock Nets: 0.02M, i.e. 10k-30k parameters)."""
    assert abs((totals[row] - totals['r64']) - (PAPER[row] - PAPER['r64'])) <= 2 * ROUNDING


def test_independent_base_difference_close_to_the_paper(totals):
    """+3.69M in the paper; per-task A, W, B on fc1 and fc2 give +3.65M (-1.1 %), the closest
    reading found (proj/fc1/fc2 with 3x3 priors: +4.65M; with 1x1: +3.48M)."""
    assert abs((totals['indep-base'] - totals['r64']) / (PAPER['indep-base'] - PAPER['r64']) - 1) < 0.015


@pytest.mark.parametrize('row', list(ROW_OPTIONS))
def test_totals_fall_short_of_the_paper_by_one_constant(totals, row):
    """Every reported total minus ours is the documented constant (0.18M) up to the rounding and
    the slope's +-0.01M; the independent-base row adds its own 0.04M."""
    extra = 0.04e6 if row == 'indep-base' else 0.0
    assert abs(PAPER[row] - totals[row] - CONSTANT_SHORTFALL - extra) <= 3 * ROUNDING, totals[row]


def test_reduction_lora_breaks_the_slope(tiny_backbone):
    """The optional LoRA on the PatchMerging reductions brings totals closer (6.60M / 3.99M) but
    costs 6r(96 + 192 + 384) per rank: T(64) - T(32) = 2.61M, 0.12M off the paper's 2.49M."""
    t64 = _breakdown(tiny_backbone, reduction_lora=True)['total_trainable']
    t32 = _breakdown(tiny_backbone, r=32, reduction_lora=True)['total_trainable']
    assert abs(t64 / PAPER['r64'] - 1) < 0.02 and abs(t32 / PAPER['r32'] - 1) < 0.02
    assert (t64 - t32) - (PAPER['r64'] - PAPER['r32']) > 0.1e6


def test_breakdown_as_documented(tiny_backbone, totals):
    """The module docstring's table (regression: the figures the docstring and the notes quote)."""
    assert totals['r64'] == 6_345_791 and totals['r32'] == 3_863_615
    assert totals['no-clock'] == 6_327_470 and totals['indep-base'] == 9_995_327
    assert totals['indep-decoder'] == 7_216_738
    counts = _breakdown(tiny_backbone)
    assert counts['backbone_other'] == 51_258            # patch embed, norms, rel-pos tables; reductions frozen
    assert abs(counts['decoder'] / 1.07e6 - 1) < 0.02     # the paper's shared-decoder size
    assert _breakdown(tiny_backbone, shared_decoder=False)['decoder'] == MTLORA_DECODER


def test_nyud_counts(tiny_backbone):
    counts = _breakdown(tiny_backbone, 'nyudv2')
    assert counts['total_trainable'] == 6_172_259
    assert counts['decoder'] == 3 * 183_168 + 291_600 + 3 * 3_240 + 1081 * (40 + 1 + 3) + 5 * 768 + 13


# ----------------------------------------------------------------------------- hand math
def test_gaussian_and_lowpass_by_hand():
    g = gaussian_kernel1d(7, 1.0)
    x = torch.arange(-3, 4, dtype=torch.float32)
    torch.testing.assert_close(g, torch.exp(-x ** 2 / 2) / torch.exp(-x ** 2 / 2).sum())
    # a unit impulse far from the border spreads into the 7x7 Gaussian
    m = torch.zeros(11, 13)
    m[5, 6] = 1.0
    out = gaussian_lowpass(m, 7, 1.0, 'zeros')
    torch.testing.assert_close(out[2:9, 3:10], torch.outer(g, g))
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)
    # reflect padding keeps a constant kernel constant; zero padding darkens the corner by the
    # half-window mass on each axis
    c = torch.full((2, 6, 8), 3.0)
    torch.testing.assert_close(gaussian_lowpass(c, 7, 1.0, 'reflect'), c)
    corner = gaussian_lowpass(c, 7, 1.0, 'zeros')[0, 0, 0]
    assert corner.item() == pytest.approx(3.0 * g[3:].sum().item() ** 2, rel=1e-6)
    # the gain is folded into the taps
    torch.testing.assert_close(gaussian_lowpass(m, 7, 1.0, 'zeros', gain=0.4), 0.4 * out)


def test_fuse_awb_is_A_W_Bt_per_tap():
    torch.manual_seed(0)
    A, W, B = torch.randn(5, 3), torch.randn(3, 3, 3, 3), torch.randn(4, 3)
    M = fuse_awb(A, W, B)
    assert M.shape == (5, 4, 3, 3)
    for u in range(3):
        for v in range(3):
            torch.testing.assert_close(M[:, :, u, v], A @ W[:, :, u, v] @ B.t())
    torch.testing.assert_close(fuse_awb(A, W, B, taps_first=True), M.permute(2, 3, 0, 1))
    # per-task factors
    At, Wt, Bt = torch.randn(2, 5, 3), torch.randn(2, 3, 3, 1, 1), torch.randn(2, 4, 3)
    Mt = fuse_awb(At, Wt, Bt)
    torch.testing.assert_close(Mt[1, :, :, 0, 0], At[1] @ Wt[1, :, :, 0, 0] @ Bt[1].t())
    # sin(w_t M), element-wise, one kernel per task
    omega = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(sine_modulate(M, omega), torch.stack([torch.sin(0.5 * M), torch.sin(2.0 * M)]))
    torch.testing.assert_close(sine_modulate(M, omega, sine=False), torch.stack([0.5 * M, 2.0 * M]))


def _hand_layer(padding='reflect', sine=True, lowpass=True, sine_norm='reference'):
    """1x1 Sine-AWB on Linear(8, 6) whose fused kernel is the constant pi / 15 (r = 1)."""
    cfg = FreeSinewichConfig(r=1, conv_kernel=1, dropout=0.0, clock='fixed', lowpass_padding=padding,
                             sine=sine, lowpass=lowpass, sine_norm=sine_norm)
    freq = TaskFrequencies(2, cfg.omega_scale_init, cfg.omega_offset_init, cfg.omega_spread, learnable=False)
    layer = SineAWBLinear(nn.Linear(8, 6), 2, 'fc1', 1, freq, cfg)
    with torch.no_grad():
        layer.awb_A.fill_(math.pi / 15)
        layer.awb_B.fill_(1.0)
    return layer


def test_sine_and_lowpass_on_a_hand_case():
    # frequencies 10 * (1 -+ 0.25) = 7.5, 12.5; sin(7.5 pi/15) = 1, sin(12.5 pi/15) = 1/2;
    # the update is scale / w_ref = 4 / 10 times the blurred sine kernel
    layer = _hand_layer()
    torch.testing.assert_close(layer.frequencies(), torch.tensor([7.5, 12.5]))
    k = layer.task_kernels()
    assert k.shape == (2, 6, 8, 1, 1)
    torch.testing.assert_close(k[0], torch.full((6, 8, 1, 1), 0.4))
    torch.testing.assert_close(k[1], torch.full((6, 8, 1, 1), 0.2))
    # zero-padded blur: the corner keeps only the inner half-window on both axes
    g = gaussian_kernel1d(7, 1.0)
    corner = _hand_layer('zeros').task_kernels()[0, 0, 0, 0, 0]
    assert corner.item() == pytest.approx(0.4 * g[3:].sum().item() ** 2, rel=1e-6)
    # without the sine the frequency is a plain gain: 0.4 * 7.5 * pi / 15 = 0.2 pi
    k = _hand_layer(sine=False).task_kernels()
    torch.testing.assert_close(k[0], torch.full((6, 8, 1, 1), 0.2 * math.pi))
    # without the low-pass a non-constant kernel is left as sin(w M) * 0.4
    layer = _hand_layer(lowpass=False)
    with torch.no_grad():
        layer.awb_A.copy_(torch.linspace(0, 1, 6).view(6, 1))
    M = torch.linspace(0, 1, 6).view(6, 1).expand(6, 8)
    torch.testing.assert_close(layer.task_kernels()[1, :, :, 0, 0], 0.4 * torch.sin(12.5 * M))


def test_sine_awb_forward_against_explicit_convolutions():
    torch.manual_seed(0)
    cfg = FreeSinewichConfig(r=4, dropout=0.0, clock='learned')
    T = 3
    freq = TaskFrequencies(T, 10.0, 1.0, 0.25)
    layer = SineAWBLinear(nn.Linear(6, 10), T, 'fc2', 4, freq, cfg)
    x = torch.randn(1 + T, 2, 7, 7, 6)                      # forked streams on a 7x7 map
    # a fresh layer is the frozen layer on the shared input for every stream (A = 0, sin 0 = 0)
    out = layer(x)
    torch.testing.assert_close(out, layer.base_layer(x[:1]).expand(1 + T, -1, -1, -1, -1))
    with torch.no_grad():
        layer.awb_A.normal_(0, 0.1)
        layer.awb_W.normal_(0, 0.3)
    out = layer(x)
    kernels = layer.task_kernels()                          # [T, 10, 6, 3, 3]
    base = layer.base_layer(x[:1])
    torch.testing.assert_close(out[0], base[0])              # shared stream: frozen layer only
    for t in range(T):
        conv = F.conv2d(x[1 + t].permute(0, 3, 1, 2), kernels[t], padding=1).permute(0, 2, 3, 1)
        torch.testing.assert_close(out[1 + t], base[0] + conv)
    # one shared input stream is broadcast to every task
    out1 = layer(x[:1])
    for t in range(T):
        conv = F.conv2d(x[0].permute(0, 3, 1, 2), kernels[t], padding=1).permute(0, 2, 3, 1)
        torch.testing.assert_close(out1[1 + t], base[0] + conv)
    # task tokens (no map) only see the frozen layer
    tokens = torch.randn(1, 2, T, 6)
    torch.testing.assert_close(layer(tokens), layer.base_layer(tokens))


def test_clock_net_formula_by_hand():
    state = _TokenState(None, 2, 1, 'embedding')
    clock = ClockNet(3, state, s_init=2.0, c_init=0.5, hidden=0)
    with torch.no_grad():
        clock.clock_w.copy_(torch.tensor([1.0, -2.0, 0.5]))
    tokens = torch.tensor([[1.0, -1.0, 2.0], [0.0, 3.0, -4.0]])
    # ReLU -> [1, 0, 2] . w = 2 ; [0, 3, 0] . w = -6
    expected = torch.tensor([2 * (math.tanh(2.0) + 0.5), 2 * (math.tanh(-6.0) + 0.5)])
    torch.testing.assert_close(clock.frequencies(tokens), expected)
    # bounded in s (c -+ 1) whatever the tokens
    w = clock.frequencies(100 * torch.randn(50, 3))
    assert (w > 2 * (0.5 - 1) - 1e-5).all() and (w < 2 * (0.5 + 1) + 1e-5).all()
    # 'stage' source: the batch mean of the task tokens entering the block, per task
    state = _TokenState(None, 2, 2, 'stage')
    clock = ClockNet(3, state)
    prompts = torch.randn(1, 5, 4, 3)                        # [S, B, T * n, C]
    state.record(prompts)
    p = prompts[0].mean(0).view(2, 2, 3).mean(1)
    torch.testing.assert_close(clock(), clock.frequencies(p))
    torch.testing.assert_close(clock.current(), clock.frequencies(p))   # the latest forward's, for records


def test_clock_net_hidden_layer_by_hand():
    """hidden=2: w_t = s (tanh(w . ReLU(U p_t + u) + b) + c)."""
    state = _TokenState(None, 2, 1, 'stage')
    clock = ClockNet(3, state, s_init=2.0, c_init=0.5, hidden=2)
    with torch.no_grad():
        clock.hidden.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]))
        clock.hidden.bias.copy_(torch.tensor([0.0, -1.0]))
        clock.clock_w.copy_(torch.tensor([2.0, -1.0]))
        clock.clock_b.fill_(0.25)
    tokens = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]])
    # token 0: U p + u = [-2, 2] -> ReLU [0, 2] -> w . = -2 ; token 1: [2, 1] -> [2, 1] -> 3
    expected = torch.tensor([2 * (math.tanh(-2 + 0.25) + 0.5), 2 * (math.tanh(3 + 0.25) + 0.5)])
    torch.testing.assert_close(clock.frequencies(tokens), expected)
    assert sum(p.numel() for p in clock.parameters()) == 3 * 2 + 2 + 2 + 1 + 2


def test_task_centred_clock_input_sees_only_what_tells_tasks_apart():
    """clock_input='task_centred': a component shared by all task tokens (which the image-driven
    token updates add in every block) and the tokens' scale do not move the frequencies; the
    task-specific part does."""
    torch.manual_seed(0)
    clock = ClockNet(6, _TokenState(None, 4, 1, 'stage'), hidden=5, w_std=0.3, task_centred=True)
    tokens = torch.randn(4, 6)
    w = clock.frequencies(tokens)
    torch.testing.assert_close(clock.frequencies(3.0 * tokens + 50 * torch.randn(1, 6)), w)
    centred = tokens - tokens.mean(0)
    raw = ClockNet(6, _TokenState(None, 4, 1, 'stage'), hidden=5)
    raw.load_state_dict(clock.state_dict())
    torch.testing.assert_close(raw.frequencies(centred / centred.pow(2).mean().sqrt()), w)
    assert w.max() - w.min() > 0.5                    # distinct tasks start at distinct frequencies


def test_clock_nets_read_the_stage_token(toy_model):
    """Default clocks read the task token entering their block: changing the image changes the
    tokens after stage 1, hence the frequencies; the embedding itself is not what they read."""
    model = copy.deepcopy(toy_model).eval()
    fc1 = model.backbone.get_submodule('layers.2.blocks.1.mlp.fc1')
    assert fc1.frequencies.hidden.in_features == model.backbone.layers[2].dim
    with torch.no_grad():
        model.backbone(torch.randn(1, 3, 224, 224))
        a = fc1.frequencies.current().clone()
        model.backbone(torch.randn(1, 3, 224, 224))
        b = fc1.frequencies.current().clone()
    assert not torch.allclose(a, b)


# ----------------------------------------------------------------------------- shared decoder
def test_shared_decoder_modulated_conv_by_hand():
    torch.manual_seed(0)
    channels = (4, 8, 8, 8)
    base = MultiTaskDecoder(PASCAL, DATASET_TASKS['pascal_context'], (32, 64, 128, 128), channels, (56, 56)).eval()
    freq = TaskFrequencies(4, 10.0, 1.0, 0.25)
    dec = SineSharedDecoder(copy.deepcopy(base), freq, 'sine', omega_ref=10.0).eval()
    # shared conv weight once; per task: bias, BatchNorm, output conv
    width = sum(channels)
    assert dec.shared_conv.weight.shape == (4 * width, width)
    for t, o in DATASET_TASKS['pascal_context'].items():
        assert sum(p.numel() for p in dec.heads[t].parameters()) == 4 * width + 2 * 4 * width + (4 * width + 1) * o
    omega = freq()
    W = base.heads[PASCAL[0]].conv1.weight[:, :, 0, 0]
    torch.testing.assert_close(dec.shared_conv.task_weights(), torch.sin(omega.view(-1, 1, 1) * W) / 10.0)
    feats = [torch.randn(5, 2, c, s, s) for c, s in zip((32, 64, 128, 128), (7, 4, 2, 2))]
    out = dec(feats)
    for i, t in enumerate(PASCAL):
        reduced = base.downsamplers[t]([f[1 + i] for f in feats])
        h = torch.einsum('oc,bchw->bohw', torch.sin(omega[i] * W) / 10.0, HRNetHead.fuse(reduced))
        head = base.heads[t]
        y = head.conv2(F.relu(head.bn(h + head.conv1.bias.view(1, -1, 1, 1))))
        torch.testing.assert_close(out[t], F.interpolate(y, (56, 56), mode='bilinear', align_corners=False))
    # 'scale' and 'none' modulations
    dec.shared_conv.modulation = 'scale'
    torch.testing.assert_close(dec.shared_conv.task_weights(), omega.view(-1, 1, 1) / 10.0 * W)
    dec.shared_conv.modulation = 'none'
    torch.testing.assert_close(dec.shared_conv.task_weights()[2], W)


# ----------------------------------------------------------------------------- toy model
TOY = dict(type='SwinBackbone', arch='toy', img_size=(224, 224), drop_path_rate=0.1)


@pytest.fixture(scope='module')
def toy_model():
    torch.manual_seed(0)
    return MultiTaskModel('pascal_context', dict(type='free_sinewich'), TOY)


def test_toy_sites_and_trainable_set(toy_model):
    bb = toy_model.backbone
    awb = {n for n, m in bb.named_modules() if isinstance(m, SineAWBLinear)}
    assert awb == {f'layers.{i}.blocks.1.mlp.{k}' for i in range(4) for k in ('fc1', 'fc2')}
    assert isinstance(bb.get_submodule('layers.1.blocks.1.attn.proj'), LoRALinear)
    assert type(bb.get_submodule('layers.2.downsample.reduction')) is nn.Linear      # frozen, no LoRA
    trainable = {n for n, p in toy_model.named_parameters() if p.requires_grad}
    assert 'backbone.layers.2.downsample.reduction.weight' not in trainable
    assert 'backbone.layers.0.blocks.1.mlp.fc1.base_layer.weight' not in trainable
    assert {'backbone.prompt_embed.tokens', 'backbone.layers.1.prompt_merge.proj.weight',
            'backbone.layers.3.blocks.1.mlp.fc2.frequencies.clock_w', 'backbone.layers.3.blocks.1.mlp.fc2.awb_W',
            'decoder.shared_conv.weight', 'decoder.shared_conv.frequencies.clock_s',
            'backbone.layers.0.blocks.0.attn.relative_position_bias_table', 'backbone.patch_embed.proj.weight'
            } <= trainable
    assert toy_model.method.variant() == 'r=64'


def test_fresh_model_computes_the_frozen_backbone(toy_model):
    model = copy.deepcopy(toy_model).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = model.backbone(x)
    assert [tuple(f.shape) for f in feats] == [(5, 1, 32, 28, 28), (5, 1, 64, 14, 14), (5, 1, 128, 7, 7),
                                               (5, 1, 128, 7, 7)]
    for f in feats:   # every task stream equals the shared one: all updates start at zero
        torch.testing.assert_close(f[1:], f[:1].expand_as(f[1:]))
    plain = copy.deepcopy(model.backbone)    # same task tokens, adapters replaced by the frozen layers
    for name in model.adapted_sites:
        plain.replace_site(name, plain.get_submodule(name).base_layer)
    with torch.no_grad():
        ref = plain(x)
    for f, g in zip(feats, ref):
        torch.testing.assert_close(f[:1], g)


def test_gradients_reach_exactly_the_trainable_parameters(toy_model):
    model = copy.deepcopy(toy_model).train()
    with torch.no_grad():   # leave the zero init so that priors, factors and clocks get signal
        for m in model.modules():
            if isinstance(m, SineAWBLinear):
                m.awb_A.normal_(0, 0.05)
    out = model(torch.randn(1, 3, 224, 224))
    assert {t: tuple(y.shape) for t, y in out.items()} == {'semseg': (1, 21, 224, 224), 'human_parts': (1, 7, 224, 224),
                                                           'sal': (1, 1, 224, 224), 'normals': (1, 3, 224, 224)}
    sum(y.pow(2).mean() for y in out.values()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    fc2 = model.backbone.get_submodule('layers.3.blocks.1.mlp.fc2')
    for p in (fc2.awb_A, fc2.awb_W, fc2.awb_B, fc2.frequencies.clock_w, fc2.frequencies.clock_s,
              fc2.frequencies.clock_c, model.backbone.prompt_embed.tokens,
              model.decoder.shared_conv.frequencies.clock_w):
        assert p.grad.abs().sum() > 0


def test_eval_is_deterministic_and_copies_agree(toy_model):
    model = copy.deepcopy(toy_model).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = model(x), model(x)
        c = copy.deepcopy(model)(x)
    for t in a:
        torch.testing.assert_close(a[t], b[t])
        torch.testing.assert_close(a[t], c[t])
    rec = model.method.record_extras(model)['frequencies']
    assert set(rec['decoder.shared_conv']) == set(PASCAL) and len(rec) == 9


@pytest.mark.parametrize('options', [
    dict(awb_kinds=('proj', 'fc1', 'fc2')), dict(conv_kernel=1, independent_base=True),
    dict(shared_path='plain', clock='fixed'), dict(shared_decoder=False),
], ids=['proj', 'k1-indep', 'plain-fixed', 'indep-decoder'])
def test_options_forward(options):
    torch.manual_seed(0)
    model = MultiTaskModel('pascal_context', dict(type='free_sinewich', **options), TOY).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith('awb_A'):
                p.normal_(0, 0.05)
        feats = model.backbone(torch.randn(1, 3, 224, 224))
        out = model.decoder(feats)
    assert all(f.shape[0] == 5 for f in feats)
    assert all(out[t].shape == (1, o, 224, 224) for t, o in DATASET_TASKS['pascal_context'].items())
    assert not torch.allclose(feats[0][1], feats[0][2])      # task streams differ once A moved
    if 'proj' in options.get('awb_kinds', ()):                # streams fork at the attention output
        assert isinstance(model.backbone.get_submodule('layers.0.blocks.1.attn.proj'), SineAWBLinear)


def test_stage_clock_round_trip_and_copies():
    """``clock_source='stage'``: clocks read the tokens of the forward; copies and state dicts agree."""
    options = dict(type='free_sinewich', clock_source='stage')
    torch.manual_seed(0)
    model = MultiTaskModel('pascal_context', options, TOY).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith('awb_A'):
                p.normal_(0, 0.05)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    torch.manual_seed(1)
    other = MultiTaskModel('pascal_context', options, TOY).eval()
    other.load_state_dict(copy.deepcopy(model.state_dict()))
    dup = copy.deepcopy(model)
    assert dup.decoder.shared_conv.frequencies._state is dup.backbone.prompt_embed._state
    assert dup.backbone.prompt_embed._state is not model.backbone.prompt_embed._state
    with torch.no_grad():
        out, out_dup = other(x), dup(x)
    for t in ref:
        torch.testing.assert_close(out[t], ref[t])
        torch.testing.assert_close(out_dup[t], ref[t])


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize('bad', [dict(awb_kinds=('qkv',)), dict(awb_kinds=()), dict(conv_kernel=2),
                                 dict(clock='nope'), dict(lowpass_size=4), dict(r=0),
                                 dict(train_reductions=True, reduction_lora=True), dict(shared_path='plain', independent_base=True)])
def test_invalid_options_are_refused(bad):
    with pytest.raises(ValueError):
        FreeSinewichConfig(**bad)


def test_configs_cover_the_paper_rows():
    from mmengine.config import Config
    variants = {'r64': {}, 'r32': dict(r=32), 'r64-no-clock': dict(clock='learned'),
                'r64-no-lowpass': dict(lowpass=False), 'r64-no-sine': dict(sine=False),
                'r64-indep-base': dict(independent_base=True), 'r64-indep-decoder': dict(shared_decoder=False)}
    for dataset in ('pascal-context', 'nyudv2'):
        default = Config.fromfile(str(CONFIGS / f'free-sinewich_swin-t_{dataset}.py')).model.method
        assert default.to_dict() == dict(type='free_sinewich', r=64)
        for v, opts in variants.items():
            method = Config.fromfile(str(CONFIGS / f'free-sinewich-{v}_swin-t_{dataset}.py')).model.method.to_dict()
            assert method.pop('type') == 'free_sinewich'
            cfg = FreeSinewichConfig(**method)
            for k, val in opts.items():
                assert getattr(cfg, k) == val, (v, k)


# ----------------------------------------------------------------------------- precision, regime
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_kernels_are_fp32_under_autocast(dtype):
    """bf16 / fp16 would round w_t M before the sine (fp16 flushes small products to zero); the
    kernels must match the fp32 ones exactly."""
    torch.manual_seed(0)
    cfg = FreeSinewichConfig(r=4, dropout=0.0, clock='fixed')
    layer = SineAWBLinear(nn.Linear(16, 24), 3, 'fc1', 4, TaskFrequencies(3, 10.0, 1.0, 0.25, False), cfg)
    with torch.no_grad():
        layer.awb_A.normal_(0, 0.3)
    ref = layer.task_kernels()
    with torch.autocast('cpu', dtype=dtype):
        got = layer.task_kernels()
        out = layer(torch.randn(1, 2, 5, 5, 16))
    assert got.dtype == torch.float32 and out.shape == (4, 2, 5, 5, 24)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    dec = SineSharedDecoder(MultiTaskDecoder(PASCAL, DATASET_TASKS['pascal_context'], (32, 64, 128, 128),
                                             (4, 8, 8, 8), (56, 56)), TaskFrequencies(4, 10.0, 1.0, 0.25), 'sine')
    with torch.autocast('cpu', dtype=dtype):
        assert dec.shared_conv.task_weights().dtype == torch.float32


def test_sine_regime_by_hand():
    """Constant kernel pi/15, frequencies 7.5 and 12.5: arguments pi/2 and 5 pi/6."""
    layer = _hand_layer()
    reg = layer.sine_regime()
    assert reg['max_abs_arg'] == pytest.approx(5 * math.pi / 6, rel=1e-6)
    # |sin z - z| / z: task 0 (1 - pi/2) / (pi/2) in size, task 1 (5 pi/6 - 1/2) / (5 pi/6)
    assert reg['max_rel_gap'] == pytest.approx(1 - 0.5 / (5 * math.pi / 6), rel=1e-5)
    assert reg['mean_task_cosine'] == pytest.approx(1.0, abs=1e-6)   # constant kernels are parallel
    with torch.no_grad():
        layer.awb_A.zero_()
    assert layer.sine_regime() is None                               # fresh layer: nothing to measure


def test_record_extras_logs_the_sine_regime(toy_model):
    model = copy.deepcopy(toy_model).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)                     # 'stage' clocks report the frequencies of the latest forward
    assert model.method.record_extras(model)['sine_regime']['max_abs_arg'] is None   # fresh: all zero
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SineAWBLinear):
                m.awb_A.normal_(0, 0.05)
    reg = model.method.record_extras(model)['sine_regime']
    assert len(reg['layers']) == 8
    assert reg['max_abs_arg'] == max(v['max_abs_arg'] for v in reg['layers'].values())
    assert -1 <= reg['mean_task_cosine'] <= 1 and reg['max_rel_gap'] > 0


def test_rms_normalisation_by_hand():
    """sine_norm='rms': z = w_t M / nu with nu = rms(M) w_ref / kappa, update gain * nu * sin(z);
    the linearisation is the 'reference' one, and the update scales with M (sin is odd)."""
    ref, layer = _hand_layer(lowpass=False), _hand_layer(lowpass=False, sine_norm='rms')
    with torch.no_grad():
        for m in (ref, layer):
            m.awb_A.copy_(torch.tensor([1.0, -1.0, 2.0, 0.5, 0.0, -3.0]).view(6, 1))
    M = torch.tensor([1.0, -1.0, 2.0, 0.5, 0.0, -3.0]).view(6, 1).expand(6, 8)
    nu = math.sqrt((1 + 1 + 4 + 0.25 + 0 + 9) / 6) * 10.0 / 0.5           # kappa = 0.5 (default)
    for t, w in enumerate((7.5, 12.5)):
        torch.testing.assert_close(layer.task_kernels()[t, :, :, 0, 0], 0.4 * nu * torch.sin(w * M / nu))
    z, nu_t = layer.sine_argument()
    torch.testing.assert_close(layer._finish(z, nu_t, False), ref._finish(*ref.sine_argument(), False))
    k = layer.task_kernels()
    with torch.no_grad():
        layer.awb_A.mul_(1e-3)
    torch.testing.assert_close(layer.task_kernels(), 1e-3 * k)


# ----------------------------------------------------------------------------- the sine acts
#: Trained magnitudes from ``benchmarks/sine_regime.py`` (toy Swin, synthetic PASCAL-Context,
#: 96 AdamW steps at lr 1e-3, every ``sine_norm``): rms of ``A`` 0.6e-2 to 1.1e-2 (``A`` starts at 0),
#: ``W`` within 0.002 rms of its identity init, ``B`` at its init scale; the trained frequencies of
#: the default run's last-stage fc1 (three tasks close together: the harder case).
TRAINED_A_RMS = 1e-2
TRAINED_OMEGA = (8.34, 8.35, 8.39, 11.19)


def _swin_fc1_at_trained_magnitudes(**options):
    """Sine-AWB on a Swin-T stage-3 fc1 (384 -> 1536, r = 64, 3x3 prior, 4 tasks)."""
    cfg = FreeSinewichConfig(r=64, dropout=0.0, clock='fixed', **options)
    freq = TaskFrequencies(4, 10.0, 1.0, 0.25, learnable=False)
    freq.omega.copy_(torch.tensor(TRAINED_OMEGA))
    layer = SineAWBLinear(nn.Linear(384, 1536), 4, 'fc1', 64, freq, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.awb_A.copy_(TRAINED_A_RMS * torch.randn(layer.awb_A.shape, generator=g))
    return layer


def test_sine_acts_at_trained_magnitudes():
    """The default normalisation keeps the sine out of its linear range: the task kernels differ
    from their linearisation (the 'w/o sine' kernels) by more than 10 % and from each other
    (mean cosine < 0.99). The former normalisation (w_t M / w_ref) at the same magnitudes is
    linear and gives every task the same kernel: the test fails if the sine collapses back."""
    reg = _swin_fc1_at_trained_magnitudes().sine_regime()
    assert reg['max_rel_gap'] > 0.10 and reg['mean_task_cosine'] < 0.99, reg
    old = _swin_fc1_at_trained_magnitudes(sine_norm='reference').sine_regime()
    assert old['max_rel_gap'] < 0.01 and old['mean_task_cosine'] > 0.9999, old


def test_sine_acts_on_trained_factors():
    """A short training (toy Swin, 10 AdamW steps on fixed random targets) and the sine regime the
    run record logs (``record_extras``): the trained task kernels differ from their linearisation
    by more than 50 % (max over the Sine-AWB layers) and the mean inter-task kernel cosine is below
    0.99. In the linear range every task kernel is ``w_t`` times one kernel (cosine 1 up to the
    cubic term of the sine), so 0.99, an angle of 8 degrees (a component orthogonal to the other
    tasks' kernels of 14 % of the norm), is far from anything a linear sine can give.
    With the former normalisation (``sine_norm='reference'``) the same run gives a gap of 2 % and
    a cosine of 0.99997, and this test fails (checked)."""
    torch.manual_seed(0)
    model = MultiTaskModel('pascal_context', dict(type='free_sinewich'),
                           dict(type='SwinBackbone', arch='toy', img_size=(64, 64), window_size=4, drop_path_rate=0.0),
                           decoder=dict(channels=(4, 8, 8, 8)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 64, 64, generator=g)
    model.train()
    with torch.no_grad():
        targets = {t: torch.randn(v.shape, generator=g) for t, v in model(x).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    for _ in range(10):
        out = model(x)
        loss = sum((out[t] - targets[t]).square().mean() for t in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model(x)                     # 'stage' clocks report the frequencies of the latest forward
    reg = model.method.record_extras(model)['sine_regime']
    assert len([v for v in reg['layers'].values() if v]) == 8       # every Sine-AWB layer has trained
    assert reg['max_abs_arg'] > 1.0 and reg['max_rel_gap'] > 0.5 and reg['mean_task_cosine'] < 0.99, \
        {k: v for k, v in reg.items() if k != 'layers'}
