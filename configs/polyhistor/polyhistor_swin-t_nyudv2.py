_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/nyudv2.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='polyhistor', reduction_factor=4, rank=8))
