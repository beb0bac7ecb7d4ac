"""Names of the papers' tables: ``<paper>-<dataset>-<table>``, e.g. ``faar-pascal-main``.

The rule (simple on purpose, so a name can be typed from the CSV): each part lowercased, every
run of characters other than letters and digits turned into one ``-``; the dataset is its short
name (:data:`DATASET_SHORT`: ``pascal``, ``nyud``) and the table name loses the dataset's
display name at its start (``PASCAL-Context main`` -> ``main``, ``NYUDv2 main (3 tasks)`` ->
``main-3-tasks``). The rows come from ``results/reference/*.csv``
(:func:`mtlbench.reporting.reported.load_reported`).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pandas as pd

from mtlbench.errors import UnknownNameError
from mtlbench.reporting.reported import load_reported
from mtlbench.reporting.tables import DATASET_NAMES

__all__ = ['DATASET_SHORT', 'slugify', 'table_id', 'PaperTable', 'load_tables', 'find_table']

#: Short dataset names used in table ids.
DATASET_SHORT = {'pascal_context': 'pascal', 'nyudv2': 'nyud'}


def slugify(text: str) -> str:
    """Lowercase; each run of non-alphanumerics -> ``-``; no ``-`` at either end."""
    return re.sub(r'[^a-z0-9]+', '-', str(text).lower()).strip('-')


def table_id(paper: str, dataset: str, table: str) -> str:
    """``<paper>-<dataset short name>-<table without the dataset's name>``."""
    name = str(table).strip()
    display = DATASET_NAMES.get(dataset, dataset)
    if name.lower().startswith(display.lower()):
        name = name[len(display):]
    return '-'.join(p for p in (slugify(paper), DATASET_SHORT.get(dataset, slugify(dataset)),
                                slugify(name)) if p)


@dataclass
class PaperTable:
    """One table of one paper: its id and its rows as the reference CSVs give them.

    Attributes:
        id (str): the :func:`table_id`.
        paper, dataset, table, citation (str): where the rows come from.
        rows (DataFrame): the table's rows of :func:`load_reported`, in CSV order.
        all_rows (DataFrame): every reported row of the dataset (for the Δm baselines).
    """
    id: str
    paper: str
    dataset: str
    table: str
    citation: str
    rows: pd.DataFrame
    all_rows: pd.DataFrame


def load_tables(reference_dir: Path | str) -> Dict[str, PaperTable]:
    """Every table of the reference CSVs, by id (in CSV order)."""
    df, problems = load_reported(reference_dir)
    if problems:
        from mtlbench.errors import OptionError
        raise OptionError('; '.join(f'{p}: {r}' for p, r in problems))
    out: Dict[str, PaperTable] = {}
    if df.empty:
        return out
    for (paper, dataset, table), _ in df.groupby(['paper', 'dataset', 'table'], sort=False):
        tid = table_id(paper, dataset, table)
        rows = df[(df['paper'] == paper) & (df['dataset'] == dataset) & (df['table'] == table)]
        out[tid] = PaperTable(id=tid, paper=paper, dataset=dataset, table=table,
                              citation=str(rows.iloc[0]['citation']), rows=rows.reset_index(drop=True),
                              all_rows=df[df['dataset'] == dataset].reset_index(drop=True))
    return out


def find_table(name: str, reference_dir: Path | str) -> PaperTable:
    """The table called ``name``.

    Raises:
        UnknownNameError: one line naming the closest ids (or all of them).
    """
    tables = load_tables(reference_dir)
    if name in tables:
        return tables[name]
    close = difflib.get_close_matches(name, list(tables), n=4, cutoff=0.5)
    hint = (f'closest: {", ".join(close)}' if close
            else f'tables: {", ".join(tables) or "none"}')
    raise UnknownNameError(f'unknown table {name!r} in {reference_dir} ({hint}); '
                           '`mtlbench reproduce --list` lists them')


def format_table_list(tables: Dict[str, PaperTable]) -> str:
    """``mtlbench reproduce --list``: each id with its source and rows."""
    lines: List[str] = []
    for tid, t in tables.items():
        lines.append(f'{tid}: {t.paper} ({t.citation}), {t.table} — {len(t.rows)} row(s)')
        for _, r in t.rows.iterrows():
            label = f'{r["method"]} {r["variant"]}'.strip()
            lines.append(f'    {label}' + (f'  [{r["origin"]}]' if r['origin'] else ''))
    return '\n'.join(lines) if lines else 'no tables (no reference CSVs)'
