_base_ = ['./faar-full_swin-t_pascal-context.py']
# Ablation "+ DoRA (high rank)": DoRA adapters at rank 64, no PDRS (no prefix masking, no
# pruning), no TS-PD.
model = dict(method=dict(pdrs=False, tspd=False))
# The paper's table row this config reproduces (`mtlbench reproduce`; results/reference/*.csv).
paper_rows = ['ablation: + DoRA (high rank)']
