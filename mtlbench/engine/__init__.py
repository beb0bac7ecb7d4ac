"""Training engine: the Runner subclass, loops, hooks, samplers and checkpoint safety."""
from mtlbench.engine.checkpoint import (CheckpointError, find_resumable_checkpoint, register_safe_loader,
                                        safe_torch_load)
from mtlbench.engine.data import ResumableSampler, SeededDataset, sample_seed, stop_data_workers
from mtlbench.engine.hooks import IterSeedHook, MergeAdaptersHook
from mtlbench.engine.loops import PREEMPT_CHECKPOINT, AmpValLoop, Preempted, ResumableEpochBasedTrainLoop
from mtlbench.engine.runner import MTLRunner
from mtlbench.engine.state_guard import NonFiniteStateError, StateGuardHook

__all__ = ['CheckpointError', 'find_resumable_checkpoint', 'register_safe_loader', 'safe_torch_load',
           'ResumableSampler', 'SeededDataset', 'sample_seed', 'stop_data_workers', 'IterSeedHook', 'MergeAdaptersHook', 'PREEMPT_CHECKPOINT',
           'Preempted', 'ResumableEpochBasedTrainLoop', 'AmpValLoop', 'MTLRunner', 'NonFiniteStateError',
           'StateGuardHook']
