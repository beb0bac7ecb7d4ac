"""Hand-computed checks of the per-task scorers and of ``MultiTaskMetric``."""
import math

import numpy as np
import pytest
import torch

from mtlbench.evaluation import (DepthScorer, MultiTaskMetric, NormalsScorer, SaliencyScorer,
                                 SegmentationScorer, build_scorer, primary_metric, score_samples)
from mtlbench.registry import METRICS
from mtlbench.tasks import TASKS

# --------------------------------------------------------------------------- semseg


def test_miou_hand_case_with_ignore_and_absent_class():
    # 3 classes; class 2 appears in neither GT nor prediction; one GT pixel is ignored.
    pred = torch.tensor([[0, 1, 1], [0, 0, 1]])
    gt = torch.tensor([[0, 1, 255], [1, 0, 1]])
    s = SegmentationScorer('semseg', num_classes=3)
    st = s.sample_stats(pred, gt)
    # valid pixels: (p0,g0) (p1,g1) (p0,g1) (p0,g0) (p1,g1); the ignored one is not counted.
    np.testing.assert_array_equal(st['intersect'], [2, 2, 0])
    np.testing.assert_array_equal(st['union'], [3, 3, 0])
    np.testing.assert_array_equal(st['pred_area'], [3, 2, 0])
    np.testing.assert_array_equal(st['label_area'], [2, 3, 0])
    m = s.reduce([st])
    assert m['mIoU'] == pytest.approx(100 * 2 / 3)       # class 2 excluded (not counted as 0)
    assert m['pixel_acc'] == pytest.approx(80.0)          # 4 of 5 valid pixels
    assert m['mAcc'] == pytest.approx(100 * (1 + 2 / 3) / 2)
    iou = s.class_iou([st])
    assert np.isnan(iou[2]) and iou[0] == pytest.approx(2 / 3)


def test_miou_class_only_in_prediction_counts_as_zero():
    s = SegmentationScorer('semseg', num_classes=3)
    m = s.reduce([s.sample_stats(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))])
    # class 0: I=1, U=2 -> 0.5; class 2: I=0, U=1 -> 0; class 1 absent -> excluded
    assert m['mIoU'] == pytest.approx(25.0)


def test_miou_is_dataset_level_not_image_mean():
    s = SegmentationScorer('semseg', num_classes=2)
    a = s.sample_stats(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 0]]))
    b = s.sample_stats(torch.tensor([[1]]), torch.tensor([[1]]))
    # totals: class0 I=3 U=4; class1 I=1 U=2
    assert s.reduce([a, b])['mIoU'] == pytest.approx(100 * (0.75 + 0.5) / 2)


def test_all_ignored_image_contributes_nothing_and_bad_labels_raise():
    s = SegmentationScorer('human_parts', num_classes=7)
    st = s.sample_stats(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 255))
    assert all(v.sum() == 0 for v in st.values())
    assert math.isnan(s.reduce([st])['mIoU'])
    with pytest.raises(ValueError):
        s.sample_stats(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[9]]))


# --------------------------------------------------------------------------- saliency
# Thresholds are linspace(0.2, 0.9, 15) = 0.2, 0.25, ..., 0.9. Probabilities avoid them.
SAL_A_GT = torch.tensor([[1, 1, 0, 0, 1]])
SAL_A_P = torch.tensor([[0.92, 0.47, 0.32, 0.10, 0.15]])
SAL_B_GT = torch.tensor([[0, 0, 0, 255]])
SAL_B_P = torch.tensor([[0.10, 0.25 + 1e-3, 0.40 + 1e-3, 0.99]])


def test_saliency_per_image_iou_precision_recall():
    s = SaliencyScorer()
    a = s.sample_stats(SAL_A_P, SAL_A_GT)
    # t in {.2,.25,.3}: tp2 fp1 fn1 | {.35,.4,.45}: tp2 fp0 fn1 | >= .5: tp1 fp0 fn2
    np.testing.assert_allclose(a['iou'], [.5] * 3 + [2 / 3] * 3 + [1 / 3] * 9)
    np.testing.assert_allclose(a['precision'], [2 / 3] * 3 + [1] * 12)
    np.testing.assert_allclose(a['recall'], [2 / 3] * 6 + [1 / 3] * 9)
    b = s.sample_stats(SAL_B_P, SAL_B_GT)
    # no salient GT: IoU 0 while something is predicted, 1.0 once both are empty (t >= .45);
    # precision and recall are 0 throughout; the 255 pixel (p=.99) is ignored.
    np.testing.assert_allclose(b['iou'], [0] * 5 + [1] * 10)
    np.testing.assert_allclose(b['precision'], 0)
    np.testing.assert_allclose(b['recall'], 0)


def test_saliency_dataset_miou_is_max_over_thresholds_and_maxf():
    s = SaliencyScorer()
    m = s.reduce([s.sample_stats(SAL_A_P, SAL_A_GT), s.sample_stats(SAL_B_P, SAL_B_GT)])
    # mean IoU per threshold: .25 x3, 1/3 (t=.35, .4), 5/6 (t=.45), 2/3 x9 -> max 5/6 at .45
    assert m['mIoU'] == pytest.approx(100 * 5 / 6)
    assert m['best_threshold'] == pytest.approx(0.45)
    # mean (P, R): (1/3, 1/3) for t <= .3 -> F 1/3; (1/2, 1/3) for .35 <= t <= .45 -> F 0.4;
    # (1/2, 1/6) for t >= .5 -> F 0.25
    assert m['maxF'] == pytest.approx(40.0)


def test_saliency_both_empty_is_one_and_all_ignored_image_excluded():
    s = SaliencyScorer()
    empty = s.sample_stats(torch.full((2, 2), 0.05), torch.zeros(2, 2, dtype=torch.long))
    np.testing.assert_allclose(empty['iou'], 1.0)
    ignored = s.sample_stats(torch.full((2, 2), 0.95), torch.full((2, 2), 255))
    assert int(ignored['n']) == 0
    assert s.reduce([empty, ignored])['mIoU'] == pytest.approx(100.0)


# --------------------------------------------------------------------------- normals


def _normals_case(vectors, gts):
    """[3, 1, N] prediction and GT from lists of 3-vectors."""
    p = torch.tensor(vectors, dtype=torch.float32).T.reshape(3, 1, -1)
    g = torch.tensor(gts, dtype=torch.float32).T.reshape(3, 1, -1)
    return p, g


def test_normals_mean_median_rmse_on_0_90_30_degrees():
    up = [0., 0., 1.]
    # angles 0, 90, 30 (unnormalised predictions), plus one invalid (zero-GT) pixel
    p, g = _normals_case([[0, 0, 2], [3, 0, 0], [1, 0, math.sqrt(3)], [1, 0, 0]],
                         [up, up, up, [0, 0, 0]])
    s = NormalsScorer()
    st = s.sample_stats(p, g)
    assert int(st['count']) == 3
    m = s.reduce([st])
    assert m['mean'] == pytest.approx(40.0, abs=1e-6)
    assert m['median'] == pytest.approx(30.0, abs=s.bin_deg / 2 + 1e-9)
    assert m['rmse'] == pytest.approx(math.sqrt((0 + 90 ** 2 + 30 ** 2) / 3), abs=1e-6)
    assert m['within_11.25'] == pytest.approx(100 / 3)
    assert m['within_22.5'] == pytest.approx(100 / 3)


def test_normals_within_thresholds():
    up = [0., 0., 1.]
    t20 = math.radians(20)
    p, g = _normals_case([[0, 0, 1], [math.sin(t20), 0, math.cos(t20)], [0, 1, 0]], [up] * 3)
    m = NormalsScorer().reduce([NormalsScorer().sample_stats(p, g)])
    assert m['within_11.25'] == pytest.approx(100 / 3)
    assert m['within_22.5'] == pytest.approx(200 / 3)
    assert m['within_30'] == pytest.approx(200 / 3)
    assert set(m) == {'mean', 'median', 'rmse', 'within_11.25', 'within_22.5', 'within_30'}


def test_normals_median_resolution_over_images():
    gen = torch.Generator().manual_seed(0)
    s = NormalsScorer()
    stats, angles = [], []
    for n in (101, 250):
        p = torch.randn(3, 1, n, generator=gen)
        g = torch.nn.functional.normalize(torch.randn(3, 1, n, generator=gen), dim=0)
        stats.append(s.sample_stats(p, g))
        angles.append(s.angles(p, g).numpy())
    a = np.concatenate(angles)
    lower_median = np.sort(a)[(a.size + 1) // 2 - 1]
    m = s.reduce(stats)
    assert abs(m['median'] - lower_median) <= s.bin_deg / 2 + 1e-9
    assert m['mean'] == pytest.approx(a.mean())


# --------------------------------------------------------------------------- depth


def test_depth_rmse_is_pixelwise_over_the_split():
    s = DepthScorer()
    # image 1: one valid pixel, error 2 (the 0 pixel is missing depth); image 2: 4 exact pixels
    a = s.sample_stats(torch.tensor([[[3.0, 7.0]]]), torch.tensor([[[1.0, 0.0]]]))
    b = s.sample_stats(torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 2.0))
    assert int(a['count']) == 1 and int(b['count']) == 4
    m = s.reduce([a, b])
    assert m['rmse'] == pytest.approx(math.sqrt(4 / 5))
    per_image_mean = (math.sqrt(4 / 1) + 0.0) / 2
    assert per_image_mean == pytest.approx(1.0) and m['rmse'] != pytest.approx(per_image_mean)
    assert m['abs_rel'] == pytest.approx(2 / 5)


# --------------------------------------------------------------------------- API / metric


def test_build_scorer_and_primary_metric():
    for t, spec in TASKS.items():
        sc = build_scorer(t, num_classes=5)
        assert sc.primary == primary_metric(t) == spec.primary_metric
        assert sc.higher_is_better == spec.higher_is_better
    with pytest.raises(ValueError):
        build_scorer('semseg')


def _pascal_sample(gen, h=6, w=5):
    pred = {
        'semseg': torch.randint(0, 21, (h, w), generator=gen),
        'human_parts': torch.randint(0, 7, (h, w), generator=gen),
        'sal': torch.rand(h, w, generator=gen),
        'normals': torch.nn.functional.normalize(torch.randn(3, h, w, generator=gen), dim=0),
    }
    gt = {
        'semseg': torch.randint(0, 21, (h, w), generator=gen),
        'human_parts': torch.randint(0, 7, (h, w), generator=gen),
        'sal': torch.randint(0, 2, (h, w), generator=gen),
        'normals': torch.nn.functional.normalize(torch.randn(3, h, w, generator=gen), dim=0),
    }
    gt['semseg'][0, 0] = 255
    gt['human_parts'][:2] = 255
    gt['sal'][-1, -1] = 255
    gt['normals'][:, 1, 1] = 0
    return {'pred': pred, 'gt': gt}


def test_multitask_metric_batches_equal_one_shot():
    gen = torch.Generator().manual_seed(1)
    samples = [_pascal_sample(gen) for _ in range(5)]
    metric = MultiTaskMetric(dataset_name='pascal_context')
    metric.process({}, samples[:3])
    metric.process({}, samples[3:])
    assert len(metric.results) == len(samples)
    got = metric.compute_metrics(metric.results)

    one_shot = {}
    for task, sc in metric.scorers.items():
        r = sc.score([s['pred'][task] for s in samples], [s['gt'][task] for s in samples])
        one_shot.update({f'{task}/{k}': v for k, v in r.items()})
    assert got == pytest.approx(one_shot)
    for key in ('semseg/mIoU', 'human_parts/mIoU', 'sal/mIoU', 'sal/maxF', 'normals/mean',
                'normals/median', 'normals/rmse', 'normals/within_11.25'):
        assert key in got and isinstance(got[key], float)
    # through mmengine's evaluate (non-distributed: collect_results truncates to size)
    assert metric.evaluate(len(samples)) == pytest.approx(one_shot)
    assert metric.results == []


def test_multitask_metric_ddp_style_collection_equals_one_shot():
    """Ranks get indices rank::2 (mmengine DefaultSampler), the last batch is padded by
    repeating samples; collect_results interleaves and truncates. One entry per sample keeps
    this exact."""
    gen = torch.Generator().manual_seed(2)
    samples = [_pascal_sample(gen) for _ in range(5)]
    padded = samples + samples[:1]
    ranks = []
    for r in range(2):
        m = MultiTaskMetric(dataset_name='pascal_context')
        m.process({}, padded[r::2])
        ranks.append(m.results)
    collected = [x for pair in zip(*ranks) for x in pair][:len(samples)]
    ref = MultiTaskMetric(dataset_name='pascal_context')
    ref.process({}, samples)
    assert ref.compute_metrics(collected) == pytest.approx(ref.compute_metrics(ref.results))


def test_multitask_metric_nyud_registry_and_devices():
    metric = METRICS.build(dict(type='MultiTaskMetric', dataset_name='nyudv2',
                                tasks=['semseg', 'depth'], num_classes={'semseg': 4}))
    assert metric.tasks == ('semseg', 'depth') and metric.scorers['semseg'].num_classes == 4
    sample = {
        'pred': {'semseg': torch.tensor([[0, 3]]), 'depth': torch.tensor([[[1.0, 2.0]]])},
        'gt': {'semseg': torch.tensor([[0, 3]]), 'depth': torch.tensor([[[1.0, 4.0]]])},
    }
    metric.process(None, [sample])
    out = metric.compute_metrics(metric.results)
    assert out['semseg/mIoU'] == pytest.approx(100.0)
    assert out['depth/rmse'] == pytest.approx(math.sqrt(2.0))
    assert set(out) == {'semseg/mIoU', 'semseg/mAcc', 'semseg/pixel_acc', 'depth/rmse',
                        'depth/abs_rel'}
    with pytest.raises(KeyError):
        metric.process(None, [{'pred': {}, 'gt': {}}])
    with pytest.raises(ValueError):
        MultiTaskMetric(tasks=['semseg'])              # no class count anywhere
    with pytest.raises(ValueError):
        MultiTaskMetric(dataset_name='nyudv2', tasks=['sal'])


def test_score_samples_flat_keys():
    s = {'depth': DepthScorer()}
    out = score_samples(s, [{'depth': s['depth'].sample_stats(torch.ones(1, 1, 1),
                                                               torch.ones(1, 1, 1))}])
    assert out == {'depth/rmse': 0.0, 'depth/abs_rel': 0.0}


def test_per_sample_stats_are_small_no_pixel_maps():
    import pickle
    gen = torch.Generator().manual_seed(3)
    m = MultiTaskMetric(dataset_name='pascal_context')
    m.process(None, [_pascal_sample(gen, 256, 256)])
    # one float map of this image alone would take 256 KiB; the normals histogram is capped at
    # 3600 bins x 6 bytes
    assert len(pickle.dumps(m.results[0])) < 32_000
