"""Leaderboards from run records (and bench records), with papers' reported numbers on request.

Inputs are only files: run records (``results/runs``), bench records (``results/bench``) and the
papers' tables as data (``results/reference/*.csv``). Outputs are
``results/leaderboard_<dataset>.{md,csv,tex,json}`` and the text printed by ``mtlbench
leaderboard``.

Rules the tables follow (``/work/shared/reference/metrics.md``):

- One row per method configuration: ``(method, variant, checkpoint)``. Per-task primary metrics
  are the mean ± sample standard deviation (ddof 1) over the seeds (records), with ``n``.
- Δm is recomputed from the per-task means against the ``single_task`` run records with the
  same dataset, backbone, input size, eval protocol, synthetic flag, pretrained checkpoint and
  training protocol.
  The ``delta_m`` stored in a record is never read. Without a baseline the cell is ``—`` and
  the reason is listed under the table.
- Records that are not comparable are never in one table: dataset, synthetic flag, backbone,
  input size, eval protocol, pretrained checkpoint, training protocol (``'reference'``, the
  departures of ``mtlbench.protocol``, or ``'unknown'`` for older records) and (for multi-task
  rows) the task set each split tables. Tables are titled with what they hold.
- Reported rows (``with_reported``) sit in their own table per dataset; their Δm is recomputed
  from their own per-task numbers against the single-task row of the same paper, and a
  printed Δm more than 0.02 away is flagged. A difference table gives reproduced − reported
  for methods that have both.

Not in the brief, chosen here:
- The pretrained checkpoint (by file name, with its pretraining source: ImageNet-1K / 22K) and
  the task set are part of the comparability key: a random-init run or a 2-task run is not
  comparable to a pretrained 4-task run, nor a 22K-pretrained run to a 1K one (tables and their
  Δm baselines never mix them; the title shows the source).
- A ``single_task`` row's parameter counts are the sum over its per-task models (the papers
  print 112.62M for four single-task models), averaged over seeds per model.
- Throughput/memory columns are bolded only when every bench number in the table comes from
  the same device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from mtlbench.reporting.aggregate import _build_group
from mtlbench.reporting.comparability import newest_per_identity
from mtlbench.reporting.grouping import _group_records, _group_sort_key
from mtlbench.reporting.records import load_records
from mtlbench.reporting.render import render_text, write_leaderboard
from mtlbench.reporting.reported import _build_diff, _build_reported, load_reported
from mtlbench.reporting.tables import (DATASET_NAMES, DEFAULT_REFERENCE_DIR, PAPER_BACKBONE,
                                       PAPER_PROTOCOL, PAPER_SIZE, LeaderboardResult, _row_label,
                                       _size_str)
from mtlbench.tasks import DATASET_TASKS

__all__ = ['build_leaderboard', 'run_leaderboard']


def _registered_methods() -> Optional[set]:
    """Registry keys of ``METHODS`` after importing ``mtlbench.methods``; None if unavailable."""
    try:
        import importlib
        importlib.import_module('mtlbench.methods')
        from mtlbench.registry import METHODS
        keys = set(METHODS.module_dict)
    except Exception:
        return None
    return keys or None


def build_leaderboard(records: Sequence[Mapping], dataset: Optional[str] = None,
                      with_reported: bool = False,
                      reference_dir: Path | str = DEFAULT_REFERENCE_DIR,
                      bench_records: Sequence[Mapping] = (),
                      known_methods: Optional[Iterable[str]] = None,
                      skipped: Sequence[Tuple[Any, str]] = ()) -> LeaderboardResult:
    """Group, aggregate and score run records.

    Args:
        records (list[dict]): run records (loaded and validated; other kinds are ignored,
            bench records may be passed here too).
        dataset (str, optional): only this dataset. Defaults to every dataset present.
        with_reported (bool): add the papers' rows and difference tables.
        reference_dir (path): folder of the reference CSVs.
        bench_records (list[dict]): bench records for the speed/memory columns.
        known_methods (set[str], optional): method keys to accept; records of other methods
            are skipped with a reason. Defaults to accepting every method.
        skipped (list): ``(path, reason)`` from loading, carried into the result.

    Returns:
        LeaderboardResult: numeric tables, notes and skipped entries.
    """
    skipped_out: List[Tuple[str, str]] = [(str(p), r) for p, r in skipped]
    known = set(known_methods) if known_methods is not None else None
    runs, bench = [], list(r for r in bench_records if r.get('kind') == 'bench')
    bench += [r for r in records if r.get('kind') == 'bench']
    for r in records:
        if r.get('kind') != 'run':
            continue
        where = r.get('_path', r.get('run_id', '?'))
        if known is not None and r.get('method') not in known:
            skipped_out.append((str(where), f'unknown method {r.get("method")!r} '
                                            f'(not registered)'))
            continue
        if r.get('dataset') not in DATASET_TASKS:
            skipped_out.append((str(where), f'unknown dataset {r.get("dataset")!r}'))
            continue
        if dataset is not None and r['dataset'] != dataset:
            continue
        runs.append(r)
    runs, repeats = newest_per_identity(runs)  # a seed run twice is one seed, not n=2
    for repeat, kept in repeats:
        skipped_out.append((str(repeat.get('_path', repeat.get('run_id', '?'))),
                            f'repeats seed {repeat["seed"]} of {_row_label(repeat["method"], repeat["variant"])} '
                            f'(same method, options, dataset and protocol); the newest record '
                            f'{kept.get("_path", kept.get("run_id", "?"))} is counted instead'))
    if known is not None:
        for b in list(bench):
            if b.get('method') not in known:
                skipped_out.append((str(b.get('_path', b.get('bench_id', '?'))),
                                    f'bench record of unknown method {b.get("method")!r}'))
                bench.remove(b)

    datasets = [dataset] if dataset else sorted({r['dataset'] for r in runs})
    result = LeaderboardResult(datasets=list(datasets), skipped=skipped_out, n_runs=len(runs),
                               n_bench=len(bench))
    groups = _group_records(runs)
    for gkey in sorted(groups, key=_group_sort_key):
        ds, synthetic, backbone, size, eval_protocol, pre, protocol, tasks = gkey
        key = {'synthetic': synthetic, 'backbone': backbone, 'img_size': list(size),
               'eval_protocol': eval_protocol, 'pretrained': pre, 'protocol': protocol,
               'tasks': list(tasks)}
        result.tables.append(_build_group(ds, key, groups[gkey], runs, bench))

    if with_reported:
        rep_all, problems = load_reported(reference_dir)
        result.skipped += problems
        if rep_all.empty:
            result.notes.append(f'--with-reported: no reference CSVs found in {reference_dir}.')
        rep_datasets = sorted(set(rep_all['dataset'])) if not rep_all.empty else []
        if dataset:
            rep_datasets = [d for d in rep_datasets if d == dataset]
        for ds in rep_datasets:
            if ds not in result.datasets:
                result.datasets.append(ds)
            rep = _build_reported(rep_all[rep_all['dataset'] == ds].reset_index(drop=True), ds)
            result.reported.append(rep)
            comparable = [g for g in result.tables if g.dataset == ds and g.comparable_to_papers]
            for g in comparable:
                diff = _build_diff(g, rep)
                if diff is not None:
                    result.differences.append(diff)
            if not comparable and any(g.dataset == ds for g in result.tables):
                result.notes.append(
                    f'{DATASET_NAMES.get(ds, ds)}: no reproduced table is comparable to the '
                    f'papers (needs real data, a pretrained {PAPER_BACKBONE}, '
                    f'{_size_str(PAPER_SIZE)} {PAPER_PROTOCOL}, all tasks), so no differences.')
    return result


def run_leaderboard(runs_dir: Path | str = 'results/runs', bench_dir: Path | str = 'results/bench',
                    dataset: Optional[str] = None,
                    formats: Sequence[str] = ('md', 'csv', 'tex', 'json'),
                    out_dir: Path | str = 'results', with_reported: bool = False,
                    plots: bool = False, reference_dir: Path | str = DEFAULT_REFERENCE_DIR,
                    known_methods: Optional[Iterable[str]] = None,
                    echo: Optional[Callable[[str], None]] = None) -> str:
    """Load records, build, write and describe the leaderboards (what ``mtlbench
    leaderboard`` does).

    Args:
        runs_dir (path): run records. bench_dir (path): bench records.
        dataset (str, optional): one dataset; defaults to every dataset with records.
        formats (list[str]): files to write (``md``, ``csv``, ``tex``, ``json``); empty: none.
        out_dir (path): where ``leaderboard_<dataset>.*`` and plots go.
        with_reported (bool): add papers' rows and difference tables.
        plots (bool): also write ``pareto_<dataset>.png`` and ``tasks_<dataset>.png``.
        reference_dir (path): reference CSVs.
        known_methods (set[str], optional): accepted method keys; defaults to the ``METHODS``
            registry when it can be imported and is non-empty, else every method.
        echo (callable, optional): called with the text (e.g. ``print``).

    Returns:
        str: the text (tables, notes, skipped files, files written).
    """
    runs, skipped = load_records(runs_dir, kind='run')
    bench, bench_skipped = load_records(bench_dir, kind='bench')
    if known_methods is None:
        known_methods = _registered_methods()
    result = build_leaderboard(runs, dataset=dataset, with_reported=with_reported,
                               reference_dir=reference_dir, bench_records=bench,
                               known_methods=known_methods,
                               skipped=list(skipped) + list(bench_skipped))
    text = render_text(result)
    written = write_leaderboard(result, out_dir, formats) if formats else []
    if plots:
        from mtlbench.reporting import plots as _plots
        for ds in result.datasets:
            frame, title = _plots.pareto_frame(result, ds)
            if frame.empty:
                continue
            written.append(_plots.pareto_plot(frame, Path(out_dir) / f'pareto_{ds}.png', title))
            tasks = [t for t in DATASET_TASKS.get(ds, {}) if t in frame.columns]
            written.append(_plots.task_bars(frame, Path(out_dir) / f'tasks_{ds}.png',
                                            tasks=tasks, title=title))
    if written:
        text += 'Wrote:\n' + '\n'.join(f'  {p}' for p in written) + '\n'
    if echo is not None:
        echo(text)
    return text
