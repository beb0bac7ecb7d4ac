"""``mtlbench bench``: training / inference throughput, peak memory and FLOPs of a method on
synthetic tensors (no data needed), written as a bench record the leaderboard picks up.

Timing follows the usual rules: warm-up iterations first (allocator, autotuning, compilation),
then ``iters`` timed iterations, each synchronised on CUDA; the median and the spread (min /
max) are reported. FLOPs come from torch's own ``FlopCounterMode`` on one forward pass of one
image (matmuls and convolutions; elementwise ops are not counted).

``--eval`` also times the evaluation step (forward, post-processing and ``MultiTaskMetric``
scoring of the synthetic batch) and scoring alone, so a slow metric shows next to the model.
Every bench projects the wall time of the config's whole schedule on the benched device
(``mtlbench.run_cost``), stored as the record's ``full_run``.
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from mmengine.logging import MMLogger

from mtlbench.backbones.swin import backbone_label
from mtlbench.engine.device import device_name, prepare_device
from mtlbench.model import compile_model
from mtlbench.progress import format_duration
from mtlbench.run_cost import format_full_run

__all__ = ['BenchOptions', 'bench', 'bench_loader', 'measure', 'synthetic_batch']


@dataclass
class BenchOptions:
    method: str
    dataset: str = 'pascal_context'
    device: str = 'cpu'
    batch_size: int = 2
    amp: str = 'off'
    compile: bool = False
    img_size: Tuple[int, int] = (448, 448)
    iters: int = 10
    warmup: int = 3
    out_dir: str = 'results/bench'
    merged: bool = False
    arch: str = 'tiny'
    config: Optional[str] = None
    cfg_options: Optional[Dict[str, Any]] = None
    eval: bool = False


def synthetic_batch(model, batch: int, size: Sequence[int], device: torch.device):
    """Random images and targets in the formats of ``mtlbench.tasks``."""
    H, W = size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, H, W, generator=g)
    targets = {}
    for t in model.tasks:
        if t in ('semseg', 'human_parts'):
            n = model.decoder.heads[t].conv2.out_channels if hasattr(model.decoder, 'heads') else 2
            targets[t] = torch.randint(0, n, (batch, H, W), generator=g)
        elif t == 'sal':
            targets[t] = torch.randint(0, 2, (batch, H, W), generator=g)
        elif t == 'normals':
            targets[t] = torch.nn.functional.normalize(torch.randn(batch, 3, H, W, generator=g), dim=1)
        elif t == 'depth':
            targets[t] = torch.rand(batch, 1, H, W, generator=g) * 5 + 0.1
    return x.to(device), {k: v.to(device) for k, v in targets.items()}


def deterministic_toy_model(method: str, size: Sequence[int] = (32, 32), dtype: torch.dtype = torch.float64):
    """A tiny PASCAL-Context model of ``method`` (toy backbone) whose training step draws nothing
    at random (dropout, adapter dropout and drop path off) and whose zero-initialised LoRA / FAAR
    up factors are filled, so a zero would not hide half of each adapter. Eager and compiled
    steps are compared on it (``tools/compile_parity.py``, ``tests/test_compile_methods.py``)."""
    from mtlbench.layers.dropout import AdapterDropout
    from mtlbench.params import build_model_from_config

    tasks = ['semseg'] if method == 'single_task' else None   # single_task builds one model per task
    model = build_model_from_config(method, 'pascal_context', tasks=tasks, cfg_options={
        'model.backbone.arch': 'toy', 'model.backbone.img_size': tuple(size), 'model.backbone.window_size': 4,
        'model.backbone.drop_path_rate': 0.0, 'model.decoder.channels': (4, 8, 8, 8)})
    for m in model.modules():
        if isinstance(m, AdapterDropout):
            m.p, m.drop_prob = 0.0, 0.0
        elif isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit('.', 1)[-1] in ('lora_B', 'lora_task_B', 'faar_B'):
                p.normal_(0, 0.1)
    return model.to(dtype)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure(fn, iters: int, warmup: int, device: torch.device, label: str = '') -> Dict[str, float]:
    """Median / min / max seconds of ``fn()`` over ``iters`` timed calls after ``warmup``."""
    logger = MMLogger.get_current_instance()
    for i in range(warmup):
        fn()
    _sync(device)
    times = []
    for i in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        eta = format_duration(statistics.mean(times) * (iters - i - 1))
        logger.info(f'bench {label}: iteration {i + 1}/{iters} {times[-1] * 1000:.1f} ms, eta {eta}')
    return dict(median=statistics.median(times), min=min(times), max=max(times), n=len(times))


def _autocast(device: torch.device, amp: str):
    if amp == 'off':
        return contextlib.nullcontext()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _flops_per_image(model, size, device) -> Optional[float]:
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(1, 3, *size, device=device)
    model.eval()
    # Parameters are frozen while counting: a module that returns a view of a trainable
    # parameter (prompt tokens) would otherwise trip the counter's module tracker under no_grad.
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return float(counter.get_total_flops())


def bench(opts: BenchOptions) -> Path:
    """Measure and write a bench record; returns its path."""
    from mtlbench.reporting import records
    from mtlbench.method import merge_adapters
    from mtlbench.params import build_model_from_config

    logger = MMLogger.get_current_instance()
    if opts.device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda but no CUDA device is available')
    device = prepare_device(opts.device)
    size = tuple(opts.img_size)
    model = build_model_from_config(opts.method, opts.dataset, config=opts.config, cfg_options={
        'model.backbone.arch': opts.arch, 'model.backbone.img_size': size, **(opts.cfg_options or {})})
    model.to(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    x, targets = synthetic_batch(model, opts.batch_size, size, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-5)
    if opts.compile:
        compile_model(model)

    def train_step():
        model.train()
        with _autocast(device, opts.amp):
            losses = model(x, targets, mode='loss')
        loss = sum(losses.values())
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    logger.info(f'bench {opts.method}: training step, batch {opts.batch_size}, {size[0]}x{size[1]}, '
                f'{device}, amp={opts.amp}, compile={opts.compile}')
    train = measure(train_step, opts.iters, opts.warmup, device, 'train')
    train_peak = _peak_memory_mb(device)
    checkpoint = _time_checkpoint(model, optim, opts.out_dir)  # the training state, before any merge

    merged = merge_adapters(model) if opts.merged else []
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)

    @torch.no_grad()
    def infer_step():
        model.eval()
        with _autocast(device, opts.amp):
            model(x)

    infer = measure(infer_step, opts.iters, opts.warmup, device, 'inference')
    infer_peak = _peak_memory_mb(device)
    evaluation = _measure_eval(model, x, targets, opts, device, infer) if opts.eval else {}
    flops = _flops_per_image(model, size, device)
    full_run = _project(opts, opts.batch_size / train['median'],
                        evaluation.get('eval_img_s') or opts.batch_size / infer['median'], checkpoint, device)
    rec = records.make_bench_record(
        method=opts.method, variant=model.method.variant(), dataset=opts.dataset, device=device_name(device),
        batch_size=opts.batch_size, img_size=list(size), amp=opts.amp if opts.amp != 'off' else False,
        train_img_s=opts.batch_size / train['median'], infer_img_s=opts.batch_size / infer['median'],
        peak_mem_mb=round(max(train_peak, infer_peak), 1), train_peak_mem_mb=round(train_peak, 1),
        infer_peak_mem_mb=round(infer_peak, 1), flops_per_img=flops, train_step_s=train, infer_step_s=infer,
        compile=opts.compile, merged=opts.merged, merged_modules=len(merged), arch=model.backbone.arch,
        backbone=backbone_label(model.backbone.arch),
        tasks=list(model.tasks), params=model.param_breakdown(), torch_version=torch.__version__,
        full_run=full_run, **evaluation,
        notes='synthetic tensors; peak memory is the CUDA allocator peak on GPU, process max RSS on CPU')
    path = records.write_record(rec, opts.out_dir)
    evaluated = ''
    if evaluation:
        evaluated = (f', evaluation {evaluation["eval_img_s"]:.2f} img/s (scoring {evaluation["score_ms_per_img"]:.1f}'
                     f' ms/img, {100 * evaluation["score_share_of_infer"]:.1f}% of inference)')
    logger.info(f'bench {opts.method}: train {rec["train_img_s"]:.2f} img/s, inference {rec["infer_img_s"]:.2f} '
                f'img/s{evaluated}, peak {rec["peak_mem_mb"]:.0f} MB, {flops / 1e9:.1f} GFLOPs/img -> {path}')
    print(format_full_run(full_run), flush=True)
    return path


def _measure_eval(model, x, targets, opts: BenchOptions, device: torch.device, infer: Dict[str, float]
                  ) -> Dict[str, Any]:
    """Evaluation step (forward + post-processing + scoring) and scoring alone, per image."""
    from mtlbench.evaluation import MultiTaskMetric

    metric = MultiTaskMetric(tasks=list(model.tasks), dataset_name=opts.dataset)

    @torch.no_grad()
    def predict():
        model.eval()
        with _autocast(device, opts.amp):
            return model(x, targets, mode='predict')

    def score(samples):
        metric.process(None, samples)
        metric.results.clear()

    samples = predict()
    scoring = measure(lambda: score(samples), opts.iters, opts.warmup, device, 'scoring')
    evaluation = measure(lambda: score(predict()), opts.iters, opts.warmup, device, 'evaluation')
    return dict(eval_img_s=opts.batch_size / evaluation['median'], eval_step_s=evaluation, score_step_s=scoring,
                score_ms_per_img=1000 * scoring['median'] / opts.batch_size,
                score_share_of_infer=scoring['median'] / infer['median'])


def _time_checkpoint(model, optim, out_dir: str) -> Tuple[float, int]:
    from mtlbench.run_cost import time_checkpoint_write
    MMLogger.get_current_instance().info('bench: timing one checkpoint write')
    return time_checkpoint_write(model, optim, out_dir)


def _project(opts: BenchOptions, train_img_s: float, eval_img_s: float, checkpoint: Tuple[float, int],
             device: torch.device) -> Dict[str, Any]:
    """``run_cost.project_full_run`` of the benched config."""
    from mtlbench.config import find_config, load_config
    from mtlbench.run_cost import project_full_run, schedule_from_config

    cfg = load_config(opts.config or find_config(opts.method, opts.dataset), opts.cfg_options)
    ckpt_s, ckpt_bytes = checkpoint
    out = project_full_run(schedule_from_config(cfg), train_img_s, eval_img_s, ckpt_s)
    out.update(device=device_name(device), checkpoint_write_s=round(ckpt_s, 3),
               checkpoint_mb=round(ckpt_bytes / 2 ** 20, 1),
               eval_throughput=('measured (--eval)' if opts.eval
                                else 'inference img/s (scoring not measured; use --eval)'))
    return out


def bench_loader(dataset: str = 'pascal_context', data_root: Optional[str] = None, num_workers: int = 2,
                 batch_size: int = 8, batches: int = 20, img_size: Tuple[int, int] = (448, 448)) -> Dict[str, float]:
    """Images per second of the training data pipeline (decode + reference augmentation +
    collate), so that a GPU is never left waiting on JPEG decoding.

    Args:
        dataset: dataset name.
        data_root: dataset root (default: the synthetic dataset in the cache).
        num_workers: DataLoader worker processes (persistent, pinned memory on CUDA).
        batch_size: samples per batch.
        batches: timed batches (after one warm-up batch).
        img_size: network input size.

    Returns:
        ``img_s``, ``seconds``, ``samples``, ``num_workers``.
    """
    from mmengine.dataset import default_collate
    from torch.utils.data import DataLoader

    from mtlbench.datasets import DATASET_CLASSES, ensure_synthetic_dataset

    root = data_root or ensure_synthetic_dataset(dataset, n=64)
    ds = DATASET_CLASSES[dataset](root, split='train', img_size=img_size)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
                        collate_fn=default_collate, drop_last=False)
    logger = MMLogger.get_current_instance()
    n = samples = 0
    it = iter(loader)
    next(it)  # warm-up: worker start, first decode
    t0 = time.perf_counter()
    while n < batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        samples += batch['inputs'].shape[0]
        n += 1
        if n % 5 == 0:
            elapsed = time.perf_counter() - t0
            logger.info(f'loader bench: {n}/{batches} batches, {samples / elapsed:.1f} img/s, '
                        f'eta {format_duration(elapsed / n * (batches - n))}')
    seconds = time.perf_counter() - t0
    return dict(img_s=samples / seconds, seconds=seconds, samples=samples, num_workers=num_workers)
