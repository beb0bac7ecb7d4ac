"""Run records and the leaderboards, files and plots made from them.

- ``schema``: the record fields (schema version 1) and ``validate_record``.
- ``records``: making, writing (atomically) and reading records.
- ``comparability``: which records may be compared, repeats, single-task baselines, Δm of a record.
- ``best_delta_m``: the reference's best-Δm pick, a flagged extra of a record (never a table number).
- ``tables``: the leaderboard's numeric tables before formatting.
- ``grouping``: records split into tables of comparable records.
- ``aggregate``: one table's rows (mean ± std over seeds, Δm, bench columns).
- ``reported``: the papers' rows and reproduced − reported tables.
- ``leaderboard``: ``build_leaderboard`` and ``run_leaderboard`` (``mtlbench leaderboard``).
- ``cells`` / ``render``: display strings, and the md / csv / tex / json files.
- ``plots``: the Pareto plot and per-task bars.

Nothing is imported here, so reading and writing records does not import pandas or matplotlib.
"""
