"""Sweeps: many ``mtlbench run`` jobs (methods x seeds), run one after another or as a Slurm
job array.

A job is one ``mtlbench run --method M --seed S --dataset D ...`` call. ``run_sweep`` runs the
jobs in order in subprocesses and skips a job whose run record already exists in the runs
folder, so an interrupted sweep can be restarted with the same command. ``emit_slurm`` writes a
job-array script in which array task ``i`` runs job ``i`` under ``torchrun``.

A job matches an existing record on method, dataset, seed, synthetic flag and, when the job
names one, variant. The variant label is written by ``mtlbench run`` into the record; a job
that does not name it (a plain method string) matches any variant of its method. The synthetic
flag of a job is ``True`` with ``--synthetic`` among its arguments, ``False`` with
``--data-root`` (``mtlbench run`` falls back to synthetic data only without a data root), and
otherwise unknown (``None``), which matches records of either kind; pass ``synthetic=`` to
:func:`plan_sweep` to be explicit.

Example:
    >>> jobs = plan_sweep(['mtlora', {'method': 'mtlora', 'variant': 'r=32',
    ...                               'args': ['--cfg-options', 'model.method.r=32']}],
    ...                   seeds=[0, 1, 2], dataset='pascal_context')
    >>> run_sweep(jobs, 'results/runs', dry_run=True)
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from tabulate import tabulate

from mtlbench.errors import OptionError
from mtlbench.progress import format_duration
from mtlbench.reporting.records import load_records

__all__ = ['SweepJob', 'SweepOutcome', 'plan_sweep', 'find_existing', 'pending_jobs',
           'run_sweep', 'emit_slurm']

MethodSpec = Union[str, Mapping[str, Any], Tuple]


@dataclass(frozen=True)
class SweepJob:
    """One ``mtlbench run`` call.

    Args:
        method (str): method registry key.
        seed (int): random seed.
        dataset (str): dataset key.
        variant (str, optional): the variant label the run will record; None matches any.
        args (tuple[str]): further CLI arguments (method options, then the sweep's extras).
        synthetic (bool, optional): the run uses synthetic data (matched against records);
            None: unknown, records of either kind match.
        match (tuple[tuple[str, Any]]): further record fields a matching record must have,
            as ``(field, value)`` pairs (e.g. ``(('backbone', 'swin-t'),)``); lists in a record
            compare equal to tuples; a :data:`DERIVED_FIELDS` name compares a value computed
            from the record (``('pretrained_key', 'swin_tiny_patch4_window7_224.pth')``).
    """
    method: str
    seed: int
    dataset: str
    variant: Optional[str] = None
    args: Tuple[str, ...] = ()
    synthetic: Optional[bool] = False
    match: Tuple[Tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        v = f'[{self.variant}]' if self.variant else ''
        return f'{self.method}{v}_{self.dataset}_s{self.seed}' + ('_synthetic' if self.synthetic
                                                                   else '')

    def cli_args(self) -> List[str]:
        """Arguments after ``mtlbench``: ``run --method M --seed S --dataset D ...``."""
        return ['run', '--method', self.method, '--seed', str(self.seed), '--dataset',
                self.dataset, *self.args, '--resume', 'auto']  # an interrupted or requeued job continues

    def command(self, python: str = sys.executable) -> List[str]:
        """The subprocess command: ``[python, '-m', 'mtlbench.cli', 'run', ...]``."""
        return [python, '-m', 'mtlbench.cli', *self.cli_args()]


@dataclass
class SweepOutcome:
    """What happened to one job: ``status`` is ``'exists'``, ``'would run'`` (dry run),
    ``'ok'``, ``'ok, no record'`` or ``'failed'``."""
    job: SweepJob
    status: str
    returncode: Optional[int] = None
    records: List[str] = field(default_factory=list)


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _parse_spec(spec: MethodSpec) -> Tuple[str, Optional[str], Tuple[str, ...], Tuple[Tuple[str, Any], ...]]:
    if isinstance(spec, str):
        return spec, None, (), ()
    if isinstance(spec, Mapping):
        if 'method' not in spec:
            raise OptionError(f'method spec {spec!r} has no "method"')
        bad = set(spec) - {'method', 'variant', 'args', 'match'}
        if bad:
            raise OptionError(f'method spec {spec!r}: unknown key(s) {sorted(bad)}')
        args = spec.get('args', ())
        if isinstance(args, str):
            args = shlex.split(args)
        match = tuple((str(k), _hashable(v)) for k, v in dict(spec.get('match') or {}).items())
        return str(spec['method']), spec.get('variant'), tuple(str(a) for a in args), match
    if isinstance(spec, tuple) and 1 <= len(spec) <= 3:
        method = spec[0]
        variant = spec[1] if len(spec) > 1 else None
        args = spec[2] if len(spec) > 2 else ()
        return _parse_spec({'method': method, 'variant': variant, 'args': args})
    raise TypeError(f'method spec must be a str, dict or tuple, got {spec!r}')


def plan_sweep(methods: Sequence[MethodSpec], seeds: Iterable[int], dataset: str,
               extra_args: Sequence[str] = (), synthetic: Optional[bool] = None,
               ) -> List[SweepJob]:
    """The jobs of a sweep, method-major (all seeds of a method, then the next method).

    Args:
        methods (list): each a method key (``'mtlora'``), a dict ``{'method', 'variant',
            'args', 'match'}`` or a tuple ``(method, variant, args)``; ``args`` are that method's
            own CLI arguments (a list or one shell-quoted string), ``match`` a dict of further
            record fields an existing record must have to count as done (:class:`SweepJob`).
        seeds (list[int]): seeds to run for every method.
        dataset (str): dataset key.
        extra_args (list[str]): arguments appended to every job.
        synthetic (bool, optional): whether the jobs use synthetic data. Defaults to True
            with ``--synthetic`` among the arguments, False with ``--data-root``, else None
            (unknown: an existing record of either kind counts as done).

    Returns:
        list[SweepJob]: duplicates removed, order kept.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise OptionError('no seeds given')
    extra = tuple(str(a) for a in extra_args)
    jobs: List[SweepJob] = []
    seen = set()
    for spec in methods:
        method, variant, margs, match = _parse_spec(spec)
        args = margs + extra
        if synthetic is not None:
            syn: Optional[bool] = bool(synthetic)
        elif '--synthetic' in args:
            syn = True
        elif any(a == '--data-root' or a.startswith('--data-root=') for a in args):
            syn = False
        else:
            syn = None
        for seed in seeds:
            job = SweepJob(method=method, seed=seed, dataset=dataset, variant=variant,
                           args=args, synthetic=syn, match=match)
            if job not in seen:
                seen.add(job)
                jobs.append(job)
    return jobs


def _pretrained_key(record: Mapping) -> str:
    from mtlbench.reporting.comparability import pretrained_key
    return pretrained_key(record.get('pretrained'))


#: ``match`` fields computed from a record rather than read from it: ``pretrained_key`` is the
#: checkpoint's file name (``'random init'`` for none), as the comparability key compares it
DERIVED_FIELDS = {'pretrained_key': _pretrained_key}


def _field(record: Mapping, name: str) -> Any:
    derive = DERIVED_FIELDS.get(name)
    return derive(record) if derive is not None else _hashable(record.get(name))


def find_existing(job: SweepJob, records: Iterable[Mapping]) -> List[Mapping]:
    """Run records that already answer ``job`` (method, dataset, seed, synthetic flag, the
    job's ``match`` fields, raw or :data:`DERIVED_FIELDS`, and, when the job names one, variant)."""
    out = []
    for r in records:
        if r.get('kind') != 'run':
            continue
        if (r.get('method') == job.method and r.get('dataset') == job.dataset
                and r.get('seed') == job.seed
                and (job.synthetic is None or bool(r.get('synthetic')) == job.synthetic)
                and (job.variant is None or r.get('variant') == job.variant)
                and all(_field(r, k) == v for k, v in job.match)):
            out.append(r)
    return out


def pending_jobs(jobs: Sequence[SweepJob], runs_dir: Path | str) -> List[SweepJob]:
    """The jobs without a matching record in ``runs_dir`` (e.g. before :func:`emit_slurm`)."""
    records, _ = load_records(runs_dir, kind='run')
    return [j for j in jobs if not find_existing(j, records)]


def _default_runner(cmd: Sequence[str]) -> int:
    return subprocess.run(list(cmd), check=False).returncode


def run_sweep(jobs: Sequence[SweepJob], runs_dir: Path | str, dry_run: bool = False,
              runner: Optional[Callable[[List[str]], int]] = None,
              echo: Callable[[str], None] = print, stop_on_error: bool = False,
              ) -> List[SweepOutcome]:
    """Run the jobs one after another, skipping those whose record exists.

    Args:
        jobs (list[SweepJob]): from :func:`plan_sweep`.
        runs_dir (path): where run records are (read before every job, so records written by
            earlier jobs count).
        dry_run (bool): print the plan (with which jobs would be skipped) and run nothing.
        runner (callable, optional): ``runner(cmd) -> returncode``; defaults to
            ``subprocess.run``. ``cmd`` is ``[sys.executable, '-m', 'mtlbench.cli', 'run', ...]``.
        echo (callable): where progress lines go.
        stop_on_error (bool): stop at the first failed job (default: go on, report at the end).

    Returns:
        list[SweepOutcome]: one per job, in order (jobs not reached after a stop are absent).
    """
    runner = runner or _default_runner
    outcomes: List[SweepOutcome] = []
    if dry_run:
        records, _ = load_records(runs_dir, kind='run')
        table = []
        for k, job in enumerate(jobs):
            found = find_existing(job, records)
            status = 'exists' if found else 'would run'
            outcomes.append(SweepOutcome(job, status,
                                         records=[str(r.get('_path', r['run_id'])) for r in found]))
            table.append([k, job.name, status, shlex.join(job.command())])
        echo(f'Sweep plan: {len(jobs)} job(s), {sum(o.status == "would run" for o in outcomes)} '
             f'to run, records in {runs_dir}\n'
             + tabulate(table, headers=['#', 'job', 'status', 'command'], tablefmt='simple',
                        disable_numparse=True))
        return outcomes

    durations: List[float] = []  # of the jobs run here: the ETA of the rest
    for k, job in enumerate(jobs):
        records, _ = load_records(runs_dir, kind='run')
        found = find_existing(job, records)
        if found:
            kind = 'synthetic' if found[0].get('synthetic') else 'real-data'
            echo(f'[{k + 1}/{len(jobs)}] {job.name}: {kind} record exists '
                 f'({Path(found[0].get("_path", found[0]["run_id"])).name}), skipped')
            outcomes.append(SweepOutcome(job, 'exists',
                                         records=[str(r.get('_path', r['run_id'])) for r in found]))
            continue
        cmd = job.command()
        echo(f'[{k + 1}/{len(jobs)}] {job.name}: {shlex.join(cmd)}')
        started = time.monotonic()
        rc = int(runner(cmd))
        durations.append(time.monotonic() - started)
        left = len(jobs) - k - 1
        timing = (f'[{k + 1}/{len(jobs)}] {job.name}: took {format_duration(durations[-1])}' +
                  (f'; eta {format_duration(sum(durations) / len(durations) * left)} for {left} job(s) left '
                   '(those with a record are skipped)' if left else ''))
        if rc != 0:
            echo(f'[{k + 1}/{len(jobs)}] {job.name}: FAILED (exit code {rc})')
            echo(timing)
            outcomes.append(SweepOutcome(job, 'failed', returncode=rc))
            if stop_on_error:
                break
            continue
        after, _ = load_records(runs_dir, kind='run')
        found = find_existing(job, after)
        status = 'ok' if found else 'ok, no record'
        if not found:
            echo(f'[{k + 1}/{len(jobs)}] {job.name}: exited 0 but no matching record appeared '
                 f'in {runs_dir} (does the run write its record there?)')
        outcomes.append(SweepOutcome(job, status, returncode=rc,
                                     records=[str(r.get('_path', r['run_id'])) for r in found]))
        echo(timing)
    failed = [o for o in outcomes if o.status == 'failed']
    echo(f'Sweep done: {sum(o.status.startswith("ok") for o in outcomes)} run, '
         f'{sum(o.status == "exists" for o in outcomes)} skipped (record exists), '
         f'{len(failed)} failed' + (': ' + ', '.join(o.job.name for o in failed) if failed else ''))
    return outcomes


#: Seconds before the time limit at which Slurm warns the job (``--signal=B:TERM@...``).
PREEMPT_WARNING_S = 120

#: Shell function of the emitted script: runs the command in the background so that the batch
#: shell can forward Slurm's SIGTERM to it, then requeues the array task when the run reports
#: pre-emption (exit 143, ``preempt.pth`` saved).
_SLURM_RUN_FUNCTION = [
    'run_preemptible() {',
    '  set +e',
    '  "$@" &',
    '  local child=$!',
    """  trap 'kill -TERM "$child" 2>/dev/null' TERM""",
    '  wait "$child"; local rc=$?',
    '  while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done  # wait returns early on the trap',
    '  if [ "$rc" -eq 143 ]; then',
    '    echo "pre-empted: requeueing ${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}" >&2',
    '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
    '  fi',
    '  return "$rc"',
    '}',
]


def emit_slurm(jobs: Sequence[SweepJob], path: Path | str, gpus_per_job: int = 1, *,
               job_name: str = 'mtlbench-sweep', partition: Optional[str] = None,
               time: str = '24:00:00', cpus_per_gpu: int = 8, mem_per_gpu: Optional[str] = None,
               log_dir: str = 'slurm_logs', max_parallel: Optional[int] = None,
               setup: Sequence[str] = (), extra_sbatch: Sequence[str] = ()) -> Path:
    """Write a Slurm job-array script: array task ``i`` runs ``jobs[i]`` with
    ``torchrun --standalone --nproc_per_node=$GPUS -m mtlbench.cli run ... --launcher pytorch``.

    Args:
        jobs (list[SweepJob]): the jobs (filter with :func:`pending_jobs` to skip done ones).
        path (path): script to write (made executable).
        gpus_per_job (int): GPUs (and torchrun processes) per array task.
        job_name, partition, time, cpus_per_gpu, mem_per_gpu: ``#SBATCH`` settings.
        log_dir (str): folder of the ``%x_%A_%a.out`` logs, relative to the submission folder;
            created next to the script (Slurm does not create it).
        max_parallel (int, optional): at most this many array tasks at once (``%N``).
        setup (list[str]): shell lines run before the job (module loads, venv activation).
        extra_sbatch (list[str]): further ``#SBATCH`` option strings (``'--account=abc'``).

    Returns:
        Path: the script.
    """
    if not jobs:
        raise OptionError('no jobs to write')
    if gpus_per_job < 1:
        raise OptionError(f'--gpus-per-job must be >= 1, got {gpus_per_job}')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = f'0-{len(jobs) - 1}' + (f'%{int(max_parallel)}' if max_parallel else '')
    lines = ['#!/bin/bash',
             f'#SBATCH --job-name={job_name}',
             f'#SBATCH --array={array}',
             '#SBATCH --nodes=1',
             '#SBATCH --ntasks=1',
             f'#SBATCH --gres=gpu:{gpus_per_job}',
             f'#SBATCH --cpus-per-task={cpus_per_gpu * gpus_per_job}',
             f'#SBATCH --time={time}',
             f'#SBATCH --output={log_dir}/%x_%A_%a.out',
             # SIGTERM to the batch shell 2 minutes before the time limit; it forwards it to the run,
             # which saves preempt.pth and exits 143; the task is then requeued and resumes (--resume auto)
             f'#SBATCH --signal=B:TERM@{PREEMPT_WARNING_S}',
             '#SBATCH --requeue']
    if partition:
        lines.append(f'#SBATCH --partition={partition}')
    if mem_per_gpu:
        lines.append(f'#SBATCH --mem-per-gpu={mem_per_gpu}')
    lines += [f'#SBATCH {opt}' for opt in extra_sbatch]
    lines += ['#', f'# Generated by mtlbench.sweep.emit_slurm: {len(jobs)} job(s), one per array '
                   'task.',
              '# Slurm opens the log file before the script runs, so the log folder must exist:',
              f'#   mkdir -p {shlex.quote(log_dir)} && sbatch {shlex.quote(path.name)}', '',
              'set -euo pipefail', f'GPUS={gpus_per_job}', '', *_SLURM_RUN_FUNCTION]
    lines += list(setup)
    lines += ['', 'case "${SLURM_ARRAY_TASK_ID:?not running as a Slurm array task}" in']
    for k, job in enumerate(jobs):
        args = job.cli_args() + ['--launcher', 'pytorch']
        cmd = ('run_preemptible torchrun --standalone --nproc_per_node=$GPUS -m mtlbench.cli '
               + ' '.join(shlex.quote(a) for a in args))
        lines.append(f'  {k})  # {job.name}')
        lines.append(f'    {cmd}')
        lines.append('    ;;')
    lines += ['  *)', '    echo "no job for array task $SLURM_ARRAY_TASK_ID" >&2', '    exit 1',
              '    ;;', 'esac', '']
    path.write_text('\n'.join(lines), encoding='utf-8')
    path.chmod(0o755)
    if not Path(log_dir).is_absolute():  # for a submission from the script's folder
        (path.parent / log_dir).mkdir(parents=True, exist_ok=True)
    return path
