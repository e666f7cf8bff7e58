r"""Bad arguments to the data set builders and the sampling entry points
get an error that names the argument (issue 26, item 6 and the unclear
messages), instead of a silent truncation, a re-paired edge list or a raw
torch error."""
import json

import pytest
import torch
from torch_geometric.nn import GCNConv

from torch_geometric_gnf.datasets import (HalfMoons6, MixtureOfGaussians,
                                          write_ogbn_dataset)
from torch_geometric_gnf.datasets.graphrnn import (community_small_graphs,
                                                   ego_small_graphs, read_graph_json)
from torch_geometric_gnf.datasets.synthetic import community_node_classification
from torch_geometric_gnf.models import GraphAutoEncoder, GraphGenerator, build_set_flow
from torch_geometric_gnf.nn import GraphAffineCoupling, GraphNormalizingFlow


def write_graphs(tmp_path, graphs):
    path = tmp_path / 'graphs.json'
    path.write_text(json.dumps({'graphs': graphs}))
    return str(path)


@pytest.mark.parametrize('graph, match', [
    ({'num_nodes': 4, 'edges': [[0, 1, 2], [2, 3, 1]]}, r"edge 0 is \[0, 1, 2\]"),
    ({'num_nodes': 4, 'edges': [0, 1, 2, 3]}, 'edge 0 is 0'),
    ({'num_nodes': 4, 'edges': [[0, 1.5]]}, 'pairs of node indices'),
    ({'num_nodes': 4, 'edges': {'0': 1}}, "'edges' must be a list"),
    ({'num_nodes': -3, 'edges': []}, "'num_nodes' must be a non-negative integer"),
    ({'num_nodes': 2.5, 'edges': []}, "'num_nodes' must be a non-negative integer"),
    ({'num_nodes': True, 'edges': []}, "'num_nodes' must be a non-negative integer"),
    ({'num_nodes': 3, 'edges': [[0, 3]]}, r"Graph 1 .*out of range for 3 nodes"),
])
def test_read_graph_json_refuses_malformed_graphs(tmp_path, graph, match):
    path = write_graphs(tmp_path, [{'num_nodes': 2, 'edges': [[0, 1]]}, graph])
    with pytest.raises(ValueError, match=match):
        read_graph_json(path)


def test_read_graph_json_reads_a_good_list(tmp_path):
    path = write_graphs(tmp_path, [{'num_nodes': 3, 'edges': [[0, 1], [1, 2], [2, 2]]},
                                   {'num_nodes': 1, 'edges': []}])
    first, second = read_graph_json(path)
    assert first.num_nodes == 3 and first.edge_index.size(1) == 4  # loop dropped
    assert second.num_nodes == 1 and second.edge_index.numel() == 0


@pytest.mark.parametrize('kwargs, error, match', [
    ({'homophily': 2.0}, ValueError, r"'homophily' must be in \[0, 1\]"),
    ({'homophily': float('nan')}, ValueError, "'homophily'"),
    ({'num_classes': 0}, ValueError, "'num_classes' must be >= 1"),
    ({'avg_degree': -2.0}, ValueError, "'avg_degree'"),
    ({'feature_noise': -1.0}, ValueError, "'feature_noise'"),
    ({'num_nodes': 100.5}, TypeError, "'num_nodes' must be an int"),
    ({'num_features': 0}, ValueError, "'num_features'"),
    ({'train_per_class': -1}, ValueError, "'train_per_class'"),
    ({'num_nodes': 50}, ValueError, "'num_nodes'=50 is too small"),
])
def test_community_node_classification_names_the_bad_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        community_node_classification(**{'num_nodes': 300, 'num_val': 50, **kwargs})


def test_community_node_classification_edge_cases_still_build():
    data = community_node_classification(300, num_val=50, avg_degree=0.0, homophily=1.0)
    assert data.edge_index.numel() == 0 and data.num_nodes == 300


@pytest.mark.parametrize('build, match', [
    (lambda: community_small_graphs(per_size=0), "'per_size'"),
    (lambda: community_small_graphs(p_edge=1.5), "'p_edge'"),
    (lambda: community_small_graphs(p_inter=-0.1), "'p_inter'"),
    (lambda: community_small_graphs(sizes=[6, 0]), "'sizes'"),
    (lambda: ego_small_graphs(min_nodes=5, max_nodes=4), "'max_nodes' must be >= 5"),
    (lambda: ego_small_graphs(num_graphs=0), "'num_graphs'"),
    (lambda: MixtureOfGaussians(10, std=float('nan')), "'std'"),
    (lambda: MixtureOfGaussians(10, distance=float('inf')), "'distance'"),
    (lambda: HalfMoons6(10, noise=0.0), "'noise'"),
    (lambda: MixtureOfGaussians(True), "'num_examples'"),
])
def test_other_dataset_builders_name_the_bad_argument(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_write_ogbn_dataset_refuses_negative_feature_noise(tmp_path):
    with pytest.raises(ValueError, match="'feature_noise'"):
        write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=60, feature_noise=-1.0)


def small_flow():
    torch.manual_seed(0)
    return GraphNormalizingFlow([GraphAffineCoupling(GCNConv(1, 2))], 2)


@pytest.mark.parametrize('num_nodes, match', [
    ([2.7], r"2\.7 is not an integer"),
    (2.7, r"2\.7 is not an integer"),
    ([3, 2.0], r"2\.0 is not an integer"),
    (torch.tensor([2.7]), 'integer counts'),
    ([True], 'True is not an integer'),
    ([], 'must not be empty'),
])
def test_flow_sample_refuses_non_integer_counts(num_nodes, match):
    with pytest.raises((TypeError, ValueError), match=f"'num_nodes'.*{match}"):
        small_flow().sample(num_nodes)


def test_flow_sample_accepts_integer_counts_of_every_kind():
    import numpy as np
    flow = small_flow()
    assert flow.sample(3).shape == (3, 2)
    assert flow.sample([2, 0, 1]).shape == (3, 2)
    assert flow.sample(torch.tensor([2, 2], dtype=torch.int32)).shape == (4, 2)
    assert flow.sample(np.array([1, 2])).shape == (3, 2)
    with pytest.raises(ValueError, match="'num_nodes' must be non-negative integers"):
        flow.sample([2, -1])
    with pytest.raises(ValueError, match="'temperature'"):
        flow.sample(2, temperature=-1.0)


def test_generator_and_set_flow_sampling_refuse_non_integer_sizes():
    ae = GraphAutoEncoder(embedding_channels=4, hidden_channels=8, num_layers=1, heads=2)
    gen = GraphGenerator(ae, [3], num_couplings=1, hidden_channels=8, heads=2)
    with pytest.raises(TypeError, match=r"'num_nodes'.*2\.7 is not an integer"):
        gen.sample(num_nodes=[3, 2.7])
    with pytest.raises(ValueError, match="'num_graphs' must be a positive int"):
        gen.sample(2.0)
    with pytest.raises(ValueError, match="'num_graphs' must be a positive int"):
        gen.sample(True)
    with pytest.raises(TypeError, match="'node_counts'"):
        GraphGenerator(ae, [3, 4.5])
    with pytest.raises(ValueError, match="'threshold'"):
        gen.sample(2, threshold=1.0)
    flow = build_set_flow('gnf', channels=2, num_couplings=1, hidden=8, heads=2)
    with pytest.raises(ValueError, match="'set_size' must be a positive int"):
        flow.sample(2, 2.5)
    with pytest.raises(ValueError, match="'num_sets' must be a positive int"):
        flow.sample(0, 3)
    with pytest.raises(ValueError, match="'temperature'"):
        flow.sample(2, 3, temperature=0.0)
    assert flow.sample(2, 3).shape == (2, 3, 2)
