import math
from typing import Any, Optional

import torch
from torch import Tensor
from torch_geometric.utils import to_dense_batch


class DenseSelfAttention(torch.nn.Module):
    r"""Multi-head dot-product self-attention message passing over the
    complete graph of every example (Vaswani et al., 2017), computed on a
    dense :obj:`[batch, nodes, channels]` layout:

    .. math::
        \mathbf{x}'_i = \mathbf{W}_O \, \Big\Vert_{h=1}^{H}
        \sum_{j \in \mathcal{V}} \alpha^{h}_{ij} \mathbf{W}^h_V \mathbf{x}_j,
        \qquad \alpha^{h}_{ij} = \operatorname{softmax}_j \left(
        \frac{(\mathbf{W}^h_Q \mathbf{x}_i)^\top \mathbf{W}^h_K \mathbf{x}_j}
        {\sqrt{d_h}} \right)

    where :math:`\mathcal{V}` is the node set of :math:`i`'s own graph
    (valid nodes of :obj:`mask`).  For the small fully connected graphs of
    set flows this is much faster than sparse message passing over an
    explicit :math:`\mathcal{O}(n^2)` :obj:`edge_index`, with the same math
    as :class:`torch_geometric.nn.TransformerConv` on the complete graph
    with self-loops (without its skip connection).  It is permutation
    equivariant.  With :obj:`attention=False` every node only attends to
    itself, :math:`\mathbf{x}'_i = \mathbf{W}_O \mathbf{W}_V
    \mathbf{x}_i` (no message passing: the RealNVP ablation).

    Inputs can be

    * dense: :obj:`x` of shape :obj:`[B, N, C]` with an optional node
      :obj:`mask` :obj:`[B, N]` (:obj:`True` = real node) for padded
      batches of graphs of different sizes; padded outputs are zero;
    * node-level :obj:`[num_nodes, C]` with either :obj:`set_size` (all
      graphs have that many consecutive nodes: a free reshape) or
      :obj:`node_batch` (graph id per node, sorted).

    :obj:`edge_index` is accepted (and ignored) so that the module can be
    the :math:`F`/:math:`G` of a coupling, which calls
    :obj:`fn(h, edge_index, **kwargs)`: the graph is always the complete
    graph of each example.

    Args:
        channels (int): Input and output size.
        heads (int, optional): Number of heads; must divide
            :obj:`channels`. (default: :obj:`4`)
        attention (bool, optional): If :obj:`False`, no message passing.
            (default: :obj:`True`)
        dropout (float, optional): Dropout on attention weights.
            (default: :obj:`0.0`)
    """
    def __init__(self, channels: int, heads: int = 4, attention: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        if channels <= 0 or heads <= 0 or channels % heads != 0:
            raise ValueError(f"'heads' ({heads}) must be positive and divide "
                             f"'channels' ({channels})")
        self.channels = channels
        self.heads = heads
        self.attention = attention
        self.dropout = dropout
        if attention:
            self.query = torch.nn.Linear(channels, channels)
            self.key = torch.nn.Linear(channels, channels)
        self.value = torch.nn.Linear(channels, channels)
        self.out = torch.nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters."""
        for lin in self.children():
            lin.reset_parameters()

    def forward(self, x: Tensor, edge_index: Any = None, *,
                mask: Optional[Tensor] = None, set_size: Optional[int] = None,
                node_batch: Optional[Tensor] = None) -> Tensor:
        r"""Returns node features of the same shape as :obj:`x`."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("'x' must be a floating point Tensor")
        if x.size(-1) != self.channels:
            raise ValueError(f"Expected {self.channels} channels (got "
                             f"{x.size(-1)})")
        if x.dim() == 3:
            if set_size is not None or node_batch is not None:
                raise ValueError("'set_size'/'node_batch' are for node-level "
                                 "[num_nodes, C] input; dense input takes 'mask'")
            return self.dense(x, mask)
        if x.dim() != 2:
            raise ValueError(f"'x' must be [num_nodes, C] or [B, N, C] (got "
                             f"{tuple(x.shape)})")
        if mask is not None:
            raise ValueError("'mask' is for dense [B, N, C] input")
        if (set_size is None) == (node_batch is None):
            raise ValueError("Node-level input needs exactly one of "
                             "'set_size' and 'node_batch'")
        if set_size is not None:
            if set_size <= 0 or x.size(0) % set_size != 0:
                raise ValueError(f"{x.size(0)} nodes cannot be split into "
                                 f"sets of {set_size}")
            return self.dense(x.view(-1, set_size, self.channels)).view_as(x)
        if node_batch.dim() != 1 or node_batch.numel() != x.size(0):
            raise ValueError(f"'node_batch' must have shape [{x.size(0)}]")
        if node_batch.numel() > 1 and bool((node_batch[1:] < node_batch[:-1]).any()):
            raise ValueError("'node_batch' must be sorted")
        dense, node_mask = to_dense_batch(x, node_batch.long())
        return self.dense(dense, node_mask)[node_mask]

    def dense(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        r"""Attention on dense input :obj:`[B, N, C]` with an optional
        :obj:`[B, N]` boolean node mask."""
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != x.shape[:2]:
                raise ValueError(f"'mask' must be a bool tensor of shape "
                                 f"{tuple(x.shape[:2])}")
        B, N, C = x.shape
        H, D = self.heads, C // self.heads
        v = self.value(x)
        if not self.attention:
            out = self.out(v)
        else:
            q = self.query(x).view(B, N, H, D).transpose(1, 2)  # [B, H, N, D]
            k = self.key(x).view(B, N, H, D).transpose(1, 2)
            scores = q @ k.transpose(-1, -2) / math.sqrt(D)     # [B, H, N, N]
            if mask is not None:
                # Padded query rows see every key (no all -inf row, whose
                # softmax would be NaN in forward and backward), then vanish.
                allowed = mask[:, None, None, :] | ~mask[:, None, :, None]
                scores = scores.masked_fill(~allowed, float('-inf'))
            alpha = torch.softmax(scores, dim=-1)
            if mask is not None:
                alpha = alpha.masked_fill(~mask[:, None, :, None], 0.0)
            alpha = torch.nn.functional.dropout(alpha, self.dropout, self.training)
            msg = alpha @ v.view(B, N, H, D).transpose(1, 2)      # [B, H, N, D]
            out = self.out(msg.transpose(1, 2).reshape(B, N, C))
        if mask is not None:
            out = out * mask.unsqueeze(-1).to(out.dtype)
        return out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, heads={self.heads}, '
                f'attention={self.attention})')
