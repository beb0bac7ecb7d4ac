"""MTLoRA: low-rank adaptation for multi-task dense prediction.

Agiza, Neseem, Reda. "MTLoRA: Low-Rank Adaptation Approach for Efficient Multi-Task Learning",
CVPR 2024, arXiv 2403.20320. Facts from the reference code scale-lab/MTLoRA @ 333a375
(``models/lora.py``, ``models/swin_transformer_mtlora.py``, ``configs/mtlora/tiny_448``);
this is an independent implementation on mtlbench's stream-major Swin.

* Task-agnostic (shared) LoRA of rank ``r`` on qkv, proj, fc1, fc2 of all blocks; qkv is one
  linear with A ``[r, C]`` and B ``[3C, r]`` (the reference's ``SPLIT_QKV: False``).
* Task-specific LoRA of rank ``task_r`` on proj, fc1, fc2 of the last block of each stage,
  where the streams fork (:class:`~mtlbench.layers.lowrank.TaskLoRALinear`).
* Scale 4.0 (plain multiplier), dropout 0.05 on the shared input.
* The shared LoRA of fc2 in the network's last block feeds only the shared stream, which no
  output reads: the reference never updates it (grad None); here it is declared
  ``unused_parameters`` (zero gradient, no weight decay), so it stays at its initial value too.
* Trainable besides LoRA: patch embedding, LayerNorms, relative-position tables and the
  PatchMerging reductions in full. The ``plus`` variant (MTLoRA+) freezes the reductions and
  puts a shared LoRA of rank ``r`` on them instead.

Counts on PASCAL's four tasks (``mtlbench params --method mtlora``): r=64 gives 8,344,634
trainable parameters, as the reference builds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from torch import nn

from mtlbench.layers.lowrank import LoRALinear, TaskLoRALinear
from mtlbench.method import Method, MethodConfig
from mtlbench.registry import METHODS

__all__ = ['MTLoRAConfig', 'MTLoRA']


@dataclass
class MTLoRAConfig(MethodConfig):
    """MTLoRA options (defaults: the reference's ``mtlora_tiny_448_r64_scale4_pertask``)."""
    r: int = field(default=64, metadata={'help': 'shared (task-agnostic) LoRA rank'})
    task_r: int = field(default=4, metadata={'help': 'task-specific LoRA rank'})
    scale: float = field(default=4.0, metadata={'help': 'shared LoRA multiplier'})
    task_scale: float = field(default=4.0, metadata={'help': 'task LoRA multiplier'})
    dropout: float = field(default=0.05, metadata={'help': 'dropout on the shared LoRA input'})
    kinds: tuple = field(default=('qkv', 'proj', 'fc1', 'fc2'), metadata={'help': 'linears with shared LoRA'})
    task_kinds: tuple = field(default=('proj', 'fc1', 'fc2'), metadata={'help': 'linears with task LoRA (last blocks)'})
    plus: bool = field(default=False, metadata={'help': 'MTLoRA+: LoRA on PatchMerging, reductions frozen'})
    task_includes_shared: bool = field(default=False, metadata={'help': "task outputs add the shared update ('matrixv2')"})

    def __post_init__(self) -> None:
        if self.r < 0 or self.task_r <= 0:
            raise ValueError(f'ranks must be r >= 0 and task_r > 0, got r={self.r}, task_r={self.task_r}')
        bad = set(self.kinds) - {'qkv', 'proj', 'fc1', 'fc2'}
        if bad or 'qkv' in self.task_kinds:
            raise ValueError(f'invalid kinds {sorted(bad)} / task_kinds {self.task_kinds} (qkv is never task-specific)')
        self.kinds, self.task_kinds = tuple(self.kinds), tuple(self.task_kinds)
        if self.plus:
            self.train_reductions = False


@METHODS.register_module('mtlora')
class MTLoRA(Method):
    """Shared + task-specific LoRA on the Swin backbone."""
    config_cls = MTLoRAConfig

    def variant(self) -> str:
        c = self.config
        return f"{'plus ' if c.plus else ''}r={c.r}"

    def adapter_breakdown(self, backbone: nn.Module) -> Dict[str, int]:
        shared = task = 0
        for m in backbone.modules():
            if isinstance(m, (LoRALinear, TaskLoRALinear)):
                for name, p in m.method_parameters():
                    if p.requires_grad:
                        if name.startswith('lora_task_'):
                            task += p.numel()
                        else:
                            shared += p.numel()
        return {'shared LoRA': shared, 'task LoRA': task}

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        done = []
        sites = backbone.sites()
        # The shared stream leaving the network's last block reaches no output (the decoder reads
        # the task streams of a forked stage), so the shared update of its fc2 is dead weight.
        last_fc2 = max((s for s in sites if s.kind == 'fc2'), key=lambda s: (s.stage, s.block)).name
        for site in sites:
            base = backbone.get_submodule(site.name)
            if site.kind == 'reduction':
                if c.plus:
                    backbone.replace_site(site.name, LoRALinear(base, c.r, c.scale, c.dropout))
                    done.append(site.name)
                continue
            if site.task_block and site.kind in c.task_kinds:
                backbone.replace_site(site.name, TaskLoRALinear(
                    base, len(self.tasks), r=c.r if site.kind in c.kinds else 0, task_r=c.task_r, scale=c.scale,
                    task_scale=c.task_scale, dropout=c.dropout, task_includes_shared=c.task_includes_shared,
                    shared_output_used=site.name != last_fc2))
                done.append(site.name)
            elif site.kind in c.kinds and c.r > 0:
                backbone.replace_site(site.name, LoRALinear(base, c.r, c.scale, c.dropout))
                done.append(site.name)
        if not done:
            raise ValueError('mtlora matched no backbone site')
        return done
