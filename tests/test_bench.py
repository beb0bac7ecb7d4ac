"""``mtlbench bench``: one bench record per method, with numbers that come from the measurement."""
import pytest
from mtl_testing import read_records, run_cli

from mtlbench.params import build_model_from_config


def test_bench_writes_a_record_per_method(tmp_path, capfd):
    out = tmp_path / 'bench'
    opts = ['--arch', 'toy', '--img-size', '64', '64', '--cfg-options', 'model.backbone.window_size=4',
            '--iters', '2', '--warmup', '1', '--device', 'cpu', '--out', str(out)]
    # free_sinewich returns its prompt tokens as a view of a parameter: the FLOP counter must cope
    assert run_cli(['bench', '--method', 'mtlora,free_sinewich', '--merged', '--eval'] + opts) == 0
    recs = {r['method']: r for r in read_records(out)}
    assert set(recs) == {'mtlora', 'free_sinewich'}
    for method, rec in recs.items():
        assert rec['kind'] == 'bench' and rec['img_size'] == [64, 64] and rec['arch'] == 'toy'
        assert rec['train_img_s'] > 0 and rec['infer_img_s'] > 0 and rec['peak_mem_mb'] > 0
        assert rec['flops_per_img'] > 1e6 and rec['device'].startswith('cpu')
        model = build_model_from_config(method, 'pascal_context', cfg_options={
            'model.backbone.arch': 'toy', 'model.backbone.img_size': (64, 64), 'model.backbone.window_size': 4})
        assert rec['params'] == model.param_breakdown()
    assert recs['mtlora']['merged'] is True and recs['mtlora']['merged_modules'] > 0
    printed = capfd.readouterr().out
    for rec in recs.values():  # --eval: evaluation and scoring alone, per image
        assert rec['eval_img_s'] > 0 and rec['score_ms_per_img'] > 0
        assert rec['score_step_s']['median'] < rec['eval_step_s']['median']  # scoring is part of it
        run = rec['full_run']
        assert run['schedule']['epochs'] == 300 and run['schedule']['val_passes'] == 60
        assert run['eval_throughput'].startswith('measured') and run['checkpoint_mb'] > 0
        # the training part is the reference schedule (300 x 156 x 32 images) at the measured speed
        assert run['train_s'] == pytest.approx(300 * 156 * 32 / rec['train_img_s'], rel=1e-3)
        assert f"projected full run: {run['total_h']:.1f} h on {rec['device']}" in printed
    assert not any(p.name.startswith('.ckpt') for p in out.iterdir())

