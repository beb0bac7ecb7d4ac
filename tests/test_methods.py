"""Every registered method, generically: builds from its configs, full-size forward/backward,
gradients reach exactly the trainable parameters, a step changes only those, state-dict round
trip. A new method file is picked up here without editing this test."""
from __future__ import annotations

import copy

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.config import list_configs, load_config
from mtlbench.params import build_model_from_config
from mtlbench.registry import METHODS

METHOD_NAMES = sorted(METHODS.module_dict)
TOY = {'model.backbone.arch': 'toy', 'model.backbone.img_size': (224, 224)}


def _tasks_for(method: str, dataset: str):
    cls = METHODS.get(method)
    if getattr(cls, 'one_model_per_task', False):
        return ['normals']
    return None


def _targets(model, batch: int, size):
    H, W = size
    out = {}
    for t in model.tasks:
        if t in ('semseg', 'human_parts'):
            n = model.decoder.heads[t].conv2.out_channels if hasattr(model.decoder, 'heads') else 7
            y = torch.randint(0, min(n, 7), (batch, H, W))
            y[:, :2] = 255
            out[t] = y
        elif t == 'sal':
            out[t] = torch.randint(0, 2, (batch, H, W))
        elif t == 'normals':
            v = torch.nn.functional.normalize(torch.randn(batch, 3, H, W), dim=1)
            v[:, :, :3] = 0
            out[t] = v
        elif t == 'depth':
            out[t] = torch.rand(batch, 1, H, W) * 5
    return out


def test_every_method_has_configs_for_both_datasets():
    for name in METHOD_NAMES:
        names = [p.name for p in list_configs(name)]
        for ds in ('pascal-context', 'nyudv2'):
            assert f'{name.replace("_", "-")}_swin-t_{ds}.py' in names, (name, ds, names)


@pytest.mark.parametrize('path', [str(p) for p in list_configs()], ids=lambda p: p.split('configs/')[-1])
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.method.type in METHODS.module_dict
    assert cfg.model.dataset in ('pascal_context', 'nyudv2') and cfg.model.tasks


@pytest.mark.parametrize('dataset', ['pascal_context', 'nyudv2'])
@pytest.mark.parametrize('method', METHOD_NAMES)
def test_builds_trains_only_what_it_should(method, dataset):
    torch.manual_seed(0)
    model = build_model_from_config(method, dataset, tasks=_tasks_for(method, dataset), cfg_options=TOY)
    model.train()
    x = torch.randn(2, 3, 224, 224)
    losses = model(x, _targets(model, 2, (224, 224)), mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, 'nothing trains'
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f'trainable parameters without a gradient: {no_grad[:10]}'
    # one optimiser step changes exactly the trainable parameters
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    for n, p in model.named_parameters():
        if n not in trainable:
            assert torch.equal(before[n], p), f'frozen parameter {n} changed'


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_state_dict_round_trip(method):
    torch.manual_seed(0)
    model = build_model_from_config(method, 'pascal_context', tasks=_tasks_for(method, 'pascal_context'),
                                    cfg_options=TOY).eval()
    for p in model.parameters():  # move away from the init so the round trip is not trivial
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
    torch.manual_seed(1)
    other = build_model_from_config(method, 'pascal_context', tasks=_tasks_for(method, 'pascal_context'),
                                    cfg_options=TOY).eval()
    other.load_state_dict(copy.deepcopy(model.state_dict()))
    with torch.no_grad():
        out = other(x)
    for t in ref:
        torch.testing.assert_close(out[t], ref[t])


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_full_size_forward_backward(method):
    """One 448x448 Swin-T forward/backward per method (the size every paper uses)."""
    torch.manual_seed(0)
    model = build_model_from_config(method, 'pascal_context', tasks=_tasks_for(method, 'pascal_context'))
    model.train()
    assert model.backbone.img_size == (448, 448) and model.backbone.arch == 'tiny'
    x = torch.randn(1, 3, 448, 448)
    raw = model(x)
    for t, y in raw.items():
        assert y.shape[-2:] == (448, 448), t
    losses = model.loss(raw, _targets(model, 1, (448, 448)))
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_merged_inference_equals_unmerged(method):
    """Folding mergeable adapters into the frozen weights leaves the outputs unchanged."""
    from mtlbench.method import merge_adapters
    torch.manual_seed(0)
    model = build_model_from_config(method, 'pascal_context', tasks=_tasks_for(method, 'pascal_context'),
                                    cfg_options=TOY).eval()
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if p.requires_grad:  # non-zero adapter updates (B = 0 at init would make this trivial)
                p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        merged = merge_adapters(model)
        out = model(x)
    if method in ('mtlora', 'faar'):
        assert merged, 'expected mergeable shared adapters'
    for t in ref:
        torch.testing.assert_close(out[t], ref[t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('method', METHOD_NAMES)
def test_trains_under_bf16_autocast(method):
    """``--amp bf16``: every method's forward and backward run under autocast (CPU autocast here,
    the same dtype rules as on a GPU), the outputs stay close to fp32 and every trainable
    parameter gets a finite fp32 gradient."""
    torch.manual_seed(0)
    model = build_model_from_config(method, 'pascal_context', tasks=_tasks_for(method, 'pascal_context'),
                                    cfg_options=TOY)
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if p.requires_grad:  # non-zero adapter updates, so that the adapters' casts matter
                p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(1, 3, 224, 224)
    model.eval()
    with torch.no_grad():
        full = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    for t in full:
        assert low[t].dtype == torch.bfloat16, t
        scale = full[t].abs().max().item()
        assert (low[t].float() - full[t]).abs().max().item() <= 0.1 * scale + 0.05, t
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model.loss(model(x), _targets(model, 1, (224, 224)))
    sum(losses.values()).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
