"""The Swin backbone: equal to timm's Swin-T, sites, streams, prefix tokens, pretrained loading."""
from __future__ import annotations

import pickle
import re

import pytest
import timm
import torch

from mtlbench.backbones.swin import PretrainedLoadError, SwinBackbone, load_pretrained


@pytest.fixture(scope='module')
def timm_swin():
    torch.manual_seed(0)
    return timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, img_size=224, num_classes=0).eval()


def _timm_features(model, x):
    """Reference features: timm stage outputs, merged by the next stage's PatchMerging."""
    y = model.patch_embed(x)
    outs = []
    for layer in model.layers:
        y = layer(y)
        outs.append(y)
    merged = [model.layers[i + 1].downsample(outs[i]) for i in range(3)] + [outs[3]]
    return [m.permute(0, 3, 1, 2) for m in merged]


def test_equals_timm_swin_tiny(timm_swin):
    bb = SwinBackbone('tiny', (224, 224), drop_path_rate=0.0).eval()
    missing, unexpected = bb.load_state_dict(timm_swin.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ['norm.bias', 'norm.weight']
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, ref = bb(x), _timm_features(timm_swin, x)
    assert [tuple(f.shape) for f in ours] == [(1, 2, 192, 28, 28), (1, 2, 384, 14, 14), (1, 2, 768, 7, 7),
                                              (1, 2, 768, 7, 7)]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a[0], b, atol=1e-4, rtol=1e-4)
    assert bb.out_channels == [192, 384, 768, 768] and bb.out_strides == [8, 16, 32, 32]
    assert sum(p.numel() for p in bb.parameters()) == 27_517_818


def test_gradients_equal_timm_swin_tiny(timm_swin):
    """The backward too (window permutation, attention with its trainable bias, shifts)."""
    bb = SwinBackbone('tiny', (224, 224), drop_path_rate=0.0)
    bb.load_state_dict(timm_swin.state_dict(), strict=False)
    x = torch.randn(1, 3, 224, 224)
    weights = [torch.randn(c, 1, 1) for c in bb.out_channels]
    grads = []
    for model, features in ((bb, lambda x: [f[0] for f in bb(x)]), (timm_swin, lambda x: _timm_features(timm_swin, x))):
        xi = x.clone().requires_grad_()
        sum((f * w).sum() for f, w in zip(features(xi), weights)).backward()
        table = dict(model.named_parameters())['layers.0.blocks.1.attn.relative_position_bias_table']
        grads.append((xi.grad, table.grad))
        model.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize('prefix', [0, 2])
def test_sdpa_and_plain_attention_agree(prefix):
    """The GPU path (SDPA, windows as heads, bias broadcast) and the CPU path (plain product,
    broadcast bias) give the same outputs and gradients, shifted windows and prefix tokens included."""
    from mtlbench.backbones.swin import SwinBlock
    torch.manual_seed(0)
    block = SwinBlock(16, (8, 8), num_heads=2, window_size=4, shift=True).double()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    block.prompt_update = lambda blk, prompts, attended: attended
    x = torch.randn(2, 3, 8, 8, 16, dtype=torch.double)
    prompts = torch.randn(2, 3, prefix, 16, dtype=torch.double) if prefix else None
    results = []
    for use_sdpa in (True, False):
        block.attn.use_sdpa = use_sdpa
        block.zero_grad()
        out, p_out = block(x, prompts)
        (out.sum() + (p_out.sum() if prefix else 0)).backward()
        results.append((out, p_out, block.attn.relative_position_bias_table.grad.clone()))
    for a, b in zip(*results):
        if a is not None:
            torch.testing.assert_close(a, b)


def test_sdpa_mask_broadcasts_instead_of_per_window_copies(monkeypatch):
    """The GPU path hands SDPA a bias with one entry per (window, head), not one per batch
    element, in the queries' dtype (fused kernels need a matching dtype), and still agrees with
    the plain product under bf16."""
    import torch.nn.functional as F
    from mtlbench.backbones.swin import SwinBlock
    torch.manual_seed(0)
    block = SwinBlock(16, (8, 8), num_heads=2, window_size=4, shift=True)
    x = torch.randn(1, 6, 8, 8, 16)
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((tuple(q.shape), tuple(attn_mask.shape), attn_mask.dtype, q.dtype))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    block.attn.use_sdpa = True
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fused, _ = block(x)
    (q_shape, mask_shape, mask_dtype, q_dtype), = seen
    # 4 windows of 4x4 tokens, 2 heads, batch 6: queries [6, 4 * 2, 16, 8], bias [1, 4 * 2, 16, 16]
    assert q_shape == (6, 8, 16, 8) and mask_shape == (1, 8, 16, 16)
    assert mask_dtype == q_dtype == torch.bfloat16
    block.attn.use_sdpa = False
    with torch.autocast('cpu', dtype=torch.bfloat16):
        plain, _ = block(x)
    torch.testing.assert_close(fused.float(), plain.float(), atol=2e-2, rtol=2e-2)


def test_window_order_is_roll_then_partition():
    from mtlbench.backbones.swin import permute_tokens, window_order, window_partition
    x = torch.randn(2, 8, 12, 3, dtype=torch.double, requires_grad=True)
    order = window_order((8, 12), (4, 4), (2, 2))
    expected = window_partition(torch.roll(x, (-2, -2), (1, 2)), (4, 4)).reshape(2, -1, 3)
    got = permute_tokens(x.reshape(2, 96, 3), order, torch.argsort(order))
    assert torch.equal(got, expected)
    assert torch.autograd.gradcheck(lambda t: permute_tokens(t, order, torch.argsort(order)), (x.reshape(2, 96, 3),))


def test_sites_metadata():
    bb = SwinBackbone('tiny', (448, 448))
    sites = bb.sites()
    blocks = [s for s in sites if s.kind != 'reduction']
    assert len(blocks) == 48 and len([s for s in sites if s.kind == 'reduction']) == 3
    task = {(s.stage, s.block) for s in blocks if s.task_block}
    assert task == {(0, 1), (1, 1), (2, 5), (3, 1)}
    qkv = next(s for s in sites if s.name == 'layers.3.blocks.1.attn.qkv')
    assert (qkv.in_features, qkv.out_features, qkv.num_heads) == (768, 2304, 24)
    assert [s.name for s in bb.select_sites(kinds=['reduction'])] == [
        'layers.1.downsample.reduction', 'layers.2.downsample.reduction', 'layers.3.downsample.reduction']
    for s in sites:
        assert isinstance(bb.get_submodule(s.name), torch.nn.Linear)


class _ForkLinear(torch.nn.Module):
    """A task 'adapter' that forks 1 stream into 1 + 2 and adds a task-specific offset."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        y = self.base(x[:1])
        return torch.cat([y, y + 1.0, y - 1.0], 0)


def test_streams_fork_and_only_shared_continues():
    bb = SwinBackbone('toy', (224, 224), drop_path_rate=0.0).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        plain = bb(x)
        bb.replace_site('layers.1.blocks.1.attn.proj', _ForkLinear(bb.layers[1].blocks[1].attn.proj))
        forked = bb(x)
    assert [f.shape[0] for f in forked] == [1, 3, 1, 1]  # stage 1's map forks (after merging)
    torch.testing.assert_close(forked[0], plain[0])
    torch.testing.assert_close(forked[1][0], plain[1][0])   # shared stream unchanged
    assert not torch.allclose(forked[1][1], forked[1][2])
    torch.testing.assert_close(forked[2], plain[2])         # only the shared stream continues


def test_prefix_tokens_do_not_bias_and_are_averaged():
    torch.manual_seed(0)
    bb = SwinBackbone('toy', (224, 224), drop_path_rate=0.0).eval()
    blk = bb.layers[0].blocks[1]  # shifted block
    x = torch.randn(1, 2, 56, 56, 16)
    with torch.no_grad():
        plain, _ = blk.attention(x)
        # a prompt whose value/key are zero contributes nothing when it gets no attention mass
        p = torch.zeros(1, 2, 1, 16)
        with_p, p_out = blk.attention(x, p)
    assert p_out.shape == (1, 2, 1, 16)
    assert not torch.allclose(plain, with_p)  # the zero key still takes softmax mass
    # bias padding: prompts get no relative-position bias
    bias = blk.attn.relative_position_bias()
    assert bias.shape == (1, 49, 49)


def _official_layout(state):
    """timm layout -> the official Microsoft checkpoint layout (merging at the end of stages)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r'layers\.(\d+)\.downsample', lambda m: f'layers.{int(m.group(1)) - 1}.downsample', k)
        out[k] = v
    return {'model': out}


@pytest.mark.parametrize('layout', ['timm', 'official'])
def test_load_pretrained_formats(tmp_path, timm_swin, layout):
    state = timm_swin.state_dict()
    path = tmp_path / 'swin.pth'
    torch.save(_official_layout(state) if layout == 'official' else state, path)
    bb = SwinBackbone('tiny', (448, 448), pretrained=str(path))
    own = bb.state_dict()
    for k in ('layers.2.blocks.3.attn.qkv.weight', 'layers.1.downsample.reduction.weight', 'patch_embed.proj.weight'):
        torch.testing.assert_close(own[k], state[k])


def test_pretrained_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(1000, 2048)}, path)
    with pytest.raises(PretrainedLoadError, match='does not fit a Swin-tiny backbone'):
        SwinBackbone('tiny', (224, 224), pretrained=str(path))


def test_not_a_checkpoint_and_pickled_code_are_refused(tmp_path):
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'this is not a checkpoint')
    with pytest.raises(PretrainedLoadError, match='not a readable checkpoint'):
        SwinBackbone('toy', (224, 224), pretrained=str(junk))

    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))

    evil = tmp_path / 'evil.pth'
    with open(evil, 'wb') as f:
        pickle.dump({'model': Evil()}, f)
    with pytest.raises(PretrainedLoadError, match='refused to unpickle'):
        SwinBackbone('toy', (224, 224), pretrained=str(evil))


def test_missing_pretrained_file():
    with pytest.raises(FileNotFoundError, match='pretrained checkpoint not found'):
        load_pretrained(SwinBackbone('toy', (224, 224)), '/nonexistent/swin.pth')


def test_bad_image_size_is_explained():
    with pytest.raises(ValueError, match='not divisible by the window size'):
        SwinBackbone('tiny', (200, 200))
