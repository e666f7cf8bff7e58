import pytest
import torch

from torch_geometric_gnf.utils import fully_connected_edge_index


def brute_force(batch, self_loops):
    pairs = {(j, i) for i in range(len(batch)) for j in range(len(batch))
             if batch[i] == batch[j] and (self_loops or i != j)}
    return pairs


@pytest.mark.parametrize('self_loops', [False, True])
@pytest.mark.parametrize('batch', [[0, 0, 0, 1, 1, 3], [2, 0, 1, 0, 2, 2, 1], [0], []])
def test_fully_connected_matches_brute_force(batch, self_loops):
    b = torch.tensor(batch, dtype=torch.long)
    edge_index = fully_connected_edge_index(b, num_graphs=4, self_loops=self_loops)
    got = {tuple(e) for e in edge_index.t().tolist()}
    assert got == brute_force(batch, self_loops)
    assert edge_index.size(1) == len(got)  # no duplicates


def test_int32_batch():
    b = torch.tensor([0, 0, 1], dtype=torch.int32)
    assert fully_connected_edge_index(b).tolist() == [[1, 0], [0, 1]]


def test_nodes_per_graph():
    from torch_geometric_gnf.utils import nodes_per_graph
    x = torch.zeros(5, 2, dtype=torch.float64)
    counts = nodes_per_graph(x, torch.tensor([0, 0, 2, 2, 2]), 4)  # empty graphs 1, 3
    assert counts.dtype == torch.float64 and counts.tolist() == [2, 0, 3, 0]
    assert nodes_per_graph(x, None, 1).tolist() == [5]
