"""Leaderboards from hand-built run records and the reference CSVs."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mtlbench.evaluation.delta_m import delta_m
from mtlbench.reporting import leaderboard as L
from mtlbench.reporting import records as R
from mtlbench.reporting import schema as S
from mtlbench.reporting.cells import latex_escape
from mtlbench.reporting.render import render_latex, render_markdown, render_text, write_leaderboard
from mtlbench.reporting.plots import pareto_frame, pareto_front, pareto_plot, task_bars
from mtlbench.reporting.reported import load_reported

REFERENCE = Path(__file__).resolve().parents[1] / 'results' / 'reference'
PASCAL_BASE = {'semseg': 67.21, 'human_parts': 61.93, 'sal': 62.35, 'normals': 17.97}
MTLORA = {'semseg': 67.90, 'human_parts': 59.84, 'sal': 65.40, 'normals': 16.60}
KNOWN = {'single_task', 'mtlora', 'faar', 'full_ft', 'tadformer'}


def rec(method, variant, seed, values, *, synthetic=False, img_size=(448, 448), extra=None,
        **over):
    """A valid run record built by hand (``extra``: secondary metrics per task)."""
    tasks = list(values)
    metrics, primary = {}, {}
    for t in tasks:
        name = {'normals': 'mean', 'depth': 'rmse'}.get(t, 'mIoU')
        metrics[t] = {name: values[t], **(extra or {}).get(t, {})}
        primary[t] = {'metric': name, 'value': values[t],
                      'higher_is_better': t not in ('normals', 'depth')}
    r = {'schema_version': 1, 'kind': 'run',
         'run_id': R.new_run_id(method, variant, 'pascal_context', seed),
         'method': method, 'variant': variant, 'method_options': {}, 'dataset': 'pascal_context',
         'tasks': tasks, 'backbone': 'swin-t', 'pretrained': 'swin_tiny_patch4_window7_224.pth',
         'img_size': list(img_size), 'eval_protocol': 'resized-448', 'synthetic': synthetic,
         'seed': seed, 'git_sha': 'abc', 'checkpoint': 'last', 'epochs': 300, 'iters': None,
         'metrics': metrics, 'primary': primary, 'delta_m': 99.0, 'delta_m_reason': None,
         'params': {'total_trainable': 8_344_634, 'adapter': 4_798_464, 'decoder': 1_946_624,
                    'backbone_other': 1_599_546, 'total': 29_800_000},
         'wall_time_s': 10.0, 'device': 'cpu', 'torch_version': '2.11', 'config': {},
         'created': '2026-01-01T00:00:00+00:00'}
    r.update(over)
    assert S.validate_record(r) == [], S.validate_record(r)
    return r


def baselines(seeds=(0, 1), **kw):
    return [rec('single_task', '', s, {t: v + 0.1 * s}, **kw)
            for s in seeds for t, v in PASCAL_BASE.items()]


def two_seed_mtlora(**kw):
    return [rec('mtlora', 'r=64', 0, dict(MTLORA, semseg=67.0), **kw),
            rec('mtlora', 'r=64', 1, dict(MTLORA, semseg=68.0), **kw)]


def row(table, method, variant=''):
    df = table.rows
    hit = df[(df['method'] == method) & (df['variant'] == variant)]
    assert len(hit) == 1, df[['method', 'variant']]
    return hit.iloc[0]


def test_mean_std_over_two_seeds():
    res = L.build_leaderboard(baselines() + two_seed_mtlora(), known_methods=KNOWN)
    assert len(res.tables) == 1
    r = row(res.tables[0], 'mtlora', 'r=64')
    assert r['semseg'] == pytest.approx(67.5)
    assert r['semseg_std'] == pytest.approx(math.sqrt(0.5))
    assert r['n_min'] == r['n_max'] == 2
    md = render_markdown(res, 'pascal_context')
    assert '67.50 ± 0.71' in md
    assert '| mtlora      | r=64      | 2   |' in md


def test_delta_m_recomputed_from_means_not_copied():
    res = L.build_leaderboard(baselines() + two_seed_mtlora(), known_methods=KNOWN)
    table = res.tables[0]
    base = {t: v + 0.05 for t, v in PASCAL_BASE.items()}  # mean of seeds 0 and 1
    means = dict(MTLORA, semseg=67.5)
    want = delta_m(means, base, list(PASCAL_BASE))
    assert row(table, 'mtlora', 'r=64')['delta_m'] == pytest.approx(want)
    assert row(table, 'mtlora', 'r=64')['delta_m'] != pytest.approx(99.0)  # record's own Δm ignored
    assert row(table, 'single_task')['delta_m'] == pytest.approx(0.0, abs=1e-9)
    assert table.rows.iloc[0]['method'] == 'single_task'  # baseline listed first
    assert any('Δm baseline' in n for n in table.notes)


def test_missing_baseline_gives_dash_and_reason():
    recs = [r for r in baselines() if r['tasks'] != ['human_parts']] + two_seed_mtlora()
    res = L.build_leaderboard(recs, known_methods=KNOWN)
    table = res.tables[0]
    r = row(table, 'mtlora', 'r=64')
    assert math.isnan(r['delta_m'])
    assert 'human_parts' in r['delta_m_reason']
    md = render_markdown(res, 'pascal_context')
    line = next(ln for ln in md.splitlines() if ln.startswith('| mtlora'))
    assert '| —' in line
    assert 'no single_task baseline record for human_parts' in md
    assert 'no single_task baseline record for human_parts' in render_text(res)


def test_not_comparable_records_never_mixed():
    recs = (baselines() + two_seed_mtlora()
            + [rec('mtlora', 'r=64', 0, {t: 10.0 for t in MTLORA}, synthetic=True)]
            + [rec('mtlora', 'r=64', 0, {t: 20.0 for t in MTLORA}, img_size=(512, 512))]
            + [rec('faar', '', 0, MTLORA, pretrained=None)])
    res = L.build_leaderboard(recs, known_methods=KNOWN)
    titles = [t.title for t in res.tables]
    assert len(titles) == 4
    real = res.tables[0]
    assert real.comparable_to_papers and 'SYNTHETIC' not in real.title
    assert not (real.rows[['semseg', 'sal']] <= 20.0).any(axis=None)
    syn = next(t for t in res.tables if t.key['synthetic'])
    assert 'SYNTHETIC DATA (not comparable to papers)' in syn.title
    assert list(syn.rows['semseg']) == [10.0]
    big = next(t for t in res.tables if t.key['img_size'] == [512, 512])
    assert '512x512' in big.title and list(big.rows['semseg']) == [20.0]
    rnd = next(t for t in res.tables if t.key['pretrained'] == 'random init')
    assert 'random init' in rnd.title
    for t in res.tables[1:]:  # no baseline with their keys: no Δm, with the reason
        assert t.rows['delta_m'].isna().all() and not t.comparable_to_papers
        assert any('no single_task baseline' in n for n in t.notes)
    md = render_markdown(res, 'pascal_context')
    assert md.count('\n## PASCAL-Context') == 4


def test_task_subsets_get_their_own_table():
    two = {'semseg': 68.0, 'sal': 64.0}
    res = L.build_leaderboard(baselines() + two_seed_mtlora() + [rec('mtlora', 'r=64', 0, two)],
                              known_methods=KNOWN)
    sub = next(t for t in res.tables if t.tasks == ['semseg', 'sal'])
    assert 'tasks: semseg, sal' in sub.title
    want = delta_m(two, {'semseg': 67.26, 'sal': 62.40}, ['semseg', 'sal'])
    assert row(sub, 'mtlora', 'r=64')['delta_m'] == pytest.approx(want)


def test_skipped_records_listed_never_crash(tmp_path):
    runs = tmp_path / 'runs'
    for r in baselines() + two_seed_mtlora() + [rec('mystery', '', 0, MTLORA)]:
        R.write_record(r, runs)
    (runs / 'garbage.json').write_text('{"schema_version": 1,,}')
    bad = rec('mtlora', 'r=64', 7, MTLORA)
    del bad['primary']
    (runs / 'no_primary.json').write_text(json.dumps(bad))
    text = L.run_leaderboard(runs, tmp_path / 'bench', out_dir=tmp_path / 'out',
                             known_methods=KNOWN, formats=('md',))
    assert 'garbage.json: not valid JSON' in text
    assert "no_primary.json: missing field 'primary'" in text
    assert "unknown method 'mystery'" in text
    md = (tmp_path / 'out' / 'leaderboard_pascal_context.md').read_text()
    assert '## Skipped' in md and 'garbage.json' in md
    assert 'mtlora' in md


def test_markdown_and_latex_bold_best_booktabs_escaping():
    extra = {'sal': {'maxF': 70.0}, 'normals': {'median': 14.0, 'within_11.25': 40.0}}
    recs = [rec('single_task', '', 0, {t: v}, extra={t: extra.get(t, {})})
            for t, v in PASCAL_BASE.items()]
    recs += [rec('mtlora', 'r=64', 0, MTLORA,
                 extra={'sal': {'maxF': 72.5}, 'normals': {'median': 13.0, 'within_11.25': 45.0}})]
    res = L.build_leaderboard(recs, known_methods=KNOWN)
    md = render_markdown(res, 'pascal_context')
    mt = next(ln for ln in md.splitlines() if ln.startswith('| mtlora'))
    st = next(ln for ln in md.splitlines() if ln.startswith('| single_task'))
    assert '**67.90**' in mt and '**16.60**' in mt and '**+2.54**' in mt
    assert '**61.93**' in st and '**59.84**' not in mt  # human_parts: the baseline is best
    assert 'Secondary metrics' in md and '**72.50**' in md and '**13.00**' in md

    tex = render_latex(res, 'pascal_context')
    for token in (r'\toprule', r'\midrule', r'\bottomrule', r'\textbf{67.90}',
                  r'\textbf{+2.54}', r'human\_parts', r'single\_task', r'(\%)', r'$\uparrow$',
                  r'$\Delta$m'):
        assert token in tex, token
    body = '\n'.join(ln for ln in tex.splitlines() if not ln.startswith('%'))
    assert '±' not in body and 'human_parts' not in body and '_task' not in body.replace(
        r'\_task', '')
    two = L.build_leaderboard(baselines() + two_seed_mtlora(), known_methods=KNOWN)
    assert r'$\pm$' in render_latex(two, 'pascal_context')


def test_latex_escape():
    assert latex_escape('a_b 5% ± #1 & x') == r'a\_b 5\% $\pm$ \#1 \& x'
    assert latex_escape('{x}\\') == r'\{x\}\textbackslash{}'


def test_write_leaderboard_files(tmp_path):
    res = L.build_leaderboard(baselines() + two_seed_mtlora(), known_methods=KNOWN)
    written = write_leaderboard(res, tmp_path)
    names = sorted(p.name for p in written)
    assert names == ['leaderboard_pascal_context.csv', 'leaderboard_pascal_context.json',
                     'leaderboard_pascal_context.md', 'leaderboard_pascal_context.tex']
    data = json.loads((tmp_path / 'leaderboard_pascal_context.json').read_text())
    assert data['tables'][0]['rows'][1]['method'] == 'mtlora'
    csv = pd.read_csv(tmp_path / 'leaderboard_pascal_context.csv')
    assert set(csv['source']) == {'reproduced'} and 'delta_m' in csv.columns
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


def test_bench_columns_and_device():
    bench = [{'schema_version': 1, 'kind': 'bench', 'bench_id': 'b1', 'method': 'mtlora',
              'variant': 'r=64', 'dataset': 'pascal_context', 'device': 'NVIDIA H100',
              'batch_size': 32, 'img_size': [448, 448], 'amp': 'bf16', 'train_img_s': 250.0,
              'infer_img_s': 800.0, 'peak_mem_mb': 9000.0, 'flops_per_img': 5.0e10,
              'full_run': {'total_h': 12.34, 'device': 'NVIDIA H100'},
              'created': '2026-01-01T00:00:00+00:00'}]
    res = L.build_leaderboard(baselines() + two_seed_mtlora(), bench_records=bench,
                              known_methods=KNOWN)
    r = row(res.tables[0], 'mtlora', 'r=64')
    assert r['train_img_s'] == 250.0 and r['bench_device'] == 'NVIDIA H100'
    assert r['full_run_h'] == 12.34
    text = render_text(res)
    assert 'infer img/s' in text and 'NVIDIA H100' in text and '800.0' in text
    # The projected cost of the whole schedule is a column, rounded to 0.1 h.
    assert 'full run (h)' in text and '12.3' in text



def test_backbone_sizes_are_separate_groups_with_their_own_baselines_and_bench():
    """Swin-B rows are never ranked with Swin-T rows, take their Δm from Swin-B single-task
    records only, and get the speed of the Swin-B bench record (``backbone``, or older records'
    ``arch``)."""
    swin_b = dict(backbone='swin-b', pretrained='swin_base_patch4_window7_224_22k.pth')
    b_base = {t: v + 1.0 for t, v in PASCAL_BASE.items()}
    runs = baselines() + two_seed_mtlora() + \
        [rec('single_task', '', 0, {t: v}, **swin_b) for t, v in b_base.items()] + \
        [rec('mtlora', 'r=64', 0, MTLORA, **swin_b)]

    def bench(train_img_s, **over):
        return {'schema_version': 1, 'kind': 'bench', 'bench_id': f'b{train_img_s}', 'method': 'mtlora',
                'variant': 'r=64', 'dataset': 'pascal_context', 'device': 'cpu', 'batch_size': 1,
                'img_size': [448, 448], 'amp': False, 'train_img_s': train_img_s, 'infer_img_s': 1.0,
                'peak_mem_mb': 1.0, 'flops_per_img': 1.0, 'created': '2026-01-01T00:00:00+00:00', **over}
    res = L.build_leaderboard(runs, bench_records=[bench(3.0, arch='tiny'), bench(1.0, arch='base', backbone='swin-b')],
                              known_methods=KNOWN)
    by_backbone = {t.key['backbone']: t for t in res.tables}
    assert set(by_backbone) == {'swin-t', 'swin-b'}
    r_b, r_t = row(by_backbone['swin-b'], 'mtlora', 'r=64'), row(by_backbone['swin-t'], 'mtlora', 'r=64')
    assert r_b['n_max'] == 1 and r_t['n_max'] == 2
    assert r_b['delta_m'] == pytest.approx(delta_m(MTLORA, b_base, list(PASCAL_BASE)))
    assert r_b['train_img_s'] == 1.0 and r_t['train_img_s'] == 3.0

# --------------------------------------------------------------------------- reported rows

EXPECTED_FLAGS = {
    # (table, variant): printed value. metrics.md: MTL full FT prints +2.23, recomputes +2.45;
    # papers.md: ablation +4.92 -> 4.76, +4.63 -> 4.53. "+ PDRS w/ LoRA" prints +2.83 and
    # recomputes to +2.852: 0.0216 off, just outside the 0.02 tolerance, so it is flagged too.
    ('PASCAL-Context main', ''): 2.23,
    ('PASCAL-Context ablation', 'ablation: + PDRS w/ DoRA'): 4.92,
    ('PASCAL-Context ablation', 'ablation: + TS-PD'): 4.63,
    ('PASCAL-Context ablation', 'ablation: + PDRS w/ LoRA'): 2.83,
}


def test_reference_csvs_are_complete_data():
    df, problems = load_reported(REFERENCE)
    assert problems == []
    assert set(df['dataset']) == {'pascal_context', 'nyudv2'}
    assert (df['citation'] != '').all() and (df['paper'] != '').all()
    pas = df[df['dataset'] == 'pascal_context']
    assert len(pas) == 28
    # the single-task rows are there, and MTLoRA r=64 is the same row in every paper
    single = pas[pas['method'] == 'single_task']
    assert len(single) >= 1 and (single['semseg'] == 67.21).all()
    m64 = pas[(pas['method'] == 'mtlora') & (pas['variant'] == 'r=64')]
    assert len(m64) == 4 and m64[['semseg', 'human_parts', 'sal', 'normals']].nunique().eq(1).all()
    assert set(pas[pas['paper'] == 'DiTASK']['params_note']) == {'encoder only'}
    nyu = df[df['dataset'] == 'nyudv2']
    assert set(nyu['method']) == {'single_task', 'full_ft', 'tadformer', 'faar', 'free_sinewich'}


def test_with_reported_rows_recomputed_and_flagged():
    res = L.build_leaderboard(baselines() + two_seed_mtlora(), with_reported=True,
                              reference_dir=REFERENCE, known_methods=KNOWN)
    rep = {t.dataset: t for t in res.reported}
    assert set(rep) == {'pascal_context', 'nyudv2'}
    rows = rep['pascal_context'].rows
    flagged = {}
    for _, r in rows.iterrows():
        if math.isnan(r['printed_delta_m']) or math.isnan(r['delta_m']):
            continue
        if r['delta_m_flag']:
            flagged[(r['table'], r['variant'])] = r['printed_delta_m']
            assert abs(r['delta_m'] - r['printed_delta_m']) > 0.02
            assert r['delta_m_flag'] == f"⚠ printed {r['printed_delta_m']:+.2f}"
        else:
            assert abs(r['delta_m'] - r['printed_delta_m']) <= 0.02 + 1e-9, r.to_dict()
    assert flagged == pytest.approx(EXPECTED_FLAGS)
    ft = rows[rows['method'] == 'full_ft'].iloc[0]
    assert ft['delta_m'] == pytest.approx(2.45, abs=0.005)
    nyu = rep['nyudv2'].rows
    assert not nyu['delta_m_flag'].astype(bool).any()
    sine = nyu[nyu['method'] == 'free_sinewich'].iloc[0]
    assert math.isnan(sine['delta_m']) and 'not reported' in sine['delta_m_reason']

    md = render_markdown(res, 'pascal_context')
    assert 'REPORTED in papers' in md
    assert 'reported: FAAR (arXiv 2603.20403)' in md and 'MTLoRA (CVPR 2024)' in md
    assert '+2.45 ⚠ printed +2.23' in md
    assert '+4.76 ⚠ printed +4.92' in md and '+4.53 ⚠ printed +4.63' in md
    tex = render_latex(res, 'pascal_context')
    assert r'\textbf{!} printed +2.23' in tex


def test_reproduced_minus_reported_difference_table():
    res = L.build_leaderboard(baselines() + two_seed_mtlora(), with_reported=True,
                              reference_dir=REFERENCE, known_methods=KNOWN)
    diffs = [d for d in res.differences if d.dataset == 'pascal_context']
    assert len(diffs) == 1
    d = diffs[0].rows
    m = d[d['method'] == 'mtlora'].iloc[0]
    assert 'MTLoRA (CVPR 2024)' in m['reported_source']  # the method's own paper first
    assert m['semseg_diff'] == pytest.approx(67.5 - 67.90)
    assert m['params_diff_m'] == pytest.approx(8.344634 - 8.34)
    s = d[d['method'] == 'single_task'].iloc[0]
    assert 'FAAR' in s['reported_source'] and s['params_reported_m'] == 112.62
    md = render_markdown(res, 'pascal_context')
    assert 'reproduced − reported' in md and '-0.40 (67.50 / 67.90)' in md

    # synthetic-only results are never diffed against papers
    syn = L.build_leaderboard(baselines(synthetic=True) + two_seed_mtlora(synthetic=True),
                              with_reported=True, reference_dir=REFERENCE, known_methods=KNOWN)
    assert syn.differences == []
    assert any('no reproduced table is comparable' in n for n in syn.notes)


# --------------------------------------------------------------------------- plots

def test_pareto_front():
    params = [1.0, 2.0, 3.0, 1.5, 10.0, float('nan')]
    dm = [1.0, 3.0, 2.0, 0.5, 3.5, 9.0]
    assert pareto_front(params, dm) == [0, 1, 4]


def test_png_files_produced(tmp_path):
    runs = tmp_path / 'runs'
    for r in baselines() + two_seed_mtlora():
        R.write_record(r, runs)
    text = L.run_leaderboard(runs, tmp_path / 'bench', out_dir=tmp_path / 'out',
                             dataset='pascal_context', with_reported=True, plots=True,
                             reference_dir=REFERENCE, known_methods=KNOWN, formats=())
    png = tmp_path / 'out' / 'pareto_pascal_context.png'
    assert png.is_file() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert (tmp_path / 'out' / 'tasks_pascal_context.png').stat().st_size > 10_000
    assert str(png) in text
    frame, title = pareto_frame(L.build_leaderboard(
        baselines() + two_seed_mtlora(), with_reported=True, reference_dir=REFERENCE,
        known_methods=KNOWN), 'pascal_context')
    assert set(frame['source']) == {'reproduced', 'reported'}
    assert not frame['variant'].astype(str).str.startswith('ablation').any()


def test_plots_accept_sparse_frames(tmp_path):
    df = pd.DataFrame([{'label': 'a', 'method': 'a', 'delta_m': float('nan'), 'params_m': 3.0,
                        'semseg': 60.0}])
    assert pareto_plot(df, tmp_path / 'p.png', 'empty').stat().st_size > 0
    assert task_bars(df, tmp_path / 't.png', tasks=['semseg']).stat().st_size > 0


def test_a_seed_run_twice_counts_once_newest_kept():
    again = rec('mtlora', 'r=64', 1, dict(MTLORA, semseg=70.0), created='2026-02-01T00:00:00+00:00',
                _path='runs/again.json')
    res = L.build_leaderboard(baselines() + two_seed_mtlora() + [again], known_methods=KNOWN)
    r = row(res.tables[0], 'mtlora', 'r=64')
    assert r['n_min'] == r['n_max'] == 2  # seeds 0 and 1, not three records
    assert r['semseg'] == pytest.approx((67.0 + 70.0) / 2)  # seed 1's newer record replaces the older one
    (reason,) = [why for _, why in res.skipped if 'repeats seed 1' in why]
    assert 'runs/again.json' in reason
    # another option value is another measurement, not a repeat
    other = rec('mtlora', 'r=64', 1, MTLORA, method_options={'dropout': 0.0})
    res = L.build_leaderboard(baselines() + two_seed_mtlora() + [other], known_methods=KNOWN)
    assert not [why for _, why in res.skipped if 'repeats' in why]
