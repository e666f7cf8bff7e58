r"""Generated point-set data sets for structured density estimation
(`"Graph Normalizing Flows" <https://arxiv.org/abs/1905.13177>`_, section
5.1): every example is a small set of 2-D points whose nodes are strongly
dependent, so a model of the whole set can beat any model of single nodes.

Each data set knows its exact density (:meth:`PointSetDataset.log_density`),
hence the entropy floors that a perfect model of the joint distribution
(:meth:`PointSetDataset.entropy_per_node`) or of independent nodes
(:meth:`PointSetDataset.marginal_entropy_per_node`) would reach.
"""
import itertools
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from torch_geometric_gnf.utils import check_real

LOG_2PI = math.log(2 * math.pi)


def moons_positions(num_points: int = 6) -> Tensor:
    r"""The noise-free points of scikit-learn's
    :obj:`make_moons(n_samples=num_points)`: :math:`\lfloor n/2 \rfloor` on
    the outer moon :math:`(\cos t, \sin t)`, the rest on the inner moon
    :math:`(1 - \cos t, \frac{1}{2} - \sin t)`, with :math:`t` evenly spaced
    in :math:`[0, \pi]` on each moon."""
    n_out = num_points // 2
    n_in = num_points - n_out
    t_out = torch.linspace(0, math.pi, n_out, dtype=torch.float64)
    t_in = torch.linspace(0, math.pi, n_in, dtype=torch.float64)
    outer = torch.stack([t_out.cos(), t_out.sin()], dim=-1)
    inner = torch.stack([1 - t_in.cos(), 1 - t_in.sin() - 0.5], dim=-1)
    return torch.cat([outer, inner], dim=0)


def _log_mean_over_matchings(log_lik: Tensor) -> Tensor:
    r""":math:`\log \frac{1}{n!} \sum_\pi \prod_i \exp L_{i, \pi(i)}` for
    :obj:`log_lik` of shape :obj:`[..., n, n]` (the log-permanent of a
    likelihood matrix, by enumerating all :math:`n!` matchings)."""
    n = log_lik.size(-1)
    perms = torch.tensor(list(itertools.permutations(range(n))),
                         device=log_lik.device)  # [n!, n]
    rows = torch.arange(n, device=log_lik.device)
    # L[..., rows, perm] summed over rows, for every permutation.
    per_perm = log_lik[..., rows, perms].sum(dim=-1)  # [..., n!]
    return torch.logsumexp(per_perm, dim=-1) - math.lgamma(n + 1)


class PointSetDataset(InMemoryDataset):
    r"""Base class: :obj:`num_examples` sets of :obj:`num_nodes` points drawn
    as :math:`\mathbf{x}_i = R_\theta \boldsymbol{\mu}_i + \sigma
    \boldsymbol{\epsilon}_i` (one point per centre
    :math:`\boldsymbol{\mu}_i`, :math:`\boldsymbol{\epsilon}_i \sim
    \mathcal{N}(\mathbf{0}, \mathbf{I})`, rotation :math:`R_\theta` by a
    uniform angle if :obj:`rotate`), node order shuffled.  The exact density
    of such a shuffled set is

    .. math::
        p(\mathbf{X}) = \frac{1}{2\pi} \int_0^{2\pi} \frac{1}{n!}
        \sum_{\pi \in S_n} \prod_{i=1}^n \mathcal{N}\left(\mathbf{x}_{\pi(i)}
        \mid R_\theta \boldsymbol{\mu}_i, \sigma^2 \mathbf{I}\right)
        \mathrm{d}\theta

    (without the integral when not rotated).  Examples are
    :class:`torch_geometric.data.Data` graphs with :obj:`x` of shape
    :obj:`[num_nodes, 2]` and no edges (a flow sees each set as a fully
    connected graph); :attr:`sets` holds all of them as one dense
    :obj:`[num_examples, num_nodes, 2]` tensor.
    """
    def __init__(self, centers: Tensor, std: float, rotate: bool,
                 num_examples: int, seed: Optional[int] = 0,
                 shuffle_nodes: bool = True, rotation_symmetry: int = 1):
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) \
                or num_examples < 0:
            raise ValueError(f"'num_examples' must be a non-negative int "
                             f"(got {num_examples!r})")
        check_real(std, 'std', 0.0, math.inf, low_open=True, high_open=True)
        centers = torch.as_tensor(centers, dtype=torch.float64)
        if centers.dim() != 2 or centers.size(-1) != 2 or centers.size(0) < 1:
            raise ValueError(f"'centers' must have shape [num_nodes, 2] "
                             f"(got {tuple(centers.shape)})")
        self.centers = centers
        self.std = float(std)
        self.rotate = bool(rotate)
        self.seed = seed
        self.shuffle_nodes = shuffle_nodes
        # Rotating the centres by 2 pi / k permutes them, which the sum over
        # node orders already covers: integrate the angle over [0, 2 pi / k).
        self.rotation_symmetry = int(rotation_symmetry)
        # No root, download() or process(): the sets are generated in memory
        # and PyG then writes no processed/ files (with a root of None it
        # would otherwise create a folder named '???' in the working dir).
        super().__init__(root=None, log=False)
        self._sets = self.generate(num_examples, seed)
        data_list = [Data(x=s) for s in self._sets]
        self.data, self.slices = self.collate(data_list) if data_list else (
            Data(x=torch.empty(0, 2)), None)

    # ------------------------------------------------------------ sampling
    @property
    def num_nodes_per_set(self) -> int:
        return self.centers.size(0)

    @property
    def sets(self) -> Tensor:
        r"""All examples, :obj:`[num_examples, num_nodes, 2]` (float32)."""
        return self._sets

    def generate(self, num_examples: int, seed: Optional[int] = None,
                 return_angles: bool = False):
        r"""Draws fresh sets (float32) from the generating process, seeded
        by :obj:`seed` (or from the global generator if :obj:`None`)."""
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        n = self.num_nodes_per_set
        mu = self.centers.unsqueeze(0).expand(num_examples, n, 2)
        angles = torch.zeros(num_examples, dtype=torch.float64)
        if self.rotate:
            angles = torch.rand(num_examples, generator=gen,
                                dtype=torch.float64) * 2 * math.pi
            mu = torch.einsum('bij,bnj->bni', _rotation(angles), mu)
        noise = torch.randn(num_examples, n, 2, generator=gen, dtype=torch.float64)
        x = mu + self.std * noise
        if self.shuffle_nodes:
            order = torch.argsort(torch.rand(num_examples, n, generator=gen), dim=1)
            x = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, 2))
        x = x.float()
        return (x, angles) if return_angles else x

    # ------------------------------------------------------ exact density
    def log_density(self, x: Tensor, num_angles: int = 360,
                    chunk_size: int = 1024) -> Tensor:
        r"""Exact log-density (nats) of sets :obj:`x` of shape
        :obj:`[batch, num_nodes, 2]` under the generating process, summing
        over all :math:`n!` node orders; for rotated data the angle is
        integrated numerically with the (spectrally accurate, the integrand
        being smooth and periodic) trapezoidal rule on :obj:`num_angles`
        points per turn.  Computed in float64; returns :obj:`[batch]`."""
        x = torch.as_tensor(x)
        n = self.num_nodes_per_set
        if x.dim() != 3 or x.size(1) != n or x.size(2) != 2:
            raise ValueError(f"Expected sets of shape [batch, {n}, 2] "
                             f"(got {tuple(x.shape)})")
        x = x.to(torch.float64)
        out = []
        for start in range(0, x.size(0), chunk_size):
            out.append(self._log_density_chunk(x[start:start + chunk_size],
                                               num_angles))
        return torch.cat(out) if out else x.new_zeros(0)

    def _log_density_chunk(self, x: Tensor, num_angles: int) -> Tensor:
        var = self.std ** 2
        if self.rotate:
            k = self.rotation_symmetry
            steps = max(1, num_angles // k)
            angles = torch.arange(steps, dtype=torch.float64) * (
                2 * math.pi / (k * steps))
            mu = torch.einsum('tij,nj->tni', _rotation(angles), self.centers)
            mu = mu.unsqueeze(0)  # [1, T, n, 2]
            xs = x.unsqueeze(1)   # [B, 1, n, 2]
        else:
            mu, xs = self.centers.unsqueeze(0), x  # [1, n, 2], [B, n, 2]
        # L[..., i, j] = log N(x_j | mu_i, var I): node j matched to centre i.
        sq = (xs.unsqueeze(-3) - mu.unsqueeze(-2)).pow(2).sum(-1)
        log_lik = -0.5 * sq / var - (LOG_2PI + math.log(var))
        log_p = _log_mean_over_matchings(log_lik)
        if self.rotate:  # mean over the uniform angle grid
            log_p = torch.logsumexp(log_p, dim=-1) - math.log(steps)
        return log_p

    def marginal_log_density(self, points: Tensor, num_angles: int = 360) -> Tensor:
        r"""Exact log-density of single nodes :obj:`points` (:obj:`[m, 2]`)
        under the marginal of one node: a uniform mixture over the centres
        (and, rotated, over angles)."""
        points = torch.as_tensor(points).to(torch.float64)
        if points.dim() != 2 or points.size(-1) != 2:
            raise ValueError(f"Expected points of shape [m, 2] (got "
                             f"{tuple(points.shape)})")
        var = self.std ** 2
        mu = self.centers
        if self.rotate:
            angles = torch.arange(num_angles, dtype=torch.float64) * (
                2 * math.pi / num_angles)
            mu = torch.einsum('tij,nj->tni', _rotation(angles), mu).reshape(-1, 2)
        sq = (points.unsqueeze(1) - mu.unsqueeze(0)).pow(2).sum(-1)
        log_lik = -0.5 * sq / var - (LOG_2PI + math.log(var))
        return torch.logsumexp(log_lik, dim=-1) - math.log(mu.size(0))

    def entropy_per_node(self, num_samples: int = 20000, seed: int = 12345
                         ) -> Tuple[float, float]:
        r"""Monte Carlo estimate of the entropy of the set distribution per
        node, :math:`-\frac{1}{n}\mathbb{E}[\log p(\mathbf{X})]` (the best
        test NLL per node any model can reach), and its standard error."""
        x = self.generate(num_samples, seed).double()
        vals = -self.log_density(x) / self.num_nodes_per_set
        return float(vals.mean()), float(vals.std() / math.sqrt(num_samples))

    def marginal_entropy_per_node(self, num_samples: int = 20000,
                                  seed: int = 12345) -> Tuple[float, float]:
        r"""Monte Carlo estimate of the entropy of one node's marginal (the
        best test NLL per node of a model that treats nodes independently)
        and its standard error."""
        x = self.generate(num_samples, seed).double()
        vals = -self.marginal_log_density(x.reshape(-1, 2)).view(num_samples, -1)
        vals = vals.mean(dim=1)  # per-set average, so the error is per set
        return float(vals.mean()), float(vals.std() / math.sqrt(num_samples))

    # -------------------------------------------------- InMemoryDataset API
    def len(self) -> int:
        return self._sets.size(0)

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_file_names(self) -> List[str]:
        return []

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self)}, '
                f'num_nodes={self.num_nodes_per_set})')


def _rotation(angles: Tensor) -> Tensor:
    c, s = angles.cos(), angles.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def square_centers(distance: float = 5.0) -> Tensor:
    r"""The four centres :math:`(\pm d, \pm d)` of the MoG data sets."""
    d = float(distance)
    return torch.tensor([[d, d], [-d, d], [-d, -d], [d, -d]], dtype=torch.float64)


class MixtureOfGaussians(PointSetDataset):
    r"""MoG sets (paper section 5.1): one point from each of four isotropic
    Gaussians with standard deviation :obj:`std` centred at
    :math:`(\pm 5, \pm 5)`, node order shuffled.

    Args:
        num_examples (int): Number of sets. (default: :obj:`10000`)
        seed (int, optional): Seed of the generator. (default: :obj:`0`)
        distance (float, optional): Centre coordinate magnitude.
            (default: :obj:`5.0`)
        std (float, optional): Noise standard deviation. (default: :obj:`1.0`)
    """
    def __init__(self, num_examples: int = 10000, seed: Optional[int] = 0,
                 distance: float = 5.0, std: float = 1.0):
        check_real(distance, 'distance', -math.inf, math.inf, True, True)
        super().__init__(square_centers(distance), std, False, num_examples, seed)


class MixtureOfGaussiansRing(PointSetDataset):
    r"""MoG ring sets (paper section 5.1): a :class:`MixtureOfGaussians` set
    rotated about the origin by an angle uniform in :math:`[0, 2\pi)`, so
    the aggregate distribution of nodes is a ring of radius
    :math:`5\sqrt{2}`.  Arguments as :class:`MixtureOfGaussians`."""
    def __init__(self, num_examples: int = 10000, seed: Optional[int] = 0,
                 distance: float = 5.0, std: float = 1.0):
        check_real(distance, 'distance', -math.inf, math.inf, True, True)
        super().__init__(square_centers(distance), std, True, num_examples, seed,
                         rotation_symmetry=4)


class HalfMoons6(PointSetDataset):
    r"""6 half-moons sets (paper section 5.1): the six points of
    scikit-learn's :obj:`make_moons(n_samples=6)` (three at fixed positions
    on each moon, see :func:`moons_positions`) plus Gaussian noise with
    standard deviation :obj:`noise`, node order shuffled.

    Args:
        num_examples (int): Number of sets. (default: :obj:`10000`)
        seed (int, optional): Seed of the generator. (default: :obj:`0`)
        noise (float, optional): Noise standard deviation.
            (default: :obj:`0.05`)
    """
    def __init__(self, num_examples: int = 10000, seed: Optional[int] = 0,
                 noise: float = 0.05):
        check_real(noise, 'noise', 0.0, math.inf, low_open=True, high_open=True)
        super().__init__(moons_positions(6), noise, False, num_examples, seed)


DENSITY_DATASETS = {
    'mog': MixtureOfGaussians,
    'mog_ring': MixtureOfGaussiansRing,
    'moons6': HalfMoons6,
}
