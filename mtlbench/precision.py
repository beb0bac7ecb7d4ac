"""Training precision: the reference's fp16 AMP with a dynamic loss scaler, or a named departure.

The MTLoRA reference trains under ``torch.cuda.amp.autocast`` (fp16) with a dynamic
``GradScaler`` (``AMP_ENABLE = True``, ``NativeScalerWithGradNormCount``: unscale, clip, step,
update) and validates in fp32. mtlbench's equivalent is mmengine's ``AmpOptimWrapper`` with
``dtype='float16'`` and ``loss_scale='dynamic'`` (a default ``GradScaler``, as the reference's),
which also unscales before clipping. The config key ``precision`` says what a run trains in:

* ``'fp16'`` (reference, the default): fp16 AMP + dynamic loss scaler on CUDA;
* ``'bf16'``: bf16 AMP (departure ``precision-not-fp16``);
* ``'fp32'``: no autocast (departure ``precision-not-fp16``). CPU runs always train in fp32:
  fp16 autocast needs CUDA, so a CPU run of a default config resolves to ``'fp32'`` and its record
  says so.

``mtlbench run --amp {fp16,bf16,off}`` overrides the config (``off`` = ``'fp32'``).

Two more named options, each a departure when set (the reference runs with neither):

* ``eval_amp=True``: the evaluation forward runs under the training AMP dtype
  (:class:`~mtlbench.engine.loops.AmpValLoop`); the reference evaluates in fp32 (its ``validate``
  autocasts only the loss), so the default is ``False``. No effect on an fp32 run (reset to False).
* ``tf32=True``: on CUDA, fp32 matmuls and convolutions may use TF32 tensor cores
  (``torch.set_float32_matmul_precision('high')``, ``cudnn.allow_tf32``). Default ``False``:
  torch's defaults, which the reference ran with (TF32 matmul off; cuDNN conv TF32 is torch's
  default either way). Only fp32 runs see a difference in their matmuls, and those already depart
  from the fp16 reference; TF32 is a further change of numerics (10-bit mantissa inputs), so it is
  named rather than silent.
"""
from __future__ import annotations

from typing import Any, Optional

from mtlbench.errors import OptionError
from mtlbench.protocol import register_departure

__all__ = ['PRECISIONS', 'REFERENCE_PRECISION', 'resolve_precision', 'apply_tf32']

PRECISIONS = ('fp16', 'bf16', 'fp32')
REFERENCE_PRECISION = 'fp16'
_AMP_DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16'}

register_departure('precision-not-fp16', 'precision', reference=REFERENCE_PRECISION,
                   doc='training does not use the reference\'s fp16 AMP with a dynamic loss scaler '
                       '(bf16 AMP, or fp32: every CPU run)')
register_departure('eval-amp', 'eval_amp', reference=False,
                   doc='evaluation runs under the training AMP dtype (the reference evaluates in fp32)')
register_departure('tf32', 'tf32', reference=False,
                   doc='fp32 matmuls / convolutions on CUDA use TF32 tensor cores')


def resolve_precision(cfg: Any, amp: Optional[str], cuda: bool) -> str:
    """Set ``cfg.precision`` and ``cfg.optim_wrapper`` for a run; return the precision.

    Args:
        cfg: the run's mmengine Config (``precision`` absent = the reference's fp16).
        amp: the ``--amp`` option: ``'fp16'``, ``'bf16'``, ``'off'`` or ``None`` (config's value).
        cuda: whether the run trains on a CUDA GPU.

    Raises:
        RuntimeError: AMP asked for explicitly (``--amp fp16|bf16``) without a CUDA GPU.
    """
    if amp is not None:
        precision = 'fp32' if amp == 'off' else amp
        if precision != 'fp32' and not cuda:
            raise RuntimeError(f'--amp {amp} needs a CUDA GPU (mmengine AmpOptimWrapper); '
                               'use --amp off, or no --amp (CPU runs train in fp32)')
    else:
        precision = cfg.get('precision', REFERENCE_PRECISION)
        if not cuda:
            precision = 'fp32'
    if precision not in PRECISIONS:
        raise OptionError(f'precision {precision!r}: expected one of {PRECISIONS}')
    cfg.precision = precision
    if precision in _AMP_DTYPES:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.dtype = _AMP_DTYPES[precision]
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        cfg.optim_wrapper.type = 'OptimWrapper'
        for key in ('dtype', 'loss_scale'):
            cfg.optim_wrapper.pop(key, None)
    if cfg.get('eval_amp', False):
        if precision in _AMP_DTYPES:
            cfg.val_cfg = dict(cfg.get('val_cfg') or {}, type='AmpValLoop', dtype=_AMP_DTYPES[precision])
        else:
            cfg.eval_amp = False   # fp32 training: evaluation is fp32 too; the record must not claim AMP
    if cfg.get('tf32', False) and not cuda:
        cfg.tf32 = False           # TF32 exists on CUDA only: a CPU run computes in full fp32
    return precision


def apply_tf32(enabled: bool) -> None:
    """Set torch's TF32 switches for this process: ``enabled`` lets fp32 matmuls and cuDNN
    convolutions use TF32; ``False`` restores torch's defaults (matmul ``'highest'``, cuDNN TF32
    on), the reference's settings."""
    import torch
    torch.set_float32_matmul_precision('high' if enabled else 'highest')
    torch.backends.cudnn.allow_tf32 = True
