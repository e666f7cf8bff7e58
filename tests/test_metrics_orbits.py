r"""Orbit counts (ORCA numbering) against brute-force enumeration and graphs
whose counts can be derived by hand."""
import itertools
import time
from math import comb

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from torch_geometric_gnf.metrics import mean_orbit_counts, orbit_counts
from torch_geometric_gnf.metrics import orbits as orbits_module
from torch_geometric_gnf.metrics.orbits import orbit_counts_from_adjacency


# ---------------------------------------------------------------------------
# independent brute force: every node subset of size 2, 3, 4 that induces a
# connected subgraph, classified by its edge count and degree sequence.

def _orbit_of(num_edges: int, degrees: tuple, degree: int) -> int:
    size = len(degrees)
    if size == 2:
        return 0
    if size == 3:
        return 3 if num_edges == 3 else {1: 1, 2: 2}[degree]
    shape = (num_edges, tuple(sorted(degrees)))
    table = {
        (3, (1, 1, 2, 2)): {1: 4, 2: 5},          # path
        (3, (1, 1, 1, 3)): {1: 6, 3: 7},          # star
        (4, (2, 2, 2, 2)): {2: 8},                # 4-cycle
        (4, (1, 2, 2, 3)): {1: 9, 2: 10, 3: 11},  # paw
        (5, (2, 2, 3, 3)): {2: 12, 3: 13},        # diamond
        (6, (3, 3, 3, 3)): {3: 14},               # K4
    }
    return table[shape][degree]


def brute_force_orbits(graph: nx.Graph) -> np.ndarray:
    nodes = list(graph.nodes())
    position = {v: i for i, v in enumerate(nodes)}
    out = np.zeros((len(nodes), 15), dtype=np.int64)
    for size in (2, 3, 4):
        for subset in itertools.combinations(nodes, size):
            sub = graph.subgraph(subset)
            if not nx.is_connected(sub):
                continue
            degrees = tuple(d for _, d in sub.degree())
            for v in subset:
                out[position[v], _orbit_of(sub.number_of_edges(), degrees, sub.degree(v))] += 1
    return out


def _row(**orbits) -> np.ndarray:
    row = np.zeros(15, dtype=np.int64)
    for key, value in orbits.items():
        row[int(key[1:])] = value
    return row


# ---------------------------------------------------------------------------

def test_random_graphs_match_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(1, 9))
        graph = nx.gnp_random_graph(n, float(rng.uniform(0.1, 0.95)), seed=trial)
        assert np.array_equal(orbit_counts(graph), brute_force_orbits(graph)), trial


def test_every_connected_four_node_graphlet():
    # all 6 graphlets on 4 nodes, with hand-derived rows (orbit: count)
    cases = {
        'path': (nx.path_graph(4), [_row(o0=1, o1=1, o4=1), _row(o0=2, o1=1, o2=1, o5=1)]),
        'star': (nx.star_graph(3), [_row(o0=3, o2=3, o7=1), _row(o0=1, o1=2, o6=1)]),
        'cycle': (nx.cycle_graph(4), [_row(o0=2, o1=2, o2=1, o8=1)]),
        'paw': (nx.Graph([(0, 1), (1, 2), (0, 2), (2, 3)]),
                [_row(o0=2, o1=1, o3=1, o10=1), _row(o0=2, o1=1, o3=1, o10=1),
                 _row(o0=3, o2=2, o3=1, o11=1), _row(o0=1, o1=2, o9=1)]),
        'diamond': (nx.Graph([(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]),
                    [_row(o0=3, o2=1, o3=2, o13=1), _row(o0=2, o1=2, o3=1, o12=1)]),
        'clique': (nx.complete_graph(4), [_row(o0=3, o3=3, o14=1)]),
    }
    for name, (graph, rows) in cases.items():
        counts = orbit_counts(graph)
        if name == 'path':
            expected = [rows[0], rows[1], rows[1], rows[0]]
        elif name == 'star':
            expected = [rows[0]] + [rows[1]] * 3
        elif name == 'diamond':
            expected = [rows[0], rows[1], rows[0], rows[1]]
        elif name == 'paw':
            expected = rows
        else:
            expected = rows * 4
        assert np.array_equal(counts, np.stack(expected)), name


@pytest.mark.parametrize('n', [4, 5, 7])
def test_clique(n):
    # every 3-set is a triangle and every 4-set a K4 (induced: no paths)
    counts = orbit_counts(nx.complete_graph(n))
    expected = _row(o0=n - 1, o3=comb(n - 1, 2), o14=comb(n - 1, 3))
    assert np.array_equal(counts, np.tile(expected, (n, 1)))


@pytest.mark.parametrize('k', [3, 5, 8])
def test_star(k):
    counts = orbit_counts(nx.star_graph(k))  # node 0 is the centre
    assert np.array_equal(counts[0], _row(o0=k, o2=comb(k, 2), o7=comb(k, 3)))
    leaf = _row(o0=1, o1=k - 1, o6=comb(k - 1, 2))
    assert np.array_equal(counts[1:], np.tile(leaf, (k, 1)))


def test_long_path_and_cycle():
    path = orbit_counts(nx.path_graph(9))
    assert np.array_equal(path[0], _row(o0=1, o1=1, o4=1))
    assert np.array_equal(path[1], _row(o0=2, o1=1, o2=1, o4=1, o5=1))
    # node 2: a 4-node path can only run right; nodes 3..5: both ways
    assert np.array_equal(path[2], _row(o0=2, o1=2, o2=1, o4=1, o5=2))
    for v in range(3, 6):
        assert np.array_equal(path[v], _row(o0=2, o1=2, o2=1, o4=2, o5=2))
    for n in (5, 8):
        cycle = orbit_counts(nx.cycle_graph(n))
        assert np.array_equal(cycle, np.tile(_row(o0=2, o1=2, o2=1, o4=2, o5=2), (n, 1)))


def test_degenerate_graphs():
    assert orbit_counts(nx.empty_graph(0)).shape == (0, 15)
    assert np.array_equal(orbit_counts(nx.empty_graph(1)), np.zeros((1, 15)))
    assert np.array_equal(orbit_counts(nx.empty_graph(5)), np.zeros((5, 15)))
    data = Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=3)
    assert np.array_equal(orbit_counts(data), np.zeros((3, 15)))


def test_data_input_and_node_order():
    graph = nx.gnp_random_graph(8, 0.5, seed=3)
    relabelled = nx.relabel_nodes(graph, {v: f'n{v}' for v in graph.nodes()})
    edge_index = torch.tensor(list(graph.edges()), dtype=torch.long).t()
    one_direction = Data(edge_index=edge_index, num_nodes=8)
    both = Data(edge_index=torch.cat([edge_index, edge_index.flip(0)], 1), num_nodes=8)
    expected = brute_force_orbits(graph)
    for g in (relabelled, one_direction, both):
        assert np.array_equal(orbit_counts(g), expected)
    assert orbit_counts(graph).dtype == np.int64


def test_neighbourhood_k4_path_matches_dense(monkeypatch):
    # graphs above _DENSE_K4_MAX_NODES count K4s by neighbourhood; force it
    graphs = [nx.gnp_random_graph(n, p, seed=n) for n, p in ((8, 0.7), (25, 0.5), (30, 0.3))]
    dense = [orbit_counts(g) for g in graphs]
    monkeypatch.setattr(orbits_module, '_DENSE_K4_MAX_NODES', 2)
    assert np.array_equal(orbit_counts(graphs[0]), brute_force_orbits(graphs[0]))
    for g, expected in zip(graphs, dense):
        assert np.array_equal(orbit_counts(g), expected)
    assert dense[1][:, 14].sum() > 0  # the comparison covers K4s


def test_mean_orbit_counts_batches_mixed_sizes(monkeypatch):
    rng = np.random.default_rng(1)
    graphs = [nx.gnp_random_graph(int(n), 0.4, seed=i)
              for i, n in enumerate(rng.integers(1, 12, size=25))]
    adjs = [nx.to_numpy_array(g, nodelist=sorted(g.nodes()), dtype=bool) for g in graphs]
    expected = np.stack([brute_force_orbits(g).mean(axis=0) for g in graphs])
    assert np.allclose(mean_orbit_counts(adjs), expected, rtol=0, atol=1e-12)
    monkeypatch.setattr(orbits_module, '_CHUNK_ENTRIES', 500)  # many small chunks
    assert np.allclose(mean_orbit_counts(adjs), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='without nodes'):
        mean_orbit_counts([np.zeros((0, 0), dtype=bool)])


def test_thousand_small_graphs_take_seconds():
    rng = np.random.default_rng(2)
    adjs = []
    for i in range(1024):
        n = int(rng.integers(10, 21))
        adjs.append(nx.to_numpy_array(nx.gnp_random_graph(n, 0.3, seed=i),
                                      nodelist=range(n), dtype=bool))
    start = time.perf_counter()
    means = mean_orbit_counts(adjs)
    elapsed = time.perf_counter() - start
    assert means.shape == (1024, 15)
    assert elapsed < 10.0, f'{elapsed:.1f} s for 1024 graphs'  # ~0.2 s measured


def test_self_loops_are_ignored():
    # ORCA refuses self-loops and GraphRNN's loader strips them
    graph = nx.gnp_random_graph(8, 0.5, seed=4)
    looped = graph.copy()
    looped.add_edges_from([(0, 0), (5, 5)])
    assert np.array_equal(orbit_counts(looped), brute_force_orbits(graph))
    data = Data(edge_index=torch.tensor([[0, 1, 1], [1, 0, 1]]), num_nodes=3)
    assert np.array_equal(orbit_counts(data), orbit_counts(nx.Graph([(0, 1), (2, 2)])))
    assert orbit_counts(data)[2].sum() == 0


def test_bad_input():
    with pytest.raises(TypeError, match='directed'):
        orbit_counts(nx.DiGraph([(0, 1)]))
    with pytest.raises(TypeError, match='multigraph'):
        orbit_counts(nx.MultiGraph([(0, 1)]))
    with pytest.raises(ValueError, match='outside'):
        orbit_counts(Data(edge_index=torch.tensor([[0], [5]]), num_nodes=2))
    with pytest.raises(TypeError, match='networkx.Graph'):
        orbit_counts(np.zeros((3, 3)))
    with pytest.raises(ValueError, match='symmetric'):
        orbit_counts_from_adjacency(np.array([[0, 1], [0, 0]]))
    with pytest.raises(ValueError, match='0 or 1'):
        orbit_counts_from_adjacency(np.array([[0, 2], [2, 0]]))
    with pytest.raises(ValueError, match='square'):
        orbit_counts_from_adjacency(np.zeros((2, 3)))
