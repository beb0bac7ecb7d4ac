# Default Free Sinewich configuration (what `mtlbench run --method free_sinewich` uses): r=64.
_base_ = ['./free-sinewich-r64_swin-t_nyudv2.py']
