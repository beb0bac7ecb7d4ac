"""Small synthetic copies of PASCAL-Context MT and NYUDv2 MT, in exactly the real layouts.

Neither release can be downloaded where the tests and CI run, yet the loaders, transforms,
verification, training loop and metrics all need data in the real formats to be exercised.
:func:`write_synthetic_dataset` writes a few images in the same folders, file types, dtypes and
value ranges as the releases (``shared/reference/datasets.md``): JPEG images, uint8 PNG labels,
PASCAL-Part ``anno`` and Context ``LabelMap`` ``.mat`` files, float32 ``.npy`` depth and
normals. The loaders are not told the data is synthetic.

Scenes are simple but consistent, so that a model can learn something and the metrics move:
a background (wall / floor, or sky for PASCAL), a few rectangles and ellipses of distinct
colours and textures, and (PASCAL) a person made of head / torso / arm / leg sub-regions that
are its parts. Every target is derived from the same geometry: semantic classes per shape with
a thin 255 (PASCAL) or void (NYUD) contour, saliency = foreground shapes, normals from planes
and sphere-like bumps (unit length, y pointing down the image), depth smooth and positive with
a few missing (0) pixels, the Context ``LabelMap`` marking wall / floor / some objects as
NYU-like classes so that part of each image has valid normals. PASCAL images cycle through
"no person", "person without parts" and "person with parts", and half of the semantic labels
live in ``semseg/pascal-context`` to exercise the fallback.

:func:`ensure_synthetic_dataset` writes such a copy once into a cache folder (atomically) and
reuses it; :func:`default_synthetic_root` says where.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import scipy.io
from PIL import Image

from mtlbench.errors import OptionError
from mtlbench.progress import Progress

from .pascal_context import PART_CLASSES, PERSON_CLASS_INDEX, VOC_CLASSES, context_classes


__all__ = ['write_synthetic_dataset', 'ensure_synthetic_dataset', 'default_synthetic_root',
           'SYNTH_VERSION']

# Bump when the generated content changes, so cached copies are rewritten.
SYNTH_VERSION = 1
_MANIFEST = 'synthetic.json'
_DATASETS = ('pascal_context', 'nyudv2')
_LIGHT = np.array([-0.3, -0.5, 0.81], dtype=np.float32)
_LIGHT /= np.linalg.norm(_LIGHT)


# ---------------------------------------------------------------------------------------------
# geometry helpers (all arrays [H, W] or [H, W, 3], float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)).astype(np.float32)


def _rect(yy: np.ndarray, xx: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    """Boolean mask of the axis-aligned rectangle ``[y0, y1) x [x0, x1)``."""
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float,
             rx: float) -> Tuple[np.ndarray, np.ndarray]:
    """Mask and sphere-like bump normals ``[H, W, 3]`` of an ellipse."""
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    rho2 = dx * dx + dy * dy
    nz = np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0)) + 0.2
    return rho2 <= 1.0, _unit(np.stack([0.8 * dx, 0.8 * dy, nz], axis=-1))


def _plane(shape: Tuple[int, int], normal) -> np.ndarray:
    """A constant normal map."""
    return np.broadcast_to(_unit(np.asarray(normal, dtype=np.float32)), (*shape, 3)).copy()


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (a 1-pixel inner contour)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _colour(key: int) -> np.ndarray:
    """A fixed, distinct RGB colour per class id."""
    return np.random.default_rng(1000 + key).uniform(40, 215, size=3).astype(np.float32)


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Stripes or checks of random frequency and orientation, in [-1, 1]."""
    fy, fx = rng.uniform(0.15, 0.6, size=2) * rng.choice([-1, 1], size=2)
    if rng.random() < 0.5:
        return np.sin(fy * yy + fx * xx).astype(np.float32)
    return (np.sign(np.sin(fy * yy)) * np.sign(np.sin(fx * xx))).astype(np.float32)


class _Canvas:
    """Accumulates an RGB image and its normals as shapes are painted back to front."""

    def __init__(self, rng: np.random.Generator, hw: Tuple[int, int]):
        self.rng = rng
        self.hw = hw
        self.yy, self.xx = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
        self.albedo = np.zeros((*hw, 3), dtype=np.float32)
        self.normals = _plane(hw, (0.0, 0.0, 1.0))

    def paint(self, mask: np.ndarray, class_key: int, normals: np.ndarray,
              texture: float = 25.0) -> None:
        colour = _colour(class_key) + texture * _texture(self.rng, self.yy, self.xx)[..., None]
        self.albedo[mask] = colour[mask]
        self.normals[mask] = normals[mask]

    def render(self, fog: Optional[np.ndarray] = None) -> np.ndarray:
        """Lambert-shaded image, uint8 ``[H, W, 3]``."""
        shade = 0.55 + 0.45 * np.clip(self.normals @ _LIGHT, 0.0, 1.0)
        img = self.albedo * shade[..., None]
        if fog is not None:
            img = img * fog[..., None] + 40.0 * (1.0 - fog[..., None])
        img = img + self.rng.normal(0.0, 3.0, size=img.shape)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# writers


def _save_jpg(path: Path, img: np.ndarray) -> None:
    Image.fromarray(img, mode='RGB').save(path, quality=92)


def _save_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _split_ids(ids: List[str]) -> Dict[str, List[str]]:
    n_val = max(1, len(ids) // 4)
    return {'train': ids[:-n_val], 'val': ids[-n_val:]}


def _write_splits(split_dir: Path, splits: Dict[str, List[str]]) -> None:
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (split_dir / f'{name}.txt').write_text(''.join(f'{i}\n' for i in ids), encoding='utf-8')


def _person_parts(yy: np.ndarray, xx: np.ndarray, top: float, cx: float,
                  ph: float) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """Part name, mask and normals of a stick-figure person ``ph`` pixels tall.

    Parts are disjoint; 'left' parts are on the image right (the person faces the camera).
    """
    shape = yy.shape
    def r(y0, y1, x0, x1):  # noqa: E306 - rectangle in person units
        return _rect(yy, xx, top + y0 * ph, top + y1 * ph, cx + x0 * ph, cx + x1 * ph)
    head, head_n = _ellipse(yy, xx, top + 0.09 * ph, cx, 0.09 * ph, 0.075 * ph)
    hair = head & (yy < top + 0.045 * ph)
    flat = _plane(shape, (0.0, 0.0, 1.0))
    limb_l, limb_r = _plane(shape, (0.4, 0.0, 1.0)), _plane(shape, (-0.4, 0.0, 1.0))
    parts = [
        ('hair', hair, head_n), ('head', head & ~hair, head_n),
        ('neck', r(0.17, 0.2, -0.03, 0.03) & ~head, flat), ('torso', r(0.2, 0.55, -0.12, 0.12), flat),
        ('luarm', r(0.2, 0.38, 0.12, 0.18), limb_l), ('ruarm', r(0.2, 0.38, -0.18, -0.12), limb_r),
        ('llarm', r(0.38, 0.53, 0.12, 0.18), limb_l), ('rlarm', r(0.38, 0.53, -0.18, -0.12), limb_r),
        ('lhand', r(0.53, 0.58, 0.12, 0.18), limb_l), ('rhand', r(0.53, 0.58, -0.18, -0.12), limb_r),
        ('luleg', r(0.55, 0.77, 0.01, 0.11), flat), ('ruleg', r(0.55, 0.77, -0.11, -0.01), flat),
        ('llleg', r(0.77, 0.96, 0.01, 0.11), flat), ('rlleg', r(0.77, 0.96, -0.11, -0.01), flat),
        ('lfoot', r(0.96, 1.0, 0.01, 0.15), flat), ('rfoot', r(0.96, 1.0, -0.15, -0.01), flat),
    ]
    return [(name, mask, n) for name, mask, n in parts if mask.any()]


def _anno(image_id: str, objects: List[dict]) -> dict:
    """A PASCAL-Part ``anno`` struct as ``scipy.io.savemat`` writes it.

    Each object dict has ``cls`` (name), ``ind`` (class index), ``mask`` and ``parts`` (list of
    ``(name, mask)``; empty for none).
    """
    obj_dtype = [('class', 'O'), ('class_ind', 'O'), ('mask', 'O'), ('parts', 'O')]
    arr = np.zeros((1, len(objects)), dtype=obj_dtype)
    for k, obj in enumerate(objects):
        if obj['parts']:
            parts = np.zeros((1, len(obj['parts'])), dtype=[('part_name', 'O'), ('mask', 'O')])
            for i, (name, mask) in enumerate(obj['parts']):
                parts[0, i] = (name, mask.astype(np.uint8))
        else:
            parts = np.zeros((0, 0), dtype=np.float64)
        arr[0, k] = (obj['cls'], np.array([[obj['ind']]], dtype=np.uint8),
                     obj['mask'].astype(np.uint8), parts)
    return {'imname': f'{image_id}.jpg', 'objects': arr}


def _voc_context_index(voc_class: int) -> int:
    """Context index of a VOC class (``diningtable`` is ``table`` in Context)."""
    name = VOC_CLASSES[voc_class]
    context = context_classes()
    return context.get(name, context['table'])


def _write_pascal_sample(root: Path, image_id: str, i: int, rng: np.random.Generator,
                         size: Optional[Tuple[int, int]]) -> None:
    if size is None:
        hw = (96 + 8 * int(rng.integers(0, 3)), 128 + 8 * int(rng.integers(0, 3)))
    else:
        hw = (int(size[0]), int(size[1]))
    h, w = hw
    context = context_classes()
    canvas = _Canvas(rng, hw)
    yy, xx = canvas.yy, canvas.xx
    semseg = np.zeros(hw, dtype=np.uint8)
    label_map = np.zeros(hw, dtype=np.uint16)
    fg = np.zeros(hw, dtype=bool)

    # background: wall above floor, or sky above floor (sky is not an NYU class)
    horizon = rng.uniform(0.4, 0.6) * h
    upper, lower = yy < horizon, yy >= horizon
    upper_name = 'sky' if i % 3 == 2 else 'wall'
    canvas.paint(upper, 500 + (upper_name == 'sky'), _plane(hw, (0.0, 0.0, 1.0)), texture=10.0)
    canvas.paint(lower, 502, _plane(hw, (0.0, -0.9, 0.45)), texture=15.0)
    label_map[upper] = context[upper_name]
    label_map[lower] = context['floor']

    # objects (non-person), then the person on top
    objects: List[dict] = []
    masks: List[Tuple[np.ndarray, int]] = []
    for k in range(int(rng.integers(1, 3))):
        cls = int(rng.choice([c for c in range(1, len(VOC_CLASSES)) if c != PERSON_CLASS_INDEX]))
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.12, 0.25) * h, rng.uniform(0.1, 0.2) * w
        if rng.random() < 0.5:
            mask, normals = _ellipse(yy, xx, cy, cx, ry, rx)
        else:
            mask = _rect(yy, xx, cy - ry, cy + ry, cx - rx, cx + rx)
            normals = _plane(hw, (rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), 1.0))
        canvas.paint(mask, cls, normals)
        masks.append((mask, cls))
        # an animal with parts of its own: the loader must only draw person parts
        parts = [('head', mask & (yy < cy))] if i % 5 == 2 and k == 0 else []
        objects.append(dict(cls=VOC_CLASSES[cls], ind=cls, mask=mask, parts=parts))
    mode = i % 4  # 0: no person, 1: person without parts, 2-3: person with parts
    if mode != 0:
        ph = rng.uniform(0.55, 0.8) * h
        top = rng.uniform(0.02 * h, max(0.03 * h, h - ph - 1))
        cx = rng.uniform(0.3, 0.7) * w
        parts = _person_parts(yy, xx, top, cx, ph)
        person = np.zeros(hw, dtype=bool)
        for name, mask, normals in parts:
            canvas.paint(mask, 600 + PART_CLASSES[name], normals, texture=12.0)
            person |= mask
        masks.append((person, PERSON_CLASS_INDEX))
        objects.append(dict(cls='person', ind=PERSON_CLASS_INDEX, mask=person,
                            parts=[(n, m) for n, m, _ in parts] if mode != 1 else []))
    # visible masks: later shapes occlude earlier ones (masks and objects are aligned)
    covered = np.zeros(hw, dtype=bool)
    for k in reversed(range(len(masks))):
        mask, cls = masks[k]
        visible = mask & ~covered
        semseg[visible] = cls
        label_map[visible] = _voc_context_index(cls)
        fg |= visible
        covered |= mask
        objects[k]['mask'] = visible
    for obj in objects:  # VOC-style 255 contour around each visible object
        semseg[_boundary(obj['mask'])] = 255

    sal = np.where(fg, rng.uniform(170, 255), rng.uniform(0, 90, size=hw))
    normals_png = np.round((canvas.normals + 1.0) * 127.5).clip(0, 255)

    _save_jpg(root / 'JPEGImages' / f'{image_id}.jpg', canvas.render())
    sem_dir = 'VOC12' if i % 2 == 0 else 'pascal-context'
    _save_png(root / 'semseg' / sem_dir / f'{image_id}.png', semseg)
    _save_png(root / 'sal_distill' / f'{image_id}.png', np.round(sal))
    _save_png(root / 'normals_distill' / f'{image_id}.png', normals_png)
    scipy.io.savemat(root / 'human_parts' / f'{image_id}.mat', {'anno': _anno(image_id, objects)},
                     do_compression=True)
    scipy.io.savemat(root / 'pascal-context' / 'trainval' / f'{image_id}.mat',
                     {'LabelMap': label_map}, do_compression=True)


def _write_nyud_sample(root: Path, image_id: str, i: int, rng: np.random.Generator,
                       size: Optional[Tuple[int, int]]) -> None:
    hw = (96, 128) if size is None else (int(size[0]), int(size[1]))
    h, w = hw
    canvas = _Canvas(rng, hw)
    yy, xx = canvas.yy, canvas.xx
    seg = np.zeros(hw, dtype=np.uint8)  # raw: 0 void, 1..40 classes

    # room: ceiling (22) / wall (1) / floor (2); depth in metres, planes
    ceil_row, horizon = rng.uniform(0.08, 0.15) * h, rng.uniform(0.55, 0.7) * h
    d_wall = rng.uniform(3.0, 4.5)
    wall_tilt = rng.uniform(-0.4, 0.4)
    depth = (d_wall + wall_tilt * (xx / w - 0.5)).astype(np.float32)
    floor_t = np.clip((yy - horizon) / max(h - 1 - horizon, 1.0), 0.0, 1.0)
    floor = yy >= horizon
    depth[floor] = (d_wall + (1.2 - d_wall) * floor_t)[floor]
    ceiling = yy < ceil_row
    wall = ~floor & ~ceiling
    canvas.paint(wall, 1, _plane(hw, (-wall_tilt / d_wall, 0.0, 1.0)), texture=8.0)
    canvas.paint(ceiling, 22, _plane(hw, (0.0, 0.9, 0.45)), texture=4.0)
    canvas.paint(floor, 2, _plane(hw, (0.0, -0.9, 0.45)), texture=20.0)
    seg[wall], seg[ceiling], seg[floor] = 1, 22, 2

    masks = []
    for _ in range(int(rng.integers(2, 4))):
        cls = int(rng.choice([c for c in range(3, 41) if c != 22]))
        cy, cx = rng.uniform(0.35, 0.8) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.1, 0.22) * h, rng.uniform(0.08, 0.2) * w
        d_obj = rng.uniform(1.5, d_wall - 0.5)
        if rng.random() < 0.5:
            mask, normals = _ellipse(yy, xx, cy, cx, ry, rx)
            obj_depth = d_obj - 0.3 * normals[..., 2]
        else:
            mask = _rect(yy, xx, cy - ry, cy + ry, cx - rx, cx + rx)
            tilt = rng.uniform(-0.3, 0.3)
            normals = _plane(hw, (tilt, 0.0, 1.0))
            obj_depth = d_obj - 0.3 * tilt * (xx - cx) / max(rx, 1.0)
        canvas.paint(mask, cls, normals)
        depth[mask] = obj_depth[mask]
        seg[mask] = cls
        masks.append(mask)
    for mask in masks:
        seg[_boundary(mask)] = 0

    # missing depth: a few random pixels and one small hole (no normals there either)
    depth = depth.astype(np.float32)
    depth[rng.random(hw) < 0.01] = 0.0
    hy, hx = int(rng.integers(0, h - h // 10)), int(rng.integers(0, w - w // 10))
    hole = _rect(yy, xx, hy, hy + h // 12, hx, hx + w // 12)
    depth[hole] = 0.0
    normals = canvas.normals.copy()
    normals[hole] = 0.0
    fog = np.clip(1.15 - 0.12 * depth, 0.4, 1.0)
    edge = _boundary(seg > 0) | _boundary(seg == 2)

    _save_jpg(root / 'images' / f'{image_id}.jpg', canvas.render(fog))
    _save_png(root / 'segmentation' / f'{image_id}.png', seg)
    np.save(root / 'depth' / f'{image_id}.npy', depth)
    np.save(root / 'normals' / f'{image_id}.npy', normals.astype(np.float32))
    np.save(root / 'edge' / f'{image_id}.npy', edge.astype(np.float32))


_LAYOUT = {
    'pascal_context': dict(
        dirs=('JPEGImages', 'ImageSets/Context', 'semseg/VOC12', 'semseg/pascal-context',
              'human_parts', 'sal_distill', 'normals_distill', 'pascal-context/trainval'),
        split_dir='ImageSets/Context', writer=_write_pascal_sample,
        make_id=lambda i: f'{2008 + i % 3}_{i:06d}'),
    'nyudv2': dict(
        dirs=('images', 'segmentation', 'depth', 'normals', 'edge', 'gt_sets'),
        split_dir='gt_sets', writer=_write_nyud_sample, make_id=lambda i: f'{i + 1:04d}'),
}


def _check_dataset(dataset: str) -> None:
    if dataset not in _DATASETS:
        raise OptionError(f'unknown dataset {dataset!r}; valid: {list(_DATASETS)}')


def write_synthetic_dataset(dataset: str, out: str, n: int, seed: int = 0,
                            size: Optional[Tuple[int, int]] = None, progress: bool = False) -> dict:
    """Write a small synthetic dataset in the release's exact layout.

    Args:
        dataset: ``'pascal_context'`` or ``'nyudv2'``.
        out: root folder to write (created; existing files of the same names are overwritten).
        n: number of images, >= 2; about a quarter (at least one) go to val, the rest to train.
        seed: seed of everything drawn.
        size: image ``(H, W)``. Defaults to ~96x128 varying a little (PASCAL) or 96x128 (NYUD;
            the real one is 480x640).
        progress: report ``done/n`` with an ETA on stderr (``mtlbench data synth``).

    Returns:
        ``dict(dataset=str, root=str, n=int, seed=int, size=tuple | None,
        splits={'train': [ids], 'val': [ids]}, counts={'train': int, 'val': int})``.
    """
    _check_dataset(dataset)
    if n < 2:
        raise OptionError(f'n must be >= 2 (train and val both non-empty), got {n}')
    layout = _LAYOUT[dataset]
    root = Path(out)
    for d in layout['dirs']:
        (root / d).mkdir(parents=True, exist_ok=True)
    ids = [layout['make_id'](i) for i in range(n)]
    bar = Progress(n, f'synth {dataset}') if progress else None
    for i, image_id in enumerate(ids):
        layout['writer'](root, image_id, i, np.random.default_rng([seed, i]), size)
        if bar is not None:
            bar.update()
    splits = _split_ids(ids)
    _write_splits(root / layout['split_dir'], splits)
    return dict(dataset=dataset, root=str(root), n=n, seed=seed,
                size=tuple(size) if size is not None else None, splits=splits,
                counts={k: len(v) for k, v in splits.items()})


def default_synthetic_root(dataset: str) -> str:
    """Cache folder for the synthetic copy of ``dataset``.

    ``$MTLBENCH_CACHE/synthetic/<dataset>``, else ``$XDG_CACHE_HOME/mtlbench/...``, else
    ``~/.cache/mtlbench/synthetic/<dataset>``.

    Args:
        dataset: ``'pascal_context'`` or ``'nyudv2'``.

    Returns:
        The folder path (not created).
    """
    _check_dataset(dataset)
    base = os.environ.get('MTLBENCH_CACHE')
    if not base:
        xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
        base = os.path.join(xdg, 'mtlbench')
    return os.path.join(base, 'synthetic', dataset)


def ensure_synthetic_dataset(dataset: str, n: int = 16, root: Optional[str] = None,
                             seed: int = 0, size: Optional[Tuple[int, int]] = None) -> str:
    """Write the synthetic copy once and reuse it.

    The copy is written to a temporary folder beside ``root`` and renamed into place, so a
    crashed or concurrent writer never leaves a half-written dataset. A ``synthetic.json``
    manifest (dataset, n, seed, size, generator version) in the root decides reuse; a copy
    with another manifest is replaced. A non-empty folder without the manifest is never
    touched (it may be a real dataset).

    Args:
        dataset: ``'pascal_context'`` or ``'nyudv2'``.
        n: number of images.
        root: target folder. Defaults to :func:`default_synthetic_root`.
        seed: generator seed.
        size: image ``(H, W)``; None for the defaults of :func:`write_synthetic_dataset`.

    Returns:
        The dataset root.
    """
    _check_dataset(dataset)
    target = Path(root or default_synthetic_root(dataset)).expanduser()
    want = dict(dataset=dataset, n=n, seed=seed, size=list(size) if size is not None else None,
                version=SYNTH_VERSION)
    manifest = target / _MANIFEST
    if target.exists():
        if manifest.is_file():
            try:
                if json.loads(manifest.read_text(encoding='utf-8')) == want:
                    return str(target)
            except ValueError:
                pass
        elif any(target.iterdir()):
            raise OptionError(f'refusing to overwrite {target}: it is not empty and has no '
                             f'{_MANIFEST} (not a synthetic copy written by mtlbench)')
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}-tmp-', dir=target.parent))
    old = None
    try:
        write_synthetic_dataset(dataset, str(tmp), n, seed=seed, size=size)
        (tmp / _MANIFEST).write_text(json.dumps(want), encoding='utf-8')
        if target.exists():
            old = target.with_name(f'.{target.name}-old-{uuid.uuid4().hex[:8]}')
            try:
                os.rename(target, old)
            except FileNotFoundError:
                old = None
        try:
            os.rename(tmp, target)
        except OSError:  # a concurrent writer put its copy in place first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return str(target)
