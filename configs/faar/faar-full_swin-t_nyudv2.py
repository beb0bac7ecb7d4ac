_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/nyudv2.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
# FAAR (arXiv 2603.20403): DoRA adapters (initial rank 64) + PDRS rank shrinking (every epoch
# from the end of the lr warm-up until the ranks settle, 'gain' rule; see methods/faar/pdrs.py)
# + TS-PD decoder with XT-Cons. PatchMerging reductions frozen. The PDRS hook comes from
# the method (Method.runner_hooks), not from this file.
model = dict(method=dict(type='faar', r=64, task_r=64, adapter='dora', pdrs=True, rho_shared=0.95, rho_task=0.95,
                         tspd=True, xtcons=True))
# No weight decay on what starts at a non-zero identity: DoRA magnitudes (1-D per task, like the
# norms the base recipe already exempts) and the TS-PD filters / scales / shifts / alphas.
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'magnitude': dict(decay_mult=0.0),
                                                     'decoder.tspd.': dict(decay_mult=0.0)}))
