"""MTLoRA: exact parameter counts of the reference configs, the layer math, a function-preserving
start, merge == unmerged."""
from __future__ import annotations

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.backbones.swin import SwinBackbone
from mtlbench.heads.hrnet import MultiTaskDecoder
from mtlbench.layers.lowrank import LoRALinear, TaskLoRALinear
from mtlbench.method import apply_trainable, build_method, param_breakdown
from mtlbench.tasks import DATASET_TASKS

PASCAL = ('semseg', 'human_parts', 'sal', 'normals')


def _count(**options):
    bb = SwinBackbone('tiny', (448, 448))
    method = build_method(dict(type='mtlora', **options), PASCAL)
    method.adapt(bb)
    dec = MultiTaskDecoder(PASCAL, DATASET_TASKS['pascal_context'], bb.out_channels, out_size=(448, 448))
    apply_trainable(bb, dec, method.config)
    return param_breakdown(bb, dec), method.adapter_breakdown(bb)


def test_r64_matches_the_reference_count():
    counts, split = _count(r=64)
    assert counts['total_trainable'] == 8_344_634
    assert counts['adapter'] == 4_798_464 and split == {'shared LoRA': 4_521_984, 'task LoRA': 276_480}
    assert counts['decoder'] == 1_946_624
    assert counts['backbone_other'] == 1_599_546  # patch embed + norms + rel-pos tables + reductions


@pytest.mark.parametrize('options,total', [
    (dict(r=16), 4_953_146),              # the papers print 4.95M
    (dict(r=32), 6_083_642),              # 6.08M
    # MTLoRA+: reductions frozen (-1,548,288), shared LoRA on them (+6 * 64 * (96 + 192 + 384))
    (dict(r=64, plus=True), 8_344_634 - 1_548_288 + 6 * 64 * (96 + 192 + 384)),
])
def test_other_reference_configs(options, total):
    counts, _ = _count(**options)
    assert counts['total_trainable'] == total


def test_task_lora_math_matches_hand_computation():
    torch.manual_seed(0)
    base = torch.nn.Linear(5, 3)
    layer = TaskLoRALinear(base, num_tasks=2, r=2, task_r=1, scale=4.0, task_scale=4.0, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_task_B.normal_()
    x = torch.randn(3, 4, 5)  # shared + 2 task streams
    y = layer(x)
    W, b = base.weight, base.bias
    shared = x[0] @ W.T + b + 4.0 * x[0] @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(y[0], shared)
    for t in range(2):
        # frozen weight on the SHARED input, task update on the task input, no shared update
        expect = x[0] @ W.T + b + 4.0 * x[1 + t] @ layer.lora_task_A[t].T @ layer.lora_task_B[t].T
        torch.testing.assert_close(y[1 + t], expect)
    with torch.no_grad():  # the inference path (written in place, no concatenation) agrees
        torch.testing.assert_close(layer(x), y)
        torch.testing.assert_close(layer(x[:1]), layer(x[:1].clone().requires_grad_(False)))
    # one input stream (proj of a task block): task inputs are the shared input
    y1 = layer(x[:1])
    with torch.no_grad():
        torch.testing.assert_close(layer(x[:1]), y1)
    assert y1.shape[0] == 3
    torch.testing.assert_close(y1[1], x[0] @ W.T + b + 4.0 * x[0] @ layer.lora_task_A[0].T @ layer.lora_task_B[0].T)


def test_fresh_mtlora_preserves_the_frozen_backbone():
    torch.manual_seed(0)
    plain = SwinBackbone('toy', (224, 224), drop_path_rate=0.0).eval()
    adapted = SwinBackbone('toy', (224, 224), drop_path_rate=0.0).eval()
    adapted.load_state_dict(plain.state_dict())
    build_method(dict(type='mtlora', r=8, task_r=2), PASCAL).adapt(adapted)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref, out = plain(x), adapted(x)
    for r, o in zip(ref, out):
        assert o.shape[0] == 1 + len(PASCAL)
        for s in range(o.shape[0]):  # every stream equals the frozen backbone's features (B = 0)
            torch.testing.assert_close(o[s], r[0], rtol=0, atol=1e-5)


def test_lora_merge_equals_unmerged():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(6, 4), r=3, scale=4.0, dropout=0.05).eval()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 7, 6)
    ref = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-6)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match='qkv is never task-specific'):
        build_method(dict(type='mtlora', task_kinds=('qkv',)), PASCAL)
    with pytest.raises(KeyError, match='has no option'):
        build_method(dict(type='mtlora', rank=4), PASCAL)
