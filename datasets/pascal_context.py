"""PASCAL-Context, multi-task release (``PASCAL_MT``, from ASTMT: Maninis et al., CVPR 2019,
arXiv:1904.08918): semantic segmentation, human parts, saliency and surface normals.

The layout and conventions follow ``shared/reference/datasets.md``. Files of one image ``<id>``
under the root:

- ``JPEGImages/<id>.jpg``: RGB image (up to 500x500).
- ``ImageSets/Context/{train,val}.txt``: ids (4,998 / 5,105).
- ``semseg/VOC12/<id>.png``, else ``semseg/pascal-context/<id>.png``: uint8 labels 0..20
  (21 classes incl. background), 255 ignore.
- ``human_parts/<id>.mat``: PASCAL-Part ``anno`` struct. Only person objects (class 15) with
  parts are drawn, parts grouped into 7 classes (:data:`PART_CLASSES`); pixels of an image with
  person parts that no part covers are background 0. An image without person parts is all 255:
  it adds nothing to loss or metric; so is one whose parts the augmentation or the resize removed
  (``MTIgnoreEmptyParts``, the reference's ``AddIgnoreRegions``).
- ``sal_distill/<id>.png``: grey saliency ``v / 255``, binarised at > 0.5 to {0, 1}.
- ``normals_distill/<id>.png``: RGB, normal = ``2 * v / 255 - 1``. Valid only where the Context
  class (``pascal-context/trainval/<id>.mat``, variable ``LabelMap``) is also an NYU class
  (:func:`normals_valid_context_ids`); elsewhere the zero vector (ignore).

Not in the reference, chosen: no parts index is built or cached (each ``.mat`` is read when its
image is), so nothing is written into the dataset root; 1x1 MATLAB fields are read with
``.item()`` (numpy >= 2 refuses ``int()`` on them).

As in the reference, a dataset whose only task is human parts lists only the images with a person
(an object of class 15 with a non-empty mask; the reference's parts index), so its batches are
not filled with all-ignore images; it reads every ``.mat`` of the split at construction. With
other tasks every image is kept (the reference does the same).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from mtlbench.registry import DATASETS
from mtlbench.tasks import DATASET_TASKS, IGNORE_INDEX

from .base import (MultiTaskDataset, check_label_values, check_same_size, read_label_png,
                   read_mat)
from .errors import DatasetError, DatasetNotFoundError

__all__ = ['PascalContextMT', 'VOC_CLASSES', 'HUMAN_PART_CLASSES', 'PART_CLASSES',
           'PERSON_CLASS_INDEX', 'normals_valid_context_ids', 'context_classes', 'has_person']

_META_DIR = Path(__file__).resolve().parent / 'meta'

VOC_CLASSES: Tuple[str, ...] = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor')

HUMAN_PART_CLASSES: Tuple[str, ...] = (
    'background', 'head', 'torso', 'upper arm', 'lower arm', 'upper leg', 'lower leg')

# PASCAL-Part person part name -> human-parts class (datasets.md).
PART_CLASSES: Dict[str, int] = {
    **dict.fromkeys(('hair', 'head', 'lear', 'rear', 'lebrow', 'rebrow', 'leye', 'reye', 'mouth',
                     'nose'), 1),
    **dict.fromkeys(('neck', 'torso'), 2),
    **dict.fromkeys(('luarm', 'ruarm'), 3),
    **dict.fromkeys(('llarm', 'rlarm', 'lhand', 'rhand'), 4),
    **dict.fromkeys(('luleg', 'ruleg'), 5),
    **dict.fromkeys(('llleg', 'rlleg', 'lfoot', 'rfoot'), 6),
}

PERSON_CLASS_INDEX = 15


@functools.lru_cache(maxsize=None)
def context_classes() -> Dict[str, int]:
    """The 459 PASCAL-Context class names and their ``LabelMap`` index (1..459)."""
    with open(_META_DIR / 'context_classes.json', encoding='utf-8') as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def normals_valid_context_ids() -> np.ndarray:
    """Context indices on which the distilled normals are valid.

    The NYU class names that are also Context class names, except ``'unknown'``, plus
    ``'tvmonitor'`` (datasets.md); each mapped to its Context index.

    Returns:
        Sorted int64 array of Context ``LabelMap`` values.
    """
    context = context_classes()
    with open(_META_DIR / 'nyu_classes.json', encoding='utf-8') as f:
        nyu = json.load(f)
    names = {n for n in nyu if n in context and n != 'unknown'} | {'tvmonitor'}
    return np.array(sorted(context[n] for n in names), dtype=np.int64)


@DATASETS.register_module()
class PascalContextMT(MultiTaskDataset):
    """PASCAL-Context multi-task split (module docstring for the layout).

    Args:
        data_root (str): the ``PASCAL_MT`` folder.
        split (str): ``'train'`` (4,998 images) or ``'val'`` (5,105; the test set).
        tasks (Sequence[str] | None): subset of ``('semseg', 'human_parts', 'sal', 'normals')``;
            None loads all four.
        **kwargs: ``pipeline``, ``img_size``, ``max_samples``, ``eval_at_original_resolution``,
            ``check_files`` of :class:`MultiTaskDataset`.

    ``__getitem__`` returns ``dict(inputs=FloatTensor[3, H, W], data_samples=dict(semseg=int64
    [H, W], human_parts=int64 [H, W], sal=int64 [H, W] in {0, 1, 255}, normals=float32
    [3, H, W], index=int, id=str))`` with the default pipeline.

    Example:
        >>> dataset = dict(type='PascalContextMT', data_root='data/PASCAL_MT', split='train',
        ...                tasks=('semseg', 'human_parts', 'sal', 'normals'))
    """

    METAINFO = dict(
        dataset_name='pascal_context',
        tasks=tuple(DATASET_TASKS['pascal_context']),
        classes=dict(semseg=VOC_CLASSES, human_parts=HUMAN_PART_CLASSES),
        split_sizes=dict(train=4998, val=5105),
    )

    def split_file(self) -> Path:
        return self.data_root / 'ImageSets' / 'Context' / f'{self.split}.txt'

    def sample_files(self, sample_id: str) -> Dict[str, Path]:
        root = self.data_root
        files = {'img': root / 'JPEGImages' / f'{sample_id}.jpg'}
        if 'semseg' in self.tasks:
            voc = root / 'semseg' / 'VOC12' / f'{sample_id}.png'
            context = root / 'semseg' / 'pascal-context' / f'{sample_id}.png'
            files['semseg'] = voc if voc.is_file() or not context.is_file() else context
        if 'human_parts' in self.tasks:
            files['human_parts'] = root / 'human_parts' / f'{sample_id}.mat'
        if 'sal' in self.tasks:
            files['sal'] = root / 'sal_distill' / f'{sample_id}.png'
        if 'normals' in self.tasks:
            files['normals'] = root / 'normals_distill' / f'{sample_id}.png'
            files['context'] = root / 'pascal-context' / 'trainval' / f'{sample_id}.mat'
        return files

    def _select_samples(self) -> None:
        """Human parts alone: keep the images with a person, as the reference does."""
        if self.tasks != ('human_parts',):
            return
        keep = [k for k, files in enumerate(self.files) if has_person(files['human_parts'])]
        self.ids = [self.ids[k] for k in keep]
        self.files = [self.files[k] for k in keep]

    def train_augmentations(self) -> List[dict]:
        """Flip, then rotate in [-20, 20] degrees and scale in [0.75, 1.25] about the centre."""
        return [
            dict(type='MTRandomFlip', prob=0.5),
            dict(type='MTRandomScaleRotate', rotate_range=(-20.0, 20.0), scale_range=(0.75, 1.25),
                 label_pad=self.label_pad, normals_resample=self.normals_resample),
        ]

    # -- per-task readers ------------------------------------------------------------------------

    def _load_targets(self, files: Dict[str, Path], hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
        out = {}
        if 'semseg' in self.tasks:
            path = files['semseg']
            if not path.is_file():
                raise DatasetNotFoundError(
                    f'semseg label is missing: {path} (looked in semseg/VOC12 and '
                    f'semseg/pascal-context)')
            labels = read_label_png(path, 'semseg label')
            check_same_size(labels, hw, path, 'semseg label')
            check_label_values(labels, len(VOC_CLASSES), path, 'semseg label')
            out['semseg'] = labels.astype(np.uint8)
        if 'human_parts' in self.tasks:
            out['human_parts'] = load_human_parts(files['human_parts'], hw)
        if 'sal' in self.tasks:
            path = files['sal']
            sal = read_label_png(path, 'saliency map')
            check_same_size(sal, hw, path, 'saliency map')
            out['sal'] = (sal.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
        if 'normals' in self.tasks:
            out['normals'] = load_masked_normals(files['normals'], files['context'], hw)
        return out


def load_human_parts(path: Path, hw: Tuple[int, int]) -> np.ndarray:
    """Rasterise the person parts of a PASCAL-Part ``anno`` struct into 7 classes.

    Layout (``scipy.io.loadmat``): ``anno[0][0][1]`` is the object list; object ``k`` has
    ``[0]`` class name, ``[1]`` class index (1x1), ``[2]`` instance mask, ``[3]`` parts (empty
    when none); part ``i`` is ``[3][0][i]`` with ``[0]`` its name and ``[1]`` its mask.

    Args:
        path: ``human_parts/<id>.mat``.
        hw: the image's ``(H, W)``.

    Returns:
        uint8 ``[H, W]``: 0 background, 1..6 parts; all 255 when no person has parts.
    """
    anno = read_mat(path, 'human parts', 'anno')
    out = np.full(hw, IGNORE_INDEX, dtype=np.uint8)
    has_parts = False
    try:
        objects = np.asarray(anno[0][0][1]).ravel()
        for obj in objects:
            if np.asarray(obj[1]).item() != PERSON_CLASS_INDEX:
                continue
            parts = np.asarray(obj[3])
            if parts.size == 0:
                continue
            if not has_parts:  # the first person with parts turns the image into background
                out[:] = 0
                has_parts = True
            for part in parts.ravel():
                name = str(np.asarray(part[0]).item())
                mask = np.asarray(part[1])
                if name not in PART_CLASSES:
                    raise DatasetError(f'human parts: unknown person part name {name!r} '
                                       f'(known: {sorted(PART_CLASSES)}): {path}')
                check_same_size(mask, hw, path, f'human parts mask of part {name!r}')
                out[mask > 0] = PART_CLASSES[name]
    except DatasetError:
        raise
    except (IndexError, ValueError, TypeError, KeyError) as e:
        raise DatasetError(f'human parts .mat does not have the PASCAL-Part anno layout '
                           f'({type(e).__name__}: {e}): {path}') from None
    return out


def has_person(path: Path) -> bool:
    """Whether a PASCAL-Part ``anno`` struct has an object of class 15 with a non-empty mask:
    the reference's test (its parts index, area threshold 0) for keeping an image when human
    parts is the only task."""
    anno = read_mat(path, 'human parts', 'anno')
    try:
        return any(np.asarray(obj[1]).item() == PERSON_CLASS_INDEX and np.asarray(obj[2]).sum() > 0
                   for obj in np.asarray(anno[0][0][1]).ravel())
    except (IndexError, ValueError, TypeError, KeyError) as e:
        raise DatasetError(f'human parts .mat does not have the PASCAL-Part anno layout '
                           f'({type(e).__name__}: {e}): {path}') from None


def load_masked_normals(normals_path: Path, context_path: Path, hw: Tuple[int, int]) -> np.ndarray:
    """Decode distilled normals and keep them only on NYU-like Context classes.

    Args:
        normals_path: ``normals_distill/<id>.png`` (uint8 RGB).
        context_path: ``pascal-context/trainval/<id>.mat`` (``LabelMap``).
        hw: the image's ``(H, W)``.

    Returns:
        float64 ``[H, W, 3]``: ``2 * v / 255 - 1`` on valid pixels, the zero vector elsewhere.
    """
    try:
        with Image.open(normals_path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetNotFoundError(f'normals file is missing: {normals_path}') from None
    except Exception as e:
        raise DatasetError(f'normals PNG does not decode: {normals_path} '
                           f'({type(e).__name__}: {e})') from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DatasetError(f'normals PNG must have 3 channels (RGB), got shape {arr.shape}: '
                           f'{normals_path}')
    check_same_size(arr, hw, normals_path, 'normals map')
    normals = 2.0 * arr.astype(np.float64) / 255.0 - 1.0  # the reference's dtype and arithmetic
    label_map = np.asarray(read_mat(context_path, 'Context label map', 'LabelMap'))
    if label_map.ndim != 2:
        raise DatasetError(f'Context LabelMap must be [H, W], got shape {label_map.shape}: '
                           f'{context_path}')
    check_same_size(label_map, hw, context_path, 'Context LabelMap')
    valid = np.isin(label_map, normals_valid_context_ids())
    normals[~valid] = 0.0
    return normals
