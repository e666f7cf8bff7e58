import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_adj, to_dense_batch

from torch_geometric_gnf.utils import (check_batch, check_edge_index, graph_order,
                                       infer_num_graphs, relabel_edges, restore_order)

from ..nn.dense_attention import DenseAttentionBlock, DenseLayout, layout_of_mask

ATTENTION = ('edges', 'all')


def pair_logits(z: Tensor, temperature: float = 10.0) -> Tensor:
    r"""Edge logits of the distance decoder (paper eq. 6),
    :math:`\ell_{ij} = -C(\lVert \mathbf{z}_i - \mathbf{z}_j \rVert_2^2 - 1)`,
    so that :math:`p(A_{ij} = 1) = \sigma(\ell_{ij})`, for padded embeddings
    :obj:`[B, n, d]` (or one graph :obj:`[n, d]`)."""
    sq = z.pow(2).sum(-1)
    dist2 = sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * z @ z.transpose(-1, -2)
    return -temperature * (dist2.clamp_min(0) - 1)


def pair_mask(mask: Tensor) -> Tensor:
    r"""Unordered node pairs :math:`i < j` of the same graph, :obj:`[B, n, n]`,
    from a node mask :obj:`[B, n]`."""
    upper = torch.ones(mask.size(-1), mask.size(-1), dtype=torch.bool,
                       device=mask.device).triu(1)
    return mask.unsqueeze(-1) & mask.unsqueeze(-2) & upper


class GraphAutoEncoder(torch.nn.Module):
    r"""The permutation-invariant graph auto-encoder of `"Graph Normalizing
    Flows" <https://arxiv.org/abs/1905.13177>`_ (section 3.3).

    **Encoder.** Every call draws fresh node features
    :math:`\mathbf{h}_i \sim \mathcal{N}(\mathbf{0}, \sigma^2 \mathbf{I})`
    (:math:`\sigma^2 = 0.3`): the graph carries no node features, the noise
    only breaks symmetry, and the structure must do the rest.  A linear
    layer lifts them to :obj:`hidden_channels`, then :obj:`num_layers`
    message-passing steps (multi-head dot-product attention over each node's
    neighbours and itself, then an MLP; see
    :class:`~torch_geometric_gnf.nn.DenseAttentionBlock`)
    and a linear read-out give embeddings
    :math:`\mathbf{X} \in \mathbb{R}^{N \times d}`.

    **Decoder** (eq. 6). Nodes close in embedding space are likely linked:

    .. math::
        \hat{A}_{ij} = \frac{1}{1 + \exp\big(C(\lVert \mathbf{x}_i -
        \mathbf{x}_j \rVert_2^2 - 1)\big)}, \qquad C = 10.

    **Loss** (eq. 5). Binary cross-entropy over the node pairs of each graph,

    .. math::
        \mathcal{L} = -\sum_{i < j} A_{ij} \log \hat{A}_{ij}
        + (1 - A_{ij}) \log (1 - \hat{A}_{ij}),

    over unordered pairs :math:`i < j` (graphs are undirected; the diagonal
    is left out: :math:`\hat{A}_{ii} = \sigma(C)` is a constant).  Table 3
    reports it divided by the number of nodes (:meth:`loss` returns the sum
    and the node count), and counts incorrect edges: pairs
    :math:`i < j` with :math:`[\hat{A}_{ij} > 0.5] \ne A_{ij}`.

    Graphs of different sizes are padded densely
    (:func:`~torch_geometric.utils.to_dense_batch`,
    :func:`~torch_geometric.utils.to_dense_adj`) with masks; there is no
    python loop over graphs.  For training on CPU, :meth:`compile_loss`
    compiles the encoder's layers and the loss with :func:`torch.compile`.

    Args:
        embedding_channels (int, optional): Size :math:`d` of the node
            embeddings. (default: :obj:`8`)
        hidden_channels (int, optional): Width of the message-passing steps.
            (default: :obj:`64`)
        num_layers (int, optional): Message-passing steps. (default: :obj:`10`)
        heads (int, optional): Attention heads. (default: :obj:`4`)
        noise_channels (int, optional): Size of the random input features.
            (default: :obj:`16`)
        noise_variance (float, optional): :math:`\sigma^2`. (default: :obj:`0.3`)
        temperature (float, optional): Decoder sharpness :math:`C`.
            (default: :obj:`10.0`)
        attention (str, optional): :obj:`"edges"`: each node attends to its
            neighbours and itself (the paper's encoder); :obj:`"all"`: to
            every node of its graph, with a learned per-layer, per-head logit
            offset :math:`b` on linked pairs,
            :math:`\mathrm{softmax}_j(\mathbf{q}_i^\top \mathbf{k}_j /
            \sqrt{d} + b A_{ij})`, so that nodes also see whom they are
            *not* linked to. (default: :obj:`"edges"`)
        embedding_noise (float, optional): In training mode, :meth:`loss`
            decodes :math:`\mathbf{x}_i + \boldsymbol{\epsilon}_i`,
            :math:`\boldsymbol{\epsilon}_i \sim \mathcal{N}(\mathbf{0},
            s^2 \mathbf{I})`, so that the encoder keeps every pair's distance
            a margin away from the decoder's threshold and the decoder reads
            slightly wrong embeddings (a generative model's samples) right.
            Evaluation mode decodes the embeddings themselves.
            (default: :obj:`0.0`)
    """
    def __init__(self, embedding_channels: int = 8, hidden_channels: int = 64,
                 num_layers: int = 10, heads: int = 4, noise_channels: int = 16,
                 noise_variance: float = 0.3, temperature: float = 10.0,
                 attention: str = 'edges', embedding_noise: float = 0.0):
        super().__init__()
        if attention not in ATTENTION:
            raise ValueError(f"'attention' must be one of {ATTENTION} (got {attention!r})")
        for name, value in (('embedding_channels', embedding_channels),
                            ('hidden_channels', hidden_channels),
                            ('num_layers', num_layers), ('heads', heads),
                            ('noise_channels', noise_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be a positive int (got {value!r})")
        if noise_variance <= 0 or temperature <= 0:
            raise ValueError("'noise_variance' and 'temperature' must be positive")
        if not embedding_noise >= 0:  # also refuses NaN
            raise ValueError(f"'embedding_noise' must be non-negative (got {embedding_noise})")
        self.embedding_channels = embedding_channels
        self.hidden_channels = hidden_channels
        self.num_layers = num_layers
        self.heads = heads
        self.noise_channels = noise_channels
        self.noise_variance = float(noise_variance)
        self.temperature = float(temperature)
        self.attention = attention
        self.embedding_noise = float(embedding_noise)
        # 'all': one learned logit offset per layer and head for linked pairs.
        self.edge_bias = torch.nn.Parameter(torch.empty(num_layers, heads)) \
            if attention == 'all' else None
        self.lin_in = torch.nn.Linear(noise_channels, hidden_channels)
        self.layers = torch.nn.ModuleList(
            [DenseAttentionBlock(hidden_channels, heads) for _ in range(num_layers)])
        self.lin_out = torch.nn.Linear(hidden_channels, embedding_channels)
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters."""
        self.lin_in.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        self.lin_out.reset_parameters()
        if self.edge_bias is not None:
            torch.nn.init.constant_(self.edge_bias, 2.0)

    # ----------------------------------------------------------------- input
    def _dense(self, edge_index: Tensor, batch: Optional[Tensor],
               num_nodes: Optional[int]) -> Tuple[Tensor, Tensor, Tensor]:
        r"""Returns (graph id per node, node mask [B, n], adjacency [B, n, n])
        of a batch whose nodes are grouped by graph (see :meth:`_graphs`)."""
        return self._graphs(edge_index, batch, num_nodes)[:3]

    def _graphs(self, edge_index: Tensor, batch: Optional[Tensor],
                num_nodes: Optional[int]
                ) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        r"""Returns (graph id per node, node mask [B, n], adjacency [B, n, n],
        node order).  The padded layout needs each graph's nodes together:
        with an unsorted :obj:`batch` the nodes are grouped by graph
        (stably, :func:`~torch_geometric_gnf.utils.graph_order`), the
        returned graph ids and layout are those of the grouped nodes, and
        the order maps node-level results back
        (:func:`~torch_geometric_gnf.utils.restore_order`); :obj:`None` if
        :obj:`batch` was sorted."""
        if not isinstance(edge_index, Tensor):
            raise TypeError(f"'edge_index' must be a tensor (got "
                            f"{type(edge_index).__name__})")
        if batch is None:
            if num_nodes is None:
                num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
            batch = torch.zeros(num_nodes, dtype=torch.long, device=edge_index.device)
        if batch.numel() == 0:
            raise ValueError('Cannot encode an empty batch of graphs')
        check_edge_index(edge_index, batch.numel(), edge_index.device)
        check_batch(batch, batch.numel(), edge_index.device)
        order = graph_order(batch)
        if order is not None:
            batch, edge_index = batch[order], relabel_edges(edge_index, order)
        num_graphs = infer_num_graphs(batch, None)
        _, mask = to_dense_batch(batch.new_zeros(batch.numel(), 1), batch,
                                 batch_size=num_graphs)
        adj = to_dense_adj(edge_index, batch, max_num_nodes=mask.size(1),
                           batch_size=num_graphs) > 0
        if (adj & ~(adj.transpose(1, 2))).any():
            raise ValueError("'edge_index' must be undirected (every edge in "
                             "both directions)")
        return batch, mask, adj, order

    @staticmethod
    def _unpack(data) -> Tuple[Tensor, Optional[Tensor], Optional[int]]:
        if isinstance(data, (Data, Batch)):
            return data.edge_index, getattr(data, 'batch', None), data.num_nodes
        raise TypeError(f"Expected a Data or Batch object (got {type(data).__name__})")

    # --------------------------------------------------------------- encoder
    def encode(self, edge_index: Tensor, batch: Optional[Tensor] = None,
               num_nodes: Optional[int] = None,
               generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Node embeddings :obj:`[num_nodes, embedding_channels]` of an
        undirected graph batch, from fresh Gaussian input features
        (:obj:`batch` need not be sorted; each graph's nodes are drawn in
        the order they appear)."""
        _, mask, adj, order = self._graphs(edge_index, batch, num_nodes)
        return restore_order(self._encode_nodes(mask, adj, generator)[0], order)

    def _encoder_input(self, mask: Tensor, adj: Tensor,
                       generator: Optional[torch.Generator] = None
                       ) -> Tuple[Tensor, DenseLayout]:
        r"""The encoder's random input features :obj:`[num_nodes,
        noise_channels]` (scaled by :math:`\sigma`) and the batch's
        :class:`DenseLayout`: the part of the encoder with data-dependent
        shapes and the random draw, kept out of :meth:`compile_loss`."""
        B, n = mask.shape
        param = self.lin_in.weight
        # Drawn on the padded grid, so a batch's draw does not depend on how
        # the layers store it.
        noise = torch.randn(B, n, self.noise_channels, generator=generator,
                            device=param.device, dtype=param.dtype)
        if self.attention == 'edges':
            eye = torch.eye(n, dtype=torch.bool, device=mask.device)
            layout = layout_of_mask(mask, adj | eye)  # neighbours and self
        else:
            layout = layout_of_mask(mask)
        return layout.unpad(noise) * math.sqrt(self.noise_variance), layout

    def _encoder_layers(self, h: Tensor, layout: DenseLayout, adj: Tensor) -> Tensor:
        r"""Embeddings :obj:`[num_nodes, d]` of the input features :obj:`h`."""
        if self.attention == 'edges':
            biases = [None] * self.num_layers
        else:
            linked = adj.unsqueeze(1).to(h.dtype)  # [B, 1, n, n]
            biases = [linked * b.view(1, -1, 1, 1) for b in self.edge_bias]
        h = self.lin_in(h)
        for layer, bias in zip(self.layers, biases):
            h = layer(h, layout, bias)
        return self.lin_out(h)

    def _encode_nodes(self, mask: Tensor, adj: Tensor,
                      generator: Optional[torch.Generator] = None
                      ) -> Tuple[Tensor, DenseLayout]:
        r"""Embeddings :obj:`[num_nodes, d]` of the real nodes of the padded
        batch (node mask :obj:`[B, n]`, adjacency :obj:`[B, n, n]`) and
        their :class:`DenseLayout`."""
        h, layout = self._encoder_input(mask, adj, generator)
        return self._encoder_layers(h, layout, adj), layout

    def _encode_dense(self, mask: Tensor, adj: Tensor,
                      generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Padded embeddings :obj:`[B, n, d]` (zeros in padding slots)."""
        z, layout = self._encode_nodes(mask, adj, generator)
        return layout.pad(z)

    def forward(self, edge_index: Tensor, batch: Optional[Tensor] = None,
                num_nodes: Optional[int] = None) -> Tensor:
        r"""Same as :meth:`encode`."""
        return self.encode(edge_index, batch, num_nodes)

    # --------------------------------------------------------------- decoder
    def decode_logits(self, z: Tensor, batch: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor]:
        r"""Padded edge logits :obj:`[B, n, n]` and node mask :obj:`[B, n]`
        of node embeddings :obj:`z` :obj:`[N, d]` (graph id per node in
        :obj:`batch`, in any order: each graph's padded rows list its nodes
        in the order they appear in :obj:`z`)."""
        zd, mask = to_dense_batch(*self._grouped_embeddings(z, batch))
        return pair_logits(zd, self.temperature), mask

    def _grouped_embeddings(self, z: Tensor, batch: Optional[Tensor]
                            ) -> Tuple[Tensor, Optional[Tensor]]:
        r"""Checked embeddings and graph ids with each graph's nodes
        together (in the order they appear in :obj:`z`)."""
        if not isinstance(z, Tensor) or z.dim() != 2 or \
                z.size(-1) != self.embedding_channels:
            raise ValueError(f"Expected embeddings of shape [num_nodes, "
                             f"{self.embedding_channels}] (got "
                             f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__})")
        check_batch(batch, z.size(0), z.device)
        order = graph_order(batch)
        if order is not None:
            z, batch = z[order], batch[order]
        return z, batch

    def decode(self, z: Tensor, batch: Optional[Tensor] = None
               ) -> Tuple[Tensor, Tensor]:
        r"""Edge probabilities :math:`\hat{A}` :obj:`[B, n, n]` (eq. 6) and the
        node mask :obj:`[B, n]`."""
        logits, mask = self.decode_logits(z, batch)
        return torch.sigmoid(logits), mask

    def to_graphs(self, z: Tensor, batch: Optional[Tensor] = None,
                  threshold: float = 0.5) -> Batch:
        r"""Decodes embeddings into a :class:`~torch_geometric.data.Batch` of
        undirected graphs without self-loops: edge :math:`(i, j)` exists iff
        :math:`\hat{A}_{ij} > \mathrm{threshold}`."""
        if not 0 < threshold < 1:  # also refuses NaN
            raise ValueError(f"'threshold' must be in (0, 1) (got {threshold})")
        z, batch = self._grouped_embeddings(z, batch)
        logits, mask = self.decode_logits(z, batch)
        thr = math.log(threshold / (1 - threshold))  # threshold on logits
        adj = (logits > thr) & pair_mask(mask)
        return dense_to_batch(adj | adj.transpose(1, 2), mask, x=z)

    def add_embedding_noise(self, z: Tensor) -> Tensor:
        r""":obj:`z` plus Gaussian noise of std :obj:`embedding_noise`
        (:obj:`z` itself when it is 0)."""
        if self.embedding_noise == 0:
            return z
        return z + torch.randn_like(z) * self.embedding_noise

    # ------------------------------------------------------------ objectives
    def loss(self, data, z: Optional[Tensor] = None) -> Tuple[Tensor, int]:
        r"""Summed binary cross-entropy (eq. 5) over the unordered node pairs
        of all graphs in :obj:`data` and the number of nodes (divide for
        Table 3's BCE per node).  Encodes :obj:`data` unless :obj:`z` given."""
        edge_index, batch, num_nodes = self._unpack(data)
        batch, mask, adj, order = self._graphs(edge_index, batch, num_nodes)
        if z is None:
            h, layout = self._encoder_input(mask, adj)
            bce = self._encoded_pair_bce(h, layout, adj)
        else:
            bce = self._pair_bce(self._dense_embeddings(z, batch, order), mask, adj)
        return bce, int(mask.sum())

    def _dense_embeddings(self, z: Tensor, batch: Tensor,
                          order: Optional[Tensor]) -> Tensor:
        r"""Node embeddings :obj:`z` (in the caller's node order) padded to
        :obj:`[B, n, d]` in the layout of :meth:`_graphs`."""
        if not isinstance(z, Tensor) or z.dim() != 2 or z.size(0) != batch.numel():
            raise ValueError(f"'z' must have shape [num_nodes={batch.numel()}, "
                             f"embedding_channels] (got "
                             f"{tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__})")
        return to_dense_batch(z if order is None else z[order], batch)[0]

    def _pair_bce(self, zd: Tensor, mask: Tensor, adj: Tensor) -> Tensor:
        r"""Summed BCE of padded embeddings :obj:`[B, n, d]` (with embedding
        noise in training mode).  The pairs are weighted by the 0/1 pair mask,
        not selected, so that the shapes do not depend on the data."""
        if self.training:
            zd = self.add_embedding_noise(zd)
        logits = pair_logits(zd, self.temperature)
        return F.binary_cross_entropy_with_logits(
            logits, adj.to(logits.dtype), weight=pair_mask(mask).to(logits.dtype),
            reduction='sum')

    def _encoded_pair_bce(self, h: Tensor, layout: DenseLayout, adj: Tensor) -> Tensor:
        r"""Summed BCE of the encoder's input features :obj:`h` (the part of
        :meth:`loss` that :meth:`compile_loss` compiles)."""
        zd = layout.pad(self._encoder_layers(h, layout, adj))
        return self._pair_bce(zd, layout.mask, adj)

    def compile_loss(self, **kwargs) -> 'GraphAutoEncoder':
        r"""Compiles the encoder's layers, the decoder and the BCE of
        :meth:`loss` with :func:`torch.compile` (keyword arguments passed
        on; default :obj:`dynamic=True, fullgraph=True`, so that batches of
        other sizes do not recompile).  The input checks, the dense layout
        (data-dependent shapes) and the encoder's noise draw stay eager, so
        the encoder sees the eager model's random stream; the embedding
        noise of training mode (:obj:`embedding_noise` > 0) is drawn inside
        the compiled code (same distribution, another stream).  Same math;
        the rounding differs.  Compiles in place and returns the module."""
        kwargs = {'dynamic': True, 'fullgraph': True, **kwargs}
        self._encoded_pair_bce = torch.compile(self._encoded_pair_bce, **kwargs)
        return self

    @torch.no_grad()
    def incorrect_edges(self, data, z: Optional[Tensor] = None) -> int:
        r"""Number of unordered node pairs whose thresholded reconstruction
        (:math:`\hat{A}_{ij} > 0.5`) differs from the adjacency, summed over
        the graphs of :obj:`data` (Table 3)."""
        edge_index, batch, num_nodes = self._unpack(data)
        batch, mask, adj, order = self._graphs(edge_index, batch, num_nodes)
        zd = self._encode_dense(mask, adj) if z is None else \
            self._dense_embeddings(z, batch, order)
        pred = pair_logits(zd, self.temperature) > 0
        return int(((pred != adj) & pair_mask(mask)).sum())

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(embedding={self.embedding_channels}, '
                f'hidden={self.hidden_channels}, layers={self.num_layers}, '
                f'heads={self.heads}, C={self.temperature}, '
                f'attention={self.attention}, '
                f'embedding_noise={self.embedding_noise:g})')


def dense_to_batch(adj: Tensor, mask: Tensor, x: Optional[Tensor] = None) -> Batch:
    r"""A :class:`~torch_geometric.data.Batch` from padded adjacencies
    :obj:`[B, n, n]` and node masks :obj:`[B, n]` (nodes of a graph first,
    as :func:`~torch_geometric.utils.to_dense_batch` lays them out), with
    optional node features :obj:`x` :obj:`[N, F]` in the same node order."""
    counts = mask.sum(-1)
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    b, i, j = adj.nonzero(as_tuple=True)
    edge_index = torch.stack([i, j]) + ptr[b]
    # nonzero() lists edges graph by graph, so each graph's edges are a slice.
    edge_counts = torch.bincount(b, minlength=mask.size(0))
    data_list = []
    offsets = torch.cat([edge_counts.new_zeros(1), edge_counts.cumsum(0)]).tolist()
    for g, c in enumerate(counts.tolist()):  # only assembles Data objects
        ei = edge_index[:, offsets[g]:offsets[g + 1]] - int(ptr[g])
        data = Data(edge_index=ei, num_nodes=int(c))
        if x is not None:
            data.x = x[int(ptr[g]):int(ptr[g]) + int(c)]
        data_list.append(data)
    return Batch.from_data_list(data_list)
