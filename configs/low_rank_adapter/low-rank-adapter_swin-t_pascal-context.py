_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/pascal_context.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='low_rank_adapter', rank=1, reduction_factor=32))
