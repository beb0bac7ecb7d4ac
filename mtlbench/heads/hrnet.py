"""Per-task decoder of the MTL PEFT pipeline: channel downsampler + HRNet-style head.

As in the MTLoRA reference (``models/swin_mtl.py`` ``Downsampler`` / ``models/seg_hrnet.py``
``HighResolutionHead``; ``shared/reference/mtlora.md``): for each task, four bias-free 1x1
convs reduce the backbone maps [192, 384, 768, 768] to [18, 36, 72, 144] channels; the three
coarser maps are bilinearly upsampled to the finest, concatenated (270 channels), and
Conv1x1 270->1080 (bias) -> BatchNorm -> ReLU -> Conv1x1 1080->out predicts the task, which is
finally resized bilinearly to the input size (``align_corners=False``).

mmseg's ``FCNHead`` with ``resize_concat`` is the narrower 270->270 HRNet head, and
``mmseg.models`` does not import without compiled mmcv ops, so this small module is written here.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.streams import select_task_stream, split_streams
from mtlbench.registry import MODELS

__all__ = ['ChannelDownsampler', 'HRNetHead', 'MultiTaskDecoder']


class ChannelDownsampler(nn.Module):
    """Bias-free 1x1 convs, one per scale (channel reduction only).

    Args:
        in_channels: channels of the backbone maps.
        out_channels: channels after reduction.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(i, o, 1, bias=False) for i, o in zip(in_channels, out_channels)])

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]


class HRNetHead(nn.Module):
    """Upsample-concat-predict head (the reference's ``HighResolutionHead``).

    Args:
        in_channels: channels per scale (finest first).
        num_outputs: output channels.
        expansion: hidden width / concatenated width (4 in the reference: 270 -> 1080).
    """

    def __init__(self, in_channels: Sequence[int], num_outputs: int, expansion: int = 4) -> None:
        super().__init__()
        width = sum(in_channels)
        self.conv1 = nn.Conv2d(width, width * expansion, 1)
        self.bn = nn.BatchNorm2d(width * expansion, momentum=0.1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(width * expansion, num_outputs, 1)

    @staticmethod
    def fuse(feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Upsample every map to the finest and concatenate: ``[B, sum(C), H0, W0]``."""
        size = feats[0].shape[-2:]
        return torch.cat([feats[0]] + [F.interpolate(f, size, mode='bilinear', align_corners=False)
                                       for f in feats[1:]], dim=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv2(self.act(self.bn(self.conv1(self.fuse(feats)))))


@MODELS.register_module()
class MultiTaskDecoder(nn.Module):
    """One downsampler + head per task, reading each task's stream.

    Args:
        tasks: task names (stream order).
        num_outputs: task -> output channels.
        in_channels: backbone map channels (``SwinBackbone.out_channels``).
        channels: reduced channels per scale.
        out_size: prediction size ``(H, W)`` (the input size).
    """

    def __init__(self, tasks: Sequence[str], num_outputs: Mapping[str, int], in_channels: Sequence[int],
                 channels: Sequence[int] = (18, 36, 72, 144), out_size: Tuple[int, int] = (448, 448)) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.out_size = tuple(out_size)
        self.channels = tuple(channels)
        self.downsamplers = nn.ModuleDict({t: ChannelDownsampler(in_channels, channels) for t in self.tasks})
        self.heads = nn.ModuleDict({t: HRNetHead(channels, num_outputs[t]) for t in self.tasks})

    def task_features(self, feats: Sequence[torch.Tensor], task_index: int) -> List[torch.Tensor]:
        """The reduced maps of one task: ``[B, c_i, H_i, W_i]`` per scale."""
        task = self.tasks[task_index]
        return self.downsamplers[task]([select_task_stream(f, task_index) for f in feats])

    def forward(self, feats: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Args: feats ``[S, B, C_i, H_i, W_i]``. Returns task -> ``[B, out, H, W]`` raw outputs."""
        feats = split_streams(feats)
        out = {}
        for i, task in enumerate(self.tasks):
            y = self.heads[task](self.task_features(feats, i))
            out[task] = F.interpolate(y, self.out_size, mode='bilinear', align_corners=False)
        return out
