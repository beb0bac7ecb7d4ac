"""Host-to-device transfer of batches: 8-bit images and labels over the bus, normalised on the device.

A PASCAL batch of 32 at 448x448 is 77 MB of float32 image plus 3 x 51 MB of int64 labels; sent as
uint8 it is 19 MB + 3 x 6 MB. The data pipeline is left as it is (its output is tested equal to
the MTLoRA reference's float pipeline): :func:`compact_collate` batches as ``default_collate``
does, then turns the normalised float32 image back into the 0..255 integers it was made from
(reference ``image_cast='wrap'`` makes them integers; the inversion is exact, checked per batch)
and narrows the labels to uint8 (int16 if a value needs it). :class:`MultiTaskDataPreprocessor`
copies the batch to the device with ``non_blocking=True`` (from pinned memory the copy overlaps
compute) and undoes both there: ``(u8 - mean) / std`` in float32 equals the CPU's float64
normalisation cast to float32 within 1e-6, labels become int64 again. Normals and depth are float
maps and travel as float32. A batch that is not exactly invertible (``image_cast='clip'`` keeps
fractions; other mean / std than the collate's) travels as float32, unchanged.

Example:
    >>> train_dataloader = dict(..., pin_memory=True, collate_fn=dict(type='compact_collate'))
    >>> model = dict(..., data_preprocessor=dict(type='MultiTaskDataPreprocessor'))
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from mmengine.dataset import default_collate
from mmengine.model import BaseDataPreprocessor
from mmengine.registry import FUNCTIONS, MODELS

from mtlbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['compact_collate', 'compact_batch', 'MultiTaskDataPreprocessor']
_LABEL_DTYPES = (torch.uint8, torch.int16)


def _image_to_uint8(img: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Optional[torch.Tensor]:
    """The 0..255 integers a normalised float32 image ``[B, 3, H, W]`` was made from, or None."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    raw = img.double() * s + m
    ints = raw.round()
    if not bool(((raw - ints).abs() <= 1e-3).all()) or ints.min() < 0 or ints.max() > 255:
        return None
    return ints.to(torch.uint8)


def _narrow_label(label: torch.Tensor) -> torch.Tensor:
    if label.numel() == 0:
        return label
    lo, hi = int(label.min()), int(label.max())
    for dtype in _LABEL_DTYPES:
        info = torch.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return label.to(dtype)
    return label


def compact_batch(batch: Dict[str, Any], mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> Dict[str, Any]:
    """Narrow a collated batch in place (see the module docstring); returns it."""
    img = batch.get('inputs')
    if torch.is_tensor(img) and img.dtype == torch.float32 and img.ndim == 4:
        u8 = _image_to_uint8(img, mean, std)
        if u8 is not None:
            batch['inputs'] = u8
    for key, value in (batch.get('data_samples') or {}).items():
        if torch.is_tensor(value) and value.dtype == torch.int64 and key not in ('index',):
            batch['data_samples'][key] = _narrow_label(value)
    return batch


@FUNCTIONS.register_module()
def compact_collate(data_batch: Sequence[Any], mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Any:
    """``default_collate``, then :func:`compact_batch`."""
    return compact_batch(default_collate(data_batch), mean, std)


# In mmengine's root registries: ``BaseModel`` builds its data preprocessor from the root, and
# models are also built outside a Runner (bench, parameter counts), where no scope is set.
@MODELS.register_module()
class MultiTaskDataPreprocessor(BaseDataPreprocessor):
    """Copy a batch to the model's device (``non_blocking``), then widen what
    :func:`compact_collate` narrowed: uint8 images normalised, uint8 / int16 labels to int64.

    Args:
        mean: channel means of the normalisation (the pipeline's ``MTNormalize``).
        std: channel standard deviations.
        non_blocking: asynchronous copies (overlap compute when the loader pins memory).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 non_blocking: bool = True) -> None:
        super().__init__(non_blocking=non_blocking)
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        img = data.get('inputs')
        if torch.is_tensor(img) and img.dtype == torch.uint8:
            data['inputs'] = (img.float() - self.mean) / self.std
        samples = data.get('data_samples')
        if isinstance(samples, dict):
            for key, value in samples.items():
                if torch.is_tensor(value) and value.dtype in _LABEL_DTYPES:
                    samples[key] = value.long()
        return data
