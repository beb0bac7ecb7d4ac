"""Multi-task transforms: every map follows the image, and each value follows its own rule.

Invariants checked: a flip mirrors all maps and negates the normals' x; a rotation rotates the
normals with the pixels (checked against normals recomputed from a rotated height field); a zoom
divides depth; the canvas a zoom-out exposes holds 0 (labels: ``label_pad``), worked out by hand
on a 4x4 sample; labels only ever hold valid values or the pad; the image cast wraps like numpy's
``astype(uint8)`` (reference) or clips (``image-clip``); seeded runs repeat. The same transforms
are compared with the reference code itself in test_transforms_reference.py.
"""
import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope

from mtlbench.datasets import (MTIgnoreEmptyParts, MTNormalize, MTPackInputs, MTRandomFlip,
                               MTRandomScaleRotate, MTResize, build_pipeline)

H, W = 40, 56


def _normals_from_height(height):
    """Unit normals of a height field toward the camera, image axes (x right, y down)."""
    gy, gx = np.gradient(height)
    n = np.stack([-gx, -gy, np.ones_like(height)], axis=-1)
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def _bump(h=H, w=W, cy=None, cx=None, r=None):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h / 2 if cy is None else cy
    cx = w / 2 if cx is None else cx
    r = min(h, w) / 3 if r is None else r
    return 6.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))


def make_sample(seed=0, h=H, w=W, tasks=('semseg', 'sal', 'normals', 'depth')):
    rng = np.random.default_rng(seed)
    normals = _normals_from_height(_bump(h, w, cx=w * 0.4))
    normals[: h // 5] = 0.0  # an invalid band
    return dict(
        img=rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8),
        semseg=rng.choice([0, 3, 7, 20, 255], size=(h, w)).astype(np.uint8),
        sal=rng.choice([0, 1], size=(h, w)).astype(np.uint8),
        normals=normals,
        depth=np.where(rng.random((h, w)) < 0.1, 0.0, rng.uniform(1, 5, (h, w))).astype(np.float32),
        tasks=tuple(tasks), id='x', index=3, ori_shape=(h, w))


def _copy(sample):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sample.items()}


# ---------------------------------------------------------------------------------------------
# flip


def test_flip_mirrors_maps_and_negates_normals_x():
    s = make_sample()
    out = MTRandomFlip(prob=1.0)(_copy(s))
    for key in ('img', 'semseg', 'sal', 'depth'):
        assert np.array_equal(out[key], s[key][:, ::-1])
    n = out['normals']
    np.testing.assert_array_equal(n[..., 0], -s['normals'][:, ::-1, 0])
    np.testing.assert_array_equal(n[..., 1:], s['normals'][:, ::-1, 1:])
    invalid = ~s['normals'][:, ::-1].any(-1)
    assert invalid.any() and not n[invalid].any() and not np.signbit(n[invalid]).any()
    # flipping the height field gives the same normals
    flipped = _normals_from_height(_bump(cx=W * 0.4)[:, ::-1])
    np.testing.assert_allclose(n[H // 5:], flipped[H // 5:], atol=1e-6)
    unchanged = MTRandomFlip(prob=0.0)(_copy(s))
    assert np.array_equal(unchanged['normals'], s['normals'])


# ---------------------------------------------------------------------------------------------
# rotation and scale


def test_rotation_rotates_constant_normals():
    s = make_sample()
    n = np.zeros((H, W, 3), np.float32)
    n[..., 0] = 1.0  # pointing right, in the image plane
    s['normals'] = n
    angle = 30.0
    out = MTRandomScaleRotate.apply(_copy(s), angle, 1.0)['normals']
    # counter-clockwise on screen, y down: (1, 0) -> (cos 30, -sin 30) = (0.8660254, -0.5)
    np.testing.assert_allclose(out[H // 2 - 3: H // 2 + 3, W // 2 - 3: W // 2 + 3],
                               np.broadcast_to([0.8660254, -0.5, 0.0], (6, 6, 3)), atol=1e-5)
    assert not out[0, 0].any() and not out[-1, -1].any()  # corners come from outside the canvas
    norm = np.linalg.norm(out, axis=-1)
    # reference: not renormalised after the warp, so the bicubic seam with the zero border is short
    assert ((norm > 1e-3) & (norm < 0.9)).any()
    departed = MTRandomScaleRotate.apply(_copy(s), angle, 1.0, normals_resample='nearest-valid')['normals']
    valid = departed.any(-1)
    assert valid.mean() > 0.5 and not valid.all()
    np.testing.assert_allclose(np.linalg.norm(departed[valid], axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize('angle', [-20.0, 12.5, 20.0])
def test_rotation_matches_rotated_geometry(angle):
    """Rotating a normal map must equal the normals of the rotated height field."""
    h, w = 64, 64
    height = _bump(h, w, cy=30, cx=36, r=9)
    s = make_sample(h=h, w=w)
    s['normals'] = _normals_from_height(height)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    rotated_height = cv2.warpAffine(height.astype(np.float32), m, (w, h), flags=cv2.INTER_CUBIC)
    expect = _normals_from_height(rotated_height)
    inner = (slice(16, 48), slice(16, 48))

    def worst_angle(a):
        out = MTRandomScaleRotate.apply(_copy(s), a, 1.0)['normals'][inner]
        out = out / np.linalg.norm(out, axis=-1, keepdims=True)
        return np.degrees(np.arccos(np.clip((out * expect[inner]).sum(-1), -1, 1))).max()

    assert worst_angle(angle) < 3.0
    assert worst_angle(-angle) > 6.0  # the opposite sign convention would be far off


def _tiny(h=4, w=4):
    """A 4x4 sample with distinct values, to follow pixels by hand."""
    v = np.arange(h * w, dtype=np.float32).reshape(h, w)
    return dict(img=np.stack([v + 10, v + 30, v + 50], -1).astype(np.uint8),
                semseg=(v + 1).astype(np.uint8), depth=v + 1.0,
                normals=np.broadcast_to(np.array([0.0, 0.6, 0.8], np.float32), (h, w, 3)).copy(),
                tasks=('semseg', 'depth', 'normals'), id='t', index=0)


@pytest.mark.parametrize('label_pad', [0, 255])
def test_zoom_out_pads_with_zero_about_the_centre(label_pad):
    """Scale 0.5 about (W / 2, H / 2) = (2, 2): output pixel x reads source 2x - 2, so rows and
    columns 1, 2 read source 0, 2 and rows and columns 0, 3 (sources -2, 4) lie outside."""
    s = _tiny()
    out = MTRandomScaleRotate.apply(_copy(s), 0.0, 0.5, label_pad=label_pad)
    inside = np.zeros((4, 4), bool)
    inside[1:3, 1:3] = True
    src = np.ix_([0, 2], [0, 2])
    assert np.array_equal(out['semseg'][1:3, 1:3], s['semseg'][src])
    assert (out['semseg'][~inside] == label_pad).all()
    np.testing.assert_allclose(out['img'][1:3, 1:3], s['img'][src].astype(float), atol=1e-9)
    assert (out['img'][~inside] == 0).all()
    np.testing.assert_allclose(out['depth'][1:3, 1:3], s['depth'][src] / 0.5)  # divided by the scale
    assert (out['depth'][~inside] == 0).all() and (out['normals'][~inside] == 0).all()


def test_zoom_in_divides_depth():
    s = _tiny()
    s['depth'] = np.full((4, 4), 3.0, np.float32)
    out = MTRandomScaleRotate(rotate_range=None, scale_range=None, rotate_choices=(0.0,),
                              scale_choices=(1.5,))(_copy(s))
    assert out['scale'] == 1.5 and out['rotate'] == 0.0
    np.testing.assert_allclose(out['depth'], 2.0, rtol=1e-6)  # 3 / 1.5, no padding when zooming in


def test_draws_rotation_then_scale_with_the_reference_arithmetic():
    np.random.seed(7)
    u1, u2 = np.random.random(), np.random.random()
    np.random.seed(7)
    out = MTRandomScaleRotate(rotate_range=(-20, 20), scale_range=(0.75, 1.25))(make_sample())
    assert out['rotate'] == 40 * u1 - 20 and out['scale'] == 0.5 * u2 - 0.25 + 1


def test_labels_keep_only_valid_values_after_any_aug():
    np.random.seed(0)
    pipeline = build_pipeline([dict(type='MTRandomFlip'), dict(type='MTRandomScaleRotate'),
                               dict(type='MTResize', size=(37, 61))])
    for seed in range(6):
        s = make_sample(seed)
        out = pipeline(_copy(s))
        assert set(np.unique(out['semseg'])) <= {0, 3, 7, 20, 255}
        assert set(np.unique(out['sal'])) <= {0, 1}
        n = np.linalg.norm(out['normals'], axis=-1)
        assert np.allclose(n[n > 1e-3], 1.0, atol=1e-5)  # the resize renormalises
        assert out['depth'].min() >= 0


def test_seeded_draws_repeat():
    pipeline = build_pipeline([dict(type='MTRandomFlip'), dict(type='MTRandomScaleRotate')])
    results = []
    for _ in range(2):
        np.random.seed(123)
        results.append([pipeline(make_sample(k))['semseg'] for k in range(3)])
    for a, b in zip(*results):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# resize, empty parts, image cast


def test_image_cast_wraps_like_the_reference_or_clips():
    img = np.array([[[-3.7, 259.2, 127.99], [300.0, 0.4, 255.0]]])
    mean, std = np.zeros(3), np.ones(3)
    wrapped = MTNormalize(mean, std)({'img': img.copy()})['img']
    np.testing.assert_array_equal(wrapped, [[[253, 3, 127], [44, 0, 255]]])  # trunc, then mod 256
    clipped = MTNormalize(mean, std, image_cast='clip')({'img': img.copy()})['img']
    np.testing.assert_allclose(clipped, [[[0, 255, 127.99], [255, 0.4, 255]]], atol=1e-4)
    # bicubic upsampling of a strong edge overshoots, which is where the two differ
    edge = np.zeros((H, W, 3), np.uint8)
    edge[:, W // 2:] = 255
    out = MTResize(size=(3 * H, 3 * W))(dict(img=edge, tasks=(), id='e', index=0))['img']
    assert out.min() < 0 and out.max() > 255


def test_ignore_empty_parts():
    for values, empty in (([0], True), ([0, 255], True), ([255], True), ([0, 3], False), ([6, 255], False)):
        parts = np.array(values * 4, np.uint8).reshape(2, -1)
        out = MTIgnoreEmptyParts()(dict(human_parts=parts.copy(), tasks=('human_parts',)))['human_parts']
        assert np.array_equal(out, np.full_like(parts, 255) if empty else parts), values


@pytest.mark.parametrize('normals_resample', ['cubic', 'nearest-valid'])
def test_resize_nearest_labels_and_normals_validity(normals_resample):
    s = make_sample()
    out = MTResize(size=(2 * H + 3, 2 * W - 5), normals_resample=normals_resample)(_copy(s))
    size = (2 * W - 5, 2 * H + 3)
    assert np.array_equal(out['semseg'], cv2.resize(s['semseg'], size, interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(out['depth'], cv2.resize(s['depth'], size, interpolation=cv2.INTER_NEAREST))
    if normals_resample == 'nearest-valid':  # nearest source invalid -> stays invalid
        src_valid = s['normals'].any(-1).astype(np.uint8)
        expect_valid = cv2.resize(src_valid, size, interpolation=cv2.INTER_NEAREST).astype(bool)
    else:  # reference: invalid only where the bicubic result is exactly zero
        expect_valid = cv2.resize(s['normals'], size, interpolation=cv2.INTER_CUBIC).any(-1)
    valid = out['normals'].any(-1)
    assert np.array_equal(valid, expect_valid)
    np.testing.assert_allclose(np.linalg.norm(out['normals'][valid], axis=-1), 1.0, atol=1e-5)
    assert out['img_shape'] == (2 * H + 3, 2 * W - 5)


def test_resize_image_only_for_original_resolution_eval():
    s = make_sample()
    out = MTResize(size=(16, 16), resize_targets=False)(_copy(s))
    assert out['img'].shape == (16, 16, 3)
    assert np.array_equal(out['semseg'], s['semseg'])


# ---------------------------------------------------------------------------------------------
# normalise and pack


def test_normalize_and_pack_contract():
    s = make_sample()
    out = MTPackInputs()(MTNormalize()(_copy(s)))
    x = out['inputs']
    assert x.dtype == torch.float32 and x.shape == (3, H, W)
    expect = (s['img'][5, 7, 0] - 123.675) / 58.395
    assert abs(float(x[0, 5, 7]) - expect) < 1e-4
    d = out['data_samples']
    assert set(d) == {'semseg', 'sal', 'normals', 'depth', 'index', 'id'}
    assert d['semseg'].dtype == torch.int64 and d['semseg'].shape == (H, W)
    assert d['sal'].dtype == torch.int64
    assert d['normals'].dtype == torch.float32 and d['normals'].shape == (3, H, W)
    assert torch.equal(d['normals'], torch.from_numpy(s['normals']).permute(2, 0, 1))
    assert d['depth'].dtype == torch.float32 and d['depth'].shape == (1, H, W)
    assert d['index'] == 3 and d['id'] == 'x'


def test_build_pipeline_ignores_foreign_default_scope():
    DefaultScope.get_instance('test_transforms_foreign_scope', scope_name='mmengine')
    try:
        p = build_pipeline([dict(type='MTResize', size=(8, 8)), MTPackInputs()])
    finally:
        DefaultScope._instance_dict.pop('test_transforms_foreign_scope', None)
    assert isinstance(p.transforms[0], MTResize)
    assert p(make_sample())['inputs'].shape == (3, 8, 8)
    with pytest.raises(TypeError):
        build_pipeline([42])
