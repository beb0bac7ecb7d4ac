"""Shared adapter layers: the fused MTLoRA stream fork, the task projection, adapter dropout,
and the CPU memory setting that ``mtlbench run`` applies."""
import subprocess
import sys
import textwrap

import pytest
import torch

from mtlbench.layers.dropout import AdapterDropout, adapter_dropout, drop_mask
from mtlbench.layers.lowrank import TaskLoRALinear, fork_task_streams, task_projection


def _fork_inputs(shared: bool, tis: bool, M=7, O=5, r=3, T=2, tr=2):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.double, requires_grad=True)
    return [rnd(M, O), rnd(M, r) if shared else None, rnd(O, r) if shared else None, 1.5,
            rnd(T, M, tr), rnd(T, O, tr), 2.5, tis]


@pytest.mark.parametrize('shared,tis', [(True, False), (True, True), (False, False)])
def test_fork_task_streams_matches_formula_and_gradcheck(shared, tis):
    args = _fork_inputs(shared, tis)
    base, sd, sB, s, td, tB, ts, _ = args
    shared_out = base + (s * sd @ sB.t() if shared else 0)
    task_base = shared_out if tis else base
    expected = torch.cat([shared_out[None], task_base[None] + ts * torch.bmm(td, tB.transpose(1, 2))])
    torch.testing.assert_close(fork_task_streams(*args), expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: fork_task_streams(*a), args)


def test_task_projection_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.double, requires_grad=True)
    A = torch.randn(3, 2, 4, generator=g, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(task_projection(x, A), torch.bmm(x, A.transpose(1, 2)))
    assert torch.autograd.gradcheck(task_projection, (x, A))


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
    # the four 16-bit lanes of each random word (the top one has 15 random bits) drop alike
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
