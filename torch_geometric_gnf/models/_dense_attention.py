r"""Dense masked multi-head self-attention blocks for small padded graphs.

Graphs of different sizes are padded to :obj:`[B, n, C]` with a node mask
:obj:`[B, n]` (:func:`torch_geometric.utils.to_dense_batch`); one batched
matrix product then serves every graph, with no python loop over graphs.
"""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import to_dense_batch


class DenseAttentionBlock(torch.nn.Module):
    r"""One message-passing step with multi-head dot-product attention,
    followed by an MLP, both residual with LayerNorm (post-norm):

    .. math::
        \mathbf{H}' &= \mathrm{LN}\Big(\mathbf{H} + \mathbf{W}_O
        \big\Vert_{h} \mathrm{softmax}\Big(\frac{\mathbf{Q}_h
        \mathbf{K}_h^\top}{\sqrt{d}} + \mathbf{M}\Big) \mathbf{V}_h\Big) \\
        \mathbf{H}'' &= \mathrm{LN}\big(\mathbf{H}' +
        \mathrm{MLP}(\mathbf{H}')\big)

    where :math:`\mathbf{M}_{ij} = 0` if node :math:`i` may attend to node
    :math:`j` (an edge, or any node of the same graph when fully connected)
    and :math:`-\infty` otherwise.

    Args:
        channels (int): Hidden size (divisible by :obj:`heads`).
        heads (int, optional): Number of attention heads. (default: :obj:`4`)
    """
    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"'channels' ({channels}) must be divisible by "
                             f"'heads' ({heads})")
        self.channels, self.heads = channels, heads
        self.qkv = torch.nn.Linear(channels, 3 * channels)
        self.out = torch.nn.Linear(channels, channels)
        self.norm1 = torch.nn.LayerNorm(channels)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(channels, 2 * channels),
                                       torch.nn.ReLU(),
                                       torch.nn.Linear(2 * channels, channels))
        self.norm2 = torch.nn.LayerNorm(channels)

    def reset_parameters(self):
        for module in self.modules():
            if module is not self and hasattr(module, 'reset_parameters'):
                module.reset_parameters()

    def forward(self, x: Tensor, attend: Tensor,
                bias: Optional[Tensor] = None) -> Tensor:
        r"""Args:
            x (torch.Tensor): Padded node states :obj:`[B, n, C]`.
            attend (torch.Tensor): Boolean :obj:`[B, n, n]`, :obj:`True` where
                node :obj:`i` may attend to node :obj:`j`; every row needs at
                least one :obj:`True` (give padding rows their diagonal).
            bias (torch.Tensor, optional): Added to the attention logits,
                broadcastable to :obj:`[B, heads, n, n]`.
        """
        B, n, C = x.shape
        d = C // self.heads
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(~attend.unsqueeze(1), float('-inf'))
        att = torch.softmax(scores, dim=-1) @ v  # [B, heads, n, d]
        x = self.norm1(x + self.out(att.transpose(1, 2).reshape(B, n, C)))
        return self.norm2(x + self.mlp(x))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'heads={self.heads})')


def fully_connected_attend(mask: Tensor) -> Tensor:
    r"""Attention pattern :obj:`[B, n, n]` of fully connected graphs from a
    node mask :obj:`[B, n]`: real nodes attend to every real node of their
    graph (themselves included); padding rows attend to their own slot only,
    so that no softmax row is empty."""
    attend = mask.unsqueeze(1) & mask.unsqueeze(2)
    eye = torch.eye(mask.size(1), dtype=torch.bool, device=mask.device)
    return attend | (eye & ~mask.unsqueeze(2))


class DenseLayout(NamedTuple):
    r"""Where the nodes of a batch of graphs sit in the padded :obj:`[B, n]`
    layout: :obj:`slot` :obj:`[num_nodes]` (flat index of each node),
    :obj:`mask` :obj:`[B, n]` and the fully connected :obj:`attend`
    pattern :obj:`[B, n, n]`.  Built once per batch by
    :func:`dense_layout` and shared by every coupling network of a flow."""
    slot: Tensor
    mask: Tensor
    attend: Tensor

    def pad(self, h: Tensor) -> Tensor:
        r"""Node features :obj:`[num_nodes, C]` to :obj:`[B, n, C]`
        (zeros in padding slots)."""
        B, n = self.mask.shape
        out = h.new_zeros(B * n, h.size(-1)).index_copy(0, self.slot, h)
        return out.view(B, n, h.size(-1))

    def unpad(self, x: Tensor) -> Tensor:
        r"""The inverse of :meth:`pad`: :obj:`[B, n, C]` to :obj:`[num_nodes, C]`."""
        return x.reshape(-1, x.size(-1)).index_select(0, self.slot)


def dense_layout(graph_index: Tensor) -> DenseLayout:
    r""":class:`DenseLayout` of the nodes with (sorted) graph ids
    :obj:`graph_index`, as :func:`torch_geometric.utils.to_dense_batch`
    places them."""
    ones = torch.ones_like(graph_index)
    _, mask = to_dense_batch(ones, graph_index)
    slot = torch.nonzero(mask.reshape(-1)).view(-1)
    return DenseLayout(slot, mask, fully_connected_attend(mask))


class DenseAttentionCoupling(torch.nn.Module):
    r"""Scale-and-shift network of a graph affine coupling on fully connected
    graphs, with the node-list interface of
    :class:`~torch_geometric_gnf.nn.GraphAffineCoupling` (called as
    :obj:`fn(h, edge_index, graph_index=batch)`; :obj:`edge_index` is
    ignored: every graph is fully connected).

    .. math::
        [\tilde{\mathbf{s}} \,\Vert\, \mathbf{t}] = \mathbf{W}_{\mathrm{out}}
        \, \mathrm{Block}^{L}(\mathbf{W}_{\mathrm{in}} \mathbf{H})

    The output layer starts at zero, so a new coupling is the identity.

    Args:
        in_channels (int): Half width of the flow's features.
        hidden_channels (int): Attention width.
        num_blocks (int, optional): Attention + MLP steps. (default: :obj:`1`)
        heads (int, optional): Attention heads. (default: :obj:`4`)
    """
    def __init__(self, in_channels: int, hidden_channels: int,
                 num_blocks: int = 1, heads: int = 4):
        super().__init__()
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.lin_in = torch.nn.Linear(in_channels, hidden_channels)
        self.blocks = torch.nn.ModuleList(
            [DenseAttentionBlock(hidden_channels, heads) for _ in range(num_blocks)])
        self.lin_out = torch.nn.Linear(hidden_channels, 2 * in_channels)
        self.reset_parameters()

    def reset_parameters(self):
        self.lin_in.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        torch.nn.init.zeros_(self.lin_out.weight)
        torch.nn.init.zeros_(self.lin_out.bias)

    def forward(self, h: Tensor, edge_index: Optional[Tensor] = None,
                graph_index: Optional[Tensor] = None,
                layout: Optional[DenseLayout] = None) -> Tensor:
        r"""Args:
            h (torch.Tensor): Node features :obj:`[num_nodes, in_channels]`.
            edge_index: Ignored (every graph is fully connected).
            graph_index (torch.Tensor, optional): Sorted graph id of every
                node (one graph if :obj:`None`).
            layout (DenseLayout, optional): :obj:`dense_layout(graph_index)`,
                computed once for all the networks of a flow (saves the
                padding bookkeeping in each).
        """
        if layout is None:
            if graph_index is None:
                graph_index = h.new_zeros(h.size(0), dtype=torch.long)
            layout = dense_layout(graph_index)
        x = layout.pad(self.lin_in(h))
        for block in self.blocks:
            x = block(x, layout.attend)
        return self.lin_out(layout.unpad(F.relu(x)))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'hidden={self.hidden_channels}, blocks={len(self.blocks)})')
