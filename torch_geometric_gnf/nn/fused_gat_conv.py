r"""A drop-in replacement for PyG's :class:`~torch_geometric.nn.GATConv`
whose attention aggregation runs as one fused, memory-lean op."""
from typing import Any, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear, is_uninitialized_parameter
from torch_geometric.nn.inits import glorot, zeros
from torch_geometric.typing import SparseTensor, torch_sparse
from torch_geometric.utils import (add_self_loops, is_torch_sparse_tensor,
                                   remove_self_loops, to_edge_index,
                                   to_torch_coo_tensor, to_torch_csc_tensor)

from torch_geometric_gnf.ops import (CSRGraph, build_csr, cached_csr,
                                     clear_csr_cache, dropout_keep_mask,
                                     fused_gat_attention,
                                     gat_attention_weights)
from torch_geometric_gnf.ops.gat_attention import draw_dropout_seed
from torch_geometric_gnf.utils import check_node_features, input_checks_enabled


class _Graph(NamedTuple):
    r"""The graph as the fused op sees it, plus what is needed to hand the
    attention weights back in the caller's format."""
    edge_index: Tensor           # [2, E'], row 0 source j, row 1 target i
    #                              (dense: as given, before self-loops)
    edge_attr: Optional[Tensor]  # [E, D] or [E] in the same edge order
    csr: CSRGraph
    kind: str                    # 'dense', 'torch_sparse' or 'sparse_tensor'
    adj: Any                     # sparse: the (self-looped) adjacency; dense:
    #                              the number of added self-loops or None


# CSR graphs of dense edge_index tensors (self-looped as GATConv does, or as
# given) live in ``ops.cached_csr``'s cache under their own variant key:
# layers of a deep stack called on the same graph share one CSR instead of
# sorting E edges each. Only the CSR is kept, with int32 node indices when
# they fit: the looped edge_index is rebuilt on demand (attention weights).


def _looped_edge_index(edge_index: Tensor, loops: int,
                       dtype: Optional[torch.dtype] = None) -> Tensor:
    r""":obj:`edge_index` without its self-loops, followed by one loop per
    node in :obj:`[0, loops)` (GATConv's ``remove_self_loops`` +
    ``add_self_loops``)."""
    dtype = dtype or edge_index.dtype
    keep = edge_index[0] != edge_index[1]
    arange = torch.arange(loops, dtype=dtype, device=edge_index.device)
    return torch.cat([edge_index[:, keep].to(dtype), arange.view(1, -1).expand(2, -1)],
                     dim=1)


def _dense_csr(edge_index: Tensor, num_src: int, num_dst: int,
               loops: Optional[int]) -> CSRGraph:
    r"""The (cached) CSR of :obj:`edge_index`, self-looped for :obj:`loops`
    nodes unless :obj:`loops` is :obj:`None`."""
    def build() -> CSRGraph:
        # Range check once per graph (a cache hit was checked when built).
        if input_checks_enabled() and edge_index.numel() > 0:
            for row, name, n in ((0, 'source', num_src), (1, 'target', num_dst)):
                lo, hi = int(edge_index[row].min()), int(edge_index[row].max())
                if lo < 0 or hi >= n:
                    raise ValueError(
                        f"'edge_index' contains out-of-range {name} indices "
                        f"(found range [{lo}, {hi}], but there are {n} "
                        f"{name} nodes)")
        # int32 indices halve the CSR's index memory; the kernels take both.
        small = max(num_src, num_dst) < 2**31
        dtype = torch.int32 if small else torch.int64
        graph = edge_index.to(dtype) if loops is None else \
            _looped_edge_index(edge_index, loops, dtype)
        return build_csr(graph, num_src, num_dst)

    return cached_csr(edge_index, num_src, num_dst,
                      variant=('FusedGATConv', loops), build=build)


def clear_graph_cache() -> None:
    r"""Forgets the CSR graphs remembered by :class:`FusedGATConv` (and every
    other :func:`~torch_geometric_gnf.ops.cached_csr` entry)."""
    clear_csr_cache()


def _with_values(adj: Tensor, values: Tensor) -> Tensor:
    r"""The sparse pattern of :obj:`adj` holding :obj:`values` ``[E, H]``,
    shape ``[num_dst, num_src, H]`` (also for an :obj:`adj` with
    multi-dimensional values, whose extra dimensions are dropped)."""
    size = tuple(adj.shape[:2]) + tuple(values.shape[1:])
    if adj.layout == torch.sparse_coo:
        return torch.sparse_coo_tensor(adj._indices(), values, size).coalesce()
    if adj.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(),
                                       values, size)
    return torch.sparse_csc_tensor(adj.ccol_indices(), adj.row_indices(),
                                   values, size)


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
    * The self-looped graph and its CSR are cached per :obj:`edge_index`
      tensor (weak references; an in-place edit invalidates the entry), so
      repeated calls and stacked layers sort the edges once.
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
        x_src, x_dst = self._split_input(x)

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

    # Graph preparation keeps Python-side caches and calls an opaque fused
    # kernel: torch.compile traces around it (one graph break per layer).
    @torch.compiler.disable
    def _attend(self, h_src: Tensor, alpha_src: Tensor,
                alpha_dst: Optional[Tensor], edge_index: Any,
                edge_attr: Optional[Tensor], size: Optional[Tuple[int, int]],
                num_dst: Optional[int], need_weights: bool) -> Tuple[Tensor, Any]:
        H = self.heads
        device = h_src.device
        graph = self._prepare_graph(edge_index, edge_attr, size, h_src.size(0),
                                    num_dst, device)
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
        return out, self._attention_output(graph, alpha)

    # ------------------------------------------------------------------
    # Input handling
    # ------------------------------------------------------------------
    def _split_input(self, x: Any) -> Tuple[Tensor, Optional[Tensor]]:
        if isinstance(x, Tensor):
            pair = (x, x)
        elif isinstance(x, (tuple, list)) and len(x) == 2:
            pair = (x[0], x[1])
        else:
            raise TypeError(f"'x' must be a Tensor or a pair (x_src, x_dst) of "
                            f"Tensors (got {type(x).__name__})")
        for name, t in (('x_src', pair[0]), ('x_dst', pair[1])):
            if t is None and name == 'x_dst':
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"'{name}' must be a Tensor (got {type(t).__name__})")
            if not torch.compiler.is_compiling():  # value checks break graphs
                check_node_features(t, name if not isinstance(x, Tensor) else 'x')
            if t.dim() != 2:
                raise ValueError(f"'{name}' must have shape [num_nodes, "
                                 f"channels] (got {tuple(t.shape)}); static "
                                 f"graphs are not supported, as in GATConv")
        if pair[1] is not None and pair[1].device != pair[0].device:
            raise ValueError(f"'x_src' is on {pair[0].device} but 'x_dst' is on "
                             f"{pair[1].device}")
        return pair

    def _self_loop_count(self, num_src: int, num_dst: Optional[int],
                         size: Optional[Tuple[int, int]]) -> int:
        # GATConv adds loops only for nodes that are both source and target.
        if size is not None:
            return min(s for s in size if s is not None)
        return num_src if num_dst is None else min(num_src, num_dst)

    def _prepare_graph(self, edge_index: Any, edge_attr: Optional[Tensor],
                       size: Optional[Tuple[int, int]], num_src: int,
                       num_dst: Optional[int], device: torch.device) -> _Graph:
        if edge_attr is not None:
            if not isinstance(edge_attr, Tensor):
                raise TypeError(f"'edge_attr' must be a Tensor or None (got "
                                f"{type(edge_attr).__name__})")
            if edge_attr.device != device:
                raise ValueError(f"'edge_attr' is on {edge_attr.device} but "
                                 f"'x' is on {device}")
        if isinstance(edge_index, SparseTensor):
            return self._from_sparse_tensor(edge_index, edge_attr, num_src,
                                            num_dst, device)
        if isinstance(edge_index, Tensor) and is_torch_sparse_tensor(edge_index):
            return self._from_torch_sparse(edge_index, edge_attr, num_src,
                                           num_dst, device)
        if isinstance(edge_index, Tensor) and edge_index.layout == torch.strided:
            return self._from_dense(edge_index, edge_attr, size, num_src,
                                    num_dst, device)
        got = type(edge_index).__name__
        if isinstance(edge_index, Tensor):
            got += f' with layout {edge_index.layout}'
        raise TypeError(f"'edge_index' must be a [2, num_edges] integer Tensor, "
                        f"a torch.sparse adjacency or a torch_sparse "
                        f"SparseTensor (got {got})")

    @staticmethod
    def _check_sizes(num_src: int, num_dst: Optional[int],
                     adj_src: int, adj_dst: int) -> None:
        if num_src != adj_src or (num_dst is not None and num_dst != adj_dst):
            raise ValueError(f"The sparse adjacency has shape [{adj_dst}, "
                             f"{adj_src}] ([num_dst, num_src]) but the node "
                             f"features have {num_src} source and "
                             f"{num_dst if num_dst is not None else '?'} "
                             f"target nodes")

    def _check_edge_attr(self, edge_attr: Optional[Tensor], num_edges: int) -> None:
        if edge_attr is not None and edge_attr.size(0) != num_edges:
            raise ValueError(f"'edge_attr' has {edge_attr.size(0)} rows but "
                             f"the graph has {num_edges} edges")

    def _from_dense(self, edge_index: Tensor, edge_attr: Optional[Tensor],
                    size: Optional[Tuple[int, int]], num_src: int,
                    num_dst: Optional[int], device: torch.device) -> _Graph:
        if edge_index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"'edge_index' must have dtype torch.int64 or "
                             f"torch.int32 (got {edge_index.dtype})")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'edge_index' must have shape [2, num_edges] "
                             f"(got {tuple(edge_index.shape)})")
        if edge_index.device != device:
            raise ValueError(f"'edge_index' is on {edge_index.device} but 'x' "
                             f"is on {device}")
        if size is not None:
            if len(size) != 2:
                raise ValueError(f"'size' must be (num_src, num_dst) (got {size})")
            if size[0] is not None and size[0] != num_src:
                raise ValueError(f"'size[0]' is {size[0]} but 'x' has "
                                 f"{num_src} source nodes")
            if size[1] is not None and num_dst is not None and size[1] != num_dst:
                raise ValueError(f"'size[1]' is {size[1]} but 'x' has "
                                 f"{num_dst} target nodes")
        # As MessagePassing: without target features or a size, the targets
        # are the source nodes.
        loops_for = self._self_loop_count(num_src, num_dst, size)
        if num_dst is None:
            num_dst = size[1] if size is not None and size[1] is not None else num_src
        self._check_edge_attr(edge_attr, edge_index.size(1))
        loops = loops_for if self.add_self_loops else None
        csr = _dense_csr(edge_index, num_src, num_dst, loops)
        if loops is not None and edge_attr is not None:
            # GATConv's loop features: fill_value, or a reduction over each
            # node's incoming (non-loop) edges. The reduction gets int64
            # indices: torch 2.13's scatter_add backward is wrong for
            # expanded int32 indices (which PyG's scatter uses).
            keep = edge_index[0] != edge_index[1]
            _, edge_attr = add_self_loops(
                edge_index[:, keep].long(), edge_attr[keep],
                fill_value=self.fill_value, num_nodes=loops)
        return _Graph(edge_index, edge_attr, csr, 'dense', loops)

    def _from_torch_sparse(self, adj: Tensor, edge_attr: Optional[Tensor],
                           num_src: int, num_dst: Optional[int],
                           device: torch.device) -> _Graph:
        if adj.dim() < 2:
            raise ValueError(f"A sparse 'edge_index' must be a 2-D adjacency "
                             f"(got shape {tuple(adj.shape)})")
        if adj.device != device:
            raise ValueError(f"'edge_index' is on {adj.device} but 'x' is on {device}")
        adj_dst, adj_src = adj.size(0), adj.size(1)
        self._check_sizes(num_src, num_dst, adj_src, adj_dst)
        layout = adj.layout
        if self.add_self_loops:
            if edge_attr is not None:
                raise NotImplementedError(
                    "'edge_attr' together with 'add_self_loops' is not "
                    "supported for a torch.sparse 'edge_index' (as in "
                    "GATConv); pass the edge features as the sparse values, "
                    "or use a dense edge_index")
            if layout == torch.sparse_csc:
                # PyG's self-loop helpers know COO and CSR; go through COO.
                index, value = to_edge_index(adj)
                adj = to_torch_coo_tensor(index, value, (adj_dst, adj_src))
            adj, _ = remove_self_loops(adj)
            adj, _ = add_self_loops(adj, fill_value=self.fill_value)
        index, value = to_edge_index(adj)  # index: [target, source]
        if edge_attr is None and value.dim() > 1:  # hybrid values = features
            edge_attr = value
        self._check_edge_attr(edge_attr, index.size(1))
        edge_index = index.flip(0)
        csr = build_csr(edge_index, num_src, adj_dst)
        return _Graph(edge_index, edge_attr, csr, 'torch_sparse', (adj, layout))

    def _from_sparse_tensor(self, adj: SparseTensor, edge_attr: Optional[Tensor],
                            num_src: int, num_dst: Optional[int],
                            device: torch.device) -> _Graph:
        adj_dst, adj_src = adj.size(0), adj.size(1)
        self._check_sizes(num_src, num_dst, adj_src, adj_dst)
        if self.add_self_loops:
            if self.edge_dim is not None:
                raise NotImplementedError(
                    "The usage of 'edge_attr' and 'add_self_loops' "
                    "simultaneously is not supported for a SparseTensor "
                    "'edge_index' (as in GATConv)")
            adj = torch_sparse.set_diag(adj)
        row, col, value = adj.coo()
        if edge_attr is None:
            edge_attr = value
        self._check_edge_attr(edge_attr, row.numel())
        edge_index = torch.stack([col, row], dim=0)
        csr = build_csr(edge_index, num_src, adj_dst)
        return _Graph(edge_index, edge_attr, csr, 'sparse_tensor', adj)

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

    def _attention_output(self, graph: _Graph, alpha: Tensor) -> Any:
        if graph.kind == 'dense':
            loops = graph.adj
            if loops is None:
                return graph.edge_index, alpha
            return _looped_edge_index(graph.edge_index, loops), alpha
        if graph.kind == 'sparse_tensor':
            return graph.adj.set_value(alpha, layout='coo')
        adj, layout = graph.adj
        if layout == torch.sparse_csc and adj.layout != torch.sparse_csc:
            # self-loops went through COO: hand back a CSC adjacency again
            index, _ = to_edge_index(adj)
            weights = to_torch_csc_tensor(index, alpha, tuple(adj.shape[:2]))
            return weights, weights.values()
        return _with_values(adj, alpha), alpha

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads})')
