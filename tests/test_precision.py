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


def test_eval_amp_is_a_named_option_that_needs_amp():
    cfg = base_cfg()
    cfg.update(eval_amp=True, val_cfg=dict(type='ValLoop'))
    assert resolve_precision(cfg, 'bf16', cuda=True) == 'bf16'
    assert cfg.val_cfg == dict(type='AmpValLoop', dtype='bfloat16')
    assert protocol_label(cfg) == 'eval-amp+precision-not-fp16'
    fp32 = base_cfg()
    fp32.update(eval_amp=True, val_cfg=dict(type='ValLoop'))
    resolve_precision(fp32, 'off', cuda=True)
    assert fp32.val_cfg.type == 'ValLoop' and 'eval-amp' not in protocol_label(fp32)


def test_tf32_is_named_and_cuda_only():
    import torch
    from mtlbench.precision import apply_tf32
    cfg = base_cfg()
    cfg.tf32 = True
    resolve_precision(cfg, 'off', cuda=True)
    assert protocol_label(cfg) == 'precision-not-fp16+tf32'
    cpu = base_cfg()
    cpu.tf32 = True
    resolve_precision(cpu, None, cuda=False)
    assert cpu.tf32 is False and 'tf32' not in protocol_label(cpu)
    before = torch.get_float32_matmul_precision()
    try:
        apply_tf32(True)
        assert torch.get_float32_matmul_precision() == 'high' and torch.backends.cuda.matmul.allow_tf32
        apply_tf32(False)
        assert torch.get_float32_matmul_precision() == 'highest' and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32   # torch's default, the reference's
    finally:
        torch.set_float32_matmul_precision(before)


def test_amp_val_loop_runs_the_forward_under_autocast_and_scores_outside():
    """CPU autocast stands in for CUDA's: the model sees bf16 autocast, the metric does not."""
    from types import SimpleNamespace

    import torch
    from mmengine.evaluator import Evaluator

    from mtlbench.engine.loops import AmpValLoop
    seen = {}

    class Model:
        def val_step(self, batch):
            seen['model'] = (torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu'))
            return [dict(pred=torch.nn.functional.linear(batch, torch.ones(2, 2)))]

    class Metric:
        def process(self, data_samples, data_batch):
            seen['metric'] = torch.is_autocast_enabled('cpu')
            seen['dtype'] = data_samples[0]['pred'].dtype

    evaluator = Evaluator([])
    evaluator.process = Metric().process
    runner = SimpleNamespace(model=Model(), call_hook=lambda *a, **k: None)
    loader = torch.utils.data.DataLoader([torch.ones(2)], batch_size=1)
    loop = AmpValLoop(runner, loader, evaluator, dtype='bfloat16', device_type='cpu')
    loop.run_iter(0, torch.ones(1, 2))
    assert seen == dict(model=(True, torch.bfloat16), metric=False, dtype=torch.bfloat16)
