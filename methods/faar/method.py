"""The registered ``faar`` method: adapts the backbone sites and the decoder, supplies the hook."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmengine.logging import print_log
from torch import nn

from mtlbench.heads.hrnet import MultiTaskDecoder
from mtlbench.method import Method
from mtlbench.registry import METHODS

from .config import FAARConfig
from .dora import FAARLinear, FAARTaskLinear
from .pdrs import PDRSHook, ensure_score_hooks, rank_history
from .tspd import TSPDDecoder

__all__ = ['FAAR']


@METHODS.register_module('faar')
class FAAR(Method):
    """FAAR: DoRA adapters with PDRS rank shrinking, and the TS-PD decoder."""
    config_cls = FAARConfig

    def __init__(self, config: FAARConfig, tasks: Sequence[str]) -> None:
        super().__init__(config, tasks)
        self._feature_sizes: Optional[List[Tuple[int, int]]] = None
        self._feature_channels: Optional[List[int]] = None
        self._hook: Optional[PDRSHook] = None

    def variant(self) -> str:
        c = self.config
        parts = [f'r={c.r}' if c.r == c.task_r else f'r={c.r}/{c.task_r}', c.adapter]
        if c.pdrs and c.prune_rule == 'coverage':
            parts.append('pdrs coverage' if (c.rho_shared, c.rho_task) == (0.95, 0.95)
                         else f'pdrs coverage rho={c.rho_shared}/{c.rho_task}')
        elif c.pdrs:
            parts.append('pdrs' if c.gain_threshold == 0.25 else f'pdrs gain={c.gain_threshold}')
        if c.tspd:
            parts.append('ts-pd' if c.xtcons else 'ts-pd w/o xt-cons')
            if c.tspd_filter_channels == 'shared':
                parts.append('channel-shared filter')
        return ' '.join(parts)

    def _unit_kw(self, rho: float) -> Dict[str, Any]:
        c = self.config
        return dict(prefix_masking=c.prefix_masking, scoring=c.pdrs, beta=c.beta, rho=rho, min_rank=c.min_rank,
                    score_inactive=c.score_inactive, keep_order=c.keep_order, prune_rule=c.prune_rule,
                    gain_threshold=c.gain_threshold, score_norm=c.score_norm)

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        H, W = backbone.img_size
        self._feature_sizes = [(H // s, W // s) for s in backbone.out_strides]
        self._feature_channels = list(backbone.out_channels)
        sites = backbone.sites()
        last_stage = max(s.stage for s in sites)
        done = []
        common = dict(scale=c.scale, dropout=c.dropout, variant=c.adapter, detach_norm=c.detach_norm)
        for site in sites:
            if site.kind == 'reduction':
                continue  # frozen (train_reductions) and never adapted in FAAR
            base = backbone.get_submodule(site.name)
            if site.task_block and site.kind in c.task_kinds:
                # The shared stream of the backbone's final block is never read: no adapter there.
                shared = c.task_block_shared if site.stage != last_stage else 'frozen'
                layer = FAARTaskLinear(base, self.tasks, c.task_r, shared=shared, shared_r=c.r,
                                       shared_unit_kw=self._unit_kw(c.rho_shared), **common,
                                       **self._unit_kw(c.rho_task))
            elif site.kind in c.kinds:
                layer = FAARLinear(base, c.r, **common, **self._unit_kw(c.rho_shared))
            else:
                continue
            backbone.replace_site(site.name, layer)
            done.append(site.name)
        if not done:
            raise ValueError('faar matched no backbone site')
        backbone.register_forward_pre_hook(ensure_score_hooks)
        return done

    def adapt_decoder(self, decoder: nn.Module) -> nn.Module:
        c = self.config
        if not c.tspd:
            return decoder
        if not isinstance(decoder, MultiTaskDecoder):
            raise TypeError(f'TS-PD extends a MultiTaskDecoder, got {type(decoder).__name__}')
        sizes, channels = self._feature_sizes, self._feature_channels
        if sizes is None:  # adapt() not called: assume the Swin strides
            H, W = decoder.out_size
            sizes = [(H // s, W // s) for s in (8, 16, 32, 32)]
            channels = [conv.in_channels for conv in next(iter(decoder.downsamplers.values())).convs]
            print_log('faar: adapt_decoder before adapt(); assuming feature strides 8/16/32/32',
                      logger='current', level=logging.WARNING)
        return TSPDDecoder(decoder, sizes, channels, position=c.tspd_position,
                           complex_filter=c.tspd_filter == 'complex', xtcons=c.xtcons, radius=c.xtcons_radius,
                           shared_channels=c.tspd_filter_channels == 'shared')

    def runner_hooks(self) -> List[Any]:
        c = self.config
        if not c.pdrs:
            return []
        self._hook = PDRSHook(interval=c.prune_interval, by_epoch=c.prune_by_epoch, begin=c.prune_begin,
                              end=c.prune_end, stop=c.prune_stop, patience=c.prune_patience,
                              loss_tol=c.prune_loss_tol, unmask_after_stop=c.unmask_after_stop,
                              flatness=c.prune_flatness)
        return [self._hook]

    def record_extras(self, model: nn.Module) -> Dict[str, Any]:
        """``{'rank_history': [{'epoch' | 'iter', 'layer', 'task', 'rank'}, ...]}`` (initial ranks
        and every change; the last entry per adapter is its final rank), and with PDRS
        ``{'pdrs_stop': {'step', 'reason'}}`` (``None`` values if pruning never stopped)."""
        extras: Dict[str, Any] = dict(rank_history=rank_history(model))
        hook = getattr(self, '_hook', None)
        if hook is not None:
            extras['pdrs_stop'] = dict(step=hook.schedule.stop_step, reason=hook.schedule.stop_reason)
        return extras
