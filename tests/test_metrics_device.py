"""Batched scoring on the predictions' device against the per-sample float64 CPU scoring it
replaced.

The ``reference_*`` functions are the per-sample ``sample_stats`` bodies of
``mtlbench/evaluation/metrics.py`` before scoring moved to the device (mmseg's
``intersect_and_union`` for class counts, a ``[T, N]`` comparison for saliency, numpy for the
normals angles), kept verbatim here so the comparison does not lean on the new code.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmseg.evaluation import IoUMetric

from mtlbench.evaluation import (NORMALS_WITHIN_DEG, SAL_THRESHOLDS, DepthScorer, MultiTaskMetric,
                                 NormalsScorer, SaliencyScorer, SegmentationScorer, score_samples)
from mtlbench.evaluation.metrics import _to_host

REL = 1e-9


# --------------------------------------------------------------------------- old per-sample code

def reference_segmentation(pred, gt, num_classes, ignore_index=255):
    valid = gt != ignore_index
    for t in (gt[valid], pred[valid]):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError('label out of range')
    inter, union, pred_area, label_area = IoUMetric.intersect_and_union(pred, gt, num_classes,
                                                                        ignore_index)
    return {'intersect': inter.numpy().astype(np.int64), 'union': union.numpy().astype(np.int64),
            'pred_area': pred_area.numpy().astype(np.int64),
            'label_area': label_area.numpy().astype(np.int64)}


def reference_saliency(pred, gt, thresholds=SAL_THRESHOLDS, ignore_index=255):
    valid = gt != ignore_index
    if not bool(valid.any()):
        zeros = np.zeros(len(thresholds))
        return {'iou': zeros, 'precision': zeros.copy(), 'recall': zeros.copy(), 'n': np.int64(0)}
    labels = gt[valid]
    target = (labels == 1).reshape(1, -1)
    thr = torch.from_numpy(np.asarray(thresholds, dtype=np.float64)).reshape(-1, 1)
    positive = pred[valid].double().reshape(1, -1) > thr
    tp = (positive & target).sum(1).double().numpy()
    fp = (positive & ~target).sum(1).double().numpy()
    fn = (~positive & target).sum(1).double().numpy()
    union = tp + fp + fn
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, tp / union, 1.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
    return {'iou': iou, 'precision': precision, 'recall': recall, 'n': np.int64(1)}


def reference_normals(pred, gt, bin_deg=0.05):
    num_bins = int(math.ceil(180.0 / bin_deg))
    gt = gt.double()
    valid = (gt != 0).any(dim=0)
    p = F.normalize(pred.double(), dim=0)[:, valid]
    g = F.normalize(gt, dim=0)[:, valid]
    ang = torch.rad2deg(torch.acos((p * g).sum(dim=0).clamp(-1.0, 1.0))).numpy()
    bins = np.minimum((ang / bin_deg).astype(np.int64), num_bins - 1)
    hist = np.bincount(bins, minlength=num_bins)
    idx = np.flatnonzero(hist)
    return {'sum': np.float64(ang.sum()), 'sum_sq': np.float64(np.square(ang).sum()),
            'count': np.int64(ang.size),
            'within': np.array([(ang < t).sum() for t in NORMALS_WITHIN_DEG], dtype=np.int64),
            'hist_idx': idx.astype(np.uint16), 'hist_cnt': hist[idx].astype(np.int32)}


def reference_depth(pred, gt):
    gt = gt.double()
    valid = (gt > 0) & torch.isfinite(gt)
    p, g = pred.double()[valid], gt[valid]
    err = p - g
    return {'sse': np.float64(err.square().sum().item()),
            'abs_rel_sum': np.float64((err.abs() / g).sum().item()),
            'count': np.int64(int(valid.sum()))}


def assert_stats_equal(got, want):
    assert set(got) == set(want)
    for k in want:
        w, g = np.asarray(want[k]), np.asarray(got[k])
        assert g.shape == w.shape and g.dtype == w.dtype, k
        if w.dtype.kind == 'f':
            np.testing.assert_allclose(g, w, rtol=REL, atol=0, err_msg=k)
        else:
            np.testing.assert_array_equal(g, w, err_msg=k)


# --------------------------------------------------------------------------- random batches

def _batch(gen, task, b, h, w, classes=21):
    """Random predictions / targets of ``task`` with ignored / invalid pixels."""
    if task == 'semseg':
        pred = torch.randint(0, classes, (b, h, w), generator=gen)
        gt = torch.randint(0, classes, (b, h, w), generator=gen)
        gt[torch.rand(b, h, w, generator=gen) < 0.1] = 255
        gt[0] = 255                                            # one fully ignored image
    elif task == 'sal':
        pred = torch.rand(b, h, w, generator=gen)
        pred[:, 0, :4] = torch.tensor([0.25, 0.5, 0.75, 0.5])   # exactly on a threshold: not salient
        gt = torch.randint(0, 2, (b, h, w), generator=gen)
        gt[torch.rand(b, h, w, generator=gen) < 0.1] = 255
        gt[1] = 0                                              # no salient pixel
        gt[0] = 255                                            # every pixel ignored
    elif task == 'normals':
        pred = torch.randn(b, 3, h, w, generator=gen)
        pred[:, :, 0, 0] = 0                                   # zero prediction: 90 degrees
        gt = F.normalize(torch.randn(b, 3, h, w, generator=gen), dim=1)
        gt[:, :, torch.rand(h, w, generator=gen) < 0.1] = 0   # invalid pixels
        gt[:, :, 1, 1] = pred[:, :, 1, 1]                      # exact 0 degrees
    else:
        pred = torch.rand(b, 1, h, w, generator=gen) * 8 - 1
        gt = torch.rand(b, 1, h, w, generator=gen) * 10
        gt[torch.rand(b, 1, h, w, generator=gen) < 0.2] = 0
        gt[0] = 0
    return pred, gt


CASES = [
    (SegmentationScorer('semseg', 21), lambda p, g: reference_segmentation(p, g, 21), 'semseg'),
    (SaliencyScorer(), reference_saliency, 'sal'),
    (NormalsScorer(), reference_normals, 'normals'),
    (DepthScorer(), reference_depth, 'depth'),
]


@pytest.mark.parametrize('scorer,reference,task', CASES, ids=[c[2] for c in CASES])
@pytest.mark.parametrize('shape', [(4, 17, 23), (3, 64, 48)])
def test_batched_stats_equal_the_per_sample_reference(scorer, reference, task, shape):
    gen = torch.Generator().manual_seed(sum(shape) + len(task))
    pred, gt = _batch(gen, task, *shape)
    got = scorer.batch_stats(pred, gt)
    want = [reference(p, g) for p, g in zip(pred, gt)]
    assert len(got) == len(want)
    for g_, w_ in zip(got, want):
        assert_stats_equal(g_, w_)
    assert scorer.reduce(got) == pytest.approx(scorer.reduce(want), rel=REL, nan_ok=True)


def test_hand_cases_of_test_metrics_equal_the_reference():
    # the hand cases of tests/test_metrics.py, scored by both
    seg = SegmentationScorer('semseg', num_classes=3)
    for p, g in [([[0, 1, 1], [0, 0, 1]], [[0, 1, 255], [1, 0, 1]]), ([[0, 2]], [[0, 0]])]:
        p, g = torch.tensor(p), torch.tensor(g)
        assert_stats_equal(seg.sample_stats(p, g), reference_segmentation(p, g, 3))
    sal = SaliencyScorer()
    for p, g in [([[0.92, 0.47, 0.32, 0.10, 0.15]], [[1, 1, 0, 0, 1]]),
                 ([[0.10, 0.251, 0.401, 0.99]], [[0, 0, 0, 255]])]:
        p, g = torch.tensor(p), torch.tensor(g)
        assert_stats_equal(sal.sample_stats(p, g), reference_saliency(p, g))
    up = [0., 0., 1.]
    p = torch.tensor([[0, 0, 2], [3, 0, 0], [1, 0, math.sqrt(3)], [1, 0, 0]]).T.reshape(3, 1, -1)
    g = torch.tensor([up, up, up, [0, 0, 0]]).T.reshape(3, 1, -1)
    assert_stats_equal(NormalsScorer().sample_stats(p, g), reference_normals(p, g))
    p, g = torch.tensor([[[3.0, 7.0]]]), torch.tensor([[[1.0, 0.0]]])
    assert_stats_equal(DepthScorer().sample_stats(p, g), reference_depth(p, g))


def test_multitask_metric_batches_equal_the_per_sample_reference():
    gen = torch.Generator().manual_seed(7)
    tasks = {'semseg': 21, 'human_parts': 7, 'sal': None, 'normals': None}
    batch = {}
    for t, c in tasks.items():
        batch[t] = _batch(gen, 'semseg' if c else t, 5, 33, 29, classes=c or 21)
    samples = [{'pred': {t: batch[t][0][i] for t in tasks}, 'gt': {t: batch[t][1][i] for t in tasks}}
               for i in range(5)]
    metric = MultiTaskMetric(dataset_name='pascal_context')
    metric.process(None, samples[:2])
    metric.process(None, samples[2:])
    refs = {'semseg': lambda p, g: reference_segmentation(p, g, 21),
            'human_parts': lambda p, g: reference_segmentation(p, g, 7),
            'sal': reference_saliency, 'normals': reference_normals}
    want = [{t: refs[t](s['pred'][t], s['gt'][t]) for t in tasks} for s in samples]
    for got_entry, want_entry in zip(metric.results, want):
        for t in tasks:
            assert_stats_equal(got_entry[t], want_entry[t])
    got = metric.compute_metrics(metric.results)
    assert got == pytest.approx(score_samples(metric.scorers, want), rel=REL, nan_ok=True)


def test_samples_of_different_sizes_are_scored_apart():
    # original-resolution evaluation: a batch's samples need not share a shape
    gen = torch.Generator().manual_seed(8)
    a, b = _batch(gen, 'depth', 2, 5, 7), _batch(gen, 'depth', 1, 6, 4)
    samples = [{'pred': {'depth': p}, 'gt': {'depth': g}}
               for p, g in [(a[0][0], a[1][0]), (b[0][0], b[1][0]), (a[0][1], a[1][1])]]
    metric = MultiTaskMetric(tasks=['depth'])
    metric.process(None, samples)
    for entry, s in zip(metric.results, samples):
        assert_stats_equal(entry['depth'], reference_depth(s['pred']['depth'], s['gt']['depth']))


def test_bad_labels_raise_after_the_batch():
    seg = SegmentationScorer('semseg', num_classes=3)
    gt = torch.zeros(2, 2, 2, dtype=torch.long)
    gt[1, 0, 0] = 7
    with pytest.raises(ValueError, match='target labels .* 1 pixels of sample 1 '):
        seg.batch_stats(torch.zeros(2, 2, 2, dtype=torch.long), gt)
    pred = torch.zeros(2, 2, 2, dtype=torch.long)
    pred[0, 1, 1] = -1
    with pytest.raises(ValueError, match='prediction labels'):
        seg.batch_stats(pred, torch.zeros(2, 2, 2, dtype=torch.long))
    # an out-of-range prediction at an ignored pixel is not checked, as before
    gt = torch.full((2, 2, 2), 255)
    assert seg.batch_stats(pred, gt)[0]['union'].sum() == 0
    with pytest.raises(ValueError, match='0, 1 or 255'):
        SaliencyScorer().batch_stats(torch.rand(1, 2, 2), torch.tensor([[[0, 2], [1, 1]]]))


def test_to_host_is_one_exact_copy_of_mixed_dtypes():
    src = {'a': {'f': torch.tensor([[math.pi, -1e-300]], dtype=torch.float64),
                 'i': torch.tensor([2 ** 40, -3]), 'h': torch.tensor([[1, 2, 3]], dtype=torch.int32)},
           'b': {'e': torch.zeros(0, 4), 'b': torch.tensor([True, False])}}
    out = _to_host(src)
    for task, d in src.items():
        for name, t in d.items():
            np.testing.assert_array_equal(out[task][name], t.numpy())
            assert out[task][name].dtype == t.numpy().dtype


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_saliency_decides_p_above_threshold_exactly_in_every_dtype(dtype):
    # probabilities at each threshold's neighbours in ``dtype``: the comparison ``p > t`` must be
    # that of float64, where most thresholds (0.2, 0.3, ...) are not representable
    t = torch.tensor(SAL_THRESHOLDS, dtype=torch.float64)
    near = t.to(dtype)
    values = torch.cat([near, torch.nextafter(near, torch.tensor(0.0, dtype=dtype)),
                        torch.nextafter(near, torch.tensor(1.0, dtype=dtype))])
    pred = values.reshape(1, 1, -1)
    gt = (torch.arange(values.numel()) % 2).reshape(1, 1, -1)
    assert_stats_equal(SaliencyScorer().batch_stats(pred, gt)[0],
                       reference_saliency(pred[0].double(), gt[0]))


@pytest.mark.parametrize('scorer,reference,task', CASES, ids=[c[2] for c in CASES])
def test_cpu_pieces_add_up_to_the_whole_batch(scorer, reference, task, monkeypatch):
    # CPU scoring goes through pieces of rows; force many (uneven) pieces
    from mtlbench.evaluation import metrics
    monkeypatch.setattr(metrics, 'CPU_CHUNK_PIXELS', 3 * 11 * 2)    # 2 rows of 11 px x 3 images
    gen = torch.Generator().manual_seed(11)
    pred, gt = _batch(gen, task, 3, 9, 11)
    for got, p, g in zip(scorer.batch_stats(pred, gt), pred, gt):
        assert_stats_equal(got, reference(p, g))
