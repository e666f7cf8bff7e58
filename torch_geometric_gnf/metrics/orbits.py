r"""Node orbit counts of the graphlets with 2, 3 and 4 nodes (ORCA's 15 orbits).

For every node :math:`v`, :math:`O_k(v)` is the number of *induced* connected
subgraphs on 2-4 nodes containing :math:`v` in which :math:`v` sits at orbit
:math:`k`. The numbering is ORCA's (Hočevar & Demšar, *A combinatorial
approach to graphlet counting*, Bioinformatics 2014), which follows Pržulj's
graphlet orbits; GraphRNN and GRAN feed ORCA's ``node 4`` output to their
orbit MMD:

======  =========================  ========================================
orbit   graphlet                   position of :math:`v`
======  =========================  ========================================
0       edge                       either end (:math:`O_0 = d_v`)
1       path on 3 nodes            an end
2       path on 3 nodes            the middle
3       triangle                   any node
4       path on 4 nodes            an end
5       path on 4 nodes            an inner node
6       star (claw)                a leaf
7       star (claw)                the centre
8       4-cycle                    any node
9       paw (tailed triangle)      the tail end (degree 1)
10      paw                        a triangle node of degree 2
11      paw                        the centre (degree 3)
12      diamond (:math:`K_4-e`)    a node of degree 2
13      diamond                    an end of the chord (degree 3)
14      :math:`K_4`                any node
======  =========================  ========================================

This is our own implementation (no ORCA code): closed-form counts with
dense matrix products. Let :math:`A` be the adjacency matrix,
:math:`d = A\mathbf 1`, :math:`T = A \circ A^2` (:math:`T_{uv}` = common
neighbours of an edge), :math:`t = \tfrac12 T\mathbf 1` (triangles at each
node) and :math:`\binom{x}{k}` elementwise. The 2- and 3-node orbits are

.. math::
    O_0 = d,\quad O_1 = A(d-1) - 2t,\quad O_2 = \tbinom{d}{2} - t,\quad O_3 = t.

For 4 nodes we first count *non-induced* copies :math:`N_k(v)` of each
4-node graphlet with :math:`v` at the position of orbit :math:`k`:

.. math::
    N_4 &= A^2(d-1) - 2t - d(d-1), &
    N_5 &= (d-1)\,A(d-1) - 2t, \\
    N_6 &= A\tbinom{d-1}{2}, &
    N_7 &= \tbinom{d}{3}, \\
    N_8 &= \textstyle\sum_{w\ne v}\tbinom{(A^2)_{vw}}{2}, &
    N_9 &= At - 2t, \\
    N_{10} &= T(d-2), &
    N_{11} &= t\,(d-2), \\
    N_{12} &= \tfrac12\,\mathrm{diag}\big(A(T-A)A\big), &
    N_{13} &= \textstyle\sum_u \tbinom{T_{vu}}{2}, \\
    N_{14} &= \#K_4 \ni v = \tfrac16\,\mathrm{tr}\big(A[N(v)]^3\big).

A non-induced copy lives inside exactly one induced 4-node graphlet (the one
its node set induces), so :math:`N = C\,O` with the upper-triangular matrix
:data:`_COPIES_IN_GRAPHLET` (:math:`C_{kj}` = copies of pattern :math:`k`
with :math:`v` at orbit :math:`k` inside graphlet :math:`j` with :math:`v`
at orbit :math:`j`; e.g. a 4-cycle holds 2 paths ending at each node, a
:math:`K_4` holds 3 claws with a given node as a leaf). Back-substitution
gives the induced counts. Everything is batched over graphs padded with
isolated nodes (which have all-zero counts and do not change the others), so
a thousand 20-node graphs take well under a second. Time is
:math:`O(n^3)` per graph plus :math:`O(n^4)` for :math:`K_4` on graphs up to
:data:`_DENSE_K4_MAX_NODES` nodes (:math:`O(\sum_v d_v^3)` above).
"""
from typing import Any, List, Sequence

import numpy as np

from .graph_statistics import GraphLike, graph_to_adjacency

NUM_ORBITS = 15

# Rows: non-induced pattern orbit k = 4..14; columns: induced orbit j = 4..14.
# Entry = copies of pattern k (v at orbit k) inside graphlet j (v at orbit j).
_COPIES_IN_GRAPHLET = np.array([
    # 4  5  6  7  8  9 10 11 12 13 14
    [1, 0, 0, 0, 2, 2, 1, 0, 4, 2, 6],   # 4: path end
    [0, 1, 0, 0, 2, 0, 1, 2, 2, 4, 6],   # 5: path inner
    [0, 0, 1, 0, 0, 1, 1, 0, 2, 1, 3],   # 6: claw leaf
    [0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1],   # 7: claw centre
    [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 3],   # 8: 4-cycle
    [0, 0, 0, 0, 0, 1, 0, 0, 2, 0, 3],   # 9: paw tail end
    [0, 0, 0, 0, 0, 0, 1, 0, 2, 2, 6],   # 10: paw triangle, degree 2
    [0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 3],   # 11: paw centre
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3],   # 12: diamond, degree 2
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3],   # 13: diamond, degree 3
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],   # 14: K4
], dtype=np.float64)

# Above this size the K4 count loops over neighbourhoods instead of building
# an [n, n, n] tensor per graph.
_DENSE_K4_MAX_NODES = 64
# Max entries of the [graphs, n, n, n] K4 tensor processed at once (~32 MB).
_CHUNK_ENTRIES = 1 << 22


def orbit_counts(graph: GraphLike) -> np.ndarray:
    r"""ORCA-numbered node orbit counts of one graph.

    Args:
        graph (networkx.Graph or torch_geometric.data.Data): An undirected
            graph; self-loops are ignored (ORCA rejects them; see
            :mod:`~torch_geometric_gnf.metrics.graph_statistics`).

    Returns:
        numpy.ndarray: :obj:`int64` array of shape :obj:`[num_nodes, 15]`;
        row :math:`v` (in :obj:`G.nodes()` order, or node index for
        :class:`~torch_geometric.data.Data`) holds :math:`O_0(v), \dots,
        O_{14}(v)`, the same layout as ORCA's ``orca node 4`` output.
    """
    return orbit_counts_from_adjacency(graph_to_adjacency(graph))


def orbit_counts_from_adjacency(adj: np.ndarray) -> np.ndarray:
    r"""Orbit counts :obj:`[n, 15]` from a symmetric 0/1 adjacency matrix
    with an empty diagonal."""
    adj = _check_adjacency(adj)
    return _orbit_counts_padded(adj[None].astype(np.float64))[0]


def mean_orbit_counts(adjs: Sequence[np.ndarray]) -> np.ndarray:
    r"""Per graph, the mean over its nodes of the orbit counts,
    :math:`\bar O_k(G) = \tfrac1{|V|}\sum_v O_k(v)` (GraphRNN's
    ``np.sum(orca(G), axis=0) / G.number_of_nodes()``); shape
    :obj:`[num_graphs, 15]`. Graphs must have at least one node.

    Graphs are sorted by size and processed in padded batches."""
    adjs = [_check_adjacency(a) for a in adjs]
    sizes = np.array([a.shape[0] for a in adjs], dtype=np.int64)
    if (sizes == 0).any():
        raise ValueError('mean orbit counts are undefined for a graph without nodes')
    out = np.zeros((len(adjs), NUM_ORBITS))
    order = np.argsort(sizes, kind='stable')
    start = 0
    while start < len(order):
        # smallest graphs first; a chunk grows while its padded [B, n, n, n]
        # K4 tensor stays below _CHUNK_ENTRIES (always at least one graph)
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * sizes[order[stop]] ** 3 <= _CHUNK_ENTRIES:
            stop += 1
        idx = order[start:stop]
        n_max = int(sizes[idx[-1]])
        padded = np.zeros((len(idx), n_max, n_max))
        for row, i in enumerate(idx):
            padded[row, :sizes[i], :sizes[i]] = adjs[i]
        counts = _orbit_counts_padded(padded)
        out[idx] = counts.sum(axis=1) / sizes[idx, None]  # padding rows are zero
        start = stop
    return out


def _check_adjacency(adj: Any) -> np.ndarray:
    adj = np.asarray(adj)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f'adjacency must be a square matrix (got shape {adj.shape})')
    if not np.isin(adj, (0, 1)).all():
        raise ValueError('adjacency entries must be 0 or 1')
    if not (adj == adj.T).all():
        raise ValueError('adjacency must be symmetric (undirected graph)')
    if adj.size and np.diagonal(adj).any():
        raise ValueError('adjacency has self-loops (non-zero diagonal)')
    return adj


def _choose2(x: np.ndarray) -> np.ndarray:
    return x * (x - 1) / 2


def _orbit_counts_padded(a: np.ndarray) -> np.ndarray:
    r"""Orbit counts for a batch :obj:`[B, n, n]` of float64 adjacency
    matrices; returns :obj:`int64 [B, n, 15]`. All intermediate values are
    integers far below :math:`2^{53}`, so float64 BLAS products are exact."""
    num_graphs, n, _ = a.shape
    out = np.zeros((num_graphs, n, NUM_ORBITS))
    if n == 0:
        return out.astype(np.int64)
    d = a.sum(axis=2)
    a2 = a @ a
    t_mat = a * a2                       # common neighbours of each edge
    t = t_mat.sum(axis=2) / 2            # triangles through each node
    a_dm1 = _matvec(a, d - 1)            # sum over neighbours u of (d_u - 1)

    out[..., 0] = d
    out[..., 1] = a_dm1 - 2 * t
    out[..., 2] = _choose2(d) - t
    out[..., 3] = t

    non_induced = np.empty((num_graphs, n, 11))
    non_induced[..., 0] = _matvec(a, a_dm1) - 2 * t - d * (d - 1)
    non_induced[..., 1] = (d - 1) * a_dm1 - 2 * t
    non_induced[..., 2] = _matvec(a, _choose2(d - 1))
    non_induced[..., 3] = d * (d - 1) * (d - 2) / 6
    # 4-cycles through v: pairs of common neighbours with the opposite node w
    non_induced[..., 4] = _choose2(a2).sum(axis=2) - _choose2(d)  # drop w = v
    non_induced[..., 5] = _matvec(a, t) - 2 * t
    non_induced[..., 6] = _matvec(t_mat, d - 2)
    non_induced[..., 7] = t * (d - 2)
    non_induced[..., 8] = ((a @ (t_mat - a)) * a).sum(axis=2) / 2
    non_induced[..., 9] = _choose2(t_mat).sum(axis=2)
    non_induced[..., 10] = _k4_counts(a)

    # Solve C O = N by back-substitution (C is upper unitriangular, integer:
    # exact in float64, unlike a general solver).
    induced = out[..., 4:]
    for j in range(10, -1, -1):
        above = induced[..., j + 1:] @ _COPIES_IN_GRAPHLET[j, j + 1:]
        induced[..., j] = non_induced[..., j] - above
    return np.rint(out).astype(np.int64)


def _matvec(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (m @ x[..., None])[..., 0]


def _k4_counts(a: np.ndarray) -> np.ndarray:
    r"""Number of :math:`K_4` containing each node: triangles inside its
    neighbourhood, :math:`\tfrac16\mathrm{tr}(S_v^3)` with
    :math:`S_v = A \circ \mathbf a_v \mathbf a_v^\top`."""
    num_graphs, n, _ = a.shape
    if n <= _DENSE_K4_MAX_NODES:
        out = np.empty((num_graphs, n))
        step = max(1, _CHUNK_ENTRIES // max(1, n ** 3))
        for lo in range(0, num_graphs, step):
            ab = a[lo:lo + step]
            # s[b, v] = adjacency restricted to the neighbourhood of v
            s = ab[:, None, :, :] * ab[:, :, :, None] * ab[:, :, None, :]
            out[lo:lo + step] = ((s @ s) * s).sum(axis=(2, 3)) / 6
        return out
    return np.stack([_k4_counts_by_neighbourhood(g) for g in a])


def _k4_counts_by_neighbourhood(a: np.ndarray) -> np.ndarray:
    out = np.zeros(a.shape[0])
    for v in np.flatnonzero(a.sum(axis=1) >= 3):
        nbrs = np.flatnonzero(a[v])
        s = a[np.ix_(nbrs, nbrs)]
        out[v] = ((s @ s) * s).sum() / 6
    return out


__all__: List[str] = ['NUM_ORBITS', 'orbit_counts', 'orbit_counts_from_adjacency',
                      'mean_orbit_counts']
