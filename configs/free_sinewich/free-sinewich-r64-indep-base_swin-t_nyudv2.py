# Ablation 'independent base' (paper, PASCAL-Context: 10.22M): A, W, B per task.
_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/nyudv2.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='free_sinewich', r=64, independent_base=True))
