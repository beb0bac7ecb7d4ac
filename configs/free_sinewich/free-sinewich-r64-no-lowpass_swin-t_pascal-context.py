# Ablation 'w/o low-pass' (paper, PASCAL-Context: 6.53M): no Gaussian blur of the task kernels.
_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/pascal_context.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='free_sinewich', r=64, lowpass=False))
# The paper's table row this config reproduces (`mtlbench reproduce`; results/reference/*.csv).
paper_rows = ['ablation: r=64 w/o low-pass']
