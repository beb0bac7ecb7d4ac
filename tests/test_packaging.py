"""Every Python package of the source tree is listed in pyproject.toml, so a fresh (non-editable)
install ships it: a method package under ``methods/`` that is missing there imports in a
checkout and silently vanishes from an installed copy."""
from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:   # Python 3.10: the tomli backport, when installed
    tomllib = pytest.importorskip('tomli')

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed():
    setup = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']
    dirs = {name: ROOT / path for name, path in setup['package-dir'].items()}
    found = set()
    for name, path in dirs.items():
        for init in path.rglob('__init__.py'):
            rel = init.parent.relative_to(path)
            if '__pycache__' in rel.parts or any(p.startswith('.') for p in rel.parts):
                continue
            found.add('.'.join([name, *rel.parts]) if rel.parts else name)
    missing = sorted(found - set(setup['packages']))
    assert not missing, f'packages missing from pyproject.toml [tool.setuptools] packages: {missing}'
