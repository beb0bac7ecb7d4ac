"""The training protocol a run followed: the reference pipeline, or named departures from it.

mtlbench's defaults reproduce the MTLoRA reference pipeline (the one TADFormer and DiTASK fork):
its augmentations, optimizer groups, loader and precision. Where mtlbench offers something else
(labels padded with ignore instead of 0, say), that is a *departure*: a config value that differs
from the reference's. Each departure is registered here, next to the code that implements it, with
the config key that controls it and the reference's value, so no run can depart without its
record saying so. The run record's ``protocol`` is ``'reference'`` or the departures' names joined
by ``+`` (sorted); the leaderboard never puts runs of two protocols in one table.

    register_departure('label-pad-ignore', 'train_dataloader.dataset.label_pad', reference=0,
                       doc='labels exposed by scale + rotate are ignored (255), not class 0')

A key absent from a config counts as the reference value: code defaults must equal the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

REFERENCE = 'reference'


@dataclass(frozen=True)
class Departure:
    name: str        # label in the protocol string, e.g. 'label-pad-ignore'
    key: str         # dotted config path of the option
    reference: Any   # the reference pipeline's value
    doc: str         # one line: what changes when the option departs


DEPARTURES: Dict[str, Departure] = {}


def register_departure(name: str, key: str, reference: Any, doc: str) -> Departure:
    """Declare a config option whose non-reference values are a departure named ``name``."""
    if '+' in name or name == REFERENCE:
        raise ValueError(f'departure name {name!r} may not contain "+" nor be {REFERENCE!r}')
    dep = Departure(name, key, reference, doc)
    known = DEPARTURES.get(name)
    if known is not None and known != dep:
        raise ValueError(f'departure {name!r} is already registered as {known}')
    DEPARTURES[name] = dep
    return dep


_MISSING = object()


def config_value(cfg: Any, dotted: str) -> Any:
    """The value at ``a.b.c`` of a (nested) mapping or mmengine Config; ``_MISSING`` if absent."""
    node = cfg
    for part in dotted.split('.'):
        try:
            node = node[part]
        except (KeyError, TypeError, IndexError):
            return _MISSING
    return node


def departures(cfg: Any) -> List[str]:
    """Names of the registered departures that ``cfg`` takes, sorted."""
    out = []
    for dep in DEPARTURES.values():
        value = config_value(cfg, dep.key)
        if value is not _MISSING and value != dep.reference:
            out.append(dep.name)
    return sorted(out)


def protocol_label(cfg: Any) -> str:
    """``'reference'``, or the departures ``cfg`` takes joined by ``+``."""
    return '+'.join(departures(cfg)) or REFERENCE
