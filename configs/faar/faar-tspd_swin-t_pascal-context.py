_base_ = ['./faar-full_swin-t_pascal-context.py']
# Ablation "+ TS-PD (2)": TS-PD alone. The paper's ablation adds (1) PDRS w/ DoRA and (2) TS-PD
# each on its own to the MTLoRA r=64 base, and FAAR is (1+2); so this row has no DoRA and no
# PDRS: plain LoRA adapters at rank 64 (FAAR's layout, the nearest to that base in this package),
# no prefix masking, no pruning, with the TS-PD decoder (XT-Cons on).
model = dict(method=dict(adapter='lora', pdrs=False, tspd=True, xtcons=True))
# The paper's table row this config reproduces (`mtlbench reproduce`; results/reference/*.csv).
paper_rows = ['ablation: + TS-PD']
