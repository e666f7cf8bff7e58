r"""Graph preparation shared by the fused attention convolutions
(:class:`~torch_geometric_gnf.nn.FusedGATConv` and its siblings): turns the
graph argument of a GATConv-style layer into the destination-sorted
:class:`~torch_geometric_gnf.ops.CSRGraph` the fused ops take, and hands
attention weights back in the caller's format.

A layer with GATConv's graph attributes (:obj:`add_self_loops`,
:obj:`fill_value`, :obj:`edge_dim`) calls

* :func:`split_node_features` on its :obj:`x` argument,
* :func:`prepare_graph` on :obj:`edge_index` (a ``[2, E]`` tensor, a
  ``torch.sparse`` COO/CSR/CSC or a ``torch_sparse.SparseTensor``
  adjacency), :obj:`edge_attr` and :obj:`size`, which returns a
  :class:`FusedGraph` (the CSR, the edge features in CSR input order with
  self-loop features filled in as GATConv does),
* :func:`attention_output` to return :obj:`(edge_index, alpha)` (or the
  sparse adjacency holding :obj:`alpha`) for :obj:`return_attention_weights`.

Caching: the CSR of a dense :obj:`edge_index` (self-looped or as given) comes
from :func:`~torch_geometric_gnf.ops.cached_csr`, keyed by the tensor and the
self-loop variant (shared by every layer kind, so a stack of layers on one
graph sorts its edges once), and verified against the tensor's contents on
every hit, so it never changes a result. While tracing (:func:`torch.compile`,
:func:`torch.export.export`, :func:`torch.jit.trace`) the CSR is built by
traceable ops and nothing is cached.
"""
from typing import Any, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.typing import SparseTensor, torch_sparse
from torch_geometric.utils import add_self_loops as pyg_add_self_loops
from torch_geometric.utils import (is_torch_sparse_tensor,
                                   remove_self_loops, to_edge_index,
                                   to_torch_coo_tensor, to_torch_csc_tensor)

from torch_geometric_gnf.ops import CSRGraph, build_csr, cached_csr, clear_csr_cache
from torch_geometric_gnf.ops.csr import check_index_range
from torch_geometric_gnf.utils import check_node_features, input_checks_enabled
from torch_geometric_gnf.utils.checks import all_finite

FillValue = Union[float, Tensor, str]


class FusedGraph(NamedTuple):
    r"""The graph as the fused op sees it, plus what is needed to hand the
    attention weights back in the caller's format."""
    edge_index: Tensor           # [2, E'], row 0 source j, row 1 target i
    #                              (dense: as given, before self-loops)
    edge_attr: Optional[Tensor]  # [E, D] or [E], in the CSR's input order
    csr: CSRGraph
    kind: str                    # 'dense', 'torch_sparse' or 'sparse_tensor'
    adj: Any                     # sparse: the (self-looped) adjacency; dense:
    #                              the number of added self-loops or None


def split_node_features(x: Any) -> Tuple[Tensor, Optional[Tensor]]:
    r"""``(x_src, x_dst)`` of a layer's :obj:`x` argument (a tensor, or a
    pair whose target part may be :obj:`None`), checked (NaN/Inf only when
    the input checks are on and not tracing)."""
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
        check_node_features(t, name if not isinstance(x, Tensor) else 'x')
        if t.dim() != 2:
            raise ValueError(f"'{name}' must have shape [num_nodes, "
                             f"channels] (got {tuple(t.shape)}); static "
                             f"graphs are not supported, as in GATConv")
    if pair[1] is not None and pair[1].device != pair[0].device:
        raise ValueError(f"'x_src' is on {pair[0].device} but 'x_dst' is on "
                         f"{pair[1].device}")
    return pair


def looped_edge_index(edge_index: Tensor, loops: int,
                      dtype: Optional[torch.dtype] = None,
                      keep: Optional[Tensor] = None) -> Tensor:
    r""":obj:`edge_index` without its self-loops, followed by one loop per
    node in :obj:`[0, loops)` (GATConv's ``remove_self_loops`` +
    ``add_self_loops``). :obj:`keep` is the non-loop mask if already
    computed (one mask for the edges and their features gives the traced
    graph one data-dependent edge count, not two)."""
    dtype = dtype or edge_index.dtype
    if keep is None:
        keep = edge_index[0] != edge_index[1]
    arange = torch.arange(loops, dtype=dtype, device=edge_index.device)
    return torch.cat([edge_index[:, keep].to(dtype),
                      arange.view(1, -1).expand(2, -1)], dim=1)


def _dense_csr(edge_index: Tensor, num_src: int, num_dst: int,
               loops: Optional[int], keep: Optional[Tensor] = None) -> CSRGraph:
    r"""The (cached, content-verified) CSR of :obj:`edge_index`, self-looped
    for :obj:`loops` nodes unless :obj:`loops` is :obj:`None` (:obj:`keep`:
    the non-loop mask). Node indices are int32 when they fit (half the
    CSR's index memory)."""
    dtype = torch.int32 if max(num_src, num_dst) < 2**31 else torch.int64

    def graph() -> Tensor:
        # Bounds first, on the caller's values: a narrowing cast could wrap
        # a bad index into range, and dropping self-loops could hide one.
        check_index_range(edge_index, num_src, num_dst, 'FusedGATConv')
        if loops is None:
            return edge_index.to(dtype)
        return looped_edge_index(edge_index, loops, dtype, keep)

    return cached_csr(edge_index, num_src, num_dst,
                      variant=('self_loops', loops), graph=graph)


def clear_graph_cache() -> None:
    r"""Forgets the CSR graphs remembered by the fused convolutions (and
    every other :func:`~torch_geometric_gnf.ops.cached_csr` entry)."""
    clear_csr_cache()


def _self_loop_count(num_src: int, num_dst: Optional[int],
                     size: Optional[Tuple[int, int]]) -> int:
    # GATConv adds loops only for nodes that are both source and target.
    if size is not None:
        return min(s for s in size if s is not None)
    return num_src if num_dst is None else min(num_src, num_dst)


def _check_edge_attr(edge_attr: Optional[Tensor], num_edges: int) -> None:
    if edge_attr is not None and edge_attr.size(0) != num_edges:
        raise ValueError(f"'edge_attr' has {edge_attr.size(0)} rows but "
                         f"the graph has {num_edges} edges")


def _check_sizes(num_src: int, num_dst: Optional[int], adj_src: int,
                 adj_dst: int) -> None:
    if num_src != adj_src or (num_dst is not None and num_dst != adj_dst):
        raise ValueError(f"The sparse adjacency has shape [{adj_dst}, "
                         f"{adj_src}] ([num_dst, num_src]) but the node "
                         f"features have {num_src} source and "
                         f"{num_dst if num_dst is not None else '?'} "
                         f"target nodes")


def prepare_graph(edge_index: Any, edge_attr: Optional[Tensor],
                  size: Optional[Tuple[int, int]], num_src: int,
                  num_dst: Optional[int], device: torch.device, *,
                  add_self_loops: bool, fill_value: FillValue,
                  edge_dim: Optional[int]) -> FusedGraph:
    r"""The :class:`FusedGraph` of a GATConv-style layer call.

    Args:
        edge_index: ``[2, E]`` int32/int64 indices (row 0 source, row 1
            target), a ``torch.sparse`` COO/CSR/CSC or a ``SparseTensor``
            adjacency (rows are targets).
        edge_attr: Edge features ``[E, D]`` / ``[E]`` or :obj:`None`.
        size: ``(num_src, num_dst)`` for a dense :obj:`edge_index`, or
            :obj:`None`.
        num_src: Number of source nodes (rows of ``x_src``).
        num_dst: Number of target nodes (rows of ``x_dst``), or :obj:`None`
            without target features.
        device: Device of the node features.
        add_self_loops, fill_value, edge_dim: The layer's attributes, as in
            :class:`~torch_geometric.nn.GATConv`.

    Raises :class:`TypeError`/:class:`ValueError` naming the layer's
    argument (:obj:`edge_index`, :obj:`edge_attr`, :obj:`size`). Index
    bounds are always checked; NaN/Inf in :obj:`edge_attr` when the input
    checks are on.
    """
    if edge_attr is not None:
        if not isinstance(edge_attr, Tensor):
            raise TypeError(f"'edge_attr' must be a Tensor or None (got "
                            f"{type(edge_attr).__name__})")
        if edge_attr.device != device:
            raise ValueError(f"'edge_attr' is on {edge_attr.device} but "
                             f"'x' is on {device}")
        if input_checks_enabled() and edge_attr.is_floating_point() and \
                edge_attr.numel() > 0 and not all_finite(edge_attr):
            raise ValueError("'edge_attr' contains non-finite values (NaN or "
                             "Inf)")
    loops = dict(add_self_loops=add_self_loops, fill_value=fill_value,
                 edge_dim=edge_dim)
    if isinstance(edge_index, SparseTensor):
        return _from_sparse_tensor(edge_index, edge_attr, num_src, num_dst,
                                   **loops)
    if isinstance(edge_index, Tensor) and is_torch_sparse_tensor(edge_index):
        return _from_torch_sparse(edge_index, edge_attr, num_src, num_dst,
                                  device, **loops)
    if isinstance(edge_index, Tensor) and edge_index.layout == torch.strided:
        return _from_dense(edge_index, edge_attr, size, num_src, num_dst,
                           device, add_self_loops=add_self_loops,
                           fill_value=fill_value)
    got = type(edge_index).__name__
    if isinstance(edge_index, Tensor):
        got += f' with layout {edge_index.layout}'
    raise TypeError(f"'edge_index' must be a [2, num_edges] integer Tensor, "
                    f"a torch.sparse adjacency or a torch_sparse "
                    f"SparseTensor (got {got})")


def _from_dense(edge_index: Tensor, edge_attr: Optional[Tensor],
                size: Optional[Tuple[int, int]], num_src: int,
                num_dst: Optional[int], device: torch.device, *,
                add_self_loops: bool, fill_value: FillValue) -> FusedGraph:
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
    loops_for = _self_loop_count(num_src, num_dst, size)
    if num_dst is None:
        num_dst = size[1] if size is not None and size[1] is not None else num_src
    _check_edge_attr(edge_attr, edge_index.size(1))
    loops = loops_for if add_self_loops else None
    # The non-loop mask only where the edge features need it too (one mask:
    # one data-dependent edge count when traced); a cache hit needs none.
    keep = edge_index[0] != edge_index[1] \
        if loops is not None and edge_attr is not None else None
    csr = _dense_csr(edge_index, num_src, num_dst, loops, keep)
    if loops is not None and edge_attr is not None:
        # GATConv's loop features: fill_value, or a reduction over each
        # node's incoming (non-loop) edges. The reduction gets int64
        # indices: torch 2.13's scatter_add backward is wrong for
        # expanded int32 indices (which PyG's scatter uses).
        _, edge_attr = pyg_add_self_loops(edge_index[:, keep].long(),
                                      edge_attr[keep], fill_value=fill_value,
                                      num_nodes=loops)
    return FusedGraph(edge_index, edge_attr, csr, 'dense', loops)


def _from_torch_sparse(adj: Tensor, edge_attr: Optional[Tensor], num_src: int,
                       num_dst: Optional[int], device: torch.device, *,
                       add_self_loops: bool, fill_value: FillValue,
                       edge_dim: Optional[int]) -> FusedGraph:
    if adj.dim() < 2:
        raise ValueError(f"A sparse 'edge_index' must be a 2-D adjacency "
                         f"(got shape {tuple(adj.shape)})")
    if adj.device != device:
        raise ValueError(f"'edge_index' is on {adj.device} but 'x' is on {device}")
    adj_dst, adj_src = adj.size(0), adj.size(1)
    _check_sizes(num_src, num_dst, adj_src, adj_dst)
    layout = adj.layout
    if add_self_loops:
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
        adj, _ = pyg_add_self_loops(adj, fill_value=fill_value)
    index, value = to_edge_index(adj)  # index: [target, source]
    if edge_attr is None and value.dim() > 1:  # hybrid values = features
        edge_attr = value
    _check_edge_attr(edge_attr, index.size(1))
    edge_index = index.flip(0)
    csr = build_csr(edge_index, num_src, adj_dst)
    return FusedGraph(edge_index, edge_attr, csr, 'torch_sparse', (adj, layout))


def _from_sparse_tensor(adj: SparseTensor, edge_attr: Optional[Tensor],
                        num_src: int, num_dst: Optional[int], *,
                        add_self_loops: bool, fill_value: FillValue,
                        edge_dim: Optional[int]) -> FusedGraph:
    adj_dst, adj_src = adj.size(0), adj.size(1)
    _check_sizes(num_src, num_dst, adj_src, adj_dst)
    if add_self_loops:
        if edge_dim is not None:
            raise NotImplementedError(
                "The usage of 'edge_attr' and 'add_self_loops' "
                "simultaneously is not supported for a SparseTensor "
                "'edge_index' (as in GATConv)")
        adj = torch_sparse.set_diag(adj)
    row, col, value = adj.coo()
    if edge_attr is None:
        edge_attr = value
    _check_edge_attr(edge_attr, row.numel())
    edge_index = torch.stack([col, row], dim=0)
    csr = build_csr(edge_index, num_src, adj_dst)
    return FusedGraph(edge_index, edge_attr, csr, 'sparse_tensor', adj)


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


def attention_output(graph: FusedGraph, alpha: Tensor) -> Any:
    r"""The attention weights :obj:`alpha` ``[E', H]`` (CSR input order) in
    GATConv's :obj:`return_attention_weights` format: :obj:`(edge_index,
    alpha)` with self-loops for a dense graph, the adjacency holding
    :obj:`alpha` for ``SparseTensor`` input, :obj:`(sparse, alpha)` for
    ``torch.sparse`` input."""
    if graph.kind == 'dense':
        loops = graph.adj
        if loops is None:
            return graph.edge_index, alpha
        return looped_edge_index(graph.edge_index, loops), alpha
    if graph.kind == 'sparse_tensor':
        return graph.adj.set_value(alpha, layout='coo')
    adj, layout = graph.adj
    if layout == torch.sparse_csc and adj.layout != torch.sparse_csc:
        # self-loops went through COO: hand back a CSC adjacency again
        index, _ = to_edge_index(adj)
        weights = to_torch_csc_tensor(index, alpha, tuple(adj.shape[:2]))
        return weights, weights.values()
    return _with_values(adj, alpha), alpha
