# Swin-S (embed 96, depths 2-2-18-2) at 448x448 + per-task downsampler and HRNet head.
# Everything but the backbone size is the Swin-T base: the downsampler's inputs follow the stage
# widths (192/384/768/768, from the backbone's out_channels) and reduce them to the reference's
# DECODER_CHANNELS 18/36/72/144, which its config keeps for every backbone size.
# Pretrained: swin_small_patch4_window7_224.pth (official, ImageNet-1K; or the 22K / 22kto1k
# files) or timm's swin_small_patch4_window7_224 weights, as a local file (--pretrained).
_base_ = ['./swin-t_hrnet.py']
model = dict(backbone=dict(arch='swin-s'))
