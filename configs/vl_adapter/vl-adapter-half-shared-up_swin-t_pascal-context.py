_base_ = ['./vl-adapter_swin-t_pascal-context.py']
# VL-Adapter's half-shared adapters (--share_up_sampler): one up projection for all tasks, down per task.
model = dict(method=dict(sharing='half_shared_up'))
