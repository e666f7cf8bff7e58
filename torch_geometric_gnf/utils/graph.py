"""Graph construction helpers."""
from typing import Optional

import torch
from torch import Tensor


def infer_num_graphs(batch: Optional[Tensor], num_graphs: Optional[int] = None) -> int:
    r"""Number of graphs described by :obj:`batch` (one graph if it is
    :obj:`None`).  An explicit :obj:`num_graphs` wins, which avoids a device
    sync and allows trailing empty graphs."""
    if num_graphs is not None:
        return int(num_graphs)
    if batch is None:
        return 1
    return int(batch.max()) + 1 if batch.numel() > 0 else 0


def nodes_per_graph(x: Tensor, batch: Optional[Tensor], num_graphs: int) -> Tensor:
    r"""Node count of every graph, shape :obj:`[num_graphs]`, in the dtype of
    :obj:`x` (all :obj:`x.size(0)` nodes form each graph if :obj:`batch` is
    :obj:`None`), e.g. to scale a per-node log-determinant to a per-graph
    one."""
    if batch is None:
        return x.new_full((num_graphs,), float(x.size(0)))
    return torch.bincount(batch.long(), minlength=num_graphs).to(x.dtype)


def fully_connected_edge_index(batch: Tensor, num_graphs: Optional[int] = None,
                               self_loops: bool = False) -> Tensor:
    r"""Edge indices of a fully connected graph inside each graph of a batch.

    Every ordered pair :math:`(j, i)` of nodes with :math:`\mathrm{batch}_j =
    \mathrm{batch}_i` becomes an edge (self-loops only if :obj:`self_loops`),
    so a batch with graph sizes :math:`n_g` gets :math:`\sum_g n_g (n_g - 1)`
    edges.  Vectorised: no Python loop over graphs.  :obj:`batch` need not be
    sorted.

    Args:
        batch (torch.Tensor): Graph id of every node, shape :obj:`[num_nodes]`.
        num_graphs (int, optional): Number of graphs. (default: inferred)
        self_loops (bool, optional): Keep :math:`(i, i)` edges.
            (default: :obj:`False`)
    """
    device = batch.device
    batch = batch.long()
    num_graphs = infer_num_graphs(batch, num_graphs)
    order = torch.argsort(batch, stable=True)  # node ids grouped by graph
    sorted_batch = batch[order]
    counts = torch.bincount(sorted_batch, minlength=num_graphs)
    ptr = torch.cumsum(counts, 0) - counts  # first position of each graph
    deg = counts[sorted_batch]  # neighbours (incl. self) of each node
    row = torch.repeat_interleave(torch.arange(batch.numel(), device=device), deg)
    start = torch.cumsum(deg, 0) - deg
    within = torch.arange(row.numel(), device=device) - start[row]
    col = ptr[sorted_batch[row]] + within
    src, dst = order[col], order[row]
    if not self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    return torch.stack([src, dst], dim=0)


def graph_order(batch: Optional[Tensor]) -> Optional[Tensor]:
    r"""The stable permutation that groups the nodes of :obj:`batch` by
    graph (the nodes of one graph keep their relative order), or
    :obj:`None` when :obj:`batch` is already sorted.

    Dense layouts (:func:`torch_geometric.utils.to_dense_batch`) need the
    nodes of each graph to be consecutive: a model that pads graphs takes
    :obj:`x[order]`, :obj:`batch[order]` and maps node-level results back
    with :func:`restore_order`, so that any order gives the per-graph
    results."""
    if batch is None or batch.numel() < 2:
        return None
    if not bool((batch[1:] < batch[:-1]).any()):
        return None
    return torch.argsort(batch, stable=True)


def restore_order(h: Tensor, order: Optional[Tensor]) -> Tensor:
    r"""Node-level :obj:`h` computed on the nodes :obj:`x[order]` (see
    :func:`graph_order`) back in the order of :obj:`x`."""
    return h if order is None else h[torch.argsort(order)]


def relabel_edges(edge_index: Tensor, order: Optional[Tensor]) -> Tensor:
    r""":obj:`edge_index` of a graph whose nodes were reordered to
    :obj:`x[order]` (see :func:`graph_order`), in the new node ids."""
    return edge_index if order is None else torch.argsort(order)[edge_index]
