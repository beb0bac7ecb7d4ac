"""``mtlbench reproduce TABLE``: every run a paper's table needs, then the table side by side.

- ``table_ids``: the table names (``faar-pascal-main``) and their reported rows.
- ``plan``: a table's rows as sweep jobs (method, config options, seeds), their projected cost.
- ``compare``: mtlbench's rows against the paper's, per-cell differences and a verdict per row.
- ``command``: what the command does (plan, run or emit a Slurm array, compare).

Nothing is imported here, so listing tables does not import torch.
"""
