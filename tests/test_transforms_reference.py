"""mtlbench's transforms give the MTLoRA reference's arrays for the same random draws.

Each reference transform (``data/custom_transforms.py`` of the checkout in
``MTLBENCH_MTLORA_REF``; skipped without it) runs next to mtlbench's on the same sample with
numpy's global generator seeded alike: labels must agree exactly, images, normals and depth within
1e-5. The reference keeps every map in float64 (normals and depth of NYUD as stored) and marks
ignore with 255; mtlbench keeps labels uint8 and marks invalid normals as the zero vector, which
the comparisons translate.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import sys
import types

import cv2
import numpy as np
import pytest
import torch

from mtlbench.datasets import (MTIgnoreEmptyParts, MTNormalize, MTRandomFlip, MTRandomScaleRotate,
                               MTResize, PascalContextMT, NYUDv2MT)

REF = os.environ.get('MTLBENCH_MTLORA_REF')
FLAGVALS = {'image': cv2.INTER_CUBIC, 'semseg': cv2.INTER_NEAREST, 'human_parts': cv2.INTER_NEAREST,
            'sal': cv2.INTER_NEAREST, 'normals': cv2.INTER_CUBIC, 'depth': cv2.INTER_NEAREST}
LABELS = ('semseg', 'human_parts', 'sal')
SIZE = (56, 48)  # (H, W) of the final resize: both up- and down-sampling occur below


@pytest.fixture(scope='module')
def tr():
    """The reference's ``data.custom_transforms``, imported without its package ``__init__``."""
    path = os.path.join(REF or '', 'data', 'custom_transforms.py')
    if not REF or not os.path.isfile(path):
        pytest.skip('set MTLBENCH_MTLORA_REF to a checkout of scale-lab/MTLoRA')
    saved = {k: sys.modules.get(k) for k in ('data', 'data.helpers', 'data.custom_transforms')}
    pkg = types.ModuleType('data')
    pkg.__path__ = [os.path.join(REF, 'data')]
    sys.modules['data'] = pkg
    try:
        for name in ('helpers', 'custom_transforms'):
            spec = importlib.util.spec_from_file_location(f'data.{name}', os.path.join(REF, 'data', f'{name}.py'))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[f'data.{name}'] = mod
            spec.loader.exec_module(mod)
            setattr(pkg, name, mod)
        return mod
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def pascal_sample(seed, h=45, w=61, parts=True):
    """(mtlbench sample, reference sample) of one synthetic PASCAL image, loaded as each loads it."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    img[:, w // 2:] = 255  # a strong edge: bicubic overshoots, the reference wraps
    semseg = rng.choice([0, 3, 7, 20, 255], (h, w)).astype(np.uint8)
    human = np.zeros((h, w), np.uint8)
    if parts:
        human[h // 3: h // 2, w // 3: w // 2] = rng.integers(1, 7, (h // 2 - h // 3, w // 2 - w // 3))
    sal = rng.choice([0, 1], (h, w)).astype(np.uint8)
    normals = 2.0 * rng.integers(0, 256, (h, w, 3)).astype(np.float64) / 255.0 - 1.0
    normals[: h // 4] = 0.0  # not an NYU-like Context class: invalid
    ours = dict(img=img, semseg=semseg, human_parts=human if parts else np.full((h, w), 255, np.uint8),
                sal=sal, normals=normals, tasks=('semseg', 'human_parts', 'sal', 'normals'), id='p', index=0)
    ref = dict(image=img.astype(float), semseg=semseg.astype(float), human_parts=human.astype(float),
               sal=sal.astype(float), normals=normals.copy(), meta={'image': 'p'})
    return ours, ref


def nyud_sample(seed, h=40, w=52):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    semseg = rng.choice([0, 5, 39, 255], (h, w)).astype(np.uint8)
    depth = np.where(rng.random((h, w)) < 0.1, 0.0, rng.uniform(0.5, 9.0, (h, w))).astype(np.float32)
    n = rng.normal(size=(h, w, 3))
    normals = (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)
    ours = dict(img=img, semseg=semseg, depth=depth, normals=normals, tasks=('semseg', 'depth', 'normals'),
                id='n', index=0)
    ref = dict(image=img.astype(float), semseg=semseg.astype(float), depth=depth.copy(), normals=normals.copy(),
               meta={'image': 'n'})
    return ours, ref


def assert_same(ours, ref, atol=1e-5):
    """Maps of both samples agree: labels exactly, the rest within ``atol``."""
    np.testing.assert_allclose(ours['img'], ref['image'], rtol=0, atol=atol)
    for key in ours['tasks']:
        if key in LABELS:
            assert np.array_equal(ours[key].astype(float), ref[key]), key
        else:
            assert ours[key].dtype == ref[key].dtype, key  # same dtype, same cv2 code path
            np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=atol, err_msg=key)


def run_both(seed, ours_fn, ref_fn, ours, ref):
    """Apply both with the global generator seeded alike; the draws consumed must agree too."""
    np.random.seed(seed)
    ours = ours_fn(copy.deepcopy(ours))
    after_ours = np.random.random()
    np.random.seed(seed)
    ref = ref_fn(copy.deepcopy(ref))
    assert np.random.random() == after_ours, 'the two consumed different random draws'
    return ours, ref


@pytest.mark.parametrize('seed', range(4))
def test_flip(tr, seed):
    ours, ref = run_both(seed, MTRandomFlip(), tr.RandomHorizontalFlip(), *pascal_sample(seed))
    assert_same(ours, ref)


@pytest.mark.parametrize('seed', range(6))
def test_scale_rotate_pascal(tr, seed):
    ref_t = tr.ScaleNRotate(rots=(-20, 20), scales=(.75, 1.25), flagvals=FLAGVALS)
    ours, ref = run_both(seed, MTRandomScaleRotate(rotate_range=(-20, 20), scale_range=(0.75, 1.25)), ref_t,
                         *pascal_sample(seed))
    assert_same(ours, ref)


@pytest.mark.parametrize('seed', range(6))
def test_scale_rotate_nyud(tr, seed):
    ref_t = tr.ScaleNRotate(rots=[0], scales=[1.0, 1.2, 1.5], flagvals=FLAGVALS)
    ours_t = MTRandomScaleRotate(rotate_range=None, scale_range=None, rotate_choices=(0.0,),
                                 scale_choices=(1.0, 1.2, 1.5))
    ours, ref = run_both(seed, ours_t, ref_t, *nyud_sample(seed))
    assert_same(ours, ref)


@pytest.mark.parametrize('hw', [(45, 61), (70, 30)])
def test_resize(tr, hw):
    ours, ref = pascal_sample(1, *hw)
    ref_t = tr.FixedResize(resolutions={k: SIZE for k in ('image', *LABELS, 'normals')},
                           flagvals={k: FLAGVALS[k] for k in ('image', *LABELS, 'normals')})
    assert_same(MTResize(SIZE)(ours), ref_t(ref))
    ours, ref = nyud_sample(2, *hw)
    keys = ('image', 'semseg', 'depth', 'normals')
    ref_t = tr.FixedResize(resolutions={k: SIZE for k in keys}, flagvals={k: FLAGVALS[k] for k in keys})
    assert_same(MTResize(SIZE)(ours), ref_t(ref))


def test_ignore_regions(tr):
    """The reference's 255 in normals / depth is mtlbench's zero; empty human parts are all 255."""
    for parts in (True, False):
        ours, ref = pascal_sample(3, parts=parts)
        ref = tr.AddIgnoreRegions()(ref)
        ours = MTIgnoreEmptyParts()(ours)
        assert np.array_equal(ours['human_parts'].astype(float), ref['human_parts'])
        assert np.array_equal(~ours['normals'].any(-1), (ref['normals'] == 255).all(-1))
    ours, ref = nyud_sample(4)
    ref = tr.AddIgnoreRegions()(ref)
    assert np.array_equal(ours['depth'] == 0, ref['depth'] == 255)


def test_normalise_wraps_like_the_reference_cast(tr):
    rng = np.random.default_rng(5)
    img = rng.uniform(-40.0, 300.0, (9, 11, 3))  # bicubic overshoot on both sides
    ref = tr.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])(
        tr.ToTensor()({'image': img.copy(), 'meta': {}}))['image']
    ours = MTNormalize()({'img': img.copy()})['img']
    np.testing.assert_allclose(ours.transpose(2, 0, 1), ref.numpy(), rtol=0, atol=1e-5)


def _reference_pipeline(tr, keys, rots, scales, split):
    flag = {k: FLAGVALS[k] for k in ('image', *keys)}
    augment = [tr.RandomHorizontalFlip(), tr.ScaleNRotate(rots=rots, scales=scales, flagvals=flag)]
    return (augment if split == 'train' else []) + [
            tr.FixedResize(resolutions={k: SIZE for k in flag}, flagvals=flag), tr.AddIgnoreRegions(),
            tr.ToTensor(), tr.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]


def _as_reference_input(sample):
    ref = {'image': sample['img'].astype(float), 'meta': {}}
    for key in sample['tasks']:
        arr = sample[key]
        if key == 'human_parts':  # the reference loads an image without person parts as zeros
            arr = np.where(arr == 255, 0, arr)
        ref[key] = arr.astype(float) if key in LABELS else arr.copy()  # normals, depth: as loaded
    return ref


@pytest.fixture(scope='module')
def roots(tmp_path_factory):
    """Own synthetic copies (other tests edit the shared session ones)."""
    from mtlbench.datasets import write_synthetic_dataset
    out = {}
    for name, dataset, n in (('pascal', 'pascal_context', 10), ('nyud', 'nyudv2', 6)):
        out[name] = str(tmp_path_factory.mktemp(name))
        write_synthetic_dataset(dataset, out[name], n=n, seed=1)
    return out


@pytest.mark.parametrize('split', ['train', 'val'])
@pytest.mark.parametrize('name', ['pascal', 'nyud'])
def test_whole_pipeline_on_synthetic_files(tr, name, split, roots):
    """Default pipelines of mtlbench's datasets vs the reference's, sample for sample."""
    if name == 'pascal':
        ds = PascalContextMT(roots[name], split=split, img_size=SIZE)
        pipe = _reference_pipeline(tr, ds.tasks, (-20, 20), (.75, 1.25), split)
    else:
        ds = NYUDv2MT(roots[name], split=split, img_size=SIZE)
        pipe = _reference_pipeline(tr, ds.tasks, [0], [1.0, 1.2, 1.5], split)
    for index in range(len(ds)):
        raw = ds.load_sample(index)
        ref = _as_reference_input(raw)
        np.random.seed(index)
        ours = ds.pipeline(raw)
        np.random.seed(index)
        for t in pipe:
            ref = t(ref)
        torch.testing.assert_close(ours['inputs'], ref['image'], rtol=0, atol=1e-5)
        for key in ds.tasks:
            got, want = ours['data_samples'][key], ref[key]
            if key in LABELS:
                assert torch.equal(got.double(), want[0]), (index, key)
            elif key == 'normals':
                invalid = (want == 255).all(0)
                assert torch.equal(~got.bool().any(0), invalid), index
                torch.testing.assert_close(got.double()[:, ~invalid], want[:, ~invalid], rtol=0, atol=1e-5)
            else:  # depth
                want = torch.where(want == 255, torch.zeros_like(want), want)
                torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
