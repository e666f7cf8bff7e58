r"""A drop-in replacement for PyG's :class:`~torch_geometric.nn.GATv2Conv`
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
                                                  prepare_graph,
                                                  split_node_features)
from torch_geometric_gnf.ops import (dropout_keep_mask, fused_gatv2_attention,
                                     gatv2_attention_weights)
from torch_geometric_gnf.ops.gat_attention import draw_dropout_seed


class FusedGATv2Conv(MessagePassing):
    r"""The GATv2 operator from the `"How Attentive are Graph Attention
    Networks?" <https://arxiv.org/abs/2105.14491>`_ paper, a drop-in
    replacement for :class:`torch_geometric.nn.GATv2Conv` (same constructor,
    parameter names and shapes, forward signature and outputs) whose
    attention aggregation runs through
    :func:`torch_geometric_gnf.ops.fused_gatv2_attention`.

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i) \cup \{ i \}}
        \alpha_{i,j}\mathbf{\Theta}_{s}\mathbf{x}_{j}, \qquad
        \alpha_{i,j} = \operatorname{softmax}_{j}\Big(\mathbf{a}^{\top}
        \mathrm{LeakyReLU}\big(\mathbf{\Theta}_{s} \mathbf{x}_j +
        \mathbf{\Theta}_{t} \mathbf{x}_{i} + \mathbf{\Theta}_{e}
        \mathbf{e}_{i,j}\big)\Big),

    per head (:math:`\mathbf{\Theta}_s` is :obj:`lin_l`,
    :math:`\mathbf{\Theta}_t` is :obj:`lin_r`, both with a bias when
    :obj:`bias`), heads concatenated or averaged (:obj:`concat`), followed by
    the optional residual and bias. The edge term is present only with
    :obj:`edge_dim` and :obj:`edge_attr`.

    What differs from :class:`~torch_geometric.nn.GATv2Conv` is only how it
    is computed:

    * GATv2's score needs the :math:`E \times H \times C` tensor
      :math:`\mathbf{\Theta}_{s} \mathbf{x}_j + \mathbf{\Theta}_{t}
      \mathbf{x}_i (+ \mathbf{\Theta}_{e} \mathbf{e}_{i,j})`; PyG materialises
      it (and saves it for backward), the fused kernels recompute it per
      edge in forward and backward. With :obj:`edge_dim`, not even the
      :math:`E \times HC` edge projection is formed. What autograd keeps is
      the inputs, the output and an :math:`N \times H` log-sum-exp.
    * Attention dropout uses the counter-based mask of
      :func:`~torch_geometric_gnf.ops.dropout_keep_mask` (each weight is
      dropped with probability :obj:`dropout`, but not with the same bits as
      GATv2Conv); the seed comes from the default generator, so
      :class:`ReversibleMessagePassing`'s RNG replay reproduces the mask.
    * Graph handling (self-loops, :obj:`fill_value`, sparse and bipartite
      inputs, the per-:obj:`edge_index` CSR cache) is shared with
      :class:`FusedGATConv` and matches GATConv's and GATv2Conv's.
    * Attention weights are computed only when asked for
      (:obj:`return_attention_weights`); in training mode with dropout they
      include the mask and the :math:`1/(1-p)` scale, as GATv2Conv's do.

    Args:
        in_channels (int or tuple): Size of each input sample, or :obj:`-1`
            to derive it lazily. A tuple gives source and target sizes of a
            bipartite graph.
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
            the added self-loops (a value or a reduction: :obj:`"add"`,
            :obj:`"mean"`, :obj:`"min"`, :obj:`"max"`, :obj:`"mul"`).
            (default: :obj:`"mean"`)
        bias (bool, optional): Learn additive biases (in :obj:`lin_l`,
            :obj:`lin_r` and at the output). (default: :obj:`True`)
        share_weights (bool, optional): Use the same matrix for source and
            target nodes (:obj:`lin_r` is :obj:`lin_l`). (default: :obj:`False`)
        residual (bool, optional): Add a learnable skip connection.
            (default: :obj:`False`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing` (only the
            defaults :obj:`aggr="sum"`, :obj:`flow="source_to_target"`).

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
        share_weights: bool = False,
        residual: bool = False,
        **kwargs,
    ):
        super().__init__(node_dim=0, **kwargs)
        # The fused op sums attention-weighted messages into the targets.
        if self.aggr not in ('add', 'sum') or self.flow != 'source_to_target':
            raise NotImplementedError(
                f"FusedGATv2Conv supports aggr='sum' and flow="
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
        self.share_weights = share_weights

        # Same modules and names as GATv2Conv, so state dicts load both ways.
        in_src, in_dst = (in_channels, in_channels) if \
            isinstance(in_channels, int) else in_channels
        self.lin_l = Linear(in_src, heads * out_channels, bias=bias,
                            weight_initializer='glorot')
        if share_weights:
            self.lin_r = self.lin_l
        else:
            self.lin_r = Linear(in_dst, heads * out_channels, bias=bias,
                                weight_initializer='glorot')

        self.att = Parameter(torch.empty(1, heads, out_channels))

        if edge_dim is not None:
            self.lin_edge = Linear(edge_dim, heads * out_channels, bias=False,
                                   weight_initializer='glorot')
        else:
            self.lin_edge = None

        total_out_channels = out_channels * (heads if concat else 1)
        if residual:
            self.res = Linear(in_dst, total_out_channels, bias=False,
                              weight_initializer='glorot')
        else:
            self.register_parameter('res', None)

        if bias:
            self.bias = Parameter(torch.empty(total_out_channels))
        else:
            self.register_parameter('bias', None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()
        if self.lin_edge is not None:
            self.lin_edge.reset_parameters()
        if self.res is not None:
            self.res.reset_parameters()
        glorot(self.att)
        zeros(self.bias)

    def forward(
        self,
        x: Union[Tensor, Tuple[Tensor, Tensor]],
        edge_index: Union[Tensor, SparseTensor],
        edge_attr: Optional[Tensor] = None,
        return_attention_weights: Optional[bool] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]],
               Tuple[Tensor, SparseTensor]]:
        r"""Runs the layer.

        Args:
            x (torch.Tensor or (torch.Tensor, torch.Tensor)): Node features,
                or source and target features.
            edge_index (torch.Tensor or SparseTensor): ``[2, E]`` indices
                (row 0 source, row 1 target), a ``torch.sparse`` COO/CSR/CSC
                or a ``SparseTensor`` adjacency (rows are targets).
            edge_attr (torch.Tensor, optional): Edge features ``[E, D]``.
            return_attention_weights (bool, optional): If truthy, also return
                the attention weights (as GATv2Conv does).
        """
        H, C = self.heads, self.out_channels
        x_src, x_dst = split_node_features(x)
        if x_dst is None:
            raise ValueError("FusedGATv2Conv needs target node features: "
                             "'x' must be a Tensor or a pair (x_src, x_dst) "
                             "of Tensors (as in GATv2Conv)")
        res = self.res(x_dst) if self.res is not None else None
        x_l = self.lin_l(x_src).view(-1, H, C)
        if isinstance(x, Tensor) and self.share_weights:
            x_r = x_l
        else:
            x_r = self.lin_r(x_dst).view(-1, H, C)

        out, weights = self._attend(x_l, x_r, edge_index, edge_attr,
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

    def _attend(self, x_l: Tensor, x_r: Tensor, edge_index: Any,
                edge_attr: Optional[Tensor],
                need_weights: bool) -> Tuple[Tensor, Any]:
        device = x_l.device
        graph = prepare_graph(edge_index, edge_attr, None, x_l.size(0),
                              x_r.size(0), device,
                              add_self_loops=self.add_self_loops,
                              fill_value=self.fill_value,
                              edge_dim=self.edge_dim)
        edge_attr, edge_weight = self._edge_inputs(graph.edge_attr)
        p = float(self.dropout) if self.training else 0.0
        seed = draw_dropout_seed(device) if p > 0 else None
        att = self.att[0]
        out = fused_gatv2_attention(x_l, x_r, att, graph.csr, edge_attr,
                                    edge_weight,
                                    negative_slope=self.negative_slope,
                                    dropout=p, training=self.training,
                                    seed=seed)
        if not need_weights:
            return out, None
        alpha = gatv2_attention_weights(x_l, x_r, att, graph.csr, edge_attr,
                                        edge_weight,
                                        negative_slope=self.negative_slope)
        if p > 0:  # the weights actually used, as GATv2Conv returns them
            keep = dropout_keep_mask(seed, alpha.size(0), self.heads, p, device)
            alpha = alpha * keep.to(alpha.dtype) * (1.0 / (1.0 - p) if p < 1 else 0.0)
        return out, attention_output(graph, alpha)

    def _edge_inputs(self, edge_attr: Optional[Tensor]
                     ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        r"""Edge features ``[E, D]`` and :obj:`lin_edge.weight` ``[H C, D]``
        for the fused op (which never forms their ``[E, H C]`` product)."""
        if edge_attr is None:
            return None, None
        if self.lin_edge is None:
            raise ValueError("'edge_attr' was given but the layer has no "
                             "edge features (construct it with 'edge_dim')")
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        if is_uninitialized_parameter(self.lin_edge.weight):
            self.lin_edge(edge_attr[:0])  # lazy edge_dim=-1: initialise
        return edge_attr, self.lin_edge.weight

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads})')
