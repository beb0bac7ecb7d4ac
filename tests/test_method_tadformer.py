"""TADFormer: parameter counts, prompts in window attention, TPC / DTF hand checks, what the
initial model preserves, gradients, checkpoints and configs."""
import copy
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

import mtlbench.methods  # noqa: F401  (registers methods)
from mtlbench.backbones.swin import SwinBackbone, SwinBlock
from mtlbench.heads.hrnet import MultiTaskDecoder
from mtlbench.layers.lowrank import LoRALinear
from mtlbench.method import apply_trainable, build_method, param_breakdown
from mtlbench.methods.tadformer import (DynamicTaskFilter, PromptMerge, StageGate, StaticTaskFilter,
                                        TADFormerBlock, TADFormerConfig, TaskAdaptiveLinear, TaskPromptConditioning,
                                        TaskPrompts, depthwise_conv)
from mtlbench.tasks import DATASET_TASKS

PASCAL = tuple(DATASET_TASKS['pascal_context'])
NYUD = tuple(DATASET_TASKS['nyudv2'])
CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'tadformer'


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope='module')
def tiny448():
    torch.manual_seed(0)
    return SwinBackbone('tiny', (448, 448))


@pytest.fixture(scope='module')
def toy224():
    torch.manual_seed(0)
    return SwinBackbone('toy', (224, 224), drop_path_rate=0.1)


def build(backbone, tasks, dataset='pascal_context', **options):
    """Adapted deep copy of ``backbone`` + decoder, trainability applied."""
    bb = copy.deepcopy(backbone)
    method = build_method(dict(type='tadformer', **options), tasks)
    method.adapt(bb)
    dec = method.adapt_decoder(MultiTaskDecoder(tasks, DATASET_TASKS[dataset], bb.out_channels,
                                                out_size=bb.img_size))
    apply_trainable(bb, dec, method.config)
    return method, bb, dec


def randomise_lora_B(module, std=0.02):
    """Give every B a non-zero value (B = 0 at init hides the task paths)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith('lora_B'):
                p.normal_(0, std)


# ------------------------------------------------------------------------------------- counts
def expected_adapter(r, T, task_filter='dynamic', gate=True, prompt_len=1, k=3):
    """Hand count on Swin-T: shared LoRA on 48 linears, 12 filters, prompts, merges, TPC LNs, gates."""
    dims, depths = (96, 192, 384, 768), (2, 2, 6, 2)
    lora = sum(d * (4 * C * r + 2 * C * r + 5 * C * r + 5 * C * r) for C, d in zip(dims, depths))
    taps = k * k
    filt = 12 * ((r * taps * r + taps * r + 2 * taps * r) if task_filter == 'dynamic'
                 else T * (taps * r + r) if task_filter == 'static' else 0)
    prompts = prompt_len * T * 96
    merges = sum(C * 2 * C for C in dims[:3])
    tpc_norms = sum(2 * C for C in dims)
    return lora + filt + prompts + merges + tpc_norms + (4 if gate else 0)


# The reference builds a TPC LayerNorm in the proj of every block; the 8 in blocks that are not
# the last of their stage are never used but counted: 2 * (96 + 192 + 5 * 384 + 768).
REFERENCE_UNUSED_NORMS = 5952


@pytest.mark.parametrize('r,total,paper', [(16, 3_551_550, 3.56), (32, 4_770_174, 4.78), (64, 7_373_310, 7.38)])
def test_param_counts_pascal(tiny448, r, total, paper):
    _, bb, dec = build(tiny448, PASCAL, r=r)
    counts = param_breakdown(bb, dec)
    assert counts['adapter'] == expected_adapter(r, 4)
    assert counts['decoder'] == 1_946_624
    assert counts['backbone_other'] == 51_258        # patch embed 4,896 + LNs 23,040 + rel-pos 23,322
    assert counts['total_trainable'] == total
    assert abs(total / (paper * 1e6) - 1) < 0.005     # within 0.5% of the paper
    assert round((total + REFERENCE_UNUSED_NORMS) / 1e6, 2) == paper   # the paper's count, exactly
    # reductions frozen, not adapted
    for stage in bb.layers[1:]:
        assert not stage.downsample.reduction.weight.requires_grad


def test_param_counts_variants(tiny448):
    _, bb, dec = build(tiny448, PASCAL, r=64, task_filter='static')
    assert param_breakdown(bb, dec)['total_trainable'] == 6_940_926
    assert param_breakdown(bb, dec)['adapter'] == expected_adapter(64, 4, 'static')
    _, bb, dec = build(tiny448, PASCAL, r=64, gate='none')
    assert param_breakdown(bb, dec)['adapter'] == expected_adapter(64, 4, gate=False)
    _, bb, dec = build(tiny448, NYUD, 'nyudv2', r=64)
    assert param_breakdown(bb, dec)['adapter'] == expected_adapter(64, 3) == 5_375_332


# -------------------------------------------------------------------------------------- prompts
def test_prompt_init_truncated_normal():
    torch.manual_seed(0)
    p = TaskPrompts(1000, 96).tad_prompts.detach()
    assert p.min() >= -2 and p.max() <= 2
    # N(1, 1) truncated to [-2, 2]: mean 1 + (phi(-3) - phi(1)) / (Phi(1) - Phi(-3))
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)   # noqa: E731
    Phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))           # noqa: E731
    assert p.mean().item() == pytest.approx(1 + (phi(-3) - phi(1)) / (Phi(1) - Phi(-3)), abs=0.02)
    assert TaskPrompts(4, 96)(3).shape == (3, 4, 96)


def naive_prompt_attention(block, x, prompts):
    """Window attention with prefix tokens, token by token: bias and shift mask among patches only,
    prompt outputs averaged over windows. x ``[1, 1, H, W, C]``, prompts ``[1, 1, P, C]``."""
    attn = block.attn
    _, _, H, W, C = x.shape
    P = prompts.shape[2]
    ws, s = block.window_size[0], block.shift_size[0]
    heads, hd = attn.num_heads, C // attn.num_heads
    labels = torch.zeros(H, W)
    if s:
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                labels[hs, wsl] = cnt
                cnt += 1
    coords = [(i, j) for i in range(ws) for j in range(ws)]
    N, L = ws * ws, P + ws * ws
    rel = torch.zeros(heads, N, N)
    for m, (i1, j1) in enumerate(coords):
        for n, (i2, j2) in enumerate(coords):
            rel[:, m, n] = attn.relative_position_bias_table[(i1 - i2 + ws - 1) * (2 * ws - 1) + (j1 - j2 + ws - 1)]
    xs = torch.roll(x[0, 0], (-s, -s), (0, 1))
    out = torch.zeros(H, W, C)
    prompt_sum = torch.zeros(P, C)
    for wi in range(H // ws):
        for wj in range(W // ws):
            rows, cols = slice(wi * ws, (wi + 1) * ws), slice(wj * ws, (wj + 1) * ws)
            seq = torch.cat([prompts[0, 0], xs[rows, cols].reshape(N, C)])
            lab = labels[rows, cols].reshape(N)
            mask = torch.where(lab[:, None] == lab[None, :], 0.0, -100.0)
            bias = torch.zeros(heads, L, L)
            bias[:, P:, P:] = rel + mask                      # prefix rows and columns stay zero
            q, k, v = attn.qkv(seq).view(L, 3, heads, hd).permute(1, 2, 0, 3)
            weights = torch.softmax(q @ k.transpose(-2, -1) * attn.scale + bias, dim=-1)
            y = attn.proj((weights @ v).transpose(0, 1).reshape(L, C))
            prompt_sum += y[:P]
            out[rows, cols] = y[P:].reshape(ws, ws, C)
    out = torch.roll(out, (s, s), (0, 1))
    return out, prompt_sum / ((H // ws) * (W // ws))


@pytest.mark.parametrize('shift', [False, True])
def test_prompt_attention_matches_token_by_token(shift):
    torch.manual_seed(0)
    block = SwinBlock(8, (14, 14), num_heads=2, window_size=7, shift=shift).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 1.0)   # make the bias matter
    x, prompts = torch.randn(1, 1, 14, 14, 8), torch.randn(1, 1, 3, 8)
    with torch.no_grad():
        y, pout = block.attention(x, prompts)
        ref_y, ref_p = naive_prompt_attention(block, x, prompts)
    assert torch.allclose(y[0, 0], ref_y, atol=1e-5)
    assert torch.allclose(pout[0, 0], ref_p, atol=1e-5)


def test_prompt_update_merge_and_last_block(toy224):
    torch.manual_seed(1)
    _, bb, _ = build(toy224, PASCAL, r=4)
    randomise_lora_B(bb)
    bb.eval()
    assert isinstance(bb.prompt_embed, TaskPrompts) and bb.prompt_embed.tad_prompts.shape == (4, 16)
    assert bb.layers[0].prompt_merge is None
    for i in (1, 2, 3):
        merge = bb.layers[i].prompt_merge
        assert isinstance(merge, PromptMerge) and merge.up.bias is None
        assert merge.up.weight.shape == (2 * bb.layers[i - 1].dim, bb.layers[i - 1].dim)
    # p <- p + MLP(LN2(AttnOut(LN1(p)))) in a shared block (the attention output is not added back)
    blk = bb.layers[0].blocks[0]
    x, p = torch.randn(1, 1, 56, 56, 16), torch.randn(1, 1, 4, 16)
    with torch.no_grad():
        _, p_new = blk(x, p)
        _, attended = blk.attention(blk.norm1(x), blk.norm1(p))
        assert torch.allclose(p_new, p + blk.mlp(blk.norm2(attended)), atol=1e-6)
    # in a task block the prompt MLP uses the shared path of the task modules
    tblk = bb.layers[0].blocks[1]
    assert isinstance(tblk, TADFormerBlock) and isinstance(tblk.mlp.fc1, TaskAdaptiveLinear)
    with torch.no_grad():
        _, p_task = tblk(x, p)
        with tblk.attn.proj.reading_prefix_logits(tblk.attn):
            _, attended = tblk.attention(tblk.norm1(x), tblk.norm1(p))
        h = tblk.norm2(attended[:1])
        mlp = tblk.mlp.fc2.shared_forward(F.gelu(tblk.mlp.fc1.shared_forward(h)))
        assert torch.allclose(p_task, p + mlp, atol=1e-6)
    # the last block of the last stage skips the prompt MLP
    last = bb.layers[-1].blocks[-1]
    assert not last.prompt_update.use_mlp and all(b.prompt_update.use_mlp for s in bb.layers[:-1] for b in s.blocks)
    pl = torch.randn(1, 1, 4, 128)
    with torch.no_grad():
        _, out = last(torch.randn(1, 1, 7, 7, 128), pl)
    assert torch.equal(out, pl)


# --------------------------------------------------------------------------------- TPC and DTF
def gelu(v):
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def test_tpc_hand_values():
    # 1 window, 3 patch tokens, 4 channels in 2 heads (channels 0-1: head 0, 2-3: head 1), 2 tasks
    f = torch.tensor([[[1., 2., 3., 4.], [0.5, -1., 2., 0.], [-2., 1., 1., -3.]]])
    logits = torch.tensor([[[[1., -1., 2.], [0., 3., -2.]],       # head 0: prompt of task 0, of task 1
                            [[-0.5, 0.5, 1.5], [2., -3., 1.]]]])   # head 1
    tpc = TaskPromptConditioning(4, num_heads=2, num_tasks=2, prompt_len=1)
    u, x = tpc(f, logits)
    expected = torch.tensor([[[gelu(logits[0, c // 2, t, n].item()) * f[0, n, c].item() for c in range(4)]
                              for n in range(3)] for t in range(2)]).unsqueeze(1)
    assert torch.allclose(u, expected, atol=1e-6)
    assert torch.allclose(x, F.layer_norm(f.unsqueeze(0) + expected, (4,)), atol=1e-6)
    assert u[0, 0, 0, 0].item() == pytest.approx(gelu(1.0) * 1.0) and u[1, 0, 1, 3].item() == pytest.approx(0.0)
    # two prompts per task: their GELU'd logits are averaged
    tpc2 = TaskPromptConditioning(4, num_heads=2, num_tasks=2, prompt_len=2)
    logits2 = torch.randn(1, 2, 4, 3)
    u2 = tpc2.modulation(f, logits2)
    a = F.gelu(logits2).view(1, 2, 2, 2, 3).mean(3)                  # [BW, H, T, N]
    assert torch.allclose(u2[1, 0, 2, 3], a[0, 1, 1, 2] * f[0, 2, 3])
    with pytest.raises(ValueError):
        tpc.modulation(f, torch.randn(1, 2, 3, 3))


def test_filter_norm_standardises_taps():
    torch.manual_seed(0)
    dtf = DynamicTaskFilter(r=3)
    assert dtf.kernel_gen.weight.shape == (27, 3) and dtf.kernel_gen.bias.shape == (27,)
    z = torch.randn(2, 5, 4, 4, 3)
    with torch.no_grad():
        dtf.tad_tap_std.fill_(1.0)
        dtf.tad_tap_mean.zero_()
        k = dtf.kernels(z).flatten(-2)                                 # [2, 5, 3, 9]
    assert torch.allclose(k.mean(-1), torch.zeros(2, 5, 3), atol=1e-6)
    assert torch.allclose(k.std(-1), torch.ones(2, 5, 3), atol=1e-5)  # unbiased, as the reference
    with torch.no_grad():
        dtf.tad_tap_std.normal_()
        dtf.tad_tap_mean.normal_()
        raw = (z.mean((2, 3)) @ dtf.kernel_gen.weight.t() + dtf.kernel_gen.bias).view(2, 5, 3, 9)
        normed = (raw - raw.mean(-1, keepdim=True)) / (raw.std(-1, keepdim=True) + 1e-10)
        assert torch.allclose(dtf.kernels(z).flatten(-2), normed * dtf.tad_tap_std + dtf.tad_tap_mean, atol=1e-5)
        # kernels see the map only through its global average: shuffling pixels changes nothing
        perm = torch.randperm(16)
        shuffled = z.flatten(2, 3)[:, :, perm].view_as(z)
        assert torch.allclose(dtf.kernels(shuffled), dtf.kernels(z), atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_filter_norm_is_fp32_under_autocast(dtype):
    """Taps with no spread: 0 / (0 + 1e-10) = 0 in fp32, but 0 / 0 = NaN if eps is rounded to the
    half-precision zero; spread taps give the fp32 numbers."""
    torch.manual_seed(0)
    dtf = DynamicTaskFilter(r=3)
    flat = torch.full((2, 3, 9), 0.7).to(dtype)
    spread = torch.randn(2, 3, 9)
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):
        got_flat = dtf.filter_norm(flat)
        got_spread = dtf.filter_norm(spread.to(dtype))
    assert torch.isfinite(got_flat).all()
    torch.testing.assert_close(got_flat, dtf.tad_tap_mean.detach().expand(2, 3, 9))
    centred = spread.to(dtype).double() - spread.to(dtype).double().mean(-1, keepdim=True)
    expected = centred / centred.pow(2).sum(-1, keepdim=True).div(8).sqrt() * dtf.tad_tap_std.double() \
        + dtf.tad_tap_mean.double()
    torch.testing.assert_close(got_spread.double(), expected.detach(), atol=1e-5, rtol=1e-5)


def test_depthwise_conv_per_sample_and_shared():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 5, 6, 4)
    kern, bias = torch.randn(2, 3, 4, 3, 3), torch.randn(2, 3, 4)
    out = depthwise_conv(z, kern, bias)
    for t in range(2):
        for n in range(3):
            ref = F.conv2d(z[t, n].permute(2, 0, 1)[None], kern[t, n].unsqueeze(1), bias[t, n], padding=1, groups=4)
            assert torch.allclose(out[t, n], ref[0].permute(1, 2, 0), atol=1e-5)
    static = StaticTaskFilter(r=4, num_tasks=2)
    out = static(z)
    for t in range(2):
        for n in range(3):
            ref = F.conv2d(z[t, n].permute(2, 0, 1)[None], static.tad_weight[t].unsqueeze(1), static.tad_bias[t],
                           padding=1, groups=4)
            assert torch.allclose(out[t, n], ref[0].permute(1, 2, 0), atol=1e-5)
    assert depthwise_conv(torch.randn(1, 2, 7, 7, 3), torch.randn(1, 2, 3, 5, 5)).shape == (1, 2, 7, 7, 3)


def test_conditioned_proj_against_hand_computation():
    """proj of a task block: TPC task inputs, DTF per window in rank space, shared W on the shared input."""
    torch.manual_seed(0)
    T, C, r, P, win, BW = 2, 4, 3, 2, (2, 2), 3
    base = torch.nn.Linear(C, C)
    layer = TaskAdaptiveLinear(base, T, r, scale=4.0, dropout=0.0, task_filter=DynamicTaskFilter(r),
                               window=win, conditioning=TaskPromptConditioning(C, 2, T), emit_modulation=True)
    randomise_lora_B(layer, std=0.5)
    x = torch.randn(1, BW, P + 4, C)
    logits = torch.randn(BW, 2, P, 4)
    attn = types.SimpleNamespace(keep_prefix_logits=False, last_prefix_logits=logits)
    with torch.no_grad():
        with layer.reading_prefix_logits(attn):
            out = layer(x)
        assert attn.last_prefix_logits is None and layer._prefix_source is None    # nothing kept
        A, B = layer.lora_A, layer.lora_B
        shared = base(x[0]) + 4 * x[0] @ A.t() @ B.t()
        u, xt = layer.conditioning(x[0, :, P:], logits)
        assert out.shape == (1 + 2 * T, BW, P + 4, C)
        assert torch.allclose(out[0], shared, atol=1e-5)
        for t in range(T):
            z = (xt[t] @ A.t()).view(BW, 2, 2, r)                         # each window a 2x2 map
            kern = layer.task_filter.kernels(z)                           # [BW, r, 3, 3]
            filt = torch.stack([F.conv2d(z[w].permute(2, 0, 1)[None], kern[w].unsqueeze(1), padding=1, groups=r)[0]
                                for w in range(BW)]).permute(0, 2, 3, 1).reshape(BW, 4, r)
            assert torch.allclose(out[1 + t, :, P:], base(x[0, :, P:]) + 4 * filt @ B.t(), atol=1e-5)
            assert torch.allclose(out[1 + t, :, :P], shared[:, :P])        # prompt slots: the shared outputs
            assert torch.allclose(out[1 + T + t, :, P:], u[t]) and not out[1 + T + t, :, :P].any()
    with pytest.raises(RuntimeError, match='prefix logits'):
        layer(x)


# ----------------------------------------------------------------------- initial behaviour
def test_zero_B_sites_equal_base(toy224):
    torch.manual_seed(0)
    _, bb, _ = build(toy224, PASCAL, r=4)
    bb.eval()
    for site in bb.sites():
        m = bb.get_submodule(site.name)
        if site.kind == 'reduction':
            assert isinstance(m, torch.nn.Linear)
        elif isinstance(m, LoRALinear):
            assert not site.task_block or site.kind == 'qkv'
            x = torch.randn(1, 2, 5, site.in_features)
            assert torch.allclose(m(x), m.base_layer(x))
        else:
            assert isinstance(m, TaskAdaptiveLinear) and site.task_block and site.kind in ('proj', 'fc1', 'fc2')
            if site.kind == 'proj':
                continue
            x = torch.randn(1 + 4, 2, 7, 7, site.in_features)           # distinct task streams
            with torch.no_grad():
                out = m(x)
            # B = 0: every stream is the frozen layer on the *shared* input
            assert torch.allclose(out, m.base_layer(x[:1]).expand_as(out), atol=1e-6)


def test_streams_at_init_and_gate(toy224):
    """Not function-preserving (prompts change attention), but at init the task streams differ from
    the shared one only through the stage gate's u_t skip."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    _, plain, _ = build(toy224, PASCAL, r=4, gate='none')
    plain.eval()
    with torch.no_grad():
        feats = plain(x)
        reference = copy.deepcopy(toy224).eval()(x)
    for f in feats:
        assert f.shape[0] == 5 and torch.allclose(f[1:], f[:1].expand_as(f[1:]), atol=1e-5)
    assert (feats[0][0] - reference[0][0]).abs().max() > 1e-4          # prompts change the features
    # with the (default) learned gate, F_t = 0.5 u_t + 0.5 X_t at g = 0
    _, gated, _ = build(toy224, PASCAL, r=4)
    gated.eval()
    blk = gated.layers[0].blocks[1]
    assert isinstance(blk.stage_gate, StageGate) and blk.stage_gate.tad_gate.item() == 0
    xs, p = torch.randn(1, 1, 56, 56, 16), torch.randn(1, 1, 4, 16)
    with torch.no_grad():
        out, _ = blk(xs, p)
        with blk.attn.proj.reading_prefix_logits(blk.attn):
            attended, _ = blk.attention(blk.norm1(xs), blk.norm1(p))
        assert attended.shape[0] == 9
        blk.stage_gate.tad_gate.fill_(-1e4)                              # gate closed: w = 0
        closed, _ = blk(xs, p)
    assert torch.allclose(closed[1:], closed[:1].expand(4, -1, -1, -1, -1), atol=1e-5)
    assert torch.allclose(out[0], closed[0])
    assert torch.allclose(out[1:], 0.5 * attended[5:] + 0.5 * closed[1:], atol=1e-5)
    assert attended[5:].abs().sum() > 0


# ----------------------------------------------------------------------- gradients, checkpoints
def test_gradients_reach_exactly_the_trainable_params(toy224):
    torch.manual_seed(0)
    _, bb, dec = build(toy224, PASCAL, r=4)
    randomise_lora_B(bb)
    bb.train()
    dec.train()
    out = dec(bb(torch.randn(1, 3, 224, 224)))
    sum(o.square().mean() for o in out.values()).backward()
    for name, p in list(bb.named_parameters()) + list(dec.named_parameters()):
        assert (p.grad is not None) == p.requires_grad, name
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert 'prompt_embed.tad_prompts' in trainable and 'layers.1.prompt_merge.up.weight' in trainable
    assert 'layers.0.blocks.1.stage_gate.tad_gate' in trainable
    assert 'layers.0.blocks.1.attn.proj.conditioning.norm.weight' in trainable
    assert 'layers.0.blocks.1.mlp.fc1.task_filter.kernel_gen.weight' in trainable
    assert not any(n.endswith('base_layer.weight') or n.endswith('base_layer.bias') or 'reduction' in n
                   for n in trainable)
    for name in ('prompt_embed.tad_prompts', 'layers.2.blocks.1.stage_gate.tad_gate',
                 'layers.3.blocks.1.attn.proj.task_filter.tad_tap_mean', 'layers.1.prompt_merge.up.weight'):
        assert bb.get_parameter(name).grad.abs().sum() > 0, name


def test_state_dict_round_trip_and_deepcopy(toy224):
    torch.manual_seed(0)
    _, a, _ = build(toy224, NYUD, 'nyudv2', r=4, task_filter='static')
    randomise_lora_B(a)
    a.train()
    a(torch.randn(1, 3, 224, 224))                                      # leaves no graph tensors behind
    clone = copy.deepcopy(a).eval()
    torch.manual_seed(1)
    _, b, _ = build(toy224, NYUD, 'nyudv2', r=4, task_filter='static')
    missing, unexpected = b.load_state_dict(a.state_dict())
    assert not missing and not unexpected
    a.eval()
    b.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fa, fb, fc = a(x), b(x), clone(x)
    for u, v, w in zip(fa, fb, fc):
        assert u.shape[0] == 4 and torch.equal(u, v) and torch.allclose(u, w)


# -------------------------------------------------------------------------------- configs, model
def test_config_validation():
    assert TADFormerConfig().train_reductions is False and TADFormerConfig().r == 64
    for bad in (dict(r=0), dict(task_filter='ddf'), dict(filter_size=4), dict(gate='sometimes'),
                dict(tpc=False), dict(prompt_len=0)):
        with pytest.raises(ValueError):
            TADFormerConfig(**bad)
    assert TADFormerConfig(tpc=False, gate='none').gate == 'none'


@pytest.mark.parametrize('dataset', ['pascal-context', 'nyudv2'])
def test_configs_load_and_build(dataset):
    tasks = PASCAL if dataset == 'pascal-context' else NYUD
    expected = {f'tadformer-r{r}': dict(r=r, task_filter='dynamic', gate='learned') for r in (16, 32, 64)}
    expected['tadformer-static-r64'] = dict(r=64, task_filter='static', gate='learned')
    expected['tadformer-nogate-r64'] = dict(r=64, task_filter='dynamic', gate='none')
    expected['tadformer'] = expected['tadformer-r64']
    for stem, values in expected.items():
        cfg = Config.fromfile(str(CONFIG_DIR / f'{stem}_swin-t_{dataset}.py'))
        method = build_method(dict(cfg.model.method), tasks)
        for key, value in values.items():
            assert getattr(method.config, key) == value, (stem, key)
        assert method.config.train_reductions is False and method.config.dropout == 0.05


def test_multitask_model_and_extras():
    from mtlbench.model import MultiTaskModel

    torch.manual_seed(0)
    model = MultiTaskModel('nyudv2', dict(type='tadformer', r=4, prompt_len=2, filter_size=5),
                           dict(arch='toy', img_size=(224, 224)))
    model.train()
    out = model(torch.randn(1, 3, 224, 224), mode='tensor')
    assert {k: tuple(v.shape) for k, v in out.items()} == {'semseg': (1, 40, 224, 224), 'depth': (1, 1, 224, 224),
                                                          'normals': (1, 3, 224, 224)}
    assert model.backbone.prompt_embed.tad_prompts.shape == (6, 16)
    assert model.method.variant() == 'r=4 prompt_len=2'
    assert model.method.record_extras(model) == {'stage_gates': [0.5, 0.5, 0.5, 0.5]}
