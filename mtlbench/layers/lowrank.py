"""Low-rank adapters on stream-major tensors: shared LoRA and shared + per-task LoRA.

``LoRALinear`` is plain LoRA (Hu et al. 2021, arXiv 2106.09685) applied identically to every
stream. ``TaskLoRALinear`` is the MTLoRA layer (Agiza et al., CVPR 2024, arXiv 2403.20320;
``models/lora.py`` ``MTLoRALinear`` with ``shared_mode='matrix'`` at scale-lab/MTLoRA @ 333a375):
the shared stream gets the shared update, and task ``t``'s stream gets
``W x_shared + b + s_t B_t A_t x_t`` -- the frozen weight sees the *shared* input and the task
output does not include the shared update. When the layer receives only the shared stream
(``proj`` of a task block) the task inputs are the (dropped-out) shared input, as in the
reference. The per-task updates run as batched products over the task axis, and all ``1 + T`` output
streams are written into one buffer (:func:`fork_task_streams`).

Scales are plain multipliers (4.0 in MTLoRA), not alpha / r. A is Kaiming-uniform (a=sqrt 5),
B zero, so a fresh adapter leaves the backbone's function unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from mtlbench.layers.dropout import adapter_dropout
from mtlbench.method import AdapterLayer

__all__ = ['LoRALinear', 'TaskLoRALinear', 'lora_init_', 'fork_task_streams', 'task_projection']


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
        out = self.base_layer(x)
        if self.merged:
            return out
        dropped, gain = self.dropout.drop(x)
        down = dropped.reshape(-1, self.in_features) @ self.lora_A.t()
        # scale * down B^T accumulated in place onto the frozen output (the linear's backward
        # does not need its output); the dropout's 1 / keep rides on alpha
        out.view(-1, self.out_features).addmm_(down, self.lora_B.t(), alpha=self.scale * gain)
        return out

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

    Shapes: input ``[S, ..., in]`` with ``S`` in ``{1, 1 + T}``, output ``[1 + T, ..., out]``.
    """

    def __init__(self, base_layer: nn.Linear, num_tasks: int, r: int, task_r: int, scale: float = 4.0,
                 task_scale: float = 4.0, dropout: float = 0.0, task_includes_shared: bool = False) -> None:
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
        self.lora_task_A = nn.Parameter(torch.empty(num_tasks, task_r, self.in_features))
        self.lora_task_B = nn.Parameter(torch.empty(num_tasks, self.out_features, task_r))
        lora_init_(self.lora_task_A, self.lora_task_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.num_tasks
        if x.shape[0] == 1:
            shared_in, task_in = x, None
        elif x.shape[0] == 1 + T:
            shared_in, task_in = x.split([1, T])   # split, not slicing: its backward is one cat
        else:
            raise ValueError(f'expected 1 or {1 + T} streams, got {x.shape[0]}')
        lead = shared_in.shape[1:-1]
        base = self.base_layer(shared_in).reshape(-1, self.out_features)  # frozen weight, shared input
        dropped, gain = self.dropout.drop(shared_in)   # gain (1 / keep) rides on the GEMM alphas
        dropped = dropped.reshape(-1, self.in_features)
        task_A = self.lora_task_A.reshape(-1, self.in_features)
        task_scale = self.task_scale
        if task_in is None:   # task inputs = the (dropped) shared input: one product for all A's
            A = torch.cat([self.lora_A, task_A]) if self.r > 0 else task_A
            down_all = dropped @ A.t()
            shared_down = down_all[:, :self.r] if self.r > 0 else None
            down = down_all[:, self.r:].view(-1, T, self.task_r).transpose(0, 1)
            task_scale = task_scale * gain
        else:
            down = task_projection(task_in.reshape(T, -1, self.in_features), self.lora_task_A)
            shared_down = dropped @ self.lora_A.t() if self.r > 0 else None
        out = fork_task_streams(base, shared_down, self.lora_B if self.r > 0 else None, self.scale * gain,
                                down, self.lora_task_B, task_scale, self.task_includes_shared)
        return out.view(1 + T, *lead, self.out_features)

    def extra_repr(self) -> str:
        return f'tasks={self.num_tasks}, r={self.r}, task_r={self.task_r}, scale={self.scale}'


class _ForkTaskStreams(torch.autograd.Function):
    """Writes the ``1 + T`` MTLoRA output streams into one buffer; hand-written backward.

    Autograd through ``torch.cat([shared, baddbmm(base.expand(T), ...)])`` costs two extra
    passes over a ``[1 + T, M, out]`` tensor in the forward (the expand copy and the cat) and
    the gradient of the broadcast base as a separate reduction; here every stream is written
    once and the base gradient is one sum over the stream axis.
    """

    @staticmethod
    def forward(ctx, base, shared_down, shared_B, scale, task_down, task_B, task_scale, task_includes_shared):
        T, M, out_features = task_down.shape[0], base.shape[0], base.shape[1]
        out = base.new_empty((1 + T, M, out_features))
        if shared_down is None:
            out[0].copy_(base)
        else:
            torch.addmm(base, shared_down, shared_B.t(), alpha=scale, out=out[0])
        task_base = out[0] if task_includes_shared else base
        torch.baddbmm(task_base.expand(T, M, out_features), task_down, task_B.transpose(1, 2),
                      alpha=task_scale, out=out[1:])
        ctx.save_for_backward(shared_down, shared_B, task_down, task_B)
        ctx.scale, ctx.task_scale, ctx.task_includes_shared = scale, task_scale, task_includes_shared
        return out

    @staticmethod
    def backward(ctx, grad):
        shared_down, shared_B, task_down, task_B = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        grad_tasks = grad[1:]
        grad_base = grad.sum(0) if need[0] or ctx.task_includes_shared else None
        grad_shared_out = grad_base if ctx.task_includes_shared else grad[0]
        g_sd = g_sB = g_td = g_tB = None
        if shared_down is not None:
            if need[1]:
                g_sd = (grad_shared_out @ shared_B).mul_(ctx.scale)
            if need[2]:
                g_sB = (grad_shared_out.t() @ shared_down).mul_(ctx.scale)
        if need[4]:
            g_td = torch.bmm(grad_tasks, task_B).mul_(ctx.task_scale)
        if need[5]:
            # (down^T grad)^T, not grad^T down: the long inner dimension on the contiguous side
            g_tB = torch.bmm(task_down.transpose(1, 2), grad_tasks).mul_(ctx.task_scale).transpose(1, 2)
        return grad_base if need[0] else None, g_sd, g_sB, None, g_td, g_tB, None, None


def fork_task_streams(base: torch.Tensor, shared_down: Optional[torch.Tensor], shared_B: Optional[torch.Tensor],
                      scale: float, task_down: torch.Tensor, task_B: torch.Tensor, task_scale: float,
                      task_includes_shared: bool = False) -> torch.Tensor:
    """The MTLoRA output streams, ``[1 + T, M, out]``.

    ``out[0] = base + scale * shared_down @ shared_B^T`` (just ``base`` without a shared LoRA);
    ``out[1 + t] = task_base + task_scale * task_down[t] @ task_B[t]^T`` with ``task_base`` =
    ``base`` (or ``out[0]`` when ``task_includes_shared``).

    Args:
        base: frozen output on the shared input, ``[M, out]``.
        shared_down: ``x A^T`` of the shared LoRA, ``[M, r]``, or ``None``.
        shared_B: shared ``B``, ``[out, r]``, or ``None``.
        scale: shared multiplier.
        task_down: ``x_t A_t^T`` per task, ``[T, M, task_r]``.
        task_B: per-task ``B``, ``[T, out, task_r]``.
        task_scale: task multiplier.
        task_includes_shared: add the shared update to the task streams too.
    """
    return _ForkTaskStreams.apply(base, shared_down, shared_B, scale, task_down, task_B, task_scale,
                                  task_includes_shared)


class _TaskProjection(torch.autograd.Function):
    """``x_t A_t^T`` per task with a backward in GEMM-friendly layouts.

    Autograd's ``bmm`` backward forms ``x^T @ grad`` (``[T, in, M] @ [T, M, r]``), whose long
    inner dimension sits on the strided side: 8x slower on CPU than the equivalent
    ``grad^T @ x`` used here, for the same result.
    """

    @staticmethod
    def forward(ctx, x, A):
        ctx.save_for_backward(x, A)
        return torch.bmm(x, A.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        x, A = ctx.saved_tensors
        grad_x = torch.bmm(grad, A) if ctx.needs_input_grad[0] else None
        grad_A = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_A


def task_projection(x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``[T, M, in] x [T, r, in] -> [T, M, r]``: each task's input times its own ``A_t^T``."""
    return _TaskProjection.apply(x, A)
