"""Low-rank adapters on stream-major tensors: shared LoRA and shared + per-task LoRA.

``LoRALinear`` is plain LoRA (Hu et al. 2021, arXiv 2106.09685) applied identically to every
stream. ``TaskLoRALinear`` is the MTLoRA layer (Agiza et al., CVPR 2024, arXiv 2403.20320;
``models/lora.py`` ``MTLoRALinear`` with ``shared_mode='matrix'`` at scale-lab/MTLoRA @ 333a375):
the shared stream gets the shared update, and task ``t``'s stream gets
``W x_shared + b + s_t B_t A_t x_t`` -- the frozen weight sees the *shared* input and the task
output does not include the shared update. When the layer receives only the shared stream
(``proj`` of a task block) the task inputs are the (dropped-out) shared input, as in the
reference.

Both layers run as one autograd Function each (:func:`lora_linear`, :func:`task_lora_linear`):
frozen product, adapter-input dropout mask, low-rank products and all ``1 + T`` output streams
in the forward, and a backward that writes the input gradient once (frozen and low-rank parts
in one buffer, the dropout mask applied in place) instead of the separate where / add / cat /
copy passes that autograd strings together for the same formula. The per-task products are
batched over the task axis. Under autocast the layer computes in the autocast dtype, as
``nn.Linear`` would.

Scales are plain multipliers (4.0 in MTLoRA), not alpha / r. A is Kaiming-uniform (a=sqrt 5),
B zero, so a fresh adapter leaves the backbone's function unchanged.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from mtlbench.layers.dropout import adapter_dropout
from mtlbench.method import AdapterLayer

__all__ = ['LoRALinear', 'TaskLoRALinear', 'lora_init_', 'lora_linear', 'task_lora_linear']


def lora_init_(A: torch.Tensor, B: torch.Tensor) -> None:
    """Reference LoRA init: A like ``nn.Linear`` (Kaiming-uniform, a=sqrt(5)), B zero.

    Works on stacked ``[T, r, in]`` tensors too (each task's slice initialised separately).
    """
    with torch.no_grad():
        if A.ndim == 3:
            for a in A:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        else:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        B.zero_()


def _autocast_inputs(device_type: str, *tensors: Optional[torch.Tensor]) -> Tuple:
    """What autocast does to ``nn.Linear``'s inputs, done before entering a Function (whose
    in-place and ``out=`` products autocast does not reach)."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


class LoRALinear(AdapterLayer):
    """Shared LoRA: every stream ``s`` gets ``W x_s + b + scale * B A dropout(x_s)``.

    Args:
        base_layer: frozen linear.
        r: rank.
        scale: multiplier of the update.
        dropout: dropout on the adapter input.
    """

    def __init__(self, base_layer: nn.Linear, r: int, scale: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__(base_layer)
        if r <= 0:
            raise ValueError(f'LoRA rank must be positive, got {r}')
        self.r = r
        self.scale = scale
        self.dropout = adapter_dropout(dropout)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r))
        lora_init_(self.lora_A, self.lora_B)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """``scale * B A``, shape ``[out, in]``."""
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        mask, lora_in, gain = self.dropout.parts(flat)
        out = lora_linear(flat, self.base_layer.weight, self.base_layer.bias, self.lora_A, self.lora_B,
                          self.scale * gain, mask=mask, lora_in=lora_in)
        return out.view(*lead, self.out_features)

    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight.data += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.data -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f'r={self.r}, scale={self.scale}'


class TaskLoRALinear(AdapterLayer):
    """Shared LoRA on the shared stream plus one LoRA per task on the task streams.

    Args:
        base_layer: frozen linear.
        num_tasks: number of task streams ``T``.
        r: shared rank (0 disables the shared update).
        task_r: per-task rank.
        scale: shared multiplier.
        task_scale: per-task multiplier.
        dropout: dropout on the shared input.
        task_includes_shared: add the shared update to task outputs too (MTLoRA's
            ``matrixv2`` mode; off in the reference configs).
        shared_output_used: False where the shared output stream feeds no model output (fc2 of
            the network's last block): the shared factors are then declared
            :attr:`~mtlbench.method.MethodModule.unused_parameters` (still computed and trainable,
            as in the reference, which counts them but never updates them).

    Shapes: input ``[S, ..., in]`` with ``S`` in ``{1, 1 + T}``, output ``[1 + T, ..., out]``.
    """

    def __init__(self, base_layer: nn.Linear, num_tasks: int, r: int, task_r: int, scale: float = 4.0,
                 task_scale: float = 4.0, dropout: float = 0.0, task_includes_shared: bool = False,
                 shared_output_used: bool = True) -> None:
        super().__init__(base_layer)
        if task_r <= 0:
            raise ValueError(f'task rank must be positive, got {task_r}')
        self.num_tasks = num_tasks
        self.r, self.task_r = r, task_r
        self.scale, self.task_scale = scale, task_scale
        self.task_includes_shared = task_includes_shared
        self.dropout = adapter_dropout(dropout)
        if r > 0:
            self.lora_A = nn.Parameter(torch.empty(r, self.in_features))
            self.lora_B = nn.Parameter(torch.empty(self.out_features, r))
            lora_init_(self.lora_A, self.lora_B)
            if not shared_output_used and not task_includes_shared:
                self.unused_parameters = ('lora_A', 'lora_B')
        self.lora_task_A = nn.Parameter(torch.empty(num_tasks, task_r, self.in_features))
        self.lora_task_B = nn.Parameter(torch.empty(num_tasks, self.out_features, task_r))
        lora_init_(self.lora_task_A, self.lora_task_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, S = self.num_tasks, x.shape[0]
        if S not in (1, 1 + T):
            raise ValueError(f'expected 1 or {1 + T} streams, got {S}')
        lead = x.shape[1:-1]
        streams = x.reshape(S, -1, self.in_features)
        # the dropout only feeds the shared update (and, with one stream in, the task updates)
        mask, lora_in, gain = self.dropout.parts(streams[0]) if self.r > 0 or S == 1 else (None, None, 1.0)
        shared_A, shared_B = (self.lora_A, self.lora_B) if self.r > 0 else (None, None)
        # task inputs are the dropped shared input when only the shared stream came in
        task_scale = self.task_scale * gain if S == 1 else self.task_scale
        out = task_lora_linear(streams, self.base_layer.weight, self.base_layer.bias, shared_A, shared_B,
                               self.scale * gain, self.lora_task_A, self.lora_task_B, task_scale,
                               mask=mask, lora_in=lora_in, task_includes_shared=self.task_includes_shared)
        return out.view(1 + T, *lead, self.out_features)

    def extra_repr(self) -> str:
        return f'tasks={self.num_tasks}, r={self.r}, task_r={self.task_r}, scale={self.scale}'


def _frozen_and_lora_input(x, weight, bias, mask, lora_in, out=None):
    """Forward pieces shared by both Functions: ``x W^T + b`` (into ``out`` if given) and the
    low-rank branch's input."""
    base = torch.addmm(bias, x, weight.t(), out=out) if bias is not None else torch.mm(x, weight.t(), out=out)
    if lora_in is None:
        lora_in = torch.where(mask, 0.0, x) if mask is not None else x
    return base, lora_in


def _weight_grad(g_down: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``g_down^T x`` (``[M, r]``, ``[M, in]`` -> ``[r, in]``) in the faster GEMM layout for ``r``:
    with a narrow ``r`` the long inner dimension must sit on the contiguous side (4x faster at
    r=4); from r ~ 32 on the transposed product is faster (about 1.4x at r=64). Measured on this
    project's 2-core AMD EPYC; either layout gives the same values."""
    return (x.t() @ g_down).t() if g_down.shape[1] >= 32 else g_down.t() @ x


def _input_grad(lora_grad, mask, grad_base, weight, separate_lora_in: bool):
    """``grad_base W + mask(lora_grad)`` in one buffer (the lora part returned apart when the
    branch had its own input)."""
    if separate_lora_in:
        return grad_base @ weight, lora_grad
    if mask is not None:
        lora_grad.masked_fill_(mask, 0.0)
    return lora_grad.addmm_(grad_base, weight), None


class _LoRALinearFn(torch.autograd.Function):
    """``x W^T + b + alpha * (m(x) A^T) B^T``; ``m`` zeroes the masked elements (or is
    replaced by a separately dropped ``lora_in``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, alpha, mask, lora_in):
        out, dropped = _frozen_and_lora_input(x, weight, bias, mask, lora_in)
        down = dropped @ A.t()
        out.addmm_(down, B.t(), alpha=alpha)
        need = ctx.needs_input_grad
        ctx.save_for_backward(x if need[1] else None, weight, A, B, dropped if need[3] else None, down, mask)
        ctx.alpha, ctx.separate = alpha, lora_in is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, A, B, dropped, down, mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.contiguous()
            g_down = (grad @ B).mul_(ctx.alpha)
            g_A = _weight_grad(g_down, dropped) if need[3] else None
            g_B = (down.t() @ grad).mul_(ctx.alpha).t() if need[4] else None
            g_W = grad.t() @ x if need[1] else None
            g_b = grad.sum(0) if need[2] else None
            g_x = g_in = None
            if need[0] or need[7]:
                g_x, g_in = _input_grad(g_down @ A, mask, grad, weight, ctx.separate)
        return g_x, g_W, g_b, g_A, g_B, None, None, g_in


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], A: torch.Tensor,
                B: torch.Tensor, alpha: float, mask: Optional[torch.Tensor] = None,
                lora_in: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x W^T + b + alpha * (x' A^T) B^T`` on ``[M, in]`` rows, ``x'`` the branch input.

    Args:
        x: ``[M, in]``.
        weight, bias: the frozen linear (their gradients are computed if they require them).
        A, B: ``[r, in]``, ``[out, r]``.
        alpha: multiplier of the update (scale times the dropout gain).
        mask: boolean ``[M, in]``; ``x'`` is ``x`` with the True elements zeroed.
        lora_in: ``x'`` given outright (a dropout applied outside); overrides ``mask``.
    """
    x, weight, bias, A, B, lora_in = _autocast_inputs(x.device.type, x, weight, bias, A, B, lora_in)
    with torch.autocast(x.device.type, enabled=False):
        return _LoRALinearFn.apply(x, weight, bias, A, B, alpha, mask, lora_in)


class _TaskLoRALinearFn(torch.autograd.Function):
    """The MTLoRA layer on ``[S, M, in]`` streams (see :func:`task_lora_linear`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, alpha, task_A, task_B, task_alpha, mask, lora_in, task_includes_shared):
        T, r, in_features = task_A.shape
        (S, M), out_features = x.shape[:2], weight.shape[0]
        out = x.new_empty((1 + T, M, out_features))
        _, dropped = _frozen_and_lora_input(x[0], weight, bias, mask, lora_in, out=out[0])  # frozen output in out[0]
        shared = A is not None
        if S == 1:   # every task's input is the dropped shared input: one product for all A's
            all_A = torch.cat([A, task_A.reshape(-1, in_features)]) if shared else task_A.reshape(-1, in_features)
            down_all = dropped @ all_A.t()
            down = down_all[:, A.shape[0]:] if shared else down_all
            shared_down = down_all[:, :A.shape[0]] if shared else None
            task_down = down.view(M, T, r).transpose(0, 1)
        else:
            task_down = torch.bmm(x[1:], task_A.transpose(1, 2))
            shared_down = dropped @ A.t() if shared else None
        # the shared update lands in out[0] before the task streams copy it, or after
        if shared and task_includes_shared:
            out[0].addmm_(shared_down, B.t(), alpha=alpha)
        torch.baddbmm(out[0].expand(T, M, out_features), task_down, task_B.transpose(1, 2),
                      alpha=task_alpha, out=out[1:])
        if shared and not task_includes_shared:
            out[0].addmm_(shared_down, B.t(), alpha=alpha)
        need = ctx.needs_input_grad
        ctx.save_for_backward(x if need[1] or need[6] else None, weight, A, B, task_A, task_B,
                              dropped if need[3] or (S == 1 and need[6]) else None,
                              shared_down, task_down, mask)
        ctx.alpha, ctx.task_alpha, ctx.task_includes_shared = alpha, task_alpha, task_includes_shared
        ctx.separate, ctx.single = lora_in is not None, S == 1
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, A, B, task_A, task_B, dropped, shared_down, task_down, mask = ctx.saved_tensors
        need = ctx.needs_input_grad
        T, r, in_features = task_A.shape
        with torch.autocast(grad.device.type, enabled=False):
            grad = grad.contiguous()
            grad_tasks = grad[1:]
            grad_base = grad.sum(0)   # the frozen output feeds every stream
            grad_shared = grad_base if ctx.task_includes_shared else grad[0]
            g_sd = g_A = g_B = None
            if A is not None:
                g_sd = (grad_shared @ B).mul_(ctx.alpha)
                if need[4]:
                    g_B = (shared_down.t() @ grad_shared).mul_(ctx.alpha).t()
            g_td = torch.bmm(grad_tasks, task_B).mul_(ctx.task_alpha)   # [T, M, r]
            g_tB = torch.bmm(task_down.transpose(1, 2), grad_tasks).mul_(ctx.task_alpha).transpose(1, 2) \
                if need[7] else None
            g_W = grad_base.t() @ x[0] if need[1] else None
            g_b = grad_base.sum(0) if need[2] else None
            g_x = g_in = g_tA = None
            M = grad_base.shape[0]
            if ctx.single:
                g_down = g_td.transpose(0, 1).reshape(M, T * r)
                all_A = task_A.reshape(-1, in_features)
                if A is not None:
                    g_down = torch.cat([g_sd, g_down], dim=1)
                    all_A = torch.cat([A, all_A])
                if need[3] or need[6]:
                    g_all_A = _weight_grad(g_down, dropped)
                    g_A = g_all_A[:A.shape[0]] if A is not None and need[3] else None
                    g_tA = g_all_A[-T * r:].view(T, r, in_features) if need[6] else None
                if need[0] or need[10]:
                    g0, g_in = _input_grad(g_down @ all_A, mask, grad_base, weight, ctx.separate)
                    g_x = g0.unsqueeze(0)
            else:
                if need[3] and A is not None:
                    g_A = _weight_grad(g_sd, dropped)
                if need[6]:
                    g_tA = torch.bmm(g_td.transpose(1, 2), x[1:])
                if need[0] or need[10]:
                    g_x = grad.new_empty((1 + T, M, in_features))
                    if ctx.separate or A is None:
                        torch.mm(grad_base, weight, out=g_x[0])
                        g_in = g_sd @ A if A is not None else None
                    else:   # mask(g_sd A) + grad_base W, built in place in g_x[0]
                        torch.mm(g_sd, A, out=g_x[0])
                        if mask is not None:
                            g_x[0].masked_fill_(mask, 0.0)
                        g_x[0].addmm_(grad_base, weight)
                    torch.bmm(g_td, task_A, out=g_x[1:])
        return g_x, g_W, g_b, g_A, g_B, None, g_tA, g_tB, None, None, g_in, None


def task_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     A: Optional[torch.Tensor], B: Optional[torch.Tensor], alpha: float,
                     task_A: torch.Tensor, task_B: torch.Tensor, task_alpha: float,
                     mask: Optional[torch.Tensor] = None, lora_in: Optional[torch.Tensor] = None,
                     task_includes_shared: bool = False) -> torch.Tensor:
    """The ``1 + T`` MTLoRA output streams, ``[1 + T, M, out]``, from ``[S, M, in]`` inputs.

    With ``x'`` the shared input after dropout (``x[0]`` with ``mask`` zeroed, or ``lora_in``):

    * ``out[0] = x[0] W^T + b + alpha * (x' A^T) B^T`` (no update when ``A`` is None);
    * ``out[1 + t] = x[0] W^T + b + task_alpha * (x_t A_t^T) B_t^T`` (plus the shared update
      when ``task_includes_shared``), with ``x_t = x[1 + t]`` when ``S = 1 + T`` and ``x'``
      when ``S = 1``.

    Args:
        x: ``[S, M, in]``, ``S`` in ``{1, 1 + T}``.
        weight, bias: the frozen linear (gradients computed if they require them).
        A, B: shared ``[r, in]``, ``[out, r]``, or None.
        alpha, task_alpha: multipliers (scales times the dropout gain where it applies).
        task_A, task_B: ``[T, r_t, in]``, ``[T, out, r_t]``.
        mask: boolean ``[M, in]`` dropout mask of the shared input.
        lora_in: the dropped shared input given outright; overrides ``mask``.
        task_includes_shared: add the shared update to the task streams too.
    """
    x, weight, bias, A, B, task_A, task_B, lora_in = _autocast_inputs(
        x.device.type, x, weight, bias, A, B, task_A, task_B, lora_in)
    with torch.autocast(x.device.type, enabled=False):
        return _TaskLoRALinearFn.apply(x, weight, bias, A, B, alpha, task_A, task_B, task_alpha, mask, lora_in,
                                       task_includes_shared)
