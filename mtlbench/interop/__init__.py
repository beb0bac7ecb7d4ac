"""Checkpoints from and to other code bases, and loading a checkpoint for evaluation.

* :mod:`~mtlbench.interop.mtlora_reference`: the MTLoRA reference's checkpoint format
  (scale-lab/MTLoRA; DiTASK's too), imported into and exported from mtlbench's MTLoRA and
  DiTASK models.
* :mod:`~mtlbench.interop.tadformer_reference`: the TADFormer release's key layout (transcribed
  from its source text; no released checkpoint was at hand), imported and exported the same way.
* :mod:`~mtlbench.interop.checkpoints`: ``--eval-only``'s loader: recognises either format
  and refuses a checkpoint of another model with one line naming both.
"""
from mtlbench.interop.checkpoints import CheckpointMismatchError, describe_model, load_for_evaluation, read_checkpoint
from mtlbench.interop.mtlora_reference import (ReferenceCheckpointError, export_reference_checkpoint,
                                               import_reference_state, is_reference_checkpoint,
                                               load_reference_checkpoint, mtlbench_to_reference,
                                               reference_to_mtlbench)
from mtlbench.interop.tadformer_reference import (import_tadformer_state, is_tadformer_state, mtlbench_to_tadformer,
                                                  tadformer_to_mtlbench)

__all__ = ['CheckpointMismatchError', 'describe_model', 'load_for_evaluation', 'read_checkpoint',
           'ReferenceCheckpointError', 'export_reference_checkpoint', 'import_reference_state',
           'is_reference_checkpoint', 'load_reference_checkpoint', 'mtlbench_to_reference', 'reference_to_mtlbench',
           'import_tadformer_state', 'is_tadformer_state', 'mtlbench_to_tadformer', 'tadformer_to_mtlbench']
