import copy

import pytest
import torch
from torch.autograd.functional import jacobian
from torch_geometric.nn import GATConv, GCNConv

from torch_geometric_gnf.nn import GraphAffineCoupling


def two_graphs():
    # graph 0: nodes 0-2 (a path), graph 1: nodes 3-6 (a cycle + self-loop)
    edge_index = torch.tensor([[0, 1, 1, 2, 3, 4, 5, 6, 6],
                               [1, 0, 2, 1, 4, 5, 6, 3, 6]])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    return edge_index, batch


def make_coupling(memory_saving=False, g=True):
    torch.manual_seed(0)
    f = (GCNConv(2, 2), GATConv(2, 2, heads=1))  # (scale, shift) pair
    g = GATConv(2, 2, heads=2) if g else None  # one module: [scale | shift]
    return GraphAffineCoupling(f, g, memory_saving=memory_saving).double()


@pytest.mark.parametrize('with_g', [True, False])
def test_log_det_equals_jacobian_per_graph(with_g):
    edge_index, batch = two_graphs()
    coupling = make_coupling(g=with_g)
    x = torch.randn(7, 4, dtype=torch.float64)
    with torch.no_grad():
        y, log_det = coupling(x, edge_index, batch)
    assert log_det.shape == (2, )
    jac = jacobian(lambda h: coupling(h, edge_index, batch)[0], x)
    jac = jac.reshape(7 * 4, 7 * 4)
    for graph in range(2):
        idx = torch.nonzero(batch.repeat_interleave(4) == graph).view(-1)
        sign, expected = torch.linalg.slogdet(jac[idx][:, idx])
        assert sign != 0
        assert abs(float(expected) - float(log_det[graph])) < 1e-8
    # Message passing never crosses graphs: off-diagonal blocks are zero.
    cross = batch.repeat_interleave(4).view(-1, 1) != batch.repeat_interleave(4)
    assert jac[cross].abs().max() == 0


def test_inverse_returns_input_and_negative_log_det():
    edge_index, batch = two_graphs()
    coupling = make_coupling()
    x = torch.randn(7, 4, dtype=torch.float64)
    y, log_det = coupling(x, edge_index, batch)
    x_rec, log_det_inv = coupling.inverse(y, edge_index, batch)
    assert (x_rec - x).abs().max() < 1e-10
    assert torch.allclose(log_det_inv, -log_det, atol=1e-12)


def test_memory_saving_matches_plain_including_log_det_gradient():
    edge_index, batch = two_graphs()
    plain = make_coupling(memory_saving=False)
    saving = copy.deepcopy(plain)
    saving.memory_saving = True
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for model in (plain, saving):
        y, log_det = model(x, edge_index, batch)
        loss = y.pow(2).sum() - 3.0 * log_det[0] + log_det[1]
        grads.append(torch.autograd.grad(loss, [x] + list(model.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10)
    # Log-det alone (no gradient flowing into y) also works.
    y, log_det = saving(x, edge_index, batch)
    g, = torch.autograd.grad(log_det.sum(), [x])
    y_p, log_det_p = plain(x, edge_index, batch)
    g_p, = torch.autograd.grad(log_det_p.sum(), [x])
    assert torch.allclose(g, g_p, atol=1e-10)


def test_gradcheck_with_log_det():
    edge_index, batch = two_graphs()
    coupling = make_coupling(memory_saving=True)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: coupling(h, edge_index, batch), (x, ))


def test_single_graph_and_explicit_num_graphs():
    edge_index, _ = two_graphs()
    coupling = make_coupling()
    x = torch.randn(7, 4, dtype=torch.float64)
    _, log_det = coupling(x, edge_index)
    assert log_det.shape == (1, )
    batch = torch.tensor([0, 0, 0, 2, 2, 2, 2])  # graph 1 is empty
    _, log_det3 = coupling(x, edge_index, batch, num_graphs=4)
    assert log_det3.shape == (4, ) and log_det3[1] == 0 and log_det3[3] == 0
    assert torch.allclose(log_det3.sum(), log_det.sum(), atol=1e-12)


def test_additive_pair_is_rejected():
    with pytest.raises(ValueError, match='pair'):
        GraphAffineCoupling.__bases__[0]((GCNConv(2, 2), GCNConv(2, 2)),
                                         GCNConv(2, 2), coupling='additive')
