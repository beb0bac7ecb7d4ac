"""TS-PD: FAAR's Task-Spectral Pyramidal Decoder in front of the HRNet heads.

Per task ``t`` and per resolution (the four decoder scales):

* **CW-SP** (channel-wise spectral processing): ``Y_t = gamma_t * iFFT(K_t . FFT(X_t)) + beta_t``,
  with a learnable 2-D filter ``K_t [H, W//2+1]`` over the frequencies of the real FFT, applied
  to every channel alike (``shared_channels=True``) or ``K_t [C, H, W//2+1]`` (one per channel),
  and a learnable per-channel scale ``gamma_t`` and shift ``beta_t``.
* **XT-Cons** (cross-task consensus): ``F_t = FFT(Y_t)``, ``F_avg = mean_{s != t} F_s``,
  ``Delta_t = F_avg - F_t``, and
  ``Z_t = Y_t + iFFT(alpha_low_t M_low . Delta_t + alpha_high_t M_high . Delta_t)``
  with a radial low-pass mask ``M_low`` (radius ``radius`` cycles/sample) and
  ``M_high = 1 - M_low``.

Initialised as the identity: ``K = 1``, ``gamma = 1``, ``beta = 0``, ``alpha = 0``. FFTs are
``torch.fft.rfft2`` / ``irfft2`` with ``norm='ortho'``, in fp32 with autocast off (cuFFT in
half precision needs power-of-two sizes; 56/28/14 are not).

Not in paper (chosen, and a config option where it changes the model):

* Placement: between each task's channel downsampler and its head
  (``tspd_position='after_downsampler'``, 18/36/72/144 channels); ``'before_downsampler'``
  filters the 192/384/768/768-channel backbone maps instead (far more parameters).
* The filter is complex (``tspd_filter='complex'``, as in global filter networks); ``'real'``
  halves it.
* One filter per task, resolution and channel (``tspd_filter_channels='per_channel'``,
  ``K_t [C, H, W//2+1]``; 548,352 filter parameters on PASCAL after the downsampler). The paper
  indexes the filter by task and resolution only, which ``'shared'`` reads literally
  (``K_t [H, W//2+1]`` broadcast over the channels, which then differ only through ``gamma`` /
  ``beta``; 18,144 filter parameters on PASCAL). The default follows the paper's count: at its
  average rank of about 5, 3.38M is reached with per-channel filters (3,385,738) and missed by
  15.5% with shared ones (2,855,530); the counts of every layout are in the package docstring
  and ``results/faar_layouts.md``.
* ``gamma`` / ``beta`` are per channel; ``alpha_low`` / ``alpha_high`` are scalars per task
  and resolution.
* XT-Cons runs on the CW-SP outputs of all tasks (the consensus of the other tasks' filtered
  features) and is skipped with a single task.
* Mask radius 0.25 cycles/sample (half the Nyquist frequency), a disc in ``(f_y, f_x)``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.backbones.streams import select_task_stream, split_streams
from mtlbench.heads.hrnet import MultiTaskDecoder
from mtlbench.method import MethodModule

__all__ = ['low_frequency_mask', 'SpectralScale', 'TaskSpectralPyramid', 'TSPDDecoder']


def low_frequency_mask(size: Tuple[int, int], radius: float) -> torch.Tensor:
    """``[H, W//2+1]`` float mask: 1 where ``sqrt(f_y^2 + f_x^2) <= radius`` (cycles/sample)."""
    H, W = size
    fy = torch.fft.fftfreq(H)
    fx = torch.fft.rfftfreq(W)
    rad = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return (rad <= radius + 1e-9).float()


class SpectralScale(nn.Module):
    """CW-SP of every task plus XT-Cons at one resolution.

    Args:
        num_tasks: ``T``.
        channels: ``C``.
        size: ``(H, W)`` of the feature map.
        complex_filter: complex (``True``) or real filter values.
        xtcons: add the cross-task consensus (only with ``T > 1``).
        radius: low-frequency mask radius (cycles/sample).
        shared_channels: one filter per task for all channels (``[T, 1, H, W//2+1]``) instead of
            one per channel (``[T, C, H, W//2+1]``).
    """

    def __init__(self, num_tasks: int, channels: int, size: Tuple[int, int], complex_filter: bool = True,
                 xtcons: bool = True, radius: float = 0.25, shared_channels: bool = False) -> None:
        super().__init__()
        self.num_tasks, self.channels, self.size = num_tasks, channels, tuple(size)
        H, W = self.size
        Wf = W // 2 + 1
        self.complex_filter = complex_filter
        self.shared_channels = bool(shared_channels)
        fc = 1 if self.shared_channels else channels  # broadcast over the channels when shared
        if complex_filter:
            filt = torch.zeros(num_tasks, fc, H, Wf, 2)
            filt[..., 0] = 1.0
        else:
            filt = torch.ones(num_tasks, fc, H, Wf)
        self.faar_filter = nn.Parameter(filt)
        self.faar_scale = nn.Parameter(torch.ones(num_tasks, channels))
        self.faar_shift = nn.Parameter(torch.zeros(num_tasks, channels))
        self.xtcons = bool(xtcons) and num_tasks > 1
        self.radius = radius
        if self.xtcons:
            self.faar_alpha_low = nn.Parameter(torch.zeros(num_tasks))
            self.faar_alpha_high = nn.Parameter(torch.zeros(num_tasks))
        self.register_buffer('low_mask', low_frequency_mask(self.size, radius), persistent=False)

    def filter(self) -> torch.Tensor:
        """Complex (or real) filter ``[T, C or 1, H, W//2+1]``."""
        f = self.faar_filter.float()
        return torch.view_as_complex(f.contiguous()) if self.complex_filter else f

    def cwsp(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W] -> [T, B, C, H, W]`` (fp32)."""
        H, W = x.shape[-2:]
        spec = torch.fft.rfft2(x, norm='ortho')
        y = torch.fft.irfft2(spec * self.filter().unsqueeze(1), s=(H, W), norm='ortho')
        return y * self.faar_scale.float()[:, None, :, None, None] + self.faar_shift.float()[:, None, :, None, None]

    def consensus(self, y: torch.Tensor) -> torch.Tensor:
        """XT-Cons: ``[T, B, C, H, W] -> [T, B, C, H, W]``."""
        if not self.xtcons:
            return y
        T = y.shape[0]
        H, W = y.shape[-2:]
        spec = torch.fft.rfft2(y, norm='ortho')
        others = (spec.sum(0, keepdim=True) - spec) / (T - 1)
        delta = others - spec
        low = self.low_mask.to(y.device)
        a_low = self.faar_alpha_low.float()[:, None, None]
        a_high = self.faar_alpha_high.float()[:, None, None]
        gain = a_low * low + a_high * (1 - low)  # [T, H, W//2+1]
        return y + torch.fft.irfft2(delta * gain[:, None, None], s=(H, W), norm='ortho')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[T, B, C, H, W]`` (any float dtype). Returns fp32 ``[T, B, C, H, W]``."""
        if tuple(x.shape[-2:]) != self.size or x.shape[0] != self.num_tasks or x.shape[2] != self.channels:
            raise ValueError(f'TS-PD scale built for [T={self.num_tasks}, B, C={self.channels}, {self.size}] '
                             f'got {tuple(x.shape)}')
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.consensus(self.cwsp(x.float()))

    def extra_repr(self) -> str:
        return (f'tasks={self.num_tasks}, channels={self.channels}, size={self.size}, '
                f'complex={self.complex_filter}, shared_channels={self.shared_channels}, xtcons={self.xtcons}, '
                f'radius={self.radius}')


class TaskSpectralPyramid(MethodModule):
    """TS-PD over all resolutions.

    Args:
        num_tasks: ``T``.
        channels: channels per resolution.
        sizes: ``(H, W)`` per resolution.
        complex_filter, xtcons, radius, shared_channels: see :class:`SpectralScale`.
    """

    def __init__(self, num_tasks: int, channels: Sequence[int], sizes: Sequence[Tuple[int, int]],
                 complex_filter: bool = True, xtcons: bool = True, radius: float = 0.25,
                 shared_channels: bool = False) -> None:
        super().__init__()
        if len(channels) != len(sizes):
            raise ValueError(f'{len(channels)} channel counts for {len(sizes)} sizes')
        self.scales = nn.ModuleList([SpectralScale(num_tasks, c, s, complex_filter, xtcons, radius, shared_channels)
                                     for c, s in zip(channels, sizes)])

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Args: per resolution ``[T, B, C_i, H_i, W_i]``. Returns the same shapes (fp32)."""
        return [scale(f) for scale, f in zip(self.scales, feats)]


class TSPDDecoder(MultiTaskDecoder):
    """The HRNet multi-task decoder with TS-PD in front of the heads.

    Takes over the downsamplers and heads of an existing :class:`MultiTaskDecoder` (same
    state-dict keys) and adds ``tspd``.

    Args:
        decoder: the decoder to extend.
        sizes: feature ``(H, W)`` per scale (from the backbone's image size and strides).
        in_channels: backbone map channels (needed for ``position='before_downsampler'``).
        position: ``'after_downsampler'`` or ``'before_downsampler'``.
        complex_filter, xtcons, radius, shared_channels: see :class:`SpectralScale`.
    """

    def __init__(self, decoder: MultiTaskDecoder, sizes: Sequence[Tuple[int, int]], in_channels: Sequence[int],
                 position: str = 'after_downsampler', complex_filter: bool = True, xtcons: bool = True,
                 radius: float = 0.25, shared_channels: bool = False) -> None:
        nn.Module.__init__(self)
        if position not in ('after_downsampler', 'before_downsampler'):
            raise ValueError(f'unknown TS-PD position {position!r}')
        self.tasks = decoder.tasks
        self.out_size = decoder.out_size
        self.channels = decoder.channels
        self.downsamplers = decoder.downsamplers
        self.heads = decoder.heads
        self.position = position
        chans = self.channels if position == 'after_downsampler' else tuple(in_channels)
        self.tspd = TaskSpectralPyramid(len(self.tasks), chans, sizes, complex_filter, xtcons, radius, shared_channels)

    def forward(self, feats: Sequence[torch.Tensor]) -> dict:
        """Args: feats ``[S, B, C_i, H_i, W_i]``. Returns task -> ``[B, out, H, W]`` raw outputs."""
        T = len(self.tasks)
        feats = split_streams(feats)
        if self.position == 'after_downsampler':
            per_task = [self.task_features(feats, i) for i in range(T)]
        else:
            per_task = [[select_task_stream(f, i) for f in feats] for i in range(T)]
        stacked = [torch.stack([per_task[t][s] for t in range(T)]) for s in range(len(per_task[0]))]
        filtered = self.tspd(stacked)
        dtype = per_task[0][0].dtype
        out = {}
        for i, task in enumerate(self.tasks):
            maps = [f[i].to(dtype) for f in filtered]
            if self.position == 'before_downsampler':
                maps = self.downsamplers[task](maps)
            y = self.heads[task](maps)
            out[task] = F.interpolate(y, self.out_size, mode='bilinear', align_corners=False)
        return out
