# Free Sinewich, r=64 (the paper's main row: 6.53M on PASCAL-Context).
_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/nyudv2.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='free_sinewich', r=64))
