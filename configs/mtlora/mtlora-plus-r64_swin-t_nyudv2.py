_base_ = ['./mtlora-r64_swin-t_nyudv2.py']
# MTLoRA+: shared LoRA on PatchMerging, reductions frozen.
model = dict(method=dict(plus=True))
