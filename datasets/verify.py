"""Check a dataset copy on disk before spending GPU hours on it.

A training run that dies at iteration 30k on an undecodable JPEG, or silently trains on a
half-extracted archive, wastes more than the minutes a full check takes. :func:`verify_dataset`
walks the split files and every file they list for the chosen tasks and reports, naming files:

- errors: missing data root or split file, listed files absent, files that do not decode,
  maps whose size differs from their image, label values out of range, normals without 3
  channels, depth with NaN (the loader's own checks, :meth:`MultiTaskDataset.load_sample`, so
  verification and training agree on what is valid);
- warnings: split sizes that differ from the release (4,998 / 5,105 PASCAL; 795 / 654 NYUD;
  expected for subsets and synthetic copies), duplicate ids, ids in both splits.

It never writes anything into the dataset root.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mtlbench.errors import OptionError
from mtlbench.tasks import IGNORE_INDEX, check_tasks

from .base import MultiTaskDataset
from .errors import DatasetError
from .nyud import NYUDv2MT
from .pascal_context import PascalContextMT

__all__ = ['VerifyReport', 'verify_dataset']

_CLASSES = {'pascal_context': PascalContextMT, 'nyudv2': NYUDv2MT}


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_dataset`.

    Attributes:
        dataset: dataset name.
        root: the data root checked.
        tasks: tasks whose files were checked.
        errors: one line per problem, naming the file.
        warnings: one line per suspicious but usable fact.
        counts: ids listed per split.
        checked: samples whose content was read and validated, per split.
        stats: per split, content facts (e.g. images with person parts, valid-normal fraction).
    """
    dataset: str
    root: str
    tasks: tuple
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    checked: Dict[str, int] = field(default_factory=dict)
    stats: Dict[str, Dict[str, object]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f'{self.dataset} at {self.root}: {"OK" if self.ok else "FAILED"} '
                 f'({len(self.errors)} error(s), {len(self.warnings)} warning(s))',
                 f'  tasks: {", ".join(self.tasks)}']
        for split, n in self.counts.items():
            extra = f', content checked: {self.checked[split]}' if split in self.checked else ''
            lines.append(f'  {split}: {n} ids{extra}')
            for key, value in self.stats.get(split, {}).items():
                lines.append(f'    {key}: {value:g}' if isinstance(value, float)
                             else f'    {key}: {value}')
        lines += [f'  ERROR: {e}' for e in self.errors]
        lines += [f'  warning: {w}' for w in self.warnings]
        return '\n'.join(lines)


def _listed(errors: List[str], items: List[str], what: str, limit: int) -> None:
    """Append up to ``limit`` items, then one line counting the rest."""
    errors.extend(items[:limit])
    if len(items) > limit:
        errors.append(f'... and {len(items) - limit} more {what}')


def verify_dataset(dataset: str,
                   root: str,
                   splits: Sequence[str] = ('train', 'val'),
                   tasks: Optional[Sequence[str]] = None,
                   check_content: bool = True,
                   progress: bool = True,
                   max_listed: int = 20) -> VerifyReport:
    """Check a dataset copy: split files, counts, file presence and (optionally) content.

    Args:
        dataset: ``'pascal_context'`` or ``'nyudv2'``.
        root: the dataset root.
        splits: splits to check.
        tasks: tasks whose files are checked; None for all of the dataset's tasks.
        check_content: decode and validate every listed sample (sizes, value ranges). Without
            it only presence is checked (seconds instead of minutes on the full PASCAL).
        progress: show a progress bar while checking content.
        max_listed: per split and kind of problem, how many files are listed before the rest
            are counted.

    Returns:
        The report; ``report.ok`` is False when anything would break training or evaluation.
    """
    if dataset not in _CLASSES:
        raise OptionError(f'unknown dataset {dataset!r}; valid: {sorted(_CLASSES)}')
    tasks = check_tasks(dataset, tasks)
    cls = _CLASSES[dataset]
    report = VerifyReport(dataset=dataset, root=str(root), tasks=tasks)
    if not Path(root).expanduser().is_dir():
        report.errors.append(f'data root does not exist or is not a folder: {root}')
        return report
    split_ids: Dict[str, List[str]] = {}
    for split in splits:
        try:
            ds = cls(root, split=split, tasks=tasks, pipeline=[], check_files=False)
        except DatasetError as e:
            report.errors.append(str(e))
            continue
        split_ids[split] = ds.ids
        _check_split(ds, report, check_content, progress, max_listed)
    if len(split_ids) > 1:
        names = list(split_ids)
        for a_idx, a in enumerate(names):
            for b in names[a_idx + 1:]:
                both = sorted(set(split_ids[a]) & set(split_ids[b]))
                if both:
                    report.warnings.append(f'{len(both)} id(s) appear in both {a!r} and {b!r}, '
                                           f'e.g. {both[:3]}')
    return report


def _check_split(ds: MultiTaskDataset, report: VerifyReport, check_content: bool,
                 progress: bool, max_listed: int) -> None:
    split = ds.split
    split_file = ds.split_file()
    report.counts[split] = len(ds)
    expected = ds.METAINFO['split_sizes'][split]
    if len(ds) != expected:
        report.warnings.append(f'split {split!r} lists {len(ds)} ids ({split_file}); the full '
                               f'release has {expected} (fine for a subset or synthetic copy)')
    if len(ds) == 0:
        report.errors.append(f'split {split!r} is empty: {split_file}')
    dup = [i for i, c in Counter(ds.ids).items() if c > 1]
    if dup:
        report.warnings.append(f'split {split!r} lists {len(dup)} id(s) more than once, '
                               f'e.g. {dup[:3]}: {split_file}')

    missing = set(ds.missing_files())
    _listed(report.errors,
            [f'missing file: {p} (listed in {split_file})' for files in ds.files
             for p in files.values() if p in missing],
            f'missing files in split {split!r}', max_listed)
    if not check_content:
        return

    bad: List[str] = []
    stats = _Stats(ds.tasks)
    bar = None
    if progress and len(ds):
        from mmengine.utils import ProgressBar
        bar = ProgressBar(len(ds))
    checked = 0
    for i, files in enumerate(ds.files):
        if not any(p in missing for p in files.values()):
            try:
                stats.add(ds.load_sample(i))
                checked += 1
            except DatasetError as e:
                bad.append(str(e))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.file.write('\n')
    report.checked[split] = checked
    report.stats[split] = stats.summary()
    _listed(report.errors, bad, f'unreadable or invalid samples in split {split!r}', max_listed)


class _Stats:
    """Content facts accumulated over a split, for the report."""

    def __init__(self, tasks: Sequence[str]):
        self.tasks = tuple(tasks)
        self.n = 0
        self.sizes: Counter = Counter()
        self.with_parts = 0
        self.normals_valid = [0, 0]
        self.depth_valid = [0, 0]

    def add(self, sample: dict) -> None:
        self.n += 1
        self.sizes[sample['ori_shape']] += 1
        if 'human_parts' in sample:
            self.with_parts += int((sample['human_parts'] != IGNORE_INDEX).any())
        if 'normals' in sample:
            n = sample['normals']
            self.normals_valid[0] += int((np.abs(n).sum(-1) > 0).sum())
            self.normals_valid[1] += n.shape[0] * n.shape[1]
        if 'depth' in sample:
            self.depth_valid[0] += int((sample['depth'] > 0).sum())
            self.depth_valid[1] += sample['depth'].size

    def summary(self) -> Dict[str, object]:
        out: Dict[str, object] = {}
        if self.sizes:
            (h, w), _ = self.sizes.most_common(1)[0]
            out['distinct image sizes'] = len(self.sizes)
            out['most common size (H, W)'] = f'{h}x{w}'
        if 'human_parts' in self.tasks:
            out['images with person parts'] = self.with_parts
        if 'normals' in self.tasks and self.normals_valid[1]:
            out['valid normals fraction'] = round(self.normals_valid[0] / self.normals_valid[1], 4)
        if 'depth' in self.tasks and self.depth_valid[1]:
            out['valid depth fraction'] = round(self.depth_valid[0] / self.depth_valid[1], 4)
        return out
