"""Multi-task transforms: move the image and every task map of one sample together.

Why not mmcv's / mmseg's transforms: a multi-task sample carries maps whose geometry must follow
the image but whose *values* react differently to it. Labels are resampled by nearest neighbour;
surface normals are vectors, so a horizontal flip negates their x component and an in-plane
rotation rotates them; depth is a distance, so zooming in by ``s`` divides it by ``s``. Which rule
applies is read from the task's ``kind`` in ``mtlbench.tasks.TASKS``, so a new task of an
existing kind needs no change here.

The defaults reproduce the MTLoRA reference's augmentation (its ``data/custom_transforms.py`` and
``get_transformations``; ``shared/reference/datasets.md``), array for array:

- PASCAL train: :class:`MTRandomFlip` -> :class:`MTRandomScaleRotate` (rotation in [-20, 20]
  degrees, scale in [0.75, 1.25], about the centre ``(W / 2, H / 2)`` on the same canvas) ->
  :class:`MTResize` (448x448) -> :class:`MTIgnoreEmptyParts` -> :class:`MTNormalize` ->
  :class:`MTPackInputs`.
- NYUD train: flip -> scale from {1.0, 1.2, 1.5} on the same canvas, no rotation -> resize ...
- Val: resize -> ignore empty parts -> normalise -> pack.

Reference behaviour reproduced (each checked against the reference code in
``tests/test_transforms_reference.py``):

- The warp is ``cv2.warpAffine`` with a constant border 0 for every map, applied even when the
  draw is the identity: exposed image pixels are black, exposed labels are class 0 (background
  for semseg / human parts, not salient for saliency), exposed normals and depth are 0 (ignore).
- Every map is warped and resized in the dtype the reference uses (cv2 rounds the source
  coordinates differently per dtype): image and labels float64, normals and depth as loaded.
- Image resampling is bicubic, never clipped; :class:`MTNormalize` then truncates it
  to uint8 the way the reference's ``astype(np.uint8)`` does: toward zero, modulo 256, so bicubic
  overshoot at strong edges wraps around.
- Normals: the in-plane (x, y) components are rotated by the drawn angle, then the map is warped
  bicubically and *not* renormalised; :class:`MTResize` resamples bicubically and divides by
  ``|n| + eps``. A pixel is invalid (ignore) only where the vector is exactly zero.
- Depth is divided by the scale; labels, saliency and depth are resampled by nearest neighbour.
- Human parts: a map that holds no part pixel after resizing is all ignore (the reference's
  ``AddIgnoreRegions``): images without person parts, or whose parts the zoom cut away.
- Random draws: flip ``np.random.random() < p``; then rotation, then scale, each
  ``span * u - span / 2 + mid`` with ``u = np.random.random()`` (the reference's arithmetic), or
  ``choices[np.random.randint(0, len(choices))]``.

Protocol departures (``mtlbench.protocol``; configs set them in ``data_protocol``):

- ``label_pad=255`` (``label-pad-ignore``): labels exposed by scale + rotate are ignored instead
  of class 0.
- ``image_cast='clip'`` (``image-clip``): the image is clipped to [0, 255] (kept fractional)
  instead of truncated with wrap-around.
- ``normals_resample='nearest-valid'`` (``normals-nearest-valid``): a resampled normal is valid
  only where its nearest-neighbour source is valid and inside the canvas, and every resampling
  renormalises to unit length.

Conventions:
    The sample dict holds numpy arrays: ``img`` ``[H, W, 3]`` (uint8 from the loader, float64
    after the first resampling), one map per name in ``sample['tasks']`` (labels uint8
    ``[H, W]``, normals float ``[H, W, 3]``, depth float ``[H, W]``; float32 or float64 as the
    loader gives them) and metadata (``id``,
    ``index``, ``ori_shape``). Sizes are ``(H, W)``.
    Normals' (x, y) components are taken along the image axes (x right, y down), the convention
    under which the reference rotates them.

Random draws use numpy's global generator, which mmengine seeds (``randomness=dict(seed=...)``
and its dataloader ``worker_init_fn``), so runs are reproducible.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from mmengine.registry import DefaultScope

from mtlbench.errors import OptionError
from mtlbench.protocol import register_departure
from mtlbench.registry import TRANSFORMS
from mtlbench.tasks import IGNORE_INDEX, TASKS

__all__ = [
    'IMAGENET_MEAN', 'IMAGENET_STD', 'Compose', 'build_pipeline', 'map_kind', 'MTRandomFlip',
    'MTRandomScaleRotate', 'MTResize', 'MTIgnoreEmptyParts', 'MTNormalize', 'MTPackInputs',
    'IMAGE_CASTS', 'NORMALS_RESAMPLES', 'LABEL_PADS', 'check_data_protocol', 'rotate_normals',
]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: Allowed values of the data-protocol options; the first is the reference's.
LABEL_PADS = (0, IGNORE_INDEX)
IMAGE_CASTS = ('wrap', 'clip')
NORMALS_RESAMPLES = ('cubic', 'nearest-valid')

register_departure('label-pad-ignore', 'data_protocol.label_pad', reference=0,
                   doc='labels exposed by scale + rotate are ignored (255) instead of class 0')
register_departure('image-clip', 'data_protocol.image_cast', reference='wrap',
                   doc='the resampled image is clipped to [0, 255] instead of truncated to uint8 '
                       'with wrap-around')
register_departure('normals-nearest-valid', 'data_protocol.normals_resample', reference='cubic',
                   doc='resampled normals are valid only where the nearest source pixel is, and '
                       'renormalised after every resampling')


def check_data_protocol(label_pad: int = 0, image_cast: str = 'wrap',
                        normals_resample: str = 'cubic') -> None:
    """Raise ``ValueError`` naming the allowed values when a data-protocol option is unknown."""
    for name, value, allowed in (('label_pad', label_pad, LABEL_PADS),
                                 ('image_cast', image_cast, IMAGE_CASTS),
                                 ('normals_resample', normals_resample, NORMALS_RESAMPLES)):
        if value not in allowed:
            raise OptionError(f'{name} must be one of {allowed} (the first is the reference '
                             f'pipeline\'s), got {value!r}')


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


def rotate_normals(normals: np.ndarray, angle: float) -> np.ndarray:
    """Rotate the in-plane (x, y) components of a normal map by ``angle`` degrees.

    Positive is counter-clockwise on screen (y down), the sense of ``cv2.getRotationMatrix2D``:
    ``(1, 0)`` becomes ``(cos a, -sin a)``. The zero vector (invalid) stays zero.

    Args:
        normals: float ``[H, W, 3]``.
        angle: degrees.

    Returns:
        A new ``[H, W, 3]`` array of the input's float dtype.
    """
    out = np.array(normals, copy=True)
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    x, y = normals[..., 0].astype(np.float64), normals[..., 1].astype(np.float64)
    out[..., 0] = c * x + s * y
    out[..., 1] = c * y - s * x
    return out


def _normals_nearest_valid(normals: np.ndarray, op: _Op, angle: float = 0.0) -> np.ndarray:
    """Departure ``normals-nearest-valid``: resample, rotate and renormalise a normal map, valid
    only where the nearest-neighbour source pixel is valid (and inside the canvas).

    Returns:
        float32 ``[H', W', 3]``: unit vectors where valid, zero elsewhere.
    """
    valid = np.ascontiguousarray(normals.any(axis=-1), dtype=np.uint8)
    valid = op(valid, cv2.INTER_NEAREST, 0).astype(bool)
    out = op(np.ascontiguousarray(normals, dtype=np.float32), cv2.INTER_CUBIC, 0)
    if angle:
        out = rotate_normals(out, angle).astype(np.float32)
    norm = np.sqrt(np.einsum('hwc,hwc->hw', out, out))
    valid &= norm > 1e-6
    out *= np.where(valid, 1.0 / np.maximum(norm, 1e-6), 0.0).astype(np.float32)[..., None]
    return out


def _resample(sample: dict, op: _Op, keys: Sequence[str], *, label_pad: int = 0,
              normals_resample: str = 'cubic', angle: Optional[float] = None,
              depth_scale: Optional[float] = None, unit_normals: bool = False) -> None:
    """Resample ``keys`` of ``sample`` in place with ``op`` by the per-kind rules (module
    docstring). A warp passes ``angle`` (normals are rotated first) and ``depth_scale`` (depth is
    divided by it); a resize passes ``unit_normals`` (reference-mode normals are divided by
    ``|n| + eps`` afterwards)."""
    for key in keys:
        kind = map_kind(key)
        arr = sample[key]
        if kind == 'image':
            sample[key] = op(np.ascontiguousarray(arr, dtype=np.float64), cv2.INTER_CUBIC, 0)
        elif kind == 'label':  # float64 as in the reference: cv2 rounds uint8 coordinates differently
            out = op(np.ascontiguousarray(arr, dtype=np.float64), cv2.INTER_NEAREST, label_pad)
            sample[key] = out.astype(arr.dtype)
        elif kind == 'depth':
            out = op(np.ascontiguousarray(arr), cv2.INTER_NEAREST, 0)
            sample[key] = out / depth_scale if depth_scale is not None else out
        elif kind == 'normals' and normals_resample == 'nearest-valid':
            sample[key] = _normals_nearest_valid(arr, op, angle or 0.0)
        elif kind == 'normals':
            n = rotate_normals(arr, angle) if angle is not None else np.ascontiguousarray(arr)
            n = op(n, cv2.INTER_CUBIC, 0)
            if unit_normals:
                norm = np.sqrt((n * n).sum(axis=-1, keepdims=True)) + np.finfo(float).eps
                n = (n / norm).astype(n.dtype)  # float64 arithmetic, stored back as the reference
            sample[key] = n
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
            arr = sample[key][:, ::-1].copy()
            if map_kind(key) == 'normals':
                arr[..., 0] *= -1.0
                arr[..., 0] += 0.0  # turn -0.0 into 0.0 so invalid stays an exact zero vector
            sample[key] = arr
        sample['flip'] = not sample.get('flip', False)
        return sample

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prob={self.prob})'


@TRANSFORMS.register_module()
class MTRandomScaleRotate:
    """Random rotation and scale about the image centre ``(W / 2, H / 2)``, on the same canvas.

    Pixels moved in from outside the canvas: image 0, labels ``label_pad`` (reference 0: class 0),
    normals the zero vector, depth 0 (both ignore). Normals' in-plane components are rotated by
    the same angle as the pixels; depth is divided by the scale (zooming in by ``s`` looks like
    moving ``s`` times closer). The warp is applied even for a draw of angle 0 and scale 1, as in
    the reference.

    Args:
        rotate_range (tuple[float, float] | None): rotation in degrees, drawn uniformly;
            positive is counter-clockwise on screen. None: no rotation and no draw.
            Defaults to ``(-20, 20)``.
        scale_range (tuple[float, float] | None): scale drawn uniformly (> 1 zooms in).
            Defaults to ``(0.75, 1.25)``.
        rotate_choices (Sequence[float] | None): if given, the angle is drawn from these values
            instead (NYUD: ``(0,)``, as the reference). Defaults to None.
        scale_choices (Sequence[float] | None): if given, the scale is drawn from these values
            instead (NYUD: ``(1.0, 1.2, 1.5)``). Defaults to None.
        label_pad (int): value of exposed label pixels: 0 (reference) or 255 (departure
            ``label-pad-ignore``). Defaults to 0.
        normals_resample (str): ``'cubic'`` (reference) or ``'nearest-valid'`` (departure
            ``normals-nearest-valid``). Defaults to ``'cubic'``.

    Example:
        >>> dict(type='MTRandomScaleRotate', rotate_range=(-20, 20), scale_range=(0.75, 1.25))
        >>> dict(type='MTRandomScaleRotate', rotate_choices=(0,), scale_choices=(1.0, 1.2, 1.5))
    """

    def __init__(self, rotate_range: Optional[Tuple[float, float]] = (-20.0, 20.0),
                 scale_range: Optional[Tuple[float, float]] = (0.75, 1.25),
                 rotate_choices: Optional[Sequence[float]] = None,
                 scale_choices: Optional[Sequence[float]] = None,
                 label_pad: int = 0, normals_resample: str = 'cubic'):
        check_data_protocol(label_pad=label_pad, normals_resample=normals_resample)
        if rotate_range is not None and rotate_range[0] > rotate_range[1]:
            raise ValueError(f'rotate_range must be (low, high), got {rotate_range}')
        if scale_range is not None and scale_range[0] > scale_range[1]:
            raise ValueError(f'scale_range must be (low, high), got {scale_range}')
        scales = list(scale_choices) if scale_choices is not None else list(scale_range or ())
        if any(s <= 0 for s in scales):
            raise ValueError(f'scales must be positive, got {scales}')
        for name, choices in (('rotate_choices', rotate_choices), ('scale_choices', scale_choices)):
            if choices is not None and len(choices) == 0:
                raise ValueError(f'{name} must not be empty')
        self.rotate_range = tuple(rotate_range) if rotate_range is not None else None
        self.scale_range = tuple(scale_range) if scale_range is not None else None
        self.rotate_choices = tuple(rotate_choices) if rotate_choices is not None else None
        self.scale_choices = tuple(scale_choices) if scale_choices is not None else None
        self.label_pad = label_pad
        self.normals_resample = normals_resample

    @staticmethod
    def _draw_one(value_range, choices, default: float) -> float:
        """One draw with the reference's arithmetic: ``choices[randint(0, n)]`` or
        ``span * u - span / 2 + mid`` (the reference's ``(hi - lo) * u - (hi - lo) / 2 (+ 1)``
        for its symmetric ranges, bit for bit)."""
        if choices is not None:
            return float(choices[np.random.randint(0, len(choices))])
        if value_range is not None:
            lo, hi = value_range
            span = hi - lo
            return float(span * np.random.random() - span / 2 + (hi + lo) / 2)
        return default

    def _draw(self) -> Tuple[float, float]:
        angle = self._draw_one(self.rotate_range, self.rotate_choices, 0.0)
        scale = self._draw_one(self.scale_range, self.scale_choices, 1.0)
        return angle, scale

    def __call__(self, sample: dict) -> dict:
        angle, scale = self._draw()
        return self.apply(sample, angle, scale, label_pad=self.label_pad,
                          normals_resample=self.normals_resample)

    @staticmethod
    def apply(sample: dict, angle: float, scale: float, label_pad: int = 0,
              normals_resample: str = 'cubic') -> dict:
        """Apply a given rotation (degrees) and scale; the deterministic core, used in tests.

        Args:
            sample: the sample dict (module docstring).
            angle: rotation in degrees, counter-clockwise on screen.
            scale: zoom factor (> 1 zooms in).
            label_pad, normals_resample: as in the constructor.

        Returns:
            The same dict, maps replaced by their warped versions.
        """
        sample['rotate'] = angle
        sample['scale'] = scale
        h, w = sample['img'].shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)

        def op(arr: np.ndarray, interp: int, border: float) -> np.ndarray:
            return cv2.warpAffine(arr, matrix, (w, h), flags=interp,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=border)

        _resample(sample, op, ['img'] + _task_keys(sample), label_pad=label_pad,
                  normals_resample=normals_resample, angle=angle, depth_scale=scale)
        return sample

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(rotate_range={self.rotate_range}, '
                f'scale_range={self.scale_range}, rotate_choices={self.rotate_choices}, '
                f'scale_choices={self.scale_choices}, label_pad={self.label_pad}, '
                f'normals_resample={self.normals_resample!r})')


@TRANSFORMS.register_module()
class MTResize:
    """Resize the image (bicubic, float64, unclipped) and, unless disabled, the task maps.

    Args:
        size (tuple[int, int]): output ``(H, W)``. Defaults to ``(448, 448)``.
        resize_targets (bool): also resize the task maps. False keeps the targets at their
            original resolution (evaluation at original resolution). Defaults to True.
        normals_resample (str): ``'cubic'`` (reference: bicubic, then ``n / (|n| + eps)``) or
            ``'nearest-valid'`` (departure). Defaults to ``'cubic'``.

    Example:
        >>> dict(type='MTResize', size=(448, 448))
    """

    def __init__(self, size: Tuple[int, int] = (448, 448), resize_targets: bool = True,
                 normals_resample: str = 'cubic'):
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f'size must be (H, W) with positive entries, got {size}')
        check_data_protocol(normals_resample=normals_resample)
        self.size = (int(size[0]), int(size[1]))
        self.resize_targets = resize_targets
        self.normals_resample = normals_resample

    def __call__(self, sample: dict) -> dict:
        out_h, out_w = self.size

        def op(arr: np.ndarray, interp: int, border: float) -> np.ndarray:
            if arr.shape[:2] == (out_h, out_w):
                return arr.copy()  # what cv2.resize does for an equal size
            return cv2.resize(arr, (out_w, out_h), interpolation=interp)

        keys = ['img'] + (_task_keys(sample) if self.resize_targets else [])
        _resample(sample, op, keys, normals_resample=self.normals_resample, unit_normals=True)
        sample['img_shape'] = self.size
        return sample

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(size={self.size}, resize_targets={self.resize_targets}, '
                f'normals_resample={self.normals_resample!r})')


@TRANSFORMS.register_module()
class MTIgnoreEmptyParts:
    """A human-parts map with no part pixel (only background 0 and ignore 255) becomes all ignore.

    The reference's ``AddIgnoreRegions`` turns an all-zero human-parts map into 255 after the
    resize: images without person parts, and images whose parts the augmentation or the resize
    removed, add nothing to the loss or the metric. (Normals and depth need no step here: their
    zeros already mean ignore.) A no-op for samples without human parts.

    Example:
        >>> dict(type='MTIgnoreEmptyParts')
    """

    def __call__(self, sample: dict) -> dict:
        parts = sample.get('human_parts')
        if parts is not None and 'human_parts' in sample.get('tasks', ()):
            if not ((parts != 0) & (parts != IGNORE_INDEX)).any():
                sample['human_parts'] = np.full_like(parts, IGNORE_INDEX)
        return sample

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


@TRANSFORMS.register_module()
class MTNormalize:
    """Cast the image to the 0..255 range, then per-channel ``(img - mean) / std``.

    Args:
        mean (Sequence[float]): channel means. Defaults to ImageNet's.
        std (Sequence[float]): channel standard deviations. Defaults to ImageNet's.
        image_cast (str): ``'wrap'`` (reference): truncate toward zero, modulo 256, as numpy's
            ``astype(np.uint8)`` does in the reference's ``ToTensor``; ``'clip'`` (departure
            ``image-clip``): clip to [0, 255] and keep the fraction. Defaults to ``'wrap'``.

    Example:
        >>> dict(type='MTNormalize')
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 image_cast: str = 'wrap'):
        check_data_protocol(image_cast=image_cast)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.image_cast = image_cast

    def __call__(self, sample: dict) -> dict:
        img = np.asarray(sample['img'], dtype=np.float64)
        if self.image_cast == 'wrap':
            img = np.mod(np.trunc(img), 256.0)
        else:
            img = np.clip(img, 0.0, 255.0)
        sample['img'] = ((img - self.mean) / self.std).astype(np.float32)
        return sample

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(mean={self.mean.tolist()}, std={self.std.tolist()}, '
                f'image_cast={self.image_cast!r})')


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
