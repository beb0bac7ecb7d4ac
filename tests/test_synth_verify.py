"""Synthetic data writer and dataset verification.

The synthetic copies must look exactly like the releases on disk (files, types, dtypes, value
ranges) and verify cleanly; verification must name the files it finds broken.
"""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from mtlbench.datasets import (NYUDv2MT, PascalContextMT, default_synthetic_root,
                               ensure_synthetic_dataset, verify_dataset, write_synthetic_dataset)


@pytest.mark.parametrize('name', ['pascal_context', 'nyudv2'])
def test_write_is_fast_and_splits_non_empty(tmp_path, name):
    t0 = time.perf_counter()
    info = write_synthetic_dataset(name, str(tmp_path / name), n=16)
    assert time.perf_counter() - t0 < 2.0
    assert info['counts']['train'] > 0 and info['counts']['val'] > 0
    assert info['counts']['train'] + info['counts']['val'] == 16
    assert not set(info['splits']['train']) & set(info['splits']['val'])
    with pytest.raises(ValueError):
        write_synthetic_dataset(name, str(tmp_path / 'x'), n=1)


def test_pascal_layout_types_and_dtypes(tmp_path):
    root = Path(write_synthetic_dataset('pascal_context', str(tmp_path / 'pc'), n=6)['root'])
    ids = (root / 'ImageSets/Context/train.txt').read_text().split()
    ids += (root / 'ImageSets/Context/val.txt').read_text().split()
    sizes = set()
    for sid in ids:
        with Image.open(root / 'JPEGImages' / f'{sid}.jpg') as im:
            assert im.format == 'JPEG' and im.mode == 'RGB'
            sizes.add(im.size)
            hw = (im.size[1], im.size[0])
        sem = [root / 'semseg' / d / f'{sid}.png' for d in ('VOC12', 'pascal-context')]
        assert sum(p.is_file() for p in sem) == 1
        for path, mode in ((next(p for p in sem if p.is_file()), 'L'),
                           (root / 'sal_distill' / f'{sid}.png', 'L'),
                           (root / 'normals_distill' / f'{sid}.png', 'RGB')):
            with Image.open(path) as im:
                assert im.format == 'PNG' and im.mode == mode
                assert np.asarray(im).dtype == np.uint8 and np.asarray(im).shape[:2] == hw
        anno = scipy.io.loadmat(root / 'human_parts' / f'{sid}.mat')['anno']
        for obj in anno[0][0][1][0]:  # layout of datasets.md
            assert isinstance(obj[0][0], str) and obj[1][0][0] >= 1
            assert obj[2].shape == hw
            if obj[3].size:
                assert isinstance(obj[3][0][0][0][0], str) and obj[3][0][0][1].shape == hw
        label_map = scipy.io.loadmat(root / 'pascal-context/trainval' / f'{sid}.mat')['LabelMap']
        assert label_map.shape == hw and 1 <= label_map.min() and label_map.max() <= 459
    assert len(sizes) > 1  # sizes vary a little
    assert any((root / 'semseg/VOC12').iterdir()) and any((root / 'semseg/pascal-context').iterdir())


def test_nyud_layout_types_dtypes_and_size(tmp_path):
    root = Path(write_synthetic_dataset('nyudv2', str(tmp_path / 'ny'), n=3, size=(48, 64))['root'])
    for sid in (root / 'gt_sets/train.txt').read_text().split():
        with Image.open(root / 'images' / f'{sid}.jpg') as im:
            assert im.format == 'JPEG' and im.size == (64, 48)
        seg = np.asarray(Image.open(root / 'segmentation' / f'{sid}.png'))
        assert seg.dtype == np.uint8 and seg.shape == (48, 64) and seg.max() <= 40
        assert (seg == 0).any()  # void pixels
        depth = np.load(root / 'depth' / f'{sid}.npy')
        assert depth.dtype == np.float32 and depth.shape == (48, 64)
        assert (depth == 0).any() and (depth >= 0).all() and depth.max() < 10
        normals = np.load(root / 'normals' / f'{sid}.npy')
        assert normals.dtype == np.float32 and normals.shape == (48, 64, 3)
        norm = np.linalg.norm(normals, axis=-1)
        assert np.allclose(norm[norm > 0], 1.0, atol=1e-5)
        assert (root / 'edge' / f'{sid}.npy').is_file()


def test_deterministic_given_seed(tmp_path):
    a = write_synthetic_dataset('nyudv2', str(tmp_path / 'a'), n=3, seed=5)['root']
    b = write_synthetic_dataset('nyudv2', str(tmp_path / 'b'), n=3, seed=5)['root']
    c = write_synthetic_dataset('nyudv2', str(tmp_path / 'c'), n=3, seed=6)['root']
    rel = 'depth/0001.npy'
    assert (Path(a) / rel).read_bytes() == (Path(b) / rel).read_bytes()
    assert (Path(a) / rel).read_bytes() != (Path(c) / rel).read_bytes()


@pytest.mark.parametrize('name', ['pascal_context', 'nyudv2'])
def test_synth_then_verify_is_ok(tmp_path, name):
    root = write_synthetic_dataset(name, str(tmp_path / name), n=8)['root']
    report = verify_dataset(name, root, progress=False)
    assert report.ok, report.format()
    assert report.counts == {'train': 6, 'val': 2} and report.checked == report.counts
    assert any('full release has' in w for w in report.warnings)  # counts differ: warning only
    text = report.format()
    assert 'OK' in text and 'train: 6 ids' in text


def test_verify_flags_deleted_file_and_corrupt_jpg(tmp_path):
    root = Path(write_synthetic_dataset('pascal_context', str(tmp_path / 'pc'), n=8)['root'])
    train = (root / 'ImageSets/Context/train.txt').read_text().split()
    deleted = root / 'sal_distill' / f'{train[1]}.png'
    deleted.unlink()
    corrupt = root / 'JPEGImages' / f'{train[2]}.jpg'
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated
    report = verify_dataset('pascal_context', str(root), progress=False)
    assert not report.ok
    assert any('missing file' in e and str(deleted) in e for e in report.errors)
    assert any('does not decode' in e and str(corrupt) in e for e in report.errors)
    assert report.checked['train'] == len(train) - 2
    assert 'FAILED' in report.format()
    # presence only: the corrupt image goes unnoticed, the deleted file does not
    quick = verify_dataset('pascal_context', str(root), check_content=False, progress=False)
    assert len(quick.errors) == 1 and str(deleted) in quick.errors[0]
    # a task subset that does not need the deleted file
    subset = verify_dataset('pascal_context', str(root), tasks=('semseg',), check_content=False,
                            progress=False)
    assert subset.ok


def test_verify_missing_root_split_file_and_error_cap(tmp_path):
    report = verify_dataset('nyudv2', str(tmp_path / 'nowhere'), progress=False)
    assert not report.ok and 'nowhere' in report.errors[0]
    root = Path(write_synthetic_dataset('nyudv2', str(tmp_path / 'ny'), n=8)['root'])
    (root / 'gt_sets/val.txt').unlink()
    for p in (root / 'depth').iterdir():
        p.unlink()
    report = verify_dataset('nyudv2', str(root), progress=False, max_listed=3)
    assert any('split file is missing' in e and 'val.txt' in e for e in report.errors)
    missing = [e for e in report.errors if e.startswith('missing file')]
    assert len(missing) == 3
    assert any(e.startswith('... and 3 more') for e in report.errors)
    with pytest.raises(ValueError, match='unknown dataset'):
        verify_dataset('cityscapes', str(root))


def test_ensure_writes_once_and_guards_real_folders(tmp_path, monkeypatch):
    monkeypatch.setenv('MTLBENCH_CACHE', str(tmp_path / 'cache'))
    assert default_synthetic_root('nyudv2') == str(tmp_path / 'cache' / 'synthetic' / 'nyudv2')
    root = ensure_synthetic_dataset('nyudv2', n=4)
    assert root == default_synthetic_root('nyudv2')
    stamp = (Path(root) / 'gt_sets/train.txt').stat().st_mtime_ns
    assert ensure_synthetic_dataset('nyudv2', n=4) == root
    assert (Path(root) / 'gt_sets/train.txt').stat().st_mtime_ns == stamp  # reused
    assert len(NYUDv2MT(root, split='train', pipeline=[])) == 3
    ensure_synthetic_dataset('nyudv2', n=8)  # another size: replaced
    assert len(NYUDv2MT(root, split='train', pipeline=[])) == 6
    assert json.loads((Path(root) / 'synthetic.json').read_text())['n'] == 8
    leftovers = [p.name for p in Path(root).parent.iterdir() if p.name.startswith('.')]
    assert leftovers == []
    # a non-empty folder without the manifest (maybe a real dataset) is never overwritten
    real = tmp_path / 'real'
    real.mkdir()
    (real / 'keep.txt').write_text('x')
    with pytest.raises(ValueError, match='refusing to overwrite'):
        ensure_synthetic_dataset('pascal_context', n=4, root=str(real))
    assert (real / 'keep.txt').read_text() == 'x'
    pc = ensure_synthetic_dataset('pascal_context', n=4, root=str(tmp_path / 'pc'))
    assert len(PascalContextMT(pc, split='val', pipeline=[])) == 1


@pytest.mark.parametrize('bad, expected', [
    (lambda d: d * 1000.0, 'depth values out of range'),  # millimetres, not metres (once accepted: 1e30 too)
    (lambda d: d.astype(np.complex64), 'depth must be real numbers'),  # once accepted
])
def test_verify_refuses_implausible_depth(tmp_path, bad, expected):
    root = Path(write_synthetic_dataset('nyudv2', str(tmp_path / 'ny'), n=4)['root'])
    path = sorted((root / 'depth').iterdir())[0]
    np.save(path, bad(np.load(path)))
    report = verify_dataset('nyudv2', str(root), progress=False)
    assert not report.ok and any(expected in e and str(path) in e for e in report.errors), report.errors
