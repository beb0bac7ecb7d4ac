"""Per-task decoders."""
from mtlbench.heads.hrnet import ChannelDownsampler, HRNetHead, MultiTaskDecoder

__all__ = ['ChannelDownsampler', 'HRNetHead', 'MultiTaskDecoder']
