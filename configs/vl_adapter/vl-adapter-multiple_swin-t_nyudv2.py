_base_ = ['./vl-adapter_swin-t_nyudv2.py']
# VL-Adapter's "multiple adapters" (VL_adapter's multiple_adapters.sh): an adapter per task in every block.
model = dict(method=dict(sharing='multiple'))
