import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch_geometric.nn import GATConv

from torch_geometric_gnf.nn import GraphAffineCoupling, GraphNormalizingFlow
from torch_geometric_gnf.utils import fully_connected_edge_index


def make_flow(channels=4, num_couplings=3, permutation='reverse', seed=0):
    torch.manual_seed(seed)
    half = channels // 2
    couplings = [GraphAffineCoupling(GATConv(half, 2 * half), GATConv(half, 2 * half))
                 for _ in range(num_couplings)]
    return GraphNormalizingFlow(couplings, channels,
                                permutation=permutation).double()


def test_log_prob_matches_change_of_variables_with_jacobian():
    flow = make_flow()
    batch = torch.tensor([0, 0, 0, 1, 1])
    x = torch.randn(5, 4, dtype=torch.float64)
    log_prob = flow.log_prob(x, batch=batch)
    edge_index = fully_connected_edge_index(batch)
    jac = jacobian(lambda h: flow(h, edge_index, batch)[0], x).reshape(20, 20)
    z, _ = flow(x, edge_index, batch)
    for graph in range(2):
        idx = torch.nonzero(batch.repeat_interleave(4) == graph).view(-1)
        _, log_det = torch.linalg.slogdet(jac[idx][:, idx])
        zg = z[batch == graph]
        log_prior = -0.5 * (zg.pow(2).sum() + zg.numel() * math.log(2 * math.pi))
        assert abs(float((log_prior + log_det).detach()) - float(log_prob[graph].detach())) < 1e-8


def test_log_prob_integrates_to_one_in_2d():
    # One node with 2 features: the density lives on R^2, integrate it on a
    # grid (every grid point is its own single-node graph).
    torch.manual_seed(1)
    couplings = [GraphAffineCoupling(GATConv(1, 2), GATConv(1, 2)) for _ in range(4)]
    flow = GraphNormalizingFlow(couplings, 2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(0.3)  # smooth enough for the grid, still far from N(0, I)
        lin = torch.linspace(-12, 12, 601, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(lin, lin, indexing='ij'), -1).view(-1, 2)
        batch = torch.arange(grid.size(0))
        edge_index = torch.empty(2, 0, dtype=torch.long)
        log_prob = flow.log_prob(grid, edge_index, batch)
    cell = float(lin[1] - lin[0])**2
    assert abs(float(log_prob.exp().sum()) * cell - 1.0) < 1e-2
    gaussian = -0.5 * grid.pow(2).sum(-1) - math.log(2 * math.pi)
    l1_to_prior = float((log_prob.exp() - gaussian.exp()).abs().sum()) * cell
    assert l1_to_prior > 0.2  # a genuinely transformed density


def test_identity_flow_gives_standard_normal_log_prob():
    flow = make_flow()
    with torch.no_grad():
        for p in flow.parameters():
            p.zero_()  # s = t = 0 in every coupling
    x = torch.randn(6, 4, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1, 2])
    expected = torch.zeros(3, dtype=torch.float64).index_add(
        0, batch, (-0.5 * x.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1))
    assert torch.allclose(flow.log_prob(x, batch=batch), expected, atol=1e-12)


@pytest.mark.parametrize('permutation', ['reverse', 'random', None])
def test_inverse_of_forward(permutation):
    flow = make_flow(permutation=permutation)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    x = torch.randn(7, 4, dtype=torch.float64)
    z, _ = flow(x, batch=batch)
    assert (flow.inverse(z, batch=batch) - x).abs().max() < 1e-10


def test_sample_shapes_and_round_trip():
    flow = make_flow()
    torch.manual_seed(0)
    x = flow.sample([3, 5, 2])
    assert x.shape == (10, 4) and x.dtype == torch.float64
    assert torch.isfinite(x).all()
    single = flow.sample(6)
    assert single.shape == (6, 4)
    batch = torch.tensor([0] * 3 + [1] * 5 + [2] * 2)
    torch.manual_seed(0)
    z = torch.randn(10, 4, dtype=torch.float64)
    assert torch.allclose(flow(x, batch=batch)[0], z, atol=1e-10)


def test_training_lowers_nll():
    flow = make_flow(channels=2, num_couplings=2).float()
    data = torch.randn(64, 2) * torch.tensor([0.3, 2.0]) + torch.tensor([1.0, -1.0])
    batch = torch.arange(64) // 4  # 16 sets of 4 nodes
    opt = torch.optim.Adam(flow.parameters(), lr=0.02)
    nll0 = -float(flow.log_prob(data, batch=batch).mean().detach())
    for _ in range(150):
        opt.zero_grad()
        loss = -flow.log_prob(data, batch=batch).mean()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < nll0 - 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match='permutation'):
        make_flow(permutation='shuffle')
    flow = make_flow()
    with pytest.raises(ValueError, match='shape'):
        flow.log_prob(torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match='non-negative'):
        flow.sample([-1, 2])
    assert 'GraphNormalizingFlow(3 couplings' in repr(flow)
