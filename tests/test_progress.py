"""Long commands outside the Runner show progress with an ETA (data synth, bench, sweep)."""
from __future__ import annotations

from mtlbench.progress import Progress, format_duration


def test_eta_is_the_mean_time_per_item_times_the_items_left():
    now = [100.0]
    lines = []
    bar = Progress(8, 'synth', every_s=5.0, echo=lines.append, clock=lambda: now[0])
    now[0] = 104.0
    bar.update()                     # first item: always shown; 4 s per item, 7 left
    now[0] = 106.0
    bar.update()                     # 2 s after the last line: not shown
    now[0] = 112.0
    bar.update()                     # 3 done in 12 s -> 4 s each, 5 left = 20 s
    now[0] = 130.0
    bar.update(5)                    # done: shown, no ETA
    assert lines == ['synth: 1/8 (12%) 0:00:04 elapsed, eta 0:00:28',
                     'synth: 3/8 (38%) 0:00:12 elapsed, eta 0:00:20',
                     'synth: 8/8 (100%) 0:00:30 elapsed']
    assert format_duration(27 * 3600 + 61) == '27:01:01' and format_duration(-3) == '0:00:00'


def test_data_synth_reports_progress_on_stderr(tmp_path, capsys):
    from mtlbench.cli import main
    assert main(['data', 'synth', '--dataset', 'nyudv2', '--out', str(tmp_path / 'nyud'), '--n', '3']) == 0
    captured = capsys.readouterr()
    assert 'synth nyudv2: 1/3 (33%)' in captured.err and 'eta' in captured.err
    assert 'synth nyudv2: 3/3 (100%)' in captured.err
    assert 'synthetic nyudv2 dataset written' in captured.out and 'synth nyudv2' not in captured.out


def test_sweep_shows_the_eta_of_the_jobs_left(tmp_path, monkeypatch):
    import mtlbench.sweep as sweep
    ticks = iter([0.0, 60.0, 60.0, 180.0, 180.0, 240.0])  # jobs of 60 s, 120 s, 60 s
    monkeypatch.setattr(sweep.time, 'monotonic', lambda: next(ticks))
    jobs = sweep.plan_sweep(['a', 'b', 'c'], [0], 'pascal_context')
    lines = []
    sweep.run_sweep(jobs, tmp_path, runner=lambda cmd: 1, echo=lines.append)
    timing = [line for line in lines if ': took ' in line]
    assert timing[0].endswith('took 0:01:00; eta 0:02:00 for 2 job(s) left (those with a record are skipped)')
    assert timing[1].endswith('took 0:02:00; eta 0:01:30 for 1 job(s) left (those with a record are skipped)')
    assert timing[2].endswith('took 0:01:00')
