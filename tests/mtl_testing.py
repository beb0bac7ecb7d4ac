"""Helpers shared by the tests (fixtures live in conftest.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List

#: Options that make a run CPU-fast and able to learn in a few iterations: a toy Swin (dims
#: 16..128, 4x4 windows so that 128x128 inputs work), narrow decoder channels, and a fixed
#: learning rate (not scaled by batch / 512). The tiny synthetic splits are smaller than a batch,
#: so the last incomplete batch is kept (departure 'train-keep-last'; the reference drops it).
IMG = ['--img-size', '128', '128']
FAST = ['--cfg-options', 'model.backbone.arch=toy', 'model.backbone.window_size=4', 'model.backbone.drop_path_rate=0.1',
        'model.decoder.channels=(4,8,8,8)', 'optim_wrapper.optimizer.lr=0.001', 'auto_scale_lr.enable=False',
        'train_dataloader.drop_last=False']


def run_cli(args: List[str]) -> int:
    """Run ``mtlbench`` in-process; raises on user errors so tests see them."""
    from mtlbench.cli import main
    os.environ['MTLBENCH_DEBUG'] = '1'
    try:
        return main(args)
    finally:
        os.environ.pop('MTLBENCH_DEBUG', None)


def read_records(results_dir) -> list:
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob('*.json'))]


def scalars(work_dir) -> list:
    """mmengine's per-iteration scalars (``vis_data/scalars.json``) of a run's work dir."""
    files = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


def python_cmd() -> List[str]:
    return [sys.executable, '-m', 'mtlbench.cli']
