_base_ = ['./tadformer-r64_swin-t_pascal-context.py']
# No stage gate: task features are the task streams alone (no TPC skip u_t; the release's
# SKIPCONNECTION: False). gate='average' would give the fixed 0.5 mix (STAGEWISEGATING: False).
model = dict(method=dict(gate='none'))
