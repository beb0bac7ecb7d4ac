"""HyperFormer (Karimi Mahabadi et al., ACL 2021, arXiv 2106.04489) as the Polyhistor benchmark
adapts it to Swin (Liu et al., NeurIPS 2022, arXiv 2210.03265): task-specific bottleneck
adapters in every block whose weights one shared hypernetwork generates from a task embedding, a
layer-id embedding and an adapter-position embedding (HyperFormer++, the variant with one
hypernetwork shared by all layers).

Mechanism (``hypernetwork.py``, ``adapter.py``, ``condition.py``): after ``proj`` and ``fc2`` of
every block (Houlsby's placement, the same sites as the ``adapter`` baseline) each task stream
``t`` gets ``h + up_t(gelu(down_t(h)))`` with ``(down_t, up_t) = H(I(t, layer, position))``.
Adapters are task-specific in every block, so each task needs its own path through the whole
backbone: the method sets ``SwinBackbone.carry_task_streams`` and the forward runs ``1 + T``
streams from the first adapted block on (stream 0 is the frozen path, which no decoder reads;
it costs one extra stream, ``(T + 1) / T`` of the per-task cost).

Not in the texts we could read, chosen (each an option):

* ``width_mode='per_stage'``: Swin-T's widths 96/192/384/768 get one generator each;
  ``'slice'`` emits the 768-wide adapter and slices it for narrower stages.
* ``reduction_factor=4``: bottleneck ``C // 4`` per stage (as the ``adapter`` baseline).
* ``reduction_factor=4`` is kept although HyperFormer++'s own release config uses 32 (T5-base,
  ``hyperformer/configs/hyperformer++.json``): Polyhistor's Swin setting is not in the text we
  could read; ``--cfg-options model.method.reduction_factor=32`` gives the release value.
* embeddings 64 wide, projector hidden 128, conditioning 64 (``embed_dim``, ``hidden_dim``,
  ``cond_dim``: the HyperFormer++ release config's values, ``condition.py``), the conditioning
  normalised by a LayerNorm (``condition_layer_norm``, HyperFormer++'s
  ``unique_hyper_net_layer_norm``, default on; off for Polyhistor, whose text we could read does
  not name it); generators ``N(0, 0.02)`` (``init_std``), up generators zero
  (``zero_init_up``) so training starts from the pretrained backbone.
* the backbone's own LayerNorms train as shared parameters (``train_norms``) and nothing else of
  the backbone does.

Task-conditional LayerNorms (``conditional_layer_norm``, default on, ``conditional_norm.py``),
from the official code (rabeehk/hyperformer at 56b0f99; paths under ``hyperformer/``):

* *which LayerNorm*: the adapter's own output norm, not the pretrained model's.
  ``adapters/adapter_controller.py`` L212-218 (HyperFormer++'s ``MetaLayersAdapterController``):
  ``inputs + LN(adapter(inputs))`` with the generated ``(gamma, beta)``; the pre-adapter norm is
  off (``training_args.py`` L185 ``add_layer_norm_before_adapter=False``, L188
  ``add_layer_norm_after_adapter=True``). The pretrained T5 LayerNorms stay and train as shared
  parameters (``configs/hyperformer++.json`` ``"unfreeze_layer_norms": true``,
  ``utils/utils.py`` L161-166), as the paper's Fig. 1 caption says: only the layer norms of T5,
  the hypernetworks and the task embeddings are updated.
* *generated from what*: the same conditioning embedding as the adapter weights (task, layer,
  position through the task projector), by one layer-norm hypernetwork shared by all layers
  (``adapters/adapter_modeling.py`` L190-193, L228-238), two linear maps ``I -> gamma`` and
  ``I -> beta`` (``adapters/adapter_utils.py`` L47-58).
* *init*: weights ``N(0, 0.01)``, biases zero (``adapter_utils.py`` L17-27, ``linear_layer``'s
  default ``std=1e-2``): ``gamma`` starts near zero, not one (``norm_init_std``).
* here: one ``(gamma, beta)`` generator per generator width (``width_mode``, as the adapter's).
  With ``zero_init_up`` the adapter's output is exactly zero at init, so the norm returns
  ``beta_t``: training starts from the pretrained backbone shifted by the small generated
  ``beta_t`` per site, not from the pretrained backbone itself (in the official code the up
  projection is not zero, so neither does it).

Trainable parameters on PASCAL's four tasks, Swin-T (``mtlbench params --method hyperformer
--dataset pascal_context``): hypernetwork 25,610,440 (conditioning 34,240, its LayerNorm's 128
included, + four per-stage generators 25,576,200) + conditional LayerNorm generators
187,200 (``65 * 2 C`` for C = 96, 192, 384, 768) + backbone LayerNorms 23,232 + decoder 1,946,624 =
27,767,496 (27,580,296 with ``conditional_layer_norm=False``; 128 fewer with
``condition_layer_norm=False``); ``width_mode=slice`` has one 768-wide generator of each kind
instead. Formulas checked in ``tests/test_method_hyper_baselines.py``.
No printed count for this row could be retrieved while writing this, and the adaptation's sizes
are not in the text we could read, so no count is claimed to match a published one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from torch import nn

from mtlbench.method import Method, MethodConfig
from mtlbench.registry import METHODS

from ..adapter import check_bottleneck_options
from .adapter import GeneratedAdapterLinear
from .condition import SiteCondition
from .hypernetwork import WIDTH_MODES, AdapterHyperNetwork

__all__ = ['HyperFormerConfig', 'HyperFormer']


@dataclass
class HyperFormerConfig(MethodConfig):
    """HyperFormer++ options (shared hypernetwork over task, layer and position embeddings)."""
    reduction_factor: int = field(default=4, metadata={'help': 'bottleneck width = channels // reduction_factor'})
    kinds: tuple = field(default=('proj', 'fc2'), metadata={'help': 'sites whose output is adapted (one position each)'})
    embed_dim: int = field(default=64, metadata={'help': 'width of the task, layer and position embeddings'})
    hidden_dim: int = field(default=128, metadata={'help': 'hidden width of the conditioning projector'})
    cond_dim: int = field(default=64, metadata={'help': 'width of the conditioning vector the generators read'})
    width_mode: str = field(default='per_stage', metadata={'help': "per-width generators ('per_stage') or "
                                                                    "one at the largest width, sliced ('slice')"})
    zero_init_up: bool = field(default=True, metadata={'help': 'generated up projections start at zero'})
    init_std: float = field(default=0.02, metadata={'help': 'std of the generators normal init'})
    conditional_layer_norm: bool = field(default=True, metadata={
        'help': "normalise each task's adapter output with a LayerNorm whose gamma/beta are generated from "
                "the same conditioning (HyperFormer's task-conditional LayerNorm)"})
    norm_init_std: float = field(default=0.01, metadata={'help': 'std of the LayerNorm generators normal init'})
    condition_layer_norm: bool = field(default=True, metadata={
        'help': "LayerNorm on the conditioning vector before the generators read it (HyperFormer++'s "
                "unique_hyper_net_layer_norm)"})
    train_patch_embed: bool = False
    train_norms: bool = True
    train_rel_pos: bool = False
    train_reductions: bool = False

    def __post_init__(self) -> None:
        check_bottleneck_options(self, 'reduction_factor', 'embed_dim', 'hidden_dim', 'cond_dim')
        if self.width_mode not in self.valid_width_modes():
            raise ValueError(f'width_mode must be one of {self.valid_width_modes()}, got {self.width_mode!r}')

    @staticmethod
    def valid_width_modes() -> tuple:
        return ('per_stage', 'slice')


@METHODS.register_module('hyperformer')
class HyperFormer(Method):
    """Per-task adapters in every block, written by one shared hypernetwork."""
    config_cls = HyperFormerConfig
    #: factor rank of the decomposed generators (``None``: full generation)
    rank: Optional[int] = None

    def variant(self) -> str:
        return f'rf={self.config.reduction_factor}'

    def scale_factor(self, width: int, template_width: int) -> int:
        """``k`` of the site's Layer-wise Scaling Kernels; 0 for none (HyperFormer, Polyhistor)."""
        return 0

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        sites = backbone.select_sites(kinds=c.kinds)
        if not sites:
            raise ValueError(f'{self.name} matched no backbone site of kinds {c.kinds}')
        blocks = sorted({(s.stage, s.block) for s in sites})
        bottlenecks: Dict[int, int] = {s.out_features: max(1, s.out_features // c.reduction_factor) for s in sites}
        condition = SiteCondition(len(self.tasks), len(blocks), len(c.kinds), c.embed_dim, c.hidden_dim, c.cond_dim,
                                  layer_norm=c.condition_layer_norm)
        hyper = AdapterHyperNetwork(condition, bottlenecks, rank=self.rank, width_mode=c.width_mode,
                                    zero_init_up=c.zero_init_up, init_std=c.init_std,
                                    layer_norm=c.conditional_layer_norm, norm_init_std=c.norm_init_std)
        backbone.hypernetwork = hyper
        backbone.carry_task_streams = True
        template = min(bottlenecks)
        for s in sites:
            layer = GeneratedAdapterLinear(backbone.get_submodule(s.name), hyper, blocks.index((s.stage, s.block)),
                                           c.kinds.index(s.kind), len(self.tasks),
                                           scale_factor=self.scale_factor(s.out_features, template),
                                           scaling_init=getattr(c, 'scaling_init', 'ones'),
                                           layer_norm=c.conditional_layer_norm)
            backbone.replace_site(s.name, layer)
        return [s.name for s in sites]

    def adapter_breakdown(self, backbone: nn.Module) -> Dict[str, int]:
        hypernet = backbone.hypernetwork
        norms = sum(p.numel() for p in hypernet.layer_norms.parameters()) if hypernet.layer_norms is not None else 0
        hyper = sum(p.numel() for p in hypernet.parameters()) - norms
        scaling = sum(p.numel() for m in backbone.modules() if isinstance(m, GeneratedAdapterLinear)
                      for n, p in m.named_parameters(recurse=False))
        out = dict(hypernetwork=hyper)
        if norms:
            out['conditional_layer_norms'] = norms
        if scaling:
            out['scaling_kernels'] = scaling
        return out
