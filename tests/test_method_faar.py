"""FAAR: DoRA adapters, PDRS rank shrinking (masking, scores, pruning, optimizer, checkpoints,
mmengine hook, DDP) and the TS-PD decoder."""
from __future__ import annotations

import copy
import glob
import math
import os
import os.path as osp
import socket
from types import SimpleNamespace

import pytest
import torch

from mtlbench.engine import safe_torch_load
import torch.nn.functional as F
from torch import nn

import mtlbench.methods  # noqa: F401  (registers the methods)
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.heads.hrnet import MultiTaskDecoder
from mtlbench.method import apply_trainable, build_method, param_breakdown
from mtlbench.methods.faar import (FAARConfig, FAARLinear, FAARTaskLinear, LowRankUnit, PDRSHook, SpectralScale,
                                   TSPDDecoder, format_rank_table, iter_units, low_frequency_mask,
                                   plot_rank_history, prune_model, rank_history, select_components,
                                   truncate_ranks)
from mtlbench.tasks import DATASET_TASKS

PASCAL = tuple(DATASET_TASKS['pascal_context'])
NYUD = tuple(DATASET_TASKS['nyudv2'])
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def build(cfg: dict, tasks=PASCAL, arch: str = 'toy', size: int = 224, dataset: str = 'pascal_context'):
    """Backbone + decoder adapted by FAAR, trainable flags applied."""
    backbone = SwinBackbone(arch, (size, size), drop_path_rate=0.0)
    method = build_method(dict(type='faar', **cfg), tasks)
    method.adapt(backbone)
    decoder = method.adapt_decoder(MultiTaskDecoder(tasks, DATASET_TASKS[dataset], backbone.out_channels,
                                                    out_size=(size, size)))
    apply_trainable(backbone, decoder, method.config)
    return backbone, decoder, method


def frozen_linear(d_in: int, d_out: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(d_in, d_out)
    lin.requires_grad_(False)
    return lin


def randomize(unit: LowRankUnit, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        unit.faar_A.copy_(torch.randn(unit.faar_A.shape, generator=g) * 0.3)
        unit.faar_B.copy_(torch.randn(unit.faar_B.shape, generator=g) * 0.3)


# --------------------------------------------------------------------------- config / structure
def test_config_defaults_and_checks():
    c = FAARConfig()
    assert (c.r, c.task_r, c.adapter, c.pdrs, c.prefix_masking, c.tspd, c.xtcons) == (64, 64, 'dora', True, True,
                                                                                     True, True)
    assert c.train_reductions is False and c.rho_shared == c.rho_task == 0.95 and c.beta == 0.85
    assert FAARConfig(pdrs=False).prefix_masking is False
    for bad in (dict(r=0), dict(adapter='ia3'), dict(kinds=('reduction',)), dict(rho_task=0.0), dict(beta=1.0),
                dict(min_rank=0), dict(tspd_position='head'), dict(prune_begin=3, prune_end=2)):
        with pytest.raises(ValueError):
            FAARConfig(**bad)


def test_configs_load_and_build():
    from mmengine.config import Config
    files = sorted(glob.glob(osp.join(REPO, 'configs', 'faar', '*.py')))
    names = {osp.basename(f) for f in files}
    for ds in ('pascal-context', 'nyudv2'):
        assert {f'faar_swin-t_{ds}.py', f'faar-full_swin-t_{ds}.py', f'faar-dora-r64_swin-t_{ds}.py',
                f'faar-pdrs-lora_swin-t_{ds}.py', f'faar-pdrs-dora_swin-t_{ds}.py',
                f'faar-no-xtcons_swin-t_{ds}.py', f'faar-tspd_swin-t_{ds}.py'} <= names
    seen = {}
    for f in files:
        cfg = Config.fromfile(f)
        keys = cfg.optim_wrapper.paramwise_cfg.custom_keys  # no decay on identity-initialised parts
        assert keys['magnitude']['decay_mult'] == keys['decoder.tspd.']['decay_mult'] == 0.0
        assert 'relative_position_bias_table' not in keys  # decayed, as in the reference (mtlbench/optim.py)
        assert cfg.optim_wrapper.paramwise_cfg.rel_pos_decay_mult == 1.0  # the base recipe's, kept
        m = build_method(cfg.model.method, NYUD if 'nyudv2' in f else PASCAL)
        c = m.config
        seen[osp.basename(f).split('_')[0]] = (c.adapter, c.pdrs, c.tspd, c.xtcons, len(m.runner_hooks()))
    assert seen['faar'] == seen['faar-full'] == ('dora', True, True, True, 1)
    assert seen['faar-dora-r64'] == ('dora', False, False, True, 0)
    assert seen['faar-pdrs-lora'] == ('lora', True, False, True, 1)
    assert seen['faar-pdrs-dora'] == ('dora', True, False, True, 1)
    assert seen['faar-no-xtcons'] == ('dora', True, True, False, 1)
    assert seen['faar-tspd'] == ('lora', False, True, True, 0)  # the paper's "+ TS-PD (2)": TS-PD alone


def test_adapt_sites_and_frozen_reductions():
    backbone, decoder, method = build({})
    for site in backbone.sites():
        mod = backbone.get_submodule(site.name)
        if site.kind == 'reduction':
            assert isinstance(mod, nn.Linear) and not mod.weight.requires_grad
        elif site.task_block:
            # the shared stream keeps a shared adapter (MTLoRA's layout), except in the final block
            assert isinstance(mod, FAARTaskLinear) and len(mod.faar_units) == 4
            assert mod.shared == ('frozen' if site.stage == 3 else 'adapter')
            assert [u.task for u in mod.faar_units] == list(PASCAL)
        else:
            # rank 64, capped at min(in, out) on the narrow toy backbone
            assert isinstance(mod, FAARLinear) and mod.faar_unit.rank == min(64, site.in_features, site.out_features)
        if site.kind != 'reduction':
            assert not mod.base_layer.weight.requires_grad and not mod.base_layer.bias.requires_grad
    assert isinstance(decoder, TSPDDecoder) and isinstance(decoder, MultiTaskDecoder)
    assert [tuple(s.size) for s in decoder.tspd.scales] == [(28, 28), (14, 14), (7, 7), (7, 7)]
    assert isinstance(method.runner_hooks()[0], PDRSHook)
    backbone, _, _ = build(dict(task_block_shared='frozen', tspd=False))
    assert backbone.get_submodule('layers.0.blocks.1.attn.qkv').shared == 'frozen'


# --------------------------------------------------------------------------- parameter counts
@pytest.fixture
def skip_weight_init(monkeypatch):
    """Counting needs shapes, not values: skip the (slow) random initialisation of Swin-T."""
    import mtlbench.backbones.swin as swin

    def keep(tensor, *args, **kwargs):
        return tensor
    monkeypatch.setattr(swin, 'trunc_normal_', keep)
    for name in ('kaiming_uniform_', 'uniform_', 'trunc_normal_'):
        monkeypatch.setattr(torch.nn.init, name, keep)


def test_param_counts_pascal_initial_rank_and_rank5(skip_weight_init):
    backbone, decoder, _ = build({}, PASCAL, arch='tiny', size=448)
    counts = param_breakdown(backbone, decoder)
    # shared: every linear of the non-last blocks, 16 C r + 9 C per block (C = 96, 192, 5 x 384,
    # 768: sum 2976), and of the shared stream of the last blocks of stages 1-3 (C = 96, 192, 384);
    # per task, every linear of the last blocks (C = 96, 192, 384, 768: sum 1440). 16 C = the
    # in + out widths of qkv, proj, fc1, fc2; 9 C = the DoRA magnitudes (their out widths).
    shared_c, task_c = 2976 + 672, 1440
    assert counts['adapter'] == (16 * shared_c * 64 + 9 * shared_c) + 4 * (16 * task_c * 64 + 9 * task_c)
    # patch embed 4,896 + LayerNorms 23,040 + rel-pos tables 23,322; reductions frozen
    assert counts['backbone_other'] == 51_258
    tspd = sum(p.numel() for p in decoder.tspd.parameters())
    # complex filters 2 x C x H x (W/2+1) per task at 18@56, 36@28, 72@14, 144@14, + scale/shift + 2 alphas
    assert tspd == 4 * (2 * (18 * 56 * 29 + 36 * 28 * 15 + 72 * 14 * 8 + 144 * 14 * 8) + 2 * 270 + 8) == 550_544
    assert counts['decoder'] == 1_946_624 + tspd  # the reference decoder (shared/reference/mtlora.md) + TS-PD
    # every adapter at rank 5, the paper's final average rank: the paper's 3.38M within 2%
    truncate_ranks(backbone, 5)
    counts = param_breakdown(backbone, decoder)
    assert counts['adapter'] == 16 * (shared_c + 4 * task_c) * 5 + 9 * (shared_c + 4 * task_c)
    assert abs(counts['total_trainable'] - 3.38e6) / 3.38e6 < 0.02


def test_param_count_nyud_rank5_and_channel_shared_filter(skip_weight_init):
    """NYUDv2 at rank 5 is within 7% of the paper's 2.85M and below it (a documented departure:
    the paper's NYUDv2 counts do not follow the pipeline's per-task costs, see the package
    docstring); channel-shared TS-PD filters cannot reach the paper's 3.38M at rank 5, which is
    why the per-channel filter is the default."""
    backbone, decoder, _ = build({}, NYUD, arch='tiny', size=448, dataset='nyudv2')
    truncate_ranks(backbone, 5)
    total = param_breakdown(backbone, decoder)['total_trainable']
    assert -0.07 < (total - 2.85e6) / 2.85e6 < 0
    backbone, decoder, _ = build(dict(tspd_filter_channels='shared'), PASCAL, arch='tiny', size=448)
    truncate_ranks(backbone, 5)
    assert sum(p.numel() for n, p in decoder.tspd.named_parameters() if 'filter' in n) == \
        4 * 2 * (56 * 29 + 28 * 15 + 14 * 8 + 14 * 8)  # one complex filter per task and resolution
    assert param_breakdown(backbone, decoder)['total_trainable'] < 0.9 * 3.38e6


# --------------------------------------------------------------------------- DoRA
def test_dora_function_preserving_and_math():
    base = frozen_linear(12, 10)
    layer = FAARLinear(base, r=6, scale=2.0, dropout=0.0)
    x = torch.randn(3, 2, 5, 12)  # [S, ..., in]
    layer.train()
    assert torch.allclose(layer(x), base(x), atol=1e-6)  # B = 0 at init, m = ||W||: exact start
    assert torch.allclose(layer.faar_magnitude, base.weight.norm(dim=1))
    randomize(layer.faar_unit)
    with torch.no_grad():
        layer.faar_magnitude.mul_(1.5)
    layer.eval()
    W = base.weight + 2.0 * layer.faar_unit.faar_B @ layer.faar_unit.faar_A
    expected = layer.faar_magnitude[:, None] * W / W.norm(dim=1, keepdim=True)
    assert torch.allclose(layer(x), x @ expected.t() + base.bias, atol=1e-5)
    before = layer(x)
    layer.merge()
    assert torch.allclose(layer(x), before, atol=1e-5)
    layer.unmerge()
    assert torch.allclose(base.weight, frozen_linear(12, 10).weight)


def _peft_dora():
    """peft's DoraLinearLayer (test-only oracle): importable, or from MTLBENCH_PEFT_PATH; else None."""
    import importlib
    import sys
    extra = os.environ.get('MTLBENCH_PEFT_PATH')
    if extra and extra not in sys.path:
        sys.path.append(extra)
    try:
        return importlib.import_module('peft.tuners.lora.dora').DoraLinearLayer
    except Exception:  # not installed (or its dependencies are not)
        return None


@pytest.mark.parametrize('oracle', ['peft', 'merged'])
def test_dora_matches_an_independent_implementation(oracle):
    """FAARLinear (full rank, no dropout) against peft's DoraLinearLayer, which detaches the
    column norm as DoRA's section 4.3 says; and, without peft, against autograd through the
    merged weight m (W + sBA) / ||W + sBA|| with the norm detached. Outputs and the gradients of
    A, B and m agree; the exact-norm option gives other A / B gradients."""
    torch.manual_seed(0)
    base = frozen_linear(12, 10)
    layer = FAARLinear(base, r=4, scale=2.0, dropout=0.0, prefix_masking=False)
    assert layer.detach_norm  # the default
    randomize(layer.faar_unit)
    with torch.no_grad():
        layer.faar_magnitude.mul_(torch.linspace(0.5, 1.5, 10))
    u = layer.faar_unit
    x = torch.randn(7, 12)
    target = torch.randn(7, 10)
    layer.train()
    (layer(x[None])[0] - target).square().sum().backward()
    ours = (layer(x[None])[0].detach(), u.faar_A.grad, u.faar_B.grad, layer.faar_magnitude.grad)
    A = u.faar_A.detach().clone().requires_grad_(True)
    B = u.faar_B.detach().clone().requires_grad_(True)
    m = layer.faar_magnitude.detach().clone().requires_grad_(True)
    if oracle == 'peft':
        Dora = _peft_dora()
        if Dora is None:
            pytest.skip('peft not installed (pip install peft, or set MTLBENCH_PEFT_PATH)')
        lora_A, lora_B = nn.Linear(12, 4, bias=False), nn.Linear(4, 10, bias=False)
        lora_A.weight, lora_B.weight = nn.Parameter(A), nn.Parameter(B)
        dora = Dora(fan_in_fan_out=False)
        dora.update_layer(base_layer=base, lora_A=lora_A.weight, lora_B=lora_B.weight, scaling=2.0)
        dora.weight = nn.Parameter(m)
        dora.train()
        # peft's LoRA layer: base(x) + lora_B(lora_A(dropout(x))) * scaling is replaced by the DoRA term
        out = base(x) + dora(x, lora_A=lora_A, lora_B=lora_B, scaling=2.0, base_layer=base)
        A, B, m = lora_A.weight, lora_B.weight, dora.weight
    else:
        merged = base.weight + 2.0 * B @ A
        out = x @ (m[:, None] * merged / merged.norm(dim=1, keepdim=True).detach()).t() + base.bias
    (out - target).square().sum().backward()
    for a, b in zip(ours, (out.detach(), A.grad, B.grad, m.grad)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    exact = FAARLinear(base, r=4, scale=2.0, dropout=0.0, prefix_masking=False, detach_norm=False)
    exact.load_state_dict(layer.state_dict())
    exact.train()
    (exact(x[None])[0] - target).square().sum().backward()
    assert torch.allclose(exact(x[None])[0], ours[0], atol=1e-5)
    assert not torch.allclose(exact.faar_unit.faar_B.grad, ours[2], rtol=1e-3)


def test_task_linear_streams():
    base = frozen_linear(8, 6)
    layer = FAARTaskLinear(base, ('a', 'b', 'c'), r=4, scale=1.0)
    layer.eval()
    x1 = torch.randn(1, 2, 7, 8)
    out = layer(x1)
    assert out.shape == (4, 2, 7, 6)
    assert all(torch.allclose(out[s], base(x1[0]), atol=1e-6) for s in range(4))  # identity at init
    for u in layer.faar_units:
        randomize(u, seed=len(u.task) + ord(u.task))
    xs = torch.randn(4, 2, 7, 8)
    out = layer(xs)
    assert torch.allclose(out[0], base(xs[0]), atol=1e-6)  # shared stream: frozen W x0 + b
    for t, u in enumerate(layer.faar_units):
        W = base.weight + u.faar_B @ u.faar_A
        Wd = layer.faar_magnitude[t][:, None] * W / W.norm(dim=1, keepdim=True)
        assert torch.allclose(out[1 + t], xs[1 + t] @ Wd.t() + base.bias, atol=1e-5)  # own weight on own input
    out1 = layer(x1)
    assert torch.allclose(out1[2], layer(x1.expand(4, -1, -1, -1))[2], atol=1e-6)  # one stream broadcast
    with pytest.raises(ValueError):
        layer(torch.randn(2, 1, 8))


def test_lora_variant():
    base = frozen_linear(8, 5)
    layer = FAARLinear(base, r=3, scale=4.0, variant='lora')
    assert not hasattr(layer, 'faar_magnitude')
    randomize(layer.faar_unit)
    layer.eval()
    x = torch.randn(1, 4, 8)
    u = layer.faar_unit
    assert torch.allclose(layer(x), base(x) + 4.0 * x @ (u.faar_B @ u.faar_A).t(), atol=1e-5)


def test_toy_model_starts_as_pretrained_function():
    torch.manual_seed(0)
    plain = SwinBackbone('toy', (224, 224), drop_path_rate=0.0)
    plain_dec = MultiTaskDecoder(PASCAL, DATASET_TASKS['pascal_context'], plain.out_channels, out_size=(224, 224))
    backbone, decoder = copy.deepcopy(plain), copy.deepcopy(plain_dec)
    method = build_method(dict(type='faar', r=8, task_r=4), PASCAL)
    method.adapt(backbone)
    decoder = method.adapt_decoder(decoder)
    for m in (plain, plain_dec, backbone, decoder):
        m.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = plain_dec(plain(x))
        out = decoder(backbone(x))
    for t in PASCAL:
        assert torch.allclose(out[t], ref[t], atol=1e-4), t


# --------------------------------------------------------------------------- prefix masking and scores
def test_prefix_masking_only_uses_a_prefix():
    base = frozen_linear(10, 9)
    layer = FAARLinear(base, r=8, scale=1.0, variant='lora')
    u = layer.faar_unit
    randomize(u)
    x = torch.randn(1, 3, 10)
    layer.train()
    seen = set()
    torch.manual_seed(0)
    for _ in range(200):
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        b = u.active_rank
        seen.add(b)
        expected = base(x) + (x @ u.faar_A[:b].t()) @ u.faar_B[:, :b].t()
        assert torch.allclose(y, expected, atol=1e-6)
        y.square().sum().backward()
        assert u.faar_A.grad[b:].abs().sum() == 0 and u.faar_B.grad[:, b:].abs().sum() == 0
        if b < 8:
            assert u.faar_A.grad[:b].abs().sum() > 0
    assert seen == set(range(1, 9))  # b ~ U{1..r}
    layer.eval()
    layer(x)
    assert u.active_rank == 8  # full rank in evaluation
    no_mask = FAARLinear(base, r=8, prefix_masking=False)
    no_mask.train()
    no_mask(x)
    assert no_mask.faar_unit.active_rank == 8


def test_scores_match_hand_computation():
    base = frozen_linear(7, 6)
    layer = FAARLinear(base, r=6, scale=1.0, dropout=0.0, beta=0.5, score_norm='none')
    u = layer.faar_unit
    randomize(u)
    layer.train()
    x = torch.randn(1, 4, 7)
    torch.manual_seed(3)
    layer(x).square().sum().backward()
    b = u.active_rank
    gA, gB = u.faar_A.grad.clone(), u.faar_B.grad.clone()
    s1 = 0.5 * ((u.faar_A * gA).sum(1).abs() + (u.faar_B * gB).sum(0).abs()).detach()
    imp = u.importance()
    # one EMA step, bias-corrected: the raw score on the active prefix, 0 elsewhere
    assert torch.allclose(imp[:b], s1[:b], rtol=1e-5) and (imp[b:] == 0).all()
    assert (u.faar_score_count[:, :b] == 1).all() and (u.faar_score_count[:, b:] == 0).all()
    # second step: EMA with beta = 0.5 and bias correction 1 - 0.5^2 on components active twice
    layer.zero_grad()
    torch.manual_seed(11)
    layer(x).square().sum().backward()
    b2 = u.active_rank
    sA2 = (u.faar_A * u.faar_A.grad).sum(1).abs().detach()
    sB2 = (u.faar_B * u.faar_B.grad).sum(0).abs().detach()
    sA1, sB1 = (u.faar_A * gA).sum(1).abs().detach(), (u.faar_B * gB).sum(0).abs().detach()
    both = min(b, b2)
    expected = 0.5 * ((0.25 * sA1 + 0.5 * sA2) + (0.25 * sB1 + 0.5 * sB2)) / 0.75
    assert torch.allclose(u.importance()[:both], expected[:both], rtol=1e-5)


def test_active_mean_score_normalisation():
    """score_norm='active_mean': each batch's A- and B-terms are divided by their mean over the
    active prefix, so a batch's scale (a small prefix leaves a large residual) does not count."""
    layer = FAARLinear(frozen_linear(7, 6), r=6, scale=1.0, dropout=0.0, beta=0.5, score_norm='active_mean')
    u = layer.faar_unit
    randomize(u)
    layer.train()
    x = torch.randn(1, 4, 7)
    torch.manual_seed(3)
    (layer(x).square().sum() * 100.0).backward()
    b = u.active_rank
    sA = (u.faar_A * u.faar_A.grad).sum(1).abs().detach()[:b]
    sB = (u.faar_B * u.faar_B.grad).sum(0).abs().detach()[:b]
    assert torch.allclose(u.importance()[:b], 0.5 * (sA / sA.mean() + sB / sB.mean()), rtol=1e-5)
    assert torch.allclose(u.importance()[:b].mean(), torch.tensor(1.0), rtol=1e-5)  # 1/2 (1 + 1)


def test_scores_unscale_amp_gradients():
    base = frozen_linear(4, 4)
    layer = FAARLinear(base, r=2, scale=1.0, prefix_masking=False, score_norm='none')
    u = layer.faar_unit
    randomize(u)
    class FakeScaler:  # what the hook hands over: mmengine AmpOptimWrapper.loss_scaler (a GradScaler)
        _scale = torch.tensor(1024.0)
    scaler = FakeScaler()
    u.set_grad_scaler(scaler)
    layer.train()
    x = torch.randn(1, 3, 4)
    (layer(x).sum() * 1024.0).backward()
    scaled = u.importance().clone()
    u.set_grad_scaler(None)
    layer.zero_grad()
    u.faar_score_ema.zero_()
    u.faar_score_count.zero_()
    layer(x).sum().backward()
    assert torch.allclose(scaled, u.importance(), rtol=1e-4)


def test_select_components():
    s = torch.tensor([0.05, 0.5, 0.0, 0.3, 0.15])
    assert select_components(s, 0.95).tolist() == [1, 3, 4]  # 0.5 + 0.3 + 0.15 = 0.95
    assert select_components(s, 0.96).tolist() == [0, 1, 3, 4]
    assert select_components(s, 0.95, keep_order='score').tolist() == [1, 3, 4]
    assert select_components(s, 0.5).tolist() == [1]
    assert select_components(s, 0.5, min_rank=2).tolist() == [1, 3]
    assert select_components(torch.zeros(4), 0.95).tolist() == [0, 1, 2, 3]  # nothing learnt: keep all
    # 'gain': keep while score >= 0.25 x the mean kept score (a fixed point), by hand:
    # all six: mean 0.5 -> cut 0.05 and 0.1 (< 0.125); kept four: mean 0.725 -> cut 0.15 (< 0.181);
    # kept three: mean 0.917 -> threshold 0.229, all stay.
    g = torch.tensor([0.05, 1.0, 0.1, 1.2, 0.15, 0.55])
    assert select_components(g, rule='gain', gain_threshold=0.25).tolist() == [1, 3, 5]
    flat = torch.tensor([0.9, 1.1, 1.0, 0.8, 1.2, 1.0])  # a flat spectrum: nothing is cut
    assert select_components(flat, rule='gain', gain_threshold=0.25).tolist() == list(range(6))
    # coverage cuts a flat spectrum of 32 components at every prune (0.95 of it needs 31 of 32)
    assert len(select_components(torch.ones(32), 0.95, rule='coverage')) == 31
    assert len(select_components(torch.ones(32), rule='gain', gain_threshold=0.25)) == 32


# --------------------------------------------------------------------------- pruning
def _step(layer, opt, x):
    opt.zero_grad()
    layer(x).square().mean().backward()
    opt.step()


def test_prune_shrinks_tensors_and_slices_adamw_state():
    base = frozen_linear(10, 8)
    layer = FAARLinear(base, r=6, scale=1.0, rho=0.9)
    u = layer.faar_unit
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    x = torch.randn(1, 16, 10)
    layer.train()
    for _ in range(3):
        _step(layer, opt, x)
    old_A, old_B = u.faar_A, u.faar_B
    state_A = {k: v.clone() for k, v in opt.state[old_A].items()}
    state_B = {k: v.clone() for k, v in opt.state[old_B].items()}
    with torch.no_grad():  # decide the scores: components 4 and 1 carry 0.95 of the mass
        u.faar_score_ema.copy_(torch.tensor([[0.01, 0.3, 0.02, 0.01, 0.6, 0.01]]).repeat(2, 1))
        u.faar_score_count.fill_(50)
    n_before = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    changed = prune_model(layer, [opt], step=1)
    assert changed == {'faar_unit': (6, 2)}
    assert u.faar_A.shape == (2, 10) and u.faar_B.shape == (8, 2) and u.rank == 2
    assert torch.equal(u.faar_A, old_A[[1, 4]]) and torch.equal(u.faar_B, old_B[:, [1, 4]])
    n_after = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert n_before - n_after == 4 * (10 + 8)
    group_params = [p for g in opt.param_groups for p in g['params']]
    assert any(p is u.faar_A for p in group_params) and not any(p is old_A for p in group_params)
    assert old_A not in opt.state and old_B not in opt.state
    assert torch.equal(opt.state[u.faar_A]['exp_avg'], state_A['exp_avg'][[1, 4]])
    assert torch.equal(opt.state[u.faar_A]['exp_avg_sq'], state_A['exp_avg_sq'][[1, 4]])
    assert torch.equal(opt.state[u.faar_B]['exp_avg'], state_B['exp_avg'][:, [1, 4]])
    assert torch.equal(opt.state[u.faar_A]['step'], state_A['step'])
    assert u.faar_score_ema.shape == (2, 2)
    before = u.faar_A.detach().clone()
    _step(layer, opt, x)  # the optimizer keeps working on the new tensors
    assert not torch.equal(before, u.faar_A.detach())
    assert opt.state[u.faar_A]['exp_avg'].shape == (2, 10)
    assert rank_history(layer) == [{'epoch': 0, 'layer': '', 'task': 'shared', 'rank': 6},
                                   {'epoch': 1, 'layer': '', 'task': 'shared', 'rank': 2}]


def test_pdrs_recovers_known_low_rank():
    """A frozen linear regressing W + (rank-2 delta): PDRS shrinks the LoRA / DoRA adapter to about
    rank 2 while the loss keeps falling."""
    torch.set_num_threads(1)

    def run(variant: str, seed: int = 0, k: int = 2, d: int = 16, r: int = 8, spe: int = 40, epochs: int = 8):
        torch.manual_seed(seed)
        base = nn.Linear(d, d)
        base.requires_grad_(False)
        delta = (torch.randn(d, k) / d ** 0.5) @ (torch.randn(k, d) / d ** 0.5)
        # The exact DoRA norm gradient: with the detached norm (the default) this small, noise-free
        # case, pruned from the first epoch with no stop rule, cuts the second true component at
        # the 6th prune (its score is read only in batches whose prefix already covers the truth,
        # so it is small noise once fitted). The planted-rank test below runs the default schedule.
        layer = FAARLinear(base, r, scale=1.0, variant=variant, detach_norm=False)
        opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=2e-2, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / (spe * epochs))))
        X = torch.randn(2048, d)
        Y = X @ (base.weight + delta).t() + base.bias

        def evaluate():
            layer.eval()
            with torch.no_grad():
                return (layer(X[None]) - Y[None]).square().mean().item()
        losses, ranks = [evaluate()], [r]
        for ep in range(epochs):
            layer.train()
            for _ in range(spe):
                idx = torch.randint(0, 2048, (64,))
                loss = (layer(X[idx][None]) - Y[idx][None]).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            if ep < epochs - 2:  # prune after epochs 1..6, then 2 epochs without pruning
                prune_model(layer, [opt], ep + 1)
            losses.append(evaluate())
            ranks.append(layer.faar_unit.rank)
        return losses, ranks

    losses, ranks = run('lora')
    assert ranks[-1] in (2, 3) and ranks == sorted(ranks, reverse=True)
    assert losses[-1] < 1e-2 * losses[0] and losses[-1] < losses[1]
    losses, ranks = run('dora')
    assert 2 <= ranks[-1] <= 4
    assert losses[-1] < 2e-2 * losses[0] and losses[-1] < losses[1]


def _rank_recovery():
    import importlib.util
    spec = importlib.util.spec_from_file_location('faar_rank_recovery',
                                                  osp.join(REPO, 'benchmarks', 'faar_rank_recovery.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pdrs_recovers_planted_ranks_and_keeps_the_fit():
    """Planted flat-spectrum ranks 2 / 8 / 24 (d = 96, benchmarks/faar_rank_recovery.py, default
    options, the real PDRSHook behind an mmengine LinearLR warm-up of 3 epochs): final ranks
    within [0.75, 1.5]x the truth and ordered like it, about the same for initial ranks 16 / 32 /
    64, a fit no worse than 1.1x the same adapter trained unpruned, pruning stopped by itself and
    never before the warm-up ended."""
    import logging
    logging.getLogger('mmengine').setLevel(logging.WARNING)
    torch.set_num_threads(1)
    bench = _rank_recovery()
    warmup = 3
    cases = [([2], 32), ([8], 32), ([24], 32), ([8], 16), ([8], 64), ([2, 8, 24], 32)]
    final = {}
    for truths, r0 in cases:
        res = bench.train(truths, r0, True, warmup=warmup)
        ref = bench.train(truths, r0, False, warmup=warmup)
        where = f'truths {truths}, initial rank {r0}'
        for k, rank, err, err_ref in zip(truths, res['ranks'], res['errors'], ref['errors']):
            assert 0.75 * k <= rank <= 1.5 * k, (where, res['ranks'])
            assert err <= 1.1 * err_ref, (where, res['errors'], ref['errors'])
        assert res['ranks'] == sorted(res['ranks']) and len(set(res['ranks'])) == len(truths), where
        assert res['stopped'] and res['stop_reason'] == 'stable' and res['stop_step'] < 40, where
        assert not any(res['masking_after']), where  # trained on unmasked after the stop
        assert res['begin'] == warmup and res['first_prune'] >= warmup, where  # read off the scheduler
        final[(tuple(truths), r0)] = res['ranks']
    assert final[((2,), 32)][0] < final[((8,), 32)][0] < final[((24,), 32)][0]
    eights = [final[((8,), r0)][0] for r0 in (16, 32, 64)]
    assert max(eights) <= 1.25 * min(eights), eights  # nearly independent of the initial rank


def test_warmup_end_from_mmengine_schedulers():
    from mmengine.optim.scheduler import CosineAnnealingLR, LinearLR
    from mtlbench.methods.faar.pdrs import warmup_end
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    iters = [LinearLR(opt, start_factor=1e-3, by_epoch=False, begin=0, end=200),  # 5 epochs of 40 iterations
             CosineAnnealingLR(opt, T_max=800, by_epoch=False, begin=200, end=1000)]
    assert warmup_end(iters, by_epoch=True, iters_per_epoch=40) == 5
    assert warmup_end(iters, by_epoch=False, iters_per_epoch=40) == 200
    epochs = [LinearLR(opt, start_factor=1e-3, by_epoch=True, begin=0, end=20)]
    assert warmup_end(epochs, by_epoch=True, iters_per_epoch=7) == 20
    assert warmup_end(epochs, by_epoch=False, iters_per_epoch=7) == 140
    assert warmup_end(None, True, 40) is None
    from mtlbench.lr_schedule import ReferenceCosineLR  # the reference recipe's warm-up prefix
    ref = ReferenceCosineLR.build_iter_from_epoch(opt, warmup=20, end=300, epoch_length=40)
    assert warmup_end([ref], by_epoch=True, iters_per_epoch=40) == 20
    assert warmup_end([ref], by_epoch=False, iters_per_epoch=40) == 800
    no_warmup = ReferenceCosineLR.build_iter_from_epoch(opt, warmup=0, end=300, epoch_length=40)
    assert warmup_end([no_warmup], by_epoch=True, iters_per_epoch=40) is None
    assert warmup_end([CosineAnnealingLR(opt, T_max=10, by_epoch=True, begin=0, end=10)], True, 40) is None
    # the hook without an explicit begin starts after the warm-up; with one, where asked
    layer = FAARLinear(frozen_linear(4, 4), r=2)
    from mmengine.optim import OptimWrapper
    runner = SimpleNamespace(model=layer, optim_wrapper=OptimWrapper(opt), param_schedulers=iters,
                             train_dataloader=range(40), epoch=0, iter=0)
    hook = PDRSHook()
    hook.before_train(runner)
    assert hook.schedule.begin == 5 and not hook._due(4) and hook._due(5)
    asked = PDRSHook(begin=2)
    asked.before_train(runner)
    assert asked.schedule.begin == 2


def test_prune_schedule_loss_stop_unmasks_and_survives_a_checkpoint():
    """stop='loss': the prune at epoch 1 changed a rank and the mean loss after it (1.2) is more
    than 5% above the mean before it (1.0), so the epoch-2 prune does not happen and training goes
    on unmasked; the stop is part of the checkpoint."""
    from mtlbench.methods.faar.pdrs import PruneSchedule
    layer = FAARLinear(frozen_linear(6, 6), r=4, prune_rule='coverage', score_norm='none')
    u = layer.faar_unit
    with torch.no_grad():
        u.faar_score_ema.copy_(torch.tensor([[1.0, 1.0, 1.0, 0.001]]).repeat(2, 1))
        u.faar_score_count.fill_(10)
    sched = PruneSchedule(stop='loss', loss_tol=0.05)
    for v in (1.0, 1.0):
        sched.observe_loss(torch.tensor(v))
    assert sched.step(layer, [], 1) == {'faar_unit': (4, 3)}
    assert not sched.stopped and u.prefix_masking
    for v in (1.1, 1.3, float('nan')):  # mean 1.2; a non-finite loss is ignored
        sched.observe_loss(v)
    assert sched.step(layer, [], 2) == {} and u.rank == 3
    assert (sched.stopped, sched.stop_step, sched.stop_reason) == (True, 2, 'loss')
    assert not u.prefix_masking and not u.scoring and not sched.due(3)
    fresh = FAARLinear(frozen_linear(6, 6), r=4)
    again = PruneSchedule(stop='loss')
    again.load_state_dict(sched.state_dict(), fresh)
    assert again.stopped and not fresh.faar_unit.prefix_masking and not again.due(5)
    # 'stable' counts only unchanged prunes whose kept scores are flat, once some rank has moved
    stable = PruneSchedule(stop='stable', patience=2, flatness=0.4)
    layer2 = FAARLinear(frozen_linear(6, 6), r=4, prune_rule='gain')
    with torch.no_grad():  # gain rule: 0.001 < 0.25 x 0.45 is cut; then 0.3 >= 0.25 x 0.6 stays
        layer2.faar_unit.faar_score_ema.copy_(torch.tensor([[1.0, 0.3, 0.5, 0.001]]).repeat(2, 1))
        layer2.faar_unit.faar_score_count.fill_(10)
    assert stable.step(layer2, [], 1) == {'faar_unit': (4, 3)} and stable.unchanged == 0
    stable.step(layer2, [], 2)  # unchanged, lowest / mean kept = 0.3 / 0.6 = 0.5 >= 0.4
    assert not stable.stopped and stable.unchanged == 1
    stable.step(layer2, [], 3)
    assert stable.stopped and stable.stop_reason == 'stable' and stable.stop_step == 3
    never_moved = PruneSchedule(stop='stable', patience=1)
    layer4 = FAARLinear(frozen_linear(6, 6), r=3, prune_rule='gain')
    with torch.no_grad():  # flat from the start: the components have not separated yet
        layer4.faar_unit.faar_score_ema.fill_(1.0)
        layer4.faar_unit.faar_score_count.fill_(10)
    for step in (1, 2, 3):
        never_moved.step(layer4, [], step)
    assert not never_moved.stopped
    uneven = PruneSchedule(stop='stable', patience=1, flatness=0.4)
    layer3 = FAARLinear(frozen_linear(6, 6), r=4, prune_rule='gain')
    with torch.no_grad():
        layer3.faar_unit.faar_score_ema.copy_(torch.tensor([[1.0, 0.3, 1.4, 0.001]]).repeat(2, 1))
        layer3.faar_unit.faar_score_count.fill_(10)
    uneven.step(layer3, [], 1)  # cuts 0.001
    uneven.step(layer3, [], 2)  # unchanged, but 0.3 / 0.9 < 0.4
    assert layer3.faar_unit.rank == 3 and not uneven.stopped  # kept, but still fading: not settled


def test_hook_stop_goes_into_the_checkpoint_and_comes_back():
    """A stop recorded by PDRSHook.before_save_checkpoint is restored by after_load_checkpoint (as
    mmengine's resume calls it), so a resumed run neither prunes again nor masks."""
    from mmengine.optim import OptimWrapper
    layer = FAARLinear(frozen_linear(6, 6), r=4)
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-3)
    runner = SimpleNamespace(model=layer, optim_wrapper=OptimWrapper(opt), epoch=0, iter=0)
    hook = PDRSHook()
    hook.before_train(runner)
    hook.schedule.finish(layer, 7, 'stable')
    checkpoint = {'meta': {}}
    hook.before_save_checkpoint(runner, checkpoint)
    fresh = FAARLinear(frozen_linear(6, 6), r=4)
    runner2 = SimpleNamespace(model=fresh, optim_wrapper=OptimWrapper(opt), epoch=7, iter=0)
    resumed = PDRSHook()
    resumed.after_load_checkpoint(runner2, checkpoint)
    resumed.before_train(runner2)
    assert resumed.schedule.stopped and resumed.schedule.stop_step == 7 and not resumed._due(8)
    assert not fresh.faar_unit.prefix_masking and not fresh.faar_unit.scoring
    method = build_method(dict(type='faar'), PASCAL)  # the run record carries the stop
    method.runner_hooks()[0].schedule.finish(layer, 5, 'loss')
    assert method.record_extras(layer)['pdrs_stop'] == {'step': 5, 'reason': 'loss'}


# --------------------------------------------------------------------------- checkpoints
def test_pruned_state_dict_and_optimizer_load_into_initial_rank_model():
    torch.manual_seed(0)
    backbone, decoder, _ = build(dict(r=8, task_r=4))
    model = nn.ModuleDict(dict(backbone=backbone, decoder=decoder))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for i, (_, u) in enumerate(iter_units(model)):  # deterministic, varied scores
        with torch.no_grad():
            u.faar_score_ema.copy_(torch.rand(2, u.rank, generator=torch.Generator().manual_seed(i)) ** 4)
            u.faar_score_count.fill_(10)
    for p in params:  # fake one optimizer step so that there is AdamW state
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    prune_model(model, [opt], step=1)
    ranks = {n: u.rank for n, u in iter_units(model)}
    assert min(ranks.values()) < 4 and max(ranks.values()) <= 8
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    torch.manual_seed(1)
    fresh_bb, fresh_dec, _ = build(dict(r=8, task_r=4))
    fresh = nn.ModuleDict(dict(backbone=fresh_bb, decoder=fresh_dec))
    fresh_params = [p for p in fresh.parameters() if p.requires_grad]
    fresh_opt = torch.optim.AdamW(fresh_params, lr=1e-3)  # built before loading, as mmengine's Runner does
    ids = [id(p) for p in fresh_params]
    fresh.load_state_dict(state, strict=True)
    assert {n: u.rank for n, u in iter_units(fresh)} == ranks
    assert [id(p) for p in fresh.parameters() if p.requires_grad] == ids  # resized in place
    fresh_opt.load_state_dict(opt_state)
    for p in fresh_params:
        st = fresh_opt.state[p]
        assert st['exp_avg'].shape == p.shape
    model.eval()
    fresh.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a = model['decoder'](model['backbone'](x))
        b = fresh['decoder'](fresh['backbone'](x))
    assert all(torch.allclose(a[t], b[t], atol=1e-5) for t in PASCAL)
    # history survives the round trip; deepcopy keeps working
    assert rank_history(fresh) == rank_history(model)
    copy.deepcopy(fresh)


def test_gradients_reach_exactly_the_trainable_parameters():
    torch.manual_seed(0)
    backbone, decoder, _ = build(dict(r=8, task_r=4))
    backbone.train()
    decoder.train()
    out = decoder(backbone(torch.randn(2, 3, 224, 224)))
    sum(v.square().mean() for v in out.values()).backward()
    named = list(backbone.named_parameters()) + [(f'decoder.{n}', p) for n, p in decoder.named_parameters()]
    missing = [n for n, p in named if p.requires_grad and p.grad is None]
    leaked = [n for n, p in named if not p.requires_grad and p.grad is not None]
    assert not missing and not leaked, (missing[:5], leaked[:5])
    frozen = {n for n, p in named if not p.requires_grad}
    assert any(n.endswith('downsample.reduction.weight') for n in frozen)
    assert all(n.endswith(('base_layer.weight', 'base_layer.bias', 'reduction.weight')) for n in frozen)
    # every unit scored this step (hooks ran inside backward)
    assert all(u.faar_score_count.sum() > 0 for _, u in iter_units(backbone))


# --------------------------------------------------------------------------- TS-PD
def test_tspd_identity_zero_filter_and_consensus():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 8, 10)  # [T, B, C, H, W]
    scale = SpectralScale(3, 4, (8, 10), complex_filter=True, xtcons=True, radius=0.25)
    assert torch.allclose(scale(x), x, atol=1e-5)  # filter 1, scale 1, shift 0, alpha 0
    real = SpectralScale(3, 4, (8, 10), complex_filter=False)
    assert torch.allclose(real(x), x, atol=1e-5)
    with torch.no_grad():
        scale.faar_filter.zero_()
        scale.faar_shift.copy_(torch.arange(12.).view(3, 4))
    out = scale(x)  # zero filter: only the shift is left
    assert torch.allclose(out, torch.arange(12.).view(3, 1, 4, 1, 1).expand_as(out), atol=1e-5)
    # XT-Cons against a direct computation, CW-SP at identity
    cons = SpectralScale(3, 4, (8, 10), xtcons=True, radius=0.2)
    with torch.no_grad():
        cons.faar_alpha_low.copy_(torch.tensor([0.5, -0.2, 1.0]))
        cons.faar_alpha_high.copy_(torch.tensor([0.1, 0.3, 0.0]))
    low = low_frequency_mask((8, 10), 0.2)
    F_all = torch.fft.rfft2(x, norm='ortho')
    for t in range(3):
        avg = sum(F_all[s] for s in range(3) if s != t) / 2
        delta = avg - F_all[t]
        gain = cons.faar_alpha_low[t] * low + cons.faar_alpha_high[t] * (1 - low)
        expected = x[t] + torch.fft.irfft2(gain * delta, s=(8, 10), norm='ortho')
        assert torch.allclose(cons(x)[t], expected.detach(), atol=1e-5)
    # a single task: no consensus parameters
    assert not hasattr(SpectralScale(1, 4, (8, 10)), 'faar_alpha_low')


def test_tspd_channel_shared_filter_against_numpy():
    """tspd_filter_channels='shared': one filter per task and resolution ([T, 1, H, W//2+1]),
    applied to every channel alike; checked on a channel-constant input against numpy's FFT."""
    import numpy as np
    T, B, C, H, W = 2, 2, 5, 6, 9
    shared = SpectralScale(T, C, (H, W), complex_filter=True, xtcons=False, shared_channels=True)
    per_channel = SpectralScale(T, C, (H, W), complex_filter=True, xtcons=False)
    assert tuple(shared.faar_filter.shape) == (T, 1, H, W // 2 + 1, 2)
    assert shared.faar_filter.numel() * C == per_channel.faar_filter.numel()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        shared.faar_filter.copy_(torch.randn(shared.faar_filter.shape, generator=g))
    x = torch.randn(T, B, 1, H, W, generator=g).expand(T, B, C, H, W).contiguous()  # the same map in every channel
    out = shared(x).detach().numpy()
    K = shared.faar_filter.detach().numpy()
    for t in range(T):
        k = K[t, 0, ..., 0] + 1j * K[t, 0, ..., 1]
        expected = np.fft.irfft2(np.fft.rfft2(x[t, :, 0].numpy(), norm='ortho') * k, s=(H, W), norm='ortho')
        for c in range(C):
            np.testing.assert_allclose(out[t, :, c], expected, rtol=1e-4, atol=1e-5)
    # the config option reaches the decoder; the per-channel filter stays the default
    _, decoder, _ = build(dict(r=2, task_r=2, tspd_filter_channels='shared'))
    assert all(s.faar_filter.shape[1] == 1 for s in decoder.tspd.scales)
    _, decoder, _ = build(dict(r=2, task_r=2))
    assert [s.faar_filter.shape[1] for s in decoder.tspd.scales] == [18, 36, 72, 144]


def test_low_frequency_mask():
    m = low_frequency_mask((8, 8), 0.25)
    assert m.shape == (8, 5) and m[0, 0] == 1 and m[2, 0] == 1 and m[0, 2] == 1 and m[2, 1] == 0 and m[4, 4] == 0
    fy, fx = torch.fft.fftfreq(8), torch.fft.rfftfreq(8)
    assert torch.equal(m.bool(), (fy[:, None] ** 2 + fx[None] ** 2).sqrt() <= 0.25)


def test_tspd_positions_and_options():
    for cfg in (dict(tspd_position='before_downsampler', tspd_filter='real'), dict(xtcons=False), dict(tspd=False)):
        backbone, decoder, _ = build(dict(r=4, task_r=2, **cfg), NYUD, dataset='nyudv2')
        assert isinstance(decoder, TSPDDecoder) == cfg.get('tspd', True)
        backbone.eval()
        decoder.eval()
        with torch.no_grad():
            out = decoder(backbone(torch.randn(1, 3, 224, 224)))
        assert {t: tuple(v.shape) for t, v in out.items()} == {'semseg': (1, 40, 224, 224),
                                                                'depth': (1, 1, 224, 224),
                                                                'normals': (1, 3, 224, 224)}
    assert decoder.__class__ is MultiTaskDecoder


# --------------------------------------------------------------------------- history, table, plot
def test_rank_history_table_and_plot(tmp_path):
    backbone, decoder, method = build(dict(r=6, task_r=3, tspd=False))
    truncate_ranks(backbone, 2, step=4)
    hist = method.record_extras(backbone)['rank_history']
    assert {'epoch', 'layer', 'task', 'rank'} <= set(hist[0])
    assert {'layer': 'layers.0.blocks.0.attn.qkv', 'task': 'shared', 'rank': 6, 'epoch': 0} in hist
    assert {'layer': 'layers.3.blocks.1.mlp.fc2', 'task': 'normals', 'rank': 2, 'epoch': 4} in hist
    table = format_rank_table(backbone)
    assert 'layers.1.blocks.1.mlp.fc1' in table and 'human_parts' in table and 'average rank 2.00' in table
    path = plot_rank_history(hist, str(tmp_path / 'ranks.png'))
    assert osp.getsize(path) > 1000
    assert plot_rank_history(backbone, str(tmp_path / 'ranks2.png'))


# --------------------------------------------------------------------------- mmengine Runner: prune, save, resume
def _tiny_model_cls():
    from mmengine.model import BaseModel

    class TinyFAARModel(BaseModel):
        def __init__(self, seed: int = 0) -> None:
            super().__init__()
            torch.manual_seed(seed)
            kw = dict(scale=1.0, rho=0.6, prune_rule='coverage', score_norm='none')
            self.lin1 = FAARLinear(frozen_linear(8, 16, seed), r=6, **kw)
            self.lin2 = FAARTaskLinear(frozen_linear(16, 6, seed + 1), ('a', 'b'), r=5, **kw)

        def forward(self, inputs, targets=None, mode='tensor'):
            y = self.lin2(torch.relu(self.lin1(inputs[None])))[1:].mean(0)
            if mode == 'loss':
                return {'loss': (y - targets).square().mean()}
            return y

    return TinyFAARModel


def _runner(work_dir, model, epochs, resume_from=None):
    from mtlbench.engine import MTLRunner
    g = torch.Generator().manual_seed(0)
    data = [dict(inputs=torch.randn(8, generator=g), targets=torch.randn(6, generator=g)) for _ in range(32)]
    return MTLRunner(
        model=model, work_dir=str(work_dir), default_scope='mtlbench',
        train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=True), batch_size=8,
                              num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2)),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1), logger=dict(type='LoggerHook',
                                                                                         interval=100)),
        custom_hooks=[PDRSHook(interval=1, by_epoch=True)],
        load_from=resume_from, resume=resume_from is not None,
        log_level='WARNING', randomness=dict(seed=0))


def test_runner_prunes_checkpoints_and_resumes(tmp_path):
    cls = _tiny_model_cls()
    runner = _runner(tmp_path / 'a', cls(), epochs=2)
    runner.train()
    model = runner.model
    ranks = {n: u.rank for n, u in iter_units(model)}
    assert all(r < 6 for n, r in ranks.items() if n.startswith('lin1'))
    assert all(r < 5 for n, r in ranks.items() if n.startswith('lin2'))
    ckpt = safe_torch_load(osp.join(tmp_path / 'a', 'epoch_1.pth'))
    epoch1 = {k[:-len('.faar_A')]: v.shape[0] for k, v in ckpt['state_dict'].items() if k.endswith('faar_A')}
    assert epoch1['lin1.faar_unit'] < 6  # the epoch-1 checkpoint holds the pruned tensors ...
    opt_shapes = {tuple(v['exp_avg'].shape) for v in ckpt['optimizer']['state'].values()}
    assert (epoch1['lin1.faar_unit'], 8) in opt_shapes  # ... and the matching optimizer state
    # resume from epoch 1 into a model built at the initial rank
    runner2 = _runner(tmp_path / 'b', cls(seed=5), epochs=3, resume_from=osp.join(tmp_path / 'a', 'epoch_1.pth'))
    runner2.train()  # MTLRunner stores the log history as plain data: weights-only resume works
    model2 = runner2.model
    final = {n: u.rank for n, u in iter_units(model2)}
    assert all(final[n] <= epoch1[n] for n in final)
    opt = runner2.optim_wrapper.optimizer
    for p in (q for g in opt.param_groups for q in g['params']):
        if p in opt.state:
            assert opt.state[p]['exp_avg'].shape == p.shape
    hist = rank_history(model2)
    assert [e['epoch'] for e in hist if e['layer'] == 'lin1'][0] == 0


# --------------------------------------------------------------------------- DDP (2 processes, gloo)
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class _DDPNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        kw = dict(scale=1.0, rho=0.7, prune_rule='coverage', score_norm='none')
        self.lin1 = FAARLinear(frozen_linear(8, 16), r=6, **kw)
        self.lin2 = FAARTaskLinear(frozen_linear(16, 6, 1), ('a', 'b'), r=5, **kw)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.lin2(torch.relu(self.lin1(x[None])))[1:].mean(0))


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import datetime

    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import OptimWrapper

    os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'] = '127.0.0.1', str(port)
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        net = _DDPNet()
        ddp = MMDistributedDataParallel(module=net, device_ids=None)  # broadcast_buffers defaults to True
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
        runner = SimpleNamespace(model=ddp, optim_wrapper=OptimWrapper(opt), epoch=0, iter=0)
        hook = PDRSHook()
        hook.before_train(runner)  # keeps the score buffers rank-local (re-wraps)
        g = torch.Generator().manual_seed(100 + rank)  # different data per rank
        for _ in range(6):
            x, y = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
            opt.zero_grad()
            F.mse_loss(runner.model(x), y).backward()
            opt.step()
        local = torch.cat([u.importance() for _, u in iter_units(net)])
        hook.after_train_epoch(runner)  # all-reduce scores, prune, fix optimizer, re-wrap DDP
        ranks = [u.rank for _, u in iter_units(net)]
        for _ in range(2):  # training goes on with the new wrapper
            x, y = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
            opt.zero_grad()
            F.mse_loss(runner.model(x), y).backward()
            opt.step()
        flat = torch.cat([p.detach().flatten() for p in net.parameters()])
        # a model at the initial rank, wrapped, then loading the pruned state (as a resume does)
        fresh = _DDPNet()
        fresh_ddp = MMDistributedDataParallel(module=fresh, device_ids=None)
        fresh_opt = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
        fresh.load_state_dict(net.state_dict())
        fresh_opt.load_state_dict(opt.state_dict())
        runner2 = SimpleNamespace(model=fresh_ddp, optim_wrapper=OptimWrapper(fresh_opt), epoch=1, iter=12)
        del fresh_ddp
        PDRSHook().before_train(runner2)
        x, y = torch.randn(16, 8, generator=g), torch.randn(16, 2, generator=g)
        fresh_opt.zero_grad()
        F.mse_loss(runner2.model(x), y).backward()
        fresh_opt.step()
        flat2 = torch.cat([p.detach().flatten() for p in fresh.parameters()])
        torch.save(dict(local=local, ranks=ranks, flat=flat, flat2=flat2,
                        wrapped=isinstance(runner.model, MMDistributedDataParallel) and runner.model is not ddp),
                   osp.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_prune_identically(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(osp.join(tmp_path, f'rank{i}.pt'), weights_only=True) for i in range(2))
    assert not torch.allclose(r0['local'], r1['local'])  # each rank scored its own gradients
    assert r0['ranks'] == r1['ranks'] and min(r0['ranks']) < 5  # ... but pruned identically
    assert r0['wrapped'] and r1['wrapped']
    assert torch.equal(r0['flat'], r1['flat'])  # DDP still averages gradients after re-wrapping
    assert torch.equal(r0['flat2'], r1['flat2'])  # and after loading a pruned checkpoint


def test_resize_on_load_survives_a_live_gradient_accumulator():
    """A graph (or a DDP reducer) still holding the old gradient accumulator must not break the
    backward pass after a pruned state dict resized the parameters in place."""
    layer = FAARLinear(frozen_linear(8, 8), r=6, scale=1.0)
    layer.train()
    x = torch.randn(1, 4, 8)
    kept_alive = layer(x).sum()
    kept_alive.backward(retain_graph=True)
    small = FAARLinear(frozen_linear(8, 8), r=6, scale=1.0)
    truncate_ranks(small, 3)
    layer.load_state_dict(small.state_dict())
    assert layer.faar_unit.faar_A.shape == (3, 8)
    layer.zero_grad(set_to_none=True)
    layer(x).sum().backward()
    assert layer.faar_unit.faar_B.grad.shape == (8, 3)
    import pickle
    clone = pickle.loads(pickle.dumps(layer))  # no weak references in the pickled state
    assert clone.faar_unit.rank == 3
