"""Backbones (the one Swin, with sites, task streams and prefix tokens)."""
from mtlbench.backbones.swin import SWIN_ARCHS, PretrainedLoadError, Site, SwinBackbone, load_pretrained

__all__ = ['SWIN_ARCHS', 'PretrainedLoadError', 'Site', 'SwinBackbone', 'load_pretrained']
