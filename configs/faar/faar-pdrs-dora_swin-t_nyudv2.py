_base_ = ['./faar-full_swin-t_nyudv2.py']
# Ablation "+ PDRS w/ DoRA": DoRA adapters with PDRS, no TS-PD.
model = dict(method=dict(tspd=False))
