"""Low-rank adapters on stream-major tensors: shared LoRA and shared + per-task LoRA.

``LoRALinear`` is plain LoRA (Hu et al. 2021, arXiv 2106.09685) applied identically to every
stream. ``TaskLoRALinear`` is the MTLoRA layer (Agiza et al., CVPR 2024, arXiv 2403.20320;
``models/lora.py`` ``MTLoRALinear`` with ``shared_mode='matrix'`` at scale-lab/MTLoRA @ 333a375):
the shared stream gets the shared update, and task ``t``'s stream gets
``W x_shared + b + s_t B_t A_t x_t`` -- the frozen weight sees the *shared* input and the task
output does not include the shared update. When the layer receives only the shared stream
(``proj`` of a task block) the task inputs are the (dropped-out) shared input, as in the
reference. The per-task updates run as one batched einsum over the task axis.

Scales are plain multipliers (4.0 in MTLoRA), not alpha / r. A is Kaiming-uniform (a=sqrt 5),
B zero, so a fresh adapter leaves the backbone's function unchanged.
"""
from __future__ import annotations

import math
import torch
from torch import nn

from mtlbench.method import AdapterLayer

__all__ = ['LoRALinear', 'TaskLoRALinear', 'lora_init_']


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
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
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
        return out + self.scale * ((self.dropout(x) @ self.lora_A.t()) @ self.lora_B.t())

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
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if r > 0:
            self.lora_A = nn.Parameter(torch.empty(r, self.in_features))
            self.lora_B = nn.Parameter(torch.empty(self.out_features, r))
            lora_init_(self.lora_A, self.lora_B)
        self.lora_task_A = nn.Parameter(torch.empty(num_tasks, task_r, self.in_features))
        self.lora_task_B = nn.Parameter(torch.empty(num_tasks, self.out_features, task_r))
        lora_init_(self.lora_task_A, self.lora_task_B)

    def shared_update(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.num_tasks
        if x.shape[0] not in (1, 1 + T):
            raise ValueError(f'expected 1 or {1 + T} streams, got {x.shape[0]}')
        shared_in = x[:1]
        base = self.base_layer(shared_in)                       # frozen weight on the shared input
        dropped = self.dropout(shared_in)
        lead = shared_in.shape[1:-1]
        if x.shape[0] == 1:   # task inputs = the shared input: one [M, in] @ [in, T * r] product
            down = dropped.reshape(-1, self.in_features) @ self.lora_task_A.reshape(-1, self.in_features).t()
            down = down.view(-1, T, self.task_r).transpose(0, 1)
        else:
            down = torch.bmm(x[1:].reshape(T, -1, self.in_features), self.lora_task_A.transpose(1, 2))
        base_flat = base.reshape(1, -1, self.out_features)
        shared_upd = self.shared_update(dropped) if self.r > 0 else None
        if shared_upd is not None and self.task_includes_shared:
            base_flat = base_flat + shared_upd.reshape(1, -1, self.out_features)
        Bt = self.lora_task_B.transpose(1, 2)
        if torch.is_grad_enabled():
            # out[1 + t] = base + task_scale * (x_t A_t^T) B_t^T, one fused batched GEMM for all tasks
            shared = base if shared_upd is None else base + shared_upd
            task = torch.baddbmm(base_flat.expand(T, -1, -1), down, Bt, alpha=self.task_scale)
            return torch.cat([shared, task.view(T, *lead, self.out_features)], dim=0)
        # inference: every stream is written straight into one buffer (no concatenation copy)
        out = base.new_empty((1 + T, base_flat.shape[1], self.out_features))
        torch.baddbmm(base_flat.expand(T, -1, -1), down, Bt, alpha=self.task_scale, out=out[1:])
        if shared_upd is None:
            out[0].copy_(base_flat[0])
        else:
            torch.add(base_flat[0], shared_upd.reshape(-1, self.out_features), out=out[0])
        return out.view(1 + T, *lead, self.out_features)

    def extra_repr(self) -> str:
        return f'tasks={self.num_tasks}, r={self.r}, task_r={self.task_r}, scale={self.scale}'
