"""The method plug-in contract: how a PEFT method adapts the shared pipeline.

A method is one file under ``methods/`` with

* a ``@dataclass`` config (subclass of :class:`MethodConfig`), checked in ``__post_init__``;
* its layer classes (subclasses of :class:`AdapterLayer` wrapping a frozen ``base_layer``, or
  of :class:`MethodModule` for anything else it adds: prompts, gates, spectral filters);
* a :class:`Method` subclass registered with ``@METHODS.register_module('name')`` whose
  :meth:`Method.adapt` swaps backbone sites (chosen by :class:`~mtlbench.backbones.swin.Site`
  metadata) and returns their names.

The core owns everything else: building, freezing (:func:`apply_trainable`), parameter
accounting (:func:`param_breakdown`), losses, metrics and run records. Which backbone
parameters besides the method's own stay trainable is data (the ``train_*`` fields of the
config), never substring matching on parameter names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mtlbench.errors import OptionError, UnknownNameError
from mtlbench.registry import METHODS

__all__ = ['MethodConfig', 'Method', 'MethodModule', 'AdapterLayer', 'build_method', 'method_options', 'apply_trainable',
           'param_breakdown', 'method_modules', 'merge_adapters']


@dataclass
class MethodConfig:
    """Options shared by all methods: which non-method backbone parameters train.

    Defaults follow the MTLoRA reference (``shared/reference/mtlora.md``): patch embedding,
    every LayerNorm, every relative-position table and the PatchMerging reductions train;
    qkv/proj/fc1/fc2 weights and biases are frozen.
    """
    train_patch_embed: bool = field(default=True, metadata={'help': 'patch embedding conv + norm trainable'})
    train_norms: bool = field(default=True, metadata={'help': 'every backbone LayerNorm trainable'})
    train_rel_pos: bool = field(default=True, metadata={'help': 'relative-position bias tables trainable'})
    train_reductions: bool = field(default=True, metadata={'help': 'PatchMerging reduction matrices trainable'})
    train_linears: bool = field(default=False, metadata={'help': 'frozen qkv/proj/fc1/fc2 weights trainable (full FT)'})
    train_decoder: bool = field(default=True, metadata={'help': 'downsamplers and heads trainable'})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class MethodModule(nn.Module):
    """Marker base class: every parameter of such a module belongs to the method and trains.

    Subclasses that wrap pretrained layers list them in :attr:`frozen_children`; their
    parameters are left to the core's freezing rules instead.
    """
    frozen_children: Tuple[str, ...] = ()
    #: names of this module's own parameters that get no weight decay although they are not 1-D
    #: (the reference stores them 1-D, so its "no decay on 1-D" rule exempts them; mtlbench.optim)
    no_weight_decay: Tuple[str, ...] = ()
    #: names of this module's own parameters that no model output depends on (e.g. MTLoRA's shared
    #: update in the network's last fc2, which only feeds the shared stream the decoder ignores).
    #: The reference leaves them out of its graph (grad None), so its AdamW never touches them;
    #: here they get a zero gradient (DDP without find_unused_parameters needs one) and
    #: mtlbench.optim puts them in a group without weight decay, so they never change either.
    unused_parameters: Tuple[str, ...] = ()

    def method_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        """``(name, param)`` pairs that are the method's own (excluding frozen children)."""
        for name, p in self.named_parameters():
            if name.split('.', 1)[0] not in self.frozen_children:
                yield name, p


class AdapterLayer(MethodModule):
    """A method's replacement for a backbone linear: wraps the frozen ``base_layer``.

    Inputs and outputs are stream-major ``[S, ..., C]``; a task adapter returns ``1 + T`` streams
    (index 0 shared), a shared adapter as many as it received.

    Args:
        base_layer: the pretrained ``nn.Linear`` being adapted.
    """
    frozen_children = ('base_layer',)

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base_layer.bias

    def merge(self) -> None:
        """Fold the shared update into ``base_layer`` for inference (where the math allows)."""
        raise NotImplementedError(f'{type(self).__name__} cannot be merged')

    def unmerge(self) -> None:
        raise NotImplementedError(f'{type(self).__name__} cannot be unmerged')


class Method:
    """Base class of registered methods.

    Args:
        config: the method's config dataclass instance.
        tasks: task names, in the order of the task streams.
    """
    config_cls = MethodConfig
    #: ``True`` for methods that train one model per task (the single-task baseline).
    one_model_per_task = False

    def __init__(self, config: MethodConfig, tasks: Sequence[str]) -> None:
        self.config = config
        self.tasks = tuple(tasks)

    @property
    def name(self) -> str:
        return getattr(self, '_registry_name', type(self).__name__.lower())

    def variant(self) -> str:
        """Short label of the key options for leaderboards (e.g. ``'r=64'``)."""
        return ''

    def adapt(self, backbone: nn.Module) -> List[str]:
        """Rewrite ``backbone`` in place; return the names of the sites replaced."""
        return []

    def adapt_decoder(self, decoder: nn.Module) -> nn.Module:
        """Return the decoder to use (default: unchanged)."""
        return decoder

    def runner_hooks(self) -> List[Any]:
        """mmengine hooks (instances or config dicts) the method needs during training."""
        return []

    def extra_losses(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """Additional loss terms (keys must contain ``'loss'``)."""
        return {}

    def adapter_breakdown(self, backbone: nn.Module) -> Dict[str, int]:
        """Optional split of the method's trainable backbone parameters (e.g. shared / task)."""
        return {}

    def record_extras(self, model: nn.Module) -> Dict[str, Any]:
        """JSON-able extras for the run record (e.g. FAAR's per-adapter rank history)."""
        return {}

    def ddp_find_unused_parameters(self) -> bool:
        """True when some trainable parameters never receive a gradient, so DDP must look for
        them every step (``find_unused_parameters=True``); otherwise DDP would stop at the
        second iteration waiting for their gradients."""
        return False


def build_method(cfg: Any, tasks: Sequence[str]) -> Method:
    """Build a method from ``dict(type='mtlora', r=64, ...)``, a name, or an instance."""
    if isinstance(cfg, Method):
        return cfg
    if isinstance(cfg, str):
        cfg = dict(type=cfg)
    cfg = dict(cfg)
    name = cfg.pop('type')
    cls = METHODS.get(name)
    if cls is None:
        raise UnknownNameError(f'unknown method {name!r}; registered: {sorted(METHODS.module_dict)}')
    known = {f.name for f in dataclasses.fields(cls.config_cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UnknownNameError(f'method {name!r} has no option(s) {unknown}; valid: {sorted(known)}')
    try:
        config = cls.config_cls(**cfg)
    except (ValueError, TypeError) as err:  # the config's own checks: a bad option value is the user's
        raise OptionError(f'model.method ({name}): {err}') from err
    method = cls(config, tasks)
    method._registry_name = name
    return method


def method_options(name: str) -> List[Dict[str, Any]]:
    """The options of a registered method (its config dataclass), in declaration order:
    ``dict(name, type, default, help)``, ``help`` from the field's ``metadata['help']``.

    Raises:
        UnknownNameError: ``name`` is not a registered method.
    """
    cls = METHODS.get(name)
    if cls is None:
        raise UnknownNameError(f'unknown method {name!r}; registered: {sorted(METHODS.module_dict)}')
    out = []
    for f in dataclasses.fields(cls.config_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, '__name__', str(f.type))
        out.append(dict(name=f.name, type=kind, default=default, help=f.metadata.get('help', '')))
    return out


def method_modules(module: nn.Module) -> Iterator[Tuple[str, MethodModule]]:
    """Outermost :class:`MethodModule` instances in ``module`` (nested ones belong to them)."""
    def walk(prefix: str, m: nn.Module):
        for name, child in m.named_children():
            full = f'{prefix}.{name}' if prefix else name
            if isinstance(child, MethodModule):
                yield full, child
            else:
                yield from walk(full, child)
    yield from walk('', module)


def _method_param_ids(module: nn.Module) -> set:
    ids = set()
    for _, mm in method_modules(module):
        ids.update(id(p) for _, p in mm.method_parameters())
    return ids


def apply_trainable(backbone: nn.Module, decoder: nn.Module, config: MethodConfig) -> None:
    """Set ``requires_grad`` on the backbone and decoder from the method config.

    Method-owned parameters always train; the rest of the backbone follows the ``train_*``
    flags; PatchMerging reductions that a method wrapped keep their base weight frozen.
    """
    from mtlbench.backbones.swin import PatchMerging, WindowAttention

    own = _method_param_ids(backbone)
    for p in backbone.parameters():
        p.requires_grad_(id(p) in own)
    if config.train_patch_embed:
        for p in backbone.patch_embed.parameters():
            p.requires_grad_(True)
    for m in backbone.modules():
        if isinstance(m, MethodModule):
            continue
        if config.train_norms and isinstance(m, nn.LayerNorm):
            for p in m.parameters():
                p.requires_grad_(True)
        if config.train_rel_pos and isinstance(m, WindowAttention):
            m.relative_position_bias_table.requires_grad_(True)
        if config.train_reductions and isinstance(m, PatchMerging) and isinstance(m.reduction, nn.Linear):
            m.reduction.weight.requires_grad_(True)
        if config.train_linears and isinstance(m, nn.Linear):
            for p in m.parameters():
                p.requires_grad_(True)
    if config.train_linears:  # full fine-tuning also trains wrapped base layers
        for p in backbone.parameters():
            p.requires_grad_(True)
    dec_own = _method_param_ids(decoder)
    for p in decoder.parameters():
        p.requires_grad_(config.train_decoder or id(p) in dec_own)


def param_breakdown(backbone: nn.Module, decoder: nn.Module) -> Dict[str, int]:
    """Trainable-parameter accounting as the reference counts (``requires_grad``, decoder included).

    Returns:
        ``adapter`` (method-owned backbone params), ``decoder`` (trainable decoder params),
        ``backbone_other`` (other trainable backbone params), ``encoder_trainable``
        (adapter + backbone_other), ``total_trainable``, ``total`` (all params).
    """
    own = _method_param_ids(backbone)
    adapter = sum(p.numel() for p in backbone.parameters() if p.requires_grad and id(p) in own)
    other = sum(p.numel() for p in backbone.parameters() if p.requires_grad and id(p) not in own)
    dec = sum(p.numel() for p in decoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in decoder.parameters())
    return dict(adapter=adapter, decoder=dec, backbone_other=other, encoder_trainable=adapter + other,
                total_trainable=adapter + other + dec, total=total)


def merge_adapters(model: nn.Module) -> List[str]:
    """Fold every adapter whose math allows it into its frozen weight (inference only).

    Returns:
        names of the merged modules (adapters that cannot merge are left as they are).
    """
    merged = []
    for name, m in model.named_modules():
        if isinstance(m, AdapterLayer):
            try:
                m.merge()
                merged.append(name)
            except NotImplementedError:
                pass
    return merged
