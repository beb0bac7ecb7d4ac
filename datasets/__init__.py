"""Multi-task datasets of the benchmark: PASCAL-Context MT and NYUDv2 MT.

Importing this package registers the datasets (``DATASETS``) and the multi-task transforms
(``TRANSFORMS``) of :mod:`mtlbench.registry`. It also offers the synthetic-data writer used by
tests and smoke runs, and the verification of a dataset copy on disk.
"""
from .errors import DatasetError, DatasetNotFoundError
from .transforms import (MTIgnoreEmptyParts, MTNormalize, MTPackInputs, MTRandomFlip,
                         MTRandomScaleRotate, MTResize, build_pipeline)
from .base import MultiTaskDataset
from .pascal_context import PascalContextMT
from .nyud import NYUDv2MT
from .synth import default_synthetic_root, ensure_synthetic_dataset, write_synthetic_dataset
from .verify import VerifyReport, verify_dataset

__all__ = [
    'PascalContextMT', 'NYUDv2MT', 'MultiTaskDataset', 'DATASET_CLASSES', 'DatasetError',
    'DatasetNotFoundError', 'write_synthetic_dataset', 'ensure_synthetic_dataset',
    'default_synthetic_root', 'verify_dataset', 'VerifyReport', 'build_pipeline', 'MTRandomFlip',
    'MTRandomScaleRotate', 'MTResize', 'MTIgnoreEmptyParts', 'MTNormalize', 'MTPackInputs',
]

# Dataset name (as in ``mtlbench.tasks.DATASET_TASKS``) -> dataset class.
DATASET_CLASSES = {'pascal_context': PascalContextMT, 'nyudv2': NYUDv2MT}
