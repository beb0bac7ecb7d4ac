_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/nyudv2.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
# TADFormer (CVPR 2025), rank 16: paper's dynamic task filter, learned stage gates, 1 prompt per task.
model = dict(method=dict(type='tadformer', r=16, scale=4.0, dropout=0.05, prompt_len=1, task_filter='dynamic',
                         filter_size=3, tpc=True, gate='learned'))
