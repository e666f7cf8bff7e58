r"""Dense multi-head self-attention for small graphs and sets.

* :class:`DenseSelfAttention`: attention message passing over the complete
  graph of every example (or an :obj:`attend` pattern, with an optional
  logit bias), on a dense :obj:`[B, N, C]` layout or node-level input;
* :class:`DenseAttentionBlock` / :class:`DenseAttentionCoupling`: the
  residual attention + MLP blocks of the graph auto-encoder and of the
  generation flow's couplings.  Their node states stay a node list
  :obj:`[num_nodes, C]`; only the attention products pad graphs of
  different sizes to :obj:`[B, n]` with a node mask (:class:`DenseLayout`,
  as :func:`torch_geometric.utils.to_dense_batch` places them): one batched
  matrix product then serves every graph, with no python loop over graphs.
"""
import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
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
                node_batch: Optional[Tensor] = None, attend: Optional[Tensor] = None,
                bias: Optional[Tensor] = None) -> Tensor:
        r"""Returns node features of the same shape as :obj:`x`.

        :obj:`attend` (bool :obj:`[B, N, N]`, :obj:`True` where node
        :math:`i` may attend to node :math:`j`) and :obj:`bias` (added to the
        attention logits, broadcastable to :obj:`[B, heads, N, N]`, e.g. a
        learned offset on linked pairs) are for dense input; see
        :meth:`dense`."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("'x' must be a floating point Tensor")
        if x.size(-1) != self.channels:
            raise ValueError(f"Expected {self.channels} channels (got "
                             f"{x.size(-1)})")
        if x.dim() == 3:
            if set_size is not None or node_batch is not None:
                raise ValueError("'set_size'/'node_batch' are for node-level "
                                 "[num_nodes, C] input; dense input takes 'mask'")
            return self.dense(x, mask, attend=attend, bias=bias)
        if attend is not None or bias is not None:
            raise ValueError("'attend'/'bias' are for dense [B, N, C] input")
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

    def dense(self, x: Tensor, mask: Optional[Tensor] = None, *,
              attend: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
        r"""Attention on dense input :obj:`[B, N, C]` with an optional
        :obj:`[B, N]` boolean node mask, an optional attention pattern
        :obj:`attend` (bool :obj:`[B, N, N]`; every real node must attend to
        at least one real node) and an optional logit :obj:`bias`
        (broadcastable to :obj:`[B, heads, N, N]`):
        :math:`\alpha^h_{ij} = \operatorname{softmax}_{j : \mathrm{attend}_{ij}}
        (\mathbf{q}^{h\top}_i \mathbf{k}^h_j / \sqrt{d_h} + b^h_{ij})`."""
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != x.shape[:2]:
                raise ValueError(f"'mask' must be a bool tensor of shape "
                                 f"{tuple(x.shape[:2])}")
        B, N, C = x.shape
        if attend is not None:
            if attend.dtype != torch.bool or attend.shape != (B, N, N):
                raise ValueError(f"'attend' must be a bool tensor of shape {(B, N, N)}")
            if not self.attention:
                raise ValueError("'attend' needs attention=True")
            real = attend if mask is None else attend & mask[:, None, :]
            rows = torch.ones_like(real[..., 0]) if mask is None else mask
            if bool((rows & ~real.any(-1)).any()):
                raise ValueError("'attend': every real node must attend to at "
                                 "least one real node")
        if bias is not None and not self.attention:
            raise ValueError("'bias' needs attention=True")
        H, D = self.heads, C // self.heads
        v = self.value(x)
        if not self.attention:
            out = self.out(v)
        else:
            q = self.query(x).view(B, N, H, D).transpose(1, 2)  # [B, H, N, D]
            k = self.key(x).view(B, N, H, D).transpose(1, 2)
            scores = q @ k.transpose(-1, -2) / math.sqrt(D)     # [B, H, N, N]
            if bias is not None:
                scores = scores + bias
            allowed = None if attend is None else attend[:, None]
            if mask is not None:
                # Padded query rows see every key (no all -inf row, whose
                # softmax would be NaN in forward and backward), then vanish.
                keys = mask[:, None, None, :]
                keys = keys if allowed is None else keys & allowed
                allowed = keys | ~mask[:, None, :, None]
            if allowed is not None:
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

    The node states stay a node list :obj:`[num_nodes, C]`: the linear
    layers, LayerNorms and the MLP run on real nodes only, and just the
    queries, keys and values are padded to :obj:`[B, n]` for the batched
    attention products.  (Small graphs padded to the largest of a batch
    are mostly padding: ego-small's graphs average 6.3 nodes, and a batch
    of 32 usually holds one of 11-20.)

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

    def forward(self, x: Tensor, layout: 'DenseLayout',
                bias: Optional[Tensor] = None) -> Tensor:
        r"""Updates the node states.

        Args:
            x (torch.Tensor): Node states :obj:`[num_nodes, C]`, in the
                order of :obj:`layout.slot`.
            layout (DenseLayout): Where the nodes sit in the padded
                :obj:`[B, n]` grid, and :obj:`layout.attend`, boolean
                :obj:`[B, n, n]`, :obj:`True` where node :obj:`i` may attend
                to node :obj:`j`; every row needs at least one :obj:`True`
                (padding rows get their diagonal).
            bias (torch.Tensor, optional): Added to the attention logits,
                broadcastable to :obj:`[B, heads, n, n]`.
        """
        B, n = layout.mask.shape
        heads, d = self.heads, self.channels // self.heads
        qkv = layout.pad(self.qkv(x)).view(B, n, 3, heads, d)
        # One copy puts each head's rows together: [3, B * heads, n, d].
        q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, B * heads, n, d)
        logits = layout.logit_mask(heads, x.dtype)  # 0 / -inf
        if bias is not None:
            logits = logits + bias.expand(B, heads, n, n).reshape(B * heads, n, n)
        # logits + QK^T / sqrt(d) in one product
        scores = torch.baddbmm(logits, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(d))
        att = torch.bmm(torch.softmax(scores, dim=-1), v).view(B, heads, n, d)
        att = layout.unpad(att.transpose(1, 2)).reshape(-1, self.channels)
        x = self.norm1(x + self.out(att))
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


class DenseLayout:
    r"""Where the nodes of a batch of graphs sit in the padded :obj:`[B, n]`
    layout: :obj:`slot` :obj:`[num_nodes]` (flat index of each node),
    :obj:`mask` :obj:`[B, n]` and the attention pattern :obj:`attend`
    :obj:`[B, n, n]`.  Built once per batch (:func:`dense_layout`,
    :func:`layout_of_mask`) and shared by every block and coupling network
    that sees the batch."""
    def __init__(self, slot: Tensor, mask: Tensor, attend: Tensor):
        self.slot, self.mask, self.attend = slot, mask, attend
        self._logit_masks: Dict[Tuple[int, torch.dtype], Tensor] = {}

    def pad(self, h: Tensor) -> Tensor:
        r"""Node features :obj:`[num_nodes, *]` to :obj:`[B, n, *]`
        (zeros in padding slots)."""
        B, n = self.mask.shape
        out = h.new_zeros((B * n, ) + h.shape[1:]).index_copy(0, self.slot, h)
        return out.view((B, n) + h.shape[1:])

    def unpad(self, x: Tensor) -> Tensor:
        r"""The inverse of :meth:`pad`: :obj:`[B, n, *]` to :obj:`[num_nodes, *]`."""
        return x.flatten(0, 1).index_select(0, self.slot)

    def logit_mask(self, heads: int, dtype: torch.dtype) -> Tensor:
        r""":obj:`[B * heads, n, n]`: 0 where :obj:`attend`, :math:`-\infty`
        elsewhere, to add to attention logits (made once per batch, heads
        and dtype)."""
        key = (heads, dtype)
        if key not in self._logit_masks:
            B, n = self.mask.shape
            neg = torch.zeros(B, 1, n, n, dtype=dtype, device=self.mask.device)
            neg = neg.masked_fill(~self.attend.unsqueeze(1), float('-inf'))
            self._logit_masks[key] = neg.expand(B, heads, n, n).reshape(B * heads, n, n)
        return self._logit_masks[key]


def layout_of_mask(mask: Tensor, attend: Optional[Tensor] = None) -> DenseLayout:
    r""":class:`DenseLayout` of a node mask :obj:`[B, n]` (real nodes first in
    every row, as :func:`torch_geometric.utils.to_dense_batch` places them)
    with the attention pattern :obj:`attend` (default: fully connected
    graphs, :func:`fully_connected_attend`)."""
    slot = torch.nonzero(mask.reshape(-1)).view(-1)
    return DenseLayout(slot, mask, fully_connected_attend(mask) if attend is None else attend)


def dense_layout(graph_index: Tensor) -> DenseLayout:
    r""":class:`DenseLayout` of the nodes with (sorted) graph ids
    :obj:`graph_index`, fully connected within each graph."""
    _, mask = to_dense_batch(torch.ones_like(graph_index), graph_index)
    return layout_of_mask(mask)


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
        r"""Returns :obj:`[num_nodes, 2 * in_channels]` (scale | shift).

        Args:
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
        x = self.lin_in(h)
        for block in self.blocks:
            x = block(x, layout)
        return self.lin_out(F.relu(x))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'hidden={self.hidden_channels}, blocks={len(self.blocks)})')
