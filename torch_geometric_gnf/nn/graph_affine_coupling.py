from typing import Any, Optional, Tuple

from torch import Tensor

from .reversible_message_passing import HalfFunction, ReversibleMessagePassing


class GraphAffineCoupling(ReversibleMessagePassing):
    r"""The graph affine coupling of `"Graph Normalizing Flows"
    <https://arxiv.org/abs/1905.13177>`_ (paper eqs. 3-4): the flow form of
    a GRevNet step, returning the log-determinant of its Jacobian per graph.

    .. math::
        \mathbf{Y}^{(1)} &= \mathbf{X}^{(1)} \odot
        \exp\left(s_F(\mathbf{X}^{(0)})\right) + t_F(\mathbf{X}^{(0)}) \\
        \mathbf{Y}^{(0)} &= \mathbf{X}^{(0)} \odot
        \exp\left(s_G(\mathbf{Y}^{(1)})\right) + t_G(\mathbf{Y}^{(1)}) \\
        \log \left| \det \frac{\partial \mathbf{Y}}{\partial \mathbf{X}}
        \right|_{\mathcal{G}} &= \sum_{v \in \mathcal{G}} \sum_k
        s_F(\mathbf{X}^{(0)})_{v,k} + s_G(\mathbf{Y}^{(1)})_{v,k}

    The Jacobian is block triangular (each half only depends on the other
    half through message passing), so its log-determinant is the sum of the
    scales; it is summed per graph via :obj:`batch`.  Scales are soft-clamped,
    :math:`s = c \tanh(\tilde{s} / c)`.  With :obj:`g=None` only the first
    half-step runs (a RealNVP coupling; alternate halves with the channel
    permutations of :class:`GraphNormalizingFlow`).

    Args:
        f (torch.nn.Module or (torch.nn.Module, torch.nn.Module)): Scale and
            shift network of the first half-step: a pair :obj:`(f_s, f_t)`
            or one module with twice the half width as output (scale first).
            Called as :obj:`f(h, edge_index, **kwargs)`.
        g (torch.nn.Module or (torch.nn.Module, torch.nn.Module), optional):
            The same for the second half-step. (default: :obj:`None`)
        clamp (float, optional): Soft-clamp bound :math:`c`; :obj:`None`
            disables it. (default: :obj:`2.0`)
        split_dim (int, optional): Feature dimension to split.
            (default: :obj:`-1`)
        memory_saving (bool, optional): Store only outputs for backward,
            like :class:`ReversibleMessagePassing`. (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F)`, edge indices
          :math:`(2, |\mathcal{E}|)`, batch vector :math:`(|\mathcal{V}|)`
          *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, F)`,
          log-determinant :math:`(|\mathcal{G}|)`
    """
    def __init__(self, f: HalfFunction, g: Optional[HalfFunction] = None, *,
                 clamp: Optional[float] = 2.0, split_dim: int = -1,
                 memory_saving: bool = True):
        super().__init__(f, g, coupling='affine', split_dim=split_dim,
                         memory_saving=memory_saving, clamp=clamp)

    def forward(self, x: Tensor, edge_index: Any, batch: Optional[Tensor] = None,
                num_graphs: Optional[int] = None,
                **kwargs) -> Tuple[Tensor, Tensor]:
        r"""Returns :obj:`(y, log_det)` with :obj:`log_det` of shape
        :obj:`[num_graphs]`.  Extra keyword arguments go to :obj:`f`/:obj:`g`."""
        return self._run(x, edge_index, (), kwargs, batch, num_graphs, False)

    def inverse(self, y: Tensor, edge_index: Any, batch: Optional[Tensor] = None,
                num_graphs: Optional[int] = None,
                **kwargs) -> Tuple[Tensor, Tensor]:
        r"""Returns :obj:`(x, log_det_inverse)`, where
        :obj:`log_det_inverse = -log_det` of the forward map at :obj:`x`."""
        return self._run(y, edge_index, (), kwargs, batch, num_graphs, True)
