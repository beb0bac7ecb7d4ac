"""FAAR: frequency-aware multi-task fine-tuning with automatic rank selection.

Fontana, Spratling, Shi. "FAAR: Efficient Frequency-Aware Multi-Task Fine-Tuning via Automatic
Rank Selection", CVPR 2026, arXiv 2603.20403. No public code was available: this package is an
independent reconstruction from the paper's description (``shared/reference/methods.md``) on
mtlbench's stream-major Swin-T + HRNet pipeline, and it is the reference implementation here.

Three parts, each switchable for the paper's ablations:

* **DoRA adapters** (:mod:`.dora`; DoRA: arXiv 2402.09353) on ``qkv``, ``proj``, ``fc1``,
  ``fc2``: one shared adapter per linear in every block except the last block of each stage,
  one adapter per task in those last blocks (blocks 2, 4, 10, 12 of Swin-T), initial rank 64.
  Magnitude ``m`` per output unit starts at the frozen weight's row norms and ``B = 0``, so the
  adapted backbone starts as the pretrained one (tested).
* **PDRS** (:mod:`.pdrs`): random prefix masking in training, per-component scores
  ``1/2 (|<A_i, dL/dA_i>| + |<B_i, dL/dB_i>|)`` read by gradient hooks, EMA-smoothed; from the
  end of the lr warm-up, at the end of every epoch each adapter drops the components its prune
  rule rejects, for good (real tensors shrink; optimizer state, checkpoints, resume and DDP
  handled), until the ranks have settled; then training goes on at the kept ranks without
  masking. The paper's rule (keep the top components covering ``rho = 0.95`` of the score) is
  ``prune_rule='coverage'``; the default ``'gain'`` rule is ours (see below). :class:`~.pdrs.PDRSHook` (from :meth:`FAAR.runner_hooks`) does it in
  mmengine. ``record_extras`` gives the per-adapter ``rank_history``;
  :func:`~.pdrs.format_rank_table` / :func:`~.pdrs.plot_rank_history` show it.
* **TS-PD** (:mod:`.tspd`) via :meth:`FAAR.adapt_decoder`: per task and resolution a spectral
  filter with scale and shift (CW-SP) and the cross-task spectral consensus (XT-Cons), in front
  of the HRNet heads; starts as the identity (tested).

Trainable besides the method: patch embedding, LayerNorms, relative-position tables and the
decoder. The PatchMerging reductions are **frozen** (``train_reductions=False``): the paper's
3.38M on PASCAL is out of reach with their 1.55M trainable.

Parameter counts (PASCAL, 4 tasks, 448x448, defaults; ``param_breakdown``): at the initial rank
64, 12,266,890 trainable. With every adapter at rank 5 (the paper's final average rank is
about 5): PASCAL 3,385,738 (paper 3.38M, +0.2%), NYUDv2 2,654,906 (paper 2.85M, -6.8%). The real
count depends on the ranks PDRS leaves, so a run reports it after training with the per-layer
rank table.

Layout (``task_kinds``, ``task_block_shared``, ``tspd_filter_channels``), chosen from the counts
of every layout on both datasets (``benchmarks/faar_layouts.py``, ``results/faar_layouts.md``;
every adapter at rank 5, TS-PD filter per channel unless said):

=========================================== =========== ========== =========
layout                                       PASCAL      NYUDv2     gap
=========================================== =========== ========== =========
fork at qkv, shared stream frozen             3,325,930   2,595,098   730,832
**fork at qkv, shared stream adapted**        3,385,738   2,654,906   730,832
fork at proj, shared stream frozen            3,226,570   2,528,858   697,712
fork at proj, shared stream adapted (MTLoRA)  3,270,922   2,573,210   697,712
fork at qkv, adapted, channel-shared filter   2,855,530   2,257,250   598,280
paper                                         3.38M       2.85M       0.53M
=========================================== =========== ========== =========

* The shared stream of a task block keeps a shared adapter (``task_block_shared='adapter'``):
  the MTLoRA r=64 base that the paper's ablation adds each part to does so (its ``MTLoRALinear``
  in the last block of a stage carries the shared LoRA for the shared stream next to the task
  LoRAs), the paper says nothing that removes it, and it gives the closest counts on both
  datasets (+0.2% / -6.8%; the former default ``'frozen'``: -1.6% / -8.9%).
* Task streams fork at ``qkv`` (``task_kinds``, all four linears): the paper puts the adapters of
  a stage's last block per task without exception, and forking at ``proj`` as MTLoRA does
  lowers the counts by 0.11M / 0.08M (-3.2% / -9.7%).
* The TS-PD filter is per channel (``tspd_filter_channels='per_channel'``): at an average rank of
  about 5 the paper's 3.38M needs it; channel-shared filters give 2.86M (-15.5%), and would need
  a uniform rank of about 8.5 to reach 3.38M. The PASCAL - NYUD gap (0.53M in the paper) would
  argue the other way if both datasets ended at the same ranks (per task, the per-channel filter
  alone costs 137,636), but it cannot decide: PDRS ranks depend on the data, and the paper's own
  NYUDv2 counts do not follow the pipeline's per-task costs (its full fine-tuning rows differ by
  1.96M for one task whose decoder costs 0.47M here; its TADFormer has more parameters on
  NYUDv2 than on PASCAL). With equal ranks on both datasets no layout fits all the paper's
  figures: the exact fit asks for shared ranks of 18-23 and task ranks of 2-3 (table), against
  its average rank of about 5 and its finding that task-specific adapters keep more.

Not in paper (each one a :class:`~.config.FAARConfig` option):

* Adapted linears: ``qkv, proj, fc1, fc2`` (``kinds``) and, per task in the last blocks, all
  four (``task_kinds``): the task streams fork at ``qkv``, so attention in a last block runs per
  task stream. That costs compute: a 448x448 forward/backward took about 1.5x MTLoRA's CPU time
  (about 1.1x with ``task_kinds=('proj', 'fc1', 'fc2')``, MTLoRA's fork point).
* Ranks are capped at ``min(in_features, out_features)`` (only matters on the toy backbone).
* Task stream ``t`` of a task-adapted linear: ``W'_t x_t + b`` with task ``t``'s own DoRA weight
  on its own input (not MTLoRA's ``W x_shared + B_t A_t x_t``).
* Shared stream of a task block (it feeds the next stage): its own shared DoRA
  (``task_block_shared='adapter'``, MTLoRA-style; see the layout above), never in the backbone's
  final block, whose shared stream is unused; ``'frozen'`` gives it ``W x_0 + b``.
* Scale of ``B A``: a plain multiplier 4.0 (``scale``, as the pipeline's LoRA), constant under
  prefix masking (not rescaled by ``r / b``); dropout 0.05 on the low-rank path (``dropout``).
* DoRA norm: a constant in backward (``detach_norm=True``), as DoRA's paper (section 4.3)
  recommends and peft does (outputs and gradients checked against peft's ``DoraLinearLayer``);
  ``False`` gives the exact gradient through ``||W + s B A||``.
* PDRS prune rule and stop (evidence and the rank-recovery table in :mod:`.pdrs`; issue 13
  found the paper's literal rule over-prunes a flat spectrum and never stops): a component is
  kept while its score is at least ``gain_threshold = 0.25`` x the mean kept score
  (``prune_rule='gain'``; ``'coverage'`` with ``rho_shared`` / ``rho_task`` is the paper's
  text); each batch's scores are divided by their mean over the active prefix before the EMA
  (``score_norm='active_mean'``; ``'none'``); the first prune comes at the end of the lr
  warm-up (``prune_begin=None``; a number overrides); pruning stops for good once no rank
  changed and every unit's kept scores were flat (lowest >= ``prune_flatness = 0.4`` x mean) for
  ``prune_patience = 3`` prunes (``prune_stop='stable'``; ``'loss'``, ``'stable-or-loss'``,
  ``'never'``); then the adapters train at the kept ranks without prefix masking
  (``unmask_after_stop``), which brings the fit back to that of an unpruned adapter (0.56-0.90x
  its error in the benchmark, against 1.8-14x with masking to the end). ``record_extras`` reports
  the stop (``pdrs_stop``).
* PDRS details: EMA ``beta = 0.85`` with bias correction; components outside the prefix keep
  their EMA (``score_inactive``); kept components keep their order (``keep_order``);
  ``min_rank = 1``; prune after every epoch (``prune_interval``, ``prune_end``,
  ``prune_by_epoch=False`` for iteration schedules); under DDP each rank scores its own gradients (the score buffers are
  kept out of DDP's buffer broadcast), scores are averaged over ranks at prune time, rank 0's
  decision is broadcast, and the DDP wrapper is rebuilt after each prune. See :mod:`.pdrs`.
* TS-PD details: after the per-task channel downsampler (``tspd_position``), complex filters
  (``tspd_filter``) per channel (``tspd_filter_channels``), per-channel scale / shift, scalar ``alpha_low`` / ``alpha_high`` per task
  and resolution, XT-Cons on the CW-SP outputs, low-frequency disc of radius 0.25
  cycles/sample (``xtcons_radius``). See :mod:`.tspd`.

* Weight decay (``configs/faar/``): none on the DoRA magnitudes (per-task ones are 2-D, which
  the base recipe's 1-D exemption would miss) nor on TS-PD's parameters, which start at a
  non-zero identity; the low-rank ``A`` / ``B`` keep the recipe's 0.05.

Rank study (``benchmarks/faar_rank_study.py``, ``results/studies/faar_rank_study.md``): toy
Swin with random weights, synthetic PASCAL-Context (16 images, 128x128), every adapter at
initial rank 16, 14 epochs, seed 0; mean final rank of shared / task adapters and over stages
1-4 (one PDRS option changed at a time; indicative only, one seed on a toy):

==============================  ======  =====  =====================  ===============
setting                         shared  task   stages 1-4 (all)       stop
==============================  ======  =====  =====================  ===============
defaults                        8.5     9.5    9.1 / 9.3 / 9.0 / 9.2  none by ep. 14
``beta=0.5``                    6.6     6.6    6.8 / 6.9 / 6.2 / 6.4  none
``score_inactive='zero'``       2.9     3.0    2.5 / 3.1 / 3.1 / 3.1  none
``prune_stop='never'``          8.5     9.5    same as defaults       --
``beta=0.95``                   8.8     9.8    see results file       none
``prune_begin=4``               13.5    13.0   see results file       none
``prune_rule='coverage'``       6.7     6.6    see results file       none
==============================  ======  =====  =====================  ===============

Task adapters keep about one rank more than shared ones (the paper's Finding 1); with random
backbone weights the stages do not order. A shorter EMA (``beta=0.5``) prunes further (noisier
scores put more components under the gain threshold), and ``score_inactive='zero'`` penalises
the tail components that prefix masking rarely activates, cutting ranks to about 3: the
prefix-masking bias the issue describes, which the default ``'keep'`` avoids. In 14 epochs the
ranks were still changing (the last prune moved 8 adapters), so the ``'stable'`` rule had not
stopped and ``'never'`` gives the same ranks. A longer EMA (``beta=0.95``) keeps slightly more;
starting at epoch 4 leaves ranks near 13 after 10 prunes (the gain rule cuts a few components per
prune); the paper's coverage rule lands near 6.6, without a shared / task difference.

Ablation rows (``configs/faar/``): DoRA without PDRS (``pdrs=False, tspd=False``); PDRS with
LoRA (``adapter='lora', tspd=False``); PDRS + DoRA without TS-PD (``tspd=False``); TS-PD alone,
the paper's "+ TS-PD (2)" row, each part being added on its own to the MTLoRA r=64 base
(``faar-tspd``: ``adapter='lora', pdrs=False``, LoRA rank 64 in FAAR's layout); full FAAR
without XT-Cons (``xtcons=False``).
"""
from .config import FAARConfig
from .dora import FAARLinear, FAARTaskLinear, dora_coefficient
from .method import FAAR
from .pdrs import (STOP_RULES, LowRankUnit, PDRSHook, PruneSchedule, average_rank, final_ranks, format_rank_table,
                   freeze_ranks, ignore_pdrs_buffers_in_ddp, iter_units, plot_rank_history, prune_model, rank_history,
                   rebuild_ddp, replace_in_optimizer, rewrap_runner_model, select_components, torch_optimizers,
                   truncate_ranks, warmup_end)
from .tspd import SpectralScale, TaskSpectralPyramid, TSPDDecoder, low_frequency_mask

__all__ = ['FAAR', 'FAARConfig', 'FAARLinear', 'FAARTaskLinear', 'dora_coefficient', 'LowRankUnit', 'PDRSHook',
           'PruneSchedule', 'STOP_RULES', 'freeze_ranks', 'warmup_end',
           'select_components', 'iter_units', 'prune_model', 'truncate_ranks', 'replace_in_optimizer',
           'torch_optimizers', 'rebuild_ddp', 'rewrap_runner_model', 'ignore_pdrs_buffers_in_ddp', 'rank_history',
           'final_ranks', 'average_rank', 'format_rank_table', 'plot_rank_history', 'SpectralScale',
           'TaskSpectralPyramid', 'TSPDDecoder', 'low_frequency_mask']
