"""MTLoRA on Swin-B and Swin-S against the reference code built with those configurations (its
``SwinTransformerMTLoRA`` takes embed dim, depths and heads): the same trainable-parameter count
as the reference's ``main.py`` prints after its freezing, and the same outputs from the same
weights. Needs a checkout of scale-lab/MTLoRA in ``MTLBENCH_MTLORA_REF``; skipped without it."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.interop import import_reference_state
from mtlbench.params import build_model_from_config

REF_DIR = os.environ.get('MTLBENCH_MTLORA_REF')
TASKS = ('semseg', 'human_parts', 'sal', 'normals')
pytestmark = [pytest.mark.skipif(not REF_DIR, reason='MTLBENCH_MTLORA_REF (a checkout of scale-lab/MTLoRA) not set'),
              pytest.mark.slow]


def _tool():
    path = Path(__file__).resolve().parents[1] / 'tools' / 'parity_vs_reference.py'
    spec = importlib.util.spec_from_file_location('parity_vs_reference', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('plus', [False, True], ids=['mtlora', 'mtlora-plus'])
@pytest.mark.parametrize('arch', ['swin-b', 'swin-s'])
def test_trainable_count_equals_the_reference(arch, plus):
    """r=64, task r=4 (the reference's ``mtlora_tiny_448_r64_scale4_pertask`` on the larger
    Swin), ours as ``mtlbench run --method mtlora --cfg-options model.backbone.arch=...`` builds it.
    224 input: every stage keeps the 7x7 window of 448, so the counts are those at 448."""
    torch.manual_seed(0)
    tool = _tool()
    ref = tool.build_reference(REF_DIR, 64, 4, 224, plus, arch=arch)
    want = tool.reference_trainable_count(ref, plus)  # what the reference's main.py prints
    del ref
    ours = build_model_from_config('mtlora', 'pascal_context', cfg_options={
        'model.backbone.arch': arch, 'model.backbone.img_size': (224, 224), 'model.method.plus': plus})
    assert ours.param_breakdown()['total_trainable'] == want
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == want


def test_swin_b_outputs_equal_the_reference():
    """Reference weights (random LoRA B and BatchNorm statistics, so every tensor matters) imported
    strictly into mtlbench's Swin-B MTLoRA give the reference's outputs. 128 input with window 4
    (grids 32/16/8/4) keeps the forward cheap; widths, depths and heads are Swin-B's."""
    tool = _tool()
    torch.manual_seed(0)
    ref = tool.build_reference(REF_DIR, 8, 2, 128, False, arch='base', window_size=4).eval()
    with torch.no_grad():
        for name, prm in ref.named_parameters():
            if 'lora_' in name and '_B' in name:
                prm.normal_(0, 0.02)
        for name, buf in ref.named_buffers():
            if name.endswith('running_mean'):
                buf.normal_(0, 0.1)
            elif name.endswith('running_var'):
                buf.uniform_(0.5, 1.5)
    ours = tool.build_ours(8, 2, 128, False, arch='swin-b', window_size=4).eval()
    import_reference_state(ours, ref.state_dict(), source='reference Swin-B')
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out_ref, out_ours = ref(x), ours(x)
    for t in TASKS:
        assert out_ref[t].abs().max().item() > 1e-2  # not a comparison of zeros
        assert (out_ours[t] - out_ref[t]).abs().max().item() < 1e-4, t
