"""Per-task scoring from per-sample sufficient statistics, and the mmengine metric that uses it.

Why sufficient statistics: every metric of the benchmark (``metrics.md``) is a dataset-level
quantity, e.g. mIoU from class counts summed over the split, depth RMSE over all valid pixels of
the split. Under DDP, mmengine's ``collect_results`` gathers each rank's ``results`` list,
interleaves them and truncates to ``len(dataset)`` to drop the sampler's padding; that is only
correct when each sample contributes exactly ONE entry. So each sample is reduced on the spot to a
small, additive summary (class counts, per-threshold IoU/P/R, angle sums and a histogram, squared
error sums) and no per-pixel map is kept or sent across ranks. ``reduce`` turns the summaries of a
split into metrics.

Where: the statistics are computed where the predictions are (the GPU during training), a whole
batch at a time, and only the small per-sample summaries cross to the host, in ONE transfer per
batch (``_to_host``). Each scorer splits into ``device_stats`` (batched torch ops on the
predictions' device: ``bincount`` class / threshold / angle-bin counts in int64, sums in float64)
and ``host_stats`` (the summaries of each sample as numpy, the format ``reduce`` reads). Scoring a
448x448 PASCAL sample per pixel on the CPU in float64, as earlier versions did, cost as much as
the model's inference of it. ``torch.bincount`` on CUDA reads its input's min / max on the host,
a few small syncs per batch; the transfer that follows needs one anyway.

The scorers are plain Python (``TaskScorer.batch_stats`` / ``sample_stats`` / ``reduce``) and
usable without mmengine; ``MultiTaskMetric`` is the thin mmengine wrapper.

Prediction and target formats are those of ``mtlbench.tasks`` (one sample, no batch dim).

Not in ``metrics.md``; chosen here:

- semseg / human_parts: classes absent from both GT and prediction over the whole split have
  IoU 0/0 = NaN and are left out of the mean (NaN-mean, as mmseg does). The reference
  implementation of the field divides by ``max(union, eps)`` and so counts such a class as 0; on
  a full split every class occurs, so the two agree there. Labels other than ``0..C-1`` and 255
  raise.
- sal: a pixel is predicted salient when ``prob > threshold`` (strict). Per image, precision is 0
  when nothing is predicted salient and recall is 0 when the GT has no salient pixel (the usual
  ``tp / (tp + fp + eps)`` convention); IoU is 1.0 when both are empty. GT 255 pixels are
  ignored, and an image whose pixels are all ignored is left out of the image mean. The
  thresholds apply to the probability the model outputs: the sigmoid is applied exactly once, in
  ``mtlbench.losses.postprocess`` (the reference's "Beta maxF" meter applies a second sigmoid to
  probabilities; that defect is not reproduced, and maxF here is the plain F1 of metrics.md).
- normals: angles are computed in float64. A zero predicted vector is scored as 90 degrees.
  "within" counts use a strict ``angle < t``. The median comes from a histogram (see
  ``NormalsScorer``).
- depth: no clamping of predictions; ``abs_rel`` is pixel-wise over the split like ``rmse``.
"""
from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmseg.evaluation import IoUMetric

from mtlbench.registry import METRICS
from mtlbench.tasks import DATASET_TASKS, IGNORE_INDEX, TASKS, check_tasks

__all__ = [
    'Stats', 'TaskScorer', 'SegmentationScorer', 'SaliencyScorer', 'NormalsScorer',
    'DepthScorer', 'SAL_THRESHOLDS', 'NORMALS_WITHIN_DEG', 'build_scorer', 'primary_metric',
    'score_samples', 'MultiTaskMetric',
]

#: One sample's sufficient statistics: metric-specific arrays and scalars.
Stats = Dict[str, np.ndarray]

#: Saliency thresholds on the probability (metrics.md).
SAL_THRESHOLDS: np.ndarray = np.linspace(0.2, 0.9, 15)
#: Angle thresholds in degrees for the normals "% within" metrics.
NORMALS_WITHIN_DEG: Tuple[float, ...] = (11.25, 22.5, 30.0)


def primary_metric(task: str) -> str:
    """Name of the metric that tables print and Δm uses for ``task`` (e.g. ``'mIoU'``).

    Args:
        task: a key of ``mtlbench.tasks.TASKS``.

    Returns:
        The metric key, as returned by the task's scorer ``reduce``.
    """
    if task not in TASKS:
        raise KeyError(f'unknown task {task!r}; valid: {sorted(TASKS)}')
    return TASKS[task].primary_metric


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _match_batch_shapes(pred: torch.Tensor, gt: torch.Tensor, task: str
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``pred`` and ``gt`` (``[B, ...]``) with equal shapes, dropping singleton sample
    dims if that suffices (the batch dim is kept)."""
    if pred.shape == gt.shape:
        return pred, gt
    ps = [d for d in pred.shape[1:] if d != 1]
    gs = [d for d in gt.shape[1:] if d != 1]
    if pred.shape[0] == gt.shape[0] and ps == gs:
        return pred.reshape(pred.shape[0], *ps), gt.reshape(gt.shape[0], *gs)
    raise ValueError(f'{task}: prediction shape {tuple(pred.shape[1:])} does not match target '
                     f'shape {tuple(gt.shape[1:])}')


def _bincount(index: torch.Tensor, size: int) -> torch.Tensor:
    """int64 counts of ``index`` values ``0..size-1`` (``index`` must lie in that range)."""
    return torch.bincount(index.reshape(-1), minlength=size)[:size]


#: Pixels per piece when scoring on the CPU (see ``_scored_on_device``).
CPU_CHUNK_PIXELS = 1 << 16


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Score with one intra-op thread on the CPU: on ops this small (a few hundred thousand
    elements) thread barriers cost more than they save, up to 20x on a loaded 2-core machine
    (measured). The previous setting is restored; switching costs a few ms, once per batch."""
    threads = torch.get_num_threads()
    if device.type != 'cpu' or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _scored_on_device(scorer: 'TaskScorer', pred: torch.Tensor, gt: torch.Tensor
                      ) -> Dict[str, torch.Tensor]:
    """``scorer.device_stats`` of a batch; on the CPU in pieces of rows.

    Every ``device_stats`` output is a sum over pixels, so the pieces' outputs add up to the
    batch's. On the CPU, pieces of ``CPU_CHUNK_PIXELS`` keep the float64 temporaries in cache
    (2-3x faster at 448x448, measured); on an accelerator the batch is one piece.
    """
    if pred.device.type != 'cpu':
        return scorer.device_stats(pred, gt)
    rows = max(1, CPU_CHUNK_PIXELS // max(1, pred.shape[0] * pred.shape[-1]))
    out: Dict[str, torch.Tensor] = {}
    for start in range(0, max(1, pred.shape[-2]), rows):
        part = scorer.device_stats(pred[..., start:start + rows, :], gt[..., start:start + rows, :])
        out = part if not out else {k: out[k] + v for k, v in part.items()}
    return out


def _to_host(tensors: Mapping[str, Mapping[str, torch.Tensor]]
             ) -> Dict[str, Dict[str, np.ndarray]]:
    """Copy nested dicts of small device tensors to numpy with ONE device-to-host transfer.

    The tensors are reinterpreted as bytes (exact for every dtype), concatenated, copied once and
    cut apart again on the host.
    """
    flat = [(task, name, t.detach().contiguous())
            for task, d in tensors.items() for name, t in d.items()]
    if not flat:
        return {}
    raw = torch.cat([t.reshape(-1).view(torch.uint8) for _, _, t in flat]).cpu().numpy()
    out: Dict[str, Dict[str, np.ndarray]] = {task: {} for task in tensors}
    offset = 0
    for task, name, t in flat:
        dtype = np.dtype(str(t.dtype).replace('torch.', ''))
        nbytes = t.numel() * dtype.itemsize
        out[task][name] = raw[offset:offset + nbytes].view(dtype).reshape(tuple(t.shape))
        offset += nbytes
    return out


class TaskScorer(ABC):
    """Scores one task from per-sample sufficient statistics.

    Subclasses implement ``device_stats`` (a batch -> small per-sample tensors on the
    predictions' device, each a sum over pixels), ``host_stats`` (those tensors as numpy -> one
    ``Stats`` per sample: a small dict of arrays, additive over samples or otherwise mergeable;
    raises on bad labels) and ``reduce`` (a split's stats -> metrics).

    Args:
        task: task key; its primary metric and direction come from ``mtlbench.tasks.TASKS``.
    """

    def __init__(self, task: str) -> None:
        self.task = task

    @property
    def primary(self) -> str:
        """Key of the primary metric in ``reduce``'s output."""
        return primary_metric(self.task)

    @property
    def higher_is_better(self) -> bool:
        """Direction of the primary metric."""
        return TASKS[self.task].higher_is_better

    @abstractmethod
    def device_stats(self, pred: torch.Tensor, gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-sample summaries of a batch, computed on the predictions' device.

        Args:
            pred: ``[B, ...]`` predictions in the format of ``mtlbench.tasks``.
            gt: ``[B, ...]`` targets in the format of ``mtlbench.tasks``, on the same device.

        Returns:
            name -> tensor with leading dim ``B`` (no per-pixel data).
        """

    @abstractmethod
    def host_stats(self, arrays: Mapping[str, np.ndarray]) -> List[Stats]:
        """``device_stats`` output, as numpy, -> one ``Stats`` per sample; raises on bad labels."""

    def batch_stats(self, preds: torch.Tensor, gts: torch.Tensor) -> List[Stats]:
        """Sufficient statistics of each sample of a batch (``gts`` moved to ``preds``' device).

        Args:
            preds: ``[B, ...]`` predictions in the format of ``mtlbench.tasks``.
            gts: ``[B, ...]`` targets in the format of ``mtlbench.tasks``.

        Returns:
            ``B`` dicts of numpy arrays / scalars (small, picklable, no per-pixel data).
        """
        gts = gts.to(preds.device, non_blocking=True)
        with _one_thread_on_cpu(preds.device):
            return self.host_stats(_to_host({'x': _scored_on_device(self, preds, gts)})['x'])

    def sample_stats(self, pred: torch.Tensor, gt: torch.Tensor) -> Stats:
        """Sufficient statistics of one sample (``batch_stats`` of a batch of one).

        Args:
            pred: the sample's prediction, in the format of ``mtlbench.tasks``.
            gt: the sample's target, in the format of ``mtlbench.tasks``.

        Returns:
            A dict of numpy arrays / scalars (small, picklable, no per-pixel data).
        """
        return self.batch_stats(torch.as_tensor(pred)[None], torch.as_tensor(gt)[None])[0]

    @abstractmethod
    def reduce(self, stats: Sequence[Stats]) -> Dict[str, float]:
        """Dataset-level metrics from the stats of every sample of a split.

        Args:
            stats: one ``sample_stats`` output per sample.

        Returns:
            Metric name -> value (plain floats; NaN where undefined, e.g. no valid pixel).
        """

    def score(self, preds: Sequence[torch.Tensor], gts: Sequence[torch.Tensor]
              ) -> Dict[str, float]:
        """One-shot scoring of paired per-sample predictions and targets."""
        if len(preds) != len(gts):
            raise ValueError(f'{len(preds)} predictions but {len(gts)} targets')
        return self.reduce([self.sample_stats(p, g) for p, g in zip(preds, gts)])


class SegmentationScorer(TaskScorer):
    """mIoU, mean class accuracy and pixel accuracy for semseg / human_parts.

    Per sample: class histograms of intersection, union, prediction and label over the
    non-ignored pixels (mmseg's ``IoUMetric.intersect_and_union``). Over the split: the
    histograms are summed, IoU_c = I_c / U_c, and ``mIoU`` is the NaN-mean over classes (a class
    absent from both GT and prediction on the whole split is excluded), x100.

    Args:
        task: ``'semseg'`` or ``'human_parts'``.
        num_classes: number of classes ``C``; labels are ``0..C-1`` or ``ignore_index``.
        ignore_index: label of ignored pixels. Defaults to 255.

    Returned keys: ``mIoU``, ``mAcc`` (NaN-mean of per-class recall), ``pixel_acc`` (all x100).
    """

    def __init__(self, task: str, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(task)
        if num_classes < 1:
            raise ValueError(f'{task}: num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index

    def device_stats(self, pred: torch.Tensor, gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Class histograms of each sample, from one ``bincount`` of (sample, label, prediction).

        Labels and predictions are clamped to ``[-1, C]`` first, so the out-of-range ones land in
        the border rows / columns of a ``(C + 2) x (C + 2)`` confusion matrix and are counted
        there for the range check instead of being searched for separately.

        Args:
            pred: int ``[B, H, W]`` class ids.
            gt: int ``[B, H, W]`` labels, ``ignore_index`` for ignored pixels.

        Returns:
            ``areas``: int64 ``[B, 3, C]`` (intersection, prediction, label areas over the
            non-ignored pixels); ``out_of_range``: int64 ``[B, 2]``, non-ignored pixels whose
            label / prediction is not a class.
        """
        pred, gt = _match_batch_shapes(pred, gt, self.task)
        B, C = pred.shape[0], self.num_classes
        E = C + 2                                                  # -1, 0..C-1, C
        pred, gt = pred.reshape(B, -1).long(), gt.reshape(B, -1).long()
        base = torch.arange(B, device=pred.device).unsqueeze(1) * (E * E) + (E + 1)
        cell = gt.clamp(-1, C) * E + pred.clamp(-1, C) + base
        cell = torch.where(gt != self.ignore_index, cell, B * E * E)   # B*E*E: dropped
        confusion = _bincount(cell, B * E * E + 1)[:-1].reshape(B, E, E)   # [b, label, pred]
        inner = confusion[:, 1:-1, 1:-1]
        areas = torch.stack([inner.diagonal(dim1=1, dim2=2), inner.sum(1), inner.sum(2)], dim=1)
        rows, cols = confusion.sum(2), confusion.sum(1)
        out_of_range = torch.stack([rows[:, 0] + rows[:, -1], cols[:, 0] + cols[:, -1]], dim=1)
        return {'areas': areas, 'out_of_range': out_of_range}

    def host_stats(self, arrays: Mapping[str, np.ndarray]) -> List[Stats]:
        """Per sample: ``intersect``, ``union``, ``pred_area``, ``label_area``: int64 ``[C]``."""
        for i, bad in enumerate(arrays['out_of_range']):
            for name, n in zip(('target', 'prediction'), bad):
                if n:
                    raise ValueError(f'{self.task}: {name} labels must lie in [0, '
                                     f'{self.num_classes - 1}] or be {self.ignore_index}; '
                                     f'{int(n)} pixels of sample {i} of the batch are not')
        out = []
        for areas in arrays['areas']:
            inter, pred_area, label_area = (a.astype(np.int64) for a in areas)
            out.append({'intersect': inter, 'union': pred_area + label_area - inter,
                        'pred_area': pred_area, 'label_area': label_area})
        return out

    def _totals(self, stats: Sequence[Stats]) -> List[torch.Tensor]:
        keys = ('intersect', 'union', 'pred_area', 'label_area')
        if not stats:
            return [torch.zeros(self.num_classes, dtype=torch.float64) for _ in keys]
        return [torch.from_numpy(np.sum([s[k] for s in stats], axis=0).astype(np.float64))
                for k in keys]

    def class_iou(self, stats: Sequence[Stats]) -> np.ndarray:
        """Per-class IoU over the split, float64 ``[C]`` in [0, 1]; NaN for absent classes."""
        inter, union, _, _ = self._totals(stats)
        with np.errstate(divide='ignore', invalid='ignore'):
            return (inter / union).numpy()

    def reduce(self, stats: Sequence[Stats]) -> Dict[str, float]:
        """See ``TaskScorer.reduce``. Keys: ``mIoU``, ``mAcc``, ``pixel_acc`` (x100)."""
        totals = self._totals(stats)
        with np.errstate(divide='ignore', invalid='ignore'):
            m = IoUMetric.total_area_to_metrics(*totals, metrics=['mIoU'])
        return {
            'mIoU': 100.0 * _nanmean(np.asarray(m['IoU'], dtype=np.float64)),
            'mAcc': 100.0 * _nanmean(np.asarray(m['Acc'], dtype=np.float64)),
            'pixel_acc': 100.0 * float(m['aAcc']),
        }


class SaliencyScorer(TaskScorer):
    """Threshold-swept IoU and maxF for saliency (metrics.md).

    Per sample and threshold ``t`` (pixel salient when ``prob > t``, GT 255 ignored): IoU
    (1.0 when prediction and GT are both empty), precision and recall (0 when their denominator
    is 0). Over the split: mean over images per threshold; ``mIoU`` = max over thresholds of the
    mean IoU; ``maxF`` = max over thresholds of ``2PR / (P + R)`` with P, R the image-averaged
    precision and recall (0 where ``P + R = 0``). Both x100.

    Args:
        task: task key. Defaults to ``'sal'``.
        thresholds: probability thresholds. Defaults to ``linspace(0.2, 0.9, 15)``.
        ignore_index: GT label of ignored pixels. Defaults to 255.

    Returned keys: ``mIoU``, ``maxF``, ``best_threshold`` (the lowest threshold of ``mIoU``).
    """

    def __init__(self, task: str = 'sal', thresholds: Optional[Sequence[float]] = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__(task)
        self.thresholds = np.asarray(SAL_THRESHOLDS if thresholds is None else thresholds,
                                     dtype=np.float64)
        self.ignore_index = ignore_index

    def device_stats(self, pred: torch.Tensor, gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-threshold TP / FP / FN of each image, from one ``bincount``.

        A pixel of probability ``p`` is salient at the ``k`` lowest thresholds, ``k`` = the number
        of thresholds strictly below ``p``; counting pixels by (image, label, ``k``) and summing
        the counts from the top gives every threshold at once. Probabilities that are not
        float64 are compared in float32 (exact for float16 / bfloat16 / float32) against each
        threshold rounded DOWN to float32, which decides ``p > t`` exactly as float64 does.

        Args:
            pred: float ``[B, H, W]`` salient-class probabilities in [0, 1].
            gt: int ``[B, H, W]`` in {0, 1}, ``ignore_index`` for ignored pixels.

        Returns:
            ``counts``: int64 ``[B, 3, T]`` (TP, FP, FN per threshold); ``n_valid``, ``n_bad``:
            int64 ``[B]`` non-ignored pixels and those with a label other than 0 / 1.
        """
        pred, gt = _match_batch_shapes(pred, gt, self.task)
        B, T = pred.shape[0], len(self.thresholds)
        p = pred.reshape(B, -1)
        thresholds = self.thresholds
        if p.dtype != torch.float64:
            p = p.float()
            t32 = thresholds.astype(np.float32)
            thresholds = np.where(t32 > thresholds, np.nextafter(t32, np.float32(-np.inf)), t32)
        k = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)   # T < 256
        for t in thresholds.tolist():
            k += p > t                                                # NaN > t is False
        g = gt.reshape(B, -1).long()
        label = g.clamp(-1, 2) + 1                                # 0: < 0, 1: 0, 2: 1, 3: > 1
        base = torch.arange(B, device=p.device).unsqueeze(1) * (4 * (T + 1))
        cell = torch.where(g != self.ignore_index, label * (T + 1) + k + base, B * 4 * (T + 1))
        hist = _bincount(cell, B * 4 * (T + 1) + 1)[:-1].reshape(B, 4, T + 1)
        salient_at = hist.flip(-1).cumsum(-1).flip(-1)[..., 1:]    # [B, label, T]: p > t
        tp, fp = salient_at[:, 2], salient_at[:, 1]
        fn = hist[:, 2].sum(-1, keepdim=True) - tp
        return {'counts': torch.stack([tp, fp, fn], dim=1), 'n_valid': hist.sum((1, 2)),
                'n_bad': hist[:, 0].sum(-1) + hist[:, 3].sum(-1)}

    def host_stats(self, arrays: Mapping[str, np.ndarray]) -> List[Stats]:
        """Per image: ``iou``, ``precision``, ``recall``: float64 ``[T]``; ``n``: 1, or 0 when
        every pixel is ignored (then the arrays are zeros and the image does not count)."""
        if arrays['n_bad'].any():
            raise ValueError(f'{self.task}: target labels must be 0, 1 or {self.ignore_index}')
        out = []
        for counts, n_valid in zip(arrays['counts'], arrays['n_valid']):
            if n_valid == 0:
                zeros = np.zeros(len(self.thresholds))
                out.append({'iou': zeros, 'precision': zeros.copy(), 'recall': zeros.copy(),
                            'n': np.int64(0)})
                continue
            tp, fp, fn = counts.astype(np.float64)
            union = tp + fp + fn
            with np.errstate(divide='ignore', invalid='ignore'):
                iou = np.where(union > 0, tp / union, 1.0)
                precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
                recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            out.append({'iou': iou, 'precision': precision, 'recall': recall, 'n': np.int64(1)})
        return out

    def curves(self, stats: Sequence[Stats]) -> Dict[str, np.ndarray]:
        """Image-averaged ``iou``, ``precision``, ``recall`` and ``f`` per threshold, ``[T]``."""
        n = int(sum(int(s['n']) for s in stats))
        if n == 0:
            nan = np.full(len(self.thresholds), np.nan)
            return {'iou': nan, 'precision': nan, 'recall': nan, 'f': nan}
        out = {k: np.sum([s[k] for s in stats], axis=0) / n
               for k in ('iou', 'precision', 'recall')}
        p, r = out['precision'], out['recall']
        with np.errstate(divide='ignore', invalid='ignore'):
            out['f'] = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        return out

    def reduce(self, stats: Sequence[Stats]) -> Dict[str, float]:
        """See ``TaskScorer.reduce``. Keys: ``mIoU``, ``maxF`` (x100), ``best_threshold``."""
        c = self.curves(stats)
        if np.isnan(c['iou']).all():
            return {'mIoU': math.nan, 'maxF': math.nan, 'best_threshold': math.nan}
        # lowest threshold attaining the max (ties up to float rounding of the image sums)
        best = int(np.flatnonzero(c['iou'] >= np.max(c['iou']) - 1e-12)[0])
        return {
            'mIoU': 100.0 * float(c['iou'][best]),
            'maxF': 100.0 * float(np.max(c['f'])),
            'best_threshold': float(self.thresholds[best]),
        }


class NormalsScorer(TaskScorer):
    """Angular error of surface normals, pixel-wise over the split.

    Per pixel with a valid GT (not the zero vector): the angle in degrees between the
    L2-normalised prediction and the L2-normalised GT (``acos`` of the clamped dot product, in
    float64). Per sample: sum, sum of squares, count, counts below 11.25 / 22.5 / 30 degrees,
    and a histogram of angles with ``bin_deg``-wide bins over [0, 180] (stored sparsely).

    NOTE: the tables' "rmse" column for normals is the MEAN angle, returned here as ``mean``
    (the primary metric). ``rmse`` here is the true root-mean-square angle.

    Median resolution: ``median`` is the centre of the histogram bin holding the
    ``ceil(n/2)``-th smallest angle (the lower median), so it is within ``bin_deg / 2`` of it
    (0.025 degrees by default). On a split of millions of pixels the lower median and the mean of
    the two middle angles coincide far below that resolution.

    Args:
        task: task key. Defaults to ``'normals'``.
        bin_deg: histogram bin width in degrees for the median; at most 0.1. Defaults to 0.05.

    Returned keys: ``mean``, ``median``, ``rmse`` (degrees), ``within_11.25``,
    ``within_22.5``, ``within_30`` (% of valid pixels with angle strictly below the threshold).
    """

    def __init__(self, task: str = 'normals', bin_deg: float = 0.05) -> None:
        super().__init__(task)
        if not 180.0 / 65536 < bin_deg <= 0.1:
            raise ValueError(f'bin_deg must be in (180/65536, 0.1], got {bin_deg}')
        self.bin_deg = float(bin_deg)
        self.num_bins = int(math.ceil(180.0 / self.bin_deg))     # fits the uint16 bin index

    def angles(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Angles in degrees at the valid pixels of one sample.

        Args:
            pred: float ``[3, H, W]`` predicted normals (normalised here again).
            gt: float ``[3, H, W]`` GT normals; the zero vector marks invalid pixels.

        Returns:
            float64 ``[N]``, ``N`` = number of valid pixels.
        """
        ang, valid = self._angle_map(pred[None], gt[None])
        return ang[valid]

    def _angle_map(self, pred: torch.Tensor, gt: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """float64 angles ``[B, H*W]`` in degrees and the valid-pixel mask, of ``[B, 3, H, W]``.

        ``cos = p.g / (max(|p|, eps) max(|g|, eps))`` channel by channel (``F.normalize``'s eps;
        a norm over the channel dim of a ``[B, 3, H, W]`` tensor is many times slower on CPU);
        it rounds differently from normalising first, in the last bits.
        """
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f'{self.task}: expected prediction and target of shape [3, H, W]; '
                             f'got {tuple(pred.shape[1:])} and {tuple(gt.shape[1:])}')
        B = pred.shape[0]
        p0, p1, p2 = pred.reshape(B, 3, -1).double().unbind(1)
        g0, g1, g2 = gt.reshape(B, 3, -1).double().unbind(1)
        g_sq = g0 * g0 + g1 * g1 + g2 * g2
        valid = g_sq > 0                                   # GT is not the zero vector
        norms = (p0 * p0 + p1 * p1 + p2 * p2).sqrt_().clamp_min_(1e-12)
        norms *= g_sq.sqrt_().clamp_min_(1e-12)
        cos = (p0 * g0 + p1 * g1 + p2 * g2).div_(norms).clamp_(-1.0, 1.0)
        return cos.acos_().rad2deg_(), valid

    def device_stats(self, pred: torch.Tensor, gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Angle sums, threshold counts and the angle histogram of each sample.

        Args:
            pred: float ``[B, 3, H, W]``.
            gt: float ``[B, 3, H, W]``.

        Returns:
            ``sums``: float64 ``[B, 2]`` (sum, sum of squares); ``counts``: int64 ``[B, 1 +
            len(NORMALS_WITHIN_DEG)]`` (valid pixels, pixels below each threshold); ``hist``:
            int32 ``[B, num_bins]``.
        """
        ang, valid = self._angle_map(pred, gt)
        B, N = ang.shape
        kept = torch.where(valid, ang, 0.0)                # invalid pixels: 0 degrees ...
        n_valid = valid.sum(1)
        n_invalid = N - n_valid                            # ... so each "within" counts them
        counts = [n_valid] + [(kept < t).sum(1) - n_invalid for t in NORMALS_WITHIN_DEG]
        bins = (kept / self.bin_deg).long().clamp_(max=self.num_bins - 1)
        sample = torch.arange(B, device=ang.device).unsqueeze(1)
        cell = torch.where(valid, bins + sample * self.num_bins, B * self.num_bins)
        hist = _bincount(cell, B * self.num_bins + 1)[:-1].reshape(B, self.num_bins)
        return {'sums': torch.stack([kept.sum(1), kept.square().sum(1)], dim=1),
                'counts': torch.stack(counts, dim=1), 'hist': hist.int()}

    def host_stats(self, arrays: Mapping[str, np.ndarray]) -> List[Stats]:
        """Per sample: ``sum``, ``sum_sq`` (float64), ``count`` (int64), ``within`` (int64
        ``[len(NORMALS_WITHIN_DEG)]``), ``hist_idx`` (uint16 ``[K]`` indices of the non-empty
        bins) and ``hist_cnt`` (int32 ``[K]`` their counts): at most 6 bytes per occupied bin,
        whatever the image size."""
        out = []
        for sums, counts, hist in zip(arrays['sums'], arrays['counts'], arrays['hist']):
            idx = np.flatnonzero(hist)
            out.append({
                'sum': np.float64(sums[0]),
                'sum_sq': np.float64(sums[1]),
                'count': np.int64(counts[0]),
                'within': counts[1:].astype(np.int64),
                'hist_idx': idx.astype(np.uint16),
                'hist_cnt': hist[idx].astype(np.int32),
            })
        return out

    def reduce(self, stats: Sequence[Stats]) -> Dict[str, float]:
        """See ``TaskScorer.reduce``. Keys: ``mean``, ``median``, ``rmse``, ``within_*``."""
        count = int(sum(int(s['count']) for s in stats))
        keys = ['within_' + f'{t:g}' for t in NORMALS_WITHIN_DEG]
        if count == 0:
            return dict({'mean': math.nan, 'median': math.nan, 'rmse': math.nan},
                        **{k: math.nan for k in keys})
        total = float(sum(float(s['sum']) for s in stats))
        total_sq = float(sum(float(s['sum_sq']) for s in stats))
        within = np.sum([s['within'] for s in stats], axis=0)
        hist = np.zeros(self.num_bins, dtype=np.int64)
        for s in stats:
            np.add.at(hist, s['hist_idx'].astype(np.int64), s['hist_cnt'].astype(np.int64))
        lower_median_rank = (count + 1) // 2             # 1-based rank of the lower median
        b = int(np.searchsorted(np.cumsum(hist), lower_median_rank, side='left'))
        out = {
            'mean': total / count,
            'median': (b + 0.5) * self.bin_deg,
            'rmse': math.sqrt(total_sq / count),
        }
        out.update({k: 100.0 * float(w) / count for k, w in zip(keys, within)})
        return out


class DepthScorer(TaskScorer):
    """Depth RMSE and absolute relative error, pixel-wise over the split.

    Valid pixels: GT > 0 (and finite). ``rmse = sqrt(sum of squared errors / number of valid
    pixels)`` over the whole split, NOT the mean of per-image RMSEs (mmseg's ``DepthMetric``
    does the latter). ``abs_rel`` = mean over the split's valid pixels of ``|pred - gt| / gt``.
    Predictions are scored as they are (no clamping).

    Args:
        task: task key. Defaults to ``'depth'``.

    Returned keys: ``rmse`` (metres), ``abs_rel``.
    """

    def __init__(self, task: str = 'depth') -> None:
        super().__init__(task)

    def device_stats(self, pred: torch.Tensor, gt: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Error sums of each sample.

        Args:
            pred: float ``[B, 1, H, W]`` depth in metres.
            gt: float ``[B, 1, H, W]``; 0 marks missing depth.

        Returns:
            ``sums``: float64 ``[B, 2]`` (squared errors, relative absolute errors);
            ``count``: int64 ``[B]`` valid pixels.
        """
        pred, gt = _match_batch_shapes(pred, gt, self.task)
        B = pred.shape[0]
        g = gt.reshape(B, -1).double()
        valid = (g > 0) & torch.isfinite(g)
        err = torch.where(valid, pred.reshape(B, -1).double() - g, 0.0)
        rel = torch.where(valid, err.abs() / torch.where(valid, g, 1.0), 0.0)
        return {'sums': torch.stack([err.square().sum(1), rel.sum(1)], dim=1),
                'count': valid.sum(1)}

    def host_stats(self, arrays: Mapping[str, np.ndarray]) -> List[Stats]:
        """Per sample: ``sse``, ``abs_rel_sum`` (float64) and ``count`` (int64)."""
        return [{'sse': np.float64(sums[0]), 'abs_rel_sum': np.float64(sums[1]),
                 'count': np.int64(count)}
                for sums, count in zip(arrays['sums'], arrays['count'])]

    def reduce(self, stats: Sequence[Stats]) -> Dict[str, float]:
        """See ``TaskScorer.reduce``. Keys: ``rmse``, ``abs_rel``."""
        count = int(sum(int(s['count']) for s in stats))
        if count == 0:
            return {'rmse': math.nan, 'abs_rel': math.nan}
        sse = float(sum(float(s['sse']) for s in stats))
        rel = float(sum(float(s['abs_rel_sum']) for s in stats))
        return {'rmse': math.sqrt(sse / count), 'abs_rel': rel / count}


def build_scorer(task: str, num_classes: Optional[int] = None, **kwargs: Any) -> TaskScorer:
    """Build the scorer of ``task`` from its ``TaskSpec.kind``.

    Args:
        task: a key of ``mtlbench.tasks.TASKS``.
        num_classes: number of classes; required for classification tasks.
        **kwargs: extra scorer arguments (``thresholds``, ``bin_deg``, ``ignore_index``).

    Returns:
        The task's ``TaskScorer``.
    """
    if task not in TASKS:
        raise KeyError(f'unknown task {task!r}; valid: {sorted(TASKS)}')
    kind = TASKS[task].kind
    if kind == 'classification':
        if num_classes is None:
            raise ValueError(f'{task}: num_classes is required for a classification task')
        return SegmentationScorer(task, num_classes, **kwargs)
    if kind == 'binary':
        return SaliencyScorer(task, **kwargs)
    if kind == 'normals':
        return NormalsScorer(task, **kwargs)
    if kind == 'depth':
        return DepthScorer(task, **kwargs)
    raise ValueError(f'{task}: no scorer for task kind {kind!r}')


def _resolve_tasks(tasks: Optional[Sequence[str]], dataset_name: Optional[str]
                   ) -> Tuple[str, ...]:
    if dataset_name is not None:
        return check_tasks(dataset_name, tasks)
    if not tasks:
        raise ValueError('give `tasks`, `dataset_name`, or both')
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f'unknown task(s) {unknown}; valid: {sorted(TASKS)}')
    return tuple(tasks)


def _build_scorers(tasks: Sequence[str], dataset_name: Optional[str],
                   num_classes: Optional[Mapping[str, int]]) -> Dict[str, TaskScorer]:
    scorers = {}
    for t in tasks:
        n = None
        if TASKS[t].kind == 'classification':
            if num_classes and t in num_classes:
                n = int(num_classes[t])
            elif dataset_name is not None:
                n = DATASET_TASKS[dataset_name][t]
            else:
                raise ValueError(f'{t}: give num_classes[{t!r}] or dataset_name')
        scorers[t] = build_scorer(t, num_classes=n)
    return scorers


def score_samples(scorers: Mapping[str, TaskScorer], stats: Sequence[Mapping[str, Stats]]
                  ) -> Dict[str, float]:
    """Flat ``'<task>/<metric>'`` dict from per-sample multi-task stats.

    Args:
        scorers: task -> scorer.
        stats: one dict task -> ``Stats`` per sample.

    Returns:
        ``{'semseg/mIoU': ..., 'normals/mean': ..., ...}``.
    """
    out: Dict[str, float] = {}
    for task, scorer in scorers.items():
        for name, value in scorer.reduce([s[task] for s in stats]).items():
            out[f'{task}/{name}'] = float(value)
    return out


@METRICS.register_module()
class MultiTaskMetric(BaseMetric):
    """Dataset-level metrics of every task, from one stats entry per sample.

    ``process`` reduces each sample to its sufficient statistics and appends exactly one entry
    (a dict task -> stats) per sample to ``self.results``, so mmengine's ``collect_results``
    (interleave ranks, truncate to ``len(dataset)``) stays correct under DDP.

    Args:
        tasks: tasks to score; defaults to all tasks of ``dataset_name``.
        dataset_name: key of ``mtlbench.tasks.DATASET_TASKS``; validates ``tasks`` and gives
            default class counts. Defaults to None.
        num_classes: task -> number of classes for classification tasks; overrides the dataset
            defaults. Defaults to None.
        collect_device: ``'cpu'`` or ``'gpu'``, for collecting results across ranks.
            Defaults to ``'cpu'``.
        prefix: prepended to every key as ``'<prefix>/<task>/<metric>'``. Defaults to None
            (keys are ``'<task>/<metric>'``).
        collect_dir: shared directory for CPU collection. Defaults to None.

    Returned keys: ``'<task>/<metric>'`` for every metric of the task's scorer, e.g.
    ``semseg/mIoU``, ``sal/maxF``, ``normals/mean``, ``depth/rmse``.

    Example:
        >>> val_evaluator = dict(type='MultiTaskMetric', dataset_name='pascal_context')
    """

    default_prefix: Optional[str] = None

    def __init__(self,
                 tasks: Optional[Sequence[str]] = None,
                 dataset_name: Optional[str] = None,
                 num_classes: Optional[Mapping[str, int]] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 collect_dir: Optional[str] = None) -> None:
        # BaseMetric warns when no prefix is set; keys here are already namespaced by task, so
        # no prefix is the intended default: pass a placeholder and restore it.
        super().__init__(collect_device=collect_device, prefix=prefix or '_',
                         collect_dir=collect_dir)
        self.prefix = prefix
        self.tasks = _resolve_tasks(tasks, dataset_name)
        self.dataset_name = dataset_name
        self.scorers = _build_scorers(self.tasks, dataset_name, num_classes)

    def process(self, data_batch: Any, data_samples: Sequence[Mapping[str, Any]]) -> None:
        """Append one stats entry per sample.

        Samples whose tensors have the same shapes (all of them at a fixed eval size) are
        stacked and scored as one batch on their device, with one small transfer to the host.

        Args:
            data_batch: the dataloader batch (unused).
            data_samples: what the model's ``val_step`` returns: one dict per sample,
                ``{'pred': {task: tensor}, 'gt': {task: tensor}}`` in ``mtlbench.tasks``
                formats, on any device.
        """
        groups: Dict[tuple, List[int]] = {}
        for i, sample in enumerate(data_samples):
            if not isinstance(sample, Mapping) or 'pred' not in sample or 'gt' not in sample:
                raise TypeError('MultiTaskMetric expects one dict {"pred": {...}, "gt": {...}} '
                                f'per sample; sample {i} is {type(sample).__name__}')
            for task in self.scorers:
                if task not in sample['pred'] or task not in sample['gt']:
                    raise KeyError(f'sample {i} lacks the prediction or target of {task!r}')
            shapes = tuple((tuple(torch.as_tensor(sample[k][t]).shape) for t in self.scorers
                            for k in ('pred', 'gt')))
            groups.setdefault(shapes, []).append(i)
        entries: List[Dict[str, Stats]] = [{} for _ in data_samples]
        if data_samples:
            first = torch.as_tensor(data_samples[0]['pred'][next(iter(self.scorers))])
            with _one_thread_on_cpu(first.device):
                self._score_groups(data_samples, groups, entries)
        self.results.extend(entries)

    def _score_groups(self, data_samples: Sequence[Mapping[str, Any]],
                      groups: Mapping[tuple, List[int]], entries: List[Dict[str, Stats]]) -> None:
        """Fill ``entries`` with the stats of each group of equal-shape samples."""
        for indices in groups.values():
            on_device = {}
            for task, scorer in self.scorers.items():
                pred = torch.stack([torch.as_tensor(data_samples[i]['pred'][task]).detach()
                                    for i in indices])
                gt = torch.stack([torch.as_tensor(data_samples[i]['gt'][task]).detach()
                                  for i in indices]).to(pred.device, non_blocking=True)
                on_device[task] = _scored_on_device(scorer, pred, gt)
            host = _to_host(on_device)
            for task, scorer in self.scorers.items():
                for i, stats in zip(indices, scorer.host_stats(host[task])):
                    entries[i][task] = stats

    def compute_metrics(self, results: List[Dict[str, Stats]]) -> Dict[str, float]:
        """Flat ``'<task>/<metric>' -> float`` dict over the collected samples."""
        return score_samples(self.scorers, results)
