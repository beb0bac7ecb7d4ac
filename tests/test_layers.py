"""Shared adapter layers: the fused LoRA and MTLoRA layer Functions (values, finite-difference
gradients, autocast), adapter dropout, and the CPU memory setting that ``mtlbench run`` applies."""
import subprocess
import sys
import textwrap

import pytest
import torch

from mtlbench.layers.dropout import AdapterDropout, adapter_dropout, drop_mask
from mtlbench.layers.lowrank import LoRALinear, TaskLoRALinear, lora_linear, task_lora_linear


def _rnd(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.double, requires_grad=True)


def _mask(g, *shape):
    return torch.rand(*shape, generator=g, dtype=torch.double) < 0.3


@pytest.mark.parametrize('dropout', ['none', 'mask', 'lora_in'])
@pytest.mark.parametrize('bias,r', [(True, 3), (False, 3), (True, 33)])   # r >= 32: the other GEMM layout
def test_lora_linear_matches_formula_and_gradcheck(dropout, bias, r):
    """Every gradient, the frozen weight's included, against finite differences."""
    g = torch.Generator().manual_seed(0)
    M, I, O = 7, 6, 5
    x, W, b, A, B = _rnd(g, M, I), _rnd(g, O, I), _rnd(g, O) if bias else None, _rnd(g, r, I), _rnd(g, O, r)
    mask = _mask(g, M, I) if dropout == 'mask' else None
    lora_in = _rnd(g, M, I) if dropout == 'lora_in' else None
    branch = lora_in if lora_in is not None else (x.masked_fill(mask, 0) if mask is not None else x)
    expected = x @ W.t() + (b if bias else 0) + 1.5 * (branch @ A.t()) @ B.t()
    torch.testing.assert_close(lora_linear(x, W, b, A, B, 1.5, mask, lora_in), expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, W, b, A, B, li: lora_linear(x, W, b, A, B, 1.5, mask, li),
                                    (x, W, b, A, B, lora_in))


@pytest.mark.parametrize('streams', [1, 3])
@pytest.mark.parametrize('shared,tis,r', [(True, False, 3), (True, True, 3), (False, False, 3), (True, False, 33)])
@pytest.mark.parametrize('dropout', ['none', 'mask', 'lora_in'])
def test_task_lora_linear_matches_formula_and_gradcheck(streams, shared, tis, r, dropout):
    g = torch.Generator().manual_seed(1)
    T, M, I, O, tr = 2, 7, 6, 5, 2
    x, W, b = _rnd(g, streams, M, I), _rnd(g, O, I), _rnd(g, O)
    A, B = (_rnd(g, r, I), _rnd(g, O, r)) if shared else (None, None)
    tA, tB = _rnd(g, T, tr, I), _rnd(g, T, O, tr)
    mask = _mask(g, M, I) if dropout == 'mask' else None
    lora_in = _rnd(g, M, I) if dropout == 'lora_in' else None

    def fn(x, W, b, A, B, tA, tB, li):
        return task_lora_linear(x, W, b, A, B, 1.5, tA, tB, 2.5, mask, li, tis)

    branch = lora_in if lora_in is not None else (x[0].masked_fill(mask, 0) if mask is not None else x[0])
    base = x[0] @ W.t() + b
    shared_out = base + (1.5 * (branch @ A.t()) @ B.t() if shared else 0)
    task_base = shared_out if tis else base
    task_in = [branch] * T if streams == 1 else list(x[1:])
    expected = torch.stack([shared_out] + [task_base + 2.5 * (task_in[t] @ tA[t].t()) @ tB[t].t() for t in range(T)])
    torch.testing.assert_close(fn(x, W, b, A, B, tA, tB, lora_in), expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(fn, (x, W, b, A, B, tA, tB, lora_in))


def test_lora_layers_follow_autocast():
    """Under bf16 autocast the layers compute in bf16 (as nn.Linear does), match fp32 within
    bf16 rounding, and train."""
    torch.manual_seed(0)
    layers = [LoRALinear(torch.nn.Linear(16, 8), r=2, dropout=0.1),
              TaskLoRALinear(torch.nn.Linear(16, 8), num_tasks=2, r=2, task_r=1, dropout=0.1)]
    for layer in layers:
        layer.base_layer.requires_grad_(False)
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if 'lora_' in name and 'B' in name:
                    p.normal_()
        for streams in ((1,) if isinstance(layer, LoRALinear) else (1, 3)):
            x = torch.randn(streams, 4, 16, requires_grad=True)
            layer.eval()
            with torch.autocast('cpu', dtype=torch.bfloat16):
                low = layer(x)
            assert low.dtype == torch.bfloat16
            torch.testing.assert_close(low.float(), layer(x), rtol=0.05, atol=0.1)
            layer.train()
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = layer(x)
            out.float().square().sum().backward()
            assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0
            for name, p in layer.named_parameters():
                if p.requires_grad:
                    assert p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0, name
            x.grad = None
            layer.zero_grad()


@pytest.mark.parametrize('streams', [1, 4])
def test_task_lora_linear_gradients_equal_plain_autograd(streams):
    """The hand-written backward gives the gradients autograd gives for the textbook formula."""
    torch.manual_seed(0)
    T = 3
    layer = TaskLoRALinear(torch.nn.Linear(6, 5), num_tasks=T, r=2, task_r=1, dropout=0.0).double()
    with torch.no_grad():
        for p in (layer.lora_B, layer.lora_task_B):
            p.normal_()
    x = torch.randn(streams, 2, 4, 6, dtype=torch.double, requires_grad=True)
    out = layer(x)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    x0 = x[0]
    shared = x0 @ W.t() + b + 4.0 * (x0 @ layer.lora_A.t()) @ layer.lora_B.t()
    tasks = [x0 @ W.t() + b + 4.0 * (x[t + 1 if streams > 1 else 0] @ layer.lora_task_A[t].t()) @ layer.lora_task_B[t].t()
             for t in range(T)]
    expected = torch.stack([shared] + tasks)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    params = [x, layer.lora_A, layer.lora_B, layer.lora_task_A, layer.lora_task_B]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(expected, params, g)
    for a, b_ in zip(got, want):
        torch.testing.assert_close(a, b_)


def test_adapter_dropout_distribution_and_gradient():
    p = 0.05
    drop = AdapterDropout(p)
    q = round(p * 32768) / 32768
    assert drop.drop_prob == q
    torch.manual_seed(0)
    x = torch.ones(400, 2503, requires_grad=True)   # 1,001,200 elements: not a multiple of 3 or 4
    y = drop(x)
    dropped = (y == 0).double().mean().item()
    n = x.numel()
    assert abs(dropped - q) < 5 * (q * (1 - q) / n) ** 0.5     # within 5 sigma of the drop rate
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - q)))  # exact inverse-keep scale
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())                    # gradient is the mask
    # the four 16-bit lanes of each random word drop alike
    per_lane = (y == 0).reshape(-1)[: n - n % 4].view(-1, 4).double().mean(0)
    assert (per_lane - q).abs().max() < 5 * (q * (1 - q) * 4 / n) ** 0.5
    # drop() hands back the zeroed input and the 1 / keep gain separately
    torch.manual_seed(1)
    zeroed, gain = drop.drop(x.detach())
    torch.manual_seed(1)
    torch.testing.assert_close(zeroed * gain, drop(x.detach()))
    assert gain == 1 / (1 - q) and set(zeroed.unique().tolist()) == {0.0, 1.0}


def test_adapter_dropout_seeded_and_identity_in_eval():
    drop = AdapterDropout(0.3)
    x = torch.randn(50, 60)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
    drop.eval()
    assert drop(x) is x
    off = adapter_dropout(0.0).train()
    assert off(x) is x and off.drop(x) == (x, 1.0)
    with pytest.raises(ValueError, match='dropout probability'):
        AdapterDropout(1.0)
    m = drop_mask(torch.Size([4, 5]), 0.5, torch.device('cpu'))
    assert m.shape == (4, 5) and m.dtype == torch.bool


_RSS_PROBE = textwrap.dedent('''
    import sys, torch
    from mtlbench.engine.cpu_memory import keep_freed_memory
    active = keep_freed_memory()
    def rss_mb():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * 4096 / 2 ** 20
    before = rss_mb()
    t = torch.ones(64 * 2 ** 20)      # 256 MB, touched
    del t
    print(active, round(rss_mb() - before))
''')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning is Linux-only')
def test_keep_freed_memory_retains_large_blocks(monkeypatch):
    """With the setting, a freed 256 MB tensor stays in the process (reused by the next one);
    with MTLBENCH_KEEP_FREED_MEMORY=0, glibc hands it back to the OS as usual."""
    def probe(env_value):
        env = dict(__import__('os').environ)
        if env_value is not None:
            env['MTLBENCH_KEEP_FREED_MEMORY'] = env_value
        out = subprocess.run([sys.executable, '-c', _RSS_PROBE], capture_output=True, text=True, env=env,
                             timeout=120, check=True).stdout.split()
        return out[0] == 'True', int(out[1])

    active, kept_mb = probe(None)
    if not active:
        pytest.skip('no glibc mallopt here')
    assert kept_mb > 200
    active, kept_mb = probe('0')
    assert not active and kept_mb < 50


@pytest.mark.parametrize('streams', [1, 4])
def test_dropout_gain_folded_into_the_low_rank_products(streams):
    """Training-mode outputs equal the textbook ``W x + s B A dropout(x)`` with the same mask."""
    from mtlbench.layers.lowrank import LoRALinear
    T, p = 3, 0.25
    torch.manual_seed(0)
    task = TaskLoRALinear(torch.nn.Linear(6, 5), num_tasks=T, r=2, task_r=1, dropout=p).train()
    lora = LoRALinear(torch.nn.Linear(6, 5), r=2, dropout=p).train()
    with torch.no_grad():
        for prm in (task.lora_B, task.lora_task_B, lora.lora_B):
            prm.normal_()
    x = torch.randn(streams, 2, 4, 6)
    torch.manual_seed(7)
    out = task(x)
    torch.manual_seed(7)
    dropped = AdapterDropout(p).train()(x[0])
    W, b = task.base_layer.weight, task.base_layer.bias
    shared = x[0] @ W.t() + b + 4.0 * (dropped @ task.lora_A.t()) @ task.lora_B.t()
    tasks = [x[0] @ W.t() + b + 4.0 * ((x[t + 1] if streams > 1 else dropped) @ task.lora_task_A[t].t())
             @ task.lora_task_B[t].t() for t in range(T)]
    torch.testing.assert_close(out, torch.stack([shared] + tasks))
    torch.manual_seed(8)
    out = lora(x)
    torch.manual_seed(8)
    dropped = AdapterDropout(p).train()(x)
    expected = lora.base_layer(x) + 4.0 * (dropped @ lora.lora_A.t()) @ lora.lora_B.t()
    torch.testing.assert_close(out, expected)
