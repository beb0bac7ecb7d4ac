"""The multi-task model: Swin backbone adapted by a method, per-task decoders, per-task losses.

One mmengine ``BaseModel`` for every method: the method only rewrites the backbone (and
optionally the decoder) at build time, so training, evaluation and parameter accounting are
identical across methods. ``train_step`` sums every loss key, so per-task losses are logged.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
from mmengine.model import BaseModel

import mtlbench.transfer  # noqa: F401  (registers the configs' data_preprocessor)
from mtlbench.heads.hrnet import MultiTaskDecoder
from mtlbench.errors import OptionError, UserError
from mtlbench.method import Method, apply_trainable, build_method, param_breakdown
from mtlbench.registry import MODELS
from mtlbench.tasks import TASKS, check_tasks, num_outputs

__all__ = ['MultiTaskModel', 'NonFiniteLossError', 'compile_model']


class NonFiniteLossError(UserError, FloatingPointError):
    """A task loss became NaN or inf: training stops before the bad step touches the weights."""


@MODELS.register_module()
class MultiTaskModel(BaseModel):
    """Backbone + method + per-task decoders.

    Args:
        dataset: dataset name (fixes each task's output channels).
        tasks: tasks to train, in stream order (default: all of the dataset's).
        method: method config, e.g. ``dict(type='mtlora', r=64)``.
        backbone: backbone config (``SwinBackbone`` arguments).
        decoder: extra ``MultiTaskDecoder`` arguments (e.g. ``channels``).
        loss_weights: task -> weight (default: the reference weights of ``mtlbench.tasks``).
        data_preprocessor: mmengine data preprocessor config.
    """

    def __init__(self, dataset: str, method: Union[dict, str, Method], backbone: dict,
                 tasks: Optional[Sequence[str]] = None, decoder: Optional[dict] = None,
                 loss_weights: Optional[Mapping[str, float]] = None,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        from mtlbench.losses import build_loss

        self.dataset_name = dataset
        self.tasks = check_tasks(dataset, tasks)
        self.method = build_method(method, self.tasks)
        backbone = dict(backbone)
        backbone.setdefault('type', 'SwinBackbone')
        self.backbone = MODELS.build(backbone)
        self.adapted_sites: List[str] = self.method.adapt(self.backbone)
        decoder_cfg = dict(decoder or {})
        decoder_cfg.pop('type', None)
        self.decoder = self.method.adapt_decoder(MultiTaskDecoder(
            self.tasks, {t: num_outputs(dataset, t) for t in self.tasks}, self.backbone.out_channels,
            out_size=self.backbone.img_size, **decoder_cfg))
        apply_trainable(self.backbone, self.decoder, self.method.config)
        weights = {t: TASKS[t].loss_weight for t in self.tasks}
        unknown = sorted(set(loss_weights or {}) - set(self.tasks))
        if unknown:
            raise OptionError(f'loss_weights for tasks not trained: {unknown}; tasks: {list(self.tasks)}')
        weights.update(loss_weights or {})
        self.loss_weights = weights
        self.losses = {t: build_loss(TASKS[t].loss) for t in self.tasks}
        #: Called when the loss check fails, before the loss is blamed: the state guard
        #: (:class:`~mtlbench.engine.state_guard.StateGuardHook`) raises there if the previous
        #: update left a weight non-finite (it reads the weights' flags only with the next step's).
        self.non_finite_cause: Optional[Callable[[], None]] = None

    # ----------------------------------------------------------------- params
    def param_breakdown(self) -> Dict[str, int]:
        """Trainable parameters: adapter / decoder / other backbone / totals."""
        return param_breakdown(self.backbone, self.decoder)

    # ---------------------------------------------------------------- forward
    def forward(self, inputs: torch.Tensor, data_samples: Optional[Dict[str, Any]] = None,
                mode: str = 'tensor') -> Union[Dict[str, torch.Tensor], List[dict]]:
        """mmengine entry point.

        Args:
            inputs: images ``[B, 3, H, W]``.
            data_samples: dict of batched targets (``mtlbench.tasks`` formats).
            mode: ``'tensor'`` (raw outputs per task), ``'loss'`` or ``'predict'``.
        """
        raw = self.decoder(self.backbone(inputs))
        if mode == 'tensor':
            return raw
        if mode == 'loss':
            return self.loss(raw, data_samples)
        if mode == 'predict':
            return self.predict(raw, data_samples)
        raise ValueError(f'unknown mode {mode!r}')

    def loss(self, raw: Dict[str, torch.Tensor], targets: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        values = {t: self.losses[t](raw[t], targets[t]) for t in self.tasks}
        bad = _first_non_finite(values)   # one host read for all tasks
        if bad is not None:
            if self.non_finite_cause is not None:
                self.non_finite_cause()
            it = getattr(self, 'current_iter', None)
            where = 'iteration ?' if it is None else f'iteration {it + 1}'  # 1-based, as the log counts
            raise NonFiniteLossError(
                f'loss of task {bad!r} is {values[bad].item()} at {where}; stopping before the update. '
                f'The last checkpoint in the work dir is intact; lower the learning rate or check the data.')
        out = {f'loss_{t}': values[t] * self.loss_weights[t] for t in self.tasks}
        for k, v in self.method.extra_losses(self).items():
            out[k] = v
        return out

    @torch.no_grad()
    def predict(self, raw: Dict[str, torch.Tensor], targets: Optional[Dict[str, Any]] = None) -> List[dict]:
        """One dict per sample: ``{'pred': {task: tensor}, 'gt': {task: tensor}}``."""
        from mtlbench.losses import postprocess

        bad = _first_non_finite({t: raw[t] for t in self.tasks})
        if bad is not None:
            raise NonFiniteLossError(f'predictions of task {bad!r} are not finite (the weights diverged); '
                                     'metrics cannot be computed')
        preds = {t: postprocess(t, raw[t]) for t in self.tasks}
        batch = next(iter(preds.values())).shape[0]
        out = []
        for i in range(batch):
            sample = {'pred': {t: preds[t][i] for t in self.tasks}}
            if targets is not None:
                sample['gt'] = {t: targets[t][i] for t in self.tasks if t in targets}
            out.append(sample)
        return out


def _first_non_finite(tensors: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The first key whose tensor holds a NaN or inf, else ``None``.

    One stacked reduction and one host read for all tensors (a per-task ``bool(...)`` would
    synchronise a GPU once per task, every step); the offending key is looked up only on failure.
    """
    if not tensors:
        return None
    flags = torch.stack([torch.isfinite(v.detach()).all() for v in tensors.values()])
    if bool(flags.all()):
        return None
    return list(tensors)[int((~flags).nonzero()[0, 0])]


def compile_model(model: MultiTaskModel, **compile_kwargs) -> MultiTaskModel:
    """``torch.compile`` the backbone and the decoder in place (``nn.Module.compile``).

    The losses stay eager: their validity masks and the non-finite-loss check are
    data-dependent and would split the graph. Parameter names and the state dict are unchanged,
    so checkpoints of compiled and eager runs are interchangeable.
    """
    model.backbone.compile(**compile_kwargs)
    model.decoder.compile(**compile_kwargs)
    return model
