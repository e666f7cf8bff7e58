r"""Turn a user's stack of GAT layers into a reversible, memory-saving model.

Accepted structures (anything else raises :class:`TypeError` /
:class:`ValueError` saying why):

1. :class:`torch_geometric.nn.Sequential` or :class:`torch.nn.Sequential`
   whose entries form a chain: GAT convs, and parameter-free modules
   (activations, :class:`~torch.nn.Dropout`, :class:`~torch.nn.Identity`, ...)
   that each take the running features only.
2. :class:`torch.nn.ModuleList` of GAT convs, applied one after the other
   with :obj:`activation` (and :obj:`dropout`) between them and not after the
   last, as in PyG's examples.
3. Any other :class:`torch.nn.Module` whose parameters all belong to GAT
   convs that are either in one :class:`~torch.nn.ModuleList` /
   :class:`~torch.nn.Sequential` attribute (e.g. :obj:`self.convs`) or are
   direct attributes (e.g. :obj:`self.conv1`, :obj:`self.conv2`), in the
   order they were registered; treated like case 2.  Its :obj:`forward` code
   is not used, so it must follow that pattern.

A "GAT conv" is a :class:`~torch_geometric.nn.conv.GATConv` or a
:class:`~torch_geometric_gnf.nn.FusedGATConv` with integer
:obj:`in_channels`.  Each *same-width* conv (output width
:obj:`heads * out_channels` with :obj:`concat=True`, else
:obj:`out_channels`, equal to :obj:`in_channels`) followed by its
parameter-free modules, :math:`\mathbf{H} \mapsto \phi(\mathrm{GAT}(
\mathbf{H}))`, becomes one reversible step
:class:`~torch_geometric_gnf.nn.ReversibleMessagePassing` with

.. math::
    \mathbf{H}^{(1)} \mathrel{+}= \phi(\mathrm{GAT}_F(\mathbf{H}^{(0)})),
    \qquad \mathbf{H}^{(0)} \mathrel{+}= \phi(\mathrm{GAT}_G(\mathbf{H}^{(1)})),

where :math:`\mathrm{GAT}_F, \mathrm{GAT}_G` are new convs of the same class
and settings (heads, attention dropout, :obj:`edge_dim`, ...) mapping half
the width to half (so a step has about half the conv weights of the layer it
replaces; they are freshly initialised: train or fine-tune the result).
Layers that change the width (typically the first and the last) are kept as
they are (deep copies, same weights).
"""
import copy
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv
from torch_geometric.nn import Sequential as PyGSequential
from torch_geometric.nn.inits import reset

from .reversible_message_passing import ReversibleMessagePassing


def _gat_classes() -> Tuple[type, ...]:
    try:
        from .fused_gat_conv import FusedGATConv
    except ImportError:  # the fused conv is optional here
        return (GATConv, )
    return (GATConv, FusedGATConv)


def _is_gat(module: torch.nn.Module) -> bool:
    return isinstance(module, _gat_classes())


def _has_parameters(module: torch.nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _out_width(conv: torch.nn.Module) -> int:
    return conv.heads * conv.out_channels if conv.concat else conv.out_channels


def _check_gat(conv: torch.nn.Module, where: str) -> None:
    if not isinstance(conv.in_channels, int) or conv.in_channels < 1:
        raise ValueError(f"{where}: {conv} has in_channels={conv.in_channels!r}; "
                         f"only homogeneous layers with a known integer input "
                         f"width can be converted (run one forward pass to "
                         f"materialise lazy layers first)")


class _ConvThenOps(torch.nn.Module):
    r""":math:`\mathbf{H} \mapsto \phi(\mathrm{conv}(\mathbf{H}, \mathcal{E}))`
    with :math:`\phi` a chain of parameter-free modules."""
    def __init__(self, conv: torch.nn.Module, ops: Sequence[torch.nn.Module]):
        super().__init__()
        self.conv = conv
        self.ops = torch.nn.ModuleList(ops)

    def reset_parameters(self):
        reset(self.conv)

    def forward(self, h: Tensor, edge_index: Any, *args, **kwargs) -> Tensor:
        h = self.conv(h, edge_index, *args, **kwargs)
        for op in self.ops:
            h = op(h)
        return h

    def __repr__(self) -> str:
        ops = ', '.join(repr(op) for op in self.ops)
        return f'{self.__class__.__name__}({self.conv}, [{ops}])'


class _Activation(torch.nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def __repr__(self) -> str:
        return f'{getattr(self.fn, "__name__", self.fn)}'


def _half_conv(conv: torch.nn.Module) -> torch.nn.Module:
    r"""A conv of the same class and settings mapping half the width of the
    same-width :obj:`conv` to half."""
    width = conv.in_channels
    if width % 2 != 0:
        raise ValueError(f"{conv} has odd width {width}; a reversible step "
                         f"splits the features into two equal halves")
    half = width // 2
    heads = conv.heads if conv.concat else 1
    if half % heads != 0:
        raise ValueError(f"{conv}: half the width ({half}) is not divisible by "
                         f"heads={heads}; use a width divisible by 2 * heads")
    kwargs = dict(heads=conv.heads, concat=conv.concat,
                  negative_slope=conv.negative_slope, dropout=conv.dropout,
                  add_self_loops=conv.add_self_loops, edge_dim=conv.edge_dim,
                  fill_value=conv.fill_value, bias=conv.bias is not None,
                  residual=getattr(conv, 'residual', False))
    return type(conv)(half, half // heads, **kwargs)


class ReversibleGATStack(torch.nn.Module):
    r"""The model :func:`convert_to_reversible` returns: leading parameter-free
    modules, then a chain of units, each either a kept layer
    :math:`\mathbf{H} \mapsto \phi(\mathrm{GAT}(\mathbf{H}))` or a
    reversible step replacing a same-width layer.

    :obj:`forward(x, edge_index, *args, **kwargs)` passes the extra arguments
    (e.g. :obj:`edge_attr`) to every conv and returns what the last layer
    returns, of the original model's output shape.
    """
    def __init__(self, pre: Sequence[torch.nn.Module],
                 layers: Sequence[torch.nn.Module]):
        super().__init__()
        self.pre = torch.nn.ModuleList(pre)
        self.layers = torch.nn.ModuleList(layers)

    @property
    def num_reversible(self) -> int:
        return sum(isinstance(m, ReversibleMessagePassing) for m in self.layers)

    def reset_parameters(self):
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: Tensor, edge_index: Any, *args, **kwargs) -> Tensor:
        for op in self.pre:
            x = op(x)
        for layer in self.layers:
            x = layer(x, edge_index, *args, **kwargs)
        return x

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(layers={len(self.layers)}, '
                f'reversible={self.num_reversible})')


def _chain_from_sequential(model: torch.nn.Module
                           ) -> Tuple[List[torch.nn.Module],
                                      List[Tuple[torch.nn.Module, List[torch.nn.Module]]]]:
    if isinstance(model, PyGSequential):
        entries = [(child.name, model[i], child.param_names)
                   for i, child in enumerate(model._children)]
    else:
        entries = [(name, m, None) for name, m in model.named_children()]
    pre: List[torch.nn.Module] = []
    units: List[Tuple[torch.nn.Module, List[torch.nn.Module]]] = []
    for name, module, params in entries:
        if _is_gat(module):
            _check_gat(module, f"entry '{name}'")
            units.append((module, []))
        elif _has_parameters(module):
            raise TypeError(
                f"convert_to_reversible: entry '{name}' ({type(module).__name__}) "
                f"has parameters but is not a GAT conv; only stacks of GATConv "
                f"layers with parameter-free modules (activations, dropout) "
                f"between them can be converted")
        else:
            if params is not None and len(params) != 1:
                raise TypeError(
                    f"convert_to_reversible: entry '{name}' takes "
                    f"{', '.join(params)}; parameter-free entries must take "
                    f"the running features only")
            (units[-1][1] if units else pre).append(copy.deepcopy(module))
    return pre, units


def _collect_convs(model: torch.nn.Module) -> List[torch.nn.Module]:
    containers = [(n, m) for n, m in model.named_children()
                  if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential))
                  and _has_parameters(m)]
    direct = [(n, m) for n, m in model.named_children() if _is_gat(m)]
    if len(containers) == 1 and not direct:
        name, container = containers[0]
        convs = list(container)
        bad = [type(m).__name__ for m in convs if not _is_gat(m) and _has_parameters(m)]
        if bad:
            raise TypeError(f"convert_to_reversible: '{name}' holds {', '.join(bad)}; "
                            f"only GAT convs (plus parameter-free modules) "
                            f"can be converted")
        convs = [m for m in convs if _is_gat(m)]
    elif not containers and direct:
        convs = [m for _, m in direct]
    else:
        raise TypeError(
            f"convert_to_reversible: cannot find the GAT stack in "
            f"{type(model).__name__}; expected its convs in one ModuleList/"
            f"Sequential attribute (e.g. self.convs) or as direct GATConv "
            f"attributes (self.conv1, self.conv2, ...), found "
            f"{len(containers)} container(s) and {len(direct)} direct conv(s)")
    others = [n for n, m in model.named_children()
              if _has_parameters(m) and not _is_gat(m)
              and not (containers and m is containers[0][1])]
    if others:
        raise TypeError(f"convert_to_reversible: {type(model).__name__} has "
                        f"parametrised modules outside the GAT stack "
                        f"({', '.join(others)}); their place in forward() is "
                        f"unknown, so the model cannot be converted")
    for i, conv in enumerate(convs):
        _check_gat(conv, f'conv {i}')
    return convs


def convert_to_reversible(model: torch.nn.Module, *,
                          activation: Optional[Callable[[Tensor], Tensor]] = F.elu,
                          dropout: float = 0.0,
                          memory_saving: bool = True) -> ReversibleGATStack:
    r"""Returns a reversible, memory-saving version of a stack of GAT layers
    (see the module documentation above for the accepted structures), with
    the same call signature :obj:`(x, edge_index, *args, **kwargs)` and
    output shape.  The input model is not modified.

    .. code-block:: python

        class GAT(torch.nn.Module):                     # before
            def __init__(self):
                super().__init__()
                self.convs = torch.nn.ModuleList(
                    [GATConv(1433, 16, heads=4)] +
                    [GATConv(64, 16, heads=4) for _ in range(6)] +
                    [GATConv(64, 7, heads=1)])
            def forward(self, x, edge_index):
                for conv in self.convs[:-1]:
                    x = F.elu(conv(x, edge_index))
                return self.convs[-1](x, edge_index)

        model = convert_to_reversible(GAT())            # after: 6 reversible steps
        out = model(x, edge_index)                      # same [N, 7] output

    Args:
        model (torch.nn.Module): The stack to convert.
        activation (callable, optional): Applied after every conv but the
            last in cases 2 and 3 (in case 1 the chain's own modules are
            used). :obj:`None` for none. (default: :func:`torch.nn.functional.elu`)
        dropout (float, optional): Feature dropout after that activation in
            cases 2 and 3. (default: :obj:`0.0`)
        memory_saving (bool, optional): See
            :class:`~torch_geometric_gnf.nn.ReversibleMessagePassing`.
            (default: :obj:`True`)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert_to_reversible expects a torch.nn.Module "
                        f"(got {type(model).__name__})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"'dropout' must be in [0, 1) (got {dropout})")
    if activation is not None and not callable(activation):
        raise TypeError(f"'activation' must be callable or None (got {activation!r})")

    if isinstance(model, (PyGSequential, torch.nn.Sequential)):
        pre, units = _chain_from_sequential(model)
    else:
        convs = (list(model) if isinstance(model, torch.nn.ModuleList)
                 else _collect_convs(model))
        for i, conv in enumerate(convs):
            if not _is_gat(conv):
                raise TypeError(f"convert_to_reversible: entry {i} of the "
                                f"ModuleList is {type(conv).__name__}, not a GAT conv")
            _check_gat(conv, f'conv {i}')
        between: List[torch.nn.Module] = []
        if activation is not None:
            between.append(activation if isinstance(activation, torch.nn.Module)
                           else _Activation(activation))
        if dropout > 0:
            between.append(torch.nn.Dropout(dropout))
        pre = []
        units = [(conv, [copy.deepcopy(m) for m in between] if i < len(convs) - 1 else [])
                 for i, conv in enumerate(convs)]

    if not units:
        raise ValueError(f"convert_to_reversible: {type(model).__name__} "
                         f"contains no GATConv layer")
    layers: List[torch.nn.Module] = []
    for conv, ops in units:
        if conv.in_channels == _out_width(conv):
            f = _ConvThenOps(_half_conv(conv), [copy.deepcopy(op) for op in ops])
            g = _ConvThenOps(_half_conv(conv), [copy.deepcopy(op) for op in ops])
            layers.append(ReversibleMessagePassing(f, g, memory_saving=memory_saving))
        else:
            layers.append(_ConvThenOps(copy.deepcopy(conv), ops))
    if not any(isinstance(m, ReversibleMessagePassing) for m in layers):
        raise ValueError(
            f"convert_to_reversible: no same-width GAT layer to make reversible "
            f"in {type(model).__name__} (widths: "
            f"{', '.join(f'{c.in_channels}->{_out_width(c)}' for c, _ in units)}); "
            f"a reversible step needs as many output as input channels")
    out = ReversibleGATStack(pre, layers)
    out.train(model.training)
    return out
