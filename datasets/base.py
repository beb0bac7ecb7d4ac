"""What the PASCAL-Context and NYUDv2 loaders share: checked file readers and a dataset base.

Both multi-task releases are folders of per-image files listed by split files. Everything that
can go wrong with such a folder (missing root, missing split file, listed files absent, a file
that does not decode, a map whose size differs from its image, values out of range) is checked
here once, with errors that name the problem and the file (:mod:`.errors`), so that the two
dataset files only describe their layouts.

Loading is two steps: :meth:`MultiTaskDataset.load_sample` reads and validates one image and its
task maps into a dict of numpy arrays (see :mod:`.transforms` for the format), then the pipeline
augments it and packs it into tensors. ``verify_dataset`` uses the first step alone.
Nothing is ever written into the dataset root.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.io
from PIL import Image
from torch.utils.data import Dataset

from mtlbench.errors import OptionError
from mtlbench.tasks import IGNORE_INDEX, check_tasks

from .errors import DatasetError, DatasetNotFoundError
from .transforms import build_pipeline, check_data_protocol

__all__ = [
    'MultiTaskDataset', 'read_image', 'read_label_png', 'read_npy', 'read_mat', 'check_same_size',
    'check_label_values', 'read_split_file',
]

PathLike = Union[str, os.PathLike]

# How many file names an error message lists before summarising.
_SHOW = 5


# ---------------------------------------------------------------------------------------------
# readers: decode one file, raise DatasetError naming it when it does not decode


def read_image(path: PathLike) -> np.ndarray:
    """Decode an RGB image.

    Args:
        path: image file (JPEG in both releases).

    Returns:
        uint8 ``[H, W, 3]`` RGB.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert('RGB'), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetNotFoundError(f'image file is missing: {path}') from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... on bad data
        raise DatasetError(f'image does not decode: {path} ({type(e).__name__}: {e})') from None


def read_label_png(path: PathLike, what: str = 'label') -> np.ndarray:
    """Decode a single-channel PNG (palette indices or grey levels, not colours).

    Args:
        path: PNG file.
        what: what the map is, for error messages.

    Returns:
        ``[H, W]`` integer array as stored (uint8 for the releases).
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetNotFoundError(f'{what} file is missing: {path}') from None
    except Exception as e:
        raise DatasetError(f'{what} PNG does not decode: {path} ({type(e).__name__}: {e})') from None
    if arr.ndim != 2:
        raise DatasetError(f'{what} PNG must be single-channel [H, W], got shape {arr.shape}: {path}')
    return arr


def read_npy(path: PathLike, what: str) -> np.ndarray:
    """Load a ``.npy`` array (no pickles).

    Args:
        path: ``.npy`` file.
        what: what the array is, for error messages.

    Returns:
        The stored array.
    """
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetNotFoundError(f'{what} file is missing: {path}') from None
    except Exception as e:
        raise DatasetError(f'{what} .npy does not load: {path} ({type(e).__name__}: {e})') from None


def read_mat(path: PathLike, what: str, key: str) -> np.ndarray:
    """Load one variable of a MATLAB ``.mat`` file.

    Args:
        path: ``.mat`` file.
        what: what the file is, for error messages.
        key: the variable to return (``'anno'``, ``'LabelMap'``).

    Returns:
        The variable as ``scipy.io.loadmat`` returns it.
    """
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DatasetNotFoundError(f'{what} file is missing: {path}') from None
    except Exception as e:
        raise DatasetError(f'{what} .mat does not load: {path} ({type(e).__name__}: {e})') from None
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith('__'))
        raise DatasetError(f'{what} .mat has no {key!r} variable (found {found}): {path}')
    return mat[key]


def check_same_size(arr: np.ndarray, hw: Tuple[int, int], path: PathLike, what: str) -> None:
    """Raise when a map's spatial size differs from its image's.

    Args:
        arr: ``[H, W, ...]`` map.
        hw: the image's ``(H, W)``.
        path: the map's file, for the message.
        what: what the map is, for the message.
    """
    if tuple(arr.shape[:2]) != tuple(hw):
        raise DatasetError(f'{what} size {tuple(arr.shape[:2])} differs from its image size '
                           f'{tuple(hw)} (H, W): {path}')


def check_label_values(arr: np.ndarray, num_classes: int, path: PathLike, what: str,
                       offset: int = 0, ignore: Sequence[int] = (IGNORE_INDEX,)) -> None:
    """Raise when a label map holds values that are neither a class nor an ignore value.

    Args:
        arr: integer ``[H, W]`` labels as stored.
        num_classes: number of valid values, ``offset .. offset + num_classes - 1``.
        path: the file, for the message.
        what: what the map is, for the message.
        offset: first valid value as stored.
        ignore: values allowed besides the classes.
    """
    values = np.unique(arr)
    ok = ((values >= offset) & (values < offset + num_classes)) | np.isin(values, list(ignore))
    if not ok.all():
        bad = values[~ok][:10].tolist()
        allowed = f'{offset}..{offset + num_classes - 1}'
        if ignore:
            allowed += ' or ' + '/'.join(map(str, ignore))
        raise DatasetError(f'{what} values out of range: found {bad}, expected {allowed}: {path}')


def read_split_file(path: PathLike) -> List[str]:
    """Read a split file: one id per line, blank lines skipped.

    Args:
        path: the split file.

    Returns:
        The ids in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f'split file is missing: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            ids = [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise DatasetError(f'split file is not UTF-8 text: {path} ({e})') from None
    return [i for i in ids if i]


# ---------------------------------------------------------------------------------------------
# dataset base


class MultiTaskDataset(Dataset):
    """A split of a multi-task dense-prediction dataset stored as per-image files.

    Subclasses set ``METAINFO`` and implement :meth:`split_file`, :meth:`sample_files`,
    :meth:`_load_targets` and :meth:`default_pipeline`.

    Args:
        data_root (str): dataset root (the folder holding the release's sub-folders).
        split (str): ``'train'`` or ``'val'``. Defaults to ``'train'``.
        tasks (Sequence[str] | None): tasks to load, validated with
            ``mtlbench.tasks.check_tasks``; None loads all of the dataset's tasks.
        pipeline (list[dict | callable] | None): transforms, as configs built through
            ``mtlbench.registry.TRANSFORMS`` or as callables. None uses
            :meth:`default_pipeline` (the reference augmentation for train, resize only for
            val).
        img_size (tuple[int, int]): network input ``(H, W)`` of the default pipeline.
            Defaults to ``(448, 448)``.
        max_samples (int | None): keep only the first ``max_samples`` ids of the split (quick
            runs). Defaults to None (all).
        eval_at_original_resolution (bool): default val pipeline only: resize the image but keep
            the targets at their original size, so metrics are computed at the original
            resolution. Targets then differ in size between images, so batches need size 1 (or
            a collate that keeps lists). Off by default for comparability with the papers, which
            score at 448x448 against resized ground truth. Defaults to False.
        check_files (bool): check at construction that every file the split lists for the chosen
            tasks exists (one ``stat`` each; raises :class:`DatasetNotFoundError` naming the first
            few). Defaults to True.
        label_pad (int): default train pipeline: value of label pixels exposed by scale +
            rotate, 0 (reference) or 255 (departure ``label-pad-ignore``). Defaults to 0.
        image_cast (str): default pipelines: ``'wrap'`` (reference) or ``'clip'`` (departure
            ``image-clip``); see :class:`~.transforms.MTNormalize`. Defaults to ``'wrap'``.
        normals_resample (str): default pipelines: ``'cubic'`` (reference) or
            ``'nearest-valid'`` (departure ``normals-nearest-valid``). Defaults to ``'cubic'``.

    The three protocol options come from the config's ``data_protocol`` (``mtlbench.config.
    resolve`` copies it into both dataloaders' datasets), so a run record names them.
    """

    METAINFO: ClassVar[dict] = {}

    def __init__(self,
                 data_root: str,
                 split: str = 'train',
                 tasks: Optional[Sequence[str]] = None,
                 pipeline: Optional[Sequence[Union[dict, Callable]]] = None,
                 img_size: Tuple[int, int] = (448, 448),
                 max_samples: Optional[int] = None,
                 eval_at_original_resolution: bool = False,
                 check_files: bool = True,
                 label_pad: int = 0,
                 image_cast: str = 'wrap',
                 normals_resample: str = 'cubic'):
        name = self.METAINFO['dataset_name']
        check_data_protocol(label_pad, image_cast, normals_resample)
        self.label_pad = label_pad
        self.image_cast = image_cast
        self.normals_resample = normals_resample
        self.tasks: Tuple[str, ...] = check_tasks(name, tasks)
        if split not in ('train', 'val'):
            raise OptionError(f"split must be 'train' or 'val', got {split!r}")
        if max_samples is not None and max_samples < 1:
            raise OptionError(f'max_samples must be >= 1 or None, got {max_samples}')
        self.split = split
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.eval_at_original_resolution = eval_at_original_resolution
        self.data_root = Path(os.path.expanduser(str(data_root)))
        if not self.data_root.is_dir():
            raise DatasetNotFoundError(
                f'{name} data root does not exist or is not a folder: {self.data_root} '
                f'(expected the release layout, e.g. {self.split_file().relative_to(self.data_root)})')
        self.ids: List[str] = read_split_file(self.split_file())
        if max_samples is not None:
            self.ids = self.ids[:max_samples]
        self.files: List[Dict[str, Path]] = [self.sample_files(i) for i in self.ids]
        if check_files:
            missing = self.missing_files()
            if missing:
                shown = ', '.join(str(p.relative_to(self.data_root)) for p in missing[:_SHOW])
                more = f' and {len(missing) - _SHOW} more' if len(missing) > _SHOW else ''
                raise DatasetNotFoundError(
                    f'{len(missing)} file(s) listed in split {split!r} ({self.split_file()}) are '
                    f'missing under {self.data_root}: {shown}{more}')
        listed = len(self.ids)
        self._select_samples()
        if not self.ids:  # an empty split file, or none of its images has labels for these tasks
            raise DatasetError(f'split {split!r} of {name} has no samples for the tasks {list(self.tasks)}: '
                               f'{self.split_file()} lists {listed} image(s)')
        self.pipeline = build_pipeline(self.default_pipeline() if pipeline is None else pipeline)

    # -- layout (subclasses) -------------------------------------------------------------------

    def split_file(self) -> Path:
        """The file listing this split's ids."""
        raise NotImplementedError

    def sample_files(self, sample_id: str) -> Dict[str, Path]:
        """Files of one sample for the chosen tasks: ``{'img': path, <task or aux key>: path}``."""
        raise NotImplementedError

    def _load_targets(self, files: Dict[str, Path], hw: Tuple[int, int]) -> Dict[str, np.ndarray]:
        """Read, check and convert the task maps of one sample (per ``self.tasks``)."""
        raise NotImplementedError

    def _select_samples(self) -> None:
        """Drop ids the reference's loader would not list (``self.ids`` / ``self.files``); none
        by default."""

    def train_augmentations(self) -> List[dict]:
        """The dataset's reference training augmentations (before resize / normalise / pack)."""
        raise NotImplementedError

    def default_pipeline(self) -> List[dict]:
        """The reference pipeline for ``self.split``. Train: the dataset's augmentations, resize,
        ignore empty parts, normalise. Val: resize (image only when
        ``eval_at_original_resolution``), ignore empty parts, normalise."""
        augment = self.train_augmentations() if self.split == 'train' else []
        resize_targets = self.split == 'train' or not self.eval_at_original_resolution
        return augment + [
            dict(type='MTResize', size=self.img_size, resize_targets=resize_targets,
                 normals_resample=self.normals_resample),
            dict(type='MTIgnoreEmptyParts'),
            dict(type='MTNormalize', image_cast=self.image_cast),
            dict(type='MTPackInputs'),
        ]

    # -- public ----------------------------------------------------------------------------------

    @property
    def metainfo(self) -> dict:
        """Dataset name, chosen tasks, class names of the classification tasks, split facts."""
        meta = self.METAINFO
        return dict(
            dataset_name=meta['dataset_name'],
            tasks=self.tasks,
            classes={t: meta['classes'][t] for t in self.tasks if t in meta['classes']},
            split=self.split,
            num_samples=len(self),
            expected_num_samples=meta['split_sizes'][self.split],
            img_size=self.img_size,
            eval_at_original_resolution=self.eval_at_original_resolution,
        )

    def missing_files(self) -> List[Path]:
        """Files listed by the split (for the chosen tasks) that do not exist, in split order."""
        return [p for files in self.files for p in files.values() if not p.is_file()]

    def load_sample(self, index: int) -> dict:
        """Read and validate one sample, before any transform.

        Args:
            index: position in the split.

        Returns:
            ``dict(img=uint8 [H, W, 3], <task>=map, id=str, index=int, ori_shape=(H, W),
            tasks=tuple)`` with maps as in :mod:`.transforms`: labels uint8 ``[H, W]`` (255
            ignore), normals float32 ``[H, W, 3]`` (zero = invalid), depth float32 ``[H, W]``
            (0 = missing).
        """
        files = self.files[index]
        img = read_image(files['img'])
        hw = img.shape[:2]
        sample = dict(img=img, id=self.ids[index], index=index, ori_shape=tuple(hw),
                      tasks=self.tasks)
        sample.update(self._load_targets(files, hw))
        return sample

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} samples')
        return self.pipeline(self.load_sample(index))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(data_root={str(self.data_root)!r}, split={self.split!r}, '
                f'tasks={self.tasks}, num_samples={len(self)})')
