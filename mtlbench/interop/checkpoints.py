"""Load a checkpoint to be scored (``mtlbench run --eval-only CKPT``), refusing one that is not
the model this run builds.

Two layouts are recognised:

* mtlbench's own (mmengine: ``'meta'`` + ``'state_dict'``). What it was trained as (method and
  its options, dataset, tasks) is read from the config text mmengine keeps in ``meta['cfg']``,
  parsed as data with :mod:`ast` (never executed). A different method, variant, dataset or task
  list is refused with one line naming both; so is any key or shape mismatch (strict loading:
  e.g. MTLoRA at another task rank). Options that change neither shapes nor the variant label
  (e.g. a dropout or a scale) are logged as a warning, not refused: scoring with another scale
  can be deliberate.
* the MTLoRA reference's (``'model'`` + yacs ``'config'``; DiTASK's release too): imported
  through :mod:`mtlbench.interop.mtlora_reference`, strictly.

Anything else is one :class:`~mtlbench.engine.checkpoint.CheckpointError`.
"""
from __future__ import annotations

import ast
import logging
import os.path as osp
from typing import Any, Dict, Mapping, Optional

import torch
from mmengine.logging import print_log

from mtlbench.engine.checkpoint import CheckpointError, strict_load_problems
from mtlbench.interop.mtlora_reference import (REFERENCE_GLOBALS, describe_reference, import_reference_state,
                                               is_reference_checkpoint, reference_method)

__all__ = ['CheckpointMismatchError', 'read_checkpoint', 'trained_as', 'describe_model', 'load_for_evaluation',
           'check_pretrained_declaration']


class CheckpointMismatchError(CheckpointError):
    """The checkpoint holds another model than the one this run builds."""


def read_checkpoint(path: str) -> Any:
    """``torch.load(weights_only=True)`` with mmengine's plain types and the reference's yacs
    config (as a plain dict) allowed; nothing else is unpickled, and a file that holds anything
    else is refused naming what it holds."""
    if not osp.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        with torch.serialization.safe_globals(REFERENCE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        outside = _disallowed_globals(path)
        if outside:
            first = f'it holds objects outside the allow-list, not loaded: {", ".join(outside[:4])}'
        raise CheckpointError(f'{path}: cannot be loaded as a checkpoint ({first})') from err


def _disallowed_globals(path: str) -> list:
    """Classes / functions the file's pickle names that the allow-list lacks (read from the
    pickle's opcodes; nothing is unpickled)."""
    allowed = {entry[1] if isinstance(entry, tuple) else f'{entry.__module__}.{entry.__qualname__}'
               for entry in REFERENCE_GLOBALS}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: the load error says enough
        return []
    return [n for n in names if n not in allowed and n.replace('__builtin__.', 'builtins.') not in allowed]


def _literal(node: ast.AST) -> Any:
    """``ast.literal_eval`` that also accepts ``dict(k=v, ...)`` (mmengine's config text)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'dict' and not node.args:
        if any(kw.arg is None for kw in node.keywords):
            raise ValueError('dict(**...) is not a literal')
        return {kw.arg: _literal(kw.value) for kw in node.keywords}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


def trained_as(ckpt: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``model`` dict of an mtlbench checkpoint's config (method, dataset, tasks, ...), or
    None when the checkpoint has no readable config."""
    text = (ckpt.get('meta') or {}).get('cfg') if isinstance(ckpt.get('meta'), dict) else None
    if not isinstance(text, str):
        return None
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # not mmengine's text: no declaration
        return None
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == 'model' for t in stmt.targets):
            try:
                model = _literal(stmt.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return None
            return model if isinstance(model, dict) and isinstance(model.get('method'), dict) else None
    return None


def _label(method: str, variant: str, dataset: Any, tasks: Any) -> str:
    tasks = '/'.join(tasks) if isinstance(tasks, (list, tuple)) else tasks
    return f'{method}{" " + variant if variant else ""} ({dataset}: {tasks})'


def describe_model(model: torch.nn.Module) -> str:
    """``'mtlora r=64 (pascal_context: semseg/human_parts/sal/normals)'``."""
    return _label(model.method.name, model.method.variant(), model.dataset_name, list(model.tasks))


def _trained_method(declared: Dict[str, Any]) -> Optional[Any]:
    """The declared method, built (cheap: no model), or None if this code cannot build it."""
    from mtlbench.method import build_method

    try:
        return build_method(dict(declared['method']), declared.get('tasks') or ['semseg'])
    except Exception:  # noqa: BLE001 - an unknown method or option: compared by name only
        return None


def _load_mtlbench(path: str, ckpt: Mapping[str, Any], model: torch.nn.Module) -> None:
    ours = describe_model(model)
    declared = trained_as(ckpt)
    differ: list = []
    if declared is not None:
        method = _trained_method(declared)
        name = method.name if method is not None else declared['method'].get('type', '?')
        variant = method.variant() if method is not None else ''
        tasks = list(declared.get('tasks') or model.tasks)
        dataset = declared.get('dataset', '?')
        theirs = _label(name, variant, dataset, tasks)
        if (name != model.method.name or dataset != model.dataset_name or tasks != list(model.tasks)
                or (method is not None and variant != model.method.variant())):
            raise CheckpointMismatchError(f'{path} was trained as {theirs}; this run builds {ours}')
        if method is not None:  # same method and variant label; other options may still differ
            old, new = method.config.to_dict(), model.method.config.to_dict()
            differ = sorted(k for k in old if _plain(old[k]) != _plain(new.get(k)))
            if differ:
                theirs = _label(name, ' '.join([variant] + [f'{k}={old[k]!r}' for k in differ]).strip(), dataset, tasks)
                ours = _label(model.method.name, ' '.join([model.method.variant()] + [
                    f'{k}={new.get(k)!r}' for k in differ]).strip(), model.dataset_name, list(model.tasks))
    else:
        theirs = 'a checkpoint without a readable config'
    state = ckpt['state_dict']
    if not isinstance(state, dict):
        raise CheckpointError(f'{path}: "state_dict" is not a dict of tensors')
    problem = '; '.join(strict_load_problems(state, model.state_dict())) or None
    if problem:
        raise CheckpointMismatchError(f'{path} was trained as {theirs}; this run builds {ours}: {problem}')
    if differ:  # the weights fit (e.g. a scale or a dropout): scored with this run's options, said so
        print_log(f'{path} was trained as {theirs}; scored as {ours}', logger='current', level=logging.WARNING)
    model.load_state_dict(state, strict=True)


def _config_label(model_cfg: Mapping[str, Any]) -> str:
    """``'mtlora r=64 (pascal_context: semseg/sal)'`` of a config's (or a declaration's) ``model`` dict."""
    method = _trained_method(dict(model_cfg))
    name = method.name if method is not None else dict(model_cfg['method']).get('type', '?')
    variant = method.variant() if method is not None else ''
    return _label(name, variant, model_cfg.get('dataset', '?'), list(model_cfg.get('tasks') or []))


def check_pretrained_declaration(path: str, model_cfg: Mapping[str, Any]) -> None:
    """``--pretrained`` takes backbone weights. A checkpoint that declares what it was trained as
    (an mtlbench checkpoint with its config) is refused with one line naming both models: one
    of another method, variant, shape-changing option, dataset or task list because its weights
    belong to another model, one of this very model because ``--resume`` (continue it) or
    ``--eval-only`` (score it) is what was meant. A file without a declaration (plain backbone
    weights, the official Swin release, timm's) is left to the backbone's loader.

    Args:
        path: the ``--pretrained`` file.
        model_cfg: the run's resolved ``model`` config (method, dataset, tasks, backbone, decoder).

    Raises:
        CheckpointMismatchError: the file declares a model.
    """
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError:
        return  # unreadable here: the backbone loader reports it in its own words
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get('meta'), dict) and 'state_dict' in ckpt):
        return
    declared = trained_as(ckpt)
    if declared is None:
        return
    from mtlbench.run import model_identity  # one definition of "the same model" (resume uses it too)
    ours_cfg = {k: _plain_tree(v) for k, v in dict(model_cfg).items()}
    want, got = model_identity(ours_cfg), model_identity(declared)
    differ = [k for k in want if _plain_tree(got.get(k)) != _plain_tree(want.get(k))]
    theirs, ours = _config_label(declared), _config_label(ours_cfg)
    if differ:
        raise CheckpointMismatchError(f'--pretrained {path} was trained as {theirs}; this run builds {ours} '
                                      f'({", ".join(differ)} differ)')
    raise CheckpointMismatchError(f'--pretrained {path} is a checkpoint of this same model ({ours}), not backbone '
                                  'weights: continue it with --resume (in its work dir) or score it with --eval-only')


def _plain_tree(value: Any) -> Any:
    """Tuples as lists, mappings as plain dicts, recursively (a config vs its parsed text)."""
    if isinstance(value, Mapping):
        return {str(k): _plain_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_tree(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def load_for_evaluation(path: str, model: torch.nn.Module) -> str:
    """Load ``path`` into ``model`` (an unwrapped ``MultiTaskModel``) strictly, whichever of the
    two layouts it has. Returns ``'mtlbench'`` or ``'mtlora-reference'``.

    Raises:
        CheckpointError: unreadable or of neither layout.
        CheckpointMismatchError / ReferenceCheckpointError: another model (one line, both named).
    """
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get('meta'), dict) and 'state_dict' in ckpt:
        _load_mtlbench(path, ckpt, model)
        return 'mtlbench'
    if is_reference_checkpoint(ckpt):
        import_reference_state(model, ckpt['model'], source=f'{path} ({describe_reference(ckpt)})',
                               model_name=describe_model(model))
        return f'{reference_method(ckpt)}-reference'
    keys = sorted(map(str, ckpt))[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f'{path}: neither an mtlbench checkpoint ("meta" + "state_dict") nor an MTLoRA '
                          f'reference checkpoint ("model" of tensors); found {keys}')
