_base_ = ['./faar-full_swin-t_nyudv2.py']
# Ablation "+ PDRS w/ LoRA": plain LoRA adapters with PDRS, no TS-PD.
model = dict(method=dict(adapter='lora', tspd=False))
