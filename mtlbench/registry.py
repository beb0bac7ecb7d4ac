"""mtlbench registries: children of mmengine's roots, plus one for adapter methods.

Every buildable piece of mtlbench is registered here so that configs refer to it by name
(``type='MultiTaskModel'``, ``method=dict(type='mtlora', ...)``). Children look up through their
mmengine parents, so mmengine's own optimizers, schedulers, hooks and loops stay available under
``default_scope='mtlbench'``.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS

__all__ = ['MODELS', 'DATASETS', 'DATA_SAMPLERS', 'TRANSFORMS', 'METRICS', 'HOOKS', 'LOOPS', 'METHODS']

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mtlbench',
                  locations=['mtlbench.model', 'mtlbench.backbones', 'mtlbench.heads'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mtlbench',
                    locations=['mtlbench.datasets'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope='mtlbench',
                         locations=['mtlbench.engine'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mtlbench',
                      locations=['mtlbench.datasets'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='mtlbench',
                   locations=['mtlbench.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mtlbench',
                 locations=['mtlbench.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope='mtlbench', locations=['mtlbench.engine'])
# Children that only exist so that mmengine's own components (optimizers, schedulers, wrappers,
# visualisers ...) resolve under default_scope='mtlbench' without a fallback warning.
from mmengine import registry as _mm  # noqa: E402

OPTIMIZERS = Registry('optimizer', parent=_mm.OPTIMIZERS, scope='mtlbench')
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=_mm.OPTIM_WRAPPERS, scope='mtlbench')
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor', parent=_mm.OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='mtlbench', locations=['mtlbench.optim'])
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=_mm.PARAM_SCHEDULERS, scope='mtlbench',
                            locations=['mtlbench.lr_schedule'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=_mm.MODEL_WRAPPERS, scope='mtlbench')
VISUALIZERS = Registry('visualizer', parent=_mm.VISUALIZERS, scope='mtlbench')
VISBACKENDS = Registry('vis_backend', parent=_mm.VISBACKENDS, scope='mtlbench')
LOG_PROCESSORS = Registry('log_processor', parent=_mm.LOG_PROCESSORS, scope='mtlbench')
EVALUATOR = Registry('evaluator', parent=_mm.EVALUATOR, scope='mtlbench')
FUNCTIONS = Registry('function', parent=_mm.FUNCTIONS, scope='mtlbench', locations=['mtlbench.engine'])
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=_mm.WEIGHT_INITIALIZERS, scope='mtlbench')

# Backbone adaptation methods (MTLoRA, FAAR, baselines ...). Not an mmengine model: a method
# rewrites a backbone, it is not itself a module. Keys are lower-case (``free_sinewich``).
METHODS = Registry('method', scope='mtlbench', locations=['mtlbench.methods'])
