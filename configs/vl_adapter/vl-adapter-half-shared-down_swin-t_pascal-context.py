_base_ = ['./vl-adapter_swin-t_pascal-context.py']
# VL-Adapter's half-shared adapters (--share_down_sampler): one down projection for all tasks, up per task.
model = dict(method=dict(sharing='half_shared_down'))
