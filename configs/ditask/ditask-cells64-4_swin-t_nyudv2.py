_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/nyudv2.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
# DiTASK release config (ditask_tiny_448_r64): 64 shared CPA cells, 4 per task.
model = dict(method=dict(type='ditask', num_cells=64, task_num_cells=4, dropout=0.05, init='kaiming_uniform'))
