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
