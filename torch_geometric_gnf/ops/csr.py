r"""Compressed sparse row views of a graph for the fused attention kernels.

A :class:`CSRGraph` sorts the edges by destination (so a kernel can reduce
over the incoming edges of a node without atomics) and also keeps a
by-source view of the same slots (so the backward pass w.r.t. source
features is a gather, again without atomics). Build it once per graph with
:func:`build_csr`, or let :func:`cached_csr` remember it for a given
:obj:`edge_index` tensor (verified against the tensor's contents on every
hit, so the cache never changes a result; see the design note above
:func:`cached_csr`).
"""
import weakref
from collections import OrderedDict
from typing import Callable, Hashable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake



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


def _offsets(sorted_index: Tensor, num_nodes: int) -> Tensor:
    r"""CSR offsets of a sorted index vector: entry :math:`i` is the number
    of values :math:`< i`. Traceable with a static output size
    (``bincount``'s size depends on the values)."""
    bounds = torch.arange(num_nodes + 1, dtype=sorted_index.dtype,
                          device=sorted_index.device)
    return torch.searchsorted(sorted_index, bounds)


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


def is_traced(t: Tensor) -> bool:
    r"""Whether :obj:`t` is being traced (:func:`torch.compile`,
    :func:`torch.export`, :func:`torch.jit.trace`, fake tensors): its values
    and storage cannot be read, so no cache and no value checks."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    return is_fake(t)


def check_index_range(edge_index: Tensor, num_src: int, num_dst: int,
                      fn: str = 'build_csr') -> None:
    r"""Raises a :class:`ValueError` naming :obj:`edge_index` if a source
    index lies outside :math:`[0, \mathrm{num\_src})` or a target index
    outside :math:`[0, \mathrm{num\_dst})`. One O(E) min/max pass; always on
    in eager mode (independent of :func:`~torch_geometric_gnf.utils.
    set_input_checks`), because an index out of range would make the kernels
    read out of bounds. Skipped while tracing (the kernels then validate)."""
    if is_traced(edge_index) or edge_index.numel() == 0:
        return
    lo, hi = torch.aminmax(edge_index, dim=1)
    for row, name, n in ((0, 'source', num_src), (1, 'target', num_dst)):
        if int(lo[row]) < 0 or int(hi[row]) >= n:
            raise ValueError(f"{fn}: 'edge_index' {name} indices must lie in "
                             f"[0, {n}) (found out-of-range values: range "
                             f"[{int(lo[row])}, {int(hi[row])}])")


def _check(ok: Tensor, fn: str, what: str) -> None:
    if not bool(ok):
        raise ValueError(f"{fn}: invalid CSRGraph: {what} (build graphs "
                         f"with torch_geometric_gnf.ops.build_csr)")


def _check_offsets(ptr: Tensor, num_edges: int, fn: str, name: str) -> None:
    _check(ptr[0] == 0, fn, f"csr.{name}[0] must be 0")
    _check((ptr[1:] >= ptr[:-1]).all(), fn, f"csr.{name} must not decrease")
    _check(ptr[-1] == num_edges, fn,
           f"csr.{name}[-1] must equal the number of edges {num_edges}")


def _check_permutation(p: Tensor, num_edges: int, fn: str, name: str) -> None:
    ok = (p >= 0).all() & (p < num_edges).all()
    _check(ok, fn, f"csr.{name} must lie in [0, {num_edges})")
    _check((torch.bincount(p, minlength=num_edges) == 1).all(), fn,
           f"csr.{name} must be a permutation of [0, {num_edges})")


@torch.no_grad()
def validate_csr(csr: CSRGraph, fn: str = 'validate_csr') -> None:
    r"""Raises a :class:`ValueError` (prefixed by :obj:`fn`) unless
    :obj:`csr` is a consistent graph: offsets start at 0, never decrease and
    end at :math:`E`; :obj:`col` holds source nodes in range; :obj:`perm`
    and :obj:`src_slot` are permutations; the by-source view lists, for
    every source :math:`j`, slots whose :obj:`col` is :math:`j`, with their
    destinations in :obj:`src_row`. O(E + N). The same checks run inside the
    CPU kernels (the pure-PyTorch path and CUDA use this function)."""
    E = csr.col.numel()
    for name in ('rowptr', 'perm', 'src_rowptr', 'src_slot'):
        if getattr(csr, name).dtype != torch.long:
            raise ValueError(f"{fn}: invalid CSRGraph: csr.{name} must be "
                             f"int64")
    _check_offsets(csr.rowptr, E, fn, 'rowptr')
    _check_offsets(csr.src_rowptr, E, fn, 'src_rowptr')
    if E == 0:
        return
    col = csr.col.long()
    _check((col >= 0).all() & (col < csr.num_src).all(), fn,
           f"csr.col must lie in [0, {csr.num_src}) (source nodes)")
    _check_permutation(csr.perm, E, fn, 'perm')
    _check_permutation(csr.src_slot, E, fn, 'src_slot')
    src_of_position = torch.repeat_interleave(
        torch.arange(csr.num_src, device=col.device),
        csr.src_rowptr[1:] - csr.src_rowptr[:-1], output_size=E)
    _check(torch.equal(col.index_select(0, csr.src_slot), src_of_position),
           fn, "csr.src_rowptr/src_slot do not match csr.col")
    if csr.src_row is not None:
        _check(torch.equal(csr.src_row.long(),
                           csr_row(csr).index_select(0, csr.src_slot)), fn,
               "csr.src_row does not match csr.rowptr")


def build_csr(edge_index: Tensor, num_src: int, num_dst: int) -> CSRGraph:
    r"""Builds the :class:`CSRGraph` of :obj:`edge_index` (row 0: source
    :math:`j`, row 1: target :math:`i`), with :obj:`num_src` source and
    :obj:`num_dst` destination nodes (equal for an ordinary graph, different
    for a bipartite one). Duplicate edges and self-loops are kept as given.

    Raises:
        TypeError: if :obj:`edge_index` is not a tensor.
        ValueError: on a wrong shape or dtype, negative sizes or indices out
            of range (the range check is always on, whatever
            :func:`torch_geometric_gnf.utils.set_input_checks` says).
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
    if num_src < 0 or num_dst < 0:
        raise ValueError(f"build_csr: node counts must be >= 0, got "
                         f"num_src={num_src}, num_dst={num_dst}")
    num_edges = edge_index.size(1)
    # (sizes first: under tracing E may be data-dependent, never guarded on)
    if (num_src == 0 or num_dst == 0) and num_edges > 0:
        raise ValueError(f"build_csr: {num_edges} edges but num_src="
                         f"{num_src}, num_dst={num_dst}")
    check_index_range(edge_index, num_src, num_dst)
    src, dst = edge_index[0], edge_index[1]
    # Stable sorts keep the original order among edges of one node, so the
    # reduction order (and hence rounding) is deterministic. Only
    # fixed-size ops (sort, gather, searchsorted): the build traces under
    # torch.compile / torch.export with dynamic sizes.
    dst_sorted, perm = torch.sort(dst.long(), stable=True)
    col = src.index_select(0, perm)
    col_sorted, src_slot = torch.sort(col.long(), stable=True)
    src_row = dst_sorted.index_select(0, src_slot).to(col.dtype)
    return CSRGraph(rowptr=_offsets(dst_sorted, num_dst), col=col, perm=perm,
                    src_rowptr=_offsets(col_sorted, num_src),
                    src_slot=src_slot, num_src=num_src, num_dst=num_dst,
                    src_row=src_row)


# The cache. Design (one for eager, compile and export; it never changes a
# result):
# * An entry is found by the identity of the caller's ``edge_index`` (a weak
#   reference, so it dies with the tensor) plus shape, dtype, device, node
#   counts and a variant name. Identity only *finds* a candidate: no version
#   counter or data pointer is trusted, because writes through ``.data``, a
#   numpy view or a refilled ``torch.from_numpy`` buffer bypass both.
# * Every hit is verified exactly against the graph's current contents: the
#   entry keeps a snapshot of ``edge_index`` taken at build time (int32 when
#   the node counts allow: 8 bytes an edge) and a hit compares the two,
#   chunk by chunk in the caller's dtype. Equal contents give the same CSR,
#   for any variant (the derived graph is a function of the contents), so a
#   hit never builds the derived graph and allocates no O(E) tensor: a deep
#   stack on a large graph pays the derived graph's transient memory (tens
#   of bytes an edge) once, not in every layer's forward and recomputation.
# * While tracing (compile / export / jit.trace) there is no cache and no
#   data-pointer read: the CSR is built by traceable ops every time.
_CACHE_SIZE = 8
# Columns compared at a time on a hit (bounds the hit's temporary memory).
_VERIFY_CHUNK = 1 << 16


class _Entry(NamedTuple):
    ref: weakref.ref
    csr: CSRGraph
    snapshot: Tensor


_cache: 'OrderedDict[Tuple, _Entry]' = OrderedDict()


def _cache_key(edge_index: Tensor, num_src: int, num_dst: int,
               variant: Hashable) -> Tuple:
    return (id(edge_index), tuple(edge_index.shape), edge_index.dtype,
            str(edge_index.device), int(num_src), int(num_dst), variant)


def _forget(key: Tuple):
    def callback(ref: weakref.ref) -> None:  # edge_index was freed
        hit = _cache.get(key)
        if hit is not None and hit.ref is ref:
            del _cache[key]
    return callback


def _snapshot(edge_index: Tensor, num_src: int, num_dst: int) -> Tensor:
    # int32 when the node counts fit. A value that wraps (possible only in
    # a part of edge_index the derived graph drops) can only make a later
    # comparison, done in the caller's dtype, miss: never a false hit.
    if max(num_src, num_dst) <= 2**31 - 1:
        return edge_index.to(torch.int32, copy=True)
    return edge_index.clone()


@torch.no_grad()
def _same_contents(edge_index: Tensor, snapshot: Tensor) -> bool:
    r"""Exact equality of :obj:`edge_index` and a snapshot of the same
    shape, compared in :obj:`edge_index`'s dtype (so no value can wrap into
    a match), a bounded number of columns at a time."""
    # Same-dtype rows through one reused buffer: a mixed-dtype comparison
    # would allocate a converted copy (and a result) for every chunk.
    same = snapshot.dtype == edge_index.dtype
    buf = None if same else edge_index.new_empty(
        min(_VERIFY_CHUNK, edge_index.size(1)))
    for start in range(0, edge_index.size(1), _VERIFY_CHUNK):
        stop = min(start + _VERIFY_CHUNK, edge_index.size(1))
        for row in range(2):
            theirs = snapshot[row, start:stop]
            if buf is not None:
                theirs = buf[:stop - start].copy_(theirs)
            if not torch.equal(edge_index[row, start:stop], theirs):
                return False
    return True


@torch.no_grad()
def csr_matches(csr: CSRGraph, graph: Tensor) -> bool:
    r"""Whether :obj:`csr` is exactly what :func:`build_csr` would build
    from :obj:`graph` now, for a :obj:`csr` that :func:`build_csr` built
    from some graph with as many edges.

    Checks :math:`\mathrm{dst}[\mathrm{perm}] = \mathrm{row}` and
    :math:`\mathrm{src}[\mathrm{perm}] = \mathrm{col}`. Since :obj:`perm`
    came out of a stable sort, it is increasing within every row; so when
    the destinations gathered through it are the sorted rows, a stable sort
    of the new destinations returns the same :obj:`perm`, and equal sources
    give the same :obj:`col` and by-source view (a pure function of
    :obj:`col`). O(E), no sort, no snapshot (:func:`cached_csr` keeps a
    snapshot instead, which needs no derived graph)."""
    if graph.size(1) != csr.num_edges:
        return False
    return (torch.equal(graph[1].index_select(0, csr.perm).to(csr.col.dtype),
                        csr_row(csr).to(csr.col.dtype)) and
            torch.equal(graph[0].index_select(0, csr.perm).to(csr.col.dtype),
                        csr.col))


def cached_csr(edge_index: Tensor, num_src: int, num_dst: int, *,
               variant: Hashable = None,
               graph: Optional[Callable[[], Tensor]] = None) -> CSRGraph:
    r"""Like :func:`build_csr`, but remembers the result for the last few
    :obj:`edge_index` tensors, so a layer (or a stack of layers) called
    repeatedly on the same graph sorts its edges once.

    A cache never changes a result: every hit compares the current contents
    of :obj:`edge_index` with a snapshot taken when the entry was built
    (exact, O(E), no O(E) allocation; the snapshot costs 8 bytes an edge
    while the entry lives), so edits that PyTorch's version counter does not
    see (through ``.data``, a numpy view, a refilled ``torch.from_numpy``
    buffer) rebuild the CSR. While tracing (:func:`torch.compile`,
    :func:`torch.export.export`, :func:`torch.jit.trace`) nothing is cached:
    the CSR is built by traceable ops.

    A caller that builds the CSR of a graph *derived* from :obj:`edge_index`
    (e.g. with self-loops added) names it by :obj:`variant` and passes
    :obj:`graph()`, which returns the derived ``[2, E']`` index (default:
    :obj:`edge_index` itself) and is called only to build; the derived graph
    must be a function of :obj:`edge_index`'s contents and the variant, with
    indices in the same ranges."""
    if not isinstance(edge_index, Tensor) or \
            edge_index.layout != torch.strided or is_traced(edge_index):
        return build_csr(edge_index if graph is None else graph(), num_src,
                         num_dst)
    key = _cache_key(edge_index, num_src, num_dst, variant)
    hit = _cache.get(key)
    if hit is not None and hit.ref() is edge_index and \
            _same_contents(edge_index, hit.snapshot):
        _cache.move_to_end(key)
        return hit.csr
    csr = build_csr(edge_index if graph is None else graph(), num_src, num_dst)
    _cache[key] = _Entry(weakref.ref(edge_index, _forget(key)), csr,
                         _snapshot(edge_index, num_src, num_dst))
    _cache.move_to_end(key)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return csr


def clear_csr_cache() -> None:
    r"""Forgets every CSR remembered by :func:`cached_csr`."""
    _cache.clear()
