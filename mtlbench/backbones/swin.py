"""Swin Transformer backbone with task streams, named adaptation sites and prefix tokens.

The one Swin of mtlbench; methods never fork it. It follows the MTLoRA reference pipeline
(scale-lab/MTLoRA @ 333a375, ``models/swin_transformer_mtlora.py``; see
``shared/reference/mtlora.md``) and timm's module layout, so timm's checkpoint conversion
(``timm.models.swin_transformer.checkpoint_filter_fn``) loads the official Microsoft
``swin_tiny_patch4_window7_224.pth`` as well as timm checkpoints.

What differs from a plain Swin, and why:

* **Streams.** Tensors carry a leading stream axis ``[S, B, H, W, C]``
  (:mod:`mtlbench.backbones.streams`). A method's task adapters in the last block of each stage
  fork the shared stream into ``1 + T`` streams; everything after (norms, MLP, PatchMerging)
  runs on all streams at once. Only the shared stream continues into the next stage, unless a
  method sets :attr:`SwinBackbone.carry_task_streams` (task adapters in every block, e.g.
  HyperFormer / Polyhistor): then every stream continues, so each task has its own path through
  the whole backbone.
* **Features after PatchMerging.** As in the reference, the four maps sent to the decoder are
  taken after each stage's PatchMerging: 2C/4C/8C/8C channels (192/384/768/768 for Swin-T) at strides 8/16/32/32 (the
  last stage has no merging). In timm's layout PatchMerging sits at the *start* of stages 1-3,
  so stage ``i``'s feature is the output of ``layers[i + 1].downsample``.
* **Sites.** :meth:`SwinBackbone.sites` lists every adaptable linear with its metadata (stage,
  block, kind, whether it is in a task-specific block, shapes); methods choose sites by that
  metadata and swap them with :meth:`SwinBackbone.replace_site`.
* **Prefix tokens.** Optional prompt tokens ``[S, B, P, C]`` are prepended to every attention
  window (TADFormer, Free Sinewich). Relative-position bias and the shift mask apply among
  patch tokens only; the prompts' outputs are averaged over windows. How prompts are updated
  after attention, and how they cross PatchMerging, is the method's business
  (``SwinBlock.prompt_update``, ``SwinStage.prompt_merge``).
* No final LayerNorm and no classifier: the reference has neither.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from timm.layers import Mlp, PatchEmbed, to_2tuple, trunc_normal_
from torch import nn

from mtlbench.backbones.pretraining import resolve_pretrained_on
from mtlbench.errors import InputNotFoundError, OptionError, UserError
from mtlbench.backbones.streams import StreamDropPath
from mtlbench.registry import MODELS

__all__ = ['Site', 'WindowAttention', 'SwinBlock', 'PatchMerging', 'SwinStage', 'SwinBackbone',
           'SWIN_ARCHS', 'SWIN_ARCH_ALIASES', 'canonical_arch', 'backbone_label', 'load_pretrained',
           'PretrainedLoadError']

# Swin-T/S/B as in Liu et al. 2021, Table 1 (and the official configs/swin/*.yaml, timm's
# swin_{tiny,small,base}_patch4_window7_224): the decoder's input widths follow embed_dim.
SWIN_ARCHS: Dict[str, dict] = {
    'tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    # Not a real Swin: a 4-stage toy with the same topology for fast CPU tests.
    'toy': dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4)),
}
#: ``model.backbone.arch`` also takes the names run records and leaderboards print.
SWIN_ARCH_ALIASES: Dict[str, str] = {'swin-t': 'tiny', 'swin-s': 'small', 'swin-b': 'base'}


def canonical_arch(arch: str) -> str:
    """``'swin-b'`` or ``'base'`` -> ``'base'`` (the :data:`SWIN_ARCHS` key); one-line error otherwise."""
    name = SWIN_ARCH_ALIASES.get(arch, arch)
    if name not in SWIN_ARCHS:
        valid = sorted(SWIN_ARCH_ALIASES) + sorted(SWIN_ARCHS)
        raise OptionError(f'unknown Swin arch {arch!r}; valid: {valid}')
    return name


def backbone_label(arch: str) -> str:
    """The ``backbone`` of run records and leaderboard groups: ``'base'`` -> ``'swin-b'``,
    ``'toy'`` -> ``'swin-toy'``."""
    name = canonical_arch(arch)
    labels = {v: k for k, v in SWIN_ARCH_ALIASES.items()}
    return labels.get(name, f'swin-{name}')


@dataclass(frozen=True)
class Site:
    """One adaptable linear layer of the backbone.

    Attributes:
        name: module path, e.g. ``layers.3.blocks.1.attn.qkv`` or ``layers.1.downsample.reduction``.
        stage: index of the stage (``layers[stage]``) that holds the module.
        block: block index within the stage; ``None`` for PatchMerging reductions.
        kind: ``'qkv'``, ``'proj'``, ``'fc1'``, ``'fc2'`` or ``'reduction'``.
        task_block: True in the last block of each stage, where task streams fork.
        in_features: input width.
        out_features: output width.
        num_heads: attention heads of the block (``qkv`` / ``proj``), else ``None``.
    """
    name: str
    stage: int
    block: Optional[int]
    kind: str
    task_block: bool
    in_features: int
    out_features: int
    num_heads: Optional[int] = None


def window_partition(x: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """``[B, H, W, C] -> [B * nW, wh * ww, C]``."""
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_order(resolution: Tuple[int, int], window: Tuple[int, int], shift: Tuple[int, int]) -> torch.Tensor:
    """Token indices ``[H * W]`` in (cyclically shifted) window order.

    ``x.flatten(1, 2)[:, window_order(...)]`` equals
    ``window_partition(torch.roll(x, (-sh, -sw), (1, 2)), window)`` flattened over windows.
    """
    H, W = resolution
    grid = torch.arange(H * W).view(1, H, W, 1)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    return window_partition(grid, window).reshape(-1)


class _PermuteTokens(torch.autograd.Function):
    """``x[:, order]`` along the token axis; its backward is the inverse permutation, one gather
    (not autograd's zero-fill plus scatter-add)."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad):
        inverse, = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def permute_tokens(x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``[N, L, C]`` tokens reordered as ``x[:, order]`` (``inverse`` undoes ``order``).

    One copy where ``torch.roll`` + :func:`window_partition` (and the reverse partition +
    ``torch.roll`` on the way back) make three, in the forward and again in the backward.
    """
    return _PermuteTokens.apply(x, order, inverse)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias and optional prefix tokens.

    ``qkv`` and ``proj`` are adaptation sites: they receive and return stream-major tensors
    ``[S, B * nW, L, C]``, so an adapter may fork streams at either.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: window height and width.
        qkv_bias: bias on the qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, window_size: Tuple[int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = tuple(window_size)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        rel[:, :, 0] += wh - 1
        rel[:, :, 1] += ww - 1
        rel[:, :, 0] *= 2 * ww - 1
        self.register_buffer('relative_position_index', rel.sum(-1), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        # When True, the unscaled prefix-to-patch logits q_p . k_n of the last call are kept in
        # ``last_prefix_logits`` ([S * B * nW, heads, P, N]) for methods that condition on them.
        self.keep_prefix_logits = False
        self.use_sdpa: Optional[bool] = None   # None: SDPA on GPU, the plain product on CPU
        self.last_prefix_logits: Optional[torch.Tensor] = None
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """``[heads, N, N]`` bias among the window's patch tokens."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                num_prefix: int = 0) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: ``[S, B * nW, P + N, C]``; the first ``num_prefix`` tokens of every window are
                prefix tokens.
            mask: shift mask ``[nW, N, N]`` (0 / -100) or ``None``.
            num_prefix: number of prefix tokens ``P``.

        Returns:
            ``[S', B * nW, P + N, C]`` (``S'`` is what ``qkv``/``proj`` emit).
        """
        qkv = self.qkv(x)
        S, BW, L, _ = qkv.shape
        q, k, v = qkv.reshape(S * BW, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        P = num_prefix
        bias = self.relative_position_bias()
        if P:
            bias = F.pad(bias, (P, 0, P, 0))
        if mask is not None:   # [nW, heads, L, L]: relative position plus shift mask per window
            mask = F.pad(mask, (P, 0, P, 0)) if P else mask
            bias = bias.unsqueeze(0) + mask.unsqueeze(1)
        if P and self.keep_prefix_logits:
            self.last_prefix_logits = q[:, :, :P] @ k[:, :, P:].transpose(-2, -1)
        out = self._attend(q, k, v, bias)
        out = out.transpose(1, 2).reshape(S, BW, L, self.dim)
        return self.proj(out)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T * scale + bias) v`` with ``bias`` ``[heads, L, L]`` or ``[nW, heads, L, L]``.

        On GPU this is ``F.scaled_dot_product_attention`` (fused kernels). On CPU, where a
        trainable bias sends SDPA to its unfused math path, the plain product with a broadcast
        bias is about 20% faster, and is the reference's own formula. ``use_sdpa`` (None: by
        device) forces either path.

        The bias is never materialised per batch element (that was ``[S * B * nW, heads, L, L]``
        in fp32 in every shifted block, ~3 GiB transient for FAAR at batch 32): a per-window
        bias is applied by viewing the windows as extra heads, ``[S * B, nW * heads, L, hd]``,
        so the bias ``[1, nW * heads, L, L]`` (in ``q``'s dtype) broadcasts over the batch and
        the call stays 4-D, as the fused (memory-efficient) kernels require.
        """
        use_sdpa = q.device.type != 'cpu' if self.use_sdpa is None else self.use_sdpa
        if use_sdpa:
            if bias.ndim == 4:
                num_win, heads, L = bias.shape[0], bias.shape[1], bias.shape[-1]
                n = q.shape[0] // num_win
                q, k, v = (t.reshape(n, num_win * heads, L, t.shape[-1]) for t in (q, k, v))
                mask = bias.reshape(1, num_win * heads, L, L).to(q.dtype)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                return out.view(n * num_win, heads, L, out.shape[-1])
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype))
        attn = (q * self.scale) @ k.transpose(-2, -1)
        heads, L = attn.shape[1], attn.shape[-1]
        if bias.ndim == 4:
            attn = (attn.view(-1, bias.shape[0], heads, L, L) + bias.to(attn.dtype)).view(-1, heads, L, L)
        else:
            attn = attn + bias.to(attn.dtype)
        return attn.softmax(-1) @ v

    def extra_repr(self) -> str:
        return f'dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}'


class SwinBlock(nn.Module):
    """Swin block on stream-major tensors ``[S, B, H, W, C]``.

    Args:
        dim: channels.
        input_resolution: ``(H, W)`` of the stage's token grid.
        num_heads: attention heads.
        window_size: window side.
        shift: whether this is a shifted-window block.
        mlp_ratio: hidden width / dim.
        drop_path: stochastic depth rate.
        task_block: whether task streams fork here (last block of a stage).
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window_size: int = 7,
                 shift: bool = False, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 task_block: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        H, W = self.input_resolution
        ws = window_size
        # As in the reference: a grid no larger than the window means one unshifted window.
        if min(H, W) <= ws:
            ws, shift = min(H, W), False
        if H % ws or W % ws:
            raise OptionError(f'token grid {H}x{W} is not divisible by the window size {ws}; '
                             f'choose an image size whose stage grids are multiples of {ws}')
        self.window_size = (ws, ws)
        self.shift_size = (ws // 2, ws // 2) if shift else (0, 0)
        self.task_block = task_block
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size)
        self.drop_path1 = StreamDropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = StreamDropPath(drop_path)
        self.register_buffer('attn_mask', self._shift_mask(), persistent=False)
        order = window_order(self.input_resolution, self.window_size, self.shift_size)
        self.register_buffer('window_order', order, persistent=False)
        self.register_buffer('window_order_inverse', torch.argsort(order), persistent=False)
        # Set by methods with prefix tokens: (block, prompts [S,B,P,C], attended [S',B,P,C]) -> prompts.
        self.prompt_update: Optional[Callable[['SwinBlock', torch.Tensor, torch.Tensor], torch.Tensor]] = None

    def _shift_mask(self) -> Optional[torch.Tensor]:
        if not any(self.shift_size):
            return None
        H, W = self.input_resolution
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        img = torch.zeros(1, H, W, 1)
        cnt = 0
        for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
            for wsl in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
                img[:, hs, wsl, :] = cnt
                cnt += 1
        win = window_partition(img, self.window_size).squeeze(-1)
        mask = win.unsqueeze(1) - win.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def attention(self, x: torch.Tensor, prompts: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Shifted-window attention on (already normalised) streams.

        Args:
            x: ``[S, B, H, W, C]``.
            prompts: ``[S, B, P, C]`` or ``None``.

        Returns:
            ``([S', B, H, W, C], [S', B, P, C] or None)``; prompt outputs averaged over windows.
        """
        S, B, H, W, C = x.shape
        # cyclic shift and window partition as one token permutation: [S, B * nW, N, C]
        num_win = H * W // (self.window_size[0] * self.window_size[1])
        windows = permute_tokens(x.reshape(S * B, H * W, C), self.window_order, self.window_order_inverse)
        windows = windows.view(S, B * num_win, -1, C)
        P = 0
        if prompts is not None:
            P = prompts.shape[2]
            pw = prompts.unsqueeze(2).expand(S, B, num_win, P, C).reshape(S, B * num_win, P, C)
            windows = torch.cat([pw, windows], dim=2)
        out = self.attn(windows, mask=self.attn_mask, num_prefix=P)
        S2 = out.shape[0]
        prompt_out = None
        if P:
            prompt_out = out[:, :, :P].reshape(S2, B, num_win, P, C).mean(2)
            out = out[:, :, P:]
        y = permute_tokens(out.reshape(S2 * B, H * W, C), self.window_order_inverse, self.window_order)
        return y.view(S2, B, H, W, C), prompt_out

    def forward(self, x: torch.Tensor, prompts: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Args: x ``[S, B, H, W, C]``, prompts ``[S, B, P, C]`` or None. Returns both updated."""
        attended, prompt_out = self.attention(self.norm1(x), None if prompts is None else self.norm1(prompts))
        x = self.drop_path1.residual(x, attended)
        x = self.drop_path2.residual(x, self.mlp(self.norm2(x)))
        if prompts is not None:
            if self.prompt_update is None:
                raise RuntimeError('prompt tokens were given but no prompt_update rule is set on the block')
            prompts = self.prompt_update(self, prompts, prompt_out)
        return x, prompts


class PatchMerging(nn.Module):
    """2x2 patch merging (timm / reference channel order) on ``[S, B, H, W, C]``.

    ``reduction`` is an adaptation site; it sees all streams at once.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S, B, H, W, C = x.shape
        x = x.reshape(S, B, H // 2, 2, W // 2, 2, C).permute(0, 1, 2, 4, 5, 3, 6).flatten(4)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``downsample`` (PatchMerging, stages 1-3) then ``blocks``, as in timm."""

    def __init__(self, dim: int, out_dim: int, input_resolution: Tuple[int, int], depth: int, num_heads: int,
                 window_size: int, mlp_ratio: float, drop_path: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.dim = out_dim
        self.downsample = PatchMerging(dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList([
            SwinBlock(out_dim, input_resolution, num_heads, window_size, shift=(j % 2 == 1),
                      mlp_ratio=mlp_ratio, drop_path=drop_path[j], task_block=(j == depth - 1))
            for j in range(depth)])
        # Set by methods with prefix tokens: maps prompts [S, B, P, dim_in] -> [S, B, P, dim_out].
        self.prompt_merge: Optional[nn.Module] = None


@MODELS.register_module()
class SwinBackbone(nn.Module):
    """Swin backbone returning per-stream multi-scale features.

    Args:
        arch: one of :data:`SWIN_ARCHS` (``'tiny'`` is Swin-T) or its :data:`SWIN_ARCH_ALIASES` name
            (``'swin-t'``, ``'swin-s'``, ``'swin-b'``).
        img_size: input ``(H, W)``; 448x448 in the reference.
        patch_size: patch side.
        window_size: attention window side.
        mlp_ratio: MLP hidden width / dim.
        drop_path_rate: stochastic depth, linear over all blocks (0.2 in the reference).
        pretrained: local checkpoint path (official Swin ``.pth`` or timm format) or ``None``
            for random init (a warning is logged).
        pretrained_on: the checkpoint's pretraining data, ``'in1k'``, ``'in22k'``,
            ``'in22k-ft-in1k'`` or ``'unknown'``; inferred from the file when not given
            (:mod:`mtlbench.backbones.pretraining`), kept as :attr:`pretrained_on` for the run record.

    Example:
        >>> backbone = dict(type='SwinBackbone', arch='tiny', img_size=(448, 448),
        ...                 pretrained='checkpoints/swin_tiny_patch4_window7_224.pth')
    """

    def __init__(self, arch: str = 'tiny', img_size: Sequence[int] = (448, 448), patch_size: int = 4,
                 window_size: int = 7, mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 pretrained: Optional[str] = None, pretrained_on: Optional[str] = None) -> None:
        super().__init__()
        resolve_pretrained_on(pretrained, pretrained_on)   # a bad value fails before the build
        arch = canonical_arch(arch)
        spec = SWIN_ARCHS[arch]
        self.arch = arch
        self.img_size = to_2tuple(img_size)
        embed_dim, depths, num_heads = spec['embed_dim'], spec['depths'], spec['num_heads']
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_stages = len(depths)
        self.patch_embed = PatchEmbed(img_size=self.img_size, patch_size=patch_size, in_chans=3,
                                      embed_dim=embed_dim, norm_layer=nn.LayerNorm, output_fmt='NHWC')
        grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # cpu: builds on meta too
        self.layers = nn.ModuleList()
        dim = embed_dim
        for i, depth in enumerate(depths):
            out_dim = embed_dim * 2 ** i
            res = (grid[0] // 2 ** i, grid[1] // 2 ** i)
            self.layers.append(SwinStage(dim, out_dim, res, depth, num_heads[i], window_size, mlp_ratio,
                                         dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=i > 0))
            dim = out_dim
        # Decoder inputs: after each stage's merging (the last stage has none).
        dims = [embed_dim * 2 ** i for i in range(self.num_stages)]
        self.out_channels: List[int] = dims[1:] + dims[-1:]
        self.out_strides: List[int] = [patch_size * 2 ** (i + 1) for i in range(self.num_stages - 1)] + \
            [patch_size * 2 ** (self.num_stages - 1)]
        # Set by methods with prefix tokens: a module mapping batch size -> prompts [B, P, embed_dim].
        self.prompt_embed: Optional[nn.Module] = None
        # Set by methods whose task adapters sit in every block (not only each stage's last):
        # when True, all 1 + T streams continue from one stage into the next, not only the
        # shared one, so a stream forked in stage 0 stays a task's own path to the end.
        self.carry_task_streams: bool = False
        self.apply(self._init_weights)
        self.pretrained = pretrained
        self.pretrained_on = resolve_pretrained_on(pretrained, pretrained_on)
        if pretrained:
            loaded = load_pretrained(self, pretrained)
            self.pretrained_on = resolve_pretrained_on(pretrained, pretrained_on, loaded['head_classes'])
        else:
            print_log('SwinBackbone: no pretrained checkpoint given; the backbone is randomly initialised '
                      '(numbers will not be comparable to papers).', logger='current', level=logging.WARNING)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ sites
    def sites(self) -> List[Site]:
        """Every adaptable linear, in forward order (blocks' qkv/proj/fc1/fc2, then reductions)."""
        out: List[Site] = []
        for i, stage in enumerate(self.layers):
            if isinstance(stage.downsample, PatchMerging):
                red = stage.downsample.reduction
                out.append(Site(f'layers.{i}.downsample.reduction', i, None, 'reduction', False,
                                _features(red)[0], _features(red)[1]))
            for j, blk in enumerate(stage.blocks):
                for kind, mod in (('qkv', blk.attn.qkv), ('proj', blk.attn.proj),
                                  ('fc1', blk.mlp.fc1), ('fc2', blk.mlp.fc2)):
                    sub = 'attn' if kind in ('qkv', 'proj') else 'mlp'
                    fin, fout = _features(mod)
                    out.append(Site(f'layers.{i}.blocks.{j}.{sub}.{kind}', i, j, kind, blk.task_block, fin, fout,
                                    blk.attn.num_heads if sub == 'attn' else None))
        return out

    def select_sites(self, kinds: Optional[Sequence[str]] = None, task_block: Optional[bool] = None,
                     stages: Optional[Sequence[int]] = None) -> List[Site]:
        """Sites filtered by metadata (``None`` = any)."""
        return [s for s in self.sites()
                if (kinds is None or s.kind in kinds)
                and (task_block is None or s.task_block == task_block)
                and (stages is None or s.stage in stages)]

    def replace_site(self, name: str, module: nn.Module) -> nn.Module:
        """Swap the module at site ``name``; returns the module that was there."""
        parent_name, _, attr = name.rpartition('.')
        parent = self.get_submodule(parent_name)
        old = getattr(parent, attr)
        setattr(parent, attr, module)
        return old

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Run the backbone.

        Args:
            x: images ``[B, 3, H, W]``.

        Returns:
            Four maps ``[S, B, C_i, H_i, W_i]`` (``S == 1`` if no task stream forked in that
            stage, else ``1 + T``), channels :attr:`out_channels`, strides :attr:`out_strides`.
        """
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f'input size {tuple(x.shape[-2:])} differs from the backbone img_size {self.img_size}')
        x = self.patch_embed(x).unsqueeze(0)  # [1, B, H, W, C]
        prompts = None
        if self.prompt_embed is not None:
            prompts = self.prompt_embed(x.shape[1]).unsqueeze(0)
        feats: List[torch.Tensor] = []
        for i, stage in enumerate(self.layers):
            if i > 0:
                merged = stage.downsample(x)          # all streams of the previous stage at once
                feats.append(merged)
                # only the shared stream continues, unless the method carries task streams
                x = merged if self.carry_task_streams else merged[:1]
                if prompts is not None and stage.prompt_merge is not None:
                    prompts = stage.prompt_merge(prompts)
            for blk in stage.blocks:
                x, prompts = blk(x, prompts)
                if prompts is not None and prompts.shape[0] > 1:
                    prompts = prompts[:1]
        feats.append(x)
        return [f.permute(0, 1, 4, 2, 3) for f in feats]


def _features(module: nn.Module) -> Tuple[int, int]:
    base = getattr(module, 'base_layer', module)
    return base.in_features, base.out_features


class PretrainedLoadError(UserError, RuntimeError):
    """A pretrained checkpoint that cannot serve as this backbone's weights."""


def load_pretrained(backbone: SwinBackbone, path: str, max_missing_fraction: float = 0.05) -> Dict[str, list]:
    """Load a local Swin checkpoint into ``backbone`` (before any method wraps its layers).

    Accepts the official Microsoft checkpoints (``'model'`` key, PatchMerging at the end of
    stages) and timm's; conversion and relative-position table resizing are timm's
    ``checkpoint_filter_fn``. Loaded with ``torch.load(weights_only=True)``: a pickle that
    would run code is refused.

    Args:
        backbone: the (unadapted) backbone.
        path: checkpoint file.
        max_missing_fraction: refuse when more than this fraction of the backbone's parameters
            would stay random (wrong architecture).

    Returns:
        ``dict(missing=[...], unexpected=[...], mismatched=[...], head_classes=N or None)``
        (``head_classes``: rows of the checkpoint's classifier, which tell an ImageNet-22K model).
    """
    from timm.models.swin_transformer import checkpoint_filter_fn

    if not os.path.isfile(path):
        raise InputNotFoundError(f'pretrained checkpoint not found: {path}')
    try:
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - turned into a clear message
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if 'weights_only' in str(err) or 'Unsupported global' in str(err) or 'GLOBAL' in str(err):
            raise PretrainedLoadError(
                f'{path}: refused to unpickle: the file holds Python objects beyond tensors, which could run '
                f'code on load (torch.load(weights_only=True) failed: {msg}). Re-save it as a plain state dict '
                f'or safetensors.') from err
        raise PretrainedLoadError(f'{path}: not a readable checkpoint ({msg})') from err
    if not isinstance(state, dict):
        raise PretrainedLoadError(f'{path}: expected a state dict, found {type(state).__name__}')
    for wrapper in ('model', 'state_dict'):  # official / mmengine layouts, unwrapped as timm's filter does
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    not_tensors = [f'{k} ({type(v).__name__})' for k, v in state.items() if not torch.is_tensor(v)]
    if not_tensors:
        raise PretrainedLoadError(f'{path}: a state dict holds tensors only; {len(not_tensors)} value(s) are not, '
                                  f'first {not_tensors[:3]}')
    head = state.get('head.weight', state.get('head.fc.weight'))
    head_classes = int(head.shape[0]) if torch.is_tensor(head) and head.ndim == 2 else None
    state = checkpoint_filter_fn(state, backbone)
    own = backbone.state_dict()
    usable, mismatched = {}, []
    for k, v in state.items():
        if k in own:
            if not torch.is_tensor(v) or v.shape != own[k].shape:
                mismatched.append(f'{k}: checkpoint {tuple(getattr(v, "shape", ()))} vs model {tuple(own[k].shape)}')
            else:
                usable[k] = v
    missing = [k for k in own if k not in usable]
    unexpected = [k for k in state if k not in own and not k.startswith(('head.', 'norm.'))]
    n_missing = sum(own[k].numel() for k in missing)
    n_total = sum(v.numel() for v in own.values())
    if n_missing > max_missing_fraction * n_total:
        raise PretrainedLoadError(
            f'{path}: does not fit a Swin-{backbone.arch} backbone: {len(missing)} missing keys '
            f'({n_missing / n_total:.0%} of the parameters would stay random), {len(unexpected)} unexpected, '
            f'{len(mismatched)} mismatched. First missing: {missing[:5]}; first unexpected: {unexpected[:5]}; '
            f'first mismatched: {mismatched[:3]}')
    non_finite = [k for k, v in usable.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:
        raise PretrainedLoadError(f'{path}: {len(non_finite)} tensor(s) hold NaN or inf, first {non_finite[:3]}; '
                                  'the checkpoint is damaged')
    backbone.load_state_dict(usable, strict=False)
    if missing or unexpected or mismatched:
        print_log(f'load_pretrained({path}): missing {missing[:10]}, unexpected {unexpected[:10]}, '
                  f'mismatched {mismatched[:5]}', logger='current', level=logging.WARNING)
    print_log(f'SwinBackbone: loaded {len(usable)} tensors from {path}', logger='current')
    return dict(missing=missing, unexpected=unexpected, mismatched=mismatched, head_classes=head_classes)
