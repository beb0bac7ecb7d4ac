"""PDRS (Performance-Driven Rank Shrinking): prefix masking, component scores, pruning.

Each adapter's low-rank pair lives in a :class:`LowRankUnit` (``faar_A [r, in]``,
``faar_B [out, r]``). PDRS (FAAR, arXiv 2603.20403) does three things with it:

1. **Prefix masking.** In training every forward keeps a random prefix of
   ``b ~ U{1, ..., r}`` components (``A[:b]``, ``B[:, :b]``); evaluation uses all ``r``.
2. **Scores.** Component ``i``'s score is ``1/2 (|<A_i, dL/dA_i>| + |<B_i, dL/dB_i>|)``, read
   by ``register_post_accumulate_grad_hook`` hooks on ``faar_A`` / ``faar_B`` -- i.e. inside
   ``backward``, before mmengine's ``OptimWrapper.update_params`` steps and zeroes the
   gradients, and also under DDP, where ``MMDistributedDataParallel.train_step`` never calls
   the model's own ``train_step``. The hooks run before DDP's reducer marks the gradient ready,
   so they see the rank-local gradient. Scores are smoothed by an EMA (``beta``) with Adam-style
   bias correction per component (components deep in the rank are active in few batches).
3. **Pruning** (:func:`prune_model`): at the end of every epoch (or every N iterations) each
   unit keeps the components :func:`select_components` chooses and drops the rest for good.
   The parameter tensors really shrink (new, smaller ``nn.Parameter`` objects), the optimizer
   is fixed up (``param_groups`` references swapped, AdamW ``exp_avg`` / ``exp_avg_sq`` sliced
   to the kept components), and under DDP the scores are all-reduced first, the decision is
   broadcast from rank 0, and the DDP wrapper is rebuilt (its buckets were sized for the old
   parameters).
4. **Schedule and stop** (:class:`PruneSchedule`, inside :class:`PDRSHook`): the first prune
   comes where the lr warm-up ends (while ``B`` is still about 0 the scores say nothing); the
   pruning stops for good once the ranks have settled, and from then on every unit trains at
   its kept rank without prefix masking.

Why the defaults (``prune_rule='gain'``, ``gain_threshold=0.25``, ``score_norm='active_mean'``,
``prune_stop='stable'`` with 3 prunes and flatness 0.4, unmasked after the stop), measured
with ``benchmarks/faar_rank_recovery.py`` (one FAAR DoRA linear, d = 96, regressing a planted
rank-k update with a flat spectrum, observation noise 0.01, 40 epochs of 40 steps, 3 warm-up
epochs, one prune per epoch; fit error ``||W' - W*||_F / ||W* - W||_F``):

* The paper's rule, ``rho = 0.95`` coverage, cannot stop on a flat spectrum: 0.95 of ``k``
  equal scores needs only ``ceil(0.95 k)`` of them, so it cuts a true component at every prune
  once ``k >= 20``; and prefix masking inflates low indices (they are active in small prefixes,
  where the residual and so the gradient is large), so the tail of the true components looks
  small too. Issue 13 measured truth 24 -> 7 after 30 prunes (relative error 10.6%).
* ``'gain'`` keeps a component while its score is at least ``gain_threshold`` x the mean kept
  score (a fixed point). With threshold 0.1 relative to the mean over *all* components (the
  first version), a long tail of half-trained components holds the mean down and ranks fell
  slowly (noise-free, 30 epochs, no stop: truth 8 from 64 reached 8 at epoch 22, truth 24 from
  64 was still 26 at the end); with the kept mean and 0.25 they reached 8 at epoch 13 and 24 at
  epoch 19, and no run went below its truth. With the stop rule, truths 2 / 8 / 24 from initial
  ranks 16 / 32 / 64 end at 2 / 8-9 / 24-30 (table below). A flat spectrum is never cut
  (every score is near the mean).
* ``score_norm='active_mean'`` divides each batch's scores by their mean over the active
  prefix, so the batches with a small prefix (large residual) do not dominate the EMA of the
  low indices.
* Stop: ranks sit on plateaus early (e.g. 30 for 6 epochs on the way from 32 to 24) while the
  kept scores are still uneven (lowest / mean about 0.25-0.35); once the truth is reached they
  are flat (0.45-0.95). So ``'stable'`` needs ``patience`` unchanged prunes *with* flat kept
  scores (``flatness`` 0.4). ``'loss'`` compares the mean training loss after a prune with the
  one before: under prefix masking that loss swings by tens of percent between epochs (the
  share of batches with ``b < k`` varies), and with a 5% tolerance it stopped most runs within a
  few epochs of the warm-up, above 1.5x the truth (so it is not the default).
* Prefix masking costs fit: with the same stop but masking kept on to the end
  (``unmask_after_stop=False``) the fit error was 1.8-14x that of the same adapter trained
  without PDRS; trained on unmasked after the stop it is 0.56-0.90x.
* The paper's rule on the same benchmark (``prune_rule='coverage'``, ``score_norm='none'``, no
  stop, masked to the end): truth 2 -> 2, truth 8 -> 8 / 6 / 6 and truth 24 -> 6 / 8 from
  initial ranks 16 / 32 / 64; fit error 1.7-156x the unpruned one.

* Known limit: a score ``|<theta_i, dL/dtheta_i>|`` of the *last* true component is read only in
  batches whose prefix already covers the truth, so once fitted it is small noise. On a tiny
  noise-free case (d = 16, truth 2 with singular values 0.90 / 0.64, pruned from the first epoch,
  no stop rule, detached DoRA norm) the 'gain' rule cut it at the 6th prune (loss x60); the
  warm-up start and the stop rule are what keep this from happening in the benchmark.

The benchmark's table (default options, seed 0; ratio = fit error / unpruned fit error)::

    case    truth  init  final  ratio  stop (epoch)
    single      2    16      2   0.66  15
    single      2    32      2   0.62  18
    single      2    64      2   0.61  17
    single      8    16      9   0.79  12
    single      8    32      8   0.62  25
    single      8    64      8   0.58  22
    single     24    32     30   0.90   6
    single     24    64     24   0.67  30
    multi   2/8/24    32  2/8/24  0.63/0.62/0.78  25
    multi   2/8/24    64  2/8/24  0.62/0.56/0.67  26

Seed 1 (same command, ``--seeds 1``): single finals 2 / 2 / 2, 8 / 8 / 8, 31 / 27 (init 32 /
64 for 24), multi 2 / 8 / 24 for both initial ranks, fit ratios 0.56-0.91, stops at epochs
6-28. Before the stable count waited for a first rank change, seed 1's truth 2 from 16
stopped at 16 after epoch 6 (scores still flat, nothing pruned yet).

With ``prune_stop='stable-or-loss'`` the loss rule stopped 7 of the 8 single cases at epochs
5-13 with ranks 12-60 (e.g. truth 2 from 64 at 40); ``gain_threshold=0.1`` reached the truth
but stopped at epochs 26-36 or never, leaving too little unmasked training (fit ratio up to
2.85); both measured with the exact DoRA norm gradient (``detach_norm=False``).
"""
from __future__ import annotations

import gc
import inspect
import logging
import math
import weakref
from functools import partial
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from mtlbench.layers.lowrank import lora_init_
from mtlbench.registry import HOOKS

__all__ = ['LowRankUnit', 'select_components', 'iter_units', 'prune_model', 'truncate_ranks',
           'replace_in_optimizer', 'torch_optimizers', 'rebuild_ddp', 'rewrap_runner_model',
           'ignore_pdrs_buffers_in_ddp', 'PDRSHook', 'PruneSchedule', 'STOP_RULES', 'freeze_ranks', 'warmup_end',
           'rank_history', 'final_ranks', 'average_rank', 'format_rank_table', 'plot_rank_history']

_EPOCH, _ITER = 1, 0


class LowRankUnit(nn.Module):
    """One prunable low-rank pair ``(A, B)`` with its PDRS bookkeeping.

    The update is ``scale * B[:, :b] A[:b]`` with ``b`` the active rank (a random prefix in
    training when ``prefix_masking``, else the full rank ``r``).

    Args:
        in_features: input width of the adapted linear.
        out_features: output width.
        rank: initial rank ``r`` (capped at ``min(in_features, out_features)``: ``B A`` cannot
            use more; only the toy test backbone is that narrow).
        scale: plain multiplier of ``B A``.
        task: ``'shared'`` or the task name (labels the rank history).
        prefix_masking: train with a random prefix ``b ~ U{1..r}``.
        scoring: record component scores in backward (PDRS on).
        beta: EMA factor of the scores.
        rho: score mass the kept components must cover (``prune_rule='coverage'``).
        min_rank: lowest rank pruning may leave.
        score_inactive: ``'keep'`` or ``'zero'`` (see module docstring).
        keep_order: ``'index'`` or ``'score'``.
        prune_rule: ``'gain'`` or ``'coverage'`` (see :func:`select_components`).
        gain_threshold: the ``'gain'`` rule's threshold.
        score_norm: ``'active_mean'`` divides each batch's scores by their mean over the active
            prefix before the EMA; ``'none'`` keeps raw scores.

    Buffers (persistent, so a resumed run continues the same EMA):
        ``faar_score_ema [2, r]`` (A-term, B-term), ``faar_score_count [2, r]``,
        ``faar_rank_trace [n, 3]`` int64 rows ``(step, rank, by_epoch)``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, task: str = 'shared',
                 prefix_masking: bool = True, scoring: bool = True, beta: float = 0.85, rho: float = 0.95,
                 min_rank: int = 1, score_inactive: str = 'keep', keep_order: str = 'index',
                 prune_rule: str = 'gain', gain_threshold: float = 0.25, score_norm: str = 'active_mean') -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f'rank must be positive, got {rank}')
        rank = min(rank, in_features, out_features)  # more components than that add nothing
        self.in_features, self.out_features = in_features, out_features
        self.initial_rank = rank
        self.scale = float(scale)
        self.task = task
        self.prefix_masking = prefix_masking
        self.scoring = scoring
        self.beta = float(beta)
        self.rho = float(rho)
        self.min_rank = int(min_rank)
        self.score_inactive = score_inactive
        self.keep_order = keep_order
        self.prune_rule = prune_rule
        self.gain_threshold = float(gain_threshold)
        self.score_norm = score_norm
        self.faar_A = nn.Parameter(torch.empty(rank, in_features))
        self.faar_B = nn.Parameter(torch.empty(out_features, rank))
        lora_init_(self.faar_A, self.faar_B)
        self.register_buffer('faar_score_ema', torch.zeros(2, rank))
        self.register_buffer('faar_score_count', torch.zeros(2, rank))
        self.register_buffer('faar_rank_trace', torch.tensor([[0, rank, _EPOCH]], dtype=torch.long))
        self.active_rank = rank
        #: times the parameters were resized (pruning or loading a pruned checkpoint)
        self.resize_count = 0
        self._hooked: Optional[Tuple[weakref.ref, weakref.ref]] = None
        self._scaler_ref: Optional[weakref.ref] = None

    # --------------------------------------------------------------- forward
    @property
    def rank(self) -> int:
        """Current rank ``r``."""
        return self.faar_A.shape[0]

    def sample_rank(self) -> Union[int, torch.Tensor]:
        """Draw this forward's active rank ``b`` (and make sure the scoring hooks are in place).

        Under ``torch.compile`` ``b`` stays a 0-d CPU tensor (same generator, same draw): a
        Python int would need ``.item()`` (a graph break) and a prefix slice of a new length
        each step (a recompile), so :meth:`factors` masks the columns ``B[:, b:]`` instead.

        Returns:
            ``b ~ U{1..r}`` in training with prefix masking, else ``r``.
        """
        r = self.rank
        b = r
        if self.training and self.prefix_masking and r > 1:
            b = torch.randint(1, r + 1, ())  # CPU generator: no device sync
            if not torch.compiler.is_compiling():
                b = int(b.item())
        self.active_rank = b
        if not torch.compiler.is_compiling():   # compiled: ensure_score_hooks ran before the graph
            self.ensure_hooks_if_scoring()
        return b

    def ensure_hooks_if_scoring(self) -> None:
        """Register the scoring hooks on the current parameters if this forward will score."""
        if self.training and self.scoring and torch.is_grad_enabled() and self.faar_A.requires_grad \
                and self.faar_B.requires_grad:
            self._ensure_hooks()

    def factors(self, b: Union[int, torch.Tensor, None] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(A[:b] [b, in], B[:, :b] [out, b])``; ``b`` defaults to the full rank.

        A tensor ``b`` (compiled training) gives the full-size ``(A, B * [i < b])`` instead: the
        same product ``B A``, and zero gradients beyond the prefix, as with the slices.
        """
        if torch.is_tensor(b):
            keep = torch.arange(self.rank, device=self.faar_B.device) < b.to(self.faar_B.device)
            return self.faar_A, self.faar_B * keep.to(self.faar_B.dtype)
        if b is None or b >= self.rank:
            return self.faar_A, self.faar_B
        return self.faar_A[:b], self.faar_B[:, :b]

    def delta(self, x: torch.Tensor, b: Optional[int] = None) -> torch.Tensor:
        """Low-rank update ``scale * x A[:b]^T B[:, :b]^T``: ``[..., in] -> [..., out]``."""
        A, B = self.factors(b)
        return F.linear(F.linear(x, A), B * self.scale if self.scale != 1.0 else B)

    def delta_weight(self, b: Optional[int] = None) -> torch.Tensor:
        """``scale * B[:, :b] A[:b]``, shape ``[out, in]``."""
        A, B = self.factors(b)
        return self.scale * (B @ A)

    # --------------------------------------------------------------- scoring
    def _ensure_hooks(self) -> None:
        hooked = self._hooked
        if hooked is not None and hooked[0]() is self.faar_A and hooked[1]() is self.faar_B:
            return
        me = weakref.ref(self)
        self.faar_A.register_post_accumulate_grad_hook(partial(_score_hook, me, 0))
        self.faar_B.register_post_accumulate_grad_hook(partial(_score_hook, me, 1))
        self._hooked = (weakref.ref(self.faar_A), weakref.ref(self.faar_B))

    def set_grad_scaler(self, scaler: Any) -> None:
        """Divide gradients by ``scaler``'s loss scale when scoring (AMP); ``None`` to stop."""
        self._scaler_ref = None if scaler is None else weakref.ref(scaler)

    @torch.no_grad()
    def accumulate_scores(self, which: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        """EMA-update the ``which`` (0: A, 1: B) term of the active components' scores.

        Args:
            which: 0 for ``faar_A`` (``[r, in]``, components are rows), 1 for ``faar_B``
                (``[out, r]``, components are columns).
            param: the parameter.
            grad: its gradient (same shape).
        """
        accumulate_scores([(self, which, param, grad)])

    def importance(self) -> torch.Tensor:
        """Bias-corrected EMA scores ``1/2 (s_A + s_B)``, shape ``[r]`` (0 where never scored)."""
        ema, cnt = self.faar_score_ema, self.faar_score_count
        corr = 1.0 - torch.pow(torch.full_like(cnt, self.beta), cnt)
        corrected = torch.where(cnt > 0, ema / corr.clamp_min(1e-12), torch.zeros_like(ema))
        return 0.5 * corrected.sum(0)

    # --------------------------------------------------------------- pruning
    @torch.no_grad()
    def prune(self, keep: torch.Tensor, step: int, by_epoch: bool = True
              ) -> List[Tuple[nn.Parameter, nn.Parameter, torch.Tensor, int]]:
        """Keep components ``keep`` (in that order); drop the rest.

        New, smaller ``nn.Parameter`` objects replace ``faar_A`` / ``faar_B`` (their autograd
        state is fresh, so nothing stale can hold the old shapes); the caller must swap them
        into the optimizer (:func:`replace_in_optimizer`).

        Args:
            keep: int64 indices of the kept components.
            step: epoch (or iteration) count at which the prune happens (rank history).
            by_epoch: whether ``step`` counts epochs.

        Returns:
            ``[(old_param, new_param, keep, dim), ...]`` for ``faar_A`` (dim 0) and ``faar_B``
            (dim 1); empty when nothing changed.
        """
        keep = keep.to(device=self.faar_A.device, dtype=torch.long)
        if keep.numel() == self.rank and torch.equal(keep.cpu(), torch.arange(self.rank)):
            return []
        if keep.numel() < 1:
            raise ValueError('cannot prune a unit to rank 0')
        changes = []
        for name, dim in (('faar_A', 0), ('faar_B', 1)):
            old = getattr(self, name)
            new = nn.Parameter(old.detach().index_select(dim, keep).clone(), requires_grad=old.requires_grad)
            setattr(self, name, new)
            changes.append((old, new, keep, dim))
        self.faar_score_ema = self.faar_score_ema.index_select(1, keep)
        self.faar_score_count = self.faar_score_count.index_select(1, keep)
        if keep.numel() != int(self.faar_rank_trace[-1, 1]):
            row = torch.tensor([[int(step), keep.numel(), _EPOCH if by_epoch else _ITER]], dtype=torch.long,
                               device=self.faar_rank_trace.device)
            self.faar_rank_trace = torch.cat([self.faar_rank_trace, row])
        self.resize_count += 1
        self.active_rank = self.rank
        return changes

    def _resize_in_place(self, rank: int, trace_rows: int) -> None:
        """Give ``faar_A`` / ``faar_B`` / buffers the shapes of a checkpoint (same objects)."""
        with torch.no_grad():
            for name, shape in (('faar_A', (rank, self.in_features)), ('faar_B', (self.out_features, rank))):
                p = getattr(self, name)
                if tuple(p.shape) != shape:
                    dtype, device = p.dtype, p.device
                    # Setting data of another dtype first detaches the parameter from a gradient
                    # accumulator that may still be alive (e.g. held by a DDP reducer) and that
                    # would check gradients against the old shape.
                    p.data = torch.empty(0, dtype=torch.float64 if dtype != torch.float64 else torch.float32,
                                         device=device)
                    p.data = torch.zeros(shape, dtype=dtype, device=device)
                    p.grad = None
            if self.faar_score_ema.shape[1] != rank:
                self.faar_score_ema = self.faar_score_ema.new_zeros(2, rank)
                self.faar_score_count = self.faar_score_count.new_zeros(2, rank)
            if self.faar_rank_trace.shape[0] != trace_rows:
                self.faar_rank_trace = self.faar_rank_trace.new_zeros(trace_rows, 3)
        self.resize_count += 1
        self.active_rank = rank

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict[str, Any],
                              strict: bool, missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        a, b = state_dict.get(prefix + 'faar_A'), state_dict.get(prefix + 'faar_B')
        trace = state_dict.get(prefix + 'faar_rank_trace')
        if torch.is_tensor(a) and torch.is_tensor(b) and a.dim() == 2 and b.dim() == 2 \
                and a.shape[1] == self.in_features and b.shape[0] == self.out_features and a.shape[0] == b.shape[1]:
            rows = trace.shape[0] if torch.is_tensor(trace) and trace.dim() == 2 else self.faar_rank_trace.shape[0]
            if a.shape[0] != self.rank or rows != self.faar_rank_trace.shape[0]:
                self._resize_in_place(a.shape[0], rows)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __getstate__(self) -> Dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), '__getstate__') else self.__dict__.copy()
        state = dict(state)
        state['_hooked'] = None
        state['_scaler_ref'] = None
        return state

    def extra_repr(self) -> str:
        return (f'in={self.in_features}, out={self.out_features}, rank={self.rank}/{self.initial_rank}, '
                f'task={self.task}, scale={self.scale}')


#: (unit, which, parameter) whose gradient arrived in the running backward; scored together
#: by :func:`_flush_scores` when the backward ends.
_PENDING: List[Tuple['LowRankUnit', int, torch.Tensor]] = []


def _score_hook(unit_ref: weakref.ref, which: int, param: torch.Tensor) -> None:
    unit = unit_ref()
    if unit is None or param.grad is None or not unit.scoring:
        return
    if param is not (unit.faar_A if which == 0 else unit.faar_B):  # a pruned-away parameter
        return
    if not _PENDING:   # still inside backward: before the optimizer step and DDP's finalisation
        torch.autograd.Variable._execution_engine.queue_callback(_flush_scores)
    _PENDING.append((unit, which, param))


@torch.compiler.disable
def ensure_score_hooks(module: nn.Module, args: Any = None) -> None:
    """Forward pre-hook (on the backbone): the scoring hooks of every unit, in eager code.

    Registering them is a side effect on Python state; inside a compiled forward it would make
    the graph's guards fail on the next call (a recompile every time the hooks change), so a
    compiled backbone leaves it to this hook, which the compiler skips.
    """
    for m in module.modules():
        if isinstance(m, LowRankUnit):
            m.ensure_hooks_if_scoring()


def _flush_scores() -> None:
    pending = list(_PENDING)
    _PENDING.clear()
    accumulate_scores([(u, which, p, p.grad) for u, which, p in pending if p.grad is not None])


def _layout(units: List['LowRankUnit'], rows: List[int], device: torch.device):
    """Per-element constants of a batch of score rows (cached by the rows' make-up)."""
    key = (tuple((r, u.beta, u.score_inactive, u.score_norm) for u, r in zip(units, rows)), device)
    hit = _LAYOUTS.get(key)
    if hit is None:
        seg = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
        pos = torch.cat([torch.arange(r) for r in rows])
        width = max(rows)
        f32 = dict(dtype=torch.float32)
        hit = dict(
            seg=seg.to(device), pos=pos.to(device), padded=(seg * width + pos).to(device), width=width,
            beta=torch.tensor([u.beta for u in units], **f32)[seg].to(device),
            # 1 - beta in float64 first, then rounded, as ``(1.0 - beta) * s`` with a Python float
            one_minus_beta=torch.tensor([1.0 - u.beta for u in units], **f32)[seg].to(device),
            score_all=torch.tensor([u.score_inactive != 'keep' for u in units])[seg].to(device),
            normalise=torch.tensor([u.score_norm == 'active_mean' for u in units])[seg].to(device))
        if len(_LAYOUTS) > 64:
            _LAYOUTS.clear()
        _LAYOUTS[key] = hit
    return hit


_LAYOUTS: Dict[tuple, dict] = {}


def _score_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)


@torch.no_grad()
def accumulate_scores(entries: List[Tuple['LowRankUnit', int, torch.Tensor, torch.Tensor]]) -> None:
    """EMA-update the score rows of many units at once (one backward's worth).

    Each entry ``(unit, which, param, grad)`` is one row of :meth:`LowRankUnit.accumulate_scores`
    (``which`` 0: ``faar_A``, rows are components; 1: ``faar_B``, columns). Only the
    per-parameter products ``<theta_i, dL/dtheta_i>`` are computed one parameter at a time; the
    normalisation, the EMA and the counts run once on all rows concatenated, so a step costs
    a few dozen operators instead of ~30 per parameter (FAAR's Swin-T step issued ~9k).

    Score of component ``i``: ``|<theta_i, dL/dtheta_i>|`` (divided by the AMP loss scale);
    with ``score_norm='active_mean'`` divided by the row's mean over the finite scores of the
    active prefix; rows outside the prefix are left alone unless ``score_inactive='zero'``;
    non-finite scores are skipped.
    """
    groups: Dict[tuple, list] = {}
    for e in entries:
        unit = e[0]
        scaler = unit._scaler_ref() if unit._scaler_ref is not None else None
        scale = getattr(scaler, '_scale', None) if scaler is not None else None
        groups.setdefault((e[3].device, id(scale) if torch.is_tensor(scale) else None), [scale]).append(e)
    for (device, _), (scale, *group) in groups.items():
        units = [u for u, _, _, _ in group]
        rows = [p.shape[0] if which == 0 else p.shape[1] for _, which, p, _ in group]
        lay = _layout(units, rows, device)
        # at least float32 (half-precision parameters), float64 for a float64 model
        s = torch.cat([(p.detach().to(_score_dtype(p)) * g.to(_score_dtype(p))).sum(dim=1 if which == 0 else 0)
                       for _, which, p, g in group]).abs()
        if torch.is_tensor(scale):
            s = s / scale.to(s.device, s.dtype)
        ranks = [u.active_rank for u in units]
        if any(torch.is_tensor(b) for b in ranks):
            b_rows = torch.stack([torch.as_tensor(b) for b in ranks]).to(device)
        else:
            b_rows = torch.tensor(ranks, device=device)
        in_prefix = lay['pos'] < b_rows[lay['seg']]
        ok = (in_prefix | lay['score_all']) & torch.isfinite(s)
        counted = in_prefix & ok
        # per-row mean over the counted entries (rows padded to the widest one, summed in order)
        width, n_rows = lay['width'], len(rows)
        sums = s.new_zeros(n_rows * width).index_copy_(0, lay['padded'], torch.where(counted, s, 0.0))
        counts = s.new_zeros(n_rows * width).index_copy_(0, lay['padded'], counted.to(s.dtype))
        ref = (sums.view(n_rows, width).sum(1) / counts.view(n_rows, width).sum(1).clamp_min(1))[lay['seg']]
        s = torch.where(lay['normalise'] & (ref > 0), s / ref.clamp_min(torch.finfo(s.dtype).tiny), s)
        emas = [u.faar_score_ema[which] for u, which, _, _ in group]
        counts_rows = [u.faar_score_count[which] for u, which, _, _ in group]
        ema = torch.cat(emas)
        new_ema = torch.where(ok, lay['beta'] * ema + lay['one_minus_beta'] * torch.nan_to_num(s), ema)
        new_count = torch.cat(counts_rows) + ok.to(counts_rows[0].dtype)
        torch._foreach_copy_(emas, list(new_ema.split(rows)))
        torch._foreach_copy_(counts_rows, list(new_count.split(rows)))


# ------------------------------------------------------------------- decisions
def select_components(scores: torch.Tensor, rho: float = 0.95, min_rank: int = 1, keep_order: str = 'index',
                      rule: str = 'coverage', gain_threshold: float = 0.25,
                      scored: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The components one prune keeps.

    ``rule='coverage'`` (the paper's text): the fewest top-scored components whose scores cover
    ``rho`` of the total. ``rule='gain'``: walking down the scores from the highest, keep a
    component while its score (the marginal gain in covered score) is at least
    ``gain_threshold`` times the mean score of the unit's scored components. Coverage always cuts the
    lowest few percent of the mass, so it keeps cutting a flat spectrum; the gain rule cuts
    only components that are small next to the typical one, and stops once none is.

    Args:
        scores: non-negative ``[r]``.
        rho: fraction of the total score to cover, in ``(0, 1]`` (``'coverage'``).
        min_rank: keep at least this many.
        keep_order: ``'index'`` (ascending indices) or ``'score'`` (descending score).
        rule: ``'coverage'`` or ``'gain'``.
        gain_threshold: the ``'gain'`` rule's threshold.
        scored: bool ``[r]``, components that have a score at all (the mean is over those);
            ``None``: all.

    Returns:
        int64 indices of the kept components. All of them when the total is not positive.
    """
    scores = scores.detach().double().cpu()
    r = scores.numel()
    total = float(scores.sum())
    if not math.isfinite(total) or total <= 0.0:
        return torch.arange(r)
    order = torch.sort(scores, descending=True, stable=True).indices
    if rule == 'coverage':
        cum = torch.cumsum(scores[order], 0)
        target = rho * total * (1.0 - 1e-6)  # a cover within (float32) rounding of rho counts
        k = int(torch.searchsorted(cum, torch.tensor([target], dtype=cum.dtype)).item()) + 1
    elif rule == 'gain':
        mask = torch.ones(r, dtype=torch.bool) if scored is None else scored.bool().cpu()
        ranked = scores[order]
        k = int(mask.sum()) or r
        while True:  # fixed point: every kept score >= threshold x the mean kept score
            ref = float(ranked[:k].mean())
            k_new = max(1, int((ranked[:k] >= gain_threshold * ref * (1.0 - 1e-6)).sum()))
            if k_new == k:
                break
            k = k_new
    else:
        raise ValueError(f"rule must be 'coverage' or 'gain', got {rule!r}")
    k = max(min(k, r), min(min_rank, r))
    kept = order[:k]
    return torch.sort(kept).values if keep_order == 'index' else kept


def iter_units(model: nn.Module) -> Iterator[Tuple[str, LowRankUnit]]:
    """``(name, unit)`` for every :class:`LowRankUnit` of ``model`` (wrappers unwrapped), in order."""
    if is_model_wrapper(model) or isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    for name, m in model.named_modules():
        if isinstance(m, LowRankUnit):
            yield name, m


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def prune_model(model: nn.Module, optimizers: Iterable[torch.optim.Optimizer] = (), step: int = 0,
                by_epoch: bool = True) -> Dict[str, Tuple[int, int]]:
    """One PDRS prune of every unit in ``model``; identical on every DDP rank.

    Scores are all-reduced (mean over ranks), each unit keeps :func:`select_components` of its
    scores, and rank 0's decision is broadcast so every rank cuts the same components.

    Args:
        model: the model (a DDP wrapper is unwrapped; rebuild it afterwards with
            :func:`rebuild_ddp`).
        optimizers: torch optimizers to fix up (references and state).
        step: epoch / iteration count recorded in the rank history.
        by_epoch: whether ``step`` counts epochs.

    Returns:
        ``{unit name: (old rank, new rank)}`` for the units that changed. Each unit's
        ``kept_flatness`` is set to its lowest kept score over the mean kept score.
    """
    units = [(n, u) for n, u in iter_units(model) if u.scoring]
    if not units:
        return {}
    scores = torch.cat([u.importance().float() for _, u in units])
    if _distributed():
        dist.all_reduce(scores, op=dist.ReduceOp.SUM)
        scores = scores / dist.get_world_size()
    # decision: per component, its new position (or -1 if dropped)
    code = torch.full((scores.numel(),), -1, dtype=torch.long)
    offset = 0
    for _, u in units:
        r = u.rank
        keep = select_components(scores[offset:offset + r], u.rho, u.min_rank, u.keep_order, rule=u.prune_rule,
                                 gain_threshold=u.gain_threshold,
                                 scored=(u.faar_score_count.sum(0) > 0).cpu())
        code[offset + keep] = torch.arange(keep.numel())
        offset += r
    if _distributed():
        code = code.to(scores.device)
        dist.broadcast(code, src=0)
        code = code.cpu()
    optimizers = list(optimizers)
    changed: Dict[str, Tuple[int, int]] = {}
    offset = 0
    for name, u in units:
        r = u.rank
        c = code[offset:offset + r]
        offset += r
        kept = torch.nonzero(c >= 0).flatten()
        keep = kept[torch.argsort(c[kept])]
        kept_scores = scores[offset - r:offset][keep.to(scores.device)].double()
        mean = float(kept_scores.mean()) if keep.numel() else 0.0
        u.kept_flatness = float(kept_scores.min()) / mean if mean > 0 else 1.0
        changes = u.prune(keep, step, by_epoch)
        for old, new, index, dim in changes:
            for opt in optimizers:
                replace_in_optimizer(opt, old, new, index, dim)
        if changes:
            changed[name] = (r, u.rank)
    return changed


@torch.no_grad()
def truncate_ranks(model: nn.Module, rank: int, step: int = 0) -> None:
    """Cut every unit to its first ``min(rank, r)`` components (no optimizer): for counting."""
    for _, u in iter_units(model):
        k = min(rank, u.rank)
        u.prune(torch.arange(k), step)


def replace_in_optimizer(optimizer: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor,
                         index: torch.Tensor, dim: int) -> None:
    """Swap ``old`` for ``new`` in ``optimizer`` and slice its state to the kept components.

    Every state tensor with ``old``'s shape (AdamW ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``; SGD ``momentum_buffer``) is ``index_select``-ed along ``dim``; scalars
    (``step``) are kept.
    """
    for group in optimizer.param_groups:
        params = group['params']
        for j, p in enumerate(params):
            if p is old:
                params[j] = new
    state = optimizer.state.pop(old, None)
    if state is not None:
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == old.shape:
                value = value.index_select(dim, index.to(value.device))
            new_state[key] = value
        optimizer.state[new] = new_state


def torch_optimizers(optim_wrapper: Any) -> List[torch.optim.Optimizer]:
    """The torch optimizers inside an mmengine ``OptimWrapper`` / ``OptimWrapperDict`` (or one)."""
    if optim_wrapper is None:
        return []
    if isinstance(optim_wrapper, torch.optim.Optimizer):
        return [optim_wrapper]
    if hasattr(optim_wrapper, 'optim_wrappers'):  # OptimWrapperDict
        return [w.optimizer for w in optim_wrapper.optim_wrappers.values()]
    opt = getattr(optim_wrapper, 'optimizer', None)
    return [opt] if isinstance(opt, torch.optim.Optimizer) else []


# ------------------------------------------------------------------------ DDP
def _ddp_kwargs(ddp: nn.parallel.DistributedDataParallel) -> Dict[str, Any]:
    accepted = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    kw: Dict[str, Any] = dict(device_ids=ddp.device_ids, output_device=ddp.output_device, dim=ddp.dim,
                              process_group=ddp.process_group, find_unused_parameters=ddp.find_unused_parameters,
                              gradient_as_bucket_view=ddp.gradient_as_bucket_view, static_graph=ddp.static_graph)
    if 'forward_sync_buffers' in accepted and hasattr(ddp, 'forward_sync_buffers'):
        kw['forward_sync_buffers'] = ddp.forward_sync_buffers
    elif hasattr(ddp, 'broadcast_buffers'):
        kw['broadcast_buffers'] = ddp.broadcast_buffers
    if hasattr(ddp, 'bucket_bytes_cap'):
        kw['bucket_cap_mb'] = ddp.bucket_bytes_cap / 2 ** 20
    if getattr(ddp, 'mixed_precision', None) is not None:
        kw['mixed_precision'] = ddp.mixed_precision
    kw = {k: v for k, v in kw.items() if k in accepted}
    if hasattr(ddp, 'detect_anomalous_params'):  # mmengine's MMDistributedDataParallel
        kw['detect_anomalous_params'] = ddp.detect_anomalous_params
    return kw


def rebuild_ddp(ddp: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A fresh wrapper of the same class and options around ``ddp.module``.

    Needed after parameter shapes changed: DDP's buckets were built for the old parameters. The
    old wrapper's gradient hooks become no-ops (they fire only after its own forward); drop it
    (see :func:`rewrap_runner_model`, which releases it before building the new one).
    """
    if not isinstance(ddp, nn.parallel.DistributedDataParallel):
        raise NotImplementedError(f'PDRS can re-wrap DistributedDataParallel only, not {type(ddp).__name__}')
    cls, module, kwargs = type(ddp), ddp.module, _ddp_kwargs(ddp)
    del ddp
    gc.collect()  # free the old reducer (it holds gradient accumulators of the old shapes)
    return cls(module=module, **kwargs)


def rewrap_runner_model(runner: Any) -> bool:
    """Rebuild ``runner.model`` if it is a DDP wrapper. Returns whether it did."""
    model = runner.model
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return False
    cls, module, kwargs = type(model), model.module, _ddp_kwargs(model)
    runner.model = module  # no reference to the old wrapper may survive
    del model
    gc.collect()
    runner.model = cls(module=module, **kwargs)
    return True


def ignore_pdrs_buffers_in_ddp(model: nn.Module) -> bool:
    """Keep DDP from broadcasting the PDRS score buffers (each rank scores its own gradients).

    DDP with ``broadcast_buffers=True`` would copy rank 0's EMA over every rank's before each
    forward. Adds the buffers' names to ``module._ddp_params_and_buffers_to_ignore`` of the
    wrapped module; takes effect when the wrapper is (re)built.

    Returns:
        whether ``model`` is a DDP wrapper whose ignore list had to grow (re-wrap it).
    """
    if not isinstance(model, nn.parallel.DistributedDataParallel):
        return False
    module = model.module
    names = {f'{n}.{b}' for n, _ in iter_units(module) for b in ('faar_score_ema', 'faar_score_count')}
    current = set(getattr(module, '_ddp_params_and_buffers_to_ignore', ()))
    if names <= current:
        return False
    module._ddp_params_and_buffers_to_ignore = sorted(current | names)
    return True


# ------------------------------------------------------------------- schedule
STOP_RULES = ('stable', 'loss', 'stable-or-loss', 'never')


def warmup_end(param_schedulers: Any, by_epoch: bool, iters_per_epoch: Optional[int]) -> Optional[int]:
    """Where the lr warm-up ends, counted in epochs (``by_epoch``) or iterations; ``None`` if none.

    A warm-up is a scheduler with ``start_factor < end_factor`` (mmengine's ``LinearLR``, also
    when ``convert_to_iter_based``), ending at its ``end``, or one with a warm-up prefix of
    ``warmup_iters > 0`` iterations (:class:`mtlbench.lr_schedule.ReferenceCosineLR`, the
    reference recipe's), ending at ``begin + warmup_iters``; converted to the caller's unit.
    """
    if param_schedulers is None:
        return None
    if isinstance(param_schedulers, dict):
        param_schedulers = [s for v in param_schedulers.values() for s in (v if isinstance(v, list) else [v])]
    out = None
    for sched in param_schedulers:
        start, stop = getattr(sched, 'start_factor', None), getattr(sched, 'end_factor', None)
        end = getattr(sched, 'end', None)
        prefix = getattr(sched, 'warmup_iters', None)
        if isinstance(prefix, int) and prefix > 0:  # a warm-up prefix, counted in iterations
            end, sched_by_epoch = int(getattr(sched, 'begin', 0)) + prefix, False
        elif start is None or stop is None or end is None or not start < stop or end >= 2 ** 31:
            continue
        else:
            sched_by_epoch = bool(getattr(sched, 'by_epoch', True))
        end = int(end)
        if sched_by_epoch != by_epoch:
            if not iters_per_epoch:
                continue
            end = math.ceil(end / iters_per_epoch) if by_epoch else end * iters_per_epoch
        out = end if out is None else max(out, end)
    return out


class PruneSchedule:
    """When PDRS prunes, and when it stops for good (used by :class:`PDRSHook`; usable alone).

    A prune is due every ``interval`` epochs (iterations) from ``begin`` to ``end``, until the
    stop rule fires:

    * ``'stable'``: for ``patience`` prunes in a row, no rank changed and every unit's kept
      scores were flat (lowest kept score >= ``flatness`` x the mean kept score: no component
      still fading out), counted only once some rank has changed (before that, flat scores
      mean the components have not separated yet);
    * ``'loss'``: the mean training loss since the last prune, which changed ranks, is more than
      ``loss_tol`` (relative) above the mean over the interval before it: pruning began to cost
      loss (that prune is kept; no further one happens);
    * ``'stable-or-loss'``: whichever fires first; ``'never'``: prune until ``end``.

    When it stops and ``unmask_after_stop``, every unit trains on at its kept rank without
    prefix masking and without scoring (:func:`freeze_ranks`): the masking that ranks the
    components would otherwise keep costing fit for the rest of training.

    Args:
        interval, begin, end: the schedule (``begin >= 1``; ``end`` ``None`` for no limit).
        stop: one of :data:`STOP_RULES`.
        patience: unchanged prunes in a row for ``'stable'``.
        flatness: lowest over mean kept score that counts as settled, for ``'stable'``.
        loss_tol: relative loss rise for ``'loss'``.
        unmask_after_stop: train without prefix masking once pruning stopped.
    """

    def __init__(self, interval: int = 1, begin: int = 1, end: Optional[int] = None, stop: str = 'stable',
                 patience: int = 3, loss_tol: float = 0.05, unmask_after_stop: bool = True,
                 flatness: float = 0.4) -> None:
        if stop not in STOP_RULES:
            raise ValueError(f'stop must be one of {STOP_RULES}, got {stop!r}')
        self.interval, self.begin, self.end = int(interval), int(begin), end
        self.stop, self.patience, self.loss_tol = stop, int(patience), float(loss_tol)
        self.unmask_after_stop = bool(unmask_after_stop)
        self.flatness = float(flatness)
        self.stopped = False
        self.stop_step: Optional[int] = None
        self.stop_reason: Optional[str] = None
        self.prunes = 0
        self.unchanged = 0
        self.last_changed = False
        self.changed_once = False
        self.prev_loss: Optional[float] = None
        self.loss_sum, self.loss_n = 0.0, 0

    def due(self, count: int) -> bool:
        if self.stopped or count < self.begin or (self.end is not None and count > self.end):
            return False
        return (count - self.begin) % self.interval == 0

    def observe_loss(self, loss: Any) -> None:
        """Add one training iteration's loss (a float or tensor; non-finite ones are ignored)."""
        if loss is None:
            return
        value = float(loss.detach().float().mean()) if torch.is_tensor(loss) else float(loss)
        if math.isfinite(value):
            self.loss_sum += value
            self.loss_n += 1

    def _interval_loss(self) -> Optional[float]:
        loss = self.loss_sum / self.loss_n if self.loss_n else None
        if loss is not None and _distributed():
            t = torch.tensor([loss], dtype=torch.float64)
            if dist.get_backend() == 'nccl':
                t = t.cuda()
            dist.all_reduce(t)
            loss = float(t.item()) / dist.get_world_size()
        self.loss_sum, self.loss_n = 0.0, 0
        return loss

    def step(self, model: nn.Module, optimizers: Iterable[torch.optim.Optimizer], count: int,
             by_epoch: bool = True) -> Dict[str, Tuple[int, int]]:
        """Prune if due at ``count`` (and the loss rule does not stop it first).

        Returns:
            :func:`prune_model`'s ``{unit: (old rank, new rank)}`` (empty if nothing changed).
        """
        if not self.due(count):
            return {}
        loss = self._interval_loss()
        if self.stop in ('loss', 'stable-or-loss') and self.last_changed and loss is not None \
                and self.prev_loss is not None and loss > self.prev_loss * (1.0 + self.loss_tol):
            self.finish(model, count, 'loss')
            return {}
        changed = prune_model(model, optimizers, count, by_epoch)
        self.prunes += 1
        self.last_changed = bool(changed)
        flat = all(getattr(u, 'kept_flatness', 1.0) >= self.flatness for _, u in iter_units(model) if u.scoring)
        self.changed_once = self.changed_once or bool(changed)
        # Before any rank moved, flat scores only say the components have not separated yet.
        self.unchanged = self.unchanged + 1 if not changed and flat and self.changed_once else 0
        self.prev_loss = loss
        if self.stop in ('stable', 'stable-or-loss') and self.unchanged >= self.patience:
            self.finish(model, count, 'stable')
        return changed

    def finish(self, model: nn.Module, count: int, reason: str) -> None:
        """Stop pruning for good (and unmask, if so configured)."""
        self.stopped, self.stop_step, self.stop_reason = True, int(count), reason
        if self.unmask_after_stop:
            freeze_ranks(model)

    def state_dict(self) -> Dict[str, Any]:
        keys = ('begin', 'stopped', 'stop_step', 'stop_reason', 'prunes', 'unchanged', 'last_changed', 'changed_once',
                'prev_loss', 'loss_sum', 'loss_n')
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: Dict[str, Any], model: Optional[nn.Module] = None) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        if self.stopped and self.unmask_after_stop and model is not None:
            freeze_ranks(model)


def freeze_ranks(model: nn.Module) -> None:
    """Every unit trains on at its current rank: no prefix masking, no scoring."""
    for _, u in iter_units(model):
        u.prefix_masking = False
        u.scoring = False
        u.active_rank = u.rank


# ----------------------------------------------------------------------- hook
@HOOKS.register_module()
class PDRSHook(Hook):
    """Prunes FAAR's adapters at the end of every ``interval`` epochs (or iterations) until the
    stop rule fires (:class:`PruneSchedule`).

    Runs before the ``CheckpointHook`` (priority ``NORMAL`` < ``VERY_LOW``), so an epoch's
    checkpoint holds the pruned model and the matching optimizer state; the schedule's state
    (stopped or not, the loss of the last interval) goes into the checkpoint's ``meta``, so a
    resumed run continues exactly. Re-wraps DDP after every prune, and in ``before_train`` when
    a pruned checkpoint was loaded into a model wrapped at the initial rank.

    Args:
        interval: prune every ``interval`` epochs (iterations).
        by_epoch: count in epochs (``after_train_epoch``) or iterations (``after_train_iter``).
        begin: first prune after ``begin`` epochs (iterations); ``None``: where the runner's lr
            warm-up ends (:func:`warmup_end`; 1 without a warm-up).
        end: no prune after ``end`` epochs (iterations); ``None`` for no limit.
        stop, patience, loss_tol, unmask_after_stop, flatness: the stop rule (:class:`PruneSchedule`).

    Example:
        >>> custom_hooks = [dict(type='PDRSHook', interval=1, by_epoch=True, stop='stable')]
    """
    priority = 'NORMAL'

    def __init__(self, interval: int = 1, by_epoch: bool = True, begin: Optional[int] = None,
                 end: Optional[int] = None, stop: str = 'stable', patience: int = 3, loss_tol: float = 0.05,
                 unmask_after_stop: bool = True, flatness: float = 0.4) -> None:
        self.interval = int(interval)
        self.by_epoch = bool(by_epoch)
        self.begin = begin
        self.end = end
        self.schedule = PruneSchedule(interval, 1 if begin is None else begin, end, stop, patience, loss_tol,
                                      unmask_after_stop, flatness)
        self._loaded: Optional[Dict[str, Any]] = None

    def _due(self, count: int) -> bool:
        return self.schedule.due(count)

    def before_train(self, runner: Any) -> None:
        units = list(iter_units(runner.model))
        if not units:
            print_log('PDRSHook: the model has no FAAR low-rank units; nothing to prune', logger='current',
                      level=logging.WARNING)
            return
        if self.begin is None:
            loader = getattr(runner, 'train_dataloader', None)
            try:
                per_epoch = len(loader) if loader is not None else None
            except TypeError:
                per_epoch = None
            end = warmup_end(getattr(runner, 'param_schedulers', None), self.by_epoch, per_epoch)
            self.schedule.begin = max(1, end or 1)
        if self._loaded is not None:
            self.schedule.load_state_dict(self._loaded, runner.model)
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        for _, u in units:
            u.set_grad_scaler(scaler)
        added = ignore_pdrs_buffers_in_ddp(runner.model)
        resized = any(u.resize_count for _, u in units)
        if (added or resized) and rewrap_runner_model(runner):
            why = 'resized (pruned) adapters' if resized else 'PDRS score buffers kept rank-local'
            print_log(f'PDRSHook: re-wrapped DDP ({why})', logger='current')
        unit = 'epoch' if self.by_epoch else 'iter'
        state = (f'stopped at {unit} {self.schedule.stop_step} ({self.schedule.stop_reason})' if self.schedule.stopped
                 else f'first prune after {unit} {self.schedule.begin}, stop rule {self.schedule.stop!r}')
        print_log(f'PDRSHook: {len(units)} adapters, average rank {average_rank(runner.model):.2f}; {state}',
                  logger='current')

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if isinstance(outputs, dict):
            self.schedule.observe_loss(outputs.get('loss'))
        if not self.by_epoch and self._due(runner.iter + 1):
            self._prune(runner, runner.iter + 1)

    def after_train_epoch(self, runner: Any) -> None:
        if self.by_epoch and self._due(runner.epoch + 1):
            self._prune(runner, runner.epoch + 1)

    def _prune(self, runner: Any, step: int) -> None:
        changed = self.schedule.step(runner.model, torch_optimizers(runner.optim_wrapper), step, self.by_epoch)
        if changed:
            rewrap_runner_model(runner)
        unit = 'epoch' if self.by_epoch else 'iter'
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = model.param_breakdown()['total_trainable'] if hasattr(model, 'param_breakdown') else None
        print_log(f'PDRS after {unit} {step}: {len(changed)} adapters shrank, average rank '
                  f'{average_rank(model):.2f}' + (f', trainable params {params:,}' if params is not None else ''),
                  logger='current')
        if self.schedule.stopped:
            print_log(f'PDRS stopped after {unit} {step} ({self.schedule.stop_reason}); training on at the kept '
                      f'ranks' + (' without prefix masking' if self.schedule.unmask_after_stop else ''),
                      logger='current')

    def before_save_checkpoint(self, runner: Any, checkpoint: Dict[str, Any]) -> None:
        checkpoint.setdefault('meta', {})['pdrs_schedule'] = self.schedule.state_dict()

    def after_load_checkpoint(self, runner: Any, checkpoint: Dict[str, Any]) -> None:
        state = (checkpoint.get('meta') or {}).get('pdrs_schedule')
        if state is not None:
            self._loaded = dict(state)
            if self.begin is not None:
                self._loaded.pop('begin', None)
            self.schedule.load_state_dict(self._loaded, runner.model)

    def after_train(self, runner: Any) -> None:
        for _, u in iter_units(runner.model):
            u.set_grad_scaler(None)
        print_log('PDRS final ranks:\n' + format_rank_table(runner.model), logger='current')


# -------------------------------------------------------------------- history
def _unit_site(name: str) -> str:
    parts = name.split('.')
    while parts and (parts[-1].isdigit() or parts[-1].startswith('faar_')):
        parts.pop()
    if parts and parts[0] == 'backbone':
        parts.pop(0)
    return '.'.join(parts)


def rank_history(model: nn.Module) -> List[Dict[str, Any]]:
    """Every rank change of every adapter: ``[{'epoch' | 'iter': n, 'layer', 'task', 'rank'}, ...]``.

    The first entry of each adapter is its initial rank at ``epoch`` 0.
    """
    out = []
    for name, u in iter_units(model):
        layer = _unit_site(name)
        for step, rank, by_epoch in u.faar_rank_trace.tolist():
            out.append({'epoch' if by_epoch else 'iter': int(step), 'layer': layer, 'task': u.task, 'rank': int(rank)})
    return out


def final_ranks(model: nn.Module) -> Dict[str, Dict[str, int]]:
    """``{layer: {task or 'shared': rank}}`` now."""
    out: Dict[str, Dict[str, int]] = {}
    for name, u in iter_units(model):
        out.setdefault(_unit_site(name), {})[u.task] = u.rank
    return out


def average_rank(model: nn.Module) -> float:
    """Mean current rank over all adapters (0 if none)."""
    ranks = [u.rank for _, u in iter_units(model)]
    return sum(ranks) / len(ranks) if ranks else 0.0


def format_rank_table(model_or_table: Any) -> str:
    """A text table layer x task -> rank (current ranks of a model, or a :func:`final_ranks` dict)."""
    from mtlbench.ranks import format_rank_table as _format
    return _format(model_or_table if isinstance(model_or_table, dict) else final_ranks(model_or_table))


def plot_rank_history(model_or_history: Any, path: str) -> str:
    """Plot a model's (or a rank history list's) ranks to a PNG (see :mod:`mtlbench.ranks`)."""
    from mtlbench.ranks import plot_rank_history as _plot
    return _plot(model_or_history if isinstance(model_or_history, list) else rank_history(model_or_history), path)
