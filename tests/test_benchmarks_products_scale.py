r"""benchmarks/products_scale.py: the graph generator and a tiny run through
the same code path as the full-size one."""
import json
import os.path as osp

import pytest
import torch
from torch_geometric.utils import to_undirected

from conftest import import_benchmark


@pytest.fixture
def bench(monkeypatch):
    return import_benchmark(monkeypatch, 'products_scale')


def test_graph_has_the_requested_size_and_skewed_degrees(bench):
    nodes, edges = bench.graph_size(0.001)
    assert (nodes, edges) == (2449, 61859)
    edge_index = bench.chung_lu_edges(nodes, edges, seed=3)
    assert edge_index.shape == (2, 2 * edges) and edge_index.dtype == torch.long
    assert (edge_index[0] != edge_index[1]).all()
    # distinct undirected edges in both directions, sorted as to_undirected gives
    assert torch.equal(to_undirected(edge_index, num_nodes=nodes), edge_index)
    deg = torch.bincount(edge_index[1], minlength=nodes).float()
    assert deg.max() > 8 * deg.mean() > 8 * deg.median()  # heavy tail, not uniform
    assert torch.equal(bench.chung_lu_edges(nodes, edges, seed=3), edge_index)
    with pytest.raises(ValueError, match="'scale'"):
        bench.graph_size(0.0)


def test_tiny_run(bench, tmp_path):
    # Three fresh processes: graph generation, one training step, inference.
    results_path, md = str(tmp_path / 'r.json'), str(tmp_path / 'r.md')
    results = bench.main(['--scale', '0.0005', '--depths', '1', '--baseline-scale', '0',
                          '--cache-dir', str(tmp_path), '--results', results_path,
                          '--markdown', md])
    graph = results['graph|0.0005']
    assert graph['nodes'] == 1225 and graph['directed_edges'] == 2 * 30930
    assert osp.exists(graph['path']) and graph['path'].startswith(str(tmp_path))
    for mode in ('train', 'infer'):
        r = results[f'ours|0.0005|1|{mode}']
        assert r['finite'] and r['memory_release'], r
        assert 0 <= r['growth_gib'] < r['peak_gib'] and r['seconds'] > 0
    assert json.load(open(results_path)).keys() == results.keys()
    assert '| 0.0005 | 1 |' in open(md).read()


def test_table_with_the_gatconv_baseline(bench):
    run = {'peak_gib': 2.0, 'growth_gib': 1.0, 'seconds': 3.0}
    results = {'ours|0.01|1|train': run, 'ours|0.01|4|train': {**run, 'peak_gib': 2.2},
               'gatconv|0.01|4|train': {**run, 'growth_gib': 5.0},
               'ours|1|16|infer': {'error': 'exit code -9 (out of memory?)'}}
    text = bench.render(results)
    assert '| 0.01 | 4 | - | 2.20 | 1.00 | 3.0 | - | - | - | 1.10 |' in text
    assert '| 0.01 | 4 | 5.00 | 1.00 | 5.00 | 3.0 | 3.0 | 500 |' in text
    assert 'out of memory' in text


def test_bad_arguments(bench):
    for argv in (['--scale', '2'], ['--baseline-scale', '-1'], ['--depths', '-1']):
        with pytest.raises(SystemExit):
            bench.main(argv)
