"""uint8 batches over the bus, normalised on the device (mtlbench/transfer.py): the model
sees what the float pipeline gives, to 1e-6."""
from __future__ import annotations

import numpy as np
import torch
from mmengine.dataset import default_collate

from mtlbench.datasets import MTNormalize, MTPackInputs
from mtlbench.transfer import MultiTaskDataPreprocessor, compact_collate


def _sample(seed: int, image_cast: str = 'wrap') -> dict:
    rng = np.random.default_rng(seed)
    img = rng.uniform(-40.0, 300.0, (6, 5, 3))            # bicubic overshoot on both sides
    parts = rng.integers(0, 7, (6, 5)).astype(np.float64)
    parts[0, 0] = 255                                      # ignore
    normals = rng.normal(size=(6, 5, 3)).astype(np.float32)
    sample = dict(img=img, semseg=rng.integers(0, 59, (6, 5)).astype(np.float64), human_parts=parts,
                  normals=normals, tasks=('semseg', 'human_parts', 'normals'), index=seed, id=f's{seed}')
    return MTPackInputs()(MTNormalize(image_cast=image_cast)(sample))


def test_device_normalisation_equals_the_cpu_pipeline():
    samples = [_sample(i) for i in range(3)]
    expected = default_collate(samples)
    compact = compact_collate(samples)
    assert compact['inputs'].dtype == torch.uint8
    assert compact['data_samples']['semseg'].dtype == compact['data_samples']['human_parts'].dtype == torch.uint8
    assert compact['data_samples']['normals'].dtype == torch.float32      # float maps stay float
    pre = MultiTaskDataPreprocessor()
    assert pre._non_blocking
    got = pre(compact)
    assert got['inputs'].dtype == torch.float32
    torch.testing.assert_close(got['inputs'], expected['inputs'], rtol=0, atol=1e-6)
    for key in ('semseg', 'human_parts', 'normals'):
        assert got['data_samples'][key].dtype == expected['data_samples'][key].dtype
        assert torch.equal(got['data_samples'][key], expected['data_samples'][key]), key
    assert got['data_samples']['id'] == expected['data_samples']['id']


def test_what_cannot_be_narrowed_travels_unchanged():
    """'clip' keeps fractional pixels: the float image travels; a label above 255 travels as int16."""
    samples = [_sample(i, image_cast='clip') for i in range(2)]
    samples[1]['data_samples']['semseg'][0, 0] = 300
    expected = default_collate(samples)
    compact = compact_collate(samples)
    assert compact['inputs'].dtype == torch.float32 and compact['data_samples']['semseg'].dtype == torch.int16
    got = MultiTaskDataPreprocessor()(compact)
    assert torch.equal(got['inputs'], expected['inputs'])
    assert torch.equal(got['data_samples']['semseg'], expected['data_samples']['semseg'])


def test_bytes_over_the_bus_shrink_fourfold_and_more():
    samples = [_sample(i) for i in range(2)]

    def nbytes(batch):
        maps = [v for k, v in batch['data_samples'].items() if k not in ('index', 'id')]
        return batch['inputs'].nbytes + sum(v.nbytes for v in maps)
    full, small = nbytes(default_collate(samples)), nbytes(compact_collate(samples))
    # image 4 -> 1 byte, two labels 8 -> 1, normals 12 -> 12 bytes per pixel
    assert small / full == (3 + 2 + 12) / (12 + 16 + 12)
