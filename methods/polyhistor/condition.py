"""What the shared hypernetworks of HyperFormer / Polyhistor are conditioned on.

HyperFormer++ (Karimi Mahabadi et al., ACL 2021, arXiv 2106.04489, Sec. 2.4) feeds one shared
hypernetwork with a task embedding, a layer-id embedding and an adapter-position embedding,
mixed by a small "task projector" MLP; Polyhistor (Liu et al., NeurIPS 2022, arXiv 2210.03265,
Sec. 4.1) conditions its hypernetworks on task and layer embeddings the same way. Here the three
learned embeddings are concatenated and passed through ``Linear -> ReLU -> Linear``; the output
``I[t]`` (one row per task) is what every generator reads.

Embedding width 64, projector hidden width 128 and output width 64 (each a config option) are
the official HyperFormer++ release config's ``task_embedding_dim``, ``task_hidden_dim`` and
``projected_task_embedding_dim`` (rabeehk/hyperformer at 56b0f99,
``hyperformer/configs/hyperformer++.json`` and ``adapters/adapter_configuration.py``); what
Polyhistor's Swin adaptation used is not in the text we could read.

``layer_norm``: HyperFormer++ normalises the projector's output before the generators read it
(``unique_hyper_net_layer_norm``, default True in ``adapters/adapter_configuration.py`` and
``training_args.py``; ``nn.LayerNorm(projected_task_embedding_dim, eps=1e-6)`` applied in
``AdapterLayersOneHyperNetController.get_embedding``, ``adapters/adapter_modeling.py``).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ['SiteCondition']


class SiteCondition(nn.Module):
    """Learned embeddings of (task, layer, adapter position) and the projector that mixes them.

    Args:
        num_tasks: ``T``.
        num_layers: number of blocks that hold adapters (layer ids ``0 .. num_layers - 1``).
        num_positions: adapter positions per block (after attention, after the MLP).
        embed_dim: width of each of the three embeddings.
        hidden_dim: hidden width of the projector.
        out_dim: width of the conditioning vector ``I``.
        init_std: std of the embeddings' normal init.
        layer_norm: normalise ``I`` (learned affine, eps 1e-6), as HyperFormer++ does.
    """

    def __init__(self, num_tasks: int, num_layers: int, num_positions: int, embed_dim: int = 64,
                 hidden_dim: int = 128, out_dim: int = 64, init_std: float = 0.02,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.task_embed = nn.Parameter(torch.randn(num_tasks, embed_dim) * init_std)
        self.layer_embed = nn.Parameter(torch.randn(num_layers, embed_dim) * init_std)
        self.position_embed = nn.Parameter(torch.randn(num_positions, embed_dim) * init_std)
        self.projector = nn.Sequential(nn.Linear(3 * embed_dim, hidden_dim), nn.ReLU(),
                                       nn.Linear(hidden_dim, out_dim))
        self.norm = nn.LayerNorm(out_dim, eps=1e-6) if layer_norm else None
        self.out_dim = out_dim

    def forward(self, layer: int, position: int) -> torch.Tensor:
        """``I`` for every task at one adapter site: ``[T, out_dim]``."""
        T = self.task_embed.shape[0]
        z = torch.cat([self.task_embed,
                       self.layer_embed[layer].expand(T, -1),
                       self.position_embed[position].expand(T, -1)], dim=-1)
        out = self.projector(z)
        return self.norm(out) if self.norm is not None else out
