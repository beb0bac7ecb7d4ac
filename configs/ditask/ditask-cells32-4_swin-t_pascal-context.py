_base_ = ['./ditask-cells64-4_swin-t_pascal-context.py']
# DiTASK with the 32 shared cells that summaries of the paper give (4 per task, as released).
model = dict(method=dict(num_cells=32))
