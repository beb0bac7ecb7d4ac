"""``mtlbench params``: the trainable-parameter breakdown of a method, built from its config.

Counted as the reference counts (every parameter with ``requires_grad``, decoder included),
split into the method's own backbone parameters (adapters, prompts, ...), the decoder, and
the other trainable backbone parameters (patch embedding, norms, position tables,
PatchMerging reductions). No data and no pretrained weights are needed.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

from mmengine.logging import MMLogger

__all__ = ['build_model_from_config', 'method_breakdown', 'format_breakdown']

COLUMNS = ('adapter', 'decoder', 'backbone_other', 'encoder_trainable', 'total_trainable', 'total')


def build_model_from_config(method: str, dataset: str, tasks: Optional[Sequence[str]] = None,
                            config: Optional[str] = None, cfg_options: Optional[dict] = None):
    """Build the ``MultiTaskModel`` a run would train (random init, no data)."""
    import mtlbench.methods  # noqa: F401
    import mtlbench.model  # noqa: F401
    from mtlbench.config import find_config, load_config
    from mtlbench.registry import MODELS

    cfg = load_config(config or find_config(method, dataset), cfg_options)
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model)
    model_cfg['backbone'] = dict(model_cfg['backbone'], pretrained=None)
    if tasks:
        model_cfg['tasks'] = list(tasks)
    logger = MMLogger.get_current_instance()
    old = logger.level
    logger.setLevel(logging.ERROR)  # the random-init warning is expected here
    try:
        return MODELS.build(model_cfg)
    finally:
        logger.setLevel(old)


def method_breakdown(method: str, dataset: str, tasks: Optional[Sequence[str]] = None,
                     config: Optional[str] = None, cfg_options: Optional[dict] = None) -> List[Dict]:
    """One row per model built (several for per-task methods) plus a total row.

    Returns:
        rows: dicts with ``name``, ``tasks``, the :data:`COLUMNS` counts, and ``sites`` (the
        adapted site names of the model).
    """
    from mtlbench.config import find_config, load_config
    from mtlbench.registry import METHODS
    import mtlbench.methods  # noqa: F401

    cfg = load_config(config or find_config(method, dataset), cfg_options)
    all_tasks = list(tasks or cfg.model.tasks)
    cls = METHODS.get(cfg.model.method.type)
    groups = [[t] for t in all_tasks] if getattr(cls, 'one_model_per_task', False) else [all_tasks]
    rows = []
    for group in groups:
        model = build_model_from_config(method, dataset, group, config, cfg_options)
        row = dict(name=f'{cfg.model.method.type} [{", ".join(group)}]', tasks=group,
                   variant=model.method.variant(), sites=list(model.adapted_sites))
        row.update(model.param_breakdown())
        row['adapter_split'] = model.method.adapter_breakdown(model.backbone)
        row['decoder_per_task'] = {t: sum(p.numel() for p in model.decoder.heads[t].parameters()
                                          if p.requires_grad)
                                   for t in group} if hasattr(model.decoder, 'heads') else {}
        rows.append(row)
    if len(rows) > 1:
        total = dict(name='total', tasks=all_tasks, variant=rows[0]['variant'], sites=[], decoder_per_task={},
                     adapter_split={})
        for c in COLUMNS:
            total[c] = sum(r[c] for r in rows)
        rows.append(total)
    return rows


def format_breakdown(rows: List[Dict], per_layer: bool = False) -> str:
    """Plain-text table of :func:`method_breakdown` rows."""
    from tabulate import tabulate

    table = [[r['name']] + [f'{r[c]:,}' for c in COLUMNS] for r in rows]
    text = tabulate(table, headers=['model'] + list(COLUMNS), tablefmt='github', colalign=('left',) + ('right',) * len(COLUMNS))
    notes = ['adapter = the method\'s own backbone parameters; backbone_other = other trainable backbone '
             'parameters (patch embedding, norms, position tables, reductions); encoder_trainable = adapter + '
             'backbone_other; total = all parameters at inference.']
    for r in rows:
        if r.get('adapter_split'):
            notes.append(f'{r["name"]} adapter = ' + ' + '.join(f'{k} {n:,}' for k, n in r['adapter_split'].items()))
        if r.get('decoder_per_task'):
            notes.append(f'{r["name"]} heads: ' + ', '.join(f'{t} {n:,}' for t, n in r['decoder_per_task'].items()))
        if per_layer and r.get('sites'):
            notes.append(f'{r["name"]} adapted sites ({len(r["sites"])}):\n  ' + '\n  '.join(r['sites']))
    return text + '\n\n' + '\n'.join(notes)
