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
