import math
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.inits import reset
from torch_geometric.utils import scatter

from torch_geometric_gnf.utils import (check_batch, check_counts, check_node_features,
                                       fully_connected_edge_index,
                                       infer_num_graphs)

PERMUTATIONS = ('reverse', 'random', None)


class GraphNormalizingFlow(torch.nn.Module):
    r"""A graph normalizing flow (`"Graph Normalizing Flows"
    <https://arxiv.org/abs/1905.13177>`_, section 3.2): a stack of invertible
    couplings with fixed channel permutations between them and a standard
    normal prior on every node,

    .. math::
        \log p(\mathbf{X} \mid \mathcal{G}) = \sum_{v \in \mathcal{G}}
        \log \mathcal{N}(\mathbf{z}_v \mid \mathbf{0}, \mathbf{I})
        + \sum_{k=1}^{K} \log \left| \det
        \frac{\partial \mathbf{H}_k}{\partial \mathbf{H}_{k-1}} \right|,
        \qquad \mathbf{Z} = \mathbf{H}_K, \; \mathbf{H}_0 = \mathbf{X}.

    Message passing inside the couplings makes the nodes of a graph
    dependent; without edges every node is transformed on its own (RealNVP).
    When no :obj:`edge_index` is given, a fully connected graph (no
    self-loops) is built inside every graph of the batch, as the paper does
    for sets and generation.

    Args:
        couplings (Sequence[torch.nn.Module]): Invertible steps, each with
            :obj:`forward(x, edge_index, batch, num_graphs) -> (y, log_det)`
            and :obj:`inverse(...) -> (x, log_det_inverse)`, such as
            :class:`GraphAffineCoupling`.
        channels (int): Node feature size.
        permutation (str, optional): Fixed channel permutation applied between
            consecutive couplings: :obj:`"reverse"`, :obj:`"random"` (seeded by
            :obj:`seed`) or :obj:`None`. (default: :obj:`"reverse"`)
        seed (int, optional): Seed of the random permutations. (default: :obj:`0`)
    """
    def __init__(self, couplings: Sequence[torch.nn.Module], channels: int, *,
                 permutation: Optional[str] = 'reverse', seed: int = 0):
        super().__init__()
        if permutation not in PERMUTATIONS:
            raise ValueError(f"'permutation' must be one of {PERMUTATIONS} "
                             f"(got '{permutation}')")
        if len(couplings) == 0:
            raise ValueError("'couplings' must not be empty")
        self.couplings = torch.nn.ModuleList(couplings)
        self.channels = int(channels)
        self.permutation = permutation
        generator = torch.Generator().manual_seed(seed)
        perms = []
        for _ in range(len(couplings) - 1):
            if permutation == 'reverse':
                perm = torch.arange(self.channels - 1, -1, -1)
            elif permutation == 'random':
                perm = torch.randperm(self.channels, generator=generator)
            else:
                perm = torch.arange(self.channels)
            perms.append(perm)
        stacked = torch.stack(perms) if perms else torch.empty(0, self.channels,
                                                               dtype=torch.long)
        self.register_buffer('perms', stacked)
        self.register_buffer('inverse_perms', torch.argsort(stacked, dim=-1))

    def reset_parameters(self):
        r"""Resets the parameters of all couplings."""
        reset(self.couplings)

    def _graph(self, x: Tensor, edge_index: Optional[Any], batch: Optional[Tensor],
               num_graphs: Optional[int]) -> Tuple[Any, Optional[Tensor], int]:
        if x.dim() != 2 or x.size(-1) != self.channels:
            raise ValueError(f"Expected node features of shape [num_nodes, "
                             f"{self.channels}] (got {tuple(x.shape)})")
        # Checked here too: couplings compiled with torch.compile skip their
        # own value checks.
        check_node_features(x)
        check_batch(batch, x.size(0), x.device)
        num_graphs = infer_num_graphs(batch, num_graphs)
        if edge_index is None:
            b = batch if batch is not None else x.new_zeros(x.size(0), dtype=torch.long)
            edge_index = fully_connected_edge_index(b, num_graphs)
        return edge_index, batch, num_graphs

    def forward(self, x: Tensor, edge_index: Optional[Any] = None,
                batch: Optional[Tensor] = None, num_graphs: Optional[int] = None,
                **kwargs) -> Tuple[Tensor, Tensor]:
        r"""Maps data to latents: returns :obj:`(z, log_det)` with
        :obj:`log_det` of shape :obj:`[num_graphs]`."""
        edge_index, batch, num_graphs = self._graph(x, edge_index, batch, num_graphs)
        log_det = x.new_zeros(num_graphs)
        for i, coupling in enumerate(self.couplings):
            if i > 0 and self.permutation is not None:  # None: identity, no copy
                x = x[:, self.perms[i - 1]]
            x, ld = coupling(x, edge_index, batch, num_graphs, **kwargs)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: Tensor, edge_index: Optional[Any] = None,
                batch: Optional[Tensor] = None, num_graphs: Optional[int] = None,
                **kwargs) -> Tensor:
        r"""Maps latents to data."""
        edge_index, batch, num_graphs = self._graph(z, edge_index, batch, num_graphs)
        for i in range(len(self.couplings) - 1, -1, -1):
            z, _ = self.couplings[i].inverse(z, edge_index, batch, num_graphs, **kwargs)
            if i > 0 and self.permutation is not None:
                z = z[:, self.inverse_perms[i - 1]]
        return z

    def log_prob(self, x: Tensor, edge_index: Optional[Any] = None,
                 batch: Optional[Tensor] = None, num_graphs: Optional[int] = None,
                 **kwargs) -> Tensor:
        r"""Log-density of the node features of every graph, shape
        :obj:`[num_graphs]` (in nats)."""
        edge_index, batch, num_graphs = self._graph(x, edge_index, batch, num_graphs)
        z, log_det = self(x, edge_index, batch, num_graphs, **kwargs)
        log_prior = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(dim=-1)
        if batch is None:
            log_prior = log_prior.sum().view(1).expand(num_graphs)
        else:
            log_prior = scatter(log_prior, batch.long(), 0, dim_size=num_graphs,
                                reduce='sum')
        return log_prior + log_det

    def sample(self, num_nodes: Union[int, Sequence[int], Tensor],
               edge_index: Optional[Any] = None, batch: Optional[Tensor] = None,
               temperature: float = 1.0, **kwargs) -> Tensor:
        r"""Draws node features: :math:`\mathbf{Z} \sim \mathcal{N}(0,
        T^2 \mathbf{I})`, then :math:`\mathbf{X} = f^{-1}(\mathbf{Z})`.

        Args:
            num_nodes (int or Sequence[int]): Nodes of one graph, or of each
                graph of a batch.
            edge_index (torch.Tensor, optional): Graph structure; a fully
                connected graph per sample if not given.
            batch (torch.Tensor, optional): Graph id per node; built from
                :obj:`num_nodes` if not given.
            temperature (float, optional): Prior scale :math:`T`.
                (default: :obj:`1.0`)

        Returns:
            Node features of shape :obj:`[sum(num_nodes), channels]`
            (use :func:`torch_geometric_gnf.utils.fully_connected_edge_index`
            to rebuild the sampling graph).
        """
        ref = next(iter(self.buffers()))
        param = next(self.parameters(), None)
        device = ref.device
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        counts = check_counts(num_nodes, 'num_nodes', minimum=0)
        if not 0 < temperature < math.inf:
            raise ValueError(f"'temperature' must be positive and finite (got {temperature})")
        total = int(counts.sum())
        num_graphs = None  # inferred from a user's batch
        if batch is None:
            num_graphs = counts.numel()
            if num_graphs > 1:
                batch = torch.repeat_interleave(
                    torch.arange(num_graphs, device=device), counts.to(device))
        z = torch.randn(total, self.channels, device=device, dtype=dtype) * temperature
        return self.inverse(z, edge_index, batch, num_graphs, **kwargs)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({len(self.couplings)} couplings, '
                f'channels={self.channels}, permutation={self.permutation})')
