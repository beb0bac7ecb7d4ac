# Default TADFormer configuration (what `mtlbench run --method tadformer` uses): r=64, dynamic filter.
_base_ = ['./tadformer-r64_swin-t_nyudv2.py']
