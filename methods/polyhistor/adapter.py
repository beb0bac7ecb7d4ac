"""The per-task bottleneck adapter whose weights a shared hypernetwork writes.

Every HyperFormer / Polyhistor adapter site holds no weights of its own: at each forward it asks
the shared hypernetwork for the four tensors of its ``T`` task adapters (down ``[T, C, b]`` and
its bias, up ``[T, b, C]`` and its bias) and applies them to its own task's stream,
``h + up_t(gelu(down_t(h)))`` after the frozen linear (Houlsby placement). Polyhistor-Lite's
Layer-wise Scaling Kernels live here, one pair per site: a template generated at the first
stage's size is expanded to this site's width as ``kron(S, template)``.

HyperFormer's task-conditional LayerNorm (``layer_norm=True``): the adapter's output is
normalised per task with generated ``(gamma_t, beta_t)`` before the residual,
``h + LN_t(up_t(gelu(down_t(h))))``; the order is the official code's (rabeehk/hyperformer,
``adapters/adapter_controller.py`` ``MetaLayersAdapterController.forward``: adapter, then the
post-adapter norm, then ``+ inputs``; its pre-adapter norm is off by default, ``training_args.py``
``add_layer_norm_before_adapter=False``). ``eps`` is ``F.layer_norm``'s default, as there.

Streams: a single input stream (the first adapted block) is forked into ``1 + T`` (index 0 stays
the frozen, unadapted path); afterwards every task stream gets its own task's adapter. The
backbone must carry task streams across stages (``SwinBackbone.carry_task_streams``), because
the papers' adapters are task-specific in every block, not only in each stage's last.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.streams import task_streams
from mtlbench.method import AdapterLayer

__all__ = ['GeneratedAdapterLinear', 'kron_expand']


def kron_expand(scale: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``torch.kron(scale, template[t])`` for every task at once.

    Args:
        scale: ``[k, k]`` scaling kernel.
        template: ``[T, m, n]`` template kernels.

    Returns:
        ``[T, k * m, k * n]``.
    """
    k = scale.shape[0]
    T, m, n = template.shape
    return torch.einsum('ij,tab->tiajb', scale, template).reshape(T, k * m, k * n)


class GeneratedAdapterLinear(AdapterLayer):
    """Frozen linear, then one generated bottleneck adapter per task stream.

    Args:
        base_layer: the frozen linear (``proj`` or ``fc2``).
        hypernet: the method's shared hypernetwork (owned by the backbone, referenced here
            without registering it, so its parameters are counted and saved once).
        layer: global block index (the layer-id embedding's row).
        position: 0 after attention, 1 after the MLP (the position embedding's row).
        num_tasks: ``T``.
        scale_factor: ``k = width / template width`` for Layer-wise Scaling Kernels; ``0`` means
            no scaling kernels (the hypernetwork emits this site's full size).
        scaling_init: ``'ones'`` (``kron`` with ones repeats the template) or ``'identity'``
            (block-diagonal copies).
        layer_norm: normalise each task's adapter output with its generated LayerNorm.
    """
    #: the Layer-wise Scaling Kernels are multiplicative gains (ones at init, like a LayerNorm
    #: weight): weight decay would pull every scaled adapter towards zero, so they get none
    #: (not in the paper, chosen; ``mtlbench.optim`` reads this list)
    no_weight_decay = ('scale_down', 'scale_up')

    def __init__(self, base_layer: nn.Linear, hypernet: nn.Module, layer: int, position: int, num_tasks: int,
                 scale_factor: int = 0, scaling_init: str = 'ones', layer_norm: bool = False) -> None:
        super().__init__(base_layer)
        self.layer_norm = layer_norm
        object.__setattr__(self, 'hypernet', hypernet)   # shared: not a child module
        self.layer, self.position, self.num_tasks = layer, position, num_tasks
        self.scale_factor = scale_factor
        if scale_factor:
            k = scale_factor
            init = torch.ones(k, k) if scaling_init == 'ones' else torch.eye(k)
            self.scale_down = nn.Parameter(init.clone())
            self.scale_up = nn.Parameter(init.clone())

    def generated(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This site's task adapters: down ``[T, C, b]``, down bias ``[T, b]``, up ``[T, b, C]``,
        up bias ``[T, C]`` (after the scaling kernels, when the method has them)."""
        down, down_bias, up, up_bias = self.hypernet(self.layer, self.position, self.out_features)
        if self.scale_factor:
            k = self.scale_factor
            down, up = kron_expand(self.scale_down, down), kron_expand(self.scale_up, up)
            down_bias, up_bias = down_bias.repeat(1, k), up_bias.repeat(1, k)
        return down, down_bias, up, up_bias

    def generated_layer_norm(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """This site's task LayerNorms: gamma ``[T, C]``, beta ``[T, C]`` (repeated ``k`` times
        from the template width when the method has scaling kernels, like the biases)."""
        gamma, beta = self.hypernet.layer_norm_params(self.layer, self.position, self.out_features)
        if self.scale_factor:
            gamma, beta = gamma.repeat(1, self.scale_factor), beta.repeat(1, self.scale_factor)
        return gamma, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        T = self.num_tasks
        tasks = task_streams(h, T, type(self).__name__)
        down, down_bias, up, up_bias = self.generated()
        C = h.shape[-1]
        flat = tasks.reshape(T, -1, C)
        z = F.gelu(torch.baddbmm(down_bias.unsqueeze(1).to(flat.dtype), flat, down.to(flat.dtype)))
        delta = torch.baddbmm(up_bias.unsqueeze(1).to(z.dtype), z, up.to(z.dtype))
        if self.layer_norm:
            gamma, beta = self.generated_layer_norm()
            delta = torch.addcmul(beta.unsqueeze(1).to(delta.dtype), F.layer_norm(delta, (C,)).to(delta.dtype),
                                  gamma.unsqueeze(1).to(delta.dtype))
        return torch.cat([h[:1], tasks + delta.view(tasks.shape)], dim=0)

    def extra_repr(self) -> str:
        return (f'layer={self.layer}, position={self.position}, tasks={self.num_tasks}, '
                f'scale_factor={self.scale_factor}, layer_norm={self.layer_norm}')
