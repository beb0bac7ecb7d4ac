"""VL-Adapter: one set of bottleneck adapters shared by every task (Sung, Cho, Bansal, CVPR 2022).

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
* Shared across tasks: every task decoder reads the same (unforked) features, which is what a
  single adapter means here. VL-Adapter's "half-shared" variant (``--share_up_sampler`` /
  ``--share_down_sampler``: one projection per task) needs per-task streams through every block,
  which mtlbench's stream layout (streams fork only in each stage's last block) does not
  express, so it is not offered.
* Where the VL model has adapters after self-attention, cross-attention and feed-forward, a Swin
  block has no cross-attention: the two remaining places are adapted.

On PASCAL's four tasks (``mtlbench params --method vl_adapter``), reduction 8: 1,088,208 adapter
parameters + 23,232 LayerNorm parameters + decoder 1,946,624 = 3,058,064 trainable (counted from
the formula in ``tests/test_method_phm_baselines.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .adapter import Adapter, AdapterConfig
from mtlbench.registry import METHODS

__all__ = ['VLAdapterConfig', 'VLAdapter']


@dataclass
class VLAdapterConfig(AdapterConfig):
    """The Houlsby adapter's options with VL-Adapter's single-adapter defaults."""
    reduction_factor: int = field(default=8, metadata={'help': 'bottleneck width = channels // reduction_factor'})


@METHODS.register_module('vl_adapter')
class VLAdapter(Adapter):
    """One bottleneck adapter set shared by every task, VL-Adapter's defaults."""
    config_cls = VLAdapterConfig
