r"""Per-graph statistics for generative-model evaluation, and input conversion.

Every metric in :mod:`torch_geometric_gnf.metrics` accepts a *set of graphs*
in one of three forms:

* a list of :class:`networkx.Graph` (simple, undirected; node order is
  :obj:`G.nodes()`),
* a list of :class:`torch_geometric.data.Data` (:obj:`edge_index` read as
  undirected: an edge in either direction connects the pair; duplicates are
  ignored),
* one :class:`torch_geometric.data.Batch` (split with its :obj:`ptr`/:obj:`batch`
  vector, so trailing empty graphs are kept).

They are converted once to dense symmetric boolean adjacency matrices
(:func:`to_adjacency_list`); graphs here are small (the GraphRNN benchmarks
have at most a few dozen nodes). **Self-loops are dropped**: GraphRNN's
evaluation loads every graph list with ``utils.load_graph_list``, which
removes self-loops before computing any statistic (ORCA refuses them, and
networkx would count a loop twice in the degree). This matters for
ego-small, whose Citeseer ego graphs carry self-loops (27 of the 200 graphs
in the GNF paper's list). Nothing else is changed: in particular the graph
is not reduced to its largest connected component (GraphRNN's loader does
that for its own data; it is a data-set choice, left to the caller).

The statistics reproduce GraphRNN's ``eval/stats.py`` (You et al., 2018):

* degree histogram = :func:`networkx.degree_histogram`: entry :math:`k` is the
  number of nodes of degree :math:`k`, length :math:`\max_v d_v + 1`;
* clustering histogram = :func:`numpy.histogram` of the local clustering
  coefficients :math:`c_v = 2 t_v / (d_v (d_v - 1))` (:math:`c_v = 0` for
  :math:`d_v < 2`, :math:`t_v` = triangles through :math:`v`, exactly
  :func:`networkx.clustering`) with :obj:`bins` equal bins on :math:`[0, 1]`.

Both are returned as raw counts; the MMD code normalises them to probability
vectors, as GraphRNN's ``compute_mmd`` does.
"""
from typing import Any, List, Sequence, Union

import networkx as nx
import numpy as np
import torch
from torch_geometric.data import Batch, Data

GraphLike = Union[nx.Graph, Data]
GraphSet = Union[Sequence[GraphLike], Batch]


def graph_to_adjacency(graph: GraphLike) -> np.ndarray:
    r"""Dense symmetric boolean adjacency matrix :math:`A \in \{0,1\}^{n\times n}`
    of one undirected graph (:class:`networkx.Graph` or
    :class:`~torch_geometric.data.Data`), self-loops dropped (zero diagonal).

    Raises:
        TypeError: directed or multi-graphs, or an unsupported type.
        ValueError: a malformed or out-of-range :obj:`edge_index`.
    """
    if isinstance(graph, nx.Graph):
        return _networkx_to_adjacency(graph)
    if isinstance(graph, Batch):
        raise TypeError('expected a single graph but got a Batch; pass the Batch '
                        'as the whole graph set, or use batch.to_data_list()')
    if isinstance(graph, Data):
        return _edge_index_to_adjacency(graph.edge_index, graph.num_nodes)
    raise TypeError(f'expected a networkx.Graph or a torch_geometric.data.Data '
                    f'(got {type(graph).__name__})')


def to_adjacency_list(graphs: Any, name: str = 'graphs') -> List[np.ndarray]:
    r"""Converts a graph set (list of :class:`networkx.Graph`, list of
    :class:`~torch_geometric.data.Data`, or one
    :class:`~torch_geometric.data.Batch`) to a list of dense boolean adjacency
    matrices, one per graph, in order (self-loops dropped).

    Raises:
        TypeError: :obj:`graphs` is a single graph or not a sequence of graphs.
        ValueError: :obj:`graphs` is empty, or a graph is invalid (see
            :func:`graph_to_adjacency`).
    """
    if isinstance(graphs, Batch):
        adjs = _batch_to_adjacency_list(graphs)
    elif isinstance(graphs, (nx.Graph, Data)):
        raise TypeError(f"'{name}' must be a list of graphs or a Batch, not a single "
                        f'{type(graphs).__name__}; wrap it in a list')
    elif isinstance(graphs, (list, tuple)):
        adjs = []
        for i, graph in enumerate(graphs):
            try:
                adjs.append(graph_to_adjacency(graph))
            except (TypeError, ValueError) as error:
                raise type(error)(f"'{name}'[{i}]: {error}") from None
    else:
        raise TypeError(f"'{name}' must be a list/tuple of networkx.Graph or "
                        f'torch_geometric Data, or a Batch (got {type(graphs).__name__})')
    if len(adjs) == 0:
        raise ValueError(f"'{name}' is empty: at least one graph is needed")
    return adjs


def to_networkx_graphs(graphs: Any, name: str = 'graphs') -> List[nx.Graph]:
    r"""The graph set as a list of :class:`networkx.Graph` with nodes
    :math:`0, \dots, n-1` (handy for plotting generated graphs)."""
    out = []
    for adj in to_adjacency_list(graphs, name):
        graph = nx.Graph()
        graph.add_nodes_from(range(adj.shape[0]))
        rows, cols = np.nonzero(np.triu(adj, k=1))
        graph.add_edges_from(zip(rows.tolist(), cols.tolist()))
        out.append(graph)
    return out


def degree_histogram(adj: np.ndarray) -> np.ndarray:
    r"""Unnormalised degree histogram, identical to
    :func:`networkx.degree_histogram`: :math:`h_k = |\{v : d_v = k\}|` for
    :math:`k = 0, \dots, \max_v d_v` (empty for a graph without nodes)."""
    degrees = adj.sum(axis=1).astype(np.int64)
    if degrees.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.bincount(degrees)


def clustering_coefficients(adj: np.ndarray) -> np.ndarray:
    r"""Local clustering coefficients :math:`c_v = 2 t_v / (d_v(d_v - 1))`,
    :math:`c_v = 0` when :math:`d_v < 2`, as :func:`networkx.clustering`.

    The division is one correctly rounded division of integers, as in
    networkx, so values that land exactly on a bin edge fall into the same
    histogram bin."""
    a = adj.astype(np.float64)
    degrees = a.sum(axis=1)
    twice_triangles = np.einsum('ij,jk,ki->i', a, a, a)  # (A^3)_vv = 2 t_v
    denominator = degrees * (degrees - 1)
    out = np.zeros_like(degrees)
    has_pairs = denominator > 0
    out[has_pairs] = twice_triangles[has_pairs] / denominator[has_pairs]
    return out


def clustering_histogram(adj: np.ndarray, bins: int = 100) -> np.ndarray:
    r"""Unnormalised histogram of the clustering coefficients,
    :obj:`numpy.histogram(c, bins=bins, range=(0, 1))` as GraphRNN computes it
    (the last bin is closed, so :math:`c_v = 1` lands in bin :obj:`bins - 1`)."""
    hist, _ = np.histogram(clustering_coefficients(adj), bins=bins, range=(0.0, 1.0))
    return hist


# --------------------------------------------------------------------------
# conversion helpers

def _networkx_to_adjacency(graph: nx.Graph) -> np.ndarray:
    if graph.is_directed():
        raise TypeError('directed graphs are not supported; use G.to_undirected()')
    if graph.is_multigraph():
        raise TypeError('multigraphs are not supported; use networkx.Graph(G)')
    index = {node: i for i, node in enumerate(graph.nodes())}
    adj = np.zeros((len(index), len(index)), dtype=bool)
    for u, v in graph.edges():
        adj[index[u], index[v]] = adj[index[v], index[u]] = True
    np.fill_diagonal(adj, False)  # self-loops dropped, as GraphRNN's loader does
    return adj


def _check_edge_index(edge_index: Any, num_nodes: int) -> np.ndarray:
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f'edge_index must be a torch.Tensor (got {type(edge_index).__name__})')
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f'edge_index must have shape [2, num_edges] '
                         f'(got {tuple(edge_index.shape)})')
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f'edge_index must be int64 or int32 (got {edge_index.dtype})')
    ei = edge_index.detach().cpu().numpy().astype(np.int64)
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise ValueError(f'edge_index has entries outside [0, {num_nodes}) '
                         f'(min {ei.min()}, max {ei.max()})')
    return ei[:, ei[0] != ei[1]]  # self-loops dropped, as GraphRNN's loader does


def _edge_index_to_adjacency(edge_index: Any, num_nodes: Any) -> np.ndarray:
    if num_nodes is None:
        raise ValueError('cannot infer the number of nodes of a Data object '
                         '(set data.num_nodes)')
    num_nodes = int(num_nodes)
    adj = np.zeros((num_nodes, num_nodes), dtype=bool)
    if edge_index is None:
        return adj
    ei = _check_edge_index(edge_index, num_nodes)
    adj[ei[0], ei[1]] = True
    adj[ei[1], ei[0]] = True  # undirected: either direction connects the pair
    return adj


def _batch_to_adjacency_list(batch: Batch) -> List[np.ndarray]:
    num_graphs = int(batch.num_graphs)
    ptr = getattr(batch, 'ptr', None)
    if ptr is not None:
        ptr = ptr.detach().cpu().numpy().astype(np.int64)
    else:
        if batch.batch is None:
            raise ValueError('Batch has neither a ptr nor a batch vector')
        counts = np.bincount(batch.batch.detach().cpu().numpy(), minlength=num_graphs)
        ptr = np.concatenate([[0], np.cumsum(counts)])
    total = int(ptr[-1])
    adjs = [np.zeros((int(ptr[g + 1] - ptr[g]),) * 2, dtype=bool) for g in range(num_graphs)]
    if batch.edge_index is None or batch.edge_index.numel() == 0:
        return adjs
    ei = _check_edge_index(batch.edge_index, total)
    graph_of_node = np.repeat(np.arange(num_graphs), np.diff(ptr))
    src_graph, dst_graph = graph_of_node[ei[0]], graph_of_node[ei[1]]
    if (src_graph != dst_graph).any():
        raise ValueError('Batch has edges between nodes of different graphs')
    order = np.argsort(src_graph, kind='stable')  # group edges by graph
    local = (ei - ptr[src_graph])[:, order]
    bounds = np.searchsorted(src_graph[order], np.arange(num_graphs + 1))
    for g in range(num_graphs):
        rows, cols = local[:, bounds[g]:bounds[g + 1]]
        adjs[g][rows, cols] = True
        adjs[g][cols, rows] = True
    return adjs
