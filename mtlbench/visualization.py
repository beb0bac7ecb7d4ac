"""Where a run's training curves go: mmengine visualizer backends chosen by name.

Every run keeps mmengine's local ``vis_data/scalars.json``. By default it also writes
TensorBoard event files next to it (``<work_dir>/<timestamp>/vis_data/events.out.tfevents.*``,
mmengine's ``TensorboardVisBackend``) when the ``tensorboard`` package is installed
(``pip install 'mtlbench[tensorboard]'``); ``tensorboard --logdir work_dirs`` then shows every
run. Weights & Biases (``wandb``, ``pip install 'mtlbench[wandb]'``) is never on by default: it
needs an account and sends data off the machine. Choose with ``mtlbench run --vis-backends
local tensorboard wandb``, or set ``visualizer.vis_backends`` with ``--cfg-options`` for
anything else (that override is kept as given).
"""
from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Optional, Sequence

from mtlbench.errors import OptionError

__all__ = ['VIS_BACKENDS', 'default_vis_backends', 'vis_backend_configs', 'configure_visualizer']

#: name -> (mmengine backend type, Python package it needs, the pip extra that installs it)
VIS_BACKENDS: Dict[str, tuple] = {
    'local': ('LocalVisBackend', None, None),
    'tensorboard': ('TensorboardVisBackend', 'tensorboard', 'tensorboard'),
    'wandb': ('WandbVisBackend', 'wandb', 'wandb'),
}


def _installed(package: Optional[str]) -> bool:
    return package is None or importlib.util.find_spec(package) is not None


def default_vis_backends() -> List[str]:
    """``['local', 'tensorboard']`` when tensorboard is installed, else ``['local']``."""
    return ['local'] + (['tensorboard'] if _installed('tensorboard') else [])


def vis_backend_configs(names: Sequence[str]) -> List[Dict[str, Any]]:
    """mmengine ``vis_backends`` entries for backend ``names``.

    Raises:
        OptionError: an unknown name, or a backend whose package is not installed (naming the
            extra that installs it).
    """
    out = []
    for name in dict.fromkeys(names):  # in order, once each
        if name not in VIS_BACKENDS:
            raise OptionError(f'--vis-backends: unknown backend {name!r}; valid: {", ".join(VIS_BACKENDS)}')
        kind, package, extra = VIS_BACKENDS[name]
        if not _installed(package):
            raise OptionError(f"--vis-backends {name}: the {package!r} package is not installed "
                              f"(pip install 'mtlbench[{extra}]')")
        entry: Dict[str, Any] = dict(type=kind)
        if name == 'wandb':
            entry['init_kwargs'] = dict(project='mtlbench')
        out.append(entry)
    return out


def configure_visualizer(cfg: Any, names: Optional[Sequence[str]], overridden: bool = False) -> None:
    """Set ``cfg.visualizer`` to mmengine's ``Visualizer`` with the backends ``names`` (None:
    :func:`default_vis_backends`). ``overridden``: the user set ``visualizer.vis_backends``
    with ``--cfg-options``; their list is kept unless ``names`` is given too."""
    visualizer = dict(cfg.get('visualizer') or {})
    visualizer.setdefault('type', 'Visualizer')
    if names is None and overridden:
        cfg.visualizer = visualizer
        return
    visualizer['vis_backends'] = vis_backend_configs(default_vis_backends() if names is None else names)
    cfg.visualizer = visualizer
