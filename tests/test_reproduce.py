"""``mtlbench reproduce``: table ids, the plan of a paper's table, a small table reproduced end to
end on synthetic data with the toy backbone, skipping what has records, and the verdicts."""
from __future__ import annotations

import math

import pytest

from mtlbench.reporting import records as R
from mtl_testing import FAST, run_cli

HEADER = ('paper,citation,table,dataset,method,variant,origin,semseg,human_parts,sal,normals,'
          'printed_delta_m,params_m,params_note,backbone,pretrained,notes\n')


def _reference(tmp_path, rows):
    ref = tmp_path / 'reference'
    ref.mkdir()
    (ref / 'pascal_context.csv').write_text(HEADER + ''.join(r + '\n' for r in rows))
    return ref


def test_table_ids_follow_the_documented_rule():
    from mtlbench.reproduce.table_ids import table_id
    assert table_id('FAAR', 'pascal_context', 'PASCAL-Context main') == 'faar-pascal-main'
    assert table_id('Free Sinewich', 'pascal_context', 'PASCAL-Context ablation (r=64)') == \
        'free-sinewich-pascal-ablation-r-64'
    assert table_id('FAAR', 'nyudv2', 'NYUDv2 main (3 tasks)') == 'faar-nyud-main-3-tasks'


def test_dry_run_of_faar_pascal_main_lists_baselines_and_rows(tmp_path, capsys):
    rc = run_cli(['reproduce', 'faar-pascal-main', '--dry-run', '--seeds', '0,1',
                  '--runs', str(tmp_path / 'runs'), '--bench', str(tmp_path / 'bench')])
    assert rc == 0
    out = capsys.readouterr().out
    # every row of the CSV table is runnable: the baseline, full fine-tuning, MTLoRA r=64 (rank
    # option), TADFormer r=64, FAAR (its default config)
    for line in ('single-task_swin-t_pascal-context.py', 'full-ft_swin-t_pascal-context.py',
                 'mtlora_swin-t_pascal-context.py r=64', 'tadformer_swin-t_pascal-context.py r=64',
                 'faar_swin-t_pascal-context.py'):
        assert line in out, line
    assert 'baseline (single-task, for Δm)' in out
    for job in ('single_task_pascal_context_s0', 'single_task_pascal_context_s1',
                'mtlora[r=64]_pascal_context_s1', 'tadformer[r=64]_pascal_context_s0'):
        assert job in out, job
    assert 'Sweep plan: 10 job(s), 10 to run' in out
    assert '0 job(s) with a bench record; 10 job(s) have no bench record' in out  # an empty bench folder
    assert not (tmp_path / 'runs').exists()


def test_dry_run_adds_the_baseline_and_lists_unmappable_variants(tmp_path, capsys):
    ref = _reference(tmp_path, [
        'P,x,PASCAL-Context main,pascal_context,mtlora,r=16,own,1,1,1,1,,,,swin-t,imagenet-1k,',
        'P,x,PASCAL-Context main,pascal_context,faar,ablation: + magic,own,1,1,1,1,,,,swin-t,imagenet-1k,',
        'P,x,PASCAL-Context main,pascal_context,hyper_magic,,cited,1,1,1,1,,,,swin-t,imagenet-1k,'])
    assert run_cli(['reproduce', 'p-pascal-main', '--dry-run', '--reference-dir', str(ref),
                    '--runs', str(tmp_path / 'runs')]) == 0
    out = capsys.readouterr().out
    assert 'added  single_task' in out and 'mtlora_swin-t_pascal-context.py r=16' in out
    assert "not runnable: variant 'ablation: + magic' is neither option=value words of faar" in out
    assert "not runnable: method 'hyper_magic' is not registered" in out
    assert 'Sweep plan: 2 job(s)' in out


@pytest.mark.parametrize('table, configs', [
    ('faar-pascal-ablation', ('faar-dora-r64', 'faar-pdrs-lora', 'faar-pdrs-dora', 'faar-tspd')),
    ('free-sinewich-pascal-ablation-r-64', ('free-sinewich-r64-no-clock', 'free-sinewich-r64-no-lowpass',
                                            'free-sinewich-r64-no-sine', 'free-sinewich-r64-indep-base',
                                            'free-sinewich-r64-indep-decoder')),
])
def test_ablation_rows_in_words_map_to_the_configs_that_name_them(tmp_path, capsys, table, configs):
    assert run_cli(['reproduce', table, '--dry-run', '--runs', str(tmp_path / 'runs'),
                    '--bench', str(tmp_path / 'bench')]) == 0
    out = capsys.readouterr().out
    assert 'not runnable' not in out
    for name in configs:   # the ablation configs, by hand from configs/<method>/
        assert f'{name}_swin-t_pascal-context.py' in out, name


def test_paper_rows_are_read_from_the_file_itself_not_inherited(tmp_path):
    from mtlbench.reproduce.plan import declared_paper_rows
    (tmp_path / 'base.py').write_text("paper_rows = ['ablation: + TS-PD']\nmodel = dict()\n")
    (tmp_path / 'child.py').write_text("_base_ = ['./base.py']\nmodel = dict(method=dict(r=8))\n")
    assert declared_paper_rows(tmp_path / 'base.py') == ['ablation: + TS-PD']
    assert declared_paper_rows(tmp_path / 'child.py') == []


def test_unknown_table_is_one_line_with_close_matches(capsys):
    from mtlbench.cli import main
    assert main(['reproduce', 'faar-pascl-main', '--dry-run']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown table 'faar-pascl-main'" in err[0]
    assert 'closest: faar-pascal-main' in err[0]


def test_tolerances_parse_and_refuse_bad_input():
    from mtlbench.errors import OptionError, UnknownNameError
    from mtlbench.reproduce.compare import parse_tolerances
    tol = parse_tolerances('semseg=1,normals=0.3')
    assert (tol['semseg'], tol['normals'], tol['sal'], tol['depth']) == (1.0, 0.3, 0.5, 0.01)
    with pytest.raises(UnknownNameError, match='miou'):
        parse_tolerances('miou=1')
    with pytest.raises(OptionError):
        parse_tolerances('semseg=-1')


def test_small_table_reproduces_end_to_end_on_synthetic_data(tmp_path, capsys, monkeypatch):
    ref = _reference(tmp_path, [
        'Tiny,t,PASCAL-Context main,pascal_context,decoder_only,,own,60,50,55,18,,1.0,,swin-t,imagenet-1k,'])
    runs = tmp_path / 'runs'
    argv = ['reproduce', 'tiny-pascal-main', '--reference-dir', str(ref), '--runs', str(runs),
            '--bench', str(tmp_path / 'bench'), '--work-dir', str(tmp_path / 'work'), '--epochs', '1',
            '--synthetic-samples', '8', '--img-size', '128', '128', '--num-workers', '0',
            '--tasks', 'semseg'] + FAST  # one task: one single-task model to train, not four
    calls = []

    def in_process(cmd):  # the sweep's subprocess command, run in this process (fast)
        calls.append(cmd)
        return run_cli(cmd[3:])

    import mtlbench.sweep as sweep
    monkeypatch.setattr(sweep, '_default_runner', in_process)
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert [c[c.index('--method') + 1] for c in calls] == ['single_task', 'decoder_only']
    recs = R.load_records(runs, kind='run')[0]
    assert sorted(r['method'] for r in recs) == ['decoder_only', 'single_task']
    assert all(r['synthetic'] and r['backbone'] == 'swin-toy' and r['tasks'] == ['semseg'] for r in recs)
    dec = next(r for r in recs if r['method'] == 'decoder_only')
    verdict_line = next(line for line in out.splitlines()
                        if line.startswith('decoder_only') and 'Tiny (t)' in line)
    assert verdict_line.rstrip().endswith('synthetic')
    # per-cell difference = our record's value - the paper's 60.00
    assert f'{dec["primary"]["semseg"]["value"] - 60:+.2f} ({dec["primary"]["semseg"]["value"]:.2f} / 60.00)' \
        in verdict_line
    # again: every job has its record, nothing runs, the comparison is printed again
    calls.clear()
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert calls == [] and 'Sweep done: 0 run, 2 skipped (record exists)' in out
    assert len(R.load_records(runs, kind='run')[0]) == 2


def _record(method, variant, values, seed=0, tasks=('semseg', 'human_parts', 'sal', 'normals')):
    metric = {'semseg': 'mIoU', 'human_parts': 'mIoU', 'sal': 'mIoU', 'normals': 'mean'}
    return R.make_run_record(
        method=method, variant=variant, dataset='pascal_context', tasks=list(tasks), seed=seed,
        metrics={t: {metric[t]: values[t]} for t in tasks}, backbone='swin-t',
        pretrained='/w/swin_tiny_patch4_window7_224.pth', pretrained_on='in1k', img_size=[448, 448],
        eval_protocol='resized-448', synthetic=False, protocol='reference', departures=[], git_sha=None,
        checkpoint='last', epochs=300, iters=None, delta_m=None, delta_m_reason='test',
        params={'total_trainable': 1_000_000, 'adapter': 0, 'decoder': 1_000_000, 'backbone_other': 0,
                'total': 2_000_000},
        wall_time_s=None, device='cuda', torch_version=None, config={},
        created='2026-01-01T00:00:00+00:00')


def test_verdicts_against_hand_computed_differences(tmp_path):
    """Real-data records in the papers' setting: pass / FAIL from |ours - paper| <= tolerance."""
    from mtlbench.reproduce.command import ReproduceOptions, reproduce
    from mtlbench.reproduce.compare import parse_tolerances
    from mtlbench.reproduce.plan import RunSettings

    ref = _reference(tmp_path, [
        'P,x,PASCAL-Context main,pascal_context,single_task,,cited,67.21,61.93,62.35,17.97,0,,,swin-t,imagenet-1k,',
        'P,x,PASCAL-Context main,pascal_context,mtlora,r=64,cited,67.90,59.84,65.40,16.60,,,,swin-t,imagenet-1k,',
        'P,x,PASCAL-Context main,pascal_context,mtlora,r=32,cited,67.74,59.46,64.90,16.59,,,,swin-t,imagenet-1k,'])
    runs = tmp_path / 'runs'
    for task, v in {'semseg': 67.0, 'human_parts': 62.0, 'sal': 62.0, 'normals': 18.0}.items():
        R.write_record(_record('single_task', '', {task: v}, tasks=(task,)), runs)
    # r=64: two seeds, means 68.30 / 59.50 / 65.80 / 16.75 -> diffs +0.40 -0.34 +0.40 +0.15: pass
    R.write_record(_record('mtlora', 'r=64', {'semseg': 68.1, 'human_parts': 59.4, 'sal': 65.7, 'normals': 16.7}), runs)
    R.write_record(_record('mtlora', 'r=64', {'semseg': 68.5, 'human_parts': 59.6, 'sal': 65.9, 'normals': 16.8},
                           seed=1), runs)
    # r=32: one seed (only seed 0 is asked), diffs -0.74 +0.04 +0.10 +0.31: semseg and normals out
    R.write_record(_record('mtlora', 'r=32', {'semseg': 67.0, 'human_parts': 59.5, 'sal': 65.0, 'normals': 16.9}), runs)
    data = tmp_path / 'data'
    data.mkdir()
    lines = []
    opts = ReproduceOptions(table='p-pascal-main', reference_dir=str(ref), bench_dir=str(tmp_path / 'bench'),
                            settings=RunSettings(seeds=[0, 1], runs_dir=str(runs), data_root=str(data),
                                                 pretrained='/elsewhere/swin_tiny_patch4_window7_224.pth'),
                            tolerances=parse_tolerances(None))
    ran = []
    res = reproduce(opts, runner=lambda cmd: ran.append(cmd) or 1, echo=lines.append)
    # the r=32 seed 1 job has no record: the runner was asked (and failed: "no record" kept)
    assert [c[c.index('--method') + 1] + c[c.index('--seed') + 1] for c in ran] == ['single_task1', 'mtlora1']
    (diff,) = res.comparison.differences
    rows = {v: r for v, r in zip(diff.rows['variant'], diff.rows.to_dict('records'))}
    assert rows['r=64']['semseg_diff'] == pytest.approx(0.40)
    assert rows['r=64']['human_parts_diff'] == pytest.approx(-0.34)
    assert rows['r=64']['normals_diff'] == pytest.approx(0.15)
    assert rows['r=64']['verdict'] == 'pass'
    assert rows['r=32']['semseg_diff'] == pytest.approx(-0.74)
    assert rows['r=32']['verdict'].startswith('FAIL: semseg -0.74 (±0.5), normals +0.31 (±0.2)')
    assert 'sal' not in rows['r=32']['verdict'] and 'human_parts' not in rows['r=32']['verdict']
    # the single-task row against its own records: diffs -0.21 +0.07 -0.35 +0.03 -> pass
    assert rows['']['verdict'] == 'pass' and rows['']['sal_diff'] == pytest.approx(-0.35)
    # a looser semseg and normals tolerance passes r=32
    opts.tolerances = parse_tolerances('semseg=0.8,normals=0.35')
    res = reproduce(opts, runner=lambda cmd: 1, echo=lines.append)
    assert set(res.comparison.differences[0].rows['verdict']) == {'pass'}
    text = '\n'.join(lines)
    assert '-0.74 (67.00 / 67.74)' in text and 'FAIL: semseg -0.74' in text


def test_leaderboard_shows_reported_baseline_rows(tmp_path):
    """Rows of the general PEFT baselines (cited by the papers) appear beside the papers' own."""
    from mtlbench.reporting.leaderboard import run_leaderboard
    ref = _reference(tmp_path, [
        'MTLoRA,CVPR 2024,PASCAL-Context main,pascal_context,bitfit,,cited,68.57,55.99,60.64,19.42,,,,swin-t,imagenet-1k,',
        'MTLoRA,CVPR 2024,PASCAL-Context main,pascal_context,vpt_deep,p=25,cited,64.35,52.54,58.15,21.07,,,,swin-t,imagenet-1k,',
        'MTLoRA,CVPR 2024,PASCAL-Context main,pascal_context,mtlora,r=64,own,67.90,59.84,65.40,16.60,2.55,8.34,,swin-t,imagenet-1k,',
        'shared,x,single-task baselines,pascal_context,single_task,,cited,67.21,61.93,62.35,17.97,,,,swin-t,imagenet-1k,'])
    text = run_leaderboard(runs_dir=tmp_path / 'runs', bench_dir=tmp_path / 'bench', formats=(),
                           with_reported=True, reference_dir=ref)
    lines = text.splitlines()
    bitfit = next(line for line in lines if ' bitfit ' in line)
    vpt = next(line for line in lines if ' vpt_deep ' in line)
    assert 'reported: MTLoRA (CVPR 2024)' in bitfit and '68.57' in bitfit and '19.42' in bitfit
    assert 'p=25' in vpt and '64.35' in vpt
    # Δm recomputed against the shared single-task row: hand computation
    dm = (100 / 4) * ((68.57 - 67.21) / 67.21 + (55.99 - 61.93) / 61.93 + (60.64 - 62.35) / 62.35
                      - (19.42 - 17.97) / 17.97)
    assert f'{dm:+.2f}' in bitfit and not math.isnan(dm)


def test_list_and_slurm_array_of_the_runs_without_records(tmp_path, capsys):
    ref = _reference(tmp_path, [
        'P,x,PASCAL-Context main,pascal_context,mtlora,r=64,cited,67.90,59.84,65.40,16.60,,,,swin-t,imagenet-1k,',
        'P,x,PASCAL-Context main,pascal_context,mtlora,r=32,cited,67.74,59.46,64.90,16.59,,,,swin-t,imagenet-1k,'])
    assert run_cli(['reproduce', '--list', '--reference-dir', str(ref)]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        'p-pascal-main: P (x), PASCAL-Context main — 2 row(s)', '    mtlora r=64  [cited]', '    mtlora r=32  [cited]']
    runs = tmp_path / 'runs'
    R.write_record(_record('mtlora', 'r=64', {'semseg': 68.1, 'human_parts': 59.4, 'sal': 65.7, 'normals': 16.7}), runs)
    # records of another setting do not answer a job: r=32 at 224 px, r=32 from another checkpoint
    other_size = _record('mtlora', 'r=32', {'semseg': 60.0, 'human_parts': 50.0, 'sal': 60.0, 'normals': 18.0})
    other_size.update(img_size=[224, 224], eval_protocol='resized-224')
    other_ckpt = _record('mtlora', 'r=32', {'semseg': 60.0, 'human_parts': 50.0, 'sal': 60.0, 'normals': 18.0})
    other_ckpt.update(pretrained='/w/swin_base_patch4_window7_224_22k.pth', pretrained_on='in22k')
    R.write_record(other_size, runs)
    R.write_record(other_ckpt, runs)
    data = tmp_path / 'data'
    data.mkdir()
    ckpt = tmp_path / 'swin_tiny_patch4_window7_224.pth'  # the records' file name, another folder
    ckpt.write_bytes(b'')
    script = tmp_path / 'array.sbatch'
    assert run_cli(['reproduce', 'p-pascal-main', '--slurm', '--slurm-out', str(script), '--reference-dir', str(ref),
                    '--runs', str(runs), '--data-root', str(data), '--pretrained', str(ckpt),
                    '--bench', str(tmp_path / 'bench')]) == 0
    out = capsys.readouterr().out
    assert '(2 job(s) without a record, of 3)' in out
    text = script.read_text()
    assert '#SBATCH --array=0-1' in text and 'reproduce-p-pascal-main' in text
    assert '--method single_task' in text and 'model.method.r=32' in text
    assert 'model.method.r=64' not in text  # its record exists
