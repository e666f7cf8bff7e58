import math

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import is_undirected

from torch_geometric_gnf.datasets.graphrnn import community_small_graphs
from torch_geometric_gnf.models import GraphAutoEncoder, GraphGenerator
from torch_geometric_gnf.nn import GraphAffineCoupling, InvertibleLinear


MIXINGS = ['permutation', 'linear']


def make_generator(node_counts=(3, 3, 5), channels=4, couplings=2, seed=0,
                   perturb=True, mixing='permutation') -> GraphGenerator:
    torch.manual_seed(seed)
    ae = GraphAutoEncoder(embedding_channels=channels, hidden_channels=8,
                          num_layers=1, heads=2)
    gen = GraphGenerator(ae, list(node_counts), num_couplings=couplings,
                         hidden_channels=8, heads=2, mixing=mixing)
    if perturb:  # couplings start as the identity; make them non-trivial
        with torch.no_grad():
            for coupling in gen.flow.couplings:
                if not isinstance(coupling, GraphAffineCoupling):
                    continue  # a learned mixing starts as a random rotation
                for half in (coupling.f, coupling.g):
                    half.lin_out.weight.normal_(0, 0.5)
                    half.lin_out.bias.normal_(0, 0.5)
    return gen.double()


@pytest.mark.parametrize('mixing', MIXINGS)
def test_inverse_round_trip_and_nontrivial_map(mixing):
    gen = make_generator(mixing=mixing)
    x = torch.randn(11, 4, dtype=torch.float64)
    batch = torch.tensor([0] * 3 + [1] * 5 + [2] * 3)
    z = gen(x, batch)
    assert not torch.allclose(z, x, atol=1e-2)
    assert torch.allclose(gen.inverse(z, batch), x, atol=1e-9)


@pytest.mark.parametrize('mixing', MIXINGS)
def test_log_prob_is_exact_change_of_variables(mixing):
    gen = make_generator(mixing=mixing)
    x = torch.randn(3, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: gen(v.view(3, 4)).reshape(-1),
                                             x.reshape(-1))
    z = gen(x)
    expected = (-0.5 * (z.pow(2) + math.log(2 * math.pi))).sum() + torch.slogdet(jac)[1]
    assert gen.log_prob(x).item() == pytest.approx(expected.item(), abs=1e-8)


@pytest.mark.parametrize('mixing', MIXINGS)
def test_log_prob_is_permutation_invariant_and_batch_independent(mixing):
    gen = make_generator(mixing=mixing)
    graphs = [torch.randn(n, 4, dtype=torch.float64) for n in (3, 5, 2)]
    x = torch.cat(graphs)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([3, 5, 2]))
    lp = gen.log_prob(x, batch)
    alone = torch.cat([gen.log_prob(g) for g in graphs])
    assert torch.allclose(lp, alone, atol=1e-9)
    perm = torch.randperm(5)
    assert gen.log_prob(graphs[1][perm]).item() == pytest.approx(lp[1].item(), abs=1e-9)
    # Attention couples the nodes: moving one node changes the others' latents.
    x2 = graphs[1].clone()
    x2[0] += 1.0
    assert not torch.allclose(gen(x2)[1:], gen(graphs[1])[1:])


def test_sample_returns_valid_graphs_with_prior_sizes():
    gen = make_generator(node_counts=(3, 3, 5, 7))
    out = gen.sample(64, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, Batch) and out.num_graphs == 64
    sizes = [g.num_nodes for g in out.to_data_list()]
    assert set(sizes) <= {3, 5, 7} and set(sizes) == {3, 5, 7}
    assert sizes.count(3) > sizes.count(7)  # p(3) = 1/2, p(7) = 1/4
    ei = out.edge_index
    assert ei.numel() > 0
    assert is_undirected(ei, num_nodes=out.num_nodes)
    assert (ei[0] != ei[1]).all()
    assert (out.batch[ei[0]] == out.batch[ei[1]]).all()
    assert out.x.shape == (out.num_nodes, 4)
    matched = gen.sample(num_nodes=[4, 9], generator=torch.Generator().manual_seed(1))
    assert [g.num_nodes for g in matched.to_data_list()] == [4, 9]
    # Decoding the sampled embeddings again gives the same graphs.
    again = gen.auto_encoder.to_graphs(out.x, out.batch)
    assert torch.equal(again.edge_index, out.edge_index)


def test_flow_lowers_its_loss_on_tiny_embeddings():
    torch.manual_seed(0)
    graphs = community_small_graphs(seed=4)[::20]
    batch = Batch.from_data_list(graphs)
    ae = GraphAutoEncoder(embedding_channels=4, hidden_channels=8, num_layers=2, heads=2)
    gen = GraphGenerator(ae, [g.num_nodes for g in graphs], num_couplings=2,
                         hidden_channels=16, heads=2)
    opt = torch.optim.Adam(gen.flow.parameters(), lr=1e-2)
    fixed = gen.embed(batch)

    def nll() -> float:
        with torch.no_grad():
            return -gen.log_prob(fixed, batch.batch).sum().item() / fixed.size(0)

    before = nll()
    for _ in range(60):
        x = gen.embed(batch)
        loss = -gen.log_prob(x, batch.batch).sum() / x.size(0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert nll() < before - 0.5


def test_bad_input_raises_clear_errors():
    ae = GraphAutoEncoder(embedding_channels=3, hidden_channels=8, num_layers=1, heads=2)
    with pytest.raises(ValueError, match='even'):
        GraphGenerator(ae, [3])
    ae = GraphAutoEncoder(embedding_channels=4, hidden_channels=8, num_layers=1, heads=2)
    with pytest.raises(TypeError, match='GraphAutoEncoder'):
        GraphGenerator(torch.nn.Linear(2, 2), [3])
    with pytest.raises(ValueError, match='node_counts'):
        GraphGenerator(ae, [])
    with pytest.raises(ValueError, match='node_counts'):
        GraphGenerator(ae, [3, 0])
    gen = GraphGenerator(ae, [3], num_couplings=1, hidden_channels=8, heads=2)
    with pytest.raises(ValueError, match='exactly one'):
        gen.sample(2, num_nodes=[3, 3])
    with pytest.raises(ValueError, match='exactly one'):
        gen.sample()
    with pytest.raises(ValueError, match='positive int'):
        gen.sample(0)
    with pytest.raises(ValueError, match="'num_nodes' must be"):
        gen.sample(num_nodes=[3, 0])
    with pytest.raises(ValueError, match='shape'):
        gen.log_prob(torch.randn(3, 5))
    assert 'GraphGenerator(channels=4' in repr(gen)


def test_linear_mixing_sits_between_the_couplings():
    gen = make_generator(couplings=3, mixing='linear', perturb=False)
    steps = list(gen.flow.couplings)
    assert [type(m) for m in steps] == [GraphAffineCoupling, InvertibleLinear] * 2 + \
        [GraphAffineCoupling]
    assert gen.flow.permutation is None and gen.num_couplings == 3
    assert 'mixing=linear' in repr(gen)
    # couplings start as the identity, so only the mixings act: volume preserving
    x = torch.randn(5, 4, dtype=torch.float64)
    z = gen(x)
    assert not torch.allclose(z, x)
    assert torch.allclose(z.norm(dim=-1), x.norm(dim=-1), atol=1e-9)
    with pytest.raises(ValueError, match="'mixing'"):
        make_generator(mixing='swap')


def test_embed_recentres_each_graph_without_changing_its_decoding():
    graphs = community_small_graphs(seed=5)[::40]
    batch = Batch.from_data_list(graphs)
    ae = GraphAutoEncoder(embedding_channels=4, hidden_channels=8, num_layers=2, heads=2)
    exact = GraphGenerator(ae, [3], num_couplings=1, hidden_channels=8, heads=2,
                           center_std=0.0)
    raw = GraphGenerator(ae, [3], num_couplings=1, hidden_channels=8, heads=2,
                         center_std=None)
    torch.manual_seed(7)
    x_raw = raw.embed(batch)
    torch.manual_seed(7)
    x_centred = exact.embed(batch)
    means = torch.stack([x_centred[batch.batch == i].mean(0) for i in range(len(graphs))])
    assert means.abs().max() < 1e-5
    assert not torch.allclose(x_raw, x_centred, atol=1e-3)
    assert torch.equal(ae.to_graphs(x_raw, batch.batch).edge_index,
                       ae.to_graphs(x_centred, batch.batch).edge_index)
    with pytest.raises(ValueError, match='center_std'):
        GraphGenerator(ae, [3], center_std=-1.0)


def test_embed_adds_the_auto_encoders_embedding_noise():
    graphs = community_small_graphs(seed=5)[::20]
    batch = Batch.from_data_list(graphs)
    ae = GraphAutoEncoder(embedding_channels=4, hidden_channels=8, num_layers=2, heads=2)
    gen = GraphGenerator(ae, [3], num_couplings=1, hidden_channels=8, heads=2,
                         center_std=None)
    torch.manual_seed(7)
    clean = gen.embed(batch)
    ae.embedding_noise = 0.5
    torch.manual_seed(7)
    noisy = gen.embed(batch)  # same encoder input noise, then the embedding noise
    diff = noisy - clean
    assert diff.std().item() == pytest.approx(0.5, rel=0.15)
    assert diff.mean().abs().item() < 0.1


def test_shared_dense_layout_matches_to_dense_batch():
    from torch_geometric.utils import to_dense_batch

    from torch_geometric_gnf.nn.dense_attention import (DenseAttentionCoupling, dense_layout,
                                                        fully_connected_attend)
    torch.manual_seed(0)
    graph_index = torch.tensor([0, 0, 0, 1, 3, 3, 3, 3])  # graph 2 is empty
    h = torch.randn(graph_index.numel(), 5, dtype=torch.float64)
    layout = dense_layout(graph_index)
    dense, mask = to_dense_batch(h, graph_index)
    assert torch.equal(layout.mask, mask)
    assert torch.equal(layout.pad(h), dense)
    assert torch.equal(layout.unpad(layout.pad(h)), h)
    assert torch.equal(layout.attend, fully_connected_attend(mask))
    # a network gives the same output with a shared layout or its own, and
    # its gradient flows through the padding
    net = DenseAttentionCoupling(5, 8, num_blocks=2, heads=2).double()
    torch.nn.init.normal_(net.lin_out.weight)
    x = h.clone().requires_grad_()
    out = net(x, None, graph_index=graph_index)
    assert torch.equal(out, net(h, None, layout=layout))
    assert torch.autograd.gradcheck(lambda t: net(t, None, layout=layout), (x,))
    # nodes of one graph do not see the other graphs
    y = h.clone()
    y[graph_index == 3] += 1.0
    changed = (net(y, None, layout=layout) != out).any(-1)
    assert torch.equal(changed, graph_index == 3)


def test_couplings_compiled_with_torch_compile_match_eager():
    # One compiled graph (dynamic shapes, no graph breaks) for every coupling:
    # same log-density and gradients as eager on batches of other sizes, and
    # bad input is still refused before the compiled couplings run.
    eager = make_generator(couplings=2, mixing='linear')
    compiled = make_generator(couplings=2, mixing='linear')
    for coupling in compiled.flow.couplings:
        if isinstance(coupling, GraphAffineCoupling):
            coupling.compile(dynamic=True, fullgraph=True)
    for counts in ([3, 5, 2], [4, 1, 6, 6], [1]):
        batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        x = torch.randn(int(sum(counts)), 4, dtype=torch.float64)
        results = []
        for gen in (eager, compiled):
            gen.zero_grad()
            log_prob = gen.log_prob(x, batch)
            log_prob.sum().backward()
            results.append((log_prob.detach(), [p.grad for p in gen.flow.parameters()]))
        (lp_e, g_e), (lp_c, g_c) = results
        assert torch.allclose(lp_e, lp_c, atol=1e-9)
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g_e, g_c))
    x[0, 0] = float('nan')
    with pytest.raises(ValueError, match='non-finite'):
        compiled.log_prob(x, batch)
