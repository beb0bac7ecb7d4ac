"""Full-run cost projection: the schedule counts of real configs, by hand."""
import io

import pytest
import torch

from mtlbench.config import find_config, load_config
from mtlbench.run_cost import (Schedule, project_full_run, schedule_from_config, split_size,
                               time_checkpoint_write)


def test_reference_schedule_of_mtlora_on_pascal_context():
    s = schedule_from_config(load_config(find_config('mtlora', 'pascal_context')))
    # 300 epochs; 4,998 train images, batch 32, last batch dropped: 156 iterations (156 x 32 =
    # 4,992); evaluation every 5 epochs = 60 passes, the last at epoch 300; a checkpoint a epoch
    assert s == Schedule(epochs=300, iters_per_epoch=156, train_batch=32, train_images=4998,
                         val_images=5105, val_passes=60, checkpoint_writes=300)


def test_nyud_sizes_and_the_mmengine_counting_rules():
    cfg = load_config(find_config('mtlora', 'nyudv2'), {
        'train_cfg.max_epochs': 20, 'train_cfg.val_interval': 7, 'train_dataloader.drop_last': False,
        'default_hooks.checkpoint.interval': 3})
    s = schedule_from_config(cfg)
    assert (s.train_images, s.val_images) == (795, 654)
    assert s.iters_per_epoch == 25                   # ceil(795 / 32) with the last batch kept
    assert s.val_passes == 3                         # epochs 7, 14 and the last, 20
    assert s.checkpoint_writes == 7                  # epochs 3, 6, ..., 18 and the last, 20


def test_split_size_caps_at_max_samples_and_refuses_unknown_splits():
    assert split_size({'type': 'PascalContextMT', 'split': 'val', 'max_samples': 10}) == 10
    with pytest.raises(ValueError, match='no known size'):
        split_size({'type': 'PascalContextMT', 'split': 'test'})


def test_projection_adds_the_three_parts():
    s = Schedule(epochs=10, iters_per_epoch=100, train_batch=8, train_images=800, val_images=500,
                 val_passes=2, checkpoint_writes=10)
    out = project_full_run(s, train_img_s=80.0, eval_img_s=250.0, checkpoint_s=1.5)
    # 10 x 100 x 8 / 80 = 100 s; 2 x 500 / 250 = 4 s; 10 x 1.5 = 15 s
    assert (out['train_s'], out['eval_s'], out['checkpoint_s'], out['total_s']) == (100.0, 4.0, 15.0, 119.0)
    assert out['total_h'] == pytest.approx(119 / 3600, abs=0.005)


def test_checkpoint_write_is_timed_on_the_real_state(tmp_path):
    model = torch.nn.Linear(64, 32)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    seconds, size = time_checkpoint_write(model, opt, str(tmp_path))
    buf = io.BytesIO()
    torch.save({'state_dict': model.state_dict(), 'optimizer': opt.state_dict(), 'meta': {}}, buf)
    assert seconds > 0 and abs(size - buf.getbuffer().nbytes) < 1024
    assert list(tmp_path.iterdir()) == []            # the temporary checkpoint is gone
