import pytest
import torch

from torch_geometric_gnf.nn import InvertibleLinear


def _random_linear(channels=4, seed=0):
    r"""A float64 mixing moved away from its rotation start (det != 1)."""
    torch.manual_seed(seed)
    lin = InvertibleLinear(channels).double()
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return lin


def test_starts_as_a_seeded_rotation():
    a, b = InvertibleLinear(3, seed=5), InvertibleLinear(3, seed=5)
    w = a.weight().double()
    assert torch.allclose(w @ w.t(), torch.eye(3, dtype=torch.float64), atol=1e-6)
    assert torch.equal(a.weight(), b.weight())
    assert not torch.equal(a.weight(), InvertibleLinear(3, seed=6).weight())
    y, log_det = a(torch.randn(5, 3))
    assert torch.allclose(log_det, torch.zeros(1), atol=1e-6)
    assert 'InvertibleLinear(3)' == repr(a)


def test_log_det_matches_jacobian_and_counts_nodes_per_graph():
    lin = _random_linear()
    x = torch.randn(6, 4, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 2, 2, 2])  # graph 1 is empty
    y, log_det = lin(x, None, batch, 3)
    assert torch.allclose(y, x @ lin.weight().t())
    per_node = torch.linalg.slogdet(lin.weight())[1]
    assert torch.allclose(log_det, torch.stack([3 * per_node, 0 * per_node, 3 * per_node]))
    jac = torch.autograd.functional.jacobian(lambda t: lin(t.view(2, 4))[0].reshape(-1),
                                             x[:2].reshape(-1))
    assert torch.allclose(lin(x[:2])[1][0], torch.linalg.slogdet(jac)[1], atol=1e-10)


def test_inverse_of_forward():
    lin = _random_linear(seed=1)
    x = torch.randn(7, 4, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    y, log_det = lin(x, None, batch)
    back, log_det_inverse = lin.inverse(y, None, batch)
    assert torch.allclose(back, x, atol=1e-12)
    assert torch.allclose(log_det_inverse, -log_det)
    assert torch.allclose(lin(lin.inverse(x)[0])[0], x, atol=1e-12)


def test_gradcheck():
    lin = _random_linear(channels=3, seed=2)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    batch = torch.tensor([0, 1, 1, 1])

    def fn(x, lower, upper, log_scale):
        params = {'lower': lower, 'upper': upper, 'log_scale': log_scale}
        return torch.func.functional_call(lin, params, (x, None, batch, 2))

    params = [p.detach().clone().requires_grad_() for p in
              (lin.lower, lin.upper, lin.log_scale)]
    assert torch.autograd.gradcheck(fn, (x, *params))


def test_bad_input():
    with pytest.raises(ValueError, match='positive'):
        InvertibleLinear(0)
    lin = InvertibleLinear(2)
    with pytest.raises(ValueError, match=r'\[num_nodes, 2\]'):
        lin(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r'\[num_nodes, 2\]'):
        lin.inverse(torch.randn(3))
    with pytest.raises(ValueError):
        lin(torch.randn(3, 2), None, torch.tensor([0, 1]))  # batch of wrong size
