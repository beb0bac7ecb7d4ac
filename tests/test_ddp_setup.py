"""DDP set-up of a run (mtlbench/engine/distributed.py), in 2 CPU processes over gloo: DiTASK with
the release's inert qkv thetas trains past the second step, ranks evaluate with rank 0's
BatchNorm statistics, and metrics are gathered without a shared folder."""
from __future__ import annotations

import os
import os.path as osp
import socket

import torch
from mmengine.config import Config

from mtlbench.engine.distributed import configure_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run_cfg(method: dict) -> Config:
    from mtlbench.method import build_method
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl')), custom_hooks=[],
                      val_evaluator=dict(type='MultiTaskMetric'), model=dict(method=method, tasks=['semseg'])))
    unused = build_method(dict(cfg.model.method), cfg.model.tasks).ddp_find_unused_parameters()
    configure_distributed(cfg, find_unused_parameters=unused, cuda=False)
    return cfg


def test_wrapper_config_matches_torch_ddp_defaults():
    cfg = _run_cfg(dict(type='mtlora', r=4))
    assert cfg.model_wrapper_cfg.to_dict() == dict(type='MMDistributedDataParallel', broadcast_buffers=True,
                                                   find_unused_parameters=False, device_ids=None)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo' and cfg.val_evaluator.collect_device == 'gpu'
    assert [h['type'] for h in cfg.custom_hooks] == ['BroadcastBuffersHook']
    assert _run_cfg(dict(type='ditask', inert_qkv_task_theta=True)).model_wrapper_cfg.find_unused_parameters


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import datetime
    from types import SimpleNamespace

    import torch.distributed as dist
    from mmengine.dist import collect_results
    from mmengine.registry import MODEL_WRAPPERS

    from mtlbench.engine.distributed import BroadcastBuffersHook
    from mtlbench.model import MultiTaskModel

    os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'] = '127.0.0.1', str(port)
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        method = dict(type='ditask', num_cells=4, task_num_cells=3, inert_qkv_task_theta=True)
        cfg = _run_cfg(method)
        torch.manual_seed(0)
        model = MultiTaskModel('pascal_context', method, dict(arch='toy', img_size=(64, 64), window_size=4),
                               tasks=['semseg', 'normals'], decoder=dict(channels=(4, 8, 8, 8)))
        ddp = MODEL_WRAPPERS.build(dict(cfg.model_wrapper_cfg, module=model))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        g = torch.Generator().manual_seed(10 + rank)   # different data on each rank
        for _ in range(3):                               # without find_unused_parameters: error at step 2
            out = ddp(torch.randn(2, 3, 64, 64, generator=g) * (1 + rank))
            opt.zero_grad()
            sum(v.float().pow(2).mean() for v in out.values()).backward()
            opt.step()
        bn = {k: v.clone() for k, v in model.named_buffers() if 'running_' in k}
        BroadcastBuffersHook().before_val_epoch(SimpleNamespace(model=ddp))
        synced = {k: v.clone() for k, v in model.named_buffers() if 'running_' in k}
        gathered = collect_results([f'rank{rank}-{i}' for i in range(2)], 3, device='gpu')
        params = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
        torch.save(dict(bn=bn, synced=synced, gathered=gathered, params=params), osp.join(out_dir, f'r{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_ditask_inert_and_evaluate_one_model(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'r{i}.pt', weights_only=True) for i in range(2))
    assert torch.equal(r0['params'], r1['params'])                 # DDP averaged the gradients
    assert r0['bn'] and any(not torch.equal(r0['bn'][k], r1['bn'][k]) for k in r0['bn'])  # ranks drifted
    for k in r0['bn']:                                              # ... and evaluate rank 0's statistics
        assert torch.equal(r1['synced'][k], r0['bn'][k]) and torch.equal(r0['synced'][k], r0['bn'][k]), k
    assert r0['gathered'] == ['rank0-0', 'rank1-0', 'rank0-1'] and r1['gathered'] is None


def test_prepared_ddp_run_config(pascal_root, monkeypatch):
    """A torchrun run of DiTASK with the inert thetas searches for unused parameters; a per-task
    method (single_task over two tasks) prepares without building a two-task model."""
    from mtlbench.run import RunOptions, prepare_config
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    cfg = prepare_config(RunOptions(method='ditask', data_root=pascal_root, launcher='pytorch',
                                    cfg_options={'model.method.inert_qkv_task_theta': True}))
    assert cfg.model_wrapper_cfg.find_unused_parameters and cfg.model_wrapper_cfg.broadcast_buffers
    assert cfg.val_evaluator.collect_device == 'gpu'
    cfg = prepare_config(RunOptions(method='single_task', data_root=pascal_root, launcher='pytorch',
                                    tasks=['semseg', 'sal']))
    assert not cfg.model_wrapper_cfg.find_unused_parameters
