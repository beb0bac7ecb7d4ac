"""ReferenceCosineLR gives the reference's lr at every iteration (mtlbench/lr_schedule.py):
against hand-computed values, timm's CosineLRScheduler stepped as the reference's loop steps it,
and (with MTLBENCH_MTLORA_REF) the reference's own ``build_scheduler``."""
import importlib.util
import math
import os
from types import SimpleNamespace

import pytest
import torch
from mmengine.registry import DefaultScope

from mtlbench.registry import PARAM_SCHEDULERS

BASE, EPOCHS, WARMUP_EPOCHS, ITERS_PER_EPOCH = 1e-3, 5, 2, 3


def ours_lrs(base=BASE, epochs=EPOCHS, warmup=WARMUP_EPOCHS, per_epoch=ITERS_PER_EPOCH):
    """lr of every iteration of an mmengine-style loop (value read before the step)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    with DefaultScope.overwrite_default_scope('mtlbench'):
        sched = PARAM_SCHEDULERS.build(dict(type='ReferenceCosineLR', warmup=warmup, warmup_ratio=1e-3, min_ratio=1e-2,
                                            by_epoch=True, begin=0, end=epochs, convert_to_iter_based=True),
                                       default_args=dict(optimizer=opt, epoch_length=per_epoch))
    out = []
    for _ in range(epochs * per_epoch):
        out.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    return out


def reference_loop_lrs(scheduler_factory, base=BASE, epochs=EPOCHS, per_epoch=ITERS_PER_EPOCH):
    """The reference's loop: lr read at the step, ``step_update(epoch * n + idx)`` after it."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = scheduler_factory(opt)
    out = []
    for epoch in range(epochs):
        for idx in range(per_epoch):
            out.append(opt.param_groups[0]['lr'])
            opt.step()
            sched.step_update(epoch * per_epoch + idx)
    return out


def assert_close(a, b, rel=1e-12):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= rel * abs(y), (k, x, y)


def test_hand_computed_warm_up_and_cosine():
    lrs = ours_lrs()  # W = 6, N = 15
    w0 = BASE * 1e-3
    assert lrs[0] == pytest.approx(1e-6, rel=1e-12) and lrs[1] == pytest.approx(1e-6, rel=1e-12)
    assert lrs[2] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 6, rel=1e-12)  # 1.675e-4
    assert lrs[2] == pytest.approx(1.675e-4, rel=1e-12)
    assert lrs[6] == pytest.approx(w0 + 5 * (BASE - w0) / 6, rel=1e-12)  # last warm-up value, not BASE
    assert lrs[7] == pytest.approx(BASE, rel=1e-12)  # first cosine value
    # last iteration: t = 13, 7 iterations into a cosine of 9: 1e-5 + 0.5 * 9.9e-4 * (1 + cos(7 pi / 9))
    assert lrs[14] == pytest.approx(1e-5 + 0.5 * 9.9e-4 * (1 + math.cos(7 * math.pi / 9)), rel=1e-12)


def test_equals_timm_cosine_stepped_like_the_reference():
    from timm.scheduler.cosine_lr import CosineLRScheduler
    n, w = EPOCHS * ITERS_PER_EPOCH, WARMUP_EPOCHS * ITERS_PER_EPOCH

    def timm_sched(opt):
        return CosineLRScheduler(opt, t_initial=n - w, lr_min=BASE * 1e-2, warmup_lr_init=BASE * 1e-3, warmup_t=w,
                                 cycle_limit=1, t_in_epochs=False, warmup_prefix=True)
    assert_close(ours_lrs(), reference_loop_lrs(timm_sched))


REF = os.environ.get('MTLBENCH_MTLORA_REF')


@pytest.mark.skipif(not REF, reason='MTLBENCH_MTLORA_REF (a checkout of scale-lab/MTLoRA) not set')
@pytest.mark.parametrize('epochs, warmup, per_epoch', [(5, 2, 3), (3, 1, 7)])
def test_equals_reference_build_scheduler(epochs, warmup, per_epoch):
    spec = importlib.util.spec_from_file_location('_mtlora_ref_lr_scheduler', os.path.join(REF, 'lr_scheduler.py'))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ns = SimpleNamespace
    # main.py scales all three lrs by batch / 512 (here batch 32)
    config = ns(TRAIN=ns(EPOCHS=epochs, WARMUP_EPOCHS=warmup, BASE_LR=5e-4 * 32 / 512, WARMUP_LR=5e-7 * 32 / 512,
                         MIN_LR=5e-6 * 32 / 512,
                         LR_SCHEDULER=ns(NAME='cosine', DECAY_EPOCHS=30, DECAY_RATE=0.1, WARMUP_PREFIX=True,
                                         GAMMA=0.1, MULTISTEPS=[])))
    expected = reference_loop_lrs(lambda opt: ref.build_scheduler(config, opt, per_epoch), base=5e-4 * 32 / 512,
                                  epochs=epochs, per_epoch=per_epoch)
    assert_close(ours_lrs(base=5e-4 * 32 / 512, epochs=epochs, warmup=warmup, per_epoch=per_epoch), expected)


def test_shortened_schedule_keeps_the_warm_up_share():
    """``--epochs`` (and the synthetic schedule) shrink 300 epochs / 20 warm-up to the same shape."""
    from mtlbench.config import find_config, load_config
    from mtlbench.run import _set_schedule
    cfg = load_config(str(find_config('mtlora', 'pascal_context')), {})
    _set_schedule(cfg, 3)
    (sched,) = cfg.param_scheduler
    assert (sched.end, cfg.train_cfg.max_epochs) == (3, 3)
    assert sched.warmup == pytest.approx(0.2)  # 20 / 300 of 3 epochs
    lrs = ours_lrs(epochs=3, warmup=sched.warmup, per_epoch=10)  # W = int(0.2 * 10) = 2, N = 30
    assert lrs[:4] == pytest.approx([1e-6, 1e-6, 1e-6 + (1e-3 - 1e-6) / 2, 1e-3], rel=1e-12)
