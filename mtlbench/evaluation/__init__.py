"""Scoring (per-sample sufficient statistics, the mmengine ``MultiTaskMetric``) and Δm.

Importing this package registers ``MultiTaskMetric`` in ``mtlbench.registry.METRICS``.
"""
from mtlbench.evaluation.delta_m import (AGREEMENT_TOL, DeltaMResult, agrees_with_printed,
                                         compute_delta_m, delta_m, primary_values,
                                         relative_gain)
from mtlbench.evaluation.metrics import (NORMALS_WITHIN_DEG, SAL_THRESHOLDS, DepthScorer,
                                         MultiTaskMetric, NormalsScorer, SaliencyScorer,
                                         SegmentationScorer, Stats, TaskScorer, build_scorer,
                                         primary_metric, score_samples)

__all__ = [
    'AGREEMENT_TOL', 'DeltaMResult', 'agrees_with_printed', 'compute_delta_m', 'delta_m',
    'primary_values', 'relative_gain', 'NORMALS_WITHIN_DEG', 'SAL_THRESHOLDS', 'DepthScorer',
    'MultiTaskMetric', 'NormalsScorer', 'SaliencyScorer', 'SegmentationScorer', 'Stats',
    'TaskScorer', 'build_scorer', 'primary_metric', 'score_samples',
]
