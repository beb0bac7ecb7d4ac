"""Hypernetwork-generated adapters: HyperFormer (``hyperformer``), Polyhistor (``polyhistor``) and
Polyhistor-Lite (``polyhistor_lite``), the multi-task rows of the Polyhistor (NeurIPS 2022)
table. One package because the three share the conditioning, the generator and the adapter
layer; each method's choices are in its module's docstring."""
from . import hyperformer, polyhistor  # noqa: F401  (registers the three methods)
