r"""GraphRNN/GRAN-style MMD: kernels, estimator, statistics, inputs, errors."""
import json
import math
import os
import warnings

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.linalg import toeplitz
from scipy.optimize import linprog
from scipy.stats import wasserstein_distance
from torch_geometric.data import Batch, Data
from torch_geometric.utils import from_networkx

from torch_geometric_gnf.metrics import (clustering_histogram, clustering_mmd, degree_histogram,
                                         degree_mmd, emd_1d, graph_mmd_table, orbit_counts,
                                         orbit_mmd, to_adjacency_list, to_networkx_graphs)

# same location as tests/conftest.py's SHARED: ../shared beside the repo
GRAPHRNN_DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'graphrnn')


def random_graphs(count, seed, low=6, high=16, p=0.3):
    rng = np.random.default_rng(seed)
    return [nx.gnp_random_graph(int(rng.integers(low, high)), p, seed=int(rng.integers(1 << 30)))
            for _ in range(count)]


def add_random_edges(graphs, num_edges, seed):
    r"""Adds the first `num_edges` of a fixed random order of non-edges to
    each graph, so larger perturbations contain the smaller ones."""
    rng = np.random.default_rng(seed)
    out = []
    for graph in graphs:
        non_edges = list(nx.non_edges(graph))
        order = rng.permutation(len(non_edges))
        perturbed = graph.copy()
        perturbed.add_edges_from(non_edges[i] for i in order[:num_edges])
        out.append(perturbed)
    return out


# ---------------------------------------------------------------------------
# the EMD helper is the optimal-transport distance GraphRNN computes with pyemd

def test_emd_equals_scipy_wasserstein():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(int(rng.integers(1, 12))), rng.random(int(rng.integers(1, 12)))
        p, q = p / p.sum(), q / q.sum()
        for scaling in (1.0, 100.0):
            expected = wasserstein_distance(np.arange(len(p)) / scaling, np.arange(len(q)) / scaling,
                                            p, q)
            assert emd_1d(p, q, scaling) == pytest.approx(expected, abs=1e-12)


def test_emd_equals_transport_lp_with_graphrnn_distance_matrix():
    # GraphRNN: pad to equal length, ground distance toeplitz(range(L)) / scaling
    rng = np.random.default_rng(1)
    for _ in range(5):
        p, q = rng.random(4), rng.random(6)
        p, q = p / p.sum(), q / q.sum()
        size = 6
        p_pad = np.concatenate([p, np.zeros(size - len(p))])
        cost = toeplitz(range(size)) / 10.0
        # transport plan F >= 0 with row sums p_pad and column sums q
        a_eq = np.vstack([np.kron(np.eye(size), np.ones(size)), np.kron(np.ones(size), np.eye(size))])
        result = linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([p_pad, q]), bounds=(0, None))
        assert result.status == 0
        assert emd_1d(p, q, 10.0) == pytest.approx(result.fun, abs=1e-9)


# ---------------------------------------------------------------------------
# statistics are networkx's

def test_histograms_match_networkx():
    for graph in random_graphs(15, seed=2, low=1, high=14, p=0.4) + [nx.complete_graph(5)]:
        adj = to_adjacency_list([graph])[0]
        assert degree_histogram(adj).tolist() == nx.degree_histogram(graph)
        expected, _ = np.histogram(list(nx.clustering(graph).values()), bins=100, range=(0.0, 1.0))
        assert np.array_equal(clustering_histogram(adj, 100), expected)


# ---------------------------------------------------------------------------
# hand-computed values (P3 = path on 3 nodes, K3 = triangle)

def test_degree_mmd_hand_computed():
    # P3 degrees {1,1,2} -> (0, 2/3, 1/3); K3 -> (0, 0, 1); K4 -> (0, 0, 0, 1)
    # EMD(P3, K3) = L1 of CDFs (0, 2/3, 1) vs (0, 0, 1) = 2/3
    value = degree_mmd([nx.path_graph(3)], [nx.complete_graph(3)])
    assert value == pytest.approx(2 - 2 * math.exp(-(2 / 3) ** 2 / 2), abs=1e-12)
    # EMD(P3, K4) = 2/3 + 1 = 5/3, TV(P3, K4) = (2/3 + 1/3 + 1) / 2 = 1
    p3, k4 = [nx.path_graph(3)], [nx.complete_graph(4)]
    assert degree_mmd(p3, k4, sigma=2.0) == pytest.approx(2 - 2 * math.exp(-(5 / 3) ** 2 / 8))
    assert degree_mmd(p3, k4, kernel='gaussian_tv') == pytest.approx(2 - 2 * math.exp(-1 / 2))
    # two graphs per set: mean K(X,X) includes the off-diagonal pair
    x, y = [nx.path_graph(3), nx.complete_graph(3)], [nx.complete_graph(4)]
    k = lambda emd: math.exp(-emd ** 2 / 2)  # noqa: E731
    expected = (2 + 2 * k(2 / 3)) / 4 + 1 - 2 * (k(5 / 3) + k(1)) / 2
    assert degree_mmd(x, y) == pytest.approx(expected, abs=1e-12)


def test_clustering_mmd_hand_computed():
    # K3: all coefficients 1 (bin 99); P3: all 0 (bin 0); EMD = 99/100
    k3, p3 = [nx.complete_graph(3)], [nx.path_graph(3)]
    assert clustering_mmd(k3, p3, sigma=1.0) == pytest.approx(2 - 2 * math.exp(-0.99 ** 2 / 2))
    assert clustering_mmd(k3, p3, sigma=1.0, bins=10) == pytest.approx(2 - 2 * math.exp(-0.9 ** 2 / 2))
    # TV of two disjoint point masses is 1, whatever the bins
    assert clustering_mmd(k3, p3, kernel='gaussian_tv', sigma=1.0) == pytest.approx(
        2 - 2 * math.exp(-1 / 2))


def test_orbit_mmd_hand_computed():
    # mean orbit vectors: K3 (2, 0, 0, 1, 0...), P3 (4/3, 2/3, 1/3, 0, 0...)
    # squared Euclidean distance 4/9 + 4/9 + 1/9 + 1 = 2; L1 = 8/3, TV = 4/3
    k3, p3 = [nx.complete_graph(3)], [nx.path_graph(3)]
    assert orbit_mmd(k3, p3) == pytest.approx(2 - 2 * math.exp(-2 / (2 * 30 ** 2)), rel=1e-12)
    assert orbit_mmd(k3, p3, sigma=1.0) == pytest.approx(2 - 2 * math.exp(-1))
    assert orbit_mmd(k3, p3, kernel='gaussian_tv', sigma=1.0) == pytest.approx(
        2 - 2 * math.exp(-(4 / 3) ** 2 / 2))


# ---------------------------------------------------------------------------
# an independent, loop-based re-statement of GraphRNN's procedure

def _reference_mmd(xs, ys, kernel):
    def disc(a, b):
        return np.mean([[kernel(s, t) for t in b] for s in a])
    return disc(xs, xs) + disc(ys, ys) - 2 * disc(xs, ys)


def _normalised(values):
    values = np.asarray(values, dtype=float)
    return values / values.sum()


def test_matches_loop_reference():
    ref, pred = random_graphs(7, seed=3), random_graphs(6, seed=4, p=0.5)
    deg = lambda gs: [_normalised(nx.degree_histogram(g)) for g in gs]  # noqa: E731

    def clus(gs):
        return [_normalised(np.histogram(list(nx.clustering(g).values()), 100, (0, 1))[0])
                for g in gs]

    def g_emd(p, q, sigma, scaling=1.0):
        d = wasserstein_distance(np.arange(len(p)) / scaling, np.arange(len(q)) / scaling, p, q)
        return math.exp(-d ** 2 / (2 * sigma ** 2))

    def g_tv(p, q, sigma):
        size = max(len(p), len(q))
        p, q = np.pad(p, (0, size - len(p))), np.pad(q, (0, size - len(q)))
        return math.exp(-(np.abs(p - q).sum() / 2) ** 2 / (2 * sigma ** 2))

    assert degree_mmd(ref, pred) == pytest.approx(
        _reference_mmd(deg(ref), deg(pred), lambda p, q: g_emd(p, q, 1.0)), abs=1e-12)
    assert degree_mmd(ref, pred, kernel='gaussian_tv') == pytest.approx(
        _reference_mmd(deg(ref), deg(pred), lambda p, q: g_tv(p, q, 1.0)), abs=1e-12)
    assert clustering_mmd(ref, pred) == pytest.approx(
        _reference_mmd(clus(ref), clus(pred), lambda p, q: g_emd(p, q, 0.1, 100)), abs=1e-12)
    assert clustering_mmd(ref, pred, kernel='gaussian_tv') == pytest.approx(
        _reference_mmd(clus(ref), clus(pred), lambda p, q: g_tv(p, q, 0.1)), abs=1e-12)
    mean_orbits = lambda gs: [orbit_counts(g).mean(axis=0) for g in gs]  # noqa: E731
    assert orbit_mmd(ref, pred) == pytest.approx(_reference_mmd(
        mean_orbits(ref), mean_orbits(pred),
        lambda x, y: math.exp(-((x - y) ** 2).sum() / (2 * 30.0 ** 2))), abs=1e-12)


# ---------------------------------------------------------------------------
# estimator properties

def test_self_mmd_is_zero_and_symmetric():
    ref, pred = random_graphs(12, seed=5), random_graphs(9, seed=6, p=0.45)
    for protocol in ('graphrnn', 'gran'):
        for value in graph_mmd_table(ref, ref, kernel=protocol).values():
            assert abs(value) < 1e-12
        forward = graph_mmd_table(ref, pred, kernel=protocol)
        backward = graph_mmd_table(pred, ref, kernel=protocol)
        for key in ('degree', 'clustering', 'orbit'):
            assert forward[key] > 1e-6
            assert forward[key] == pytest.approx(backward[key], abs=1e-12)


def test_table_equals_individual_metrics():
    ref, pred = random_graphs(5, seed=7), random_graphs(5, seed=8, p=0.6)
    table = graph_mmd_table(ref, pred)
    assert set(table) == {'degree', 'clustering', 'orbit'}
    assert table['degree'] == degree_mmd(ref, pred, kernel='gaussian_emd', sigma=1.0)
    assert table['clustering'] == clustering_mmd(ref, pred, kernel='gaussian_emd', sigma=0.1)
    assert table['orbit'] == orbit_mmd(ref, pred, kernel='gaussian', sigma=30.0)
    gran = graph_mmd_table(ref, pred, kernel='gran')
    assert gran['degree'] == degree_mmd(ref, pred, kernel='gaussian_tv', sigma=1.0)
    assert gran['clustering'] == clustering_mmd(ref, pred, kernel='gaussian_tv', sigma=0.1)
    assert gran['orbit'] == orbit_mmd(ref, pred, kernel='gaussian_tv', sigma=30.0)


def test_mmd_grows_with_added_edges():
    base = random_graphs(30, seed=9, low=10, high=20, p=0.2)
    reference = random_graphs(30, seed=10, low=10, high=20, p=0.2)  # same distribution
    levels = [0, 2, 5, 10, 20]
    for kernel in ('gaussian_emd', 'gaussian_tv'):
        values = [degree_mmd(reference, add_random_edges(base, k, seed=11), kernel=kernel)
                  for k in levels]
        assert all(a < b for a, b in zip(values, values[1:])), (kernel, values)
    orbit_values = [orbit_mmd(reference, add_random_edges(base, k, seed=11)) for k in levels]
    assert all(a < b for a, b in zip(orbit_values, orbit_values[1:])), orbit_values


# ---------------------------------------------------------------------------
# inputs

def _to_data(graph, one_direction=False):
    edges = torch.tensor(list(graph.edges()), dtype=torch.long).reshape(-1, 2).t()
    if not one_direction:
        edges = torch.cat([edges, edges.flip(0)], dim=1)
    return Data(edge_index=edges, num_nodes=graph.number_of_nodes())


def test_networkx_data_and_batch_inputs_agree():
    ref = random_graphs(6, seed=12)
    pred = random_graphs(5, seed=13, p=0.5) + [nx.empty_graph(1), nx.empty_graph(4)]
    expected = graph_mmd_table(ref, pred)
    data_list = [_to_data(g) for g in pred]
    one_direction = [_to_data(g, one_direction=True) for g in pred]
    pyg_converted = [from_networkx(g) for g in pred]
    for variant in (data_list, one_direction, pyg_converted, Batch.from_data_list(data_list)):
        assert graph_mmd_table(ref, variant) == expected
    assert graph_mmd_table(tuple(_to_data(g) for g in ref), pred) == expected
    back = to_networkx_graphs(Batch.from_data_list(data_list))
    assert all(nx.utils.graphs_equal(a, b) for a, b in zip(back, pred))


def test_self_loops_are_dropped_as_graphrnn_loader_does():
    ref = random_graphs(5, seed=16)
    pred = random_graphs(5, seed=17, p=0.5)
    looped = [g.copy() for g in pred]
    for g in looped:
        g.add_edge(0, 0)
    expected = graph_mmd_table(ref, pred)
    assert graph_mmd_table(ref, looped) == expected
    data = [_to_data(g) for g in looped]
    assert all(bool((d.edge_index[0] == d.edge_index[1]).any()) for d in data)
    assert graph_mmd_table(ref, data) == expected
    assert graph_mmd_table(ref, Batch.from_data_list(data), kernel='gran') == \
        graph_mmd_table(ref, pred, kernel='gran')


def test_edgeless_and_single_node_graphs():
    edgeless = [nx.empty_graph(1), nx.empty_graph(3)]
    for value in graph_mmd_table(edgeless, edgeless).values():
        assert abs(value) < 1e-12
    table = graph_mmd_table(edgeless, [nx.complete_graph(3)])
    assert all(np.isfinite(v) and v > 0 for v in table.values())


def test_graphs_without_nodes_are_dropped_with_a_warning():
    ref, pred = random_graphs(4, seed=14), random_graphs(4, seed=15, p=0.5)
    expected = degree_mmd(ref, pred)
    with pytest.warns(UserWarning, match='dropped 2 of 6'):
        assert degree_mmd(ref, pred + [nx.Graph(), nx.Graph()]) == expected
    empty_data = Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=0)
    batch = Batch.from_data_list([_to_data(g) for g in pred[:2]] + [empty_data])
    with pytest.warns(UserWarning, match='dropped 1 of 3'):
        orbit_mmd(ref, batch)
    with pytest.raises(ValueError, match='all 2 graphs have no nodes'):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            clustering_mmd(ref, [nx.Graph(), nx.Graph()])


def test_bad_input_raises_clear_errors():
    good = [nx.path_graph(3)]
    with pytest.raises(ValueError, match="'kernel' must be one of"):
        degree_mmd(good, good, kernel='gaussian')
    with pytest.raises(ValueError, match="'kernel' must be one of"):
        orbit_mmd(good, good, kernel='gaussian_emd')
    with pytest.raises(ValueError, match="'kernel' must be one of"):
        graph_mmd_table(good, good, kernel='GraphRNN')
    for sigma in (0.0, -1.0, float('nan'), float('inf')):
        with pytest.raises(ValueError, match="'sigma'"):
            clustering_mmd(good, good, sigma=sigma)
    with pytest.raises(TypeError, match="'sigma'"):
        degree_mmd(good, good, sigma='1')
    with pytest.raises(ValueError, match="'bins'"):
        clustering_mmd(good, good, bins=0)
    with pytest.raises(TypeError, match="'bins'"):
        clustering_mmd(good, good, bins=10.5)
    with pytest.raises(ValueError, match="'ref_graphs' is empty"):
        degree_mmd([], good)
    with pytest.raises(TypeError, match='not a single Graph'):
        degree_mmd(nx.path_graph(3), good)
    with pytest.raises(TypeError, match='not a single Data'):
        degree_mmd(good, _to_data(nx.path_graph(3)))
    with pytest.raises(TypeError, match=r"'pred_graphs' must be a list"):
        degree_mmd(good, np.zeros((3, 3)))
    with pytest.raises(TypeError, match=r"'pred_graphs'\[1\]"):
        degree_mmd(good, [nx.path_graph(2), 'graph'])
    with pytest.raises(TypeError, match='directed'):
        degree_mmd(good, [nx.DiGraph([(0, 1)])])
    with pytest.raises(ValueError, match='outside'):
        degree_mmd(good, [Data(edge_index=torch.tensor([[0], [3]]), num_nodes=3)])
    with pytest.raises(ValueError, match='shape'):
        degree_mmd(good, [Data(edge_index=torch.zeros(3, 2, dtype=torch.long), num_nodes=3)])
    with pytest.raises(ValueError, match='int64'):
        degree_mmd(good, [Data(edge_index=torch.zeros(2, 2), num_nodes=3)])
    crossing = Batch(edge_index=torch.tensor([[0], [2]]), batch=torch.tensor([0, 0, 1]),
                     ptr=torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match='different graphs'):
        degree_mmd(good, crossing)


# ---------------------------------------------------------------------------
# the paper's data sets: train vs test is the noise floor, far below the
# distance between the two data sets

def _load(name):
    path = os.path.join(GRAPHRNN_DATA, f'{name}.json')
    if not os.path.exists(path):
        pytest.skip(f'{path} not found (shared data absent)')
    with open(path) as f:
        graphs = json.load(f)['graphs']
    out = []
    for g in graphs:
        graph = nx.Graph()
        graph.add_nodes_from(range(g['num_nodes']))
        graph.add_edges_from(map(tuple, g['edges']))
        out.append(graph)
    split = int(0.8 * len(out))
    return out[:split], out[split:]


def test_noise_floor_is_below_cross_dataset_distance():
    community_train, community_test = _load('community_small')
    _, ego_test = _load('ego_small')
    for protocol in ('graphrnn', 'gran'):
        floor = graph_mmd_table(community_train, community_test, kernel=protocol)
        across = graph_mmd_table(community_train, ego_test, kernel=protocol)
        for key in ('degree', 'clustering', 'orbit'):
            assert 0 <= floor[key] < across[key], (protocol, key, floor, across)
