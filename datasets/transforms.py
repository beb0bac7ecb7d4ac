"""Multi-task transforms: move the image and every task map of one sample together.

Why not mmcv's / mmseg's transforms: a multi-task sample carries maps whose geometry must follow
the image but whose *values* react differently to it. Labels must be resampled by nearest
neighbour and padded with 255; surface normals are vectors, so a horizontal flip negates their x
component and an in-plane rotation rotates them; depth is a distance, so zooming in by ``s``
divides it by ``s``. Which rule applies is read from the task's ``kind`` in
``mtlbench.tasks.TASKS``, so a new task of an existing kind needs no change here.

The reference augmentation (``shared/reference/datasets.md``, MTLoRA line):

- PASCAL train: :class:`MTRandomFlip` -> :class:`MTRandomScaleRotate` (rotation in [-20, 20]
  degrees, scale in [0.75, 1.25], about the centre on the same canvas) -> :class:`MTResize`
  (448x448) -> :class:`MTNormalize` -> :class:`MTPackInputs`.
- NYUD train: flip -> scale from {1.0, 1.2, 1.5} on the same canvas, no rotation -> resize.
- Val: resize only.

Per-key interpolation: image bicubic, clipped to [0, 255] (the reference casts the bicubic result
to uint8 without clipping, so overshoot at strong edges wraps around; not copied); labels,
saliency and depth nearest; normals bicubic, then renormalised to unit length. A normal pixel
whose nearest-neighbour source is invalid (zero vector) or outside the canvas stays invalid.

Conventions:
    The sample dict holds numpy arrays: ``img`` ``[H, W, 3]`` (uint8 from the loader, float32
    after the first resampling), one map per name in ``sample['tasks']`` (labels uint8
    ``[H, W]``, normals float32 ``[H, W, 3]``, depth float32 ``[H, W]``) and metadata (``id``,
    ``index``, ``ori_shape``). Sizes are ``(H, W)``.
    Normals' (x, y) components are taken along the image axes (x right, y down), the convention
    under which the reference rotates them; the rotation matrix applied to them is the linear
    part of the same affine map that moves the pixels, so maps and vectors stay consistent.

Random draws use numpy's global generator, which mmengine seeds (``randomness=dict(seed=...)``
and its dataloader ``worker_init_fn``), so runs are reproducible.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from mmengine.registry import DefaultScope

from mtlbench.registry import TRANSFORMS
from mtlbench.tasks import IGNORE_INDEX, TASKS

__all__ = [
    'IMAGENET_MEAN', 'IMAGENET_STD', 'Compose', 'build_pipeline', 'map_kind', 'MTRandomFlip',
    'MTRandomScaleRotate', 'MTResize', 'MTNormalize', 'MTPackInputs',
]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# A resampling op: (array, cv2 interpolation flag, border value) -> resampled array.
_Op = Callable[[np.ndarray, int, float], np.ndarray]


# ---------------------------------------------------------------------------------------------
# helpers


def map_kind(key: str) -> str:
    """How a sample key is resampled: ``'image'``, ``'label'``, ``'normals'`` or ``'depth'``.

    Args:
        key: ``'img'`` or a task name of ``mtlbench.tasks.TASKS``.

    Returns:
        The resampling kind. Classification and binary tasks are ``'label'``.
    """
    if key == 'img':
        return 'image'
    kind = TASKS[key].kind
    return {'classification': 'label', 'binary': 'label'}.get(kind, kind)


def _task_keys(sample: dict) -> List[str]:
    """Task maps present in ``sample`` (in ``sample['tasks']`` order)."""
    return [t for t in sample.get('tasks', ()) if t in sample]


def _transform_normals(normals: np.ndarray, op: _Op,
                       linear: Optional[np.ndarray] = None) -> np.ndarray:
    """Resample a normal map and keep it a field of unit vectors.

    Args:
        normals: float ``[H, W, 3]``; the zero vector marks invalid pixels.
        op: the resampling applied to every map of the sample.
        linear: optional ``[2, 2]`` matrix applied to the in-plane (x, y) components
            (the rotation part of an affine warp).

    Returns:
        float32 ``[H', W', 3]``: unit vectors where valid, zero elsewhere.
    """
    valid = np.ascontiguousarray(normals.any(axis=-1), dtype=np.uint8)
    valid = op(valid, cv2.INTER_NEAREST, 0).astype(bool)
    out = op(np.ascontiguousarray(normals, dtype=np.float32), cv2.INTER_CUBIC, 0)
    if linear is not None:
        (a, b), (c, d) = linear.tolist()  # python floats keep the maps float32
        x, y = out[..., 0].copy(), out[..., 1].copy()
        out[..., 0] = a * x + b * y
        out[..., 1] = c * x + d * y
    norm = np.sqrt(np.einsum('hwc,hwc->hw', out, out))
    valid &= norm > 1e-6
    out *= np.where(valid, 1.0 / np.maximum(norm, 1e-6), 0.0).astype(np.float32)[..., None]
    return out


def _apply(sample: dict, op: _Op, keys: Sequence[str], linear: Optional[np.ndarray] = None,
           depth_scale: float = 1.0) -> None:
    """Resample ``keys`` of ``sample`` in place with ``op``, per-key rules (module docstring)."""
    for key in keys:
        kind = map_kind(key)
        arr = sample[key]
        if kind == 'image':
            out = op(np.ascontiguousarray(arr, dtype=np.float32), cv2.INTER_CUBIC, 0)
            sample[key] = np.clip(out, 0.0, 255.0)
        elif kind == 'label':
            sample[key] = op(np.ascontiguousarray(arr), cv2.INTER_NEAREST, IGNORE_INDEX)
        elif kind == 'depth':
            out = op(np.ascontiguousarray(arr, dtype=np.float32), cv2.INTER_NEAREST, 0)
            sample[key] = out / np.float32(depth_scale) if depth_scale != 1.0 else out
        elif kind == 'normals':
            sample[key] = _transform_normals(arr, op, linear)
        else:  # pragma: no cover - guarded by tasks.py
            raise ValueError(f'no resampling rule for key {key!r} of kind {kind!r}')


# ---------------------------------------------------------------------------------------------
# pipeline


class Compose:
    """Apply transforms in order.

    Args:
        transforms: callables ``sample -> sample``.
    """

    def __init__(self, transforms: Sequence[Callable[[dict], dict]]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ''.join(f'\n    {t!r},' for t in self.transforms)
        return f'{type(self).__name__}([{inner}\n])'


def build_pipeline(pipeline: Optional[Sequence[Union[dict, Callable]]]) -> Compose:
    """Build a :class:`Compose` from transform configs and/or callables.

    Dict entries are built through ``mtlbench.registry.TRANSFORMS`` under the ``mtlbench``
    scope, whatever the caller's default scope is (so ``type='MTResize'`` never resolves to
    another library's transform of a similar name).

    Args:
        pipeline: list of ``dict(type=..., **kwargs)`` or callables; ``None`` gives an empty
            pipeline.

    Returns:
        The composed pipeline.
    """
    transforms = []
    for t in pipeline or ():
        if isinstance(t, dict):
            with DefaultScope.overwrite_default_scope('mtlbench'):
                t = TRANSFORMS.build(t)
        if not callable(t):
            raise TypeError(f'pipeline entries must be dicts or callables, got {type(t)}')
        transforms.append(t)
    return Compose(transforms)


# ---------------------------------------------------------------------------------------------
# transforms


@TRANSFORMS.register_module()
class MTRandomFlip:
    """Horizontal flip of the image and all task maps; negates the normals' x component.

    Args:
        prob (float): flip probability. Defaults to 0.5.

    Example:
        >>> dict(type='MTRandomFlip', prob=0.5)
    """

    def __init__(self, prob: float = 0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f'prob must be in [0, 1], got {prob}')
        self.prob = prob

    def __call__(self, sample: dict) -> dict:
        if np.random.random() >= self.prob:
            return sample
        for key in ['img'] + _task_keys(sample):
            arr = np.ascontiguousarray(sample[key][:, ::-1])
            if map_kind(key) == 'normals':
                arr = arr.astype(np.float32, copy=True)
                arr[..., 0] *= -1.0
                arr[..., 0] += 0.0  # turn -0.0 into 0.0 so invalid stays an exact zero vector
            sample[key] = arr
        sample['flip'] = not sample.get('flip', False)
        return sample

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob})'


@TRANSFORMS.register_module()
class MTRandomScaleRotate:
    """Random rotation and scale about the image centre, on the same canvas.

    Pixels moved in from outside the canvas are ignore regions: image 0, labels 255, normals the
    zero vector, depth 0. Normals' in-plane components are rotated by the same angle as the
    pixels; depth is divided by the scale (zooming in by ``s`` looks like moving ``s`` times
    closer).

    Args:
        rotate_range (tuple[float, float] | None): rotation in degrees, drawn uniformly;
            positive is counter-clockwise on screen. ``None`` or ``(0, 0)`` disables rotation.
            Defaults to ``(-20, 20)``.
        scale_range (tuple[float, float] | None): scale drawn uniformly (> 1 zooms in).
            Defaults to ``(0.75, 1.25)``.
        scale_choices (Sequence[float] | None): if given, the scale is drawn from these values
            instead (NYUD: ``(1.0, 1.2, 1.5)``). Defaults to None.

    Example:
        >>> dict(type='MTRandomScaleRotate', rotate_range=(-20, 20), scale_range=(0.75, 1.25))
        >>> dict(type='MTRandomScaleRotate', rotate_range=None, scale_choices=(1.0, 1.2, 1.5))
    """

    def __init__(self, rotate_range: Optional[Tuple[float, float]] = (-20.0, 20.0),
                 scale_range: Optional[Tuple[float, float]] = (0.75, 1.25),
                 scale_choices: Optional[Sequence[float]] = None):
        if rotate_range is not None and rotate_range[0] > rotate_range[1]:
            raise ValueError(f'rotate_range must be (low, high), got {rotate_range}')
        scales = list(scale_choices) if scale_choices is not None else list(scale_range or ())
        if any(s <= 0 for s in scales):
            raise ValueError(f'scales must be positive, got {scales}')
        if scale_choices is None and scale_range is not None and scale_range[0] > scale_range[1]:
            raise ValueError(f'scale_range must be (low, high), got {scale_range}')
        self.rotate_range = tuple(rotate_range) if rotate_range is not None else None
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.scale_choices = tuple(scale_choices) if scale_choices is not None else None

    def _draw(self) -> Tuple[float, float]:
        angle = 0.0
        if self.rotate_range is not None:
            angle = float(np.random.uniform(*self.rotate_range))
        scale = 1.0
        if self.scale_choices is not None:
            scale = float(self.scale_choices[np.random.randint(len(self.scale_choices))])
        elif self.scale_range is not None:
            scale = float(np.random.uniform(*self.scale_range))
        return angle, scale

    def __call__(self, sample: dict) -> dict:
        angle, scale = self._draw()
        return self.apply(sample, angle, scale)

    @staticmethod
    def apply(sample: dict, angle: float, scale: float) -> dict:
        """Apply a given rotation (degrees) and scale; the deterministic core, used in tests.

        Args:
            sample: the sample dict (module docstring).
            angle: rotation in degrees, counter-clockwise on screen.
            scale: zoom factor (> 1 zooms in).

        Returns:
            The same dict, maps replaced by their warped versions.
        """
        sample['rotate'] = angle
        sample['scale'] = scale
        if angle == 0.0 and scale == 1.0:
            return sample
        h, w = sample['img'].shape[:2]
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)

        def op(arr: np.ndarray, interp: int, border: float) -> np.ndarray:
            return cv2.warpAffine(arr, matrix, (w, h), flags=interp,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=border)

        _apply(sample, op, ['img'] + _task_keys(sample), linear=matrix[:, :2] / scale,
               depth_scale=scale)
        return sample

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(rotate_range={self.rotate_range}, '
                f'scale_range={self.scale_range}, scale_choices={self.scale_choices})')


@TRANSFORMS.register_module()
class MTResize:
    """Resize the image (bicubic, clipped) and, unless disabled, the task maps.

    Args:
        size (tuple[int, int]): output ``(H, W)``. Defaults to ``(448, 448)``.
        resize_targets (bool): also resize the task maps. False keeps the targets at their
            original resolution (evaluation at original resolution). Defaults to True.

    Example:
        >>> dict(type='MTResize', size=(448, 448))
    """

    def __init__(self, size: Tuple[int, int] = (448, 448), resize_targets: bool = True):
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f'size must be (H, W) with positive entries, got {size}')
        self.size = (int(size[0]), int(size[1]))
        self.resize_targets = resize_targets

    def __call__(self, sample: dict) -> dict:
        out_h, out_w = self.size

        def op(arr: np.ndarray, interp: int, border: float) -> np.ndarray:
            if arr.shape[:2] == (out_h, out_w):
                return arr.copy()
            return cv2.resize(arr, (out_w, out_h), interpolation=interp)

        keys = ['img'] + (_task_keys(sample) if self.resize_targets else [])
        _apply(sample, op, keys)
        sample['img_shape'] = self.size
        return sample

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={self.size}, resize_targets={self.resize_targets})'


@TRANSFORMS.register_module()
class MTNormalize:
    """Per-channel ``(img - mean) / std`` on the RGB image in the 0..255 range.

    Args:
        mean (Sequence[float]): channel means. Defaults to ImageNet's.
        std (Sequence[float]): channel standard deviations. Defaults to ImageNet's.

    Example:
        >>> dict(type='MTNormalize')
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, sample: dict) -> dict:
        img = np.asarray(sample['img'], dtype=np.float32)
        sample['img'] = (img - self.mean) / self.std
        return sample

    def __repr__(self) -> str:
        return f'{type(self).__name__}(mean={self.mean.tolist()}, std={self.std.tolist()})'


@TRANSFORMS.register_module()
class MTPackInputs:
    """Turn the sample into the model's input format (the last transform).

    Returns ``dict(inputs=FloatTensor[3, H, W], data_samples=dict(...))`` where
    ``data_samples`` holds, per task of ``sample['tasks']``, the target of the
    ``mtlbench.tasks`` contract (semseg / human_parts / sal int64 ``[H, W]``, normals float32
    ``[3, H, W]``, depth float32 ``[1, H, W]``), plus ``index`` (int) and ``id`` (str). Only
    tensors, ints and strings, so torch's / mmengine's default collate batches it.

    Example:
        >>> dict(type='MTPackInputs')
    """

    def __call__(self, sample: dict) -> Dict[str, object]:
        img = np.asarray(sample['img'], dtype=np.float32)
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        data_samples: Dict[str, object] = {}
        for task in _task_keys(sample):
            arr = sample[task]
            kind = map_kind(task)
            if kind == 'label':
                target = torch.from_numpy(np.asarray(arr, dtype=np.int64))
            elif kind == 'normals':
                target = torch.from_numpy(
                    np.ascontiguousarray(np.asarray(arr, dtype=np.float32).transpose(2, 0, 1)))
            else:  # depth
                target = torch.from_numpy(np.asarray(arr, dtype=np.float32)[None].copy())
            data_samples[task] = target
        data_samples['index'] = int(sample['index'])
        data_samples['id'] = str(sample['id'])
        return dict(inputs=inputs, data_samples=data_samples)

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'
