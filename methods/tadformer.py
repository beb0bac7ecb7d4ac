"""TADFormer: task prompts, a task-prompt conditional operator and a dynamic task filter.

Baek, Lee, Jo, Choi, Min. "TADFormer: Task-Adaptive Dynamic TransFormer for Efficient Multi-Task
Learning", CVPR 2025, arXiv 2501.04293. Facts from the official code punpunzaz10/TADFormer, read
only as source text of its clean history (up to 1f53b9f; the only stored versions of
``models/swin_transformer_tadformer.py``, ``models/lora.py``, ``models/swin_mtl.py`` and
``configs/TADFormer/TADFormer_r*_Swin-T.yaml`` are those of commit 9ce9721). This is an
independent implementation on mtlbench's stream-major Swin; nothing is copied.

What it computes (names: *shared* = the paper's task-shared TS-module, *task* = its task-adaptive
TA-module):

* **Task prompts** (:class:`TaskPrompts`): ``prompt_len`` tokens per task (``P = prompt_len * T``),
  width 96, truncated normal mean 1 std 1 cut at the absolute bounds ±2 (timm's ``trunc_normal_``,
  as the reference), given once at the stage-1 input and carried through all stages. In every
  block the LN1-normed prompts are prepended to each 7x7 window; relative-position bias and the
  shift mask act among patch tokens only and the prompts' outputs are averaged over windows (the
  backbone's prefix-token support). Update (:class:`PromptUpdate`):
  ``p <- p + DropPath(MLP(LN2(AttnOut(LN1(p)))))`` with the block's own LN2/MLP (shared path of
  the adapted fc1/fc2), the attention output itself not added back; the last block of the last
  stage skips it. At each PatchMerging the prompts pass through ``Linear(C, 2C, bias=False)``
  (:class:`PromptMerge`, trunc-normal std 0.02 like every reference Linear).
* **Shared module**: LoRA of rank ``r`` (scale 4.0 as a plain multiplier, dropout 0.05, A
  Kaiming-uniform, B zero) on qkv/proj/fc1/fc2 of every block but the last of each stage, and on
  qkv of the last blocks (:class:`~mtlbench.layers.lowrank.LoRALinear`). PatchMerging reductions
  are frozen (the release's ``FREEZE_DOWNSAMPLE_REDUCTION: True``).
* **Task-prompt conditional operator** (:class:`TaskPromptConditioning`, proj of each stage's last
  block): per head ``h`` and task ``t``, ``a_t = GELU(q_{p_t} . k_n)`` -- the unscaled prompt-to-patch
  logits before scale, bias and softmax -- multiplies head ``h``'s channel group of the attention
  output ``f``: ``u_t = a_t * f``; the task input is ``x_t = LN(f + u_t)`` with one LN per proj,
  shared by tasks.
* **Task module** (:class:`TaskAdaptiveLinear`, proj/fc1/fc2 of the last blocks): one A and one B,
  used by the shared stream (``W x + b + 4 B A x``) and by every task stream with a task filter in
  rank space: ``out_t = W x_shared + b + 4 B F(A x_t)``. The frozen weight sees the shared input.
  ``F`` is the paper's Dynamic Task Filter (:class:`DynamicTaskFilter`, default): global average
  pool -> Conv1x1 ``r -> 9r`` (bias) -> FilterNorm (standardise each channel's 9 taps, then learnable
  per-tap std and mean) -> per-sample depthwise 3x3 conv; one DTF per layer, shared by tasks. For
  proj the rank-space map is each 7x7 window, for fc1/fc2 the stage's whole map.
* **Stage gate** (:class:`StageGate`): after the last block of each stage, task stream ``t``
  becomes ``F_t = sigmoid(g) u_t + (1 - sigmoid(g)) X_t``, ``g`` initialised 0. As in the reference,
  ``u_t`` is the TPC modulation of the stage's last proj, mapped back from windows to the grid
  (``task_skip_feature``), and ``X_t`` the task stream leaving the block (after both residuals).
  PatchMerging and the decoder see ``F_t``.

Counts on PASCAL's 4 tasks at 448 (``param_breakdown``, decoder included):
r=16 3,551,550; r=32 4,770,174; r=64 7,373,310 (adapter 5,375,428 = shared LoRA 4,521,984 +
DTF 463,104 + prompts 384 + prompt merges 387,072 + TPC LNs 2,880 + gates 4; decoder 1,946,624;
patch embedding, LayerNorms and relative-position tables 51,258). The paper prints 3.56 / 4.78 /
7.38M: the reference builds a ``prompt_layernorm`` in the proj of *every* block, and the eight in
blocks that are not the last of their stage are never used yet count as trainable (5,952
parameters); adding them gives 3,557,502 / 4,776,126 / 7,379,262, the paper's numbers. They are
not built here (they would never receive a gradient).

Reference and paper disagree on the filter: the release replaced the DTF by a static per-task
depthwise 3x3 conv with bias (``NaiveConvFilter``; the DTF class is left in ``models/lora.py``),
while the paper's counts need the DTF. Default here: the paper's DTF; ``task_filter='static'``
gives the release (:class:`StaticTaskFilter`; r=64: 6,940,926).

Not in paper: the DTF's FilterNorm details; chosen: the reference's DTF class (unbiased std over
the taps, eps 1e-10 added to it, per-tap std init N(0,1)*sqrt(2)/3, per-tap mean init N(0,1)); the
statistic is computed in fp32 even under AMP (1e-10 is 0 in fp16).
Not in paper: what the TPC multiplies; chosen: as the reference, the LoRA-dropped-out attention
output (the shared input after ``dropout``), so ``u_t`` and ``x_t`` see the same dropout mask.
Not in paper: ``prompt_len > 1`` in the TPC (the reference only runs with 1); chosen: the GELU'd
logits are averaged over the task's prompt tokens (option ``prompt_len``).
Not in paper: what "no gate" means; chosen: option ``gate`` = ``'learned'`` (default),
``'average'`` (fixed 0.5, the reference's ``STAGEWISEGATING: False``) or ``'none'`` (no ``u_t``
skip at all, the reference's ``SKIPCONNECTION: False``); the no-gate configs use ``'none'``.
Not in paper: the static filter's init; chosen: PyTorch's Conv2d default (taps and bias
U(-1/sqrt(k^2), 1/sqrt(k^2))), as the reference's ``nn.Conv2d``.
Not in paper: the prompt tokens of task streams at proj (only the shared stream's prompt output
is used); chosen: task streams carry the shared stream's prompt outputs (never read).
Not in paper: the prompt update's DropPath; chosen: the block's ``drop_path2`` (the reference uses
the block's one DropPath, same rate), drawn per sample.
The last block of the last stage returns its prompts unchanged (the reference overwrites them
with the attention output); nothing reads them afterwards, so the two agree.

Core extension points this file works around by subclassing: the stage gate needs the task
streams leaving a stage's last block together with the TPC modulation after window reversal, so
the last blocks become :class:`TADFormerBlock` (a :class:`SwinBlock` subclass, adopted in place,
whose forward splits off the extra ``u`` streams the conditioned proj emits), and the TPC reads
``WindowAttention.last_prefix_logits`` through a context the block opens around its attention.
A generic core seam would make both unnecessary: ``WindowAttention`` passing the prefix logits
to a proj that declares it wants them, and a per-stage ``stage_output(stage, x, extras)`` hook
applied to a stage's streams before PatchMerging / the decoder.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from mtlbench.backbones.swin import SwinBlock, WindowAttention
from mtlbench.layers.dropout import adapter_dropout
from mtlbench.layers.lowrank import LoRALinear, lora_init_
from mtlbench.method import AdapterLayer, Method, MethodConfig, MethodModule
from mtlbench.registry import METHODS

__all__ = ['TADFormerConfig', 'TADFormer', 'TaskPrompts', 'PromptMerge', 'PromptUpdate', 'TaskPromptConditioning',
           'DynamicTaskFilter', 'StaticTaskFilter', 'build_task_filter', 'TaskAdaptiveLinear', 'StageGate',
           'TADFormerBlock', 'depthwise_conv']

TASK_FILTERS = ('dynamic', 'static', 'none')
GATES = ('learned', 'average', 'none')


@dataclass
class TADFormerConfig(MethodConfig):
    """TADFormer options (defaults: the paper / ``TADFormer_r64_Swin-T.yaml``).

    Example:
        >>> model = dict(method=dict(type='tadformer', r=64, task_filter='dynamic', gate='learned'))
    """
    train_reductions: bool = field(default=False, metadata={
        'help': 'PatchMerging reductions trainable (frozen in the release: FREEZE_DOWNSAMPLE_REDUCTION)'})
    r: int = field(default=64, metadata={'help': 'LoRA rank of the shared and task modules'})
    scale: float = field(default=4.0, metadata={'help': 'LoRA multiplier (plain, not alpha / r)'})
    dropout: float = field(default=0.05, metadata={'help': 'dropout on the LoRA input'})
    prompt_len: int = field(default=1, metadata={'help': 'prompt tokens per task'})
    task_filter: str = field(default='dynamic', metadata={
        'help': "rank-space task filter: 'dynamic' (paper DTF), 'static' (release: per-task depthwise conv), 'none'"})
    filter_size: int = field(default=3, metadata={'help': 'side of the depthwise task filter (odd)'})
    tpc: bool = field(default=True, metadata={
        'help': 'task-prompt conditional operator in the last proj of each stage'})
    gate: str = field(default='learned', metadata={
        'help': "stage gate: 'learned' (sigmoid(g), g=0), 'average' (fixed 0.5), 'none' (no u_t skip)"})

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f'tadformer needs a positive rank, got r={self.r}')
        if self.prompt_len <= 0:
            raise ValueError(f'prompt_len must be positive, got {self.prompt_len}')
        if self.task_filter not in TASK_FILTERS:
            raise ValueError(f'task_filter must be one of {TASK_FILTERS}, got {self.task_filter!r}')
        if self.filter_size <= 0 or self.filter_size % 2 == 0:
            raise ValueError(f'filter_size must be odd and positive, got {self.filter_size}')
        if self.gate not in GATES:
            raise ValueError(f'gate must be one of {GATES}, got {self.gate!r}')
        if self.gate != 'none' and not self.tpc:
            raise ValueError(f"gate={self.gate!r} mixes in the TPC modulation u_t, which needs tpc=True "
                             f"(use gate='none' without TPC)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'dropout must be in [0, 1), got {self.dropout}')


# ---------------------------------------------------------------------------------------- helpers
def depthwise_conv(z: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise ``k x k`` cross-correlation with zero padding ``k // 2`` on channel-last maps.

    Each leading index may have its own kernel (the DTF's per-sample conv) or share one along a
    leading dim of size 1 in ``kernel`` (the static filter, one kernel per task). Runs as one
    grouped ``F.conv2d``: leading dims with their own kernel become channel groups, shared ones
    the conv batch.

    Args:
        z: maps ``[*lead, h, w, r]``.
        kernel: ``[*klead, r, k, k]``; ``klead`` has ``lead``'s length, each entry equal to
            ``lead``'s or 1.
        bias: ``[*klead, r]`` or ``None``.

    Returns:
        ``[*lead, h, w, r]``.
    """
    lead, (h, w, r) = tuple(z.shape[:-3]), tuple(z.shape[-3:])
    klead, k = tuple(kernel.shape[:-3]), kernel.shape[-1]
    if len(klead) != len(lead) or any(kd not in (1, zd) for kd, zd in zip(klead, lead)) or \
            tuple(kernel.shape[-3:]) != (r, k, k):
        raise ValueError(f'kernel {tuple(kernel.shape)} does not fit maps {tuple(z.shape)}')
    n = len(lead)
    shared = [i for i in range(n) if klead[i] == 1]
    own = [i for i in range(n) if klead[i] != 1]
    perm = shared + own + [n + 2, n, n + 1]                       # batch dims, group dims, r, h, w
    batch = math.prod([lead[i] for i in shared])   # lists, not generators: torch.compile traces them
    groups = math.prod([lead[i] for i in own]) * r
    x = z.permute(*perm).reshape(batch, groups, h, w)
    out = F.conv2d(x, kernel.reshape(groups, 1, k, k), padding=k // 2, groups=groups)
    out = out.reshape([lead[i] for i in perm[:n]] + [r, h, w]).permute(*sorted(range(n + 3), key=perm.__getitem__))
    if bias is not None:
        out = out + bias.unsqueeze(-2).unsqueeze(-2)
    return out


def _shared_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block MLP on ``x`` with only the shared path of task-adapted layers (for prompts)."""
    def layer(m: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return m.shared_forward(h) if isinstance(m, TaskAdaptiveLinear) else m(h)
    h = mlp.drop1(mlp.act(layer(mlp.fc1, x)))
    return mlp.drop2(layer(mlp.fc2, mlp.norm(h)))


# ---------------------------------------------------------------------------------------- prompts
class TaskPrompts(MethodModule):
    """Task prompt tokens, the backbone's ``prompt_embed``.

    Args:
        num_tokens: ``P = prompt_len * T`` (task ``t`` owns tokens ``t * prompt_len ...``).
        dim: token width (the stage-1 width, 96 for Swin-T).
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.tad_prompts = nn.Parameter(torch.empty(num_tokens, dim))
        trunc_normal_(self.tad_prompts, mean=1.0, std=1.0, a=-2.0, b=2.0)

    def forward(self, batch_size: int) -> torch.Tensor:
        """Returns the prompts ``[B, P, C]`` (a broadcast view)."""
        return self.tad_prompts.unsqueeze(0).expand(batch_size, -1, -1)


class PromptMerge(MethodModule):
    """Prompts across PatchMerging: ``Linear(C, 2C, bias=False)``, a stage's ``prompt_merge``.

    Args:
        dim: prompt width before merging.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 2 * dim, bias=False)
        trunc_normal_(self.up.weight, std=0.02)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        """``[S, B, P, C] -> [S, B, P, 2C]``."""
        return self.up(prompts)


class PromptUpdate(nn.Module):
    """A block's ``prompt_update`` rule: ``p + DropPath(MLP(LN2(attended)))`` (no parameters).

    Args:
        use_mlp: ``False`` for the last block of the last stage (prompts returned unchanged).
    """

    def __init__(self, use_mlp: bool = True) -> None:
        super().__init__()
        self.use_mlp = use_mlp

    def forward(self, block: SwinBlock, prompts: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Args: prompts ``[1, B, P, C]`` (block input), attended ``[S', B, P, C]`` (attention
        outputs averaged over windows; the shared stream's are used). Returns ``[1, B, P, C]``."""
        if not self.use_mlp:
            return prompts
        return prompts + block.drop_path2(_shared_mlp(block.mlp, block.norm2(attended[:1])))

    def extra_repr(self) -> str:
        return f'use_mlp={self.use_mlp}'


# -------------------------------------------------------------------------------- TPC and filters
class TaskPromptConditioning(MethodModule):
    """Task-prompt conditional operator: ``u_t = GELU(q_{p_t} k^T) * f`` per head, ``x_t = LN(f + u_t)``.

    Args:
        dim: channels of the attention output ``f``.
        num_heads: attention heads (channel group ``h`` of ``f`` belongs to head ``h``).
        num_tasks: ``T``.
        prompt_len: prompt tokens per task (their GELU'd logits are averaged).
    """

    def __init__(self, dim: int, num_heads: int, num_tasks: int, prompt_len: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.dim, self.num_heads, self.num_tasks, self.prompt_len = dim, num_heads, num_tasks, prompt_len
        self.norm = nn.LayerNorm(dim)

    def modulation(self, f: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``u_t``.

        Args:
            f: attention output of the patch tokens ``[BW, N, C]``.
            logits: unscaled prompt-to-patch logits ``[BW, heads, P, N]`` (``P = T * prompt_len``).

        Returns:
            ``[T, BW, N, C]``.
        """
        BW, N, C = f.shape
        H, T, L = self.num_heads, self.num_tasks, self.prompt_len
        if logits.shape != (BW, H, T * L, N):
            raise ValueError(f'prefix logits {tuple(logits.shape)} do not match {(BW, H, T * L, N)} '
                             f'(windows, heads, tasks * prompt_len, patch tokens)')
        a = F.gelu(logits).view(BW, H, T, L, N).mean(3)             # [BW, H, T, N]
        a = a.permute(2, 0, 3, 1).unsqueeze(-1)                      # [T, BW, N, H, 1]
        return (a * f.view(1, BW, N, H, C // H)).reshape(T, BW, N, C)

    def forward(self, f: torch.Tensor, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(u, x)``, both ``[T, BW, N, C]``: the modulation and the task inputs ``LN(f + u)``."""
        u = self.modulation(f, logits)
        return u, self.norm(f.unsqueeze(0) + u)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, heads={self.num_heads}, tasks={self.num_tasks}, prompt_len={self.prompt_len}'


class DynamicTaskFilter(MethodModule):
    """Dynamic Task Filter: a depthwise ``k x k`` kernel per sample, generated from its own map.

    GAP -> Conv1x1 ``r -> k^2 r`` with bias (a Linear on the pooled vector, same parameters) ->
    FilterNorm -> per-sample depthwise conv (no bias). Shared by all tasks: the kernels differ because each
    task's rank-space map differs.

    Args:
        r: rank (channels of the map).
        kernel_size: filter side ``k``.
        eps: added to the taps' standard deviation.
    """

    no_weight_decay = ('tad_tap_std', 'tad_tap_mean')  # 1-D in the reference: undecayed there

    def __init__(self, r: int, kernel_size: int = 3, eps: float = 1e-10) -> None:
        super().__init__()
        self.r, self.kernel_size, self.eps = r, kernel_size, eps
        taps = kernel_size * kernel_size
        self.kernel_gen = nn.Linear(r, r * taps)
        gain = nn.init.calculate_gain('relu') / kernel_size
        self.tad_tap_std = nn.Parameter(torch.randn(r, taps) * gain)
        self.tad_tap_mean = nn.Parameter(torch.randn(r, taps))

    def filter_norm(self, raw: torch.Tensor) -> torch.Tensor:
        """Standardise each channel's taps, then apply the learnable per-tap std and mean.

        Args:
            raw: ``[..., r, k*k]``.

        Returns:
            ``[..., r, k*k]``.
        """
        # In fp32 with autocast off: in fp16 the reference's eps 1e-10 rounds to 0, so taps with
        # a tiny spread divide by (near) zero; fp32 runs compute exactly the reference's numbers.
        # (float64 stays float64: a float64 model is the exact reference for compiled runs.)
        with torch.autocast(raw.device.type, enabled=False):
            dtype = torch.promote_types(raw.dtype, torch.float32)
            raw = raw.to(dtype)
            centred = raw - raw.mean(-1, keepdim=True)
            normed = centred / (raw.std(-1, keepdim=True) + self.eps)
            return normed * self.tad_tap_std.to(dtype) + self.tad_tap_mean.to(dtype)

    def kernels(self, z: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels ``[..., r, k, k]`` of maps ``z`` ``[..., h, w, r]``."""
        k = self.kernel_size
        raw = self.kernel_gen(z.mean((-3, -2))).unflatten(-1, (self.r, k * k))
        return self.filter_norm(raw).unflatten(-1, (k, k))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[T, n, h, w, r] -> [T, n, h, w, r]``."""
        return depthwise_conv(z, self.kernels(z))

    def extra_repr(self) -> str:
        return f'r={self.r}, kernel_size={self.kernel_size}'


class StaticTaskFilter(MethodModule):
    """The release's filter: one learned depthwise ``k x k`` conv (with bias) per task.

    Args:
        r: rank (channels).
        num_tasks: ``T``.
        kernel_size: filter side ``k``.
    """

    no_weight_decay = ('tad_bias',)  # one 1-D conv bias per task in the reference: undecayed there

    def __init__(self, r: int, num_tasks: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.r, self.num_tasks, self.kernel_size = r, num_tasks, kernel_size
        bound = 1.0 / math.sqrt(kernel_size * kernel_size)  # nn.Conv2d's default for a depthwise conv
        self.tad_weight = nn.Parameter(torch.empty(num_tasks, r, kernel_size, kernel_size).uniform_(-bound, bound))
        self.tad_bias = nn.Parameter(torch.empty(num_tasks, r).uniform_(-bound, bound))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[T, n, h, w, r] -> [T, n, h, w, r]``."""
        return depthwise_conv(z, self.tad_weight.unsqueeze(1), self.tad_bias.unsqueeze(1))  # shared over n

    def extra_repr(self) -> str:
        return f'r={self.r}, tasks={self.num_tasks}, kernel_size={self.kernel_size}'


def build_task_filter(kind: str, r: int, num_tasks: int, kernel_size: int) -> nn.Module:
    """The rank-space filter strategy: ``'dynamic'``, ``'static'`` or ``'none'`` (identity)."""
    if kind == 'dynamic':
        return DynamicTaskFilter(r, kernel_size)
    if kind == 'static':
        return StaticTaskFilter(r, num_tasks, kernel_size)
    if kind == 'none':
        return nn.Identity()
    raise ValueError(f'unknown task filter {kind!r}; valid: {TASK_FILTERS}')


# ---------------------------------------------------------------------------------- task module
class TaskAdaptiveLinear(AdapterLayer):
    """Task module: shared A/B for the shared stream and, through a rank-space filter, every task.

    Shared stream: ``W x + b + s B A drop(x)``; task ``t``: ``W x_shared + b + s B F(A x_t)``. Task
    inputs are the dropped-out shared input when only the shared stream arrives (proj), the task
    streams otherwise (fc1, fc2), or the TPC's ``LN(f + u_t)`` when conditioned.

    Args:
        base_layer: frozen linear.
        num_tasks: ``T``.
        r: rank.
        scale: multiplier of the update.
        dropout: dropout on the shared input.
        task_filter: rank-space filter on ``[T, n, h, w, r]`` (identity for plain LoRA).
        window: ``(wh, ww)`` for proj (input ``[S, B*nW, P + wh*ww, C]``: each window is a map);
            ``None`` for fc1/fc2 (input ``[S, B, H, W, C]``: the stage's map).
        conditioning: the TPC operator (proj only); needs the attention's prefix logits, read
            inside :meth:`reading_prefix_logits`.
        emit_modulation: also return the TPC modulations ``u_t`` as ``T`` extra streams (prefix
            positions zero), for the stage gate.

    Shapes: input ``[S, ..., in]`` with ``S`` in ``{1, 1 + T}``; output ``[1 + T (+ T), ..., out]``.
    """

    def __init__(self, base_layer: nn.Linear, num_tasks: int, r: int, scale: float = 4.0, dropout: float = 0.0,
                 task_filter: Optional[nn.Module] = None, window: Optional[Tuple[int, int]] = None,
                 conditioning: Optional[TaskPromptConditioning] = None, emit_modulation: bool = False) -> None:
        super().__init__(base_layer)
        if r <= 0:
            raise ValueError(f'rank must be positive, got {r}')
        if conditioning is not None and window is None:
            raise ValueError('task-prompt conditioning needs window tokens (the proj site)')
        if emit_modulation and (conditioning is None or self.in_features != self.out_features):
            raise ValueError('emit_modulation needs conditioning on a square (proj) layer')
        self.num_tasks, self.r, self.scale = num_tasks, r, scale
        self.window = tuple(window) if window is not None else None
        self.emit_modulation = emit_modulation
        self.dropout = adapter_dropout(dropout)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r))
        lora_init_(self.lora_A, self.lora_B)
        self.task_filter = task_filter if task_filter is not None else nn.Identity()
        self.conditioning = conditioning
        self._prefix_source: Optional[Tuple[WindowAttention]] = None  # set only inside reading_prefix_logits

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * ((x @ self.lora_A.t()) @ self.lora_B.t())

    def shared_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shared path on every stream of ``x``: ``W x + b + s B A drop(x)`` (prompts use it)."""
        return self.base_layer(x) + self._update(self.dropout(x))

    @contextlib.contextmanager
    def reading_prefix_logits(self, attn: WindowAttention) -> Iterator[None]:
        """Within this context the TPC reads ``attn.last_prefix_logits``; cleared on exit so the
        module holds no graph tensors between calls (deepcopy, checkpoints)."""
        attn.keep_prefix_logits = True
        self._prefix_source = (attn,)  # a tuple: not registered as a submodule
        try:
            yield
        finally:
            self._prefix_source = None
            attn.last_prefix_logits = None

    def _prefix_logits(self) -> torch.Tensor:
        logits = self._prefix_source[0].last_prefix_logits if self._prefix_source is not None else None
        if logits is None:
            raise RuntimeError('TaskAdaptiveLinear with task-prompt conditioning needs the attention prefix logits: '
                               'run it inside TADFormerBlock (reading_prefix_logits) with prompt tokens')
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.num_tasks
        S = x.shape[0]
        if S not in (1, 1 + T):
            raise ValueError(f'expected 1 or {1 + T} streams, got {S}')
        shared_in = x[:1]
        base = self.base_layer(shared_in)
        dropped = self.dropout(shared_in)
        shared_out = base + self._update(dropped)
        P = 0
        if self.window is not None:
            P = x.shape[2] - self.window[0] * self.window[1]
            if P < 0:
                raise ValueError(f'{x.shape[2]} tokens per window is fewer than the window {self.window}')
        u = None
        if self.conditioning is not None:
            if S != 1:
                raise ValueError('the conditioned proj expects the shared stream only')
            u, task_in = self.conditioning(dropped[0, :, P:], self._prefix_logits())
        else:
            task_in = dropped.expand(T, *dropped.shape[1:]) if S == 1 else x[1:]
            task_in = task_in[:, :, P:] if P else task_in
        z = task_in @ self.lora_A.t()                               # [T, ..., r]
        if self.window is not None:
            z = self.task_filter(z.unflatten(2, self.window)).flatten(2, 3)
        else:
            z = self.task_filter(z)
        task_base = base[:, :, P:] if P else base
        task_out = task_base + self.scale * (z @ self.lora_B.t())
        if P:
            task_out = torch.cat([shared_out[:, :, :P].expand(T, -1, -1, -1), task_out], dim=2)
        outs = [shared_out, task_out]
        if self.emit_modulation:
            outs.append(F.pad(u, (0, 0, P, 0)) if P else u)
        return torch.cat(outs, dim=0)

    def extra_repr(self) -> str:
        return (f'tasks={self.num_tasks}, r={self.r}, scale={self.scale}, window={self.window}, '
                f'emit_modulation={self.emit_modulation}')


# ------------------------------------------------------------------------------- gate and blocks
class StageGate(MethodModule):
    """``F_t = w u_t + (1 - w) X_t`` with ``w = sigmoid(g)`` (``g`` init 0) or a fixed 0.5.

    Args:
        learnable: learn ``g`` (``False``: ``w = 0.5``, no parameter).
    """

    def __init__(self, learnable: bool = True) -> None:
        super().__init__()
        self.learnable = learnable
        if learnable:
            self.tad_gate = nn.Parameter(torch.zeros(1))

    def weight(self) -> torch.Tensor:
        """The weight ``w`` of the modulation (0-dim tensor, detached: for records)."""
        return torch.sigmoid(self.tad_gate.detach()[0]) if self.learnable else torch.tensor(0.5)

    def forward(self, task_x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Args: task_x ``[T, B, H, W, C]`` (task streams leaving the block), u same shape.
        Returns the gated task streams."""
        w = torch.sigmoid(self.tad_gate).to(task_x.dtype) if self.learnable else 0.5
        return w * u + (1 - w) * task_x

    def extra_repr(self) -> str:
        return f'learnable={self.learnable}'


class TADFormerBlock(SwinBlock):
    """The last block of a stage under TADFormer: splits the TPC modulation streams, gates.

    Created from an existing block by :meth:`adopt` (same parameters, same sites); its forward is
    :meth:`SwinBlock.forward` plus: the conditioned proj emits ``1 + 2T`` streams (shared, tasks,
    ``u_t``); residuals and the MLP run on the first ``1 + T``; the stage gate mixes ``u_t`` into
    the task streams at the end.
    """
    num_tasks: int
    stage_gate: Optional[StageGate]

    @classmethod
    def adopt(cls, block: SwinBlock, num_tasks: int, gate: Optional[StageGate]) -> 'TADFormerBlock':
        """Turn ``block`` (a plain :class:`SwinBlock`) into a TADFormer block in place."""
        if type(block) is not SwinBlock:
            raise TypeError(f'expected a plain SwinBlock, got {type(block).__name__}')
        block.__class__ = cls
        block.num_tasks = num_tasks
        block.stage_gate = gate
        return block

    def forward(self, x: torch.Tensor, prompts: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Args: x ``[1, B, H, W, C]``, prompts ``[1, B, P, C]``.
        Returns ``([1 + T, B, H, W, C], [1, B, P, C])``."""
        if prompts is None:
            raise RuntimeError('TADFormer blocks need the task prompts (backbone.prompt_embed)')
        proj = self.attn.proj
        conditioned = isinstance(proj, TaskAdaptiveLinear) and proj.conditioning is not None
        ctx = proj.reading_prefix_logits(self.attn) if conditioned else contextlib.nullcontext()
        with ctx:
            attended, prompt_out = self.attention(self.norm1(x), self.norm1(prompts))
        T = self.num_tasks
        streams = 1 + T + (T if self.stage_gate is not None else 0)
        if attended.shape[0] != streams:
            raise RuntimeError(f'attention returned {attended.shape[0]} streams, expected {streams}')
        x = x + self.drop_path1(attended[:1 + T])
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        if self.stage_gate is not None:
            x = torch.cat([x[:1], self.stage_gate(x[1:], attended[1 + T:])], dim=0)
        if self.prompt_update is None:
            raise RuntimeError('no prompt_update rule is set on the block')
        return x, self.prompt_update(self, prompts, prompt_out)


# ---------------------------------------------------------------------------------------- method
@METHODS.register_module('tadformer')
class TADFormer(Method):
    """Task prompts + shared LoRA + TPC + task module with a dynamic task filter + stage gates."""
    config_cls = TADFormerConfig

    def variant(self) -> str:
        c = self.config
        parts = [f'r={c.r}']
        if c.task_filter != 'dynamic':
            parts.append(f'{c.task_filter} filter')
        if not c.tpc:
            parts.append('no TPC')
        if c.gate != 'learned':
            parts.append(f'gate={c.gate}')
        if c.prompt_len != 1:
            parts.append(f'prompt_len={c.prompt_len}')
        return ' '.join(parts)

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        T = len(self.tasks)
        if T == 0:
            raise ValueError('tadformer needs at least one task')
        if getattr(backbone, 'prompt_embed', None) is not None:
            raise ValueError('the backbone already has prompt tokens (adapted twice?)')
        backbone.prompt_embed = TaskPrompts(c.prompt_len * T, backbone.embed_dim)
        last_stage = len(backbone.layers) - 1
        for i, stage in enumerate(backbone.layers):
            if i > 0:
                stage.prompt_merge = PromptMerge(backbone.layers[i - 1].dim)
            for j, blk in enumerate(stage.blocks):
                blk.prompt_update = PromptUpdate(use_mlp=not (i == last_stage and j == len(stage.blocks) - 1))
        done = []
        for site in backbone.sites():
            if site.kind == 'reduction':
                continue                                    # frozen (train_reductions=False), not adapted
            base = backbone.get_submodule(site.name)
            if site.task_block and site.kind != 'qkv':
                is_proj = site.kind == 'proj'
                block = backbone.layers[site.stage].blocks[site.block]
                module: nn.Module = TaskAdaptiveLinear(
                    base, T, c.r, c.scale, c.dropout,
                    task_filter=build_task_filter(c.task_filter, c.r, T, c.filter_size),
                    window=block.window_size if is_proj else None,
                    conditioning=TaskPromptConditioning(site.in_features, site.num_heads, T, c.prompt_len)
                    if is_proj and c.tpc else None,
                    emit_modulation=is_proj and c.tpc and c.gate != 'none')
            else:
                module = LoRALinear(base, c.r, c.scale, c.dropout)
            backbone.replace_site(site.name, module)
            done.append(site.name)
        for stage in backbone.layers:
            for blk in stage.blocks:
                if blk.task_block:
                    TADFormerBlock.adopt(blk, T, None if c.gate == 'none' else StageGate(c.gate == 'learned'))
        if not done:
            raise ValueError('tadformer matched no backbone site')
        return done

    def record_extras(self, model: nn.Module) -> Dict[str, Any]:
        """The stage gates' weights ``sigmoid(g)`` (one per stage), when learned."""
        backbone = getattr(model, 'backbone', model)
        gates = [m.stage_gate.weight().item() for m in backbone.modules()
                 if isinstance(m, TADFormerBlock) and m.stage_gate is not None and m.stage_gate.learnable]
        return {'stage_gates': gates} if gates else {}
