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

import os
import random
import signal
from typing import Any, Iterator, Optional, Sized, Tuple

import numpy as np
from mmengine.dataset import DefaultSampler
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn
from torch.utils.data import Dataset

from mtlbench.registry import DATA_SAMPLERS, DATASETS, FUNCTIONS

__all__ = ['ResumableSampler', 'SeededDataset', 'sample_seed', 'preemptible_worker_init', 'stop_data_workers']


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed determined by ``(seed, epoch, index)``."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


@FUNCTIONS.register_module()
def preemptible_worker_init(worker_id: int, num_workers: int, seed: int) -> None:
    """Data-loader worker start-up: ignore SIGTERM and SIGINT, then mmengine's worker seeding.

    Slurm, ``timeout`` and Ctrl-C signal the whole process group. A worker that died of the
    signal would fail the main process's next batch before it could save ``preempt.pth``; a
    worker that ignores it keeps serving until the main process, which handles the signal (see
    :class:`~mtlbench.engine.loops.ResumableEpochBasedTrainLoop`), saves and shuts it down.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    mmengine_worker_init_fn(worker_id, num_workers=num_workers, rank=int(os.environ.get('RANK', 0)), seed=seed)


def stop_data_workers() -> int:
    """Shut down every live data-loader worker pool of this process; returns how many.

    Workers ignore SIGTERM (:func:`preemptible_worker_init`), so multiprocessing's exit-time
    ``terminate()`` + ``join()`` would wait for them forever: a run stops its workers itself,
    however it ends. The pools are found through the garbage collector because mmengine's loops
    own the loaders and their (persistent or in-flight) iterators.
    """
    import gc

    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    stopped = 0
    for obj in gc.get_objects():
        cls = type(obj)  # not isinstance(): it reads __class__, which dead weak proxies and deprecated objects trip on
        if issubclass(cls, DataLoader) and getattr(obj, '_iterator', None) is not None:
            obj._iterator = None  # a persistent pool: the loader would otherwise reuse it
        elif issubclass(cls, _MultiProcessingDataLoaderIter) and not obj._shutdown:
            obj._shutdown_workers()
            stopped += 1
    return stopped


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
