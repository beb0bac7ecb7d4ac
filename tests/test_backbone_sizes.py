"""Swin-S and Swin-B: equal to timm's models, loaded from the official checkpoint layout,
selectable by name, and every registered method builds and trains on them through the site
metadata. Building a 50M / 88M-parameter model (its initialisation) takes seconds on a CPU: those
tests are marked ``slow``."""
from __future__ import annotations

import re
import os

import pytest
import timm
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.backbones.swin import SwinBackbone, backbone_label, canonical_arch
from mtlbench.bench import synthetic_batch
from mtlbench.params import build_model_from_config
from mtlbench.registry import METHODS

TIMM_NAMES = {'swin-s': 'swin_small_patch4_window7_224', 'swin-b': 'swin_base_patch4_window7_224'}


@pytest.fixture(scope='module')
def timm_swins():
    models = {}

    def get(arch):
        if arch not in models:
            torch.manual_seed(0)
            models[arch] = timm.create_model(TIMM_NAMES[arch], pretrained=False, img_size=224, num_classes=0).eval()
        return models[arch]
    return get


def _timm_features(model, x):
    """Stage outputs merged by the next stage's PatchMerging (what the decoder reads)."""
    y = model.patch_embed(x)
    outs = []
    for layer in model.layers:
        y = layer(y)
        outs.append(y)
    merged = [model.layers[i + 1].downsample(outs[i]) for i in range(3)] + [outs[3]]
    return [m.permute(0, 3, 1, 2) for m in merged]


@pytest.mark.slow
@pytest.mark.parametrize('arch,width', [('swin-s', 96), ('swin-b', 128)])
def test_equals_timm(timm_swins, arch, width):
    ref = timm_swins(arch)
    bb = SwinBackbone(arch, (224, 224), drop_path_rate=0.0).eval()
    missing, unexpected = bb.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ['norm.bias', 'norm.weight']
    # the same parameters as timm's model less its final norm (mtlbench's Swin has none)
    assert sum(p.numel() for p in bb.parameters()) == sum(p.numel() for p in ref.parameters()) - 2 * 8 * width
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, want = bb(x), _timm_features(ref, x)
    # decoder inputs follow the stage widths: 2C, 4C, 8C, 8C
    assert bb.out_channels == [2 * width, 4 * width, 8 * width, 8 * width]
    for a, b in zip(ours, want):
        assert a.shape[1:] == (1,) + b.shape[1:]
        torch.testing.assert_close(a[0], b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_swin_b_loads_an_official_22k_checkpoint(timm_swins, tmp_path):
    """The official layout (PatchMerging at the end of stages, ``'model'`` wrapper, persistent
    index buffers, a 21,841-class ImageNet-22K head; timm's layout is the Swin-T test's)."""
    state = timm_swins('swin-b').state_dict()
    official = {}
    for k, v in state.items():
        official[re.sub(r'layers\.(\d+)\.downsample', lambda m: f'layers.{int(m.group(1)) - 1}.downsample', k)] = v
    official['layers.2.blocks.0.attn.relative_position_index'] = torch.zeros(49, 49, dtype=torch.long)
    official['head.weight'] = torch.zeros(21841, 1024)
    official['head.bias'] = torch.zeros(21841)
    path = tmp_path / 'swin_base_patch4_window7_224_22k.pth'
    torch.save({'model': official}, path)
    own = SwinBackbone('swin-b', (224, 224), pretrained=str(path)).state_dict()
    for k in ('layers.2.blocks.17.attn.qkv.weight', 'layers.3.downsample.reduction.weight',
              'layers.1.downsample.norm.weight', 'layers.3.blocks.1.attn.relative_position_bias_table',
              'patch_embed.proj.weight'):
        torch.testing.assert_close(own[k], state[k])


@pytest.mark.slow
def test_swin_t_checkpoint_is_refused_by_swin_s(tmp_path):
    """Swin-T weights fill only 12 of Swin-S's 18 third-stage blocks: refused, not half-loaded."""
    path = tmp_path / 'swin_t.pth'
    torch.save(SwinBackbone('tiny', (224, 224)).state_dict(), path)
    from mtlbench.backbones.swin import PretrainedLoadError
    with pytest.raises(PretrainedLoadError, match='does not fit a Swin-small backbone'):
        SwinBackbone('swin-s', (224, 224), pretrained=str(path))


def test_arch_names():
    assert [canonical_arch(a) for a in ('swin-t', 'swin-s', 'swin-b', 'tiny', 'base')] == \
        ['tiny', 'small', 'base', 'tiny', 'base']
    assert [backbone_label(a) for a in ('tiny', 'small', 'swin-b', 'toy')] == ['swin-t', 'swin-s', 'swin-b', 'swin-toy']
    with pytest.raises(ValueError, match="unknown Swin arch 'swin-l'.*'swin-b'"):
        canonical_arch('swin-l')


# Small inputs: window 4 on a 64x64 image (token grids 16/8/4/2) keeps the widths and depths
# that the methods must follow while the forward stays cheap.
SMALL = {'model.backbone.img_size': (64, 64), 'model.backbone.window_size': 4}


# Every method on Swin-B (the widest and deepest) with MTLBENCH_EXTENDED_TESTS=1; by default the
# methods that reach Swin-B through the most site kinds (MTLoRA's shared + task LoRA, FAAR's DoRA +
# TS-PD, DiTASK's warps) and a plain baseline, to keep the suite in its time budget (DiTASK alone
# ~1 min on 2 cores). Swin-S (Swin-B's depths, Swin-T's widths) for MTLoRA only.
_DEFAULT_B = {'mtlora', 'faar', 'ditask', 'adapter'}
LARGER = [(m, 'swin-b') for m in sorted(METHODS.module_dict)
          if os.environ.get('MTLBENCH_EXTENDED_TESTS') or m in _DEFAULT_B] + [('mtlora', 'swin-s')]


@pytest.mark.slow
@pytest.mark.parametrize('method,arch', LARGER)
def test_every_method_trains_on_the_larger_backbones(method, arch):
    torch.manual_seed(0)
    tasks = ['normals'] if getattr(METHODS.get(method), 'one_model_per_task', False) else None
    model = build_model_from_config(method, 'pascal_context', tasks=tasks,
                                    cfg_options={'model.backbone.arch': arch, **SMALL})
    assert model.backbone.depths == (2, 2, 18, 2)
    model.train()
    x, targets = synthetic_batch(model, 2, (64, 64), torch.device('cpu'))
    losses = model(x, targets, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:10]
    # every adapted site exists in this backbone; the third stage's 18 blocks are all reachable
    names = {s.name for s in model.backbone.sites()}
    assert set(model.adapted_sites) <= names
    if method == 'mtlora':  # qkv, proj, fc1, fc2 of each of the 2 + 2 + 18 + 2 blocks
        assert len(model.adapted_sites) == 4 * 24
        assert 'layers.2.blocks.17.mlp.fc2' in model.adapted_sites
