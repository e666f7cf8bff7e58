r"""Every public entry of the generation models that takes a ``batch``
vector gives, for any node order, the results of scoring each graph alone
(issue 26, item 4: the dense layouts used to assume sorted graph ids)."""
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv
from torch_geometric.utils import to_undirected

from torch_geometric_gnf.models import GraphAutoEncoder, GraphGenerator, build_set_flow
from torch_geometric_gnf.nn import GraphAffineCoupling, GraphNormalizingFlow

# Graph id per node: the issue's orders, and an interleaved one with a
# graph (1) that has no nodes.
ORDERS = [[1, 0, 1, 1], [0, 1, 0], [2, 0, 2, 1, 0, 2, 1], [3, 0, 3, 0, 2, 3]]


def perturbed_generator(channels=4) -> GraphGenerator:
    torch.manual_seed(0)
    ae = GraphAutoEncoder(embedding_channels=channels, hidden_channels=8,
                          num_layers=2, heads=2)
    gen = GraphGenerator(ae, [2, 3], num_couplings=2, hidden_channels=8, heads=2)
    with torch.no_grad():  # fresh couplings are the identity
        for coupling in gen.flow.couplings:
            for half in (coupling.f, coupling.g):
                half.lin_out.weight.normal_(0, 0.5)
                half.lin_out.bias.normal_(0, 0.5)
    return gen.double().eval()


def per_graph(batch):
    return [torch.nonzero(batch == g).view(-1) for g in range(int(batch.max()) + 1)]


def test_order_helpers_group_stably_and_map_back():
    from torch_geometric_gnf.utils import graph_order, relabel_edges, restore_order
    batch = torch.tensor([2, 0, 2, 1, 0])
    order = graph_order(batch)
    assert order.tolist() == [1, 4, 3, 0, 2]
    assert graph_order(torch.tensor([0, 0, 1, 3])) is None
    h = torch.arange(5.0).view(5, 1)
    assert torch.equal(restore_order(h[order], order), h)
    edge_index = torch.tensor([[0, 3], [2, 1]])  # old node 0 is now 3, ...
    assert relabel_edges(edge_index, order).tolist() == [[3, 2], [4, 0]]


@pytest.mark.parametrize('order', ORDERS)
def test_generator_log_prob_forward_inverse_equal_per_graph(order):
    gen = perturbed_generator()
    batch = torch.tensor(order)
    x = torch.randn(batch.numel(), 4, dtype=torch.float64)
    lp = gen.log_prob(x, batch)
    z = gen(x, batch)
    for g, nodes in enumerate(per_graph(batch)):
        if nodes.numel() == 0:
            assert lp[g].item() == 0.0  # an empty graph has density 1
            continue
        assert lp[g].item() == pytest.approx(gen.log_prob(x[nodes]).item(), abs=1e-9)
        assert torch.allclose(z[nodes], gen(x[nodes]), atol=1e-9)
    assert torch.allclose(gen.inverse(z, batch), x, atol=1e-9)


def test_generator_issue_example_gives_the_per_graph_scores():
    gen = perturbed_generator()
    x = torch.randn(4, 4, dtype=torch.float64)
    lp = gen.log_prob(x, torch.tensor([1, 0, 1, 1]))
    alone = torch.stack([gen.log_prob(x[[1]])[0], gen.log_prob(x[[0, 2, 3]])[0]])
    assert torch.allclose(lp, alone, atol=1e-9)


def two_graphs():
    # a triangle (graph 0) and a path of two edges (graph 1), nodes interleaved
    batch = torch.tensor([1, 0, 1, 0, 1, 0])
    tri, path = [1, 3, 5], [0, 2, 4]
    edges = [(tri[0], tri[1]), (tri[1], tri[2]), (tri[0], tri[2]),
             (path[0], path[1]), (path[1], path[2])]
    edge_index = to_undirected(torch.tensor(edges).t())
    grouped = torch.tensor(tri + path)  # the same nodes, sorted by graph
    return edge_index, batch, grouped


def regrouped(edge_index, grouped):
    return torch.argsort(grouped)[edge_index]  # node ids after x[grouped]


def test_auto_encoder_encode_of_any_order_equals_the_grouped_batch():
    torch.manual_seed(0)
    ae = GraphAutoEncoder(embedding_channels=4, hidden_channels=8, num_layers=2,
                          heads=2).double()
    edge_index, batch, grouped = two_graphs()
    z = ae.encode(edge_index, batch, generator=torch.Generator().manual_seed(3))
    assert z.shape == (6, 4)  # one embedding per node
    sorted_edges = regrouped(edge_index, grouped)
    expected = ae.encode(sorted_edges, batch[grouped],
                         generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z[grouped], expected, atol=1e-12)

    # The issue's [0, 1, 0]: three embeddings, not two; a graph with an
    # edge between its nodes 0 and 2 is undirected.
    one = ae.encode(to_undirected(torch.tensor([[0], [2]])), torch.tensor([0, 1, 0]))
    assert one.shape == (3, 4)


def test_auto_encoder_loss_decoder_and_counts_equal_the_grouped_batch():
    ae = GraphAutoEncoder(embedding_channels=2, hidden_channels=8, num_layers=1,
                          heads=2).double()
    edge_index, batch, grouped = two_graphs()
    z = torch.randn(6, 2, dtype=torch.float64)
    data = Data(edge_index=edge_index, batch=batch, num_nodes=6)
    ref = Data(edge_index=regrouped(edge_index, grouped), batch=batch[grouped],
               num_nodes=6)
    bce, nodes = ae.loss(data, z)
    ref_bce, _ = ae.loss(ref, z[grouped])
    assert nodes == 6 and bce.item() == pytest.approx(ref_bce.item(), rel=1e-12)
    assert ae.incorrect_edges(data, z) == ae.incorrect_edges(ref, z[grouped])
    # decode pads each graph's nodes in the order they appear in z
    logits, mask = ae.decode_logits(z, batch)
    assert torch.equal(logits, ae.decode_logits(z[grouped], batch[grouped])[0])
    graphs = ae.to_graphs(z, batch)
    assert torch.equal(graphs.x, z[grouped])
    assert graphs.num_graphs == 2


def test_set_flow_node_level_input_in_any_order():
    torch.manual_seed(0)
    flow = build_set_flow('gnf', channels=2, num_couplings=2, hidden=8, heads=2).double()
    with torch.no_grad():
        for coupling in flow.flow.couplings:
            for half in (coupling.f, coupling.g):
                half.head.weight.normal_(0, 0.3)
    batch = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    x = torch.randn(7, 2, dtype=torch.float64)
    lp = flow.log_prob(x, batch)
    z, log_det = flow(x, batch)
    for g, nodes in enumerate(per_graph(batch)):
        assert lp[g].item() == pytest.approx(flow.log_prob(x[nodes]).item(), abs=1e-9)
        assert torch.allclose(z[nodes], flow(x[nodes])[0], atol=1e-9)
    assert torch.allclose(flow.inverse(z, batch), x, atol=1e-9)


def test_graph_normalizing_flow_unsorted_batch_stays_per_graph():
    # GCN messages over the fully connected graph the flow builds per graph
    torch.manual_seed(0)
    flow = GraphNormalizingFlow([GraphAffineCoupling(GCNConv(1, 2), GCNConv(1, 2))
                                 for _ in range(2)], 2).double()
    batch = torch.tensor([1, 0, 1, 1])
    x = torch.randn(4, 2, dtype=torch.float64)
    lp = flow.log_prob(x, batch=batch)
    for g, nodes in enumerate(per_graph(batch)):
        assert lp[g].item() == pytest.approx(flow.log_prob(x[nodes]).item(), abs=1e-9)
    z = flow.sample([2, 3], batch=torch.tensor([1, 0, 1, 0, 0]))
    assert z.shape == (5, 2)


def test_unsorted_batch_in_a_pyg_batch_object():
    torch.manual_seed(0)
    ae = GraphAutoEncoder(embedding_channels=4, hidden_channels=8, num_layers=1, heads=2)
    gen = GraphGenerator(ae, [3], num_couplings=1, hidden_channels=8, heads=2)
    edge_index, batch, _ = two_graphs()
    x = gen.embed(Batch(edge_index=edge_index, batch=batch, num_nodes=6))
    assert x.shape == (6, 4)
