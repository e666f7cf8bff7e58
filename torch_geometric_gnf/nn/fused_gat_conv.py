r"""A drop-in replacement for PyG's :class:`~torch_geometric.nn.GATConv`
whose attention aggregation runs as one fused, memory-lean op."""
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear, is_uninitialized_parameter
from torch_geometric.nn.inits import glorot, zeros
from torch_geometric.typing import SparseTensor

from torch_geometric_gnf.nn._fused_graph import (attention_output,
                                                 clear_graph_cache,
                                                 prepare_graph,
                                                 split_node_features)
from torch_geometric_gnf.ops import (dropout_keep_mask, fused_gat_attention,
                                     gat_attention_weights)
from torch_geometric_gnf.ops.gat_attention import draw_dropout_seed

__all__ = ['FusedGATConv', 'clear_graph_cache']


class FusedGATConv(MessagePassing):
    r"""The graph attentional operator from the `"Graph Attention Networks"
    <https://arxiv.org/abs/1710.10903>`_ paper, a drop-in replacement for
    :class:`torch_geometric.nn.GATConv` (same constructor, parameter names
    and shapes, forward signature and outputs) whose attention aggregation
    runs through :func:`torch_geometric_gnf.ops.fused_gat_attention`.

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i) \cup \{ i \}}
        \alpha_{i,j}\mathbf{\Theta}_s\mathbf{x}_{j}, \qquad
        \alpha_{i,j} = \operatorname{softmax}_{j}\Big(\mathrm{LeakyReLU}\big(
        \mathbf{a}^{\top}_{s} \mathbf{\Theta}_{s}\mathbf{x}_j
        + \mathbf{a}^{\top}_{t} \mathbf{\Theta}_{t}\mathbf{x}_i
        + \mathbf{a}^{\top}_{e} \mathbf{\Theta}_{e} \mathbf{e}_{i,j}
        \big)\Big),

    per head, heads concatenated or averaged (:obj:`concat`), followed by the
    optional residual :math:`\mathbf{\Theta}_r \mathbf{x}_i` and bias. The
    edge term is present only with :obj:`edge_dim` and :obj:`edge_attr`.

    What differs from :class:`~torch_geometric.nn.GATConv` is only how it is
    computed:

    * Scores, softmax, attention dropout and the weighted sum over
      neighbours run in one pass over a destination-sorted (CSR) graph; the
      backward recomputes per-edge scores from :math:`\mathcal{O}(N \cdot H)`
      saved statistics. No :math:`E \times H \times C` message tensor and no
      :math:`E \times H` attention tensor is kept for backward.
    * The attention logits fold :math:`\mathbf{a}` into :math:`\mathbf{\Theta}`
      first, e.g. :math:`\mathbf{a}^{\top}_{e} \mathbf{\Theta}_{e}
      \mathbf{e}_{i,j} = \mathbf{e}_{i,j}^{\top} (\mathbf{\Theta}_e^{\top}
      \mathbf{a}_e)`, so the :math:`E \times H C` projection of the edge
      features is never formed, and the node logits need no
      :math:`N \times H C` temporary in forward or backward (same numbers up
      to floating point rounding).
    * Attention dropout uses a counter-based mask (a hash of a seed, the
      edge id and the head; see :func:`~torch_geometric_gnf.ops.dropout_keep_mask`).
      It drops each weight with probability :obj:`dropout` like
      :func:`torch.nn.functional.dropout`, but the masks are not the same
      bits as GATConv's. The seed is drawn from the default generator of the
      features' device, so :class:`ReversibleMessagePassing`'s RNG replay
      reproduces the mask exactly.
    * The CSR of the (self-looped) graph is cached per :obj:`edge_index`
      tensor and verified against its contents on every call (an exact
      O(E) check, cheaper than the sort it saves), so repeated calls and
      stacked layers sort the edges once and the cache never changes a
      result, whatever wrote into :obj:`edge_index`. Inside
      :func:`torch.compile` (also :obj:`fullgraph=True`),
      :func:`torch.export.export` and :func:`torch.jit.trace` the graph is
      built by traceable ops instead (no cache).
    * Attention weights are computed only when asked for
      (:obj:`return_attention_weights`); in training mode with dropout they
      include the mask and the :math:`1/(1-p)` scale, as GATConv's do.
    * Beyond GATConv, a :obj:`torch.sparse_csc` adjacency is accepted.

    Args:
        in_channels (int or tuple): Size of each input sample, or :obj:`-1`
            to derive it lazily. A tuple gives source and target sizes of a
            bipartite graph (separate :obj:`lin_src` / :obj:`lin_dst`).
        out_channels (int): Size of each output sample per head.
        heads (int, optional): Number of attention heads. (default: :obj:`1`)
        concat (bool, optional): Concatenate heads, else average them.
            (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU slope. (default: :obj:`0.2`)
        dropout (float, optional): Attention dropout probability.
            (default: :obj:`0.`)
        add_self_loops (bool, optional): Remove existing self-loops and add
            one per node. (default: :obj:`True`)
        edge_dim (int, optional): Edge feature dimensionality.
            (default: :obj:`None`)
        fill_value (float or torch.Tensor or str, optional): Edge features of
            the added self-loops (a value, or a reduction over the incoming
            edges: :obj:`"add"`, :obj:`"mean"`, :obj:`"min"`, :obj:`"max"`,
            :obj:`"mul"`). (default: :obj:`"mean"`)
        bias (bool, optional): Learn an additive bias. (default: :obj:`True`)
        residual (bool, optional): Add a learnable skip connection.
            (default: :obj:`False`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing` (only the
            defaults :obj:`aggr="add"`, :obj:`flow="source_to_target"`).

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V_s}|, F_{s}), (|\mathcal{V_t}|, F_{t}))`,
          edge indices :math:`(2, |\mathcal{E}|)` (int64 or int32), a
          ``torch.sparse`` COO/CSR/CSC or a ``torch_sparse.SparseTensor``
          (transposed) adjacency, edge features :math:`(|\mathcal{E}|, D)`
          *(optional)*
        - **output:** :math:`(|\mathcal{V}_t|, H \cdot F_{out})` (or
          :math:`F_{out}` without :obj:`concat`); with
          :obj:`return_attention_weights=True` also
          :obj:`(edge_index, alpha)` with :math:`\alpha` of shape
          :math:`(|\mathcal{E}|, H)` (self-loops included), or the sparse
          adjacency holding :math:`\alpha` for sparse input.
    """
    def __init__(
        self,
        in_channels: Union[int, Tuple[int, int]],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        edge_dim: Optional[int] = None,
        fill_value: Union[float, Tensor, str] = 'mean',
        bias: bool = True,
        residual: bool = False,
        **kwargs,
    ):
        kwargs.setdefault('aggr', 'add')
        super().__init__(node_dim=0, **kwargs)
        # The fused op sums attention-weighted messages into the targets.
        if self.aggr != 'add' or self.flow != 'source_to_target':
            raise NotImplementedError(
                f"FusedGATConv supports aggr='add' and flow="
                f"'source_to_target' only (got aggr={self.aggr!r}, "
                f"flow={self.flow!r})")
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"'heads' must be a positive integer (got {heads})")
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"'out_channels' must be a positive integer "
                             f"(got {out_channels})")
        if not 0.0 <= float(dropout) <= 1.0:
            raise ValueError(f"'dropout' must lie in [0, 1] (got {dropout})")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.edge_dim = edge_dim
        self.fill_value = fill_value
        self.residual = residual

        # Same modules and names as GATConv, so state dicts load both ways.
        self.lin = self.lin_src = self.lin_dst = None
        if isinstance(in_channels, int):
            self.lin = Linear(in_channels, heads * out_channels, bias=False,
                              weight_initializer='glorot')
        else:
            self.lin_src = Linear(in_channels[0], heads * out_channels, False,
                                  weight_initializer='glorot')
            self.lin_dst = Linear(in_channels[1], heads * out_channels, False,
                                  weight_initializer='glorot')

        self.att_src = Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = Parameter(torch.empty(1, heads, out_channels))

        if edge_dim is not None:
            self.lin_edge = Linear(edge_dim, heads * out_channels, bias=False,
                                   weight_initializer='glorot')
            self.att_edge = Parameter(torch.empty(1, heads, out_channels))
        else:
            self.lin_edge = None
            self.register_parameter('att_edge', None)

        total_out_channels = out_channels * (heads if concat else 1)
        if residual:
            self.res = Linear(
                in_channels if isinstance(in_channels, int) else in_channels[1],
                total_out_channels, bias=False, weight_initializer='glorot')
        else:
            self.register_parameter('res', None)

        if bias:
            self.bias = Parameter(torch.empty(total_out_channels))
        else:
            self.register_parameter('bias', None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        for lin in (self.lin, self.lin_src, self.lin_dst, self.lin_edge, self.res):
            if lin is not None:
                lin.reset_parameters()
        glorot(self.att_src)
        glorot(self.att_dst)
        glorot(self.att_edge)
        zeros(self.bias)

    def forward(
        self,
        x: Union[Tensor, Tuple[Tensor, Optional[Tensor]]],
        edge_index: Union[Tensor, SparseTensor],
        edge_attr: Optional[Tensor] = None,
        size: Optional[Tuple[int, int]] = None,
        return_attention_weights: Optional[bool] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]],
               Tuple[Tensor, SparseTensor]]:
        r"""Runs the layer.

        Args:
            x (torch.Tensor or (torch.Tensor, torch.Tensor)): Node features,
                or source and target features (target may be :obj:`None`).
            edge_index (torch.Tensor or SparseTensor): ``[2, E]`` indices
                (row 0 source, row 1 target), a ``torch.sparse`` COO/CSR/CSC
                or a ``SparseTensor`` adjacency (rows are targets).
            edge_attr (torch.Tensor, optional): Edge features ``[E, D]``.
            size ((int, int), optional): ``(num_src, num_dst)`` for a dense
                :obj:`edge_index`.
            return_attention_weights (bool, optional): If truthy, also return
                the attention weights (as GATConv does).
        """
        H, C = self.heads, self.out_channels
        x_src, x_dst = split_node_features(x)

        res: Optional[Tensor] = None
        if x_dst is not None and self.res is not None:
            res = self.res(x_dst)
        # Projections exactly as GATConv: a shared `lin`, or `lin_src` /
        # `lin_dst` for a bipartite layer (also when given a single tensor).
        if self.lin is not None:
            h_src = self.lin(x_src).view(-1, H, C)
            if isinstance(x, Tensor):
                h_dst = h_src
            else:
                h_dst = None if x_dst is None else self.lin(x_dst).view(-1, H, C)
        else:
            h_src = self.lin_src(x_src).view(-1, H, C)
            h_dst = None if x_dst is None else self.lin_dst(x_dst).view(-1, H, C)

        lin_src = self.lin if self.lin is not None else self.lin_src
        lin_dst = self.lin if self.lin is not None else self.lin_dst
        alpha_src = self._node_logits(x_src, lin_src, h_src, self.att_src)
        if h_dst is None:
            alpha_dst = None
        else:
            alpha_dst = self._node_logits(x_dst, lin_dst, h_dst, self.att_dst)

        out, weights = self._attend(h_src, alpha_src, alpha_dst, edge_index,
                                    edge_attr, size,
                                    None if h_dst is None else h_dst.size(0),
                                    bool(return_attention_weights))
        if self.concat:
            out = out.reshape(-1, H * C)
        else:
            out = out.mean(dim=1)
        if res is not None:
            out = out + res
        if self.bias is not None:
            out = out + self.bias
        if return_attention_weights:
            return out, weights
        return out

    def _attend(self, h_src: Tensor, alpha_src: Tensor,
                alpha_dst: Optional[Tensor], edge_index: Any,
                edge_attr: Optional[Tensor], size: Optional[Tuple[int, int]],
                num_dst: Optional[int], need_weights: bool) -> Tuple[Tensor, Any]:
        H = self.heads
        device = h_src.device
        graph = prepare_graph(edge_index, edge_attr, size, h_src.size(0),
                              num_dst, device,
                              add_self_loops=self.add_self_loops,
                              fill_value=self.fill_value,
                              edge_dim=self.edge_dim)
        if alpha_dst is None:  # no target features: source logits only
            alpha_dst = alpha_src.new_zeros(graph.csr.num_dst, H)
        alpha_edge = self._edge_logits(graph.edge_attr, graph.csr.num_edges)

        p = float(self.dropout) if self.training else 0.0
        seed = draw_dropout_seed(device) if p > 0 else None
        out = fused_gat_attention(h_src, alpha_src, alpha_dst, graph.csr,
                                  alpha_edge, negative_slope=self.negative_slope,
                                  dropout=p, training=self.training, seed=seed)
        if not need_weights:
            return out, None
        alpha = gat_attention_weights(alpha_src, alpha_dst, graph.csr, alpha_edge,
                                      negative_slope=self.negative_slope)
        if p > 0:  # the weights actually used, as GATConv returns them
            keep = dropout_keep_mask(seed, alpha.size(0), H, p, device)
            alpha = alpha * keep.to(alpha.dtype) * (1.0 / (1.0 - p) if p < 1 else 0.0)
        return out, attention_output(graph, alpha)

    def _node_logits(self, x: Tensor, lin: Linear, h: Tensor, att: Tensor) -> Tensor:
        r""":math:`\mathbf{a}^{\top} \mathbf{\Theta} \mathbf{x}` per head,
        ``[N, H]``, computed as :math:`\mathbf{x}^{\top} (\mathbf{\Theta}^{\top}
        \mathbf{a})`: the folded form has no :math:`N \times H C` product in
        forward and none in backward (GATConv's :obj:`(h * att).sum(-1)` has
        one in each)."""
        weight = lin.weight
        if is_uninitialized_parameter(weight):  # pragma: no cover (lin ran)
            return (h * att).sum(dim=-1)
        H, C = self.heads, self.out_channels
        return x @ torch.einsum('hcd,hc->dh', weight.view(H, C, -1), att[0])

    def _edge_logits(self, edge_attr: Optional[Tensor], num_edges: int) -> Optional[Tensor]:
        r""":math:`\mathbf{e}_{i,j}^{\top} (\mathbf{\Theta}_e^{\top}
        \mathbf{a}_e)` per head, ``[E, H]``, or :obj:`None`."""
        if edge_attr is None or self.lin_edge is None or num_edges == 0:
            return None
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        H, C = self.heads, self.out_channels
        weight = self.lin_edge.weight
        if is_uninitialized_parameter(weight):  # lazy edge_dim=-1: GATConv's way
            proj = self.lin_edge(edge_attr).view(-1, H, C)
            return (proj * self.att_edge).sum(dim=-1)
        folded = torch.einsum('hcd,hc->dh', weight.view(H, C, -1), self.att_edge[0])
        return edge_attr @ folded

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads})')
