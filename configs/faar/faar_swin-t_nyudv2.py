# Default FAAR configuration (what `mtlbench run --method faar` uses): the full method.
_base_ = ['./faar-full_swin-t_nyudv2.py']
