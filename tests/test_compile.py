"""``torch.compile`` (the ``--compile`` option of ``mtlbench bench`` / ``mtlbench run``, i.e.
:func:`mtlbench.model.compile_model`) gives the outputs, losses and gradients of the eager model.

MTLoRA is the method compiled here: every adapted linear goes through the hand-written autograd
Functions (:func:`~mtlbench.layers.lowrank.lora_linear`,
:func:`~mtlbench.layers.lowrank.task_lora_linear`) and the window permutation
(:func:`~mtlbench.backbones.swin.permute_tokens`) that the compiler must trace. Dropout and
stochastic depth are off so that eager and compiled draw no random numbers.

Through inductor (the default backend, what ``--compile`` uses) the two compilations cost about
4 minutes on 2 CPU cores with a cold inductor cache, a quarter of the suite, so they run with
``MTLBENCH_EXTENDED_TESTS=1``. By default the evaluation forward (eval mode is its own graph) is
compiled with ``aot_eager``: the same captured graph, no code generation; the training step's
``aot_eager`` twin is ``tests/test_compile_methods.py`` (MTLoRA in float64, two steps).
"""
import copy
import os

import pytest
import torch

import mtlbench.methods  # noqa: F401
from mtlbench.bench import synthetic_batch
from mtlbench.model import MultiTaskModel, compile_model

TASKS = ('semseg', 'human_parts', 'sal', 'normals')
SIZE = 64
RUN_ALL = bool(os.environ.get('MTLBENCH_EXTENDED_TESTS'))


def _mtlora_and_twin(**compile_kwargs):
    """A toy MTLoRA model and a compiled deep copy of it (backbone and decoder in place, as
    ``--compile`` does)."""
    torch.manual_seed(0)
    eager = MultiTaskModel('pascal_context', dict(type='mtlora', r=4, task_r=2, dropout=0.0),
                           dict(arch='toy', img_size=(SIZE, SIZE), window_size=4, drop_path_rate=0.0),
                           tasks=TASKS, decoder=dict(channels=(4, 8, 8, 8)))
    with torch.no_grad():  # non-zero B so that every adapter contributes
        for name, p in eager.named_parameters():
            if 'lora_B' in name or 'lora_task_B' in name:
                p.normal_(0, 0.1)
    twin = copy.deepcopy(eager)
    compile_model(twin, **compile_kwargs)
    return eager, twin


@pytest.mark.skipif(not RUN_ALL, reason='inductor training step: MTLBENCH_EXTENDED_TESTS=1 '
                                          '(aot_eager twin in test_compile_methods.py)')
def test_compiled_mtlora_training_step_matches_eager():
    eager, compiled = _mtlora_and_twin()   # inductor: what --compile uses
    x, targets = synthetic_batch(eager, 2, (SIZE, SIZE), torch.device('cpu'))

    eager.train(), compiled.train()
    loss_e = eager(x, targets, mode='loss')
    loss_c = compiled(x, targets, mode='loss')
    assert loss_c.keys() == loss_e.keys() == {f'loss_{t}' for t in TASKS}
    for key in loss_e:
        torch.testing.assert_close(loss_c[key], loss_e[key], rtol=1e-4, atol=1e-5)
    sum(loss_e.values()).backward()
    sum(loss_c.values()).backward()
    grads_e = {n: p.grad for n, p in eager.named_parameters() if p.requires_grad}
    grads_c = {n: p.grad for n, p in compiled.named_parameters() if p.requires_grad}
    assert grads_e.keys() == grads_c.keys() and all(g is not None for g in grads_c.values())
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize('backend', ['inductor' if RUN_ALL else 'aot_eager'])
def test_compiled_mtlora_evaluation_matches_eager(backend):
    eager, compiled = _mtlora_and_twin(backend=backend)
    x, _ = synthetic_batch(eager, 2, (SIZE, SIZE), torch.device('cpu'))
    eager.eval(), compiled.eval()
    with torch.no_grad():
        out_e, out_c = eager(x), compiled(x)
    assert out_c.keys() == out_e.keys()
    for task in TASKS:
        torch.testing.assert_close(out_c[task], out_e[task], rtol=1e-4, atol=1e-5)
