"""Training precision: fp16 AMP + dynamic loss scaler by default on CUDA (the reference's), fp32
on CPU recorded as the departure 'precision-not-fp16' (mtlbench/precision.py)."""
import pytest
from mmengine.config import Config

from mtlbench.precision import resolve_precision
from mtlbench.protocol import protocol_label
from mtlbench.run import RunOptions, prepare_config


def base_cfg() -> Config:
    return Config(dict(precision='fp16', optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW'))))


def test_cuda_default_is_reference_fp16_amp_with_dynamic_scaler():
    cfg = base_cfg()
    assert resolve_precision(cfg, None, cuda=True) == 'fp16'
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.dtype, cfg.optim_wrapper.loss_scale) == \
        ('AmpOptimWrapper', 'float16', 'dynamic')
    assert protocol_label(cfg) == 'reference'


def test_cpu_default_trains_fp32_and_says_so():
    cfg = base_cfg()
    assert resolve_precision(cfg, None, cuda=False) == 'fp32'
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'dtype' not in cfg.optim_wrapper
    assert protocol_label(cfg) == 'precision-not-fp16'


@pytest.mark.parametrize('amp, precision, wrapper', [('bf16', 'bf16', 'AmpOptimWrapper'), ('off', 'fp32', 'OptimWrapper'),
                                                     ('fp16', 'fp16', 'AmpOptimWrapper')])
def test_amp_option_overrides_config_on_cuda(amp, precision, wrapper):
    cfg = base_cfg()
    assert resolve_precision(cfg, amp, cuda=True) == precision
    assert cfg.optim_wrapper.type == wrapper
    assert protocol_label(cfg) == ('reference' if precision == 'fp16' else 'precision-not-fp16')


def test_explicit_amp_on_cpu_is_an_error():
    with pytest.raises(RuntimeError, match='needs a CUDA GPU'):
        resolve_precision(base_cfg(), 'fp16', cuda=False)


def test_prepared_run_config_records_cpu_precision(pascal_root, monkeypatch):
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    cfg = prepare_config(RunOptions(method='mtlora', data_root=pascal_root))
    assert cfg.precision == 'fp32' and cfg.optim_wrapper.type == 'OptimWrapper'
    assert 'precision-not-fp16' in protocol_label(cfg).split('+')
