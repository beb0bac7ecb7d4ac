"""Which data a pretrained Swin checkpoint was trained on: ImageNet-1K, ImageNet-22K, or 22K then 1K.

The recipes differ here (MTLoRA and TADFormer start from the ImageNet-1K Swin-T, DiTASK's release
from the ImageNet-22K one), and it moves every number, so the run record carries it
(``pretrained_on``) next to the checkpoint path. It is the option
``model.backbone.pretrained_on``; when not given it is inferred, in this order:

1. the checkpoint's file name, by the naming of the official releases: Microsoft's Swin
   (``swin_tiny_patch4_window7_224.pth`` 1K, ``..._22k.pth`` 22K, ``..._22kto1k_finetune.pth``
   22K fine-tuned on 1K) and timm's tags (``.ms_in1k``, ``.ms_in22k``, ``.ms_in22k_ft_in1k``);
2. the checkpoint's classifier: 21,841 rows (``head.weight`` / ``head.fc.weight``) only an
   ImageNet-22K head has. A 1,000-row head is 1K or 22K-then-1K, so it decides nothing;
3. otherwise ``'unknown'``. Random init is ``'none'``.

A value given that contradicts the file name is kept (the user may have renamed a file) and
logged as a warning.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

from mmengine.logging import print_log

from mtlbench.errors import OptionError

__all__ = ['PRETRAINING_SOURCES', 'IN22K_CLASSES', 'pretrained_on_from_name', 'resolve_pretrained_on']

#: recorded values: ImageNet-1K, ImageNet-22K, 22K fine-tuned on 1K, not known, random init
PRETRAINING_SOURCES = ('in1k', 'in22k', 'in22k-ft-in1k', 'unknown', 'none')
#: classes of the ImageNet-22K (fall 2011) head of the official Swin checkpoints
IN22K_CLASSES = 21841

_IN22K_FT_IN1K = re.compile(r'2[12]k_?to_?1k|2[12]k[_-]ft[_-](?:in)?1k', re.IGNORECASE)
_IN22K = re.compile(r'(?<![0-9])(?:in)?2[12]k(?![0-9])', re.IGNORECASE)   # ImageNet-21K is the same data set
_IN1K = re.compile(r'(?<![0-9])(?:in)?1k(?![0-9])', re.IGNORECASE)
#: an official Microsoft Swin release name without a 22K tag is the ImageNet-1K model
_OFFICIAL_1K = re.compile(r'^swin_(tiny|small|base|large)_patch4_window(7|12)_(224|384)\.(pth|safetensors)$')


def pretrained_on_from_name(path: str) -> Optional[str]:
    """``'in1k'`` / ``'in22k'`` / ``'in22k-ft-in1k'`` from a checkpoint's file (or folder) name, or
    ``None`` when the name does not say."""
    parts = re.split(r'[\\/]', str(path).rstrip('/\\'))
    for part in reversed(parts[-2:]):   # the file, then its folder (hub layouts: <tag>/model.safetensors)
        if _IN22K_FT_IN1K.search(part):
            return 'in22k-ft-in1k'
        if _IN22K.search(part):
            return 'in22k'
        if _OFFICIAL_1K.match(part) or _IN1K.search(part):
            return 'in1k'
    return None


def resolve_pretrained_on(pretrained: Optional[str], given: Optional[str] = None,
                          head_classes: Optional[int] = None) -> str:
    """The value recorded for a backbone (see the module doc).

    Args:
        pretrained: checkpoint path, or ``None`` for random init.
        given: the ``pretrained_on`` option, if set.
        head_classes: rows of the checkpoint's classifier, if it has one.

    Raises:
        OptionError: ``given`` is not one of :data:`PRETRAINING_SOURCES`, or names a source
            for a randomly initialised backbone.
    """
    if given is not None and given not in PRETRAINING_SOURCES:
        raise OptionError(f'model.backbone.pretrained_on={given!r}; valid: {", ".join(PRETRAINING_SOURCES)}')
    if not pretrained:
        if given not in (None, 'none'):
            raise OptionError(f'model.backbone.pretrained_on={given!r} but no pretrained checkpoint is given')
        return 'none'
    from_name = pretrained_on_from_name(pretrained)
    if given is not None:
        if from_name is not None and from_name != given:
            print_log(f'pretrained_on={given!r} is recorded, although the file name {pretrained} reads as '
                      f'{from_name!r}', logger='current', level=logging.WARNING)
        return given
    if from_name is not None:
        return from_name
    if head_classes == IN22K_CLASSES:
        return 'in22k'
    return 'unknown'
