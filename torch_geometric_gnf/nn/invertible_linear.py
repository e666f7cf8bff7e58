from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from torch_geometric_gnf.utils import check_batch, infer_num_graphs, nodes_per_graph


class InvertibleLinear(torch.nn.Module):
    r"""A learned invertible channel mixing applied to every node alike (the
    invertible :math:`1 \times 1` convolution of `"Glow"
    <https://arxiv.org/abs/1807.03039>`_), a flow step to put between
    graph affine couplings instead of a fixed channel permutation,

    .. math::
        \mathbf{y}_v = \mathbf{W} \mathbf{x}_v, \qquad
        \mathbf{W} = \mathbf{P} \mathbf{L} \left(\mathbf{U} +
        \operatorname{diag}(\boldsymbol{\sigma} \odot e^{\mathbf{s}})\right),
        \qquad \log \left| \det \frac{\partial \mathbf{Y}}{\partial \mathbf{X}}
        \right|_{\mathcal{G}} = |\mathcal{V}_\mathcal{G}| \sum_k s_k

    with a fixed permutation :math:`\mathbf{P}` and signs
    :math:`\boldsymbol{\sigma}`, a unit lower-triangular :math:`\mathbf{L}`,
    a strictly upper-triangular :math:`\mathbf{U}` and log-scales
    :math:`\mathbf{s}` (the LU parameterisation: the log-determinant costs
    :math:`\mathcal{O}(F)` and :math:`\mathbf{W}` stays invertible).  It
    starts as a random rotation, so successive couplings split the features
    along different directions; being node-wise, it keeps a flow's density
    invariant to node order.  It has the coupling interface of
    :class:`GraphNormalizingFlow` (:obj:`edge_index` is unused).

    Args:
        channels (int): Node feature size.
        seed (int, optional): Seed of the initial rotation; :obj:`None` uses
            the global generator. (default: :obj:`None`)
    """
    def __init__(self, channels: int, seed: Optional[int] = None):
        super().__init__()
        if channels < 1:
            raise ValueError(f"'channels' must be positive (got {channels})")
        self.channels = int(channels)
        self.seed = seed
        eye = torch.eye(self.channels)
        self.register_buffer('permutation', eye.clone())
        self.register_buffer('sign', torch.ones(self.channels))
        self.register_buffer('lower_mask', torch.tril(torch.ones_like(eye), -1))
        self.lower = torch.nn.Parameter(torch.zeros_like(eye))
        self.upper = torch.nn.Parameter(torch.zeros_like(eye))
        self.log_scale = torch.nn.Parameter(torch.zeros(self.channels))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        r"""Restarts from a random rotation (:math:`\det \mathbf{W} = \pm 1`)."""
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        gauss = torch.randn(self.channels, self.channels, generator=generator,
                            dtype=torch.float64)
        rotation, _ = torch.linalg.qr(gauss)
        P, L, U = torch.linalg.lu(rotation)
        diag = torch.diagonal(U)
        dtype = self.lower.dtype
        self.permutation.copy_(P.to(dtype))
        self.sign.copy_(torch.sign(diag).to(dtype))
        self.lower.copy_(L.to(dtype))
        self.upper.copy_(torch.triu(U, 1).to(dtype))
        self.log_scale.copy_(diag.abs().log().to(dtype))

    def weight(self) -> Tensor:
        r"""The current matrix :math:`\mathbf{W}`, shape :obj:`[F, F]`."""
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = (self.upper * self.lower_mask.t()
                 + torch.diag(self.sign * self.log_scale.exp()))
        return self.permutation @ lower @ upper

    def _log_det(self, x: Tensor, batch: Optional[Tensor],
                 num_graphs: Optional[int]) -> Tensor:
        if x.dim() != 2 or x.size(-1) != self.channels:
            raise ValueError(f"Expected node features of shape [num_nodes, "
                             f"{self.channels}] (got {tuple(x.shape)})")
        check_batch(batch, x.size(0), x.device)
        counts = nodes_per_graph(x, batch, infer_num_graphs(batch, num_graphs))
        return counts * self.log_scale.sum().to(x.dtype)

    def forward(self, x: Tensor, edge_index: Any = None, batch: Optional[Tensor] = None,
                num_graphs: Optional[int] = None, **kwargs) -> Tuple[Tensor, Tensor]:
        r"""Returns :obj:`(y, log_det)`, :obj:`log_det` of shape :obj:`[num_graphs]`."""
        log_det = self._log_det(x, batch, num_graphs)
        return x @ self.weight().t().to(x.dtype), log_det

    def inverse(self, y: Tensor, edge_index: Any = None, batch: Optional[Tensor] = None,
                num_graphs: Optional[int] = None, **kwargs) -> Tuple[Tensor, Tensor]:
        r"""Returns :obj:`(x, log_det_inverse)`."""
        log_det = self._log_det(y, batch, num_graphs)
        inv = torch.linalg.inv(self.weight().to(torch.float64)).to(y.dtype)
        return y @ inv.t(), -log_det

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.channels})'
