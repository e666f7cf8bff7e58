import json
import math
import os

import networkx as nx
import pytest
import torch
from torch_geometric.utils import is_undirected, to_networkx

from torch_geometric_gnf.datasets import (CommunitySmall, EgoSmall, graphrnn_split,
                                          read_graph_json)

from conftest import SHARED

GRAPHRNN = os.path.join(SHARED, 'data', 'graphrnn')
PLANETOID = os.path.join(SHARED, 'data', 'planetoid')
needs_json = pytest.mark.skipif(not os.path.isfile(os.path.join(GRAPHRNN, 'ego_small.json')),
                                reason='../shared/data/graphrnn is absent')
needs_citeseer = pytest.mark.skipif(
    not os.path.isfile(os.path.join(PLANETOID, 'ind.citeseer.graph')),
    reason='../shared/data/planetoid is absent')


def check_simple_undirected(data):
    assert is_undirected(data.edge_index, num_nodes=data.num_nodes)
    assert (data.edge_index[0] != data.edge_index[1]).all()
    g = to_networkx(data, to_undirected=True)
    assert nx.is_connected(g)
    return g


def test_community_small_follows_the_published_procedure():
    ds = CommunitySmall(seed=0)
    assert len(ds) == 100
    intra_edges = intra_pairs = 0
    for i, data in enumerate(ds):
        k = 6 + i // 20  # 20 graphs per clique size, in order
        assert 12 <= data.num_nodes <= 2 * k <= 20
        g = check_simple_undirected(data)
        side = data.community.tolist()
        assert set(side) == {0, 1}  # two communities survive
        cross = sum(side[u] != side[v] for u, v in g.edges())
        assert 1 <= cross <= max(math.ceil(0.1 * k), 1)
        intra_edges += g.number_of_edges() - cross
        sizes = [side.count(0), side.count(1)]
        intra_pairs += sum(s * (s - 1) // 2 for s in sizes)
    assert 0.75 < intra_edges / intra_pairs < 0.85  # edges kept with p = 0.8


def test_generation_is_seeded():
    a, b, c = CommunitySmall(seed=5), CommunitySmall(seed=5), CommunitySmall(seed=6)
    assert all(torch.equal(x.edge_index, y.edge_index) for x, y in zip(a, b))
    assert any(x.num_edges != y.num_edges for x, y in zip(a, c))


def test_split_is_first_80_percent_train():
    ds = CommunitySmall(seed=0)
    train, test = graphrnn_split(ds)
    assert (len(train), len(test)) == (80, 20)
    assert torch.equal(train[0].edge_index, ds[0].edge_index)
    assert torch.equal(test[0].edge_index, ds[80].edge_index)
    with pytest.raises(ValueError, match='train_fraction'):
        graphrnn_split(ds, 1.0)


@pytest.fixture(scope='module')
def ego_generated():
    return EgoSmall(seed=0, planetoid_dir=PLANETOID)  # ~3 s: build it once


@needs_citeseer
def test_ego_small_follows_the_published_procedure(ego_generated):
    ds = ego_generated
    assert len(ds) == 200
    for data in ds:
        assert 4 <= data.num_nodes <= 20
        g = check_simple_undirected(data)
        center = int(data.center.nonzero())
        assert g.degree(center) == data.num_nodes - 1  # radius-1 ego graph


def test_ego_small_without_citeseer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='ind.citeseer'):
        EgoSmall(planetoid_dir=str(tmp_path))


@needs_json
@pytest.mark.parametrize('name,cls,count,lo,hi', [
    ('community_small', CommunitySmall, 100, 12, 20),
    ('ego_small', EgoSmall, 200, 4, 20),
])
def test_reads_the_paper_graph_lists(name, cls, count, lo, hi):
    path = os.path.join(GRAPHRNN, f'{name}.json')
    ds = cls(json_path=path)
    with open(path) as f:
        raw = json.load(f)['graphs']
    assert len(ds) == count == len(raw)
    for data, entry in zip(ds, raw):
        assert data.num_nodes == entry['num_nodes']
        assert lo <= data.num_nodes <= hi
        pairs = {tuple(sorted(e)) for e in entry['edges'] if e[0] != e[1]}
        assert data.num_edges == 2 * len(pairs)  # self-loops (ego-small) dropped
        assert is_undirected(data.edge_index, num_nodes=data.num_nodes)


@needs_json
def test_generated_sets_match_the_paper_files_in_size(request):
    # Same procedure, other random draw: edge totals within 10% of the paper's.
    paper = read_graph_json(os.path.join(GRAPHRNN, 'community_small.json'))
    ours = CommunitySmall(seed=0)
    assert sum(d.num_edges for d in ours) == pytest.approx(
        sum(d.num_edges for d in paper), rel=0.1)
    if os.path.isfile(os.path.join(PLANETOID, 'ind.citeseer.graph')):
        paper = read_graph_json(os.path.join(GRAPHRNN, 'ego_small.json'))
        ours = request.getfixturevalue('ego_generated')
        assert sum(d.num_edges for d in ours) == pytest.approx(
            sum(d.num_edges for d in paper), rel=0.1)


def test_bad_json_is_a_clear_error(tmp_path):
    path = tmp_path / 'bad.json'
    path.write_text(json.dumps({'graphs': [{'num_nodes': 3}]}))
    with pytest.raises(ValueError, match="'num_nodes' and 'edges'"):
        read_graph_json(str(path))
    path.write_text(json.dumps({'graphs': [{'num_nodes': 2, 'edges': [[0, 5]]}]}))
    with pytest.raises(ValueError, match='out of range'):
        read_graph_json(str(path))
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="'graphs' list"):
        read_graph_json(str(path))
    with pytest.raises(FileNotFoundError):
        CommunitySmall(json_path=str(tmp_path / 'missing.json'))
