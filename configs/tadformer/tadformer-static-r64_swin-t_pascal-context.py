_base_ = ['./tadformer-r64_swin-t_pascal-context.py']
# The released code's filter: a static depthwise 3x3 conv (with bias) per task instead of the DTF.
model = dict(method=dict(task_filter='static'))
