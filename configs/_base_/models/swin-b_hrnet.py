# Swin-B (embed 128, depths 2-2-18-2) at 448x448 + per-task downsampler and HRNet head.
# Everything but the backbone size is the Swin-T base: the downsampler's inputs follow the stage
# widths (256/512/1024/1024, from the backbone's out_channels) and reduce them to the reference's
# DECODER_CHANNELS 18/36/72/144, which its config keeps for every backbone size.
# Pretrained: swin_base_patch4_window7_224.pth (official, ImageNet-1K),
# swin_base_patch4_window7_224_22k.pth (ImageNet-22K; its 21,841-class head is ignored) or timm's
# swin_base_patch4_window7_224 weights, as a local file (--pretrained).
_base_ = ['./swin-t_hrnet.py']
model = dict(backbone=dict(arch='swin-b'))
