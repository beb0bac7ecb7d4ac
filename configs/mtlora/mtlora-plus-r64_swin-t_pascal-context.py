_base_ = ['./mtlora-r64_swin-t_pascal-context.py']
# MTLoRA+: shared LoRA on PatchMerging, reductions frozen.
model = dict(method=dict(plus=True))
