import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from torch_geometric_gnf.nn import GraphAffineCoupling, GraphNormalizingFlow
from torch_geometric_gnf.utils import (check_batch, check_counts, graph_order,
                                       infer_num_graphs, restore_order)

from ..nn.dense_attention import DenseAttentionCoupling, dense_layout
from .graph_auto_encoder import GraphAutoEncoder
from .set_flow import coupling_steps


class GraphGenerator(torch.nn.Module):
    r"""Permutation-invariant graph generation with a graph normalizing flow
    (`"Graph Normalizing Flows" <https://arxiv.org/abs/1905.13177>`_,
    sections 3.2-3.3): a GNF models the node embeddings
    :math:`\mathbf{X}` of a trained :class:`GraphAutoEncoder`, and its
    decoder turns sampled embeddings into graphs.

    .. math::
        \log p(\mathbf{X}) = \sum_{i=1}^{N} \log \mathcal{N}(\mathbf{z}_i
        \mid \mathbf{0}, \mathbf{I}) + \sum_{k=1}^{K} \log \left| \det
        \frac{\partial \mathbf{H}_k}{\partial \mathbf{H}_{k-1}} \right|,
        \qquad \mathbf{Z} = f(\mathbf{X}),

    where :math:`f` is :obj:`num_couplings`
    :class:`~torch_geometric_gnf.nn.GraphAffineCoupling` steps whose
    scale/shift networks :math:`F, G` are multi-head self-attention over the
    fully connected graph of each example (dense, masked, batched over graphs
    of different sizes).  The number of nodes has the empirical prior
    :math:`p(N)` of the training graphs.  Sampling: :math:`N \sim p(N)`,
    :math:`\mathbf{Z} \sim \mathcal{N}(\mathbf{0}, T^2\mathbf{I})`,
    :math:`\mathbf{X} = f^{-1}(\mathbf{Z})`, then
    :math:`A_{ij} = [\hat{A}_{ij}(\mathbf{X}) > 0.5]` (eq. 6).

    Args:
        auto_encoder (GraphAutoEncoder): A trained auto-encoder (its decoder
            turns samples into graphs; :meth:`embed` uses its encoder).
        node_counts (Sequence[int] or torch.Tensor): Node counts of the
            training graphs (the prior :math:`p(N)`).
        num_couplings (int, optional): Affine couplings. (default: :obj:`10`)
        hidden_channels (int, optional): Attention width of :math:`F, G`.
            (default: :obj:`64`)
        num_blocks (int, optional): Attention + MLP steps inside each of
            :math:`F, G`. (default: :obj:`1`)
        heads (int, optional): Attention heads. (default: :obj:`4`)
        clamp (float, optional): Soft clamp of the log-scales.
            (default: :obj:`2.0`)
        seed (int, optional): Seed of the fixed random channel permutations
            between couplings. (default: :obj:`0`)
        mixing (str, optional): What sits between two couplings: a fixed
            random channel :obj:`"permutation"`, or a learned
            :class:`~torch_geometric_gnf.nn.InvertibleLinear` mixing of the
            embedding channels (:obj:`"linear"`, Glow's 1x1 convolution on
            every node). (default: :obj:`"permutation"`)
        center_std (float, optional): :meth:`embed` moves each graph's mean
            embedding to a random point :math:`\boldsymbol{\mu} \sim
            \mathcal{N}(\mathbf{0}, s^2\mathbf{I})` (:obj:`None`: keep the
            encoder's).  The decoder only sees distances, so this changes no
            graph, but it removes the encoder's arbitrary per-graph offset
            that the flow would otherwise have to model (the small :math:`s`
            keeps the training density non-degenerate). (default: :obj:`0.1`)
    """
    def __init__(self, auto_encoder: GraphAutoEncoder,
                 node_counts: Union[Sequence[int], Tensor], num_couplings: int = 10,
                 hidden_channels: int = 64, num_blocks: int = 1, heads: int = 4,
                 clamp: float = 2.0, seed: int = 0,
                 center_std: Optional[float] = 0.1, mixing: str = 'permutation'):
        super().__init__()
        if not isinstance(auto_encoder, GraphAutoEncoder):
            raise TypeError(f"'auto_encoder' must be a GraphAutoEncoder (got "
                            f"{type(auto_encoder).__name__})")
        channels = auto_encoder.embedding_channels
        if channels % 2 != 0:
            raise ValueError(f"The auto-encoder's embedding size must be even to "
                             f"split it in two halves (got {channels})")
        counts = check_counts(node_counts, 'node_counts', minimum=1)
        if center_std is not None and center_std < 0:
            raise ValueError(f"'center_std' must be non-negative (got {center_std})")
        self.auto_encoder = auto_encoder
        self.channels = channels
        self.center_std = center_std
        half = channels // 2
        steps = coupling_steps(
            lambda: GraphAffineCoupling(
                DenseAttentionCoupling(half, hidden_channels, num_blocks, heads),
                DenseAttentionCoupling(half, hidden_channels, num_blocks, heads),
                clamp=clamp, memory_saving=False),  # tiny graphs: speed over memory
            num_couplings, channels, mixing)
        self.mixing = mixing
        self.flow = GraphNormalizingFlow(
            steps, channels, permutation='random' if mixing == 'permutation' else None,
            seed=seed)
        probs = torch.bincount(counts).to(torch.get_default_dtype())
        self.register_buffer('node_count_probs', probs / probs.sum())

    @property
    def num_couplings(self) -> int:
        return sum(isinstance(step, GraphAffineCoupling) for step in self.flow.couplings)

    def reset_parameters(self):
        r"""Resets the flow (the auto-encoder is left as trained)."""
        self.flow.reset_parameters()

    def _no_edges(self, x: Tensor) -> Tensor:
        # Couplings attend over fully connected graphs built from the batch
        # vector; an empty edge_index stops the flow from materialising them.
        return torch.zeros(2, 0, dtype=torch.long, device=x.device)

    @torch.no_grad()
    def embed(self, data) -> Tensor:
        r"""Node embeddings of a graph batch from the auto-encoder's encoder
        (fresh input noise each call: a new draw of the training data),
        re-centred per graph as set by :obj:`center_std`, plus the
        auto-encoder's :obj:`embedding_noise` (the flow then models the
        noise-smoothed embeddings, which its decoder was trained to read)."""
        edge_index, batch, num_nodes = GraphAutoEncoder._unpack(data)
        x = self.auto_encoder.encode(edge_index, batch, num_nodes)
        if self.center_std is not None:
            if batch is None:
                batch = x.new_zeros(x.size(0), dtype=torch.long)
            mean = scatter(x, batch, 0, reduce='mean')
            offset = torch.randn_like(mean) * self.center_std
            x = x + (offset - mean)[batch]
        return self.auto_encoder.add_embedding_noise(x)

    def _run_flow(self, method: Callable, x: Tensor, batch: Optional[Tensor],
                  num_graphs: Optional[int] = None) -> Tuple[Any, Optional[Tensor]]:
        r"""Calls the flow's :obj:`method` on the nodes grouped by graph (the
        dense attention pads each graph's nodes consecutively), so that
        :obj:`batch` may come in any order; returns the result and the node
        order it was computed in (:func:`graph_order`)."""
        if batch is None:
            batch = x.new_zeros(x.size(0), dtype=torch.long)
        check_batch(batch, x.size(0), x.device)
        num_graphs = infer_num_graphs(batch, num_graphs)
        order = graph_order(batch)
        if order is not None:
            x, batch = x[order], batch[order]
        out = method(x, self._no_edges(x), batch, num_graphs, layout=dense_layout(batch))
        return out, order

    def log_prob(self, x: Tensor, batch: Optional[Tensor] = None,
                 num_graphs: Optional[int] = None) -> Tensor:
        r"""Exact log-density (nats) of the node embeddings of each graph,
        shape :obj:`[num_graphs]`; invariant to node order within a graph
        (:obj:`batch` need not be sorted)."""
        return self._run_flow(self.flow.log_prob, x, batch, num_graphs)[0]

    def forward(self, x: Tensor, batch: Optional[Tensor] = None) -> Tensor:
        r"""Maps embeddings to latents :math:`\mathbf{Z} = f(\mathbf{X})`."""
        (z, _), order = self._run_flow(self.flow, x, batch)
        return restore_order(z, order)

    def inverse(self, z: Tensor, batch: Optional[Tensor] = None) -> Tensor:
        r"""Maps latents to embeddings :math:`\mathbf{X} = f^{-1}(\mathbf{Z})`."""
        x, order = self._run_flow(self.flow.inverse, z, batch)
        return restore_order(x, order)

    def sample_num_nodes(self, num_graphs: int,
                         generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Draws :obj:`num_graphs` node counts from the training prior."""
        if isinstance(num_graphs, bool) or not isinstance(num_graphs, int) or num_graphs < 1:
            raise ValueError(f"'num_graphs' must be a positive int (got {num_graphs!r})")
        probs = self.node_count_probs.cpu()
        return torch.multinomial(probs, num_graphs, replacement=True,
                                 generator=generator)

    @torch.no_grad()
    def sample(self, num_graphs: Optional[int] = None,
               num_nodes: Optional[Union[Sequence[int], Tensor]] = None,
               temperature: float = 1.0, threshold: float = 0.5,
               generator: Optional[torch.Generator] = None) -> Batch:
        r"""Generates graphs.

        Args:
            num_graphs (int, optional): Graphs to draw, node counts from the
                training prior.
            num_nodes (Sequence[int], optional): Node count of each graph
                instead (e.g. matched to a test set).
            temperature (float, optional): Scale :math:`T` of the latent
                prior. (default: :obj:`1.0`)
            threshold (float, optional): Edge threshold on
                :math:`\hat{A}_{ij}`. (default: :obj:`0.5`)
            generator (torch.Generator, optional): Random source.

        Returns:
            :class:`~torch_geometric.data.Batch` of undirected graphs without
            self-loops; :obj:`x` holds the sampled node embeddings.
        """
        if (num_graphs is None) == (num_nodes is None):
            raise ValueError("Pass exactly one of 'num_graphs' and 'num_nodes'")
        if num_nodes is None:
            counts = self.sample_num_nodes(num_graphs, generator)
        else:
            counts = check_counts(num_nodes, 'num_nodes', minimum=1)
        if not 0 < temperature < math.inf:
            raise ValueError(f"'temperature' must be positive and finite (got {temperature})")
        device = self.node_count_probs.device
        dtype = self.auto_encoder.lin_out.weight.dtype
        batch = torch.repeat_interleave(torch.arange(counts.numel()), counts).to(device)
        z = torch.randn(int(counts.sum()), self.channels, generator=generator,
                        dtype=dtype).to(device) * temperature
        x = self.inverse(z, batch)
        return self.auto_encoder.to_graphs(x, batch, threshold)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(channels={self.channels}, '
                f'couplings={self.num_couplings}, mixing={self.mixing}, '
                f'max_nodes={self.node_count_probs.numel() - 1})')
