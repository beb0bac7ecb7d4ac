"""Reproducible, resumable data order and augmentation.

A resumed run must equal an uninterrupted one. Two things break that with a stock sampler:
the augmentation RNG state at the restart point (it lives in the main process or in the
workers, not in the checkpoint), and a restart in the middle of an epoch. So:

* :class:`ResumableSampler` draws the epoch's order from ``(seed, epoch)`` (as mmengine's
  ``DefaultSampler``), can start part-way through an epoch, and yields ``(index, sample_seed)``
  with ``sample_seed`` a function of ``(seed, epoch, index)`` only.
* :class:`SeededDataset` wraps any dataset and seeds numpy / ``random`` from that sample seed
  before loading, so a sample's augmentation is the same whichever worker or process loads it
  and whether or not the run was interrupted.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Optional, Sized, Tuple

import numpy as np
from mmengine.dataset import DefaultSampler
from torch.utils.data import Dataset

from mtlbench.registry import DATA_SAMPLERS, DATASETS

__all__ = ['ResumableSampler', 'SeededDataset', 'sample_seed']


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed determined by ``(seed, epoch, index)``."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


@DATA_SAMPLERS.register_module()
class ResumableSampler(DefaultSampler):
    """``DefaultSampler`` that yields ``(index, sample_seed)`` and can skip ahead.

    Args:
        dataset: the dataset.
        shuffle: shuffle each epoch (order from ``seed + epoch``).
        seed: base seed (mmengine passes the run's seed, synchronised across ranks).
        round_up: pad so that every rank gets the same number of samples.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: Optional[int] = None,
                 round_up: bool = True) -> None:
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)
        self._start = 0

    def set_start(self, num_samples: int) -> None:
        """Skip this rank's first ``num_samples`` samples of the next iteration (one epoch)."""
        self._start = int(num_samples)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(super().__iter__())
        start, self._start = self._start, 0
        for idx in indices[start:]:
            yield idx, sample_seed(self.seed, self.epoch, idx)

    def __len__(self) -> int:
        return self.num_samples


@DATASETS.register_module()
class SeededDataset(Dataset):
    """Wraps a dataset so each sample's augmentation depends only on its sample seed.

    Accepts plain integer keys too (then no reseeding happens), so evaluation and tools can
    use it like the wrapped dataset.

    Args:
        dataset: the dataset or its config.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (tuple, list)):
            idx, seed = key
            np.random.seed(seed)
            random.seed(seed)
            return self.dataset[idx]
        return self.dataset[key]

    def __getattr__(self, name: str) -> Any:
        if name == 'dataset':  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)
