r"""benchmarks/pubmed_memory.py: the paper's formula and a tiny measured run."""
import os.path as osp

import pytest
import torch

from conftest import import_benchmark


@pytest.fixture
def bench(monkeypatch):
    return import_benchmark(monkeypatch, 'pubmed_memory')


def test_paper_formula_reproduces_section_4_2(bench):
    f = bench.paper_formula(19717, 500, 750, depth=5)
    # Section 4.2: W_GNN = 500*750 + 750*500, intermediates 19717*(500+750)*5.
    assert f['gnn_values'] == 500 * 750 + 750 * 500 + 19717 * 500 * 5 + 19717 * 750 * 5
    assert f['gnf_values'] == 2 * (250 * 750 + 750 * 250) + 19717 * 500
    # The paper's 945.9 M is this count in MiB of float64.
    assert round(f['gnn_mib64'], 1) == 945.9
    assert f['ratio'] > 10
    # The GNF term does not depend on the number of steps.
    assert bench.paper_formula(19717, 500, 750, depth=80)['gnf_values'] == f['gnf_values']


def test_models_match_the_paper_description(bench):
    gnn = bench.build_model('gnn', 2, 20, 30, 3)
    gnf = bench.build_model('gnf', 2, 20, 30, 3)
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters()
                            if n.endswith('weight') and 'head' not in n)
    # W_GNN = d*h + h*d per step, W_GNF = 2 * (d/2*h + h*d/2) per step
    assert weights(gnn) == 2 * (20 * 30 + 30 * 20)
    assert weights(gnf) == 2 * 2 * (10 * 30 + 30 * 10)
    adj = bench.random_adjacency(40, 120, torch.device('cpu'))
    assert torch.allclose(adj.to_dense().sum(-1)[adj.to_dense().sum(-1) > 0],
                          torch.ones(1))  # mean aggregation
    x = torch.randn(40, 20)
    for model in (gnn, gnf):
        h = x
        for step in model['steps']:
            h = step(h, adj)
        assert h.shape == (40, 20)
    with pytest.raises(ValueError, match='Unknown method'):
        bench.build_model('gcn', 1, 4, 4, 2)


def test_tiny_benchmark_runs(bench, tmp_path):
    # Four fresh processes (GNN and GNF at K = 2 and 10). Growth between the
    # depths is compared, not absolute peaks: a constant per-process overhead
    # (allocator arenas, lazily loaded kernels) cancels out of the difference.
    md, png = str(tmp_path / 'pubmed.md'), str(tmp_path / 'pubmed.png')
    results = bench.main(['--nodes', '20000', '--edges', '80000', '--dim', '64',
                          '--hidden', '96', '--depths', '2', '10',
                          '--markdown', md, '--plot', png])
    grow = {m: results[(m, 10)]['activation_mb'] - results[(m, 2)]['activation_mb']
            for m in ('gnn', 'gnf')}
    # The GNN stores ~K x N x (d + 2 h) activations (8 more steps: ~160 MB
    # here), the GNF about one step's whatever K.
    assert grow['gnn'] > 60.0, results
    assert grow['gnn'] > 4 * max(grow['gnf'], 1.0), results
    assert results[('gnf', 10)]['activation_mb'] < results[('gnf', 10)]['peak_mb']
    text = open(md).read()
    assert '| 2 |' in text and '| 10 |' in text and 'measured ratio' in text
    assert osp.getsize(png) > 1000


def test_bad_arguments(bench):
    with pytest.raises(SystemExit):
        bench.main(['--dim', '7'])
    with pytest.raises(SystemExit):
        bench.main(['--depths', '0'])
