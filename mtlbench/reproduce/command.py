"""What ``mtlbench reproduce TABLE`` does: plan, run (or emit a Slurm array), compare.

1. :func:`~mtlbench.reproduce.plan.plan_table` maps the table's rows to sweep jobs (baseline
   first) and prints them with their projected cost;
2. with ``dry_run`` it stops there (the sweep's dry run also says which jobs have records);
   with ``slurm`` the jobs without a record go into a job-array script
   (:func:`mtlbench.sweep.emit_slurm`); otherwise :func:`mtlbench.sweep.run_sweep` runs them one
   after another, with progress, skipping those whose record exists;
3. whatever records exist are compared with the paper's table
   (:func:`~mtlbench.reproduce.compare.compare_table`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional

from mtlbench.reporting.tables import DEFAULT_REFERENCE_DIR
from mtlbench.reproduce.plan import RunSettings, TablePlan

__all__ = ['ReproduceOptions', 'ReproduceResult', 'reproduce']


@dataclass
class ReproduceOptions:
    """Options of ``mtlbench reproduce`` (see ``mtlbench reproduce --help``)."""
    table: str
    settings: RunSettings = field(default_factory=RunSettings)
    reference_dir: str = str(DEFAULT_REFERENCE_DIR)
    bench_dir: str = 'results/bench'
    dry_run: bool = False
    slurm: bool = False
    slurm_out: Optional[str] = None
    gpus_per_job: int = 1
    tolerances: Optional[Mapping[str, float]] = None


@dataclass
class ReproduceResult:
    """The plan, the sweep's outcomes (empty on a dry run / Slurm) and the comparison."""
    plan: TablePlan
    outcomes: list = field(default_factory=list)
    comparison: object = None
    slurm_script: Optional[Path] = None


def reproduce(opts: ReproduceOptions, runner: Optional[Callable[[List[str]], int]] = None,
              echo: Callable[[str], None] = print) -> ReproduceResult:
    """Plan, run and compare one table (what the command does).

    Args:
        opts: the options.
        runner: ``runner(cmd) -> returncode`` for each job (default: a subprocess), as in
            :func:`mtlbench.sweep.run_sweep`.
        echo: where the text goes.
    """
    from mtlbench.reporting.records import load_records
    from mtlbench.reproduce.compare import DEFAULT_TOLERANCES, compare_table, render_comparison
    from mtlbench.reproduce.plan import format_plan, plan_table
    from mtlbench.reproduce.table_ids import find_table
    from mtlbench.sweep import emit_slurm, pending_jobs, run_sweep

    table = find_table(opts.table, opts.reference_dir)
    plan = plan_table(table, opts.settings)
    bench, _ = load_records(opts.bench_dir, kind='bench')
    echo(format_plan(plan, bench))
    result = ReproduceResult(plan=plan)
    runs = opts.settings.runs_dir
    if not plan.jobs:
        echo('no runnable row: nothing to run.')
    elif opts.dry_run:
        echo('')
        run_sweep(plan.jobs, runs, dry_run=True, echo=echo)
        return result
    elif opts.slurm:
        todo = pending_jobs(plan.jobs, runs)
        if todo:
            out = opts.slurm_out or f'slurm/reproduce_{table.id}.sbatch'
            result.slurm_script = emit_slurm(todo, out, gpus_per_job=opts.gpus_per_job,
                                             job_name=f'reproduce-{table.id}')
            echo(f'Slurm job-array script written: {result.slurm_script} ({len(todo)} job(s) without a '
                 f'record, of {len(plan.jobs)}); run `mtlbench reproduce {table.id}` again once they finish')
        else:
            echo(f'every job of {table.id} has a record: nothing to submit')
    else:
        result.outcomes = run_sweep(plan.jobs, runs, runner=runner, echo=echo)
    records, _ = load_records(runs, kind='run')
    result.comparison = compare_table(plan, records, opts.tolerances or DEFAULT_TOLERANCES)
    echo('')
    echo(render_comparison(result.comparison))
    return result
