import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch_geometric.loader import DataLoader

from torch_geometric_gnf.datasets import (HalfMoons6, MixtureOfGaussians,
                                          MixtureOfGaussiansRing, PointSetDataset,
                                          moons_positions)

LOG_2PI_E = math.log(2 * math.pi * math.e)


def test_moons_positions_follow_make_moons_definition():
    # scikit-learn: outer (cos t, sin t), inner (1 - cos t, 1 - sin t - 0.5),
    # t = linspace(0, pi, 3) for n_samples=6.
    expected = torch.tensor([[1, 0], [0, 1], [-1, 0],
                             [0, 0.5], [1, -0.5], [2, 0.5]], dtype=torch.float64)
    assert torch.allclose(moons_positions(6), expected, atol=1e-12)
    assert moons_positions(7).shape == (7, 2)  # 3 outer + 4 inner


def _quadrant_index(x):
    # centres in order (+,+), (-,+), (-,-), (+,-)
    q = torch.where(x[..., 0] > 0, torch.where(x[..., 1] > 0, 0, 3),
                    torch.where(x[..., 1] > 0, 1, 2))
    return q


def test_mog_statistics():
    ds = MixtureOfGaussians(4000, seed=0)
    x = ds.sets.double()
    assert x.shape == (4000, 4, 2) and ds.sets.dtype == torch.float32
    q = _quadrant_index(x)
    # one point per Gaussian in (practically) every set
    assert (q.sort(dim=1).values == torch.arange(4)).all(dim=1).float().mean() > 0.999
    centres = torch.tensor([[5., 5.], [-5., 5.], [-5., -5.], [5., -5.]], dtype=torch.float64)
    for i in range(4):
        pts = x[q == i]
        assert torch.allclose(pts.mean(0), centres[i], atol=0.06)
        assert torch.allclose(pts.std(0), torch.ones(2, dtype=torch.float64), atol=0.05)
    # shuffled: the first node's Gaussian is uniform over the four
    counts = torch.bincount(q[:, 0], minlength=4).double() / 4000
    assert (counts - 0.25).abs().max() < 0.03


def test_ring_statistics_and_uniform_rotation():
    ds = MixtureOfGaussiansRing(4000, seed=1)
    x = ds.sets.double()
    # rotation keeps the square: the set's centroid stays near the origin
    # (std 1/2 per coordinate) and points sit at radius ~ 5 sqrt 2
    centroid = x.mean(1)
    assert centroid.abs().mean() < 0.45
    r = x.norm(dim=-1)
    assert abs(float(r.mean()) - math.sqrt(50)) < 0.1
    # the angle of the points is uniform on the circle
    theta = torch.atan2(x[..., 1], x[..., 0]).reshape(-1)
    hist = torch.histc(theta, bins=16, min=-math.pi, max=math.pi) / theta.numel()
    assert (hist - 1 / 16).abs().max() < 0.01
    # the drawn angles themselves are uniform on [0, 2 pi)
    _, angles = ds.generate(20000, seed=5, return_angles=True)
    assert float(angles.min()) >= 0 and float(angles.max()) < 2 * math.pi
    ks = np.abs(np.sort(angles.numpy()) / (2 * math.pi)
                - np.arange(1, 20001) / 20000).max()
    assert ks < 0.015  # Kolmogorov-Smirnov, ~1.4% critical value at 1e-3
    # pairwise distances of a set: four sides ~ 10, two diagonals ~ 14.1
    d = torch.cdist(x, x).reshape(4000, -1).sort(dim=1).values[:, 4:]
    assert abs(float(d[:, :8].mean()) - 10) < 0.2
    assert abs(float(d[:, 8:].mean()) - 10 * math.sqrt(2)) < 0.2


def test_moons_statistics():
    ds = HalfMoons6(3000, seed=2)
    x = ds.sets.double()
    pos = moons_positions(6)
    # match every node to its nearest position: a permutation of the six
    d = torch.cdist(x, pos.expand(3000, 6, 2))
    nearest = d.argmin(-1)
    assert (nearest.sort(dim=1).values == torch.arange(6)).all()
    noise = x - pos[nearest]
    assert torch.allclose(noise.reshape(-1, 2).mean(0), torch.zeros(2, dtype=torch.float64),
                          atol=0.003)
    assert torch.allclose(noise.reshape(-1, 2).std(0),
                          torch.full((2,), 0.05, dtype=torch.float64), atol=0.002)
    counts = torch.bincount(nearest[:, 0], minlength=6).double() / 3000
    assert (counts - 1 / 6).abs().max() < 0.03


def test_seeded_and_batched_with_pyg_loader():
    a, b = MixtureOfGaussians(50, seed=3), MixtureOfGaussians(50, seed=3)
    assert torch.equal(a.sets, b.sets)
    assert not torch.equal(a.sets, MixtureOfGaussians(50, seed=4).sets)
    assert a[7].x.shape == (4, 2) and torch.equal(a[7].x, a.sets[7])
    batch = next(iter(DataLoader(HalfMoons6(20, seed=0), batch_size=8)))
    assert batch.x.shape == (48, 2) and batch.num_graphs == 8
    assert torch.equal(batch.batch, torch.arange(8).repeat_interleave(6))
    assert len(MixtureOfGaussians(0)) == 0


def _brute_force_log_density(x, centres, std):
    # independent reference: explicit sum over node orders in numpy
    n = len(centres)
    total = 0.0
    for perm in itertools.permutations(range(n)):
        diff = x[list(perm)] - centres
        total += np.exp(-0.5 * (diff ** 2).sum() / std ** 2) / (2 * np.pi * std ** 2) ** n
    return np.log(total / math.factorial(n))


def test_log_density_matches_brute_force():
    for ds in (MixtureOfGaussians(1, seed=0), HalfMoons6(1, seed=0)):
        x = ds.generate(5, seed=9).double()
        # also points between modes, where several orders contribute
        x = torch.cat([x, 0.5 * x[:2]])
        got = ds.log_density(x)
        for i in range(x.size(0)):
            ref = _brute_force_log_density(x[i].numpy(), ds.centers.numpy(), ds.std)
            assert abs(float(got[i]) - ref) < 1e-8 * max(1, abs(ref))


def test_ring_log_density_matches_quadrature():
    ds = MixtureOfGaussiansRing(1, seed=0)
    x = ds.generate(3, seed=11).double()
    x = torch.cat([x, 0.7 * x[:1]])
    got = ds.log_density(x)
    c = ds.centers.numpy()
    for i in range(x.size(0)):
        def density(theta):
            rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
            return np.exp(_brute_force_log_density(x[i].numpy(), c @ rot.T, ds.std))
        val, _ = integrate.quad(density, 0, 2 * np.pi, limit=400,
                                points=np.linspace(0, 2 * np.pi, 64)[1:-1])
        assert abs(float(got[i]) - math.log(val / (2 * np.pi))) < 1e-6


def test_exact_density_normalises():
    # one-node ring: a 2-D density, integrate on a grid
    ring1 = PointSetDataset(torch.tensor([[5.0, 5.0]]), 1.0, True, 0)
    g = torch.linspace(-12, 12, 121, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing='ij')
    pts = torch.stack([xx, yy], -1).reshape(-1, 1, 2)
    cell = float(g[1] - g[0]) ** 2
    dens = ring1.log_density(pts, num_angles=180, chunk_size=8192).exp()
    assert abs(float(dens.sum()) * cell - 1) < 1e-3
    # one-node sets: the joint density is the marginal density
    assert torch.allclose(ring1.log_density(pts[:50]), ring1.marginal_log_density(pts[:50, 0]))
    # two overlapping nodes (sum over both orders matters): a 4-D grid
    two = PointSetDataset(torch.tensor([[0.0, 0.0], [1.0, 0.5]]), 0.8, False, 0)
    g = torch.linspace(-3.5, 4.5, 29, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, g, g, indexing='ij'), -1).reshape(-1, 2, 2)
    total = float(two.log_density(grid, chunk_size=100000).exp().sum()) * float(g[1] - g[0]) ** 4
    assert abs(total - 1) < 1e-2


@pytest.mark.parametrize('cls,joint,indep', [
    (MixtureOfGaussians, LOG_2PI_E + math.log(24) / 4, LOG_2PI_E + math.log(4)),
    (HalfMoons6, LOG_2PI_E + 2 * math.log(0.05) + math.lgamma(7) / 6,
     LOG_2PI_E + 2 * math.log(0.05) + math.log(6)),
])
def test_entropy_floors_match_closed_forms(cls, joint, indep):
    # well separated modes: entropy = Gaussian entropy + log(n!) / n per node
    # (joint) or + log n (a node's marginal)
    ds = cls(1, seed=0)
    h, se = ds.entropy_per_node(4000, seed=1)
    assert abs(h - joint) < 4 * se + 0.01
    h, se = ds.marginal_entropy_per_node(4000, seed=1)
    assert abs(h - indep) < 4 * se + 0.01


def test_ring_floor_matches_laplace_approximation():
    # H(ring) = H(MoG) + I(X; theta), I = H(theta) - H(theta | X): theta is
    # uniform on 2 pi; given X it is known up to the 4-fold symmetry and a
    # Gaussian error of variance sigma^2 / sum_i |mu_i|^2 = 1 / 200.
    ring = MixtureOfGaussiansRing(1, seed=0)
    h, se = ring.entropy_per_node(2000, seed=1)
    info = (math.log(2 * math.pi) - math.log(4)
            - 0.5 * math.log(2 * math.pi * math.e / 200))
    expected = LOG_2PI_E + math.log(24) / 4 + info / 4
    assert abs(h - expected) < 4 * se + 0.01
    hm, _ = ring.marginal_entropy_per_node(2000, seed=1)
    assert hm > h + 1.0


def test_bad_input():
    with pytest.raises(ValueError, match='num_examples'):
        MixtureOfGaussians(-1)
    with pytest.raises(ValueError, match='std'):
        MixtureOfGaussians(2, std=0.0)
    with pytest.raises(ValueError, match='centers'):
        PointSetDataset(torch.zeros(3), 1.0, False, 2)
    ds = MixtureOfGaussians(2)
    with pytest.raises(ValueError, match=r'\[batch, 4, 2\]'):
        ds.log_density(torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match=r'\[m, 2\]'):
        ds.marginal_log_density(torch.zeros(3, 4, 2))
