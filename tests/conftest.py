import os

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv, TransformerConv

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')


def random_graph(num_nodes: int = 14, num_edges: int = 40, seed: int = 0,
                 dtype: torch.dtype = torch.long) -> torch.Tensor:
    r"""A random directed graph with the awkward cases every kernel must
    survive: two isolated nodes, duplicate edges and explicit self-loops."""
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, num_nodes - 2, (2, num_edges), generator=gen)
    loops = torch.tensor([[0, 3], [0, 3]])
    ei = torch.cat([ei, ei[:, :5], loops], dim=1)  # duplicates + self-loops
    return ei.to(dtype)


def make_conv(name: str, in_channels: int, out_channels: int) -> torch.nn.Module:
    r"""PyG convs mapping ``in_channels`` to ``out_channels``, with attention
    dropout where the conv has it (to exercise RNG replay)."""
    if name == 'gcn':
        return GCNConv(in_channels, out_channels)
    if name == 'gat':
        return GATConv(in_channels, out_channels // 2, heads=2, dropout=0.5)
    if name == 'sage':
        return SAGEConv(in_channels, out_channels)
    if name == 'gin':
        return GINConv(torch.nn.Sequential(
            torch.nn.Linear(in_channels, out_channels), torch.nn.Tanh(),
            torch.nn.Linear(out_channels, out_channels)))
    if name == 'transformer':
        return TransformerConv(in_channels, out_channels // 2, heads=2, dropout=0.3)
    raise ValueError(name)


CONVS = ['gcn', 'gat', 'sage', 'gin', 'transformer']


@pytest.fixture
def graph():
    return random_graph()


def unrolled_additive_steps(step: torch.nn.Module, h: torch.Tensor,
                            edge_index: torch.Tensor, num_steps: int) -> torch.Tensor:
    r"""Plain-autograd reference for weight-tied reversible steps, written
    without :class:`ReversibleMessagePassing`'s code: the additive coupling
    :math:`h_1 \mathrel{+}= F(h_0)`, :math:`h_0 \mathrel{+}= G(h_1)` of the
    one step's :obj:`f` and :obj:`g`, applied :obj:`num_steps` times (each
    application draws fresh dropout masks)."""
    for _ in range(num_steps):
        h0, h1 = h.chunk(2, dim=-1)
        h1 = h1 + step.f(h0, edge_index)
        h0 = h0 + step.g(h1, edge_index)
        h = torch.cat([h0, h1], dim=-1)
    return h


def inverse_round_trip(blocks, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    r"""Runs reversible :obj:`blocks` forward, then their inverses backward."""
    for block in blocks:
        h = block(h, edge_index)
    for block in reversed(blocks):
        h = block.inverse(h, edge_index)
    return h


def perturb_parameters(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    r"""Moves every parameter off its initial value.  With zero-initialised
    biases, a node whose attention coefficients are all dropped gets an
    exactly zero feature row, which LayerNorm maps onto ReLU's kink; there
    the memory-saving backward (rebuilt input exact up to rounding) and
    plain autograd may pick different subgradients.  Generic parameters
    avoid that tie, so gradient comparisons test the algorithm."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model
