_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/nyudv2.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='hyperformer', reduction_factor=4, width_mode='per_stage',
                         conditional_layer_norm=True, condition_layer_norm=True))
