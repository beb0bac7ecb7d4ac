"""FAAR options: adapters (DoRA / LoRA), PDRS rank shrinking, TS-PD decoder.

Every choice the paper leaves open is a field here; the package docstring
(:mod:`mtlbench.methods.faar`) says which defaults are the paper's and which are ours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from mtlbench.method import MethodConfig

__all__ = ['FAARConfig', 'LINEAR_KINDS']

LINEAR_KINDS: Tuple[str, ...] = ('qkv', 'proj', 'fc1', 'fc2')


@dataclass
class FAARConfig(MethodConfig):
    """FAAR options (defaults: the full method as described in arXiv 2603.20403).

    Example:
        >>> model = dict(method=dict(type='faar', r=64, rho_shared=0.95, rho_task=0.95))
    """
    # ---------------------------------------------------------------- adapters
    r: int = field(default=64, metadata={'help': 'initial rank of the shared adapters (non-last blocks)'})
    task_r: int = field(default=64, metadata={'help': 'initial rank of each per-task adapter (last blocks)'})
    scale: float = field(default=4.0, metadata={
        'help': 'plain multiplier of B A (the pipeline\'s LoRA scale; not alpha / r, not divided by the kept rank)'})
    dropout: float = field(default=0.05, metadata={'help': 'dropout on the adapter input (low-rank path only)'})
    adapter: str = field(default='dora', metadata={
        'help': "'dora' (magnitude x normalised direction) or 'lora' (the 'PDRS with LoRA' ablation)"})
    detach_norm: bool = field(default=True, metadata={
        'help': 'DoRA: treat ||W + sBA|| as a constant in backward (DoRA paper section 4.3, peft); False: exact'})
    kinds: Tuple[str, ...] = field(default=LINEAR_KINDS, metadata={
        'help': 'linears with a shared adapter (non-last blocks; in last blocks those not in task_kinds)'})
    task_kinds: Tuple[str, ...] = field(default=LINEAR_KINDS, metadata={
        'help': 'linears of each stage\'s last block with one adapter per task (the task streams fork at the first)'})
    task_block_shared: str = field(default='adapter', metadata={
        'help': "shared stream of a task-adapted linear: 'frozen' (W x + b) or 'adapter' (its own shared adapter)"})
    # -------------------------------------------------------------------- PDRS
    pdrs: bool = field(default=True, metadata={'help': 'score and prune rank components (PDRS)'})
    prefix_masking: Optional[bool] = field(default=None, metadata={
        'help': 'train with a random prefix b ~ U{1..r} of components (None: same as pdrs)'})
    beta: float = field(default=0.85, metadata={'help': 'EMA factor of the per-batch component scores'})
    prune_rule: str = field(default='gain', metadata={
        'help': "'gain': keep a component while its score is >= gain_threshold x the mean kept score; "
                "'coverage': the fewest top components covering rho of the score (the paper's text)"})
    gain_threshold: float = field(default=0.25, metadata={'help': "threshold of prune_rule='gain'"})
    score_norm: str = field(default='active_mean', metadata={
        'help': "'active_mean': divide each batch's scores by their mean over the active prefix before the EMA; "
                "'none': raw scores"})
    rho_shared: float = field(default=0.95, metadata={
        'help': "score mass the kept shared components must cover (prune_rule='coverage')"})
    rho_task: float = field(default=0.95, metadata={
        'help': "score mass the kept per-task components must cover (prune_rule='coverage')"})
    min_rank: int = field(default=1, metadata={'help': 'never prune an adapter below this rank'})
    prune_interval: int = field(default=1, metadata={'help': 'prune every N epochs (or N iterations)'})
    prune_by_epoch: bool = field(default=True, metadata={
        'help': 'count prune_interval / prune_begin / prune_end in epochs (True) or iterations (False)'})
    prune_begin: Optional[int] = field(default=None, metadata={
        'help': 'first prune after this many epochs (iterations); None: where the lr warm-up ends'})
    prune_end: Optional[int] = field(default=None, metadata={
        'help': 'no prune after this many epochs (iterations); None: until the stop rule fires'})
    prune_stop: str = field(default='stable', metadata={
        'help': "when pruning stops for good: 'stable' (ranks unchanged and kept scores flat for prune_patience "
                "prunes), 'loss' (the training loss rose by prune_loss_tol after a prune), 'stable-or-loss', 'never'"})
    prune_patience: int = field(default=3, metadata={'help': "prunes in a row for prune_stop='stable'"})
    prune_flatness: float = field(default=0.4, metadata={
        'help': "lowest / mean kept score that counts as settled for prune_stop='stable'"})
    prune_loss_tol: float = field(default=0.05, metadata={'help': "relative loss rise for prune_stop='loss'"})
    unmask_after_stop: bool = field(default=True, metadata={
        'help': 'once pruning stopped, train at the kept ranks without prefix masking (and without scoring)'})
    score_inactive: str = field(default='keep', metadata={
        'help': "components outside this batch's prefix: 'keep' their EMA or count a score of 'zero'"})
    keep_order: str = field(default='index', metadata={
        'help': "order of the kept components: 'index' (original order) or 'score' (highest score first)"})
    # ------------------------------------------------------------------- TS-PD
    tspd: bool = field(default=True, metadata={'help': 'Task-Spectral Pyramidal Decoder in front of the heads'})
    xtcons: bool = field(default=True, metadata={'help': 'cross-task spectral consensus inside TS-PD'})
    tspd_position: str = field(default='after_downsampler', metadata={
        'help': "where TS-PD acts: 'after_downsampler' (18/36/72/144 ch) or 'before_downsampler' (backbone maps)"})
    tspd_filter: str = field(default='complex', metadata={
        'help': "values of the learnable spectral filter: 'complex' or 'real'"})
    tspd_filter_channels: str = field(default='per_channel', metadata={
        'help': "'shared': one spectral filter per task and resolution for all channels (the paper's indexing); "
                "'per_channel': one per task, resolution and channel"})
    xtcons_radius: float = field(default=0.25, metadata={
        'help': 'radius of the low-frequency mask in cycles per sample (0 .. 0.5*sqrt(2)); high = 1 - low'})
    # The paper's 3.38M is only reachable with the PatchMerging reductions frozen.
    train_reductions: bool = field(default=False, metadata={'help': 'PatchMerging reduction matrices trainable'})

    def __post_init__(self) -> None:
        self.kinds, self.task_kinds = tuple(self.kinds), tuple(self.task_kinds)
        bad = sorted((set(self.kinds) | set(self.task_kinds)) - set(LINEAR_KINDS))
        if bad:
            raise ValueError(f'faar: unknown linear kinds {bad}; valid: {list(LINEAR_KINDS)}')
        if not self.kinds and not self.task_kinds:
            raise ValueError('faar: kinds and task_kinds are both empty: nothing to adapt')
        if self.r <= 0 or self.task_r <= 0:
            raise ValueError(f'faar: ranks must be positive, got r={self.r}, task_r={self.task_r}')
        if self.scale <= 0:
            raise ValueError(f'faar: scale must be positive, got {self.scale}')
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f'faar: dropout must be in [0, 1), got {self.dropout}')
        choices = dict(adapter=('dora', 'lora'), task_block_shared=('frozen', 'adapter'),
                       score_inactive=('keep', 'zero'), keep_order=('index', 'score'),
                       prune_rule=('gain', 'coverage'), score_norm=('active_mean', 'none'),
                       prune_stop=('stable', 'loss', 'stable-or-loss', 'never'),
                       tspd_position=('after_downsampler', 'before_downsampler'), tspd_filter=('complex', 'real'),
                       tspd_filter_channels=('shared', 'per_channel'))
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f'faar: {name}={getattr(self, name)!r}; valid: {list(valid)}')
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f'faar: beta must be in [0, 1), got {self.beta}')
        for name in ('rho_shared', 'rho_task'):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f'faar: {name} must be in (0, 1], got {getattr(self, name)}')
        if self.min_rank < 1:
            raise ValueError(f'faar: min_rank must be >= 1, got {self.min_rank}')
        if self.prune_interval < 1 or (self.prune_begin is not None and self.prune_begin < 1):
            raise ValueError(f'faar: prune_interval and prune_begin must be >= 1, got '
                             f'{self.prune_interval}, {self.prune_begin}')
        if not 0.0 < self.gain_threshold < 1.0:
            raise ValueError(f'faar: gain_threshold must be in (0, 1), got {self.gain_threshold}')
        if self.prune_patience < 1 or not 0.0 <= self.prune_flatness <= 1.0 or self.prune_loss_tol < 0:
            raise ValueError(f'faar: prune_patience >= 1, prune_flatness in [0, 1], prune_loss_tol >= 0; got '
                             f'{self.prune_patience}, {self.prune_flatness}, {self.prune_loss_tol}')
        if self.prune_end is not None and self.prune_begin is not None and self.prune_end < self.prune_begin:
            raise ValueError(f'faar: prune_end={self.prune_end} < prune_begin={self.prune_begin}')
        if not 0.0 < self.xtcons_radius <= 0.75:
            raise ValueError(f'faar: xtcons_radius must be in (0, 0.75], got {self.xtcons_radius}')
        if self.prefix_masking is None:
            self.prefix_masking = self.pdrs
