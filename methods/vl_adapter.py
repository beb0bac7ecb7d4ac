"""VL-Adapter: bottleneck adapters shared by every task, by default one set (Sung, Cho, Bansal, CVPR 2022).

The "VL-Adapter" row of the Polyhistor table (Liu et al., NeurIPS 2022) that MTLoRA (CVPR 2024)
and its successors reprint: the multi-task baseline that trains a *single* adapter set for all
tasks, against the per-task adapters of the single-task rows (Polyhistor's introduction: those
"learn and store task-wise parameters", https://www.jiubeiyun.com.cn/doc/32630.html, a copy of
arXiv 2210.03265). VL-Adapter's own finding is that this single shared adapter matches
per-task ("multiple") and "half-shared" adapters at a fraction of their parameters.

It is :class:`~mtlbench.methods.adapter.Adapter` (Houlsby placement, after ``proj`` and
``fc2``; GELU; zero-initialised up-projection) with VL-Adapter's defaults, registered as that
configuration like ``shared_lora`` is of ``mtlora``. Choices (each an option), with the evidence:

* ``reduction_factor`` 8 and trainable LayerNorms: VL-Adapter's single-adapter script
  (github.com/ylsung/VL_adapter, ``VL-T5/scripts/image/single_adapter.sh``:
  ``--use_single_adapter --reduction_factor 8 --unfreeze_layer_norms``). Polyhistor's own
  setting for Swin-T could not be read (only its abstract and introduction were reachable).
* ``sharing`` (default ``'single'``): what the tasks share, VL-Adapter's four settings (its
  ``VL-T5/src/adapters/adapter_controller.py``, flags in ``VL-T5/src/param.py``, all
  ``store_true``):

  - ``'single'`` (``--use_single_adapter``): one adapter set for every task; the streams do not
    fork and every task decoder reads the same features (``methods/adapter.py``'s layer).
  - ``'multiple'`` (``--use_adapter`` alone, ``VL-T5/scripts/image/multiple_adapters.sh``,
    also reduction 8 and ``--unfreeze_layer_norms``): an independent adapter per task in every
    adapted block.
  - ``'half_shared_down'`` (``--share_down_sampler``) / ``'half_shared_up'``
    (``--share_up_sampler``): per-task adapters whose down (resp. up) projection is the first
    task's ``nn.Linear`` shared by all tasks, weight *and* bias; the other projection stays per
    task. No script of the repository sets either flag; the only non-default setting found is
    the ``__main__`` self-test of ``VL-T5/src/modeling_bart.py`` (down shared, up not).

  The three per-task settings fork the streams at the first adapted block and carry ``1 + T``
  streams through the backbone (``SwinBackbone.carry_task_streams``, as HyperFormer does);
  stream 0 stays the frozen path, which no decoder reads (``methods/vl_adapter_layers.py``).
  Normalisation is shared in all four: the official code adds no adapter LayerNorm by default
  (``--add_layer_norm_before_adapter`` / ``--add_layer_norm_after_adapter`` are off in every
  script) and ``--unfreeze_layer_norms`` trains the backbone's own, shared, LayerNorms.
  Not carried over: the scripts' learning rates (``single_adapter.sh`` 1e-3, ``multiple_adapters.sh``
  3e-4) and ``single_adapter.sh``'s ``--use_tasks_prompts``; mtlbench's schedule is the same
  for every method.
* Where the VL model has adapters after self-attention, cross-attention and feed-forward, a Swin
  block has no cross-attention: the two remaining places are adapted.

On PASCAL's four tasks (``mtlbench params --method vl_adapter``), reduction 8: 1,088,208 adapter
parameters + 23,232 LayerNorm parameters + decoder 1,946,624 = 3,058,064 trainable (counted from
the formula in ``tests/test_method_phm_baselines.py``). The per-task settings on PASCAL
(``--cfg-options model.method.sharing=...``, counts in ``tests/test_method_vl_adapter_sharing.py``):
``half_shared_down`` 540,240 shared + 2,191,872 per task = 2,732,112 adapter parameters (4,701,968
trainable), ``half_shared_up`` 547,968 + 2,160,960 = 2,708,928 (4,678,784), ``multiple``
4 x 1,088,208 = 4,352,832 (6,322,688). They run ``1 + T`` streams from the first block on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from torch import nn

from .adapter import Adapter, AdapterConfig
from .vl_adapter_layers import TaskBottleneckAdapted
from mtlbench.method import AdapterLayer
from mtlbench.registry import METHODS

__all__ = ['VLAdapterConfig', 'VLAdapter', 'SHARING']

#: sharing -> (down projection shared, up projection shared); ``'single'`` shares the whole set
SHARING = {
    'single': (True, True),
    'half_shared_down': (True, False),
    'half_shared_up': (False, True),
    'multiple': (False, False),
}


@dataclass
class VLAdapterConfig(AdapterConfig):
    """The Houlsby adapter's options with VL-Adapter's single-adapter defaults."""
    reduction_factor: int = field(default=8, metadata={'help': 'bottleneck width = channels // reduction_factor'})
    sharing: str = field(default='single', metadata={
        'help': "single (one adapter set for all tasks), half_shared_down / half_shared_up (one "
                "down / up projection shared, the other per task), multiple (per-task adapters)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sharing not in SHARING:
            raise ValueError(f'sharing must be one of {"/".join(SHARING)}, got {self.sharing!r}')


@METHODS.register_module('vl_adapter')
class VLAdapter(Adapter):
    """Bottleneck adapters in every block: one set for all tasks, or per task (fully or half)."""
    config_cls = VLAdapterConfig

    @property
    def per_task(self) -> bool:
        """Whether the tasks have adapters of their own (and so streams of their own)."""
        return self.config.sharing != 'single'

    def variant(self) -> str:
        base = super().variant()
        return f'{base},{self.config.sharing}' if self.per_task else base

    def adapter_layer(self, base_layer: nn.Linear, site) -> AdapterLayer:
        if not self.per_task:
            return super().adapter_layer(base_layer, site)
        share_down, share_up = SHARING[self.config.sharing]
        return TaskBottleneckAdapted(base_layer, self.bottleneck_width(site.out_features), len(self.tasks),
                                     share_down=share_down, share_up=share_up, init_std=self.config.init_std)

    def adapt(self, backbone: nn.Module) -> List[str]:
        done = super().adapt(backbone)
        # per-task adapters in every block: all 1 + T streams continue from stage to stage
        if self.per_task:
            backbone.carry_task_streams = True
        return done

    def adapter_breakdown(self, backbone: nn.Module) -> Dict[str, int]:
        if not self.per_task:
            return {}
        shared = task = 0
        for m in backbone.modules():
            if isinstance(m, TaskBottleneckAdapted):
                for name, p in m.named_parameters(recurse=False):
                    if m.share_down if name.startswith('down_') else m.share_up:
                        shared += p.numel()
                    else:
                        task += p.numel()
        return {'shared adapter': shared, 'task adapters': task}
