"""Finding and resolving configs: ``--method faar --dataset pascal_context`` -> an mmengine Config.

Configs are mmengine Python configs under ``configs/`` (shipped inside the package as
``mtlbench.configs``). A method's default config for a dataset is
``configs/<method>/<method>_swin-t_<dataset>.py`` (underscores in names become dashes);
``--config PATH`` picks any other. Resolution fills what a leaf leaves to its bases (the
model's ``dataset`` and ``tasks`` from the dataset base) and validates ``--cfg-options`` keys,
so a typo fails loudly instead of silently adding an unused key. mmengine's runtime settings
(:data:`RUNTIME_KEYS`: ``visualizer``, ``default_hooks``, ``env_cfg``, ``log_processor``, ...)
need not be spelled out in a config; an override below them is checked against the class it
configures (a hook's, the visualizer's or the log processor's arguments) or mmengine's known keys.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from mmengine.config import Config, ConfigDict

from mtlbench.errors import UserError

__all__ = ['config_root', 'find_config', 'list_configs', 'load_config', 'check_overrides', 'ConfigError']


class ConfigError(UserError, ValueError):
    """A config that cannot be found or an override of a key that does not exist."""


def config_root() -> Path:
    """Directory holding the shipped configs (``configs/`` of the source tree)."""
    import mtlbench.configs as pkg
    return Path(pkg.__file__).resolve().parent


def _dash(name: str) -> str:
    return name.replace('_', '-')


def list_configs(method: Optional[str] = None) -> List[Path]:
    """All leaf configs (optionally of one method)."""
    root = config_root()
    dirs = [root / method] if method else [d for d in root.iterdir() if d.is_dir() and d.name != '_base_']
    out = []
    for d in dirs:
        if d.is_dir():
            out.extend(sorted(p for p in d.glob('*.py') if not p.name.startswith('_')))
    return out


def find_config(method: str, dataset: str) -> Path:
    """Default config of ``method`` on ``dataset``.

    Raises:
        ConfigError: naming the registered methods / available configs when none matches.
    """
    from mtlbench.registry import METHODS
    import mtlbench.methods  # noqa: F401  (registers methods)

    if METHODS.get(method) is None:
        raise ConfigError(f'unknown method {method!r}; registered methods: {sorted(METHODS.module_dict)}')
    path = config_root() / method / f'{_dash(method)}_swin-t_{_dash(dataset)}.py'
    if path.is_file():
        return path
    avail = [p.name for p in list_configs(method)]
    raise ConfigError(f'no default config {path.name} for method {method!r} on dataset {dataset!r} in '
                      f'{path.parent}; available: {avail or "none"} (pass one with --config)')


def _flatten_keys(d: Any, prefix: str = '') -> List[str]:
    keys = []
    if isinstance(d, dict):
        for k, v in d.items():
            full = f'{prefix}.{k}' if prefix else str(k)
            keys.append(full)
            keys.extend(_flatten_keys(v, full))
    return keys


#: Top-level keys of mmengine's Runner (its runtime settings). A config need not spell out their
#: sub-keys (mmengine has defaults), so an override below them is checked against what it
#: configures: the hook / visualizer / log-processor class's arguments, or mmengine's known keys.
RUNTIME_KEYS = ('default_hooks', 'custom_hooks', 'visualizer', 'env_cfg', 'log_processor', 'log_level',
                'randomness', 'load_from', 'resume', 'launcher', 'default_scope', 'experiment_name')
#: Sub-keys mmengine reads (Runner.setup_env / set_randomness); ``None``: anything below is passed on.
_KNOWN_SUBKEYS: Dict[str, Any] = {
    'env_cfg': {'cudnn_benchmark': None, 'mp_cfg': {'mp_start_method', 'opencv_num_threads'},
                'dist_cfg': None, 'resource_limit': None},
    'randomness': {'seed': None, 'deterministic': None, 'diff_rank_seed': None},
}


def check_overrides(cfg: Config, overrides: Dict[str, Any]) -> None:
    """Refuse overrides of keys that do not exist (except inside ``model.method`` and
    ``model.backbone``, whose keys are validated by the method config / backbone signature).
    Keys under mmengine's runtime settings (:data:`RUNTIME_KEYS`) are checked against the
    arguments of the class they configure instead (``default_hooks.checkpoint.interval`` against
    ``CheckpointHook``, ``visualizer.*`` against ``Visualizer``).

    Raises:
        ConfigError: naming the unknown key and close existing keys.
    """
    import difflib

    existing = set(_flatten_keys(cfg.to_dict()))
    open_prefixes = ('model.method.', 'model.loss_weights.', 'custom_hooks')  # checked when built
    decoder_keys = _decoder_options()
    for key in overrides:
        if key.startswith('model.decoder.') and key.split('.')[2] not in decoder_keys:
            close = difflib.get_close_matches(key.split('.')[2], sorted(decoder_keys), n=3)
            raise ConfigError(f'--cfg-options: the decoder has no option {key.split(".")[2]!r} ({key})' +
                              (f'; did you mean {close}?' if close else f'; options: {sorted(decoder_keys)}'))
        if key in existing or key.startswith(open_prefixes) or key.startswith('model.decoder.'):
            continue
        if key.split('.')[0] in RUNTIME_KEYS:
            problem = _runtime_key_problem(cfg, key, overrides)
            if problem is None:
                continue
            raise ConfigError(f'--cfg-options: {problem}')
        close = difflib.get_close_matches(key, sorted(existing), n=3)
        raise ConfigError(f'--cfg-options: the config has no key {key!r}' +
                          (f'; did you mean {close}?' if close else ''))


def _runtime_key_problem(cfg: Config, key: str, overrides: Dict[str, Any]) -> Optional[str]:
    """Why ``key`` (under one of :data:`RUNTIME_KEYS`) configures nothing, or None if it does."""
    import difflib

    parts = key.split('.')
    top = parts[0]
    if len(parts) == 1 or top == 'custom_hooks':
        return None  # the whole setting (built and checked by mmengine)

    def unknown(name: str, what: str, valid) -> str:
        close = difflib.get_close_matches(name, sorted(valid), n=3)
        return (f'{what} has no option {name!r} ({key})' +
                (f'; did you mean {close}?' if close else f'; options: {sorted(valid)}'))

    if top in _KNOWN_SUBKEYS:
        known = _KNOWN_SUBKEYS[top]
        if parts[1] not in known:
            return unknown(parts[1], top, known)
        below = known[parts[1]]
        if below is not None and len(parts) > 2 and parts[2] not in below:
            return unknown(parts[2], f'{top}.{parts[1]}', below)
        return None
    if top in ('visualizer', 'log_processor'):
        default_type = 'Visualizer' if top == 'visualizer' else 'LogProcessor'
        kind = overrides.get(f'{top}.type') or (cfg.get(top) or {}).get('type') or default_type
        args = _class_arguments(kind, 'visualizer' if top == 'visualizer' else 'log_processor')
        if args is None:
            return f'{top}.type {kind!r} is not a registered class ({key})'
        if parts[1] not in args | {'type'}:
            return unknown(parts[1], f'{top} ({kind})', args | {'type'})
        return None
    if top == 'default_hooks':
        if len(parts) == 2:
            return None  # a whole hook: dict(type=...) or None (disabled)
        hook = parts[1]
        given = overrides.get(f'default_hooks.{hook}')
        kind = overrides.get(f'default_hooks.{hook}.type') or (given.get('type') if isinstance(given, dict) else None) \
            or ((cfg.get('default_hooks') or {}).get(hook) or {}).get('type')
        if kind is None:
            return (f'default_hooks has no hook {hook!r} ({key}); add one with default_hooks.{hook}.type=<Hook class>; '
                    f'hooks: {sorted((cfg.get("default_hooks") or {}).keys())}')
        args = _class_arguments(kind, 'hook')
        if args is None:
            return f'default_hooks.{hook}.type {kind!r} is not a registered hook ({key})'
        if parts[2] not in args | {'type'}:
            return unknown(parts[2], f'default_hooks.{hook} ({kind})', args | {'type'})
        return None
    return f'{top} takes one value, not sub-keys ({key})'


def _class_arguments(kind: Any, registry: str) -> Any:
    """Named keyword arguments of the registered class ``kind`` (a set), or None if no such class
    is registered. A ``**kwargs`` catch-all is not counted (mmengine's ``CheckpointHook`` has
    one): a misspelt argument would vanish into it; set the whole entry
    (``default_hooks.checkpoint=dict(type=..., ...)``) to pass such extras."""
    import inspect

    import mmengine.hooks  # noqa: F401  (registers mmengine's classes)
    import mmengine.runner  # noqa: F401
    import mmengine.visualization  # noqa: F401

    import mtlbench.engine  # noqa: F401  (mtlbench's hooks)
    from mtlbench import registry as reg
    table = {'hook': reg.HOOKS, 'visualizer': reg.VISUALIZERS, 'log_processor': reg.LOG_PROCESSORS}[registry]
    cls = kind if inspect.isclass(kind) else table.get(kind)
    if cls is None:
        return None
    params = inspect.signature(cls.__init__).parameters
    return {n for n, p in params.items() if n != 'self' and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _decoder_options() -> set:
    """Keyword options of the decoder a config's ``model.decoder`` may set."""
    import inspect

    from mtlbench.heads.hrnet import MultiTaskDecoder
    own = {'tasks', 'num_outputs', 'in_channels'}  # filled from the dataset and the backbone
    return {n for n in inspect.signature(MultiTaskDecoder.__init__).parameters if n != 'self'} - own | {'type'}


def load_config(path: os.PathLike, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Load a config file, apply validated overrides and fill dataset-derived model fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file not found: {path}')
    cfg = Config.fromfile(str(path))
    if overrides:
        check_overrides(cfg, overrides)
        if any(k.startswith('model.loss_weights.') for k in overrides) and cfg.model.get('loss_weights') is None:
            cfg.model.loss_weights = {}  # None means "the reference weights"; a partial dict updates them
        cfg.merge_from_dict(overrides)
    resolve(cfg)
    return cfg


def resolve(cfg: Config) -> Config:
    """Fill ``model.dataset`` / ``model.tasks`` and the metric's tasks from the dataset base, and
    copy ``data_protocol`` (``mtlbench.datasets.transforms``) into the train and val datasets."""
    dataset = cfg.get('dataset_name')
    if dataset is None:
        raise ConfigError('config has no dataset_name (inherit a configs/_base_/datasets/*.py base)')
    model = cfg.model
    if model.get('dataset') is None:
        model.dataset = dataset
    tasks = list(cfg.get('tasks') or [])
    if model.get('tasks') is None:
        model.tasks = tasks
    tasks = list(model.tasks)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if key in cfg and cfg[key] is not None:
            inner_dataset(cfg[key]).tasks = tasks
    if 'val_evaluator' in cfg:
        cfg.val_evaluator.tasks = tasks
        cfg.val_evaluator.dataset_name = dataset
    img = tuple(model.backbone.get('img_size', cfg.get('img_size', (448, 448))))
    protocol = dict(cfg.get('data_protocol') or {})
    for key in ('train_dataloader', 'val_dataloader'):
        if key in cfg and cfg[key] is not None:
            inner_dataset(cfg[key]).img_size = img
            # one source of truth: the datasets follow ``data_protocol``, which the record names
            inner_dataset(cfg[key]).update(protocol)
    cfg.tasks = tasks
    return cfg


def inner_dataset(dataloader_cfg: Any) -> Any:
    """The dataset config of a dataloader, looking through wrappers (``SeededDataset``)."""
    ds = dataloader_cfg.dataset
    while ds.get('type') == 'SeededDataset':
        ds = ds.dataset
    return ds


def as_plain(obj: Any) -> Any:
    """ConfigDict / tuples -> JSON-able plain containers."""
    if isinstance(obj, (dict, ConfigDict)):
        return {str(k): as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)
