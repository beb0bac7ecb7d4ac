"""The state guard keeps non-finite numbers out of weights, optimizer state and checkpoints
(issue 15: a finite but exploding loss once produced an epoch checkpoint full of inf)."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtlbench.engine.state_guard import NonFiniteStateError, StateGuardHook
from mtl_testing import FAST, IMG, run_cli


def _guarded(weight_decay: float = 0.0, lr: float = 0.1):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    runner = SimpleNamespace(model=model, optim_wrapper=SimpleNamespace(optimizer=opt), iter=4, epoch=0)
    hook = StateGuardHook()
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    return model, opt, hook


def _step(model, opt, scale: float) -> None:
    opt.zero_grad()
    (model(torch.ones(1, 3)).sum() * scale).backward()
    opt.step()


@pytest.mark.parametrize('scale', [float('inf'), 1e25])  # inf gradient; finite gradient whose square is inf in fp32
def test_step_with_unusable_gradients_is_refused_and_changes_nothing(scale):
    model, opt, _ = _guarded()
    _step(model, opt, 1.0)
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    with pytest.raises(NonFiniteStateError, match=r'gradient of 0\.(weight|bias) .* at iteration 5 \(epoch 1\)'):
        _step(model, opt, scale)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])
    for i, s in opt.state_dict()['state'].items():
        for k, v in s.items():
            assert torch.equal(v, state['state'][i][k]), (i, k)


def test_update_that_makes_weights_non_finite_stops_the_run():
    # AdamW multiplies the weights by (1 - lr * wd) = -1e37 per step: finite gradients, inf weights.
    model, opt, _ = _guarded(weight_decay=1.0, lr=1e37)
    with pytest.raises(NonFiniteStateError, match='made 0.weight non-finite although its gradient was finite'):
        for _ in range(3):
            _step(model, opt, 1.0)


def test_no_checkpoint_with_non_finite_weights_or_optimizer_state():
    hook = StateGuardHook()
    good = {'state_dict': {'w': torch.ones(2)}, 'optimizer': {'state': {0: {'exp_avg_sq': torch.ones(2)}}}}
    hook.before_save_checkpoint(None, good)  # finite: saved as usual
    bad = copy.deepcopy(good)
    bad['optimizer']['state'][0]['exp_avg_sq'][1] = float('inf')
    with pytest.raises(NonFiniteStateError, match=r'optimizer\.state\.0\.exp_avg_sq'):
        hook.before_save_checkpoint(None, bad)


def test_exploding_run_stops_and_leaves_only_finite_checkpoints(pascal_root, tmp_path):
    work = tmp_path / 'w'
    args = ['run', '--method', 'full_ft', '--data-root', pascal_root, '--work-dir', str(work),
            '--results-dir', str(tmp_path / 'runs'), '--epochs', '3', '--num-workers', '0', '--batch-size', '2',
            *IMG] + FAST + ['optim_wrapper.optimizer.lr=1000.0', 'default_hooks.checkpoint.interval=1']
    from mtlbench.model import NonFiniteLossError  # the state guard's error is one of these
    with pytest.raises(NonFiniteLossError):  # whichever check fires first: gradient, weight or loss
        run_cli(args)
    for ckpt in Path(work).glob('*.pth'):
        sd = torch.load(ckpt, map_location='cpu', weights_only=False)
        assert all(torch.isfinite(v).all() for v in sd['state_dict'].values() if v.is_floating_point()), ckpt


def test_a_diverged_weight_is_blamed_before_the_loss_it_spoils():
    """The weights' flags are read with the next step's gradients; if the next forward's loss
    check fails first, the guard names the weight (the cause), not the task loss."""
    from mtlbench.bench import synthetic_batch
    from mtlbench.model import MultiTaskModel

    torch.manual_seed(0)
    model = MultiTaskModel('pascal_context', dict(type='full_ft'),
                           dict(arch='toy', img_size=(32, 32), window_size=4, drop_path_rate=0.0),
                           tasks=('semseg',), decoder=dict(channels=(4, 8, 8, 8)))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    runner = SimpleNamespace(model=model, optim_wrapper=SimpleNamespace(optimizer=opt), iter=6, epoch=1)
    hook = StateGuardHook()
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    x, targets = synthetic_batch(model, 2, (32, 32), torch.device('cpu'))
    model.train()
    sum(model(x, targets, mode='loss').values()).backward()
    opt.step()
    with torch.no_grad():   # as if this update had overflowed one weight
        model.backbone.patch_embed.proj.weight[0, 0, 0, 0] = float('inf')
    hook._check_weights(opt, (), {})
    runner.iter = 7
    hook.before_train_iter(runner, 0)
    with pytest.raises(NonFiniteStateError,
                       match=r'update at iteration 7 \(epoch 2\) made backbone\.patch_embed\.proj\.weight non-finite'):
        model(x, targets, mode='loss')
    hook.after_train(runner)
    assert model.non_finite_cause is None
