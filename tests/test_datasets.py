"""Loaders of PASCAL-Context MT and NYUDv2 MT: file formats, target contract, clear errors.

Each test starts from a tiny synthetic copy in the real layout, overwrites the files it cares
about with known arrays, and checks what the loader returns (or which error it raises).
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mtlbench.datasets import (DATASET_CLASSES, DatasetError, DatasetNotFoundError, NYUDv2MT,
                               PascalContextMT, write_synthetic_dataset)
from mtlbench.registry import DATASETS, TRANSFORMS
from mtlbench.tasks import DATASET_TASKS

META = Path(__file__).resolve().parents[1] / 'datasets' / 'meta'
SMALL = (32, 48)


@pytest.fixture
def pascal_root(tmp_path):
    return write_synthetic_dataset('pascal_context', str(tmp_path / 'PASCAL_MT'), n=4)['root']


@pytest.fixture
def nyud_root(tmp_path):
    return write_synthetic_dataset('nyudv2', str(tmp_path / 'NYUD_MT'), n=4)['root']


def _first(root, split_file):
    return (Path(root) / split_file).read_text().split()[0]


def _hw(path):
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def _save_anno(path, objects):
    """Write a PASCAL-Part ``anno`` .mat; objects: list of (name, class_ind, mask, parts)."""
    objs = np.zeros((1, len(objects)),
                    dtype=[('class', 'O'), ('class_ind', 'O'), ('mask', 'O'), ('parts', 'O')])
    for k, (name, ind, mask, parts) in enumerate(objects):
        if parts:
            p = np.zeros((1, len(parts)), dtype=[('part_name', 'O'), ('mask', 'O')])
            for i, (pname, pmask) in enumerate(parts):
                p[0, i] = (pname, pmask.astype(np.uint8))
        else:
            p = np.zeros((0, 0))
        objs[0, k] = (name, np.array([[ind]], dtype=np.uint8), mask.astype(np.uint8), p)
    scipy.io.savemat(path, {'anno': {'imname': 'x.jpg', 'objects': objs}})


# ---------------------------------------------------------------------------------------------
# registration and the sample contract


def test_registered_and_exported():
    assert DATASETS.get('PascalContextMT') is PascalContextMT
    assert DATASETS.get('NYUDv2MT') is NYUDv2MT
    assert DATASET_CLASSES == {'pascal_context': PascalContextMT, 'nyudv2': NYUDv2MT}
    for name in ('MTRandomFlip', 'MTRandomScaleRotate', 'MTResize', 'MTNormalize', 'MTPackInputs'):
        assert TRANSFORMS.get(name) is not None
    assert issubclass(DatasetNotFoundError, DatasetError)
    assert issubclass(DatasetError, ValueError) and issubclass(DatasetNotFoundError, FileNotFoundError)


@pytest.mark.parametrize('name', ['pascal_context', 'nyudv2'])
@pytest.mark.parametrize('split', ['train', 'val'])
def test_sample_format_matches_tasks_contract(tmp_path, name, split):
    root = write_synthetic_dataset(name, str(tmp_path / name), n=8)['root']  # val gets 2
    ds = DATASETS.build(dict(type=DATASET_CLASSES[name].__name__, data_root=root, split=split,
                             img_size=SMALL))
    assert ds.tasks == tuple(DATASET_TASKS[name])
    assert ds.metainfo['dataset_name'] == name
    out = ds[0]
    assert set(out) == {'inputs', 'data_samples'}
    x = out['inputs']
    assert x.dtype == torch.float32 and x.shape == (3, *SMALL)
    assert -3.0 < float(x.mean()) < 3.0  # ImageNet-normalised, not 0..255
    ds_ = out['data_samples']
    assert set(ds_) == set(ds.tasks) | {'index', 'id'}
    assert ds_['index'] == 0 and ds_['id'] == ds.ids[0]
    for task in ds.tasks:
        t = ds_[task]
        if task in ('semseg', 'human_parts', 'sal'):
            assert t.dtype == torch.int64 and t.shape == SMALL
            n_cls = DATASET_TASKS[name][task] if task != 'sal' else 2
            vals = t.unique()
            assert bool(((vals < n_cls) | (vals == 255)).all())
        elif task == 'normals':
            assert t.dtype == torch.float32 and t.shape == (3, *SMALL)
            norm = t.norm(dim=0)
            valid = norm > 0
            assert valid.any()
            assert torch.allclose(norm[valid], torch.ones(()), atol=1e-4)
        else:
            assert t.dtype == torch.float32 and t.shape == (1, *SMALL)
            assert float(t.min()) >= 0.0
    # default collate (torch's and mmengine's) batches it
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch['inputs'].shape == (2, 3, *SMALL)
    assert batch['data_samples']['id'] == [ds.ids[0], ds.ids[1]]
    from mmengine.dataset import default_collate
    assert default_collate([ds[0], ds[1]])['data_samples']['index'].tolist() == [0, 1]


def test_task_subset_max_samples_and_argument_checks(pascal_root):
    ds = PascalContextMT(pascal_root, split='train', tasks=('sal',), max_samples=2, img_size=SMALL)
    assert len(ds) == 2
    assert set(ds[1]['data_samples']) == {'sal', 'index', 'id'}
    with pytest.raises(ValueError, match='depth'):
        PascalContextMT(pascal_root, tasks=('depth',))
    with pytest.raises(ValueError, match='split'):
        PascalContextMT(pascal_root, split='test')


def test_eval_at_original_resolution_keeps_targets(pascal_root):
    ds = PascalContextMT(pascal_root, split='val', img_size=SMALL, eval_at_original_resolution=True)
    out = ds[0]
    hw = _hw(Path(pascal_root) / 'JPEGImages' / f'{ds.ids[0]}.jpg')
    assert out['inputs'].shape == (3, *SMALL)
    assert out['data_samples']['semseg'].shape == hw
    assert out['data_samples']['normals'].shape == (3, *hw)


def test_nothing_written_into_data_root(pascal_root, nyud_root):
    for cls, root in ((PascalContextMT, pascal_root), (NYUDv2MT, nyud_root)):
        before = sorted((p, p.stat().st_mtime_ns) for p in Path(root).rglob('*'))
        ds = cls(root, split='train', img_size=SMALL)
        for i in range(len(ds)):
            ds[i]
        assert sorted((p, p.stat().st_mtime_ns) for p in Path(root).rglob('*')) == before


# ---------------------------------------------------------------------------------------------
# PASCAL-Context file formats


def test_pascal_semseg_png_roundtrip_and_fallback(pascal_root):
    root = Path(pascal_root)
    ds = PascalContextMT(root, split='train', tasks=('semseg',), pipeline=[])
    i = next(k for k, f in enumerate(ds.files) if 'VOC12' in str(f['semseg']))
    sid = ds.ids[i]
    hw = _hw(root / 'JPEGImages' / f'{sid}.jpg')
    labels = np.random.default_rng(0).choice([*range(21), 255], size=hw).astype(np.uint8)
    Image.fromarray(labels).save(root / 'semseg' / 'VOC12' / f'{sid}.png')
    out = ds.load_sample(i)['semseg']
    assert out.dtype == np.uint8 and np.array_equal(out, labels)
    # VOC12 absent -> semseg/pascal-context
    (root / 'semseg' / 'VOC12' / f'{sid}.png').unlink()
    Image.fromarray(labels[::-1].copy()).save(root / 'semseg' / 'pascal-context' / f'{sid}.png')
    ds = PascalContextMT(root, split='train', tasks=('semseg',), pipeline=[])
    assert np.array_equal(ds.load_sample(i)['semseg'], labels[::-1])


def test_pascal_saliency_threshold(pascal_root):
    root = Path(pascal_root)
    ds = PascalContextMT(root, split='train', tasks=('sal',), pipeline=[])
    sid = ds.ids[0]
    h, w = _hw(root / 'JPEGImages' / f'{sid}.jpg')
    grey = np.zeros((h, w), np.uint8)
    grey[:, 1], grey[:, 2], grey[:, 3] = 127, 128, 255  # 127/255 < 0.5 < 128/255
    Image.fromarray(grey).save(root / 'sal_distill' / f'{sid}.png')
    sal = ds.load_sample(0)['sal']
    assert sal.dtype == np.uint8
    assert sal[:, 0].max() == 0 and sal[:, 1].max() == 0
    assert sal[:, 2].min() == 1 and sal[:, 3].min() == 1


def test_pascal_normals_decode_and_context_mask(pascal_root):
    root = Path(pascal_root)
    ds = PascalContextMT(root, split='train', tasks=('normals',), pipeline=[])
    sid = ds.ids[0]
    h, w = _hw(root / 'JPEGImages' / f'{sid}.jpg')
    v = np.random.default_rng(1).integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    Image.fromarray(v).save(root / 'normals_distill' / f'{sid}.png')
    context = json.loads((META / 'context_classes.json').read_text())
    label_map = np.full((h, w), context['sky'], np.uint16)        # not an NYU class
    label_map[:, : w // 4] = context['wall']                        # NYU class
    label_map[:, w // 4: w // 2] = context['tvmonitor']             # added by hand
    label_map[:, w // 2: 3 * w // 4] = context['unknown']           # excluded
    scipy.io.savemat(root / 'pascal-context' / 'trainval' / f'{sid}.mat', {'LabelMap': label_map})
    n = ds.load_sample(0)['normals']
    assert n.dtype == np.float64 and n.shape == (h, w, 3)  # the reference's dtype
    expect = 2.0 * v.astype(np.float64) / 255.0 - 1.0
    np.testing.assert_allclose(n[:, : w // 2], expect[:, : w // 2], atol=1e-6)
    assert not n[:, w // 2:].any()


def test_pascal_human_parts_from_mat(pascal_root):
    root = Path(pascal_root)
    ds = PascalContextMT(root, split='train', tasks=('human_parts',), pipeline=[])
    sid = ds.ids[0]
    h, w = _hw(root / 'JPEGImages' / f'{sid}.jpg')
    path = root / 'human_parts' / f'{sid}.mat'

    def band(c0, c1):
        m = np.zeros((h, w), bool)
        m[:, c0:c1] = True
        return m

    names = ['hair', 'torso', 'luarm', 'rhand', 'ruleg', 'lfoot']
    parts = [(nm, band(2 * k, 2 * k + 2)) for k, nm in enumerate(names)]
    person = np.zeros((h, w), bool)
    person[:, :12] = True
    dog_parts = [('head', band(20, 24))]
    _save_anno(path, [('dog', 12, band(20, 30), dog_parts), ('person', 15, person, parts)])
    out = ds.load_sample(0)['human_parts']
    assert out.dtype == np.uint8
    assert out[:, 0:12:2].max(axis=0).tolist() == [1, 2, 3, 4, 5, 6]
    assert (out[:, 12:] == 0).all()  # background, incl. the dog's 'head' part

    # a person without parts only -> all ignore
    _save_anno(path, [('person', 15, person, [])])
    assert (ds.load_sample(0)['human_parts'] == 255).all()
    # no person (an animal with parts) -> all ignore
    _save_anno(path, [('dog', 12, band(20, 30), dog_parts)])
    assert (ds.load_sample(0)['human_parts'] == 255).all()


def test_pascal_synthetic_human_parts_modes(tmp_path):
    # synth cycles: i % 4 == 0 no person, == 1 person without parts, else person with parts
    root = write_synthetic_dataset('pascal_context', str(tmp_path / 'pc'), n=8)['root']
    for split in ('train', 'val'):
        ds = PascalContextMT(root, split=split, tasks=('human_parts',), pipeline=[])
        for k, sid in enumerate(ds.ids):
            i = int(sid.split('_')[1])
            parts = ds.load_sample(k)['human_parts']
            if i % 4 in (0, 1):
                assert (parts == 255).all()
            else:
                assert set(np.unique(parts).tolist()) == set(range(7))


# ---------------------------------------------------------------------------------------------
# NYUDv2 file formats


def test_nyud_label_shift_depth_and_normals_roundtrip(nyud_root):
    root = Path(nyud_root)
    ds = NYUDv2MT(root, split='train', pipeline=[])
    sid = ds.ids[0]
    h, w = _hw(root / 'images' / f'{sid}.jpg')
    raw = np.random.default_rng(2).integers(0, 41, size=(h, w)).astype(np.uint8)
    raw[0, :3] = [0, 1, 40]
    Image.fromarray(raw).save(root / 'segmentation' / f'{sid}.png')
    depth = np.random.default_rng(3).uniform(0.5, 9.0, size=(h, w)).astype(np.float32)
    depth[:4, :4] = 0.0
    np.save(root / 'depth' / f'{sid}.npy', depth)
    normals = np.random.default_rng(4).normal(size=(h, w, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    np.save(root / 'normals' / f'{sid}.npy', normals)

    s = ds.load_sample(0)
    assert s['semseg'][0, :3].tolist() == [255, 0, 39]
    expect = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    assert np.array_equal(s['semseg'], expect)
    assert np.array_equal(s['depth'], depth)
    assert np.array_equal(s['normals'], normals)
    # missing depth stays 0 (the depth task's ignore value) through the default val pipeline
    val = NYUDv2MT(root, split='train', pipeline=[
        dict(type='MTResize', size=(h, w)), dict(type='MTPackInputs')])
    d = val[0]['data_samples']['depth']
    assert d.shape == (1, h, w) and (d[0, :4, :4] == 0).all()
    assert torch.equal(d[0], torch.from_numpy(depth))


# ---------------------------------------------------------------------------------------------
# clear errors: each names the problem and the file


def test_missing_root_and_split_file(tmp_path, pascal_root):
    with pytest.raises(DatasetNotFoundError, match='data root does not exist') as e:
        PascalContextMT(str(tmp_path / 'nowhere'))
    assert 'nowhere' in str(e.value)
    os.remove(Path(pascal_root) / 'ImageSets' / 'Context' / 'val.txt')
    with pytest.raises(FileNotFoundError, match=r'split file is missing: .*val\.txt'):
        PascalContextMT(pascal_root, split='val')


def test_listed_files_missing_summarised(pascal_root):
    ds = PascalContextMT(pascal_root, split='train', pipeline=[])
    for sid in ds.ids:
        os.remove(Path(pascal_root) / 'sal_distill' / f'{sid}.png')
    with pytest.raises(DatasetNotFoundError) as e:
        PascalContextMT(pascal_root, split='train')
    msg = str(e.value)
    assert f'{len(ds.ids)} file(s) listed' in msg and f'sal_distill/{ds.ids[0]}.png' in msg
    # the other tasks still load
    assert len(PascalContextMT(pascal_root, split='train', tasks=('semseg',))) == len(ds.ids)


def _corrupt(path):
    Path(path).write_bytes(b'\xff\xd8\xff\xe0 definitely not a JPEG')


@pytest.mark.parametrize('name', ['pascal_context', 'nyudv2'])
def test_image_that_does_not_decode(tmp_path, name):
    root = write_synthetic_dataset(name, str(tmp_path / name), n=2)['root']
    ds = DATASET_CLASSES[name](root, split='train', pipeline=[])
    img = ds.files[0]['img']
    _corrupt(img)
    with pytest.raises(DatasetError, match='does not decode') as e:
        ds[0]
    assert str(img) in str(e.value)


def test_pascal_bad_label_size_values_and_normals(pascal_root):
    root = Path(pascal_root)
    ds = PascalContextMT(root, split='train', pipeline=[])
    sid = ds.ids[0]
    h, w = _hw(root / 'JPEGImages' / f'{sid}.jpg')
    sem = ds.files[0]['semseg']
    Image.fromarray(np.zeros((h + 1, w), np.uint8)).save(sem)
    with pytest.raises(DatasetError, match=r'size .* differs') as e:
        ds.load_sample(0)
    assert str(sem) in str(e.value)
    bad = np.zeros((h, w), np.uint8)
    bad[0, 0] = 30
    Image.fromarray(bad).save(sem)
    with pytest.raises(DatasetError, match=r'out of range: found \[30\]') as e:
        ds.load_sample(0)
    assert str(sem) in str(e.value)
    Image.fromarray(np.zeros((h, w), np.uint8)).save(sem)
    nrm = root / 'normals_distill' / f'{sid}.png'
    Image.fromarray(np.zeros((h, w), np.uint8)).save(nrm)  # grey, 1 channel
    with pytest.raises(DatasetError, match='3 channels') as e:
        ds.load_sample(0)
    assert str(nrm) in str(e.value)


def test_pascal_bad_parts_mat(pascal_root):
    root = Path(pascal_root)
    ds = PascalContextMT(root, split='train', tasks=('human_parts',), pipeline=[])
    path = ds.files[0]['human_parts']
    scipy.io.savemat(path, {'something_else': np.zeros(3)})
    with pytest.raises(DatasetError, match="no 'anno' variable") as e:
        ds.load_sample(0)
    assert str(path) in str(e.value)
    h, w = _hw(ds.files[0]['img'])
    m = np.ones((h, w), bool)
    _save_anno(path, [('person', 15, m, [('tail', m)])])
    with pytest.raises(DatasetError, match="unknown person part name 'tail'"):
        ds.load_sample(0)


def test_nyud_bad_inputs(nyud_root):
    root = Path(nyud_root)
    ds = NYUDv2MT(root, split='train', pipeline=[])
    sid = ds.ids[0]
    h, w = _hw(root / 'images' / f'{sid}.jpg')
    seg = root / 'segmentation' / f'{sid}.png'
    good_seg = np.array(Image.open(seg))
    bad = good_seg.copy()
    bad[0, 0] = 41
    Image.fromarray(bad).save(seg)
    with pytest.raises(DatasetError, match=r'out of range: found \[41\]') as e:
        ds.load_sample(0)
    assert str(seg) in str(e.value)
    Image.fromarray(good_seg).save(seg)

    depth_path = root / 'depth' / f'{sid}.npy'
    depth = np.load(depth_path)
    depth[3, 3] = np.nan
    np.save(depth_path, depth)
    with pytest.raises(DatasetError, match='NaN') as e:
        ds.load_sample(0)
    assert str(depth_path) in str(e.value)
    np.save(depth_path, np.ones((h, w + 2), np.float32))
    with pytest.raises(DatasetError, match='differs'):
        ds.load_sample(0)
    np.save(depth_path, np.ones((h, w), np.float32))

    nrm = root / 'normals' / f'{sid}.npy'
    np.save(nrm, np.ones((h, w, 2), np.float32))
    with pytest.raises(DatasetError, match='3 channels') as e:
        ds.load_sample(0)
    assert str(nrm) in str(e.value)
    nrm.write_bytes(b'garbage')
    with pytest.raises(DatasetError, match='does not load') as e:
        ds.load_sample(0)
    assert str(nrm) in str(e.value)


def test_human_parts_alone_lists_only_images_with_a_person(tmp_path):
    """The reference's parts index: with human parts the only task, an image is listed when an
    object of class 15 has a non-empty mask (with or without parts); with other tasks, all are."""
    root = Path(write_synthetic_dataset('pascal_context', str(tmp_path / 'pc'), n=9)['root'])
    ids = (root / 'ImageSets' / 'Context' / 'train.txt').read_text().split()
    h, w = _hw(root / 'JPEGImages' / f'{ids[0]}.jpg')
    full, empty = np.ones((h, w), bool), np.zeros((h, w), bool)
    hand = {ids[0]: [('person', 15, empty, [('head', full)])],  # a person of area 0: dropped
            ids[1]: [('dog', 12, full, [('head', full)])],       # no person: dropped
            ids[2]: [('person', 15, full, [])]}                  # a person without parts: kept
    for sid, objects in hand.items():
        h, w = _hw(root / 'JPEGImages' / f'{sid}.jpg')
        _save_anno(root / 'human_parts' / f'{sid}.mat',
                   [(n, c, np.resize(m, (h, w)), [(p, np.resize(pm, (h, w))) for p, pm in parts])
                    for n, c, m, parts in objects])
    # the other images follow the synthetic cycle: i % 4 == 0 has no person
    expect = [ids[2]] + [sid for sid in ids[3:] if int(sid.split('_')[1]) % 4 != 0]
    ds = PascalContextMT(root, split='train', tasks=('human_parts',), pipeline=[])
    assert ds.ids == expect and len(ds) == len(expect)
    assert PascalContextMT(root, split='train', tasks=('semseg', 'human_parts'), pipeline=[]).ids == ids
