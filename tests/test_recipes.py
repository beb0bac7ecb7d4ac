"""Recipe configs reproduce their release's numbers: DiTASK's release (8 GPUs x 64, ImageNet-22K
Swin-T) trains at peak lr 5e-4, which mmengine's own linear scaling must give from the config."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner

from mtlbench.config import find_config, load_config


def _scaled_lr(cfg, world_size: int) -> float:
    """The lr mmengine's Runner.scale_lr sets for this config at ``world_size`` processes."""
    optim = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    runner = SimpleNamespace(_train_dataloader=cfg.train_dataloader, world_size=world_size, param_schedulers=None,
                             logger=MMLogger.get_current_instance())
    Runner.scale_lr(runner, OptimWrapper(optim), cfg.auto_scale_lr)
    return optim.param_groups[0]['lr']


@pytest.mark.parametrize('dataset', ['pascal_context', 'nyudv2'])
def test_ditask_release_recipe(dataset):
    cfg = load_config(str(find_config('ditask', dataset)).replace('ditask_swin-t', 'ditask-release_swin-t'))
    default = load_config(str(find_config('ditask', dataset)))
    assert _scaled_lr(cfg, world_size=8) == pytest.approx(5e-4)  # the release: 8 x 64 = 512
    assert _scaled_lr(default, world_size=1) == pytest.approx(3.125e-5)  # MTLoRA's recipe: 1 x 32
    # only the batch and the checkpoint interval differ; method, schedule and optimizer are the default's
    assert cfg.model.method == default.model.method
    assert cfg.param_scheduler == default.param_scheduler and cfg.optim_wrapper == default.optim_wrapper
    assert cfg.train_cfg.max_epochs == 300 and cfg.default_hooks.checkpoint.interval == 20
