"""Free Sinewich: frequency-switched shared low-rank weights for multi-task dense prediction.

Liu, Chen, Chu, Yang, Wang. "Frequency Switching Mechanism for Parameter-Efficient Multi-Task
Learning" (Free Sinewich), CVPR 2026, arXiv 2603.21111. No code was public when this was
written (the project page, casperliuliuliu.github.io/projects/Free-Sinewich, links none), so this
file is a reconstruction from the paper's description as summarised in
``shared/reference/methods.md`` and its reported parameter counts (``papers.md``); it is the
benchmark's reference implementation. Everything not fixed by that description is a config
option (:class:`FreeSinewichConfig`) and is listed below as "Not in paper".

What the method computes (on the MTLoRA pipeline, ``shared/reference/mtlora.md``):

* **Task tokens** (TADFormer-style, VPT-shallow): one learnable token per task (dim 96, truncated
  normal mean 1 std 1 within +-2 std) prepended to every attention window from stage 1 on
  (``backbone.prompt_embed``); updated in every block by ``p <- p + DropPath(MLP(LN2(attn(LN1 p))))``
  (``SwinBlock.prompt_update``; the attention output is not added back; the last block of the
  last stage skips the MLP) and carried across PatchMerging by ``Linear(C, 2C, no bias)``
  (``SwinStage.prompt_merge``).
* **Plain LoRA** (rank ``r``, scale 4, dropout 0.05; :class:`~mtlbench.layers.lowrank.LoRALinear`)
  on qkv/proj/fc1/fc2 of every non-last block, and on the last block's linears that carry no
  Sine-AWB (qkv and proj by default).
* **Sine-AWB** (:class:`SineAWBLinear`) on fc1 and fc2 of the last block of each stage, where the
  task streams fork. Low-rank factors ``A [out, r]``, ``B [in, r]`` and a convolutional prior
  ``W [r, r, k, k]`` (a k x k convolution in rank space) are fused into one kernel
  ``M = A W B^T [out, in, k, k]`` (``M[:, :, u, v] = A W[:, :, u, v] B^T``); task ``t`` uses
  ``M_t = sin(w_t M)``, low-passed over its (out, in) axes by a 7x7 Gaussian (sigma 1):
  ``dW_t = scale * G * M_t / w_ref``, with the argument normalised as below
  (``dW_t = scale * nu * G * sin(w_t M / nu) / w_ref``, ``nu = rms(M) w_ref / kappa``). Task stream ``t`` = frozen layer output on the shared input
  + ``dW_t`` applied (k x k convolution over the stage's token map) to the task input. ``A``,
  ``W``, ``B`` are shared by all tasks; only ``w_t`` differs.
* **Clock Net** (:class:`ClockNet`, one per Sine-AWB layer and one for the decoder):
  ``w_t = s (tanh(w . ReLU(U p_t + u) + b) + c)`` from task ``t``'s token ``p_t`` as it enters the
  block (the stage's task token; the decoder's reads the last stage's), with ``U [hidden, C]``,
  ``u``, ``w``, ``b`` and scalars ``s``, ``c`` shared by tasks: one bounded frequency per task, in
  ``s (c - 1, c + 1)``.
* **Shared decoder** (:class:`SineSharedDecoder`): per-task channel downsamplers as in MTLoRA;
  the HRNet heads' 270->1080 1x1 conv weight is one tensor shared by all tasks and modulated by
  the task frequency of a decoder Clock Net (``W_t = sin(w_t W) / w_ref``), followed by a
  per-task bias, per-task BatchNorm-ReLU and per-task 1080->out conv.

Not in paper: the size of the convolutional prior; chosen: 3x3 (``conv_kernel=3``), initialised to
the identity at the centre tap, ``A`` zero and ``B`` Kaiming-uniform, so a fresh model computes
exactly the frozen backbone's function (``sin(0) = 0``).
Not in paper: which linears carry Sine-AWB; chosen: fc1 and fc2 of each stage's last block
(``awb_kinds``); qkv is never task-specific (attention runs once on the shared stream, as in
MTLoRA and TADFormer), proj keeps plain LoRA. This is also the reading that reproduces the
"independent base" ablation count (below).
Not in paper: where the sine acts (its normalisation); chosen: the argument normalised by the
kernel's own rms, ``z_t = kappa (w_t / w_ref) M / rms(M)`` with ``kappa = 0.5`` (``sine_norm='rms'``,
``sine_rms_arg``), and ``dW_t = scale * G(sin z_t) * rms(M) / kappa``: for small ``z`` this is
``(w_t / w_ref) scale M`` (the "w/o sine" row and MTLoRA's scale 4), ``dW`` scales with ``M``
(a fresh layer is still the frozen one), and the regime no longer depends on how far training
has moved ``M``. Sine-activated low-rank adaptation, which the paper builds on, makes the same
point with large frequencies and a sqrt(fan-in) gain. All fp32, autocast off.
Evidence (``benchmarks/sine_regime.py``: toy Swin + synthetic PASCAL-Context, 12 epochs of 8
AdamW steps at lr 1e-3; over the 8 Sine-AWB layers: max ``|z|``, max relative gap between the
task kernel and its linearisation, mean inter-task kernel cosine):

=================================  ========  =======  ==========
``sine_norm``                       max |z|   gap      cosine
=================================  ========  =======  ==========
'reference' (``w_t M / w_ref``)        0.95     3.7 %   0.99999
'fan_in', ``w = 1000``               45.4     99.7 %   0.915
'rms', kappa = 0.5 (default)          11.9     82.9 %   0.955
'rms', kappa = 1                      25.7     91.5 %   0.926
'rms', kappa = 2                      46.8     96.7 %   0.942
'rms', kappa = 4                      76.2    102.5 %   0.827
'rms', kappa = 8                     175.3    100.3 %   0.813
=================================  ========  =======  ==========

The former choice ('reference', ``w_ref = 10``) never leaves the linear range (one shared update,
the ablation empty); so would any fixed frequency with a fixed gain at the magnitudes this run
reaches ('fan_in' at ``w = 100``, in a run whose frequencies came from the embedding: gap 83 %
but cosine 0.9995). With the rms normalisation the trained
kernels differ from their linearisation by 83 % and decorrelate across tasks; kappa = 0.5 puts a
typical element of the centre tap (3 x the all-tap rms while the off-centre taps are near 0)
near ``z = 1.5``, the sine's bend, while larger kappa wraps the bulk of ``M`` many times over
(gap above 95 %). On a Swin-T fc1 (384 -> 1536, r = 64) at the trained magnitudes (A rms 1e-2, the
trained frequencies 8.34, 8.35, 8.39, 11.19 of the default run's stage-4 fc1) the test suite
measures gap 83 % and cosine 0.961 for the default, 0.04 % and 1.00001 for 'reference'. The same
runs' metrics (one seed, toy, synthetic data: indicative only) favour the default too: normals
mean angle 7.9 deg (kappa 0.5), 13.7 (kappa 1), 12.1 (kappa 2), 25.7 ('reference'), 32.6
('fan_in' w = 1000, which also lost saliency: 22.6 mIoU against 54-58). ``sine_norm='reference'`` and ``'fan_in'`` (``sin(w_t M) / sqrt(in k^2)``,
use with ``omega_scale_init`` of order 1000) remain options.
Not in paper: the blur axes and border; chosen: the (out, in) axes of every tap of ``M_t``,
separable, reflect padding (``lowpass_padding``), so a constant kernel stays constant.
Clock Net input (paper: the task token of the stage); chosen: the task token entering the
block, taken on the shared stream and averaged over the batch (``clock_source='stage'``): one
kernel per task and batch, since per-image kernels would cost ``B`` times the kernel memory
(``B x T x out x in x k^2``). Frequencies then depend on the image (and, in a batch, on its
composition: evaluate with a fixed batch size). ``clock_source='embedding'`` reads the learned
token embedding instead (image-independent, cacheable, but the Clock Net is then only a
re-parametrised per-task frequency, and its ablation is empty: 846 parameters).
Not in paper: the Clock Net's width; chosen: one hidden layer of width 5 (``clock_hidden``) on the
stage's token. The paper's "w/o Clock Net" row (6.51M vs 6.53M: 0.02M, between 0.01M and 0.03M
given the rounding) implies about 20k parameters in the 9 Clock Nets; width ``h`` costs
``(2880 + 768) h + 9 (2h + 3)`` (token widths 2 x (96 + 192 + 384 + 768) for the 8 Sine-AWB
clocks, 768 for the decoder's), i.e. 18,357 at h = 5 and 22,023 at h = 6 (minus the 36
frequencies that replace them: 18,321 and 21,987); 5 is the closest to 20k.
``clock_hidden=0`` is the printed formula read with ``w`` acting on ``ReLU(p_t)`` directly
(``C + 2`` parameters per clock).
Not in paper: the scale of the Clock Net's input; chosen: the stage tokens centred over the
tasks and divided by their rms (``clock_input='task_centred'``, no parameters). Evidence: the
token updates add the same image-driven vector to every task's token in every block, so past
stage 1 the raw tokens of different tasks nearly coincide; fed as is (``clock_input='token'``)
the Clock Nets gave the 4 tasks frequencies within 0.5 % of each other in stages 3-4 of
Swin-T at initialisation, and after a short synthetic run (``benchmarks/sine_regime.py``,
toy Swin, 96 iterations) a mean inter-task kernel cosine of 0.9999: one shared update again.
Centred, the tasks start spread over about +-30 % of ``w_ref`` with ``clock_w_std=0.3``.
Not in paper: initial frequencies; chosen: ``s_0 = 10``, ``c_0 = 1``, ``w`` truncated normal std
0.3 and ``b = 0`` (tasks start near 10 with distinct values, see the Clock Net input above). Without the Clock Net (``clock='learned'`` or
``'fixed'``) the frequencies start evenly spread over ``s_0 (c_0 +- 0.25)``.
Not in paper: the shared stream at Sine-AWB sites; chosen: the frozen layer only, as TADFormer's
task-adaptive layers (``shared_path='frozen'``; ``'plain'`` adds ``scale M`` without sine).
Not in paper: the task tokens through Sine-AWB sites (inside the prompt MLP update); chosen: the
frozen layer (a k x k convolution needs a token map).
Not in paper: how the decoder conv is "modulated by w_t"; chosen: ``sin(w_t W) / w_ref``
(``decoder_modulation``): a scalar gain would be undone by the BatchNorm that follows.
Not in paper: PatchMerging reductions; chosen: frozen, without LoRA (``reduction_lora=False``).
Evidence: the paper's slope. Writing a total as ``T(r)``, the rank-dependent parts cost
``T(64) - T(32) = 2.49M`` in the paper (+-0.01M from rounding); without the reduction LoRA this
reconstruction gives 2,482,176 (inside), with it 2,611,200 (0.12M outside): a LoRA on the
reductions is not in the paper's model. What remains is a constant: every reported row exceeds
ours by 0.18M (+-0.015M; the independent-base row by 0.22M), i.e. -2.8 % at r = 64 and -4.4 % at
r = 32, rank-independent parameters this reading does not place (candidates: trained
reduction norms / biases, wider task tokens, a larger decoder Clock Net; none was chosen
without evidence). ``reduction_lora=True`` (MTLoRA+'s convention) brings the totals within 2 %
(6.60M / 3.99M) at the cost of the slope; training the reductions in full overshoots (7.88M).
Not in paper: dropout; chosen: 0.05 on the LoRA inputs and on the Sine-AWB task inputs (one mask
shared by the tasks when the layer receives only the shared stream, as MTLoRA's reference).
Not in paper: init of the token merges; chosen: truncated normal std 0.02 like Swin's linears.

Trainable parameters, PASCAL-Context (4 tasks), Swin-T at 448 -- ``r * (in + out)`` per LoRA,
C-sums over the last blocks 96 + 192 + 384 + 768 = 1440, over the other blocks 2976:

=====================================================  ===========  ===========
part                                                   r = 64       r = 32
=====================================================  ===========  ===========
plain LoRA, non-last blocks: 16 r * 2976               3,047,424    1,523,712
plain LoRA, last blocks qkv + proj: 6 r * 1440           552,960      276,480
Sine-AWB A, B (fc1, fc2): 10 r * 1440                     921,600      460,800
Sine-AWB 3x3 priors: 8 layers * 9 r^2                     294,912       73,728
Clock Nets (hidden 5): 2 * sum_C (5 C + 13)                14,504       14,504
task tokens 4 * 96 + token merges 2 * (96^2+192^2+384^2)  387,456      387,456
patch embed 4,896 + LayerNorms 23,040 + rel-pos 23,322     51,258       51,258
decoder (below)                                          1,075,677    1,075,677
total                                                    6,345,791    3,863,615
reported                                                 6.53M        4.04M
=====================================================  ===========  ===========

Decoder: per-task downsamplers 4 x 183,168 = 732,672 (sharing them too would give 0.52M);
shared conv 270 * 1080 = 291,600; per task bias 1,080 + BN 2,160 + conv2 1,081 * out
(semseg 21, parts 7, sal 1, normals 3: 34,592 in all) = 47,552; decoder Clock Net on the last
stage's token 5 * 768 + 13 = 3,853: 1,075,677 (reported 1.07M, per-task decoders 1,946,624).
Ablations at r = 64, as differences to the r = 64 row (paper's in brackets, each +-0.01M):
without the Clock Net (9 Clock Nets, 18,357, replaced by 9 x 4 learned frequencies) -18,321
(-0.02M); without low-pass / sine 0 (0); independent base (``A, W, B`` per task:
+3 * 1,216,512) +3,649,536 (+3.69M, -1.1 %); independent decoder (+1,946,624 - 1,075,677)
+870,947 (+0.88M). With ``reduction_lora=True`` add 6 r (96 + 192 + 384): 258,048 / 129,024.
NYUDv2 (3 tasks; no reported count): 6,172,259 at r = 64.

Why these choices: writing the total as ``T(r) = c0 + a r + b r^2``, the reported r = 64 and
r = 32 rows give ``T(64) - 2 T(32) = 2048 b - c0 = -1.55M``, so ``c0 >= 1.55M``: the decoder
(1.08M), the other backbone parameters (0.05M) and TADFormer's token merges (0.39M) make up
1.52M of it, hence the merges. With LoRA (16 r C per block) everywhere but the fc1/fc2 pair of
the last blocks, ``a = 70,656`` and ``T(64) - T(32) = 2.49M`` leave ``b ~ 73-78``: 3x3 priors on
8 layers (``b = 72``). The "independent base" row (+3.69M = 3 x 1.23M) then matches Sine-AWB on
fc1 and fc2 (3 x 1.22M), not on proj/fc1/fc2 (3 x 1.55M with 3x3 priors, 3 x 1.16M with 1x1
ones). No reading of the description found hits every row exactly; the slope and the ablation
differences are met, the constant falls 0.18M short (see PatchMerging above).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from mtlbench.backbones.streams import select_task_stream, split_streams
from mtlbench.heads.hrnet import HRNetHead, MultiTaskDecoder
from mtlbench.layers.dropout import adapter_dropout
from mtlbench.layers.lowrank import LoRALinear
from mtlbench.method import AdapterLayer, Method, MethodConfig, MethodModule
from mtlbench.registry import METHODS

__all__ = ['FreeSinewichConfig', 'FreeSinewich', 'SineAWBLinear', 'ClockNet', 'TaskFrequencies',
           'TaskTokens', 'TokenMerge', 'TokenUpdate', 'SineSharedDecoder', 'SharedModulatedConv',
           'gaussian_kernel1d', 'gaussian_lowpass', 'fuse_awb', 'sine_modulate']

_AWB_KINDS = ('proj', 'fc1', 'fc2')
_LORA_KINDS = ('qkv', 'proj', 'fc1', 'fc2')


# --------------------------------------------------------------------------- config
@dataclass
class FreeSinewichConfig(MethodConfig):
    """Free Sinewich options (defaults: the reconstruction documented in the module docstring).

    Ablation rows of the paper: ``clock='learned'`` (w/o Clock Net), ``lowpass=False``,
    ``sine=False``, ``independent_base=True``, ``shared_decoder=False`` (independent decoder).
    """
    r: int = field(default=64, metadata={'help': 'rank of the plain LoRA and of the Sine-AWB factors'})
    scale: float = field(default=4.0, metadata={'help': 'multiplier of LoRA and Sine-AWB updates'})
    dropout: float = field(default=0.05, metadata={'help': 'dropout on LoRA and Sine-AWB inputs'})
    lora_kinds: tuple = field(default=_LORA_KINDS, metadata={'help': 'linears with plain LoRA (all but Sine-AWB sites)'})
    awb_kinds: tuple = field(default=('fc1', 'fc2'), metadata={'help': "last-block linears with Sine-AWB ('proj', 'fc1', 'fc2')"})
    conv_kernel: int = field(default=3, metadata={'help': 'spatial size k of the rank-space conv prior W [r, r, k, k]'})
    prior_init: str = field(default='identity', metadata={'help': "W init: 'identity' (centre tap) or 'kaiming'"})
    sine: bool = field(default=True, metadata={'help': 'M_t = sin(w_t M); False: M_t = w_t M (w/o sine ablation)'})
    sine_norm: str = field(default='rms', metadata={'help': "where the sine acts: 'rms' (argument normalised by rms(M)), "
                                                        "'reference' (w_t M / w_ref), 'fan_in' (sin(w_t M) / sqrt(fan-in))"})
    sine_rms_arg: float = field(default=0.5, metadata={'help': "sine_norm='rms': sine argument at one rms of M for w_t = w_ref"})
    lowpass: bool = field(default=True, metadata={'help': 'Gaussian low-pass of M_t (False: w/o low-pass ablation)'})
    lowpass_size: int = field(default=7, metadata={'help': 'Gaussian window side'})
    lowpass_sigma: float = field(default=1.0, metadata={'help': 'Gaussian sigma'})
    lowpass_padding: str = field(default='reflect', metadata={'help': "border of the blur: 'reflect', 'replicate', 'zeros'"})
    clock: str = field(default='net', metadata={'help': "'net' (Clock Net), 'learned' or 'fixed' per-task frequencies"})
    clock_source: str = field(default='stage', metadata={'help': "Clock Net input: 'stage' (the task token entering the "
                                                             "block, batch mean) or 'embedding' (the learned token)"})
    clock_input: str = field(default='task_centred', metadata={'help': "Clock Net input: 'task_centred' (token minus the "
                                                                  "tasks' mean, unit rms) or 'token' (as is)"})
    clock_hidden: int = field(default=5, metadata={'help': 'hidden width of the Clock Net (0: w . ReLU(p_t), no hidden layer)'})
    omega_scale_init: float = field(default=10.0, metadata={'help': 'initial s of the Clock Net'})
    omega_offset_init: float = field(default=1.0, metadata={'help': 'initial c of the Clock Net'})
    clock_w_std: float = field(default=0.3, metadata={'help': 'std of the Clock Net vector w at init'})
    omega_spread: float = field(default=0.25, metadata={'help': "w/o Clock Net: initial w_t spread over s0 (c0 +- spread)"})
    independent_base: bool = field(default=False, metadata={'help': 'A, W, B per task (ablation)'})
    shared_path: str = field(default='frozen', metadata={'help': "shared stream at Sine-AWB sites: 'frozen' or 'plain'"})
    tokens_per_task: int = field(default=1, metadata={'help': 'task tokens per task'})
    shared_decoder: bool = field(default=True, metadata={'help': 'shared modulated head conv (False: per-task decoders)'})
    decoder_modulation: str = field(default='sine', metadata={'help': "shared head conv per task: 'sine', 'scale', 'none'"})
    reduction_lora: bool = field(default=False, metadata={'help': 'shared LoRA on the frozen PatchMerging reductions (breaks the paper slope)'})
    train_reductions: bool = False

    def __post_init__(self) -> None:
        self.lora_kinds, self.awb_kinds = tuple(self.lora_kinds), tuple(self.awb_kinds)
        if self.r <= 0:
            raise ValueError(f'rank r must be positive, got {self.r}')
        if not self.awb_kinds or set(self.awb_kinds) - set(_AWB_KINDS):
            raise ValueError(f'awb_kinds must be a non-empty subset of {_AWB_KINDS} (qkv is never task-specific), '
                             f'got {self.awb_kinds}')
        if set(self.lora_kinds) - set(_LORA_KINDS):
            raise ValueError(f'lora_kinds must be a subset of {_LORA_KINDS}, got {self.lora_kinds}')
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f'conv_kernel must be odd and positive, got {self.conv_kernel}')
        if self.lowpass_size < 1 or self.lowpass_size % 2 == 0 or self.lowpass_sigma <= 0:
            raise ValueError(f'lowpass_size must be odd and positive and lowpass_sigma > 0, '
                             f'got {self.lowpass_size}, {self.lowpass_sigma}')
        choices = dict(prior_init=('identity', 'kaiming'), lowpass_padding=('reflect', 'replicate', 'zeros'),
                       clock=('net', 'learned', 'fixed'), clock_source=('embedding', 'stage'),
                       shared_path=('frozen', 'plain'), decoder_modulation=('sine', 'scale', 'none'),
                       sine_norm=('rms', 'reference', 'fan_in'), clock_input=('task_centred', 'token'))
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f'{name} must be one of {valid}, got {getattr(self, name)!r}')
        if self.omega_scale_init * self.omega_offset_init <= 0:
            raise ValueError('omega_scale_init * omega_offset_init (the reference frequency) must be positive')
        if self.sine_rms_arg <= 0:
            raise ValueError(f'sine_rms_arg must be positive, got {self.sine_rms_arg}')
        if self.clock_hidden < 0:
            raise ValueError(f'clock_hidden must be >= 0, got {self.clock_hidden}')
        if self.tokens_per_task < 1:
            raise ValueError(f'tokens_per_task must be >= 1, got {self.tokens_per_task}')
        if self.shared_path == 'plain' and self.independent_base:
            raise ValueError("shared_path='plain' applies the shared base; there is none with independent_base")
        if self.reduction_lora and self.train_reductions:
            raise ValueError('reduction_lora adapts frozen reductions; it cannot be combined with train_reductions')

    @property
    def omega_ref(self) -> float:
        """Reference frequency ``s_0 c_0`` that normalises the sine branches."""
        return self.omega_scale_init * self.omega_offset_init


# --------------------------------------------------------------------------- kernel math

def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sine is computed in: float32, or float64 for a float64 model."""
    return torch.promote_types(dtype, torch.float32)

def gaussian_kernel1d(size: int, sigma: float, device: Optional[torch.device] = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian ``[size]`` (the 2-D window is its outer product)."""
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _gaussian_taps(size: int, sigma: float) -> List[float]:
    """The taps of :func:`gaussian_kernel1d` as Python floats (float64), computed without
    tensors so that ``torch.compile`` folds them into constants (a ``.tolist()`` would break
    the graph at every call)."""
    g = [math.exp(-(i - (size - 1) / 2) ** 2 / (2 * sigma ** 2)) for i in range(size)]
    total = sum(g)
    return [v / total for v in g]


def gaussian_lowpass(m: torch.Tensor, size: int = 7, sigma: float = 1.0, padding: str = 'reflect',
                     gain: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of the last two axes.

    Args:
        m: ``[..., H, W]`` (here the (out, in) axes of a weight).
        size: odd window side.
        sigma: Gaussian sigma.
        padding: ``'reflect'``, ``'replicate'`` or ``'zeros'``; reflect falls back to replicate on
            axes not longer than ``size // 2``.
        gain: factor folded into the taps (saves a pass over ``m``).

    Returns:
        ``[..., H, W]``: ``gain`` times the ``size x size`` Gaussian (normalised to sum 1)
        correlated with ``m``.
    """
    lead, (H, W) = m.shape[:-2], m.shape[-2:]
    x = m.reshape(-1, 1, H, W)
    taps = _gaussian_taps(size, float(sigma))
    p = size // 2
    # Weighted sums of shifted slices: memory-bound and fast on any device (single-channel
    # convolutions are pathologically slow on CPU back-ends).
    for axis, n, g in ((2, H, gain), (3, W, 1.0)):
        pad = (0, 0, p, p) if axis == 2 else (p, p, 0, 0)
        mode = padding
        if mode == 'reflect' and n <= p:
            mode = 'replicate'
        xp = F.pad(x, pad, mode='constant' if mode == 'zeros' else mode)
        acc = xp.narrow(axis, 0, n) * (taps[0] * g)
        for i in range(1, size):
            acc.add_(xp.narrow(axis, i, n), alpha=taps[i] * g)
        x = acc
    return x.reshape(*lead, H, W)


def fuse_awb(A: torch.Tensor, W: torch.Tensor, B: torch.Tensor, taps_first: bool = False) -> torch.Tensor:
    """Fuse factors and prior into one kernel ``M = A W B^T`` per tap.

    Args:
        A: ``[..., out, r]``.
        W: ``[..., r, r, k, k]``.
        B: ``[..., in, r]``.
        taps_first: return ``[..., k, k, out, in]`` instead.

    Returns:
        ``[..., out, in, k, k]`` with ``M[..., :, :, u, v] = A @ W[..., :, :, u, v] @ B^T``.
    """
    AW = torch.einsum('...oa,...abuv->...uvob', A, W)
    M = AW @ B.unsqueeze(-3).unsqueeze(-3).transpose(-1, -2)          # [..., k, k, out, in]
    return M if taps_first else M.movedim((-4, -3), (-2, -1))


def sine_modulate(M: torch.Tensor, omega: torch.Tensor, sine: bool = True) -> torch.Tensor:
    """Task kernels ``M_t = sin(w_t M)`` (or ``w_t M`` without sine), element-wise.

    Args:
        M: a 4-D kernel shared by the tasks (``[out, in, k, k]`` or any layout), or ``[T, ...]``
            (5-D) per task.
        omega: ``[T]`` task frequencies.
        sine: apply the sine.

    Returns:
        ``[T, *M.shape[-4:]]``.
    """
    if M.ndim not in (4, 5):
        raise ValueError(f'expected a 4-D shared or 5-D per-task kernel, got {tuple(M.shape)}')
    z = omega.view(-1, 1, 1, 1, 1) * M
    return torch.sin(z) if sine else z


# --------------------------------------------------------------------------- task tokens
class _TokenState:
    """Where the Clock Nets read their task tokens; shared by reference by the method's modules.

    Holds the token embedding module and, for ``clock_source='stage'``, the tokens entering the
    block that runs next. A deep copy drops the recorded tokens (they carry autograd history) and
    re-links the embedding through the copy's memo.
    """

    def __init__(self, embedding: 'TaskTokens', num_tasks: int, tokens_per_task: int, source: str) -> None:
        self.embedding = embedding
        self.num_tasks = num_tasks
        self.tokens_per_task = tokens_per_task
        self.source = source
        self.current: Optional[torch.Tensor] = None

    def record(self, prompts: torch.Tensor) -> None:
        """Remember the shared-stream prompts ``[S, B, P, C]`` (only for ``source='stage'``)."""
        if self.source == 'stage':
            self.current = prompts[:1]

    def task_tokens(self) -> torch.Tensor:
        """One vector per task ``[T, C]`` (mean over the task's tokens, and over the batch for 'stage')."""
        if self.source == 'embedding':
            tokens = self.embedding.tokens
        else:
            if self.current is None:
                raise RuntimeError("clock_source='stage' needs a backbone forward before the Clock Nets run")
            tokens = self.current[0].mean(0)
        return tokens.reshape(self.num_tasks, self.tokens_per_task, -1).mean(1)

    def __deepcopy__(self, memo: dict) -> '_TokenState':
        new = _TokenState.__new__(_TokenState)
        memo[id(self)] = new
        new.embedding = copy.deepcopy(self.embedding, memo)
        new.num_tasks, new.tokens_per_task, new.source = self.num_tasks, self.tokens_per_task, self.source
        new.current = None
        return new

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['current'] = None
        return state


class TaskTokens(MethodModule):
    """The task tokens, set as ``backbone.prompt_embed``: batch size -> ``[B, T * n, C0]``.

    Task ``t`` owns rows ``t * n .. t * n + n - 1``. Initialised as TADFormer's prompts:
    truncated normal, mean 1, std 1, cut at +-2 std.

    Args:
        num_tokens: ``T * n``.
        dim: embedding width ``C0``.
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(num_tokens, dim))
        trunc_normal_(self.tokens, mean=1.0, std=1.0, a=-1.0, b=3.0)
        self._state: Optional[_TokenState] = None

    def forward(self, batch_size: int) -> torch.Tensor:
        out = self.tokens.unsqueeze(0).expand(batch_size, -1, -1)
        if self._state is not None:
            self._state.record(out.unsqueeze(0))
        return out


class TokenMerge(MethodModule):
    """Task tokens across PatchMerging: ``Linear(C, 2C, no bias)`` (a stage's ``prompt_merge``).

    Args:
        dim: width ``C`` before merging.
        state: token state to record into.
    """

    def __init__(self, dim: int, state: _TokenState) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * dim, bias=False)
        trunc_normal_(self.proj.weight, std=0.02)
        self._state = state

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        """``[S, B, P, C] -> [S, B, P, 2C]``."""
        out = self.proj(prompts)
        self._state.record(out)
        return out


class TokenUpdate(MethodModule):
    """A block's ``prompt_update``: ``p + DropPath(MLP(LN2(attended)))`` (TADFormer's rule; no parameters).

    Only the shared stream of the attended tokens is used (the tokens live on the shared stream).

    Args:
        state: token state to record into.
        use_mlp: False for the last block of the last stage, which leaves the tokens unchanged.
    """

    def __init__(self, state: _TokenState, use_mlp: bool = True) -> None:
        super().__init__()
        self._state = state
        self.use_mlp = use_mlp

    def forward(self, block: nn.Module, prompts: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Args: prompts ``[1, B, P, C]``, attended ``[S', B, P, C]``. Returns ``[1, B, P, C]``."""
        if self.use_mlp:
            prompts = prompts + block.drop_path2(block.mlp(block.norm2(attended[:1])))
        self._state.record(prompts)
        return prompts

    def extra_repr(self) -> str:
        return f'use_mlp={self.use_mlp}'


# --------------------------------------------------------------------------- frequencies
class ClockNet(MethodModule):
    """Lightweight Clock Net: ``w_t = s * (tanh(w . ReLU(h(p_t)) + b) + c)``, one frequency per task.

    ``h(p) = U p + u`` is a ``Linear(C, hidden)`` (``hidden=0``: ``h`` is the identity and there is
    no ``b``: the paper's printed formula read with ``w`` acting on the token itself). ``U``,
    ``u``, ``w [hidden or C]``, ``b``, ``s`` and ``c`` are shared by the tasks; the output is
    bounded in ``s * (c - 1, c + 1)``.

    Args:
        dim: token width ``C``.
        state: where the task tokens ``p_t`` are read.
        s_init: initial ``s``.
        c_init: initial ``c``.
        w_std: std of the truncated-normal init of ``w``.
        hidden: width of ``h`` (0: none).
        task_centred: read ``(p_t - mean_t p_t) / rms`` (the rms over tasks and channels) instead
            of ``p_t``: only what tells the tasks apart, at unit scale.
    """

    def __init__(self, dim: int, state: _TokenState, s_init: float = 10.0, c_init: float = 1.0,
                 w_std: float = 0.02, hidden: int = 0, task_centred: bool = False) -> None:
        super().__init__()
        self.task_centred = task_centred
        self.hidden = nn.Linear(dim, hidden) if hidden else None
        self.clock_w = nn.Parameter(torch.empty(hidden or dim))
        trunc_normal_(self.clock_w, std=w_std)
        self.clock_b = nn.Parameter(torch.zeros(())) if hidden else None
        self.clock_s = nn.Parameter(torch.tensor(float(s_init)))
        self.clock_c = nn.Parameter(torch.tensor(float(c_init)))
        self._state = state
        self.last: Optional[torch.Tensor] = None

    def frequencies(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T, C]`` task tokens -> ``[T]`` frequencies."""
        if self.task_centred:
            tokens = tokens - tokens.mean(0, keepdim=True)
            tokens = tokens / (tokens.pow(2).mean() + 1e-12).sqrt()
        if self.hidden is None:
            return self.clock_s * (torch.tanh(F.relu(tokens) @ self.clock_w) + self.clock_c)
        z = F.relu(self.hidden(tokens)) @ self.clock_w + self.clock_b
        return self.clock_s * (torch.tanh(z) + self.clock_c)

    def forward(self) -> torch.Tensor:
        omega = self.frequencies(self._state.task_tokens())
        self.last = omega.detach()
        return omega

    def current(self) -> Optional[torch.Tensor]:
        """Frequencies for reporting: recomputed from the embedding, or (``'stage'`` source, whose
        tokens exist only during a forward) those of the latest forward; None before any."""
        if self._state.source == 'embedding':
            return self().detach()
        return self.last

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['last'] = None
        return state


class TaskFrequencies(MethodModule):
    """Per-task frequencies without a Clock Net (the "w/o Clock Net" ablation).

    Args:
        num_tasks: ``T``.
        s_init: ``s_0``.
        c_init: ``c_0``.
        spread: initial values evenly spaced over ``s_0 (c_0 +- spread)``.
        learnable: a parameter (``clock='learned'``) or a fixed buffer (``'fixed'``).
    """

    def __init__(self, num_tasks: int, s_init: float = 10.0, c_init: float = 1.0, spread: float = 0.25,
                 learnable: bool = True) -> None:
        super().__init__()
        offsets = torch.linspace(-spread, spread, num_tasks) if num_tasks > 1 else torch.zeros(1)
        omega = s_init * (c_init + offsets)
        if learnable:
            self.omega = nn.Parameter(omega)
        else:
            self.register_buffer('omega', omega)

    def forward(self) -> torch.Tensor:
        return self.omega

    def current(self) -> torch.Tensor:
        return self.omega.detach()


def _build_frequencies(cfg: FreeSinewichConfig, num_tasks: int, dim: int, state: _TokenState) -> nn.Module:
    if cfg.clock == 'net':
        return ClockNet(dim, state, cfg.omega_scale_init, cfg.omega_offset_init, cfg.clock_w_std, cfg.clock_hidden,
                        task_centred=cfg.clock_input == 'task_centred')
    return TaskFrequencies(num_tasks, cfg.omega_scale_init, cfg.omega_offset_init, cfg.omega_spread,
                           learnable=cfg.clock == 'learned')


# --------------------------------------------------------------------------- Sine-AWB
class SineAWBLinear(AdapterLayer):
    """Sine-AWB on a frozen linear of a task block: shared kernel, per-task frequency.

    Shared stream: the frozen layer (``shared_path='frozen'``) or the frozen layer plus
    ``scale * M`` (``'plain'``). Task ``t``: frozen layer on the shared input plus
    ``scale * G(sin(w_t M)) / w_ref`` applied to the (dropped-out) task input as a k x k convolution
    over the token map: the stage map for fc1/fc2 (``[S, B, H, W, C]``), each attention window for
    proj (``[S, B * nW, P + N, C]``, the ``P`` prefix tokens get no update). Token sequences without
    a map (the task tokens inside the prompt MLP, ``[S, B, P, C]`` at fc1/fc2) get the frozen layer.

    Args:
        base_layer: the frozen linear.
        num_tasks: ``T``.
        kind: site kind (``'proj'``, ``'fc1'``, ``'fc2'``).
        r: rank.
        frequencies: module returning ``[T]`` task frequencies (:class:`ClockNet` or
            :class:`TaskFrequencies`).
        cfg: the method config (kernel size, low-pass, sine, scale, dropout, init, independence).
        num_prefix: prefix tokens per attention window (proj sites).

    Shapes: input ``[S, ..., in]`` with ``S`` in ``{1, 1 + T}``; output ``[1 + T, ..., out]``.
    """

    def __init__(self, base_layer: nn.Linear, num_tasks: int, kind: str, r: int, frequencies: nn.Module,
                 cfg: FreeSinewichConfig, num_prefix: int = 0) -> None:
        super().__init__(base_layer)
        if kind not in _AWB_KINDS:
            raise ValueError(f'Sine-AWB sites are {_AWB_KINDS}, got {kind!r}')
        self.num_tasks, self.kind, self.r = num_tasks, kind, r
        self.k = cfg.conv_kernel
        self.scale, self.omega_ref = cfg.scale, cfg.omega_ref
        self.sine, self.lowpass = cfg.sine, cfg.lowpass
        self.sine_norm, self.sine_rms_arg = cfg.sine_norm, cfg.sine_rms_arg
        self.lowpass_size, self.lowpass_sigma, self.lowpass_padding = cfg.lowpass_size, cfg.lowpass_sigma, cfg.lowpass_padding
        self.independent = cfg.independent_base
        self.shared_path = cfg.shared_path
        self.num_prefix = num_prefix
        self.dropout = adapter_dropout(cfg.dropout)
        lead = (num_tasks,) if self.independent else ()
        self.awb_A = nn.Parameter(torch.zeros(*lead, self.out_features, r))
        self.awb_W = nn.Parameter(torch.zeros(*lead, r, r, self.k, self.k))
        self.awb_B = nn.Parameter(torch.empty(*lead, self.in_features, r))
        with torch.no_grad():
            for b in self.awb_B.view(-1, self.in_features, r):
                nn.init.kaiming_uniform_(b.t(), a=math.sqrt(5))   # like LoRA's down-projection [r, in]
            if cfg.prior_init == 'identity':
                self.awb_W[..., self.k // 2, self.k // 2] = torch.eye(r)
            else:
                for w in self.awb_W.view(-1, r, r, self.k, self.k):
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.frequencies = frequencies

    # ---------------------------------------------------------------- kernels
    def fused_kernel(self, taps_first: bool = False) -> torch.Tensor:
        """``M = A W B^T``: ``[out, in, k, k]`` (``[T, out, in, k, k]`` with an independent base)."""
        return fuse_awb(self.awb_A, self.awb_W, self.awb_B, taps_first)

    def sine_argument(self, omega: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """What the sine acts on and the factor after it (``sine_norm``), fp32 with autocast off.

        Returns ``z [T, k, k, out, in]`` and ``nu`` (``[T or 1, 1, 1, 1, 1]``) such that the task
        kernel is ``gain * nu * G(sin(z))`` and its linearisation ``gain * nu * G(z)`` does not
        depend on ``nu``: ``'reference'`` and ``'fan_in'`` ``z = w_t M``, ``nu = 1``; ``'rms'``
        ``z = w_t M / nu`` with ``nu = rms(M) w_ref / kappa``.
        """
        omega = self.frequencies() if omega is None else omega
        with torch.autocast(self.awb_A.device.type, enabled=False):
            f = _at_least_fp32(self.awb_A.dtype)   # float64 stays float64 (compile parity tests)
            M = fuse_awb(self.awb_A.to(f), self.awb_W.to(f), self.awb_B.to(f), taps_first=True)
            z = sine_modulate(M, omega.to(f), sine=False)
            if self.sine_norm != 'rms':
                return z, z.new_ones((1, 1, 1, 1, 1))
            ms = M.pow(2).flatten(-4).mean(-1) if self.independent else M.pow(2).mean().view(1)
            nu = (ms + self._RMS_EPS ** 2).sqrt().view(-1, 1, 1, 1, 1) * (self.omega_ref / self.sine_rms_arg)
            return z / nu, nu

    _RMS_EPS = 1e-12

    @property
    def _gain(self) -> float:
        if self.sine_norm == 'fan_in':
            return 1.0 / math.sqrt(self.in_features * self.k * self.k)
        return self.scale / self.omega_ref

    def _finish(self, z: torch.Tensor, nu: torch.Tensor, sine: bool) -> torch.Tensor:
        """``gain * nu * G(f(z))`` with ``f`` the sine or the identity: ``[T, out, in, k, k]``."""
        with torch.autocast(z.device.type, enabled=False):
            m = torch.sin(z) if sine else z
            if self.lowpass:                               # blur the (out, in) axes of every tap
                m = gaussian_lowpass(m, self.lowpass_size, self.lowpass_sigma, self.lowpass_padding, self._gain)
            else:
                m = m * self._gain
            if self.sine_norm == 'rms':
                m = m * nu
            return m.movedim((1, 2), (3, 4))

    def task_kernels(self, omega: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-task weight updates ``scale * G(sin(w_t M)) / w_ref``: ``[T, out, in, k, k]``.

        Computed in fp32 with autocast off: under bf16 autocast the fused product and the sine
        would otherwise round ``w_t M`` to 8 bits of mantissa before the non-linearity, and the
        small differences between tasks' kernels (which is all that separates the tasks) would
        be lost. The (cheap) convolution that applies the kernels still runs in the autocast dtype.
        """
        return self._finish(*self.sine_argument(omega), self.sine)

    @torch.no_grad()
    def sine_regime(self, omega: Optional[torch.Tensor] = None) -> Optional[Dict[str, float]]:
        """Whether the sine acts: ``max_abs_arg`` (max ``|w_t M|``), ``max_rel_gap`` (max over tasks
        of ``||K_t - L_t|| / ||L_t||``, ``K_t`` the task kernel and ``L_t`` the same kernel with the
        sine replaced by the identity) and ``mean_task_cosine`` (mean cosine similarity of the
        task kernels over task pairs). None while the kernel is zero (fresh layer) or the
        frequencies are not known (``'stage'`` clock before a forward)."""
        omega = self.frequencies.current() if omega is None else omega
        if omega is None:
            return None
        z, nu = self.sine_argument(omega)
        lin = self._finish(z, nu, False).flatten(1)
        sin = self._finish(z, nu, True).flatten(1)
        norms = lin.norm(dim=1)
        if not bool((norms > 0).all()):
            return None
        gap = ((sin - lin).norm(dim=1) / norms).max()
        unit = F.normalize(sin, dim=1)
        T = unit.shape[0]
        cos = unit @ unit.t()
        mean_cos = cos[~torch.eye(T, dtype=torch.bool, device=cos.device)].mean() if T > 1 else cos.new_ones(())
        return dict(max_abs_arg=float(z.abs().max()), max_rel_gap=float(gap), mean_task_cosine=float(mean_cos),
                    kernel_rms=float(self.fused_kernel().float().pow(2).mean().sqrt()),
                    A_rms=float(self.awb_A.float().pow(2).mean().sqrt()),
                    W_rms=float(self.awb_W.float().pow(2).mean().sqrt()))

    # ---------------------------------------------------------------- apply
    def _conv_maps(self, x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """``x [G, N, H, W, in]``, ``kernels [G, out, in, k, k]`` -> ``[G, N, H, W, out]`` (one conv per group)."""
        G, N, H, W, C = x.shape
        if self.k == 1:
            out = torch.bmm(x.reshape(G, -1, C), kernels[..., 0, 0].transpose(1, 2))
            return out.reshape(G, N, H, W, -1)
        inp = x.permute(1, 0, 4, 2, 3).reshape(N, G * C, H, W)
        out = F.conv2d(inp, kernels.reshape(-1, C, self.k, self.k), padding=self.k // 2, groups=G)
        return out.reshape(N, G, -1, H, W).permute(1, 0, 3, 4, 2)

    def _task_update(self, x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Task updates for ``x [G, ..., in]`` in this site's token layout."""
        if x.ndim == 5:                                   # fc1/fc2: the stage's token map
            return self._conv_maps(x, kernels)
        G, BW, L, C = x.shape                             # proj: windows with P prefix tokens
        P = self.num_prefix
        ws = math.isqrt(L - P)
        if ws * ws != L - P:
            raise ValueError(f'{self.kind}: {L - P} window tokens do not form a square window')
        out = self._conv_maps(x[:, :, P:].reshape(G, BW, ws, ws, C), kernels).reshape(G, BW, L - P, -1)
        return F.pad(out, (0, 0, P, 0)) if P else out

    def _has_map(self, x: torch.Tensor) -> bool:
        return x.ndim == 5 if self.kind in ('fc1', 'fc2') else x.ndim == 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.num_tasks
        if x.shape[0] not in (1, 1 + T):
            raise ValueError(f'expected 1 or {1 + T} streams, got {x.shape[0]}')
        if not self._has_map(x):                          # task tokens in the prompt update
            return self.base_layer(x)
        shared_in = x[:1]
        base = self.base_layer(shared_in)                 # frozen weight on the shared input
        dropped = self.dropout(x)
        task_in = dropped.expand(T, *x.shape[1:]) if x.shape[0] == 1 else dropped[1:]
        task_out = base + self._task_update(task_in, self.task_kernels().to(x.dtype))
        shared_out = base
        if self.shared_path == 'plain':
            shared_out = base + self._task_update(dropped[:1], (self.scale * self.fused_kernel()).unsqueeze(0))
        return torch.cat([shared_out, task_out], dim=0)

    def extra_repr(self) -> str:
        return (f'kind={self.kind}, tasks={self.num_tasks}, r={self.r}, k={self.k}, sine={self.sine}, '
                f'lowpass={self.lowpass}, independent={self.independent}')


# --------------------------------------------------------------------------- shared decoder
class SharedModulatedConv(MethodModule):
    """The heads' shared 1x1 conv ``W [C_out, C_in]`` modulated per task by a frequency.

    ``W_t = sin(w_t W) / w_ref`` (``'sine'``), ``(w_t / w_ref) W`` (``'scale'``) or ``W`` (``'none'``).

    Args:
        weight: initial ``W`` ``[C_out, C_in]`` (copied).
        frequencies: module returning ``[T]`` frequencies.
        modulation: see above.
        omega_ref: ``w_ref``.
    """

    def __init__(self, weight: torch.Tensor, frequencies: nn.Module, modulation: str = 'sine',
                 omega_ref: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.frequencies = frequencies
        self.modulation = modulation
        self.omega_ref = omega_ref

    def task_weights(self) -> torch.Tensor:
        """``[T, C_out, C_in]``."""
        f = _at_least_fp32(self.weight.dtype)
        omega = self.frequencies().to(f).view(-1, 1, 1)
        with torch.autocast(self.weight.device.type, enabled=False):   # fp32 sine, as Sine-AWB
            weight = self.weight.to(f)
            if self.modulation == 'sine':
                return torch.sin(omega * weight) / self.omega_ref
            if self.modulation == 'scale':
                return omega / self.omega_ref * weight
            return weight.expand(omega.shape[0], -1, -1)

    def forward(self, x: torch.Tensor, task_index: int, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H, W]`` for one task (no bias)."""
        w = self.task_weights()[task_index] if weights is None else weights[task_index]
        return torch.matmul(w, x.flatten(2)).unflatten(2, x.shape[-2:])

    def extra_repr(self) -> str:
        return f'modulation={self.modulation}, shape={tuple(self.weight.shape)}'


class _TaskHeadTail(nn.Module):
    """Per-task part of a shared head: bias, BatchNorm, ReLU, 1x1 conv to the outputs."""

    def __init__(self, bias: torch.Tensor, bn: nn.BatchNorm2d, conv2: nn.Conv2d) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.bn = bn
        self.act = nn.ReLU()
        self.conv2 = conv2

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.bn(h + self.bias.view(1, -1, 1, 1))))


class SineSharedDecoder(nn.Module):
    """Per-task downsamplers + HRNet heads whose 270->1080 conv is shared and frequency-modulated.

    Built from a :class:`~mtlbench.heads.hrnet.MultiTaskDecoder`: its downsamplers and each head's
    BatchNorm and output conv are kept per task; the first task's ``conv1`` weight becomes the
    shared ``W`` and every task keeps its ``conv1`` bias as its own.

    Args:
        decoder: the per-task decoder to convert.
        frequencies: module returning ``[T]`` decoder frequencies.
        modulation: see :class:`SharedModulatedConv`.
        omega_ref: ``w_ref``.
    """

    def __init__(self, decoder: MultiTaskDecoder, frequencies: nn.Module, modulation: str = 'sine',
                 omega_ref: float = 10.0) -> None:
        super().__init__()
        self.tasks = tuple(decoder.tasks)
        self.out_size = tuple(decoder.out_size)
        self.channels = tuple(decoder.channels)
        self.downsamplers = decoder.downsamplers
        first = decoder.heads[self.tasks[0]].conv1
        self.shared_conv = SharedModulatedConv(first.weight[:, :, 0, 0], frequencies, modulation, omega_ref)
        self.heads = nn.ModuleDict({t: _TaskHeadTail(decoder.heads[t].conv1.bias, decoder.heads[t].bn,
                                                     decoder.heads[t].conv2) for t in self.tasks})

    def task_features(self, feats: Sequence[torch.Tensor], task_index: int) -> List[torch.Tensor]:
        """The reduced maps of one task: ``[B, c_i, H_i, W_i]`` per scale."""
        task = self.tasks[task_index]
        return self.downsamplers[task]([select_task_stream(f, task_index) for f in feats])

    def forward(self, feats: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Args: feats ``[S, B, C_i, H_i, W_i]``. Returns task -> ``[B, out, H, W]`` raw outputs."""
        weights = self.shared_conv.task_weights()
        feats = split_streams(feats)
        out = {}
        for i, task in enumerate(self.tasks):
            fused = HRNetHead.fuse(self.task_features(feats, i))
            y = self.heads[task](self.shared_conv(fused, i, weights))
            out[task] = F.interpolate(y, self.out_size, mode='bilinear', align_corners=False)
        return out


# --------------------------------------------------------------------------- method
@METHODS.register_module('free_sinewich')
class FreeSinewich(Method):
    """Task tokens + plain LoRA + Sine-AWB with Clock Nets + a shared, frequency-modulated decoder."""
    config_cls = FreeSinewichConfig

    def __init__(self, config: FreeSinewichConfig, tasks: Sequence[str]) -> None:
        super().__init__(config, tasks)
        self._state: Optional[_TokenState] = None

    def variant(self) -> str:
        c = self.config
        tags = [f'r={c.r}']
        if c.clock != 'net':
            tags.append(f'no-clock({c.clock})')
        if not c.lowpass:
            tags.append('no-lowpass')
        if not c.sine:
            tags.append('no-sine')
        if c.independent_base:
            tags.append('indep-base')
        if not c.shared_decoder:
            tags.append('indep-decoder')
        return ' '.join(tags)

    def adapt(self, backbone: nn.Module) -> List[str]:
        c = self.config
        T = len(self.tasks)
        if getattr(backbone, 'prompt_embed', None) is not None:
            raise ValueError('free_sinewich: the backbone already has prompt tokens (adapted twice?)')
        tokens = TaskTokens(T * c.tokens_per_task, backbone.embed_dim)
        state = _TokenState(tokens, T, c.tokens_per_task, c.clock_source)
        tokens._state = state
        self._state = state
        backbone.prompt_embed = tokens
        last = len(backbone.layers) - 1
        for i, stage in enumerate(backbone.layers):
            if i > 0:
                stage.prompt_merge = TokenMerge(backbone.layers[i - 1].dim, state)
            for j, blk in enumerate(stage.blocks):
                blk.prompt_update = TokenUpdate(state, use_mlp=not (i == last and j == len(stage.blocks) - 1))
        done = []
        for site in backbone.sites():
            base = backbone.get_submodule(site.name)
            if site.kind == 'reduction':
                if c.reduction_lora:
                    backbone.replace_site(site.name, LoRALinear(base, c.r, c.scale, c.dropout))
                    done.append(site.name)
                continue
            if site.task_block and site.kind in c.awb_kinds:
                dim = backbone.embed_dim if c.clock_source == 'embedding' else backbone.layers[site.stage].dim
                freq = _build_frequencies(c, T, dim, state)
                backbone.replace_site(site.name, SineAWBLinear(base, T, site.kind, c.r, freq, c,
                                                               num_prefix=T * c.tokens_per_task))
                done.append(site.name)
            elif site.kind in c.lora_kinds:
                backbone.replace_site(site.name, LoRALinear(base, c.r, c.scale, c.dropout))
                done.append(site.name)
        if not any(isinstance(backbone.get_submodule(n), SineAWBLinear) for n in done):
            raise ValueError('free_sinewich matched no Sine-AWB site')
        self._final_dim = backbone.layers[-1].dim
        self._embed_dim = backbone.embed_dim
        return done

    def adapt_decoder(self, decoder: nn.Module) -> nn.Module:
        c = self.config
        if not c.shared_decoder:
            return decoder
        if self._state is None:
            raise RuntimeError('free_sinewich: adapt(backbone) must run before adapt_decoder')
        if not isinstance(decoder, MultiTaskDecoder):
            raise TypeError(f'free_sinewich shares the heads of a MultiTaskDecoder, got {type(decoder).__name__}')
        dim = self._embed_dim if c.clock_source == 'embedding' else self._final_dim
        freq = _build_frequencies(c, len(self.tasks), dim, self._state)
        return SineSharedDecoder(decoder, freq, c.decoder_modulation, c.omega_ref)

    def record_extras(self, model: nn.Module) -> Dict[str, Any]:
        """Current per-task frequencies of every Sine-AWB layer and of the decoder, and the sine
        regime (:meth:`SineAWBLinear.sine_regime`): per layer, and over layers the max ``|w_t M|``,
        the max sine-vs-linear gap and the mean inter-task kernel cosine."""
        out: Dict[str, Any] = {}
        layers: Dict[str, Any] = {}
        with torch.no_grad():
            for name, m in model.named_modules():
                if isinstance(m, (SineAWBLinear, SharedModulatedConv)):
                    omega = m.frequencies.current()
                    if omega is None:      # 'stage' clocks before any forward
                        continue
                    out[name] = dict(zip(self.tasks, [round(float(w), 6) for w in omega]))
                    if isinstance(m, SineAWBLinear):
                        layers[name] = m.sine_regime(omega)
        live = {n: v for n, v in layers.items() if v is not None}
        regime: Dict[str, Any] = dict(max_abs_arg=None, max_rel_gap=None, mean_task_cosine=None)
        if live:
            regime = dict(max_abs_arg=max(v['max_abs_arg'] for v in live.values()),
                          max_rel_gap=max(v['max_rel_gap'] for v in live.values()),
                          mean_task_cosine=sum(v['mean_task_cosine'] for v in live.values()) / len(live))
        regime['layers'] = layers
        return {'frequencies': out, 'sine_regime': regime}
