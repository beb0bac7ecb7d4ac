"""Keep non-finite numbers out of the weights, the optimizer state and every checkpoint.

The loss check in :meth:`mtlbench.model.MultiTaskModel.loss` sees only the loss. A finite but
exploding loss (say 4e8 at a learning rate of 1e5) can still produce infinite gradients, an
infinite Adam second moment, or weights that weight decay multiplies out of range; the next
epoch-end checkpoint would then hold non-finite tensors and ``--resume`` would fail at once.
:class:`StateGuardHook` therefore

* refuses an optimizer step whose gradients are not finite, or whose squares would not be
  (Adam keeps ``g**2``), so the weights and the optimizer state stay as they were;
* stops the run after a step that left a weight non-finite (weight decay at a huge learning rate
  does that with finite gradients), before anything is saved;
* refuses to write a checkpoint holding a non-finite weight or optimizer-state tensor.

So the newest checkpoint in the work dir is always finite and ``--resume`` always works. With
fp16 AMP the loss scaler skips steps with infinite gradients before this hook is consulted, as the
reference does. The checks cost one reduction over the gradients and one over the weights per
iteration.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import torch
from mmengine.hooks import Hook

from mtlbench.model import NonFiniteLossError
from mtlbench.registry import HOOKS

__all__ = ['NonFiniteStateError', 'StateGuardHook', 'non_finite_tensors']


class NonFiniteStateError(NonFiniteLossError):
    """Training produced (or was about to produce) non-finite weights or optimizer state."""


def _norms_finite(tensors: List[torch.Tensor], square: bool = False) -> torch.Tensor:
    """One bool per tensor: its 2-norm (squared in float32 if ``square``: the norm bounds every
    element, and Adam squares gradients in their own, at least as narrow, dtype) is finite."""
    norms = torch.stack([n.float() for n in torch._foreach_norm(tensors)])
    return torch.isfinite(norms * norms if square else norms)


def _first_bad(named: List[Tuple[str, torch.Tensor]], square: bool = False) -> Optional[str]:
    if not named:
        return None
    ok = _norms_finite([t.detach() for _, t in named], square)
    if bool(ok.all()):
        return None
    return named[int((~ok).nonzero()[0])][0]


def non_finite_tensors(tree, prefix: str = '') -> List[str]:
    """Dotted paths of the floating-point tensors in a nested dict / list that hold inf or nan."""
    bad: List[str] = []
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and tree.numel() and not bool(torch.isfinite(tree).all()):
            bad.append(prefix or '<tensor>')
    elif isinstance(tree, dict):
        for key, value in tree.items():
            bad += non_finite_tensors(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            bad += non_finite_tensors(value, f'{prefix}[{i}]')
    return bad


@HOOKS.register_module()
class StateGuardHook(Hook):
    """See the module docstring. Registered for every run by :func:`mtlbench.run.prepare_config`."""
    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._handles: list = []
        self._names: dict = {}
        self._where = ''

    # ------------------------------------------------------------------ wiring
    def before_train(self, runner) -> None:
        model = getattr(runner.model, 'module', runner.model)
        self._names = {id(p): n for n, p in model.named_parameters()}
        for optimizer in self._optimizers(runner):
            self._handles.append(optimizer.register_step_pre_hook(self._check_gradients))
            self._handles.append(optimizer.register_step_post_hook(self._check_weights))

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # 1-based, as the training log counts
        self._where = f'iteration {runner.iter + 1} (epoch {runner.epoch + 1})'

    @staticmethod
    def _optimizers(runner) -> Iterable[torch.optim.Optimizer]:
        wrapper = runner.optim_wrapper
        wrappers = wrapper.values() if hasattr(wrapper, 'values') else [wrapper]  # OptimWrapperDict
        return [w.optimizer for w in wrappers]

    def _named(self, optimizer, attr: Optional[str] = None) -> List[Tuple[str, torch.Tensor]]:
        out = []
        for group in optimizer.param_groups:
            for p in group['params']:
                t = p if attr is None else getattr(p, attr)
                if t is not None:
                    out.append((self._names.get(id(p), f'<parameter {tuple(p.shape)}>'), t))
        return out

    # ------------------------------------------------------------------ checks
    def _check_gradients(self, optimizer, args, kwargs) -> None:
        bad = _first_bad(self._named(optimizer, 'grad'), square=True)
        if bad is not None:
            raise NonFiniteStateError(
                f'the gradient of {bad} is not finite (or its square overflows) at {self._where}; stopping '
                'before the update, so the weights and optimizer state stay finite. The last checkpoint in the '
                'work dir is intact; lower the learning rate, clip gradients or check the data.')

    def _check_weights(self, optimizer, args, kwargs) -> None:
        bad = _first_bad(self._named(optimizer))
        if bad is not None:
            raise NonFiniteStateError(
                f'the update at {self._where} made {bad} non-finite although its gradient was finite (the '
                'learning rate or weight decay is far too large); stopping before anything is saved. The last '
                'checkpoint in the work dir is intact.')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        bad = non_finite_tensors({'state_dict': checkpoint.get('state_dict', {}),
                                  'optimizer': checkpoint.get('optimizer', {})})
        if bad:
            more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
            raise NonFiniteStateError(
                f'refusing to save a checkpoint with non-finite tensors ({", ".join(bad[:3])}{more}); '
                'the last checkpoint in the work dir is intact.')

