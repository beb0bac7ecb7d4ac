"""The model's finiteness checks read the device once per call, whatever the number of tasks.

On a GPU every ``bool(tensor)`` / ``.item()`` blocks the host until the device has caught up;
counting those calls on CPU tensors counts the synchronisations a CUDA step would make.
"""
import contextlib

import torch

import mtlbench.methods  # noqa: F401
from mtlbench.bench import synthetic_batch
from mtlbench.model import MultiTaskModel, NonFiniteLossError

TASKS = ('semseg', 'human_parts', 'sal', 'normals')
READS = ('__bool__', 'item', 'tolist', '__int__', '__float__', '__index__')


@contextlib.contextmanager
def count_host_reads():
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            calls.append(name)
            return fn(self, *args, **kwargs)
        return counted

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _model():
    torch.manual_seed(0)
    return MultiTaskModel('pascal_context', dict(type='mtlora', r=4, task_r=2, dropout=0.0),
                          dict(arch='toy', img_size=(32, 32), window_size=4, drop_path_rate=0.0),
                          tasks=TASKS, decoder=dict(channels=(4, 8, 8, 8)))


def test_loss_and_predict_read_the_device_once():
    model = _model()
    x, targets = synthetic_batch(model, 2, (32, 32), torch.device('cpu'))
    model.train()
    raw = model(x)
    with count_host_reads() as calls:
        losses = model.loss(raw, targets)
    assert len(losses) == len(TASKS) and calls == ['__bool__'], calls
    model.eval()
    with torch.no_grad():
        raw = model(x)
    with count_host_reads() as calls:
        model.predict(raw, targets)
    assert calls == ['__bool__'], calls


def test_the_stacked_check_still_names_the_bad_task():
    model = _model()
    x, targets = synthetic_batch(model, 2, (32, 32), torch.device('cpu'))
    raw = model(x)
    raw['sal'] = raw['sal'] * float('nan')
    try:
        model.loss(raw, targets)
    except NonFiniteLossError as err:
        assert "'sal'" in str(err) and 'nan' in str(err)
    else:
        raise AssertionError('a NaN loss was not refused')
    raw['normals'] = raw['normals'] * float('inf')
    try:
        model.predict(raw)
    except NonFiniteLossError as err:
        assert "'sal'" in str(err)   # the first non-finite task in stream order
    else:
        raise AssertionError('non-finite predictions were not refused')


def _guarded_step_reads(model, optimizer, hook, x, targets):
    with count_host_reads() as calls:
        optimizer.zero_grad()
        losses = model(x, targets, mode='loss')
        sum(losses.values()).backward()
        optimizer.step()
    return calls


def test_a_guarded_training_step_reads_the_device_twice():
    """Loss check + state guard: two reads per step (the guard's gradient and weight checks
    share one; it was three reads per step before)."""
    from types import SimpleNamespace

    from mtlbench.engine.state_guard import StateGuardHook

    model = _model()
    # SGD: Adam reads its step counters with .item(), but those live on the CPU (no device sync)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    runner = SimpleNamespace(model=model, optim_wrapper=SimpleNamespace(optimizer=optimizer), iter=0, epoch=0)
    hook = StateGuardHook()
    hook.before_train(runner)
    x, targets = synthetic_batch(model, 2, (32, 32), torch.device('cpu'))
    model.train()
    for it in range(3):   # the first step has no earlier update to check
        runner.iter = it
        hook.before_train_iter(runner, it)
        calls = _guarded_step_reads(model, optimizer, hook, x, targets)
        assert calls == ['__bool__', '__bool__'], (it, calls)
    with count_host_reads() as calls:
        hook.after_train(runner)   # the last update's flags are read once at the end
    assert calls == ['__bool__'], calls
