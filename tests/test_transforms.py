"""Multi-task transforms: every map follows the image, and each value follows its own rule.

Invariants checked: a flip mirrors all maps and negates the normals' x; a rotation rotates the
normals with the pixels (checked against normals recomputed from a rotated height field) and
keeps them unit length; a zoom divides depth; labels only ever hold valid values or 255; the
bicubic image never wraps around; seeded runs repeat.
"""
import cv2
import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope

from mtlbench.datasets import (MTNormalize, MTPackInputs, MTRandomFlip, MTRandomScaleRotate,
                               MTResize, build_pipeline)

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


def test_rotation_rotates_constant_normals_and_keeps_unit_length():
    s = make_sample()
    n = np.zeros((H, W, 3), np.float32)
    n[..., 0] = 1.0  # pointing right, in the image plane
    s['normals'] = n
    angle = 30.0
    out = MTRandomScaleRotate.apply(_copy(s), angle, 1.0)['normals']
    valid = out.any(-1)
    assert valid.mean() > 0.5 and not valid.all()  # corners come from outside the canvas
    np.testing.assert_allclose(np.linalg.norm(out[valid], axis=-1), 1.0, atol=1e-5)
    # counter-clockwise on screen, y down: (1, 0) -> (cos a, -sin a)
    a = np.deg2rad(angle)
    np.testing.assert_allclose(out[valid][:, :2], [[np.cos(a), -np.sin(a)]] * int(valid.sum()),
                               atol=1e-4)


@pytest.mark.parametrize('angle', [-20.0, 12.5, 20.0])
def test_rotation_matches_rotated_geometry(angle):
    """Rotating a normal map must equal the normals of the rotated height field."""
    h, w = 64, 64
    height = _bump(h, w, cy=30, cx=36, r=9)
    s = make_sample(h=h, w=w)
    s['normals'] = _normals_from_height(height)
    out = MTRandomScaleRotate.apply(_copy(s), angle, 1.0)['normals']
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    rotated_height = cv2.warpAffine(height.astype(np.float32), m, (w, h), flags=cv2.INTER_CUBIC)
    expect = _normals_from_height(rotated_height)
    inner = (slice(16, 48), slice(16, 48))
    cos = (out[inner] * expect[inner]).sum(-1)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 3.0
    # the opposite sign convention would be far off
    wrong = MTRandomScaleRotate.apply(_copy(s), -angle, 1.0)['normals']
    cos_wrong = (wrong[inner] * expect[inner]).sum(-1)
    assert np.degrees(np.arccos(np.clip(cos_wrong, -1, 1))).max() > 6.0


def test_padding_is_ignore_and_depth_divided_by_scale():
    s = make_sample()
    s['depth'] = np.full((H, W), 3.0, np.float32)
    out = MTRandomScaleRotate.apply(_copy(s), 20.0, 0.75)
    outside = out['depth'] == 0
    assert outside.any()  # zooming out on the same canvas pads
    np.testing.assert_allclose(out['depth'][~outside], 3.0 / 0.75, rtol=1e-6)
    assert (out['semseg'][outside] == 255).all() and (out['sal'][outside] == 255).all()
    assert not out['normals'][outside].any()
    assert not out['img'][0, 0].any() and not out['img'][-1, -1].any()
    # NYUD-style discrete zoom drawn from the choices
    z = MTRandomScaleRotate(rotate_range=None, scale_range=None, scale_choices=(1.5,))
    zoomed = z(_copy(s))
    assert zoomed['scale'] == 1.5 and zoomed['rotate'] == 0.0
    np.testing.assert_allclose(zoomed['depth'], 2.0, rtol=1e-6)  # no padding when zooming in


def test_labels_keep_only_valid_values_after_any_aug():
    np.random.seed(0)
    pipeline = build_pipeline([dict(type='MTRandomFlip'), dict(type='MTRandomScaleRotate'),
                               dict(type='MTResize', size=(37, 61))])
    for seed in range(6):
        s = make_sample(seed)
        out = pipeline(_copy(s))
        assert set(np.unique(out['semseg'])) <= {0, 3, 7, 20, 255}
        assert set(np.unique(out['sal'])) <= {0, 1, 255}
        n = np.linalg.norm(out['normals'], axis=-1)
        assert np.allclose(n[n > 0], 1.0, atol=1e-5)
        assert out['depth'].min() >= 0
        assert out['img'].min() >= 0 and out['img'].max() <= 255


def test_seeded_draws_repeat():
    pipeline = build_pipeline([dict(type='MTRandomFlip'), dict(type='MTRandomScaleRotate')])
    results = []
    for _ in range(2):
        np.random.seed(123)
        results.append([pipeline(make_sample(k))['semseg'] for k in range(3)])
    for a, b in zip(*results):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# resize


def test_bicubic_image_does_not_wrap_at_strong_edges():
    img = np.zeros((H, W, 3), np.uint8)
    img[:, W // 2:] = 255
    img[H // 2:, :, 1] = 255
    s = dict(img=img, tasks=(), id='e', index=0)
    out = MTResize(size=(3 * H, 3 * W))(_copy(s))['img']
    assert out.min() >= 0.0 and out.max() <= 255.0
    # the reference defect: casting the bicubic result to uint8 without clipping wraps around
    naive = cv2.resize(img.astype(np.float32), (3 * W, 3 * H), interpolation=cv2.INTER_CUBIC)
    assert (naive < 0).any() or (naive > 255).any()
    # next to the edge, the dark side stays dark and the bright side stays bright
    row = out[H // 4 * 3, :, 0]  # the edge is between columns 3W/2 - 1 and 3W/2
    assert row[: 3 * W // 2 - 2].max() < 60 and row[3 * W // 2 + 2:].min() > 195
    rotated = MTRandomScaleRotate.apply(_copy(s), 17.0, 1.2)['img']
    assert rotated.min() >= 0.0 and rotated.max() <= 255.0


def test_resize_nearest_labels_and_normals_validity():
    s = make_sample()
    out = MTResize(size=(2 * H + 3, 2 * W - 5))(_copy(s))
    size = (2 * W - 5, 2 * H + 3)
    assert np.array_equal(out['semseg'], cv2.resize(s['semseg'], size, interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(out['depth'], cv2.resize(s['depth'], size, interpolation=cv2.INTER_NEAREST))
    src_valid = s['normals'].any(-1).astype(np.uint8)
    expect_valid = cv2.resize(src_valid, size, interpolation=cv2.INTER_NEAREST).astype(bool)
    valid = out['normals'].any(-1)
    assert np.array_equal(valid, expect_valid)  # nearest source invalid -> stays invalid
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
