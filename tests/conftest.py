"""Shared fixtures: small synthetic datasets in the real layouts (helpers: mtl_testing.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

# Keep every cache write of the test session inside a temporary folder.
os.environ.setdefault('MTLBENCH_CACHE', str(Path(os.environ.get('PYTEST_TMPDIR', '/tmp')) / 'mtlbench-test-cache'))


@pytest.fixture(scope='session')
def pascal_root(tmp_path_factory) -> str:
    from mtlbench.datasets import write_synthetic_dataset
    root = tmp_path_factory.mktemp('pascal')
    write_synthetic_dataset('pascal_context', str(root), n=16, seed=0)
    return str(root)


@pytest.fixture(scope='session')
def nyud_root(tmp_path_factory) -> str:
    from mtlbench.datasets import write_synthetic_dataset
    root = tmp_path_factory.mktemp('nyud')
    write_synthetic_dataset('nyudv2', str(root), n=12, seed=0)
    return str(root)
