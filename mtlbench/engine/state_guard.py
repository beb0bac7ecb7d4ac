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
reference does.

Cost: one host read per step (on a GPU every read waits for the device). The weights' flags
after an update stay on the device and are read together with the next step's gradient flags
(one stacked reduction, one ``bool``); the tensor at fault is looked up only after that read
fails. A weight left non-finite is still caught before it can do harm: the next step's loss
check asks this hook first (:attr:`MultiTaskModel.non_finite_cause`), the end of every epoch
and of training reads the pending flags, and so does every checkpoint save.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

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


def _flags(named: List[Tuple[str, torch.Tensor]], square: bool = False) -> Optional[torch.Tensor]:
    return _norms_finite([t.detach() for _, t in named], square) if named else None


def _first_bad(named: List[Tuple[str, torch.Tensor]], ok: Optional[torch.Tensor]) -> Optional[str]:
    """The first name whose flag in ``ok`` is False (only called after the combined check failed)."""
    if ok is None or bool(ok.all()):
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
        self._model = None
        # optimizer id -> (named weights, their finiteness flags on the device, where the update ran)
        self._pending: Dict[int, Tuple[List[Tuple[str, torch.Tensor]], torch.Tensor, str]] = {}

    # ------------------------------------------------------------------ wiring
    def before_train(self, runner) -> None:
        model = getattr(runner.model, 'module', runner.model)
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._pending = {}
        for optimizer in self._optimizers(runner):
            self._handles.append(optimizer.register_step_pre_hook(self._check_gradients))
            self._handles.append(optimizer.register_step_post_hook(self._check_weights))
        if hasattr(model, 'non_finite_cause'):   # a failed loss check asks for a diverged weight first
            self._model = model
            model.non_finite_cause = self.check_pending

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._model is not None:
            self._model.non_finite_cause = None
            self._model = None
        self.check_pending()

    def after_train_epoch(self, runner) -> None:
        self.check_pending()   # before validation and the epoch's checkpoint

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
        """Step pre-hook: this step's gradients and the previous update's weights, one host read."""
        grads = self._named(optimizer, 'grad')
        grad_ok = _flags(grads, square=True)
        weights, weight_ok, where = self._pending.pop(id(optimizer), ([], None, ''))
        parts = [f for f in (weight_ok, grad_ok) if f is not None]
        if not parts or bool(torch.cat(parts).all()):
            return
        self._raise_weights(_first_bad(weights, weight_ok), where)   # the cause comes first
        bad = _first_bad(grads, grad_ok)
        raise NonFiniteStateError(
            f'the gradient of {bad} is not finite (or its square overflows) at {self._where}; stopping '
            'before the update, so the weights and optimizer state stay finite. The last checkpoint in the '
            'work dir is intact; lower the learning rate, clip gradients or check the data.')

    def _check_weights(self, optimizer, args, kwargs) -> None:
        """Step post-hook: the weights' flags stay on the device until the next read."""
        weights = self._named(optimizer)
        if weights:
            self._pending[id(optimizer)] = (weights, _flags(weights), self._where)

    def check_pending(self) -> None:
        """Read the flags of the last update's weights now (one host read); raise if one is non-finite."""
        pending, self._pending = self._pending, {}
        for weights, weight_ok, where in pending.values():
            self._raise_weights(_first_bad(weights, weight_ok), where)

    @staticmethod
    def _raise_weights(bad: Optional[str], where: str) -> None:
        if bad is not None:
            raise NonFiniteStateError(
                f'the update at {where} made {bad} non-finite although its gradient was finite (the '
                'learning rate or weight decay is far too large); stopping before anything is saved. The last '
                'checkpoint in the work dir is intact.')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self.check_pending()
        bad = non_finite_tensors({'state_dict': checkpoint.get('state_dict', {}),
                                  'optimizer': checkpoint.get('optimizer', {})})
        if bad:
            more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
            raise NonFiniteStateError(
                f'refusing to save a checkpoint with non-finite tensors ({", ".join(bad[:3])}{more}); '
                'the last checkpoint in the work dir is intact.')

