"""``SwinBackbone.carry_task_streams``: the extension point for task adapters in every block.

Checked against an independent computation: a stream forked in the first block and carried to
the end equals the plain backbone run once per task with that task's change folded into the
frozen layer (a bias shift), and without the flag only the shared stream crosses stages.
"""
from __future__ import annotations

import copy

import pytest
import torch

from mtlbench.backbones.swin import SwinBackbone
from mtlbench.method import AdapterLayer

SHIFTS = (0.3, -0.2, 0.5)   # one per task


class _ForkWithShift(AdapterLayer):
    """Forks one stream into 1 + T; task t's output is shifted by SHIFTS[t] (stream 0 unchanged)."""

    def forward(self, x):
        h = self.base_layer(x)
        tasks = torch.stack([h[0] + s for s in SHIFTS]) if h.shape[0] == 1 else \
            h[1:] + torch.tensor(SHIFTS).view(-1, *[1] * (h.ndim - 1))
        return torch.cat([h[:1], tasks])


def _pair():
    torch.manual_seed(0)
    plain = SwinBackbone('toy', (224, 224), drop_path_rate=0.0).eval()
    forked = copy.deepcopy(plain)
    name = 'layers.0.blocks.0.mlp.fc2'
    forked.replace_site(name, _ForkWithShift(forked.get_submodule(name)))
    return plain, forked


def test_without_the_flag_only_the_shared_stream_crosses_stages():
    _, forked = _pair()
    assert forked.carry_task_streams is False
    with torch.no_grad():
        feats = forked(torch.randn(1, 3, 224, 224))
    # stage 0's feature (its PatchMerging output) holds every stream; later stages only the shared
    assert [f.shape[0] for f in feats] == [1 + len(SHIFTS), 1, 1, 1]


def test_carried_streams_equal_one_plain_pass_per_task():
    plain, forked = _pair()
    forked.carry_task_streams = True
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = forked(x)
        assert [f.shape[0] for f in feats] == [1 + len(SHIFTS)] * 4
        for f, ref in zip(feats, plain(x)):   # stream 0: the unadapted path
            torch.testing.assert_close(f[0], ref[0])
        fc2 = plain.layers[0].blocks[0].mlp.fc2
        for t, s in enumerate(SHIFTS):
            fc2.bias.add_(s)
            for f, ref in zip(feats, plain(x)):
                torch.testing.assert_close(f[1 + t], ref[0], rtol=1e-5, atol=1e-5)
            fc2.bias.sub_(s)


def test_task_streams_broadcasts_a_single_stream_and_drops_stream_zero_of_a_forked_one():
    from mtlbench.backbones.streams import task_streams
    single = torch.arange(6.).view(1, 2, 3)
    out = task_streams(single, 3)
    assert out.shape == (3, 2, 3) and all(torch.equal(out[t], single[0]) for t in range(3))
    forked = torch.arange(24.).view(4, 2, 3)          # stream 0 shared, then 3 task streams
    assert torch.equal(task_streams(forked, 3), forked[1:])
    with pytest.raises(ValueError, match='MyLayer: expected 1 or 1 \\+ 3 streams, got 2'):
        task_streams(torch.zeros(2, 2, 3), 3, 'MyLayer')
