# Default DiTASK configuration (what `mtlbench run --method ditask` uses): the release's 64/4 cells.
_base_ = ['./ditask-cells64-4_swin-t_nyudv2.py']
