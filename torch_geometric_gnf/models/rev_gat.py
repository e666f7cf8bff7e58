from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv
from torch_geometric.nn.inits import reset

from torch_geometric_gnf.nn import ReversibleMessagePassing
from torch_geometric_gnf.ops import recompute

from .grevnet import (MessagePassingStep, ResidualStep, feature_dropout,
                      num_distinct_steps)


def default_gat_conv() -> Callable[..., torch.nn.Module]:
    r"""The conv class :class:`RevGAT` uses when none is given:
    :class:`torch_geometric_gnf.nn.FusedGATConv` where it exists (same
    constructor, fused attention kernels), otherwise PyG's
    :class:`~torch_geometric.nn.conv.GATConv`."""
    try:
        from torch_geometric_gnf.nn import FusedGATConv  # type: ignore
    except ImportError:
        return GATConv
    return FusedGATConv


class RevGAT(torch.nn.Module):
    r"""A deep reversible graph attention network for node classification,
    the GAT-GRevNet of `"Graph Normalizing Flows"
    <https://arxiv.org/abs/1905.13177>`_ (Table 1) in the layout of the
    published RevGAT recipe for ogbn-arxiv (`"Training Graph Neural Networks
    with 1000 Layers" <https://arxiv.org/abs/2106.07476>`_):

    .. math::
        \mathbf{H}_0 &= \mathrm{GAT}_{in}(\mathrm{dropout}_{in}(\mathbf{X}))
        \\
        \mathbf{H}_k &= \mathrm{RevStep}_k(\mathbf{H}_{k-1}), \qquad
        k = 1, \dots, K \\
        \hat{\mathbf{Y}} &= \mathrm{GAT}_{out}(\mathrm{dropout}(\mathrm{ReLU}(
        \mathrm{LN}(\mathbf{H}_K))))

    :math:`\mathrm{GAT}_{in}` has :obj:`heads` heads of
    :obj:`hidden_channels // heads` channels (concatenated),
    :math:`\mathrm{GAT}_{out}` one head of :obj:`out_channels`.  Each
    reversible step splits :math:`\mathbf{H}` into halves and applies
    :math:`\mathbf{H}^{(1)} \mathrel{+}= F(\mathbf{H}^{(0)})`, then
    :math:`\mathbf{H}^{(0)} \mathrel{+}= G(\mathbf{H}^{(1)})`, where
    :math:`F` and :math:`G` are
    :math:`\mathrm{GAT}(\mathrm{dropout}(\mathrm{ReLU}(\mathrm{LN}(\cdot))))`
    with :obj:`heads` heads of :obj:`hidden_channels // (2 * heads)`
    channels.  LayerNorm (not the recipe's BatchNorm) because the
    memory-saving backward recomputes :math:`F` and :math:`G`, which would
    update BatchNorm's running statistics twice; dropout masks are replayed
    exactly, so gradients equal plain autograd's.

    With :obj:`reversible=False` the same model is a plain (residual) deep
    GAT, the baseline with identical layout and step count: each step is
    :math:`\mathbf{H} \mathrel{+}= \mathrm{GAT}(\mathrm{dropout}(\mathrm{ReLU}(
    \mathrm{LN}(\mathbf{H}))))` on the full width (:obj:`heads` heads of
    :obj:`hidden_channels // heads` channels), and autograd stores every
    step's activations.

    Args:
        in_channels (int): Input feature size.
        hidden_channels (int): Hidden size; divisible by :obj:`2 * heads`.
        out_channels (int): Number of outputs (classes).
        num_layers (int, optional): Number of reversible steps :math:`K`
            (the input and output attention layers come on top).
            (default: :obj:`8`)
        heads (int, optional): Attention heads per conv. (default: :obj:`4`)
        dropout (float, optional): Feature dropout inside steps and before
            the output layer. (default: :obj:`0.0`)
        input_dropout (float, optional): Dropout on the input features.
            (default: :obj:`0.0`)
        attention_dropout (float, optional): Dropout on attention
            coefficients. (default: :obj:`0.0`)
        edge_dim (int, optional): Edge feature size; when set,
            :obj:`edge_attr` enters every attention layer. (default: :obj:`None`)
        conv_cls (type, optional): A class with :class:`GATConv`'s
            constructor. :obj:`None` picks :func:`default_gat_conv`.
        memory_saving (bool, optional): See
            :class:`~torch_geometric_gnf.nn.ReversibleMessagePassing`.
            (default: :obj:`True`)
        norm (bool, optional): LayerNorm in each step and before the output
            layer. (default: :obj:`True`)
        reversible (bool, optional): :obj:`False` gives the plain residual
            GAT baseline. (default: :obj:`True`)
        gate (bool, optional): Multiply every :math:`F`/:math:`G` (and
            plain step) output by a learnable scalar initialised at zero
            (ReZero): the model starts as a two-layer GAT (input and output
            layers) and the steps are learnt on top; helps deep stacks on
            small data such as Cora. (default: :obj:`False`)
        shared_weights (bool, optional): Tie the steps' weights: one
            :math:`F` and one :math:`G` (one plain step with
            :obj:`reversible=False`) applied at all :math:`K` steps, as in
            the paper's "8 steps of MP" with one message function.  The
            parameter count then does not depend on :obj:`num_layers`;
            each application draws (and replays) its own dropout masks.
            (default: :obj:`False`)
    """
    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int = 8, heads: int = 4, *, dropout: float = 0.0,
                 input_dropout: float = 0.0, attention_dropout: float = 0.0,
                 edge_dim: Optional[int] = None,
                 conv_cls: Optional[Callable[..., torch.nn.Module]] = None,
                 memory_saving: bool = True, norm: bool = True,
                 reversible: bool = True, gate: bool = False,
                 shared_weights: bool = False):
        super().__init__()
        for name, value in (('in_channels', in_channels),
                            ('hidden_channels', hidden_channels),
                            ('out_channels', out_channels), ('heads', heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"'{name}' must be a positive integer (got {value!r})")
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"'num_layers' must be a non-negative integer "
                             f"(got {num_layers!r})")
        if hidden_channels % (2 * heads) != 0:
            raise ValueError(f"'hidden_channels' ({hidden_channels}) must be "
                             f"divisible by 2 * heads ({2 * heads}): each half "
                             f"is split over the heads")
        for name, p in (('dropout', dropout), ('input_dropout', input_dropout),
                        ('attention_dropout', attention_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"'{name}' must be in [0, 1) (got {p})")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.heads = heads
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.edge_dim = edge_dim
        self.reversible = reversible
        self.memory_saving = memory_saving
        self.shared_weights = shared_weights
        conv_cls = default_gat_conv() if conv_cls is None else conv_cls
        self.conv_cls = conv_cls

        def gat(i: int, o: int, h: int, concat: bool = True) -> torch.nn.Module:
            return conv_cls(i, o, heads=h, concat=concat,
                            dropout=attention_dropout, edge_dim=edge_dim)

        self.input_conv = gat(in_channels, hidden_channels // heads, heads)
        half = hidden_channels // 2
        steps = []
        for _ in range(num_distinct_steps(num_layers, shared_weights)):
            if reversible:
                steps.append(ReversibleMessagePassing(
                    MessagePassingStep(gat(half, half // heads, heads), half,
                                       norm, dropout, gate),
                    MessagePassingStep(gat(half, half // heads, heads), half,
                                       norm, dropout, gate),
                    memory_saving=memory_saving))
            else:
                steps.append(ResidualStep(MessagePassingStep(
                    gat(hidden_channels, hidden_channels // heads, heads),
                    hidden_channels, norm, dropout, gate)))
        self.blocks = torch.nn.ModuleList(
            steps * num_layers if shared_weights else steps)
        self.norm = torch.nn.LayerNorm(hidden_channels) if norm else None
        self.output_conv = gat(hidden_channels, out_channels, 1, concat=False)

    def reset_parameters(self):
        reset(self.input_conv)
        for block in self.blocks:
            block.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()
        reset(self.output_conv)

    def forward(self, x: Tensor, edge_index: Any,
                edge_attr: Optional[Tensor] = None) -> Tensor:
        r"""Returns logits of shape :obj:`[num_nodes, out_channels]`."""
        if edge_attr is not None and self.edge_dim is None:
            raise ValueError("'edge_attr' was given but the model was built "
                             "with edge_dim=None; pass edge_dim=<edge feature "
                             "size> to use edge features")
        if edge_attr is None and self.edge_dim is not None:
            raise ValueError(f"the model was built with edge_dim={self.edge_dim} "
                             f"but no 'edge_attr' was given")
        kwargs = {} if edge_attr is None else {'edge_attr': edge_attr}
        x = feature_dropout(x, self.input_dropout, self.training)
        h = self.input_conv(x, edge_index, **kwargs)
        for block in self.blocks:
            h = block(h, edge_index, **kwargs)
        if self.memory_saving:
            # Keep no copy of the head's normalised / activated features:
            # only its input is stored, the rest is re-run (same dropout mask)
            # in backward.
            params = self.norm.parameters() if self.norm is not None else ()
            h = recompute(self._head_activation, h, params=params)
        else:
            h = self._head_activation(h)
        return self.output_conv(h, edge_index, **kwargs)

    def _head_activation(self, h: Tensor) -> Tensor:
        if self.norm is not None:
            h = self.norm(h)
        return feature_dropout(F.relu(h), self.dropout, self.training)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.hidden_channels}, {self.out_channels}, '
                f'num_layers={self.num_layers}, heads={self.heads}, '
                f'reversible={self.reversible}, conv={self.conv_cls.__name__}'
                + (', shared_weights=True' if self.shared_weights else '') + ')')
