# Default MTLoRA configuration (what `mtlbench run --method mtlora` uses): r=64.
_base_ = ['./mtlora-r64_swin-t_pascal-context.py']
