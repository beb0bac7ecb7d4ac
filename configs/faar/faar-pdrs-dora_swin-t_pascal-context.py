_base_ = ['./faar-full_swin-t_pascal-context.py']
# Ablation "+ PDRS w/ DoRA": DoRA adapters with PDRS, no TS-PD.
model = dict(method=dict(tspd=False))
# The paper's table row this config reproduces (`mtlbench reproduce`; results/reference/*.csv).
paper_rows = ['ablation: + PDRS w/ DoRA']
