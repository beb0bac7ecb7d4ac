# Ablation 'independent decoder' (paper, PASCAL-Context: 7.41M): per-task decoders as in MTLoRA.
_base_ = [
    '../_base_/models/swin-t_hrnet.py',
    '../_base_/datasets/pascal_context.py',
    '../_base_/schedules/adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(method=dict(type='free_sinewich', r=64, shared_decoder=False))
# The paper's table row this config reproduces (`mtlbench reproduce`; results/reference/*.csv).
paper_rows = ['ablation: r=64 independent decoder']
