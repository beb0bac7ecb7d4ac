"""Optimizer parameter groups of the MTLoRA reference: which parameters get weight decay.

The reference (``optimizer.py: set_weight_decay``, the optimizer MTLoRA, TADFormer and DiTASK
train with) exempts a trainable parameter from weight decay when it is 1-D, when its name ends
in ``.bias``, or when the model's ``no_weight_decay()`` / ``no_weight_decay_keywords()`` name it.
The model it is called on is the multi-task wrapper, which defines neither: the Swin backbone's
``relative_position_bias_table`` keyword never reaches the rule, so the relative-position tables
*are* decayed. :class:`ReferenceOptimWrapperConstructor` reproduces that rule by parameter name
(the reference sees the same names: ``backbone.layers.0.blocks.0.attn.relative_position_bias_table``).

Where mtlbench stores a parameter in another shape than the reference (a stack of per-task 1-D
vectors as one 2-D tensor, say), the method lists it in its module's
:attr:`~mtlbench.method.MethodModule.no_weight_decay` so that it keeps the reference's exemption.

Options (``optim_wrapper.paramwise_cfg``):

* ``rel_pos_decay_mult`` (reference 1.0): multiplier of the weight decay of the
  relative-position tables. 0.0 is the departure ``rel-pos-no-decay`` (Swin's own intent).
* ``custom_keys``: mmengine's per-name overrides (``lr_mult``, ``decay_mult``), matched as
  mmengine does (longest key first, substring of the full name); they take precedence.

Parameters a method declares :attr:`~mtlbench.method.MethodModule.unused_parameters` (no output
depends on them) get no weight decay whatever the rules above say: the reference never builds a
gradient for them, so its AdamW skips them; here they get an exact zero gradient (kept so DDP
works without ``find_unused_parameters``), and AdamW with a zero gradient and zero decay leaves
a value bit-identical. They still count as trainable, as in the reference.

Parameters with equal settings share one group (the reference has two: decayed, not decayed).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Set

import torch
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from mtlbench.errors import OptionError
from mtlbench.protocol import register_departure
from mtlbench.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['ReferenceOptimWrapperConstructor', 'reference_no_decay', 'method_no_decay_ids', 'method_unused_ids']

REL_POS_KEY = 'relative_position_bias_table'

register_departure('rel-pos-no-decay', 'optim_wrapper.paramwise_cfg.rel_pos_decay_mult', reference=1.0,
                   doc='relative-position bias tables get less (no) weight decay than the reference applies')


def _listed_ids(model: nn.Module, attr: str) -> Set[int]:
    ids: Set[int] = set()
    for module in model.modules():
        for name in getattr(module, attr, ()) or ():
            param = getattr(module, name, None)
            if isinstance(param, nn.Parameter):
                ids.add(id(param))
    return ids


def method_no_decay_ids(model: nn.Module) -> Set[int]:
    """Ids of the parameters that a method module lists in its ``no_weight_decay``."""
    return _listed_ids(model, 'no_weight_decay')


def method_unused_ids(model: nn.Module) -> Set[int]:
    """Ids of the parameters that a method module lists in its ``unused_parameters``."""
    return _listed_ids(model, 'unused_parameters')


def reference_no_decay(name: str, param: torch.Tensor) -> bool:
    """The reference's exemption rule (without its model-level skip lists, which do not apply)."""
    return param.ndim == 1 or name.endswith('.bias')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ReferenceOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine optim-wrapper constructor with the reference's weight-decay groups (see module doc).

    Example:
        >>> optim_wrapper = dict(constructor='ReferenceOptimWrapperConstructor',
        ...                      optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.05),
        ...                      paramwise_cfg=dict(rel_pos_decay_mult=1.0))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.rel_pos_decay_mult = float(paramwise_cfg.pop('rel_pos_decay_mult', 1.0))
        unknown = set(paramwise_cfg) - {'custom_keys'}
        if unknown:
            raise OptionError(f'ReferenceOptimWrapperConstructor: unsupported paramwise_cfg keys {sorted(unknown)} '
                             '(the reference rule replaces mmengine\'s bias/norm/flat multipliers)')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        # an empty paramwise_cfg would make mmengine skip add_params: always group
        self.paramwise_cfg = dict(paramwise_cfg, _reference=True)

    def _validate_cfg(self) -> None:
        if self.base_wd is None:
            raise ValueError('ReferenceOptimWrapperConstructor needs optimizer.weight_decay')

    def param_settings(self, name: str, param: torch.Tensor, exempt: Set[int],
                       unused: Set[int] = frozenset()) -> Dict[str, Any]:
        """``{'lr': ..., 'weight_decay': ...}`` (plus custom-key extras) of one parameter."""
        if id(param) in unused:   # never changed, as in the reference (module doc)
            return {'lr': self.base_lr, 'weight_decay': 0.0}
        custom = self.paramwise_cfg.get('custom_keys', {}) or {}
        for key in sorted(sorted(custom), key=len, reverse=True):
            if key in name:
                opts = dict(custom[key])
                out = {'lr': self.base_lr * opts.pop('lr_mult', 1.0),
                       'weight_decay': self.base_wd * opts.pop('decay_mult', 1.0)}
                out.update(opts)
                return out
        if reference_no_decay(name, param) or id(param) in exempt:
            wd = 0.0
        elif REL_POS_KEY in name:
            wd = self.base_wd * self.rel_pos_decay_mult
        else:
            wd = self.base_wd
        return {'lr': self.base_lr, 'weight_decay': wd}

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', **_: Any) -> None:
        """Fill ``params`` with one group per distinct setting, parameters in model order."""
        exempt, unused = method_no_decay_ids(module), method_unused_ids(module)
        groups: Dict[tuple, dict] = {}
        for name, param in module.named_parameters(prefix=prefix):
            if not param.requires_grad:
                continue
            settings = self.param_settings(name, param, exempt, unused)
            key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
            if key not in groups:
                groups[key] = dict(settings, params=[])
                params.append(groups[key])
            groups[key]['params'].append(param)
