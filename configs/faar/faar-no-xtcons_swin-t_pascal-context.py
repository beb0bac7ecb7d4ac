_base_ = ['./faar-full_swin-t_pascal-context.py']
# Ablation "+ TS-PD": PDRS + DoRA + TS-PD without the cross-task consensus (CW-SP only).
model = dict(method=dict(xtcons=False))
