r"""Compressed sparse row views of a graph for the fused attention kernels.

A :class:`CSRGraph` sorts the edges by destination (so a kernel can reduce
over the incoming edges of a node without atomics) and also keeps a
by-source view of the same slots (so the backward pass w.r.t. source
features is a gather, again without atomics). Build it once per graph with
:func:`build_csr`, or let :func:`cached_csr` remember it for a given
:obj:`edge_index` tensor.
"""
import weakref
from collections import OrderedDict
from typing import Callable, Hashable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from torch_geometric_gnf.utils.checks import input_checks_enabled


class CSRGraph(NamedTuple):
    r"""A graph sorted by destination, plus a by-source view.

    For CSR slot :math:`s` (edges sorted by destination, stable, so edges of
    one destination keep their original order) the edge is
    :math:`\mathrm{col}[s] \to i` with :math:`\mathrm{rowptr}[i] \leq s <
    \mathrm{rowptr}[i + 1]`, and its id in the original :obj:`edge_index` is
    :math:`\mathrm{perm}[s]`.

    Attributes:
        rowptr: ``[num_dst + 1]`` int64, CSR offsets by destination.
        col: ``[E]`` source node of each slot (dtype of the given
            :obj:`edge_index`, int32 or int64).
        perm: ``[E]`` int64, slot -> original edge id.
        src_rowptr: ``[num_src + 1]`` int64, CSR offsets by source.
        src_slot: ``[E]`` int64, by-source position -> by-destination slot.
        num_src: number of source nodes.
        num_dst: number of destination nodes.
        src_row: ``[E]`` destination node of each by-source position (dtype
            of :obj:`col`); lets the source-parallel backward find the
            destination without searching :obj:`rowptr`. Optional: computed on
            demand by :func:`csr_src_row` when :obj:`None`.
    """
    rowptr: Tensor
    col: Tensor
    perm: Tensor
    src_rowptr: Tensor
    src_slot: Tensor
    num_src: int
    num_dst: int
    src_row: Optional[Tensor] = None

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    @property
    def device(self) -> torch.device:
        return self.col.device


def _rowptr(index: Tensor, num_nodes: int) -> Tensor:
    counts = torch.bincount(index, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=index.device)
    torch.cumsum(counts, dim=0, out=rowptr[1:])
    return rowptr


def csr_row(csr: CSRGraph) -> Tensor:
    r"""Destination node of every CSR slot, ``[E]`` int64."""
    counts = csr.rowptr[1:] - csr.rowptr[:-1]
    return torch.repeat_interleave(
        torch.arange(csr.num_dst, device=csr.rowptr.device), counts,
        output_size=csr.col.numel())


def csr_src_row(csr: CSRGraph) -> Tensor:
    r"""Destination node of every by-source position (:obj:`csr.src_row`,
    rebuilt if missing), dtype of :obj:`csr.col`."""
    if csr.src_row is not None:
        return csr.src_row
    return csr_row(csr)[csr.src_slot].to(csr.col.dtype)


def build_csr(edge_index: Tensor, num_src: int, num_dst: int) -> CSRGraph:
    r"""Builds the :class:`CSRGraph` of :obj:`edge_index` (row 0: source
    :math:`j`, row 1: target :math:`i`), with :obj:`num_src` source and
    :obj:`num_dst` destination nodes (equal for an ordinary graph, different
    for a bipartite one). Duplicate edges and self-loops are kept as given.

    Raises:
        TypeError: if :obj:`edge_index` is not a tensor.
        ValueError: on a wrong shape or dtype, negative sizes or indices out
            of range (the range check follows
            :func:`torch_geometric_gnf.utils.set_input_checks`).
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"build_csr: 'edge_index' must be a Tensor, got "
                        f"{type(edge_index).__name__}")
    if edge_index.layout != torch.strided:
        raise ValueError("build_csr: 'edge_index' must be a dense [2, E] "
                         "tensor (convert sparse adjacencies first)")
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"build_csr: 'edge_index' must be int32 or int64, "
                         f"got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"build_csr: 'edge_index' must have shape [2, E], "
                         f"got {tuple(edge_index.shape)}")
    num_src, num_dst = int(num_src), int(num_dst)
    if num_src < 0 or num_dst < 0:
        raise ValueError(f"build_csr: node counts must be >= 0, got "
                         f"num_src={num_src}, num_dst={num_dst}")
    num_edges = edge_index.size(1)
    if num_edges > 0 and (num_src == 0 or num_dst == 0):
        raise ValueError(f"build_csr: {num_edges} edges but num_src="
                         f"{num_src}, num_dst={num_dst}")
    src, dst = edge_index[0], edge_index[1]
    if input_checks_enabled() and num_edges > 0:
        for name, idx, n in (('source', src, num_src),
                             ('target', dst, num_dst)):
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= n:
                raise ValueError(f"build_csr: 'edge_index' {name} indices "
                                 f"must lie in [0, {n}), found range "
                                 f"[{lo}, {hi}]")
    src64, dst64 = src.long(), dst.long()
    # Stable sorts keep the original order among edges of one node, so the
    # reduction order (and hence rounding) is deterministic.
    perm = torch.sort(dst64, stable=True).indices
    col = src.index_select(0, perm).contiguous()
    src_slot = torch.sort(col.long(), stable=True).indices
    src_row = dst.index_select(0, perm.index_select(0, src_slot)).contiguous()
    return CSRGraph(rowptr=_rowptr(dst64, num_dst), col=col, perm=perm,
                    src_rowptr=_rowptr(src64, num_src), src_slot=src_slot,
                    num_src=num_src, num_dst=num_dst, src_row=src_row)


# Keyed on the tensor's identity through a weak reference: an entry dies with
# its edge_index, so a new tensor that reuses the address never hits a stale
# entry; the version counter catches in-place edits.
_CACHE_SIZE = 8
_cache: 'OrderedDict[Tuple, Tuple[weakref.ref, CSRGraph]]' = OrderedDict()


def _cache_key(edge_index: Tensor, num_src: int, num_dst: int) -> Tuple:
    return (id(edge_index), edge_index.data_ptr(), edge_index._version,
            tuple(edge_index.shape), tuple(edge_index.stride()),
            edge_index.dtype, str(edge_index.device), int(num_src),
            int(num_dst))


def _forget(key: Tuple):
    def callback(ref: weakref.ref) -> None:  # edge_index was freed
        hit = _cache.get(key)
        if hit is not None and hit[0] is ref:
            del _cache[key]
    return callback


def cached_csr(edge_index: Tensor, num_src: int, num_dst: int, *,
               variant: Hashable = None,
               build: Optional[Callable[[], CSRGraph]] = None) -> CSRGraph:
    r"""Like :func:`build_csr`, but remembers the result for the last few
    :obj:`edge_index` tensors (by identity, in-place version, shape, sizes
    and device), so a layer called repeatedly on the same graph builds its
    CSR once. Entries are dropped when their :obj:`edge_index` is freed or
    edited in place.

    A caller that caches a graph *derived* from :obj:`edge_index` (e.g. with
    self-loops added) names it by :obj:`variant` and builds it with
    :obj:`build()` on a miss (default: :obj:`build_csr(edge_index, num_src,
    num_dst)`)."""
    if build is None:
        def build() -> CSRGraph:
            return build_csr(edge_index, num_src, num_dst)
    if not isinstance(edge_index, Tensor) or \
            edge_index.layout != torch.strided:
        return build()
    key = _cache_key(edge_index, num_src, num_dst) + (variant, )
    hit = _cache.get(key)
    if hit is not None and hit[0]() is edge_index:
        _cache.move_to_end(key)
        return hit[1]
    csr = build()
    # Drop entries of freed tensors and of this tensor before an in-place
    # edit, so no outdated CSR stays alive.
    for k in [k for k, (ref, _) in _cache.items() if ref() is None or
              (ref() is edge_index and k[2] != edge_index._version)]:
        del _cache[k]
    _cache[key] = (weakref.ref(edge_index, _forget(key)), csr)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return csr


def clear_csr_cache() -> None:
    r"""Forgets every CSR remembered by :func:`cached_csr`."""
    _cache.clear()
