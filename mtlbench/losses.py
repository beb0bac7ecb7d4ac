"""Per-task training losses and the raw-output -> prediction post-processing.

The loss of each task is named by ``TaskSpec.loss`` in ``mtlbench.tasks`` and built with
``build_loss(name)``; its reference weight is ``TaskSpec.loss_weight`` (the model/config applies
weights, not these modules). Definitions follow ``metrics.md``.

Every loss averages over the valid pixels (or elements) of the whole batch and ignores the
rest. A batch without any valid pixel for a task gives a loss of 0 that still carries a
``grad_fn`` (the sum over an empty selection, divided by 1), so ``backward`` works and no NaN
reaches the optimiser.

Inputs are raw head outputs at the target resolution (the model resizes): logits
``[B, C, H, W]`` for classification, ``[B, 1, H, W]`` logits for saliency, ``[B, 3, H, W]`` for
normals, ``[B, 1, H, W]`` for depth. Targets are the batched formats of ``mtlbench.tasks``.

Not in metrics.md; chosen:

- ``normals_l1``: only the prediction is L2-normalised; the GT is used as given (unit vectors
  from the dataset). The mean is over the 3 components of every valid pixel.
- ``depth``: raw regression output, no ReLU, in training and in ``postprocess`` (the reference
  regresses raw values); negative predictions are scored as they are.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from mtlbench.tasks import IGNORE_INDEX, TASKS

__all__ = ['CrossEntropyLoss', 'BalancedBCELoss', 'NormalsL1Loss', 'DepthL1Loss', 'LOSSES',
           'build_loss', 'postprocess']


def _check_spatial(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.dim() != 4 or pred.shape[0] != target.shape[0] or \
            pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(f'{name}: prediction {tuple(pred.shape)} [B, C, H, W] and target '
                         f'{tuple(target.shape)} must share batch size and H, W (resize the '
                         'head output to the target first)')


def _masked_mean(values: torch.Tensor, count: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``sum(values[valid]) / max(count, 1)``: 0 with a grad_fn when nothing is valid.

    The mask is applied with ``torch.where`` rather than boolean indexing, which would need the
    number of valid pixels on the host (a sync, and a graph break under ``torch.compile``).
    """
    if valid is not None:
        values = torch.where(valid, values, values.new_zeros(()))
    return values.sum() / count.clamp(min=1).to(values.dtype)


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, mean over the non-ignored pixels of the batch.

    Args:
        ignore_index: target label to ignore. Defaults to 255.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, C, H, W]`` class scores.
            target: int64 ``[B, H, W]`` class ids, ``ignore_index`` where ignored.

        Returns:
            Scalar loss.
        """
        _check_spatial(logits, target, 'cross_entropy')
        target = target.long()
        if logits.is_contiguous(memory_format=torch.channels_last):
            # channels-last (what the heads emit): score [B*H*W, C] rows in place instead of
            # copying to NCHW for a softmax over a strided axis (about 2x faster on a CPU)
            logits, target = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1]), target.reshape(-1)
        total = F.cross_entropy(logits, target, ignore_index=self.ignore_index,
                                reduction='sum')
        return _masked_mean(total, (target != self.ignore_index).sum())


class BalancedBCELoss(nn.Module):
    """Class-balanced binary cross-entropy on logits (saliency), per metrics.md.

    With ``y`` the valid (non-ignored) targets of the whole batch and
    ``w = #negatives / #valid``::

        loss = mean over valid pixels of −[w·y·log σ(z) + (1−w)·(1−y)·log(1−σ(z))]

    computed with ``logsigmoid`` (``log(1−σ(z)) = logsigmoid(−z)``) for numerical stability.
    ``w`` is a constant (no gradient).

    Args:
        ignore_index: target label to ignore. Defaults to 255.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, 1, H, W]`` salient-class logits.
            target: int ``[B, H, W]`` (or ``[B, 1, H, W]``) in {0, 1}, ``ignore_index`` where
                ignored.

        Returns:
            Scalar loss.
        """
        _check_spatial(logits, target, 'balanced_bce')
        if logits.shape[1] != 1:
            raise ValueError(f'balanced_bce: expected 1 channel, got {logits.shape[1]}')
        z = logits[:, 0]
        target = target.reshape(z.shape)
        valid = target != self.ignore_index
        y = (target == 1).to(z.dtype)
        n_valid = valid.sum()
        w = ((1 - y) * valid).sum() / n_valid.clamp(min=1)
        per_pixel = -(w * y * F.logsigmoid(z) + (1 - w) * (1 - y) * F.logsigmoid(-z))
        return _masked_mean(per_pixel, n_valid, valid)


class NormalsL1Loss(nn.Module):
    """L1 between the L2-normalised prediction and the GT normals, over valid elements.

    A pixel is valid when its GT is not the zero vector; the loss is the mean absolute
    difference over the 3 components of all valid pixels of the batch.

    Args:
        eps: lower bound of the prediction's norm in the normalisation. Defaults to 1e-12.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: ``[B, 3, H, W]`` raw normals.
            target: float ``[B, 3, H, W]`` unit normals, zero vector where invalid.

        Returns:
            Scalar loss.
        """
        _check_spatial(pred, target, 'normals_l1')
        if pred.shape != target.shape or pred.shape[1] != 3:
            raise ValueError(f'normals_l1: expected [B, 3, H, W] prediction and target, got '
                             f'{tuple(pred.shape)} and {tuple(target.shape)}')
        valid = (target != 0).any(dim=1, keepdim=True).expand_as(target)
        diff = (F.normalize(pred, p=2, dim=1, eps=self.eps) - target.to(pred.dtype)).abs()
        return _masked_mean(diff, valid.sum(), valid)


class DepthL1Loss(nn.Module):
    """L1 over the pixels with GT depth > 0, mean over the batch's valid pixels."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: ``[B, 1, H, W]`` raw depth (metres).
            target: float ``[B, 1, H, W]`` depth, 0 where missing.

        Returns:
            Scalar loss.
        """
        _check_spatial(pred, target, 'depth_l1')
        target = target.reshape(pred.shape).to(pred.dtype)
        valid = target > 0
        return _masked_mean((pred - target).abs(), valid.sum(), valid)


#: Loss name (``TaskSpec.loss``) -> loss class.
LOSSES: Dict[str, Type[nn.Module]] = {
    'cross_entropy': CrossEntropyLoss,
    'balanced_bce': BalancedBCELoss,
    'normals_l1': NormalsL1Loss,
    'depth_l1': DepthL1Loss,
}


def build_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by name.

    Args:
        name: a key of ``LOSSES`` (``TaskSpec.loss``), or a task name (its ``TaskSpec.loss``).
        **kwargs: constructor arguments (``ignore_index``, ``eps``).

    Returns:
        The loss module, called as ``loss(raw_output, target) -> scalar``.
    """
    if name not in LOSSES and name in TASKS:
        name = TASKS[name].loss
    if name not in LOSSES:
        raise KeyError(f'unknown loss {name!r}; valid: {sorted(LOSSES)}')
    return LOSSES[name](**kwargs)


def _argmax(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(dim=1)


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x[:, 0])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=1)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_POSTPROCESS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'classification': _argmax,
    'binary': _sigmoid,
    'normals': _unit,
    'depth': _identity,
}


def postprocess(task: str, raw_output: torch.Tensor) -> torch.Tensor:
    """Turn a batched raw head output into the prediction format of ``mtlbench.tasks``.

    Args:
        task: a key of ``mtlbench.tasks.TASKS``.
        raw_output: ``[B, C, H, W]`` head output.

    Returns:
        semseg / human_parts: int64 ``[B, H, W]`` argmax class ids; sal: float ``[B, H, W]``
        sigmoid probabilities; normals: ``[B, 3, H, W]`` unit vectors; depth: ``[B, 1, H, W]``
        raw values (no ReLU).
    """
    if task not in TASKS:
        raise KeyError(f'unknown task {task!r}; valid: {sorted(TASKS)}')
    if raw_output.dim() != 4:
        raise ValueError(f'{task}: expected [B, C, H, W], got {tuple(raw_output.shape)}')
    return _POSTPROCESS[TASKS[task].kind](raw_output)
