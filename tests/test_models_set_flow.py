import math

import pytest
import torch

from torch_geometric_gnf.datasets import (HalfMoons6, MixtureOfGaussians,
                                          MixtureOfGaussiansRing)
from torch_geometric_gnf.models import SetFlow, Standardize, build_set_flow

MODELS = ['gnf', 'realnvp']
MIXINGS = ['permutation', 'linear']


def _random_flow(model: str, seed: int = 0, std: float = 0.3, **kwargs) -> SetFlow:
    r"""A float64 flow whose couplings are far from the identity (the heads
    start at zero, so give them random weights)."""
    torch.manual_seed(seed)
    kwargs = {'num_couplings': 3, 'hidden': 8, 'heads': 2, **kwargs}
    flow = build_set_flow(model, **kwargs).double()
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if 'head' in name or 'log_scale' in name:  # mixing: det != 1
                p.normal_(0, std)
    return flow.eval()


@pytest.mark.parametrize('mixing', MIXINGS)
@pytest.mark.parametrize('model', MODELS)
def test_one_node_density_integrates_to_one(model, mixing):
    flow = _random_flow(model, mixing=mixing, std=0.2, loc=torch.tensor([0.5, -0.3]),
                        scale=torch.tensor([1.5, 0.8]))
    g = torch.linspace(-25, 25, 501, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing='ij')
    pts = torch.stack([xx, yy], -1).reshape(-1, 1, 2)  # 1-node sets
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(mass) - 1) < 1e-2


@pytest.mark.parametrize('mixing', MIXINGS)
@pytest.mark.parametrize('model', MODELS)
def test_change_of_variables_matches_jacobian(model, mixing):
    flow = _random_flow(model, mixing=mixing, seed=1, loc=torch.tensor([1.0, 2.0]),
                        scale=torch.tensor([2.0, 0.5]))
    x = torch.randn(1, 3, 2, dtype=torch.float64)
    z, log_det = flow(x)
    jac = torch.autograd.functional.jacobian(lambda t: flow(t.view(1, 3, 2))[0].reshape(-1),
                                             x.reshape(-1))
    assert torch.allclose(log_det[0], torch.linalg.slogdet(jac)[1], atol=1e-9)
    prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum()
    assert torch.allclose(flow.log_prob(x)[0], prior + log_det[0], atol=1e-9)
    # GNF: nodes interact (the Jacobian has off-diagonal node blocks);
    # RealNVP: each node is transformed alone (block diagonal)
    blocks = jac.view(3, 2, 3, 2).permute(0, 2, 1, 3).abs().sum((-1, -2))
    off = blocks[~torch.eye(3, dtype=torch.bool)]
    if model == 'gnf':
        assert (off > 1e-6).all()
    else:
        assert (off == 0).all()


@pytest.mark.parametrize('mixing', MIXINGS)
@pytest.mark.parametrize('model', MODELS)
def test_log_prob_invariant_to_node_order(model, mixing):
    flow = _random_flow(model, mixing=mixing, seed=2)
    x = torch.randn(4, 6, 2, dtype=torch.float64) * 2
    base = flow.log_prob(x)
    for seed in range(3):
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(flow.log_prob(x[:, perm]), base, atol=1e-6, rtol=0)
        z, _ = flow(x[:, perm])
        assert torch.allclose(z, flow(x)[0][:, perm], atol=1e-9)  # equivariant


@pytest.mark.parametrize('mixing', MIXINGS)
@pytest.mark.parametrize('model', MODELS)
def test_inverse_round_trip_and_sampling(model, mixing):
    flow = _random_flow(model, mixing=mixing, seed=3, loc=torch.tensor([0.0, 1.0]),
                        scale=torch.tensor([3.0, 0.1]))
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    z, _ = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-10)
    assert torch.allclose(flow(flow.inverse(x))[0], x, atol=1e-10)
    s = flow.sample(7, 4, generator=torch.Generator().manual_seed(0))
    assert s.shape == (7, 4, 2) and s.dtype == torch.float64 and torch.isfinite(s).all()
    s2 = flow.sample(7, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, s2)
    assert flow.sample(3, 1).shape == (3, 1, 2)


@pytest.mark.parametrize('mixing', MIXINGS)
@pytest.mark.parametrize('model', MODELS)
def test_node_level_input_with_batch_vector(model, mixing):
    flow = _random_flow(model, mixing=mixing, seed=4)
    sets = [torch.randn(n, 2, dtype=torch.float64) for n in (3, 1, 5)]
    x = torch.cat(sets)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([3, 1, 5]))
    lp = flow.log_prob(x, batch)
    assert lp.shape == (3,)
    for i, s in enumerate(sets):
        assert torch.allclose(lp[i], flow.log_prob(s.unsqueeze(0))[0], atol=1e-10)
    z, log_det = flow(x, batch)
    assert torch.allclose(flow.inverse(z, batch), x, atol=1e-10)


def test_standardize_step():
    step = Standardize(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 4.0]))
    x = torch.randn(5, 2)
    batch = torch.tensor([0, 0, 1, 1, 1])
    y, ld = step(x, None, batch, 2)
    assert torch.allclose(y, (x - torch.tensor([1.0, -2.0])) / torch.tensor([2.0, 4.0]))
    assert torch.allclose(ld, -torch.tensor([2.0, 3.0]) * math.log(8.0))
    back, ld_inv = step.inverse(y, None, batch, 2)
    assert torch.allclose(back, x, atol=1e-6) and torch.allclose(ld_inv, -ld)
    with pytest.raises(ValueError, match='positive'):
        Standardize(torch.zeros(2), torch.tensor([1.0, 0.0]))


def test_linear_mixing_sits_between_couplings():
    from torch_geometric_gnf.nn import GraphAffineCoupling, InvertibleLinear
    torch.manual_seed(0)
    flow = build_set_flow('gnf', num_couplings=3, hidden=8, heads=2, mixing='linear')
    kinds = [type(step) for step in flow.flow.couplings]
    assert kinds == [GraphAffineCoupling, InvertibleLinear] * 2 + [GraphAffineCoupling]
    assert flow.flow.permutation is None  # the learned mixing replaces the swap
    # a fresh flow is a rotation: volume preserving, not the identity
    x = torch.randn(2, 4, 2)
    z, log_det = flow(x)
    assert torch.allclose(log_det, torch.zeros(2), atol=1e-5)
    assert not torch.allclose(z, x, atol=1e-3)
    assert torch.allclose(z.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_realnvp_and_gnf_share_width_and_depth():
    gnf, nvp = build_set_flow('gnf'), build_set_flow('realnvp')
    assert len(gnf.flow.couplings) == len(nvp.flow.couplings) == 12
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # RealNVP lacks only the query/key projections of the attention
    qk = sum(p.numel() for n, p in gnf.named_parameters() if '.query.' in n or '.key.' in n)
    assert count(gnf) - qk == count(nvp)
    assert 'GNF' in repr(gnf) and 'RealNVP' in repr(nvp)


@pytest.mark.parametrize('cls', [MixtureOfGaussians, MixtureOfGaussiansRing, HalfMoons6])
@pytest.mark.parametrize('model', MODELS)
def test_short_training_lowers_nll(cls, model):
    torch.manual_seed(0)
    data = cls(1024, seed=0).sets
    test = cls(256, seed=1).sets
    flat = data.reshape(-1, 2)
    flow = build_set_flow(model, num_couplings=4, hidden=16, heads=2,
                          loc=flat.mean(0), scale=flat.std(0))
    opt = torch.optim.Adam(flow.parameters(), lr=5e-3)
    with torch.no_grad():
        before = float(flow.nll_per_node(test))
    for step in range(60):
        idx = torch.randint(0, data.size(0), (64,))
        loss = flow.nll_per_node(data[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(flow.nll_per_node(test))
    assert after < before - 0.3, (before, after)


def test_bad_input():
    with pytest.raises(ValueError, match="'gnf' or 'realnvp'"):
        build_set_flow('maf')
    with pytest.raises(ValueError, match='even'):
        SetFlow(channels=3)
    with pytest.raises(ValueError, match='num_couplings'):
        SetFlow(num_couplings=0)
    with pytest.raises(ValueError, match='both'):
        SetFlow(loc=torch.zeros(2))
    with pytest.raises(ValueError, match="'mixing'"):
        SetFlow(mixing='rotation')
    flow = build_set_flow('gnf', num_couplings=1, hidden=8, heads=2)
    with pytest.raises(ValueError, match=r'\[B, n, 2\]'):
        flow.log_prob(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match='batch'):
        flow.log_prob(torch.randn(2, 3, 2), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match='must be'):
        flow.log_prob(torch.randn(2))
