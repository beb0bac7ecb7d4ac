# Ablation 'w/o Clock Net' (paper, PASCAL-Context: 6.51M): learned per-task frequencies per layer instead of the Clock Net.
_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/pascal_context.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='free_sinewich', r=64, clock='learned'))
# The paper's table row this config reproduces (`mtlbench reproduce`; results/reference/*.csv).
paper_rows = ['ablation: r=64 w/o Clock Net']
