_base_ = ['./faar-full_swin-t_pascal-context.py']
# Ablation "w/o XT-Cons": full FAAR (PDRS + DoRA + TS-PD) without the cross-task consensus
# (CW-SP only). Not the paper's "+ TS-PD (2)" row, which is TS-PD alone: faar-tspd_swin-t_*.py.
model = dict(method=dict(xtcons=False))
