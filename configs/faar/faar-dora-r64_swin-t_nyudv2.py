_base_ = ['./faar-full_swin-t_nyudv2.py']
# Ablation "+ DoRA (high rank)": DoRA adapters at rank 64, no PDRS (no prefix masking, no
# pruning), no TS-PD.
model = dict(method=dict(pdrs=False, tspd=False))
