"""``torch.compile`` (the ``--compile`` option of ``mtlbench bench`` / ``mtlbench run``, i.e.
:func:`mtlbench.model.compile_model`) gives the outputs, losses and gradients of the eager model.

MTLoRA is the method compiled here: every adapted linear goes through the hand-written autograd
Functions (:func:`~mtlbench.layers.lowrank.lora_linear`,
:func:`~mtlbench.layers.lowrank.task_lora_linear`) and the window permutation
(:func:`~mtlbench.backbones.swin.permute_tokens`) that the compiler must trace. Dropout and
stochastic depth are off so that eager and compiled draw no random numbers.
"""
import copy

import torch

import mtlbench.methods  # noqa: F401
from mtlbench.bench import synthetic_batch
from mtlbench.model import MultiTaskModel, compile_model

TASKS = ('semseg', 'human_parts', 'sal', 'normals')


def test_compiled_mtlora_matches_eager():
    torch.manual_seed(0)
    size = 64
    eager = MultiTaskModel('pascal_context', dict(type='mtlora', r=4, task_r=2, dropout=0.0),
                           dict(arch='toy', img_size=(size, size), window_size=4, drop_path_rate=0.0),
                           tasks=TASKS, decoder=dict(channels=(4, 8, 8, 8)))
    with torch.no_grad():  # non-zero B so that every adapter contributes
        for name, p in eager.named_parameters():
            if 'lora_B' in name or 'lora_task_B' in name:
                p.normal_(0, 0.1)
    twin = copy.deepcopy(eager)
    compile_model(twin)   # what --compile does: backbone and decoder compiled in place
    compiled = twin
    x, targets = synthetic_batch(eager, 2, (size, size), torch.device('cpu'))

    eager.train(), twin.train()
    loss_e = eager(x, targets, mode='loss')
    loss_c = compiled(x, targets, mode='loss')
    assert loss_c.keys() == loss_e.keys() == {f'loss_{t}' for t in TASKS}
    for key in loss_e:
        torch.testing.assert_close(loss_c[key], loss_e[key], rtol=1e-4, atol=1e-5)
    sum(loss_e.values()).backward()
    sum(loss_c.values()).backward()
    grads_e = {n: p.grad for n, p in eager.named_parameters() if p.requires_grad}
    grads_c = {n: p.grad for n, p in twin.named_parameters() if p.requires_grad}
    assert grads_e.keys() == grads_c.keys() and all(g is not None for g in grads_c.values())
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-5, msg=name)

    eager.eval(), twin.eval()
    with torch.no_grad():
        out_e, out_c = eager(x), compiled(x)
    for task in TASKS:
        torch.testing.assert_close(out_c[task], out_e[task], rtol=1e-4, atol=1e-5)
