"""What a leaderboard holds before it is formatted: its tables as numeric DataFrames.

:mod:`~mtlbench.reporting.aggregate` fills :class:`GroupTable`,
:mod:`~mtlbench.reporting.reported` fills :class:`ReportedTable` and :class:`DiffTable`,
:mod:`~mtlbench.reporting.leaderboard` collects them in a :class:`LeaderboardResult`, and
:mod:`~mtlbench.reporting.render` formats it. The small cell helpers here are shared by all of
them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pandas as pd

__all__ = [
    'GroupTable', 'ReportedTable', 'DiffTable', 'LeaderboardResult', 'DEFAULT_REFERENCE_DIR',
    'DATASET_NAMES',
]

_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE_DIR = (_REPO_ROOT / 'results' / 'reference'
                         if (_REPO_ROOT / 'results' / 'reference').is_dir()
                         else Path('results') / 'reference')
DATASET_NAMES = {'pascal_context': 'PASCAL-Context', 'nyudv2': 'NYUDv2'}
DELTA_M_TOLERANCE = 0.02  # metrics.md: papers round; within ±0.02 counts as agreeing
PAPER_SIZE = (448, 448)
PAPER_PROTOCOL = 'resized-448'
PAPER_BACKBONE = 'swin-t'


@dataclass
class GroupTable:
    """One table of comparable reproduced rows.

    Attributes:
        title (str): label naming what the table holds.
        dataset (str): dataset key.
        key (dict): synthetic, backbone, img_size, eval_protocol, pretrained, protocol, tasks.
        comparable_to_papers (bool): real data, pretrained, the papers' size/protocol/backbone
            and the dataset's full task set.
        tasks (list[str]): task columns.
        rows (DataFrame): numeric rows (one per method configuration).
        detail (DataFrame): secondary metrics, same row order.
        notes (list[str]): Δm reasons, baseline provenance, caveats.
    """
    title: str
    dataset: str
    key: Dict[str, Any]
    comparable_to_papers: bool
    tasks: List[str]
    rows: pd.DataFrame
    detail: pd.DataFrame
    notes: List[str] = field(default_factory=list)
    secondary: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class ReportedTable:
    """Papers' rows for one dataset (``rows``: numeric, with recomputed and printed Δm)."""
    title: str
    dataset: str
    tasks: List[str]
    rows: pd.DataFrame
    notes: List[str] = field(default_factory=list)


@dataclass
class DiffTable:
    """Reproduced − reported for the method configurations that have both."""
    title: str
    dataset: str
    tasks: List[str]
    rows: pd.DataFrame
    notes: List[str] = field(default_factory=list)


@dataclass
class LeaderboardResult:
    """Everything a leaderboard shows, before formatting."""
    datasets: List[str]
    tables: List[GroupTable] = field(default_factory=list)
    reported: List[ReportedTable] = field(default_factory=list)
    differences: List[DiffTable] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    n_runs: int = 0
    n_bench: int = 0

    def for_dataset(self, dataset: str) -> 'LeaderboardResult':
        """The part of the result about one dataset (skipped entries are kept whole)."""
        return LeaderboardResult(
            datasets=[dataset],
            tables=[t for t in self.tables if t.dataset == dataset],
            reported=[t for t in self.reported if t.dataset == dataset],
            differences=[t for t in self.differences if t.dataset == dataset],
            skipped=list(self.skipped), notes=list(self.notes),
            n_runs=len({rid for t in self.tables if t.dataset == dataset and len(t.rows)
                        for ids in t.rows['run_ids'] for rid in str(ids).split(',') if rid}),
            n_bench=self.n_bench)


# ----------------------------------------------------------------------------- cell helpers

def _size_str(size: Sequence[int]) -> str:
    return 'x'.join(str(int(s)) for s in size)


def _is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _present(x: Any) -> bool:
    return not _is_nan(x) and x is not pd.NA and x != ''


def _row_label(method: str, variant: str) -> str:
    return f'{method} {variant}'.strip()
