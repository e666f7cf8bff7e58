from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv
from torch_geometric.nn.inits import reset

from torch_geometric_gnf.nn import FusedGATv2Conv, ReversibleMessagePassing

ConvFactory = Callable[[int, int], torch.nn.Module]


def feature_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    r"""Inverted dropout, :math:`\mathbf{x} \odot \mathbf{m} / (1 - p)` with
    :math:`m_i \sim \mathrm{Bernoulli}(1 - p)`, like
    :func:`torch.nn.functional.dropout`, but drawing the mask as
    :obj:`torch.rand(...) >= p`: about 3x faster on CPU than
    :obj:`bernoulli_`, which dominated the time of small deep models.  Uses
    the default generator, so a recorded RNG state replays the same mask."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1) (got {p})")
    return x * (torch.rand_like(x) >= p).to(x.dtype) / (1.0 - p)


def _conv_factory(conv: Union[str, ConvFactory], heads: int,
                  attention_dropout: float) -> ConvFactory:
    if callable(conv):
        return conv
    if conv == 'gcn':
        return lambda i, o: GCNConv(i, o)
    if conv == 'sage':
        return lambda i, o: SAGEConv(i, o)
    if conv == 'gin':
        return lambda i, o: GINConv(torch.nn.Sequential(
            torch.nn.Linear(i, o), torch.nn.ReLU(), torch.nn.Linear(o, o)))
    if conv in ('gat', 'gatv2'):
        cls = GATConv if conv == 'gat' else FusedGATv2Conv

        def gat(i: int, o: int) -> torch.nn.Module:
            if o % heads != 0:
                raise ValueError(f"GAT output width {o} is not divisible by "
                                 f"heads={heads}")
            return cls(i, o // heads, heads=heads, dropout=attention_dropout)
        return gat
    raise ValueError(f"Unknown conv '{conv}' (use 'gcn', 'gat', 'gatv2', "
                     f"'sage', 'gin' or a factory (in_channels, out_channels) "
                     f"-> Module)")


def num_distinct_steps(num_layers: int, shared_weights: bool) -> int:
    r"""How many step modules a deep model builds: one per layer, or with
    :obj:`shared_weights=True` one that is listed :obj:`num_layers` times
    (weight tying: its parameters are counted and updated once and receive
    the gradient summed over all steps)."""
    return min(num_layers, 1) if shared_weights else num_layers


class MessagePassingStep(torch.nn.Module):
    r"""One pre-activation message passing transform, the :math:`F`/:math:`G`
    of a GRevNet step:
    :math:`\mathbf{H} \mapsto \mathrm{conv}(\mathrm{dropout}(\sigma(
    \mathrm{LayerNorm}(\mathbf{H}))), \mathcal{E})`.
    Normalising before the conv keeps deep stacks stable; LayerNorm (not
    BatchNorm) because it has no running statistics that the backward
    recomputation would update a second time.  With :obj:`gate=True` the
    output is multiplied by a learnable scalar :math:`\alpha` initialised at
    zero (ReZero, Bachlechner et al., 2020): a residual or reversible step
    then starts as the identity and deep stacks train like shallow ones."""
    def __init__(self, conv: torch.nn.Module, channels: int, norm: bool = True,
                 dropout: float = 0.0, gate: bool = False):
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels) if norm else None
        self.dropout = dropout
        self.conv = conv
        self.gate = torch.nn.Parameter(torch.zeros(1)) if gate else None

    def reset_parameters(self):
        if self.norm is not None:
            self.norm.reset_parameters()
        reset(self.conv)
        if self.gate is not None:
            torch.nn.init.zeros_(self.gate)

    def forward(self, h: Tensor, edge_index: Any, *args, **kwargs) -> Tensor:
        if self.norm is not None:
            h = self.norm(h)
        h = F.relu(h)
        h = feature_dropout(h, self.dropout, self.training)
        h = self.conv(h, edge_index, *args, **kwargs)
        return h if self.gate is None else self.gate * h

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.conv}, norm={self.norm is not None})'


class ResidualStep(torch.nn.Module):
    r"""A plain (non-reversible) residual step,
    :math:`\mathbf{H} \mapsto \mathbf{H} + F(\mathbf{H}, \mathcal{E})`: the
    vanilla counterpart of a reversible step, used by the baselines
    (:obj:`reversible=False`).  Autograd stores :math:`F`'s activations."""
    def __init__(self, fn: torch.nn.Module):
        super().__init__()
        self.fn = fn

    def reset_parameters(self):
        reset(self.fn)

    def forward(self, h: Tensor, edge_index: Any, *args, **kwargs) -> Tensor:
        return h + self.fn(h, edge_index, *args, **kwargs)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.fn})'


class GRevNet(torch.nn.Module):
    r"""A reversible graph neural network for node-level prediction
    (`"Graph Normalizing Flows" <https://arxiv.org/abs/1905.13177>`_, section
    3.1): a linear encoder, :obj:`num_layers` reversible message passing
    steps (:class:`~torch_geometric_gnf.nn.ReversibleMessagePassing`) and a
    linear head,

    .. math::
        \mathbf{H}_0 = \mathbf{X}\mathbf{W}_{in}, \qquad
        \mathbf{H}_{k} = \mathrm{GRevNetStep}_k(\mathbf{H}_{k-1}, \mathcal{E}),
        \qquad \hat{\mathbf{Y}} = \mathrm{dropout}(\mathrm{ReLU}(
        \mathrm{LN}(\mathbf{H}_K)))\mathbf{W}_{out}.

    Each step's :math:`F` and :math:`G` are :class:`MessagePassingStep` s
    around a conv from :obj:`conv` mapping half of :obj:`hidden_channels` to
    half (additive) or to all of it (affine: scale and shift).  With
    :obj:`memory_saving=True` activation memory does not grow with depth.

    Args:
        in_channels (int): Input feature size.
        hidden_channels (int): Hidden size (even).
        out_channels (int): Number of outputs (classes).
        num_layers (int): Number of reversible steps.
        conv (str or callable, optional): :obj:`"gcn"`, :obj:`"gat"`,
            :obj:`"gatv2"` (:class:`~torch_geometric_gnf.nn.FusedGATv2Conv`),
            :obj:`"sage"`, :obj:`"gin"` or a factory
            :obj:`(in_channels, out_channels) -> Module`. (default: :obj:`"gcn"`)
        coupling (str, optional): :obj:`"additive"` or :obj:`"affine"`.
            (default: :obj:`"additive"`)
        heads (int, optional): Attention heads for :obj:`conv="gat"` and
            :obj:`"gatv2"`.
            (default: :obj:`1`)
        dropout (float, optional): Feature dropout. (default: :obj:`0.0`)
        attention_dropout (float, optional): Attention dropout for GAT.
            (default: :obj:`0.0`)
        norm (bool, optional): LayerNorm inside each step. (default: :obj:`True`)
        memory_saving (bool, optional): See
            :class:`~torch_geometric_gnf.nn.ReversibleMessagePassing`.
            (default: :obj:`True`)
        reversible (bool, optional): :obj:`False` gives the vanilla GNN
            baseline with the same layout and step count: each step is a
            :class:`ResidualStep`
            :math:`\mathbf{H} \mathrel{+}= \mathrm{MessagePassingStep}(\mathbf{H})`
            with a conv on the full width (:obj:`coupling` is then unused).
            (default: :obj:`True`)
        shared_weights (bool, optional): Tie the steps' weights: one
            :math:`F` and one :math:`G` (one residual step with
            :obj:`reversible=False`) applied at every step, the paper's
            message passing view of :math:`K` applications of one message
            function.  The parameter count then does not depend on
            :obj:`num_layers`; each application still draws (and, with
            memory saving, replays) its own dropout masks.
            (default: :obj:`False`)
    """
    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int, conv: Union[str, ConvFactory] = 'gcn', *,
                 coupling: str = 'additive', heads: int = 1, dropout: float = 0.0,
                 attention_dropout: float = 0.0, norm: bool = True,
                 memory_saving: bool = True, clamp: Optional[float] = 2.0,
                 reversible: bool = True, shared_weights: bool = False):
        super().__init__()
        if hidden_channels % 2 != 0:
            raise ValueError(f"'hidden_channels' must be even to split into two "
                             f"halves (got {hidden_channels})")
        if num_layers < 1:
            raise ValueError(f"'num_layers' must be at least 1 (got {num_layers})")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.dropout = dropout
        self.reversible = reversible
        self.shared_weights = shared_weights
        half = hidden_channels // 2
        out = half if coupling == 'additive' else 2 * half
        make = _conv_factory(conv, heads, attention_dropout)

        self.encoder = torch.nn.Linear(in_channels, hidden_channels)
        if reversible:
            self.blocks = torch.nn.ModuleList([
                ReversibleMessagePassing(
                    MessagePassingStep(make(half, out), half, norm, dropout),
                    MessagePassingStep(make(half, out), half, norm, dropout),
                    coupling=coupling, memory_saving=memory_saving, clamp=clamp)
                for _ in range(num_distinct_steps(num_layers, shared_weights))
            ])
        else:
            self.blocks = torch.nn.ModuleList([
                ResidualStep(MessagePassingStep(
                    make(hidden_channels, hidden_channels), hidden_channels,
                    norm, dropout))
                for _ in range(num_distinct_steps(num_layers, shared_weights))
            ])
        if shared_weights:  # one module listed num_layers times
            self.blocks = torch.nn.ModuleList(list(self.blocks) * num_layers)
        self.norm = torch.nn.LayerNorm(hidden_channels) if norm else None
        self.head = torch.nn.Linear(hidden_channels, out_channels)

    def reset_parameters(self):
        self.encoder.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()
        self.head.reset_parameters()

    def forward(self, x: Tensor, edge_index: Any, *args, **kwargs) -> Tensor:
        r"""Returns per-node outputs of shape :obj:`[num_nodes, out_channels]`.
        Extra arguments (e.g. :obj:`edge_attr`) go to every conv."""
        x = feature_dropout(x, self.dropout, self.training)
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h, edge_index, *args, **kwargs)
        if self.norm is not None:
            h = self.norm(h)
        h = feature_dropout(F.relu(h), self.dropout, self.training)
        return self.head(h)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.hidden_channels}, {self.out_channels}, '
                f'num_layers={self.num_layers}'
                + ('' if self.reversible else ', reversible=False')
                + (', shared_weights=True' if self.shared_weights else '') + ')')
