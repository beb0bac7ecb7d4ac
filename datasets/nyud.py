"""NYUDv2, multi-task release (``NYUD_MT``, as used by MTI-Net, ATRC, MTLoRA, TADFormer):
semantic segmentation (40 classes), depth and surface normals.

The layout and conventions follow ``shared/reference/datasets.md``. Files of one image ``<id>``
under the root:

- ``images/<id>.jpg``: RGB (480x640; some copies pad or crop to 448x576).
- ``gt_sets/{train,val}.txt``: ids (795 / 654).
- ``segmentation/<id>.png``: raw labels 0 = void, 1..40 classes; loaded as 0..39, void -> 255.
- ``depth/<id>.npy``: float metres, 0 = missing (kept as 0, the depth task's ignore value).
- ``normals/<id>.npy``: float ``[H, W, 3]`` unit normals (zero vector = invalid).
- ``edge/<id>.npy``: not a task of the benchmark; not read.

Train augmentation (reference): flip, then a zoom about the centre by a factor drawn from
{1.0, 1.2, 1.5} on the same canvas with depth divided by the factor, no rotation, then resize.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from mtlbench.registry import DATASETS
from mtlbench.tasks import DATASET_TASKS, IGNORE_INDEX

from .base import (MultiTaskDataset, check_label_values, check_same_size, read_label_png,
                   read_npy)
from .errors import DatasetError

__all__ = ['NYUDv2MT', 'NYU40_CLASSES']

NYU40_CLASSES: Tuple[str, ...] = (
    'wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
    'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
    'floor mat', 'clothes', 'ceiling', 'books', 'refridgerator', 'television', 'paper', 'towel',
    'shower curtain', 'box', 'whiteboard', 'person', 'night stand', 'toilet', 'sink', 'lamp',
    'bathtub', 'bag', 'otherstructure', 'otherfurniture', 'otherprop')


@DATASETS.register_module()
class NYUDv2MT(MultiTaskDataset):
    """NYUDv2 multi-task split (module docstring for the layout).

    Args:
        data_root (str): the ``NYUD_MT`` folder.
        split (str): ``'train'`` (795 images) or ``'val'`` (654).
        tasks (Sequence[str] | None): subset of ``('semseg', 'depth', 'normals')``; None loads
            all three.
        **kwargs: ``pipeline``, ``img_size``, ``max_samples``, ``eval_at_original_resolution``,
            ``check_files`` of :class:`MultiTaskDataset`.

    ``__getitem__`` returns ``dict(inputs=FloatTensor[3, H, W], data_samples=dict(semseg=int64
    [H, W], depth=float32 [1, H, W], normals=float32 [3, H, W], index=int, id=str))`` with the
    default pipeline.

    Example:
        >>> dataset = dict(type='NYUDv2MT', data_root='data/NYUD_MT', split='val')
    """

    METAINFO = dict(
        dataset_name='nyudv2',
        tasks=tuple(DATASET_TASKS['nyudv2']),
        classes=dict(semseg=NYU40_CLASSES),
        split_sizes=dict(train=795, val=654),
    )

    def split_file(self) -> Path:
        return self.data_root / 'gt_sets' / f'{self.split}.txt'

    def sample_files(self, sample_id: str) -> Dict[str, Path]:
        root = self.data_root
        files = {'img': root / 'images' / f'{sample_id}.jpg'}
        if 'semseg' in self.tasks:
            files['semseg'] = root / 'segmentation' / f'{sample_id}.png'
        if 'depth' in self.tasks:
            files['depth'] = root / 'depth' / f'{sample_id}.npy'
        if 'normals' in self.tasks:
            files['normals'] = root / 'normals' / f'{sample_id}.npy'
        return files

    def train_augmentations(self) -> List[dict]:
        """Flip, zoom from {1.0, 1.2, 1.5} on the same canvas (depth divided by the zoom), no rotation."""
        return [
            dict(type='MTRandomFlip', prob=0.5),
            dict(type='MTRandomScaleRotate', rotate_range=None, scale_range=None, rotate_choices=(0.0,),
                 scale_choices=(1.0, 1.2, 1.5), label_pad=self.label_pad,
                 normals_resample=self.normals_resample),
        ]

    def _load_targets(self, files: Dict[str, Path], hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
        out = {}
        if 'semseg' in self.tasks:
            path = files['semseg']
            raw = read_label_png(path, 'semseg label')
            check_same_size(raw, hw, path, 'semseg label')
            check_label_values(raw, len(NYU40_CLASSES), path, 'semseg label (raw 0 = void)',
                               offset=1, ignore=(0,))
            labels = raw.astype(np.int64) - 1
            labels[raw == 0] = IGNORE_INDEX
            out['semseg'] = labels.astype(np.uint8)
        if 'depth' in self.tasks:
            out['depth'] = load_depth(files['depth'], hw)
        if 'normals' in self.tasks:
            out['normals'] = load_normals(files['normals'], hw)
        return out


def _as_float(arr: np.ndarray) -> np.ndarray:
    """float32 / float64 arrays as they are, anything else as float64."""
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


#: NYUv2's Kinect sees at most about 10 m; a larger depth is a unit error (millimetres) or damage.
MAX_DEPTH_M = 100.0


def load_depth(path: Path, hw: Tuple[int, int]) -> np.ndarray:
    """Load a depth map in metres.

    Args:
        path: ``depth/<id>.npy``, float ``[H, W]`` (``[H, W, 1]`` accepted).
        hw: the image's ``(H, W)``.

    Returns:
        float ``[H, W]`` in the stored dtype when float32 / float64 (the reference warps it in
        that dtype), float64 otherwise; 0 marks missing depth.
    """
    depth = read_npy(path, 'depth')
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise DatasetError(f'depth must be [H, W], got shape {depth.shape}: {path}')
    if not (np.issubdtype(depth.dtype, np.integer) or np.issubdtype(depth.dtype, np.floating)):
        raise DatasetError(f'depth must be real numbers (int or float), got dtype {depth.dtype}: {path}')
    check_same_size(depth, hw, path, 'depth map')
    depth = _as_float(depth)
    if np.isnan(depth).any():
        raise DatasetError(f'depth has {int(np.isnan(depth).sum())} NaN value(s) '
                           f'(missing depth must be 0): {path}')
    if not np.isfinite(depth).all() or (depth < 0).any() or (depth > MAX_DEPTH_M).any():
        raise DatasetError(f'depth values out of range: must be finite and in [0, {MAX_DEPTH_M:g}] metres '
                           f'(min {float(depth.min())}, max {float(depth.max())}; millimetres?): {path}')
    return depth


def load_normals(path: Path, hw: Tuple[int, int]) -> np.ndarray:
    """Load a surface-normal map.

    Args:
        path: ``normals/<id>.npy``, float ``[H, W, 3]``.
        hw: the image's ``(H, W)``.

    Returns:
        float ``[H, W, 3]`` as stored (float32 / float64 kept, as for depth; unit vectors, the
        zero vector marks invalid pixels).
    """
    normals = read_npy(path, 'normals')
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise DatasetError(f'normals must have 3 channels [H, W, 3], got shape {normals.shape}: '
                           f'{path}')
    check_same_size(normals, hw, path, 'normals map')
    normals = _as_float(normals)
    if not np.isfinite(normals).all():
        raise DatasetError(f'normals contain NaN or inf values: {path}')
    return normals
