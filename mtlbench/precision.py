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
"""
from __future__ import annotations

from typing import Any, Optional

from mtlbench.errors import OptionError
from mtlbench.protocol import register_departure

__all__ = ['PRECISIONS', 'REFERENCE_PRECISION', 'resolve_precision']

PRECISIONS = ('fp16', 'bf16', 'fp32')
REFERENCE_PRECISION = 'fp16'
_AMP_DTYPES = {'fp16': 'float16', 'bf16': 'bfloat16'}

register_departure('precision-not-fp16', 'precision', reference=REFERENCE_PRECISION,
                   doc='training does not use the reference\'s fp16 AMP with a dynamic loss scaler '
                       '(bf16 AMP, or fp32: every CPU run)')


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
    return precision
