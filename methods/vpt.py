"""Visual prompt tuning (Jia et al., ECCV 2022), shallow and deep, on the windowed Swin.

The "VPT-shallow" / "VPT-deep" rows of the Polyhistor table (Liu et al., NeurIPS 2022) that
MTLoRA (CVPR 2024) and its successors reprint. Windowed attention makes "prepend prompt tokens"
ambiguous; no description of how Polyhistor placed them could be retrieved, so these are choices,
documented here and exposed as options:

* Prompts are prefix tokens of *every* attention window (the core's prefix-token support,
  ``SwinBlock.attention``): each window's patches attend to the same ``num_prompts`` prompts;
  relative-position bias and the shift mask apply among patch tokens only; a prompt's output is
  the mean of its outputs over the windows.
* ``vpt_shallow``: one set of prompts enters the first block (``embed_dim`` wide) and
  is carried through the backbone like a token (``p + attn``, then ``p + mlp(norm2(p))``). At each
  PatchMerging the prompt is tiled 2x2 and passed through the frozen merging (norm + reduction),
  i.e. merged as a 2x2 patch of identical tokens, so its width follows the stage.
* ``vpt_deep``: every block gets its own learned prompts at its stage's width; a
  block's prompt outputs are discarded, as in VPT-deep.
* Initialisation: uniform ``±sqrt(6 / (3 * 4 * 4 + C))`` (VPT's Xavier-uniform over the patch
  dimension, with Swin's 4x4 patches). Nothing else of the backbone trains; the decoder trains.

Counts on PASCAL (``mtlbench params --method vpt_shallow`` / ``vpt_deep``), 10 prompts: 960 and
44,160 prompt parameters over decoder_only's 1,946,624 (``tests/test_method_baselines.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from mtlbench.method import Method, MethodConfig, MethodModule
from mtlbench.registry import METHODS

__all__ = ['VPTConfig', 'PromptTokens', 'TokenPromptUpdate', 'DeepPromptUpdate', 'TiledPromptMerge',
           'VPTShallow', 'VPTDeep']


@dataclass
class VPTConfig(MethodConfig):
    """VPT options; only the prompts (and the decoder) train."""
    num_prompts: int = field(default=10, metadata={'help': 'prompt tokens per window (per block for deep)'})
    train_patch_embed: bool = False
    train_norms: bool = False
    train_rel_pos: bool = False
    train_reductions: bool = False

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f'num_prompts must be >= 1, got {self.num_prompts}')


def _vpt_init(p: torch.Tensor, dim: int, patch: int = 4) -> None:
    bound = math.sqrt(6.0 / float(3 * patch * patch + dim))
    nn.init.uniform_(p, -bound, bound)


class PromptTokens(MethodModule):
    """Learned prompts; ``forward(batch)`` returns them expanded to ``[batch, P, C]``."""

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        self.prompts = nn.Parameter(torch.empty(num, dim))
        _vpt_init(self.prompts, dim)

    def forward(self, batch: int) -> torch.Tensor:
        return self.prompts.unsqueeze(0).expand(batch, -1, -1)


class TokenPromptUpdate(MethodModule):
    """Shallow rule: the prompt continues like a token through the block's residual paths."""

    def forward(self, block: nn.Module, prompts: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        p = prompts + attended
        return p + block.mlp(block.norm2(p))


class DeepPromptUpdate(MethodModule):
    """Deep rule: discard the block's prompt outputs; return the next block's own prompts."""

    def __init__(self, next_prompts: PromptTokens = None) -> None:
        super().__init__()
        self.next_prompts = next_prompts

    def forward(self, block: nn.Module, prompts: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        if self.next_prompts is None:   # last block of a stage: the next stage's merge supplies them
            return attended
        return self.next_prompts(prompts.shape[1]).unsqueeze(0)


class TiledPromptMerge(MethodModule):
    """Shallow: a prompt crosses PatchMerging as a 2x2 patch of identical tokens (frozen merge)."""

    def __init__(self, merging: nn.Module) -> None:
        super().__init__()
        self._merging = [merging]   # a reference, not a submodule: its weights stay the backbone's

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        m = self._merging[0]
        return m.reduction(m.norm(prompts.repeat(*([1] * (prompts.dim() - 1)), 4)))


class DeepPromptMerge(MethodModule):
    """Deep: the next stage's first block gets its own prompts (the incoming ones are dropped)."""

    def __init__(self, first: PromptTokens) -> None:
        super().__init__()
        self.first = first

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.first(prompts.shape[1]).unsqueeze(0)


class _VPT(Method):
    config_cls = VPTConfig
    deep = False

    def variant(self) -> str:
        return f'p={self.config.num_prompts}'

    def adapt(self, backbone: nn.Module) -> List[str]:
        n = self.config.num_prompts
        done = []
        for i, stage in enumerate(backbone.layers):
            C = stage.dim
            if self.deep:
                firsts = [PromptTokens(n, C) for _ in stage.blocks]
                if i == 0:
                    backbone.prompt_embed = firsts[0]
                else:
                    stage.prompt_merge = DeepPromptMerge(firsts[0])
                for j, blk in enumerate(stage.blocks):
                    blk.prompt_update = DeepPromptUpdate(firsts[j + 1] if j + 1 < len(firsts) else None)
                    done.append(f'layers.{i}.blocks.{j}')
            else:
                if i == 0:
                    backbone.prompt_embed = PromptTokens(n, C)
                else:
                    stage.prompt_merge = TiledPromptMerge(stage.downsample)
                for j, blk in enumerate(stage.blocks):
                    blk.prompt_update = TokenPromptUpdate()
                    done.append(f'layers.{i}.blocks.{j}')
        return done


@METHODS.register_module('vpt_shallow')
class VPTShallow(_VPT):
    """Prompts enter the first block and travel through the backbone."""
    deep = False


@METHODS.register_module('vpt_deep')
class VPTDeep(_VPT):
    """Fresh prompts in every block."""
    deep = True
