_base_ = [
    '../_base_/models/swin-b_hrnet.py',
    '../_base_/datasets/pascal_context.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
# The reference's mtlora_tiny_448_r64_scale4_pertask settings on Swin-B.
model = dict(method=dict(type='mtlora', r=64, task_r=4, scale=4.0, task_scale=4.0, dropout=0.05))
